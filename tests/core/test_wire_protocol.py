"""The per-connection protocol state (core/wire.py PeerProtocol): each rule, flags, and hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core import wire
from jstorrent_cli.errors import RemoteProtocolError

INFO_HASH = b"\x11" * 20
OUR_ID = b"-JS0001-ourselves000"
THEIR_ID = b"-LT2010-theirpeer000"
BLOCK = DEFAULT_CONFIG.block_size
PIECE_LENGTH = 2 * BLOCK
NUM_PIECES = 10  # spare bits: 16 - 10 = 6
LAST_PIECE = 1000  # the short last piece
TOTAL = (NUM_PIECES - 1) * PIECE_LENGTH + LAST_PIECE
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(*, fast: bool = True, extended: bool = True, num_pieces: int = NUM_PIECES) -> wire.PeerProtocol:
    total = TOTAL if num_pieces == NUM_PIECES else num_pieces * PIECE_LENGTH
    return wire.PeerProtocol(
        INFO_HASH,
        OUR_ID,
        num_pieces,
        PIECE_LENGTH,
        total,
        supports_fast=fast,
        supports_extended=extended,
        our_extensions={"ut_metadata": 3},
    )


def their_handshake(
    *, fast: bool = True, extended: bool = True, info_hash: bytes = INFO_HASH, peer_id: bytes = THEIR_ID
) -> bytes:
    return wire.encode(
        wire.Handshake(info_hash, peer_id, supports_extended=extended, supports_fast=fast, supports_dht=True)
    )


def connected(
    *, fast: bool = True, extended: bool = True, peer_fast: bool = True, peer_ext: bool = True
) -> wire.PeerProtocol:
    proto = make(fast=fast, extended=extended)
    proto.send_handshake()
    (hs,) = proto.receive_data(their_handshake(fast=peer_fast, extended=peer_ext))
    assert isinstance(hs, wire.Handshake) and hs.peer_id == THEIR_ID
    return proto


def feed(proto: wire.PeerProtocol, *msgs: wire.Message) -> list[wire.Message]:
    return proto.receive_data(b"".join(wire.encode(m) for m in msgs))


# --- handshake ----------------------------------------------------------------------------------


def test_handshake_negotiates_fast_and_extended_only_when_both_sides_set_them() -> None:
    for ours in (False, True):
        for theirs in (False, True):
            proto = make(fast=ours, extended=ours)
            proto.receive_data(their_handshake(fast=theirs, extended=theirs))
            assert proto.fast is (ours and theirs)
            assert proto.extended is (ours and theirs)
            assert proto.handshake_received


def test_our_handshake_carries_our_bits_and_ids() -> None:
    data = make(fast=True, extended=False).send_handshake()
    (hs,) = wire.Decoder().feed(data)
    assert hs == wire.Handshake(INFO_HASH, OUR_ID, supports_extended=False, supports_fast=True)


def test_wrong_info_hash_is_refused() -> None:
    proto = make()
    with pytest.raises(RemoteProtocolError) as info:
        proto.receive_data(their_handshake(info_hash=b"\x22" * 20))
    assert not isinstance(info.value, wire.SelfConnectionError)
    assert not proto.handshake_received


def test_a_connection_to_ourselves_is_refused() -> None:
    with pytest.raises(wire.SelfConnectionError):
        make().receive_data(their_handshake(peer_id=OUR_ID))


def test_garbage_instead_of_a_handshake_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        make().receive_data(wire.encode(wire.Interested()))


def test_after_an_error_the_connection_stays_failed() -> None:
    proto = connected()
    with pytest.raises(RemoteProtocolError):
        feed(proto, wire.Have(NUM_PIECES))
    with pytest.raises(RemoteProtocolError):
        feed(proto, wire.KeepAlive())


# --- bitfield, have all, have none: first, or later as an update ---------------------------------------------------


def bits_of(*indices: int) -> bytes:
    out = bytearray(2)
    for i in indices:
        out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def test_bitfield_first_sets_the_peer_pieces() -> None:
    proto = connected()
    feed(proto, wire.Bitfield(bits_of(0, 7, 9)))
    assert [i for i in range(NUM_PIECES) if proto.peer_has(i)] == [0, 7, 9]


def test_late_bitfield_is_an_update_handed_out_as_haves() -> None:
    """aria2c announces several pieces at once with a BITFIELD mid-connection."""
    proto = connected()
    feed(proto, wire.Have(1))
    assert proto.receive_data(wire.encode(wire.Bitfield(bits_of(0, 1, 9)))) == [wire.Have(0), wire.Have(9)]
    assert [i for i in range(NUM_PIECES) if proto.peer_has(i)] == [0, 1, 9]


@pytest.mark.parametrize("before", [wire.Unchoke(), wire.Interested(), wire.Request(0, 0, BLOCK), wire.Port(1)])
def test_bitfield_after_any_other_message_is_an_update(before: wire.Message) -> None:
    proto = connected()
    feed(proto, before)
    assert proto.receive_data(wire.encode(wire.Bitfield(bits_of(0)))) == [wire.Have(0)]


def test_late_bitfield_that_withdraws_a_piece_is_refused() -> None:
    proto = connected()
    feed(proto, wire.Bitfield(bits_of(0)))
    with pytest.raises(RemoteProtocolError, match="withdraws"):
        feed(proto, wire.Bitfield(bits_of(1)))


def test_late_bitfield_with_a_spare_bit_is_refused() -> None:
    proto = connected()
    feed(proto, wire.Have(0))
    with pytest.raises(RemoteProtocolError, match="spare"):
        feed(proto, wire.Bitfield(bits_of(0, 12)))


def test_bitfield_may_follow_the_extended_handshake_and_keep_alives() -> None:
    proto = connected()
    feed(proto, wire.KeepAlive(), wire.ExtendedHandshake(m={"ut_pex": 1}), wire.Bitfield(bits_of(3)))
    assert proto.peer_has(3) and not proto.peer_has(2)


@pytest.mark.parametrize("spare_bit", range(NUM_PIECES, 16))
def test_bitfield_with_a_spare_bit_set_is_refused(spare_bit: int) -> None:
    proto = connected()
    with pytest.raises(RemoteProtocolError):
        feed(proto, wire.Bitfield(bits_of(0, spare_bit)))


def test_bitfield_of_the_wrong_length_is_refused() -> None:
    proto = connected()
    with pytest.raises(RemoteProtocolError):
        feed(proto, wire.Bitfield(b"\xff\xc0\x00"))


def test_full_bitfield_without_spare_bits_is_accepted() -> None:
    proto = connected()
    feed(proto, wire.Bitfield(b"\xff\xc0"))
    assert all(proto.peer_has(i) for i in range(NUM_PIECES))


def test_have_all_sets_every_piece_and_no_spare_bit() -> None:
    proto = connected()
    feed(proto, wire.HaveAll())
    assert bytes(proto.peer_have) == b"\xff\xc0"


def test_have_none_after_have_all_is_refused() -> None:
    proto = connected()
    feed(proto, wire.HaveAll())
    with pytest.raises(RemoteProtocolError):
        feed(proto, wire.HaveNone())


def test_have_none_first_then_a_late_have_all_announces_the_rest() -> None:
    proto = connected()
    feed(proto, wire.HaveNone(), wire.Have(2))
    assert bytes(proto.peer_have) == bits_of(2)
    late = proto.receive_data(wire.encode(wire.HaveAll()))
    assert late == [wire.Have(i) for i in range(NUM_PIECES) if i != 2]
    assert bytes(proto.peer_have) == b"\xff\xc0"


# --- have ---------------------------------------------------------------------------------------


def test_have_in_range_sets_one_bit_and_out_of_range_is_refused() -> None:
    proto = connected()
    feed(proto, wire.Have(NUM_PIECES - 1), wire.Have(0))
    assert bytes(proto.peer_have) == bits_of(0, 9)
    with pytest.raises(RemoteProtocolError):
        feed(proto, wire.Have(NUM_PIECES))


# --- requests, cancels, rejects, pieces: inside the piece -----------------------------------------

GOOD_RANGES = [
    (0, 0, BLOCK),
    (0, PIECE_LENGTH - BLOCK, BLOCK),
    (0, PIECE_LENGTH - 1, 1),
    (NUM_PIECES - 1, 0, LAST_PIECE),
    (NUM_PIECES - 1, LAST_PIECE - 1, 1),
]
BAD_RANGES = [
    (0, 0, 0),  # empty
    (0, 0, BLOCK + 1),  # over the block size
    (0, PIECE_LENGTH - BLOCK + 1, BLOCK),  # past the end of a full piece
    (0, 2**32 - 1, 1),
    (NUM_PIECES - 1, 0, LAST_PIECE + 1),  # past the end of the short last piece
    (NUM_PIECES - 1, BLOCK, 1),
    (NUM_PIECES, 0, BLOCK),  # no such piece
]


def range_messages(index: int, begin: int, length: int) -> list[wire.Message]:
    return [
        wire.Request(index, begin, length),
        wire.Cancel(index, begin, length),
        wire.RejectRequest(index, begin, length),
    ]


@pytest.mark.parametrize(("index", "begin", "length"), GOOD_RANGES)
def test_requests_cancels_rejects_and_pieces_inside_the_piece_are_accepted(index: int, begin: int, length: int) -> None:
    proto = connected()
    msgs = [*range_messages(index, begin, length), wire.Piece(index, begin, bytes(length))]
    assert feed(proto, *msgs) == msgs


@pytest.mark.parametrize(("index", "begin", "length"), BAD_RANGES)
@pytest.mark.parametrize("which", range(3))
def test_requests_cancels_and_rejects_outside_the_piece_are_refused(
    index: int, begin: int, length: int, which: int
) -> None:
    proto = connected()
    with pytest.raises(RemoteProtocolError):
        feed(proto, range_messages(index, begin, length)[which])


@pytest.mark.parametrize(("index", "begin", "length"), [r for r in BAD_RANGES if 0 < r[2] <= BLOCK])
def test_pieces_outside_the_piece_are_refused(index: int, begin: int, length: int) -> None:
    proto = connected()
    with pytest.raises(RemoteProtocolError):
        feed(proto, wire.Piece(index, begin, bytes(length)))


@SETTINGS
@given(st.integers(0, NUM_PIECES + 1), st.integers(0, PIECE_LENGTH + BLOCK), st.integers(1, BLOCK))
def test_a_piece_is_accepted_exactly_when_it_lies_inside_its_piece(index: int, begin: int, length: int) -> None:
    size = LAST_PIECE if index == NUM_PIECES - 1 else PIECE_LENGTH
    inside = index < NUM_PIECES and begin + length <= size
    proto = connected()
    msgs = [wire.Have(1), wire.Piece(index, begin, bytes(length)), wire.Have(2)]
    if inside:
        assert feed(proto, *msgs) == msgs
    else:
        with pytest.raises(RemoteProtocolError):
            feed(proto, *msgs)


def test_one_piece_torrent_uses_its_total_length_as_the_piece_size() -> None:
    proto = wire.PeerProtocol(INFO_HASH, OUR_ID, 1, PIECE_LENGTH, 5000)
    proto.receive_data(their_handshake())
    feed(proto, wire.Request(0, 4000, 1000))
    with pytest.raises(RemoteProtocolError):
        feed(proto, wire.Request(0, 4000, 1001))


# --- fast extension and extension protocol: only when both sides set the bit -------------------

FAST_ONLY: list[wire.Message] = [
    wire.HaveAll(),
    wire.HaveNone(),
    wire.SuggestPiece(1),
    wire.RejectRequest(1, 0, BLOCK),
    wire.AllowedFast(1),
]


@pytest.mark.parametrize("msg", FAST_ONLY)
@pytest.mark.parametrize(("ours", "theirs"), [(True, False), (False, True), (False, False)])
def test_fast_messages_without_fast_on_both_sides_are_refused(msg: wire.Message, ours: bool, theirs: bool) -> None:
    proto = connected(fast=ours, peer_fast=theirs)
    with pytest.raises(RemoteProtocolError):
        feed(proto, msg)


@pytest.mark.parametrize("msg", FAST_ONLY)
def test_fast_messages_with_fast_on_both_sides_are_accepted(msg: wire.Message) -> None:
    assert feed(connected(), msg) == [msg]


@pytest.mark.parametrize("msg", [wire.SuggestPiece(NUM_PIECES), wire.AllowedFast(NUM_PIECES)])
def test_suggest_and_allowed_fast_out_of_range_are_refused(msg: wire.Message) -> None:
    with pytest.raises(RemoteProtocolError):
        feed(connected(), msg)


@pytest.mark.parametrize("msg", [wire.ExtendedHandshake(m={"a": 1}), wire.Extended(3, b"d1:ai1ee")])
@pytest.mark.parametrize(("ours", "theirs"), [(True, False), (False, True)])
def test_extended_messages_without_the_bit_on_both_sides_are_refused(
    msg: wire.Message, ours: bool, theirs: bool
) -> None:
    proto = connected(extended=ours, peer_ext=theirs)
    with pytest.raises(RemoteProtocolError):
        feed(proto, msg)


def test_extended_handshakes_update_the_peer_extensions() -> None:
    proto = connected()
    first = wire.ExtendedHandshake(m={"ut_metadata": 2, "ut_pex": 1}, v="lt 2.1", reqq=250, metadata_size=999)
    feed(proto, first, wire.Extended(3, b"x"))
    assert proto.peer_extensions == {"ut_metadata": 2, "ut_pex": 1}
    assert proto.peer_extended_handshake == first
    feed(proto, wire.ExtendedHandshake(m={"ut_pex": 0, "lt_donthave": 7}))
    assert proto.peer_extensions == {"ut_metadata": 2, "lt_donthave": 7}


def test_port_is_accepted() -> None:
    assert feed(connected(), wire.Port(6881)) == [wire.Port(6881)]


# --- flags --------------------------------------------------------------------------------------


def test_both_sides_start_choking_and_not_interested() -> None:
    proto = make()
    assert (proto.am_choking, proto.am_interested, proto.peer_choking, proto.peer_interested) == (
        True,
        False,
        True,
        False,
    )


def test_peer_flags_follow_its_messages() -> None:
    proto = connected()
    feed(proto, wire.Unchoke(), wire.Interested())
    assert (proto.peer_choking, proto.peer_interested) == (False, True)
    feed(proto, wire.Choke())
    assert (proto.peer_choking, proto.peer_interested) == (True, True)
    feed(proto, wire.NotInterested(), wire.Unchoke())
    assert (proto.peer_choking, proto.peer_interested) == (False, False)
    assert (proto.am_choking, proto.am_interested) == (True, False)  # ours untouched


def test_our_flags_follow_what_we_send() -> None:
    proto = connected()
    assert proto.send(wire.Unchoke()) == wire.encode(wire.Unchoke())
    proto.send(wire.Interested())
    assert (proto.am_choking, proto.am_interested) == (False, True)
    proto.send(wire.Choke())
    proto.send(wire.NotInterested())
    assert (proto.am_choking, proto.am_interested) == (True, False)
    assert (proto.peer_choking, proto.peer_interested) == (True, False)  # theirs untouched


# --- sending rules (our own bugs) ---------------------------------------------------------------


def test_nothing_is_sent_before_our_handshake() -> None:
    with pytest.raises(wire.LocalProtocolError):
        make().send(wire.Interested())
    proto = make()
    proto.send_handshake()
    with pytest.raises(wire.LocalProtocolError):
        proto.send_handshake()


def test_block_refs_follow_the_sending_rules() -> None:
    with pytest.raises(wire.LocalProtocolError):
        make().send_block_refs(wire.MSG_REQUEST, [(0, 0, 16384)])
    plain = connected(peer_fast=False)
    with pytest.raises(wire.LocalProtocolError):
        plain.send_block_refs(wire.MSG_REJECT_REQUEST, [(0, 0, 16384)])
    assert plain.send_block_refs(wire.MSG_CANCEL, []) == b""
    plain.send(wire.Bitfield(bits_of(1)))  # an empty batch sent nothing: the bitfield may still go first
    proto = connected()
    assert proto.send_block_refs(wire.MSG_REQUEST, [(1, 0, 16384)]) == wire.encode(wire.Request(1, 0, 16384))
    with pytest.raises(wire.LocalProtocolError):  # requests went out: a bitfield now is our bug
        proto.send(wire.Bitfield(bits_of(1)))


def test_we_send_a_bitfield_only_first() -> None:
    proto = connected()
    proto.send(wire.ExtendedHandshake(m={"ut_metadata": 3}))
    proto.send(wire.Bitfield(bits_of(1)))
    with pytest.raises(wire.LocalProtocolError):
        proto.send(wire.HaveAll())
    other = connected()
    other.send(wire.Have(1))
    with pytest.raises(wire.LocalProtocolError):
        other.send(wire.Bitfield(bits_of(1)))


def test_we_send_fast_and_extended_messages_only_when_negotiated() -> None:
    proto = connected(peer_fast=False, peer_ext=False)
    forbidden: list[wire.Message] = [
        wire.HaveNone(),
        wire.AllowedFast(1),
        wire.RejectRequest(0, 0, BLOCK),
        wire.Extended(1, b""),
    ]
    for msg in forbidden:
        with pytest.raises(wire.LocalProtocolError):
            proto.send(msg)
    assert connected().send(wire.HaveNone()) == wire.encode(wire.HaveNone())


def test_piece_header_from_the_protocol_prefixes_the_block() -> None:
    sender = connected()
    receiver = connected()
    block = bytes(range(200))
    data = sender.send_piece_header(3, 100, len(block)) + block
    assert receiver.receive_data(data) == [wire.Piece(3, 100, block)]


# --- two ends talking, and hostile streams ------------------------------------------------------


def test_two_protocols_talk_to_each_other() -> None:
    a = wire.PeerProtocol(INFO_HASH, OUR_ID, NUM_PIECES, PIECE_LENGTH, TOTAL)
    b = wire.PeerProtocol(INFO_HASH, THEIR_ID, NUM_PIECES, PIECE_LENGTH, TOTAL)
    to_b = a.send_handshake()
    to_a = b.send_handshake()
    assert b.receive_data(to_b)[0].peer_id == OUR_ID  # type: ignore[union-attr]
    assert a.receive_data(to_a)[0].peer_id == THEIR_ID  # type: ignore[union-attr]
    to_b = a.send(wire.ExtendedHandshake(m={"ut_metadata": 1})) + a.send(wire.HaveNone()) + a.send(wire.Interested())
    to_a = b.send(wire.HaveAll()) + b.send(wire.AllowedFast(4)) + b.send(wire.Unchoke())
    b.receive_data(to_b)
    a.receive_data(to_a)
    assert (b.peer_interested, b.peer_extensions, bytes(b.peer_have)) == (True, {"ut_metadata": 1}, b"\0\0")
    assert (a.peer_choking, bytes(a.peer_have)) == (False, b"\xff\xc0")
    request = a.send(wire.Request(4, 0, BLOCK))
    (got,) = b.receive_data(request)
    assert got == wire.Request(4, 0, BLOCK)


peer_messages = st.one_of(
    st.sampled_from([wire.KeepAlive(), wire.Choke(), wire.Unchoke(), wire.Interested(), wire.NotInterested()]),
    st.sampled_from([wire.HaveAll(), wire.HaveNone()]),
    st.builds(wire.Have, st.integers(0, NUM_PIECES + 1)),
    st.builds(wire.Bitfield, st.binary(min_size=2, max_size=2)),
    st.builds(wire.Request, st.integers(0, NUM_PIECES), st.integers(0, PIECE_LENGTH), st.integers(0, BLOCK + 1)),
    st.builds(wire.RejectRequest, st.integers(0, NUM_PIECES), st.integers(0, PIECE_LENGTH), st.integers(0, BLOCK)),
    st.builds(wire.Piece, st.integers(0, NUM_PIECES), st.integers(0, PIECE_LENGTH), st.binary(min_size=1, max_size=64)),
    st.builds(wire.AllowedFast, st.integers(0, NUM_PIECES)),
    st.builds(wire.Extended, st.integers(1, 255), st.binary(max_size=16)),
    st.builds(wire.ExtendedHandshake, st.dictionaries(st.text(max_size=5), st.integers(0, 255), max_size=3)),
)


@SETTINGS
@given(st.lists(peer_messages, max_size=15), st.booleans(), st.integers(1, 200))
def test_message_sequences_give_errors_or_a_consistent_state(msgs: list[wire.Message], fast: bool, chunk: int) -> None:
    """Any sequence either passes whole or stops at a RemoteProtocolError, and the peer's pieces
    are what the accepted messages say (a model of the rules written independently)."""
    proto = connected(peer_fast=fast)
    data = b"".join(wire.encode(m) for m in msgs)
    accepted: list[wire.Message] = []
    try:
        for start in range(0, len(data), chunk):
            accepted.extend(proto.receive_data(data[start : start + chunk]))
    except RemoteProtocolError:
        failed = True
    else:
        failed = False
    # Replay the model over the messages in order: the first one it refuses is where we must stop.
    # A late bitfield / have-all / have-none is an update: it comes out as HAVEs for new pieces.
    have: set[int] = set()
    first = True
    model_accepts: list[wire.Message] = []
    model_out: list[wire.Message] = []
    for msg in msgs:
        ok = True
        out: list[wire.Message] = [msg]
        if isinstance(msg, (wire.Bitfield, wire.HaveAll, wire.HaveNone)):
            ok = fast or isinstance(msg, wire.Bitfield)
            if isinstance(msg, wire.Bitfield):
                ok = ok and msg.bits[1] & 0x3F == 0
                new = {i for i in range(NUM_PIECES) if msg.bits[i >> 3] & (0x80 >> (i & 7))}
            elif isinstance(msg, wire.HaveAll):
                new = set(range(NUM_PIECES))
            else:
                new = set()
            if ok and not first:
                ok = have <= new
                out = [wire.Have(i) for i in sorted(new - have)]
            if ok:
                have = new
        elif isinstance(msg, (wire.RejectRequest, wire.AllowedFast)) and not fast:
            ok = False
        if isinstance(msg, (wire.Have, wire.AllowedFast)) and msg.index >= NUM_PIECES:
            ok = False
        if isinstance(msg, (wire.Request, wire.RejectRequest, wire.Piece)):
            length = len(msg.block) if isinstance(msg, wire.Piece) else msg.length
            size = LAST_PIECE if msg.index == NUM_PIECES - 1 else PIECE_LENGTH
            ok = ok and msg.index < NUM_PIECES and 0 < length <= BLOCK and msg.begin + length <= size
        if not ok:
            break
        model_accepts.append(msg)
        model_out.extend(out)
        if isinstance(msg, wire.Have):
            have.add(msg.index)
        if not isinstance(msg, (wire.KeepAlive, wire.ExtendedHandshake)):
            first = False
    assert failed == (len(model_accepts) < len(msgs))
    assert accepted == model_out[: len(accepted)]
    if not failed:
        assert accepted == model_out
        assert {i for i in range(NUM_PIECES) if proto.peer_has(i)} == have
        assert bytes(proto.peer_have)[1] & 0x3F == 0


@SETTINGS
@given(st.binary(max_size=300), st.integers(1, 64))
def test_random_bytes_after_the_handshake_only_raise_remote_protocol_error(garbage: bytes, chunk: int) -> None:
    proto = connected()
    try:
        for start in range(0, len(garbage), chunk):
            proto.receive_data(garbage[start : start + chunk])
    except RemoteProtocolError:
        pass


def test_a_4_gib_piece_announcement_is_refused_by_the_protocol_too() -> None:
    proto = connected()
    with pytest.raises(RemoteProtocolError):
        proto.receive_data(struct.pack(">IB", 2**32 - 1, wire.MSG_PIECE))


def test_micro_check_protocol_speed(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints how fast checked blocks go through receive_data; informative only, no timing assert."""
    import time

    proto = wire.PeerProtocol(INFO_HASH, OUR_ID, 64, 16 * BLOCK, 64 * 16 * BLOCK)
    proto.receive_data(their_handshake())
    block = bytes(BLOCK)
    stream = b"".join(wire.encode(wire.Piece(i // 16, (i % 16) * BLOCK, block)) for i in range(1024))
    receives = [stream[i : i + 4 * (BLOCK + 13)] for i in range(0, len(stream), 4 * (BLOCK + 13))]
    started = time.perf_counter()
    count = sum(len(proto.receive_data(r)) for r in receives)
    elapsed = time.perf_counter() - started
    assert count == 1024
    with capsys.disabled():
        print(f"\n[wire] {count} checked blocks in {elapsed * 1e3:.2f} ms ({elapsed / count * 1e6:.2f} us/block)")
