"""The peer wire codec: messages, encode, and the incremental Decoder (core/wire.py)."""

from __future__ import annotations

import dataclasses
import struct
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import DEFAULT_CONFIG, KiB
from jstorrent_cli.core import bencode, wire
from jstorrent_cli.errors import RemoteProtocolError

U32 = st.integers(0, 2**32 - 1)
INFO_HASH = bytes(range(20))
PEER_ID = b"-JS0001-" + b"abcdefghijkl"
HANDSHAKE = wire.Handshake(INFO_HASH, PEER_ID, supports_extended=True, supports_fast=True)
BLOCK = DEFAULT_CONFIG.block_size
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frame(msg_id: int, body: bytes = b"", length: int | None = None) -> bytes:
    """A raw message: length prefix (the real one unless `length` is given), id, body."""
    return struct.pack(">IB", 1 + len(body) if length is None else length, msg_id) + body


handshakes = st.builds(
    wire.Handshake,
    info_hash=st.binary(min_size=20, max_size=20),
    peer_id=st.binary(min_size=20, max_size=20),
    supports_extended=st.booleans(),
    supports_fast=st.booleans(),
    supports_dht=st.booleans(),
)
extended_handshakes = st.builds(
    wire.ExtendedHandshake,
    m=st.dictionaries(st.text(max_size=12), st.integers(0, 255), max_size=5),
    v=st.none() | st.text(max_size=30),
    reqq=st.none() | st.integers(1, 2**40),
    p=st.none() | st.integers(1, 65535),
    yourip=st.none() | st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16),
    metadata_size=st.none() | st.integers(0, 2**40),
)
# Every message kind but the handshake; blocks small to keep the tests fast (full blocks below).
messages = st.one_of(
    st.just(wire.KeepAlive()),
    st.just(wire.Choke()),
    st.just(wire.Unchoke()),
    st.just(wire.Interested()),
    st.just(wire.NotInterested()),
    st.builds(wire.Have, U32),
    st.builds(wire.Bitfield, st.binary(max_size=64)),
    st.builds(wire.Request, U32, U32, U32),
    st.builds(wire.Piece, U32, U32, st.binary(min_size=1, max_size=600)),
    st.builds(wire.Cancel, U32, U32, U32),
    st.builds(wire.Port, st.integers(0, 65535)),
    st.just(wire.HaveAll()),
    st.just(wire.HaveNone()),
    st.builds(wire.SuggestPiece, U32),
    st.builds(wire.RejectRequest, U32, U32, U32),
    st.builds(wire.AllowedFast, U32),
    st.builds(wire.Extended, st.integers(1, 255), st.binary(max_size=200)),
    extended_handshakes,
)


# --- round trip ---------------------------------------------------------------------------------


@SETTINGS
@given(messages)
def test_every_message_round_trips(msg: wire.Message) -> None:
    data = wire.encode(msg)
    assert wire.Decoder(expect_handshake=False).feed(data) == [msg]
    # The length prefix counts exactly the bytes after it.
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4


@SETTINGS
@given(handshakes)
def test_handshake_round_trips(msg: wire.Handshake) -> None:
    data = wire.encode(msg)
    assert len(data) == wire.HANDSHAKE_LENGTH
    assert wire.Decoder().feed(data) == [msg]


def test_known_encodings_match_the_beps() -> None:
    # Byte layouts written out from BEP 3, 6 and 10, not from our encoder.
    assert wire.encode(wire.KeepAlive()) == b"\0\0\0\0"
    assert wire.encode(wire.Choke()) == b"\0\0\0\x01\x00"
    assert wire.encode(wire.NotInterested()) == b"\0\0\0\x01\x03"
    assert wire.encode(wire.Have(258)) == b"\0\0\0\x05\x04\0\0\x01\x02"
    assert wire.encode(wire.Request(1, 16384, 16384)) == b"\0\0\0\x0d\x06\0\0\0\x01\0\0\x40\0\0\0\x40\0"
    assert wire.encode(wire.Port(6881)) == b"\0\0\0\x03\x09\x1a\xe1"
    assert wire.encode(wire.HaveAll()) == b"\0\0\0\x01\x0e"
    assert wire.encode(wire.HaveNone()) == b"\0\0\0\x01\x0f"
    assert wire.encode(wire.AllowedFast(7)) == b"\0\0\0\x05\x11\0\0\0\x07"
    assert wire.encode(wire.Extended(3, b"xy")) == b"\0\0\0\x04\x14\x03xy"
    hs = wire.encode(wire.Handshake(INFO_HASH, PEER_ID, True, True, True))
    assert hs[:20] == b"\x13BitTorrent protocol"
    assert hs[20:28] == b"\0\0\0\0\0\x10\0\x05"  # extension 0x10 in byte 5; fast 0x04 | dht 0x01 in byte 7
    assert hs[28:48] == INFO_HASH and hs[48:] == PEER_ID


def test_piece_header_plus_block_equals_the_encoded_piece() -> None:
    block = bytes(range(256)) * 64
    header = wire.encode_piece_header(5, 32768, len(block))
    assert len(header) == 13
    assert header + block == wire.encode(wire.Piece(5, 32768, block))
    assert wire.Decoder(expect_handshake=False).feed(header + block) == [wire.Piece(5, 32768, block)]


@SETTINGS
@given(st.sampled_from([wire.MSG_REQUEST, wire.MSG_CANCEL, wire.MSG_REJECT_REQUEST]),
       st.lists(st.tuples(U32, U32, U32), max_size=40))
def test_block_refs_in_one_buffer_equal_the_messages_one_by_one(
    msg_id: int, refs: list[tuple[int, int, int]]
) -> None:
    kind = {wire.MSG_REQUEST: wire.Request, wire.MSG_CANCEL: wire.Cancel, wire.MSG_REJECT_REQUEST: wire.RejectRequest}
    packed = wire.encode_block_refs(msg_id, refs)
    assert bytes(packed) == b"".join(wire.encode(kind[msg_id](*ref)) for ref in refs)


def test_block_refs_refuse_a_message_that_names_no_block() -> None:
    with pytest.raises(ValueError):
        wire.encode_block_refs(wire.MSG_HAVE, [(1, 2, 3)])


def test_extended_handshake_is_a_sorted_bencoded_dictionary() -> None:
    msg = wire.ExtendedHandshake(m={"ut_metadata": 2, "ut_pex": 1}, v="jstorrent 0.1", reqq=500, p=6881)
    data = wire.encode(msg)
    assert data[4] == wire.MSG_EXTENDED and data[5] == 0
    assert bencode.decode(data[6:]) == {
        b"m": {b"ut_metadata": 2, b"ut_pex": 1},
        b"p": 6881,
        b"reqq": 500,
        b"v": b"jstorrent 0.1",
    }


def test_extended_handshake_ignores_unknown_keys_and_bad_values() -> None:
    payload = bencode.encode(
        {
            b"m": {b"good": 3, b"neg": -1, b"big": 256, b"str": b"x", b"\xff": 4},
            b"p": 70000,
            b"reqq": b"many",
            b"yourip": b"\x7f\0\0",
            b"v": b"\xffclient",
            b"metadata_size": 1234,
            b"zzz_unknown": [1, 2],
        }
    )
    (msg,) = wire.Decoder(expect_handshake=False).feed(frame(wire.MSG_EXTENDED, b"\x00" + payload))
    assert msg == wire.ExtendedHandshake(
        m={"good": 3}, v="\ufffdclient", reqq=None, p=None, yourip=None, metadata_size=1234
    )


def test_extended_handshake_keys_may_be_unsorted() -> None:
    payload = b"d1:pi6881e1:md6:ut_pexi1eee"
    (msg,) = wire.Decoder(expect_handshake=False).feed(frame(wire.MSG_EXTENDED, b"\x00" + payload))
    assert msg == wire.ExtendedHandshake(m={"ut_pex": 1}, p=6881)


@pytest.mark.parametrize("payload", [b"", b"i3e", b"l1:ae", b"d1:m", b"de trailing", b"\xff"])
def test_extended_handshake_that_is_not_a_dictionary_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        wire.Decoder(expect_handshake=False).feed(frame(wire.MSG_EXTENDED, b"\x00" + payload))


# --- chunking -----------------------------------------------------------------------------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


@SETTINGS
@given(st.lists(messages, max_size=12), st.lists(st.integers(0, 10**6), max_size=20), st.booleans())
def test_any_rechunking_gives_the_same_messages(msgs: list[wire.Message], cuts: list[int], writable: bool) -> None:
    stream = wire.encode(HANDSHAKE) + b"".join(wire.encode(m) for m in msgs)
    decoder = wire.Decoder()
    got: list[wire.Message] = []
    for part in split(stream, cuts):
        got.extend(decoder.feed(bytearray(part) if writable else part))
    assert got == [HANDSHAKE, *msgs]
    assert decoder.buffered == 0


@SETTINGS
@given(st.lists(messages, max_size=8))
def test_byte_at_a_time_gives_the_same_messages(msgs: list[wire.Message]) -> None:
    stream = wire.encode(HANDSHAKE) + b"".join(wire.encode(m) for m in msgs)
    decoder = wire.Decoder()
    got: list[wire.Message] = []
    for i in range(len(stream)):
        got.extend(decoder.feed(stream[i : i + 1]))
    assert got == [HANDSHAKE, *msgs]


def test_memoryview_input_of_another_format_is_read_as_bytes() -> None:
    data = wire.encode(wire.Have(1)) + wire.encode(wire.Interested())
    padded = data + b"\0" * (-len(data) % 4)
    view = memoryview(padded).cast("I")[: len(data) // 4 + 1]
    got = wire.Decoder(expect_handshake=False).feed(view)
    assert got[:2] == [wire.Have(1), wire.Interested()]


# --- hostile input ------------------------------------------------------------------------------

plausible_frames = st.builds(
    lambda length, msg_id, body: struct.pack(">IB", length, msg_id) + body,
    st.integers(0, 40) | st.sampled_from([BLOCK + 9, BLOCK + 10, 2**32 - 1]),
    st.integers(0, 25),
    st.binary(max_size=40),
)
hostile_streams = st.lists(plausible_frames | st.binary(max_size=64), max_size=10).map(b"".join)


@SETTINGS
@given(hostile_streams, st.lists(st.integers(0, 10**4), max_size=6), st.none() | st.integers(1, 200))
def test_random_bytes_after_a_handshake_only_raise_remote_protocol_error(
    garbage: bytes, cuts: list[int], num_pieces: int | None
) -> None:
    decoder = wire.Decoder(num_pieces=num_pieces)
    decoder.feed(wire.encode(HANDSHAKE))
    try:
        for part in split(garbage, cuts):
            for msg in decoder.feed(part):
                # Whatever comes out is a well-formed message: it encodes back to bytes.
                assert isinstance(wire.encode(msg), bytes)
    except RemoteProtocolError:
        pass
    assert decoder.buffered <= DEFAULT_CONFIG.max_message_length + 4


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_as_a_handshake_only_raise_remote_protocol_error(garbage: bytes) -> None:
    try:
        got = wire.Decoder().feed(garbage)
    except RemoteProtocolError:
        return
    # Accepted only if it really begins with the protocol string.
    assert garbage[:20] == b"\x13BitTorrent protocol"[: len(garbage[:20])]
    assert len(got) == (1 if len(garbage) >= 68 else 0)


@pytest.mark.parametrize("first", [b"\x12", b"\x13BitTorrent Protocol", b"GET / HTTP/1.1\r\n"])
def test_a_wrong_handshake_is_refused_as_soon_as_its_bytes_differ(first: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        wire.Decoder().feed(first)


def test_a_4_gib_length_is_refused_from_the_prefix_alone_with_bounded_memory() -> None:
    decoder = wire.Decoder()
    decoder.feed(wire.encode(HANDSHAKE))
    hostile = b"\xff\xff\xff\xff\x07" + bytes(8 * 1024 * KiB)  # claims 4 GiB, sends 8 MiB of it
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError):
            decoder.feed(hostile)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * KiB  # nothing of the 8 MiB was copied
    # Decided from the four length bytes alone, before any body byte arrived.
    fresh = wire.Decoder()
    fresh.feed(wire.encode(HANDSHAKE))
    assert fresh.feed(b"\xff\xff\xff") == []  # not yet decidable...
    with pytest.raises(RemoteProtocolError):
        fresh.feed(b"\xff")  # ...now it is, with no body byte seen
    assert fresh.buffered <= 4


def test_trickled_largest_messages_never_buffer_more_than_one_message() -> None:
    decoder = wire.Decoder(expect_handshake=False)
    limit = DEFAULT_CONFIG.max_message_length
    big = frame(wire.MSG_EXTENDED, b"\x05" + bytes(limit - 2))
    assert len(big) == limit + 4
    step = 64 * KiB
    for start in range(0, len(big) - step, step):
        assert decoder.feed(big[start : start + step]) == []
        assert decoder.buffered <= limit + 4
    (msg,) = decoder.feed(big[(len(big) - 1) // step * step :])
    assert msg == wire.Extended(5, bytes(limit - 2))
    assert decoder.buffered == 0
    with pytest.raises(RemoteProtocolError):
        decoder.feed(frame(wire.MSG_EXTENDED, length=limit + 1))


def test_unknown_messages_are_skipped_unbuffered_and_counted() -> None:
    decoder = wire.Decoder(expect_handshake=False)
    body = bytes(DEFAULT_CONFIG.max_message_length - 1)
    stream = frame(99, body) + wire.encode(wire.Have(3)) + frame(21, b"abc") + wire.encode(wire.Unchoke())
    got: list[wire.Message] = []
    for start in range(0, len(stream), 1000):
        got.extend(decoder.feed(stream[start : start + 1000]))
        assert decoder.buffered < 1000  # the unknown body is skipped, not held
    assert got == [wire.Have(3), wire.Unchoke()]
    assert decoder.unknown_messages == 2
    with pytest.raises(RemoteProtocolError):
        decoder.feed(frame(99, length=DEFAULT_CONFIG.max_message_length + 1))


@pytest.mark.parametrize(
    ("msg_id", "good_length"),
    [
        (wire.MSG_CHOKE, 1),
        (wire.MSG_UNCHOKE, 1),
        (wire.MSG_INTERESTED, 1),
        (wire.MSG_NOT_INTERESTED, 1),
        (wire.MSG_HAVE, 5),
        (wire.MSG_REQUEST, 13),
        (wire.MSG_CANCEL, 13),
        (wire.MSG_PORT, 3),
        (wire.MSG_SUGGEST_PIECE, 5),
        (wire.MSG_HAVE_ALL, 1),
        (wire.MSG_HAVE_NONE, 1),
        (wire.MSG_REJECT_REQUEST, 13),
        (wire.MSG_ALLOWED_FAST, 5),
    ],
)
@pytest.mark.parametrize("delta", [-1, 1, 1000])
def test_fixed_size_messages_of_the_wrong_length_are_refused_from_the_header(
    msg_id: int, good_length: int, delta: int
) -> None:
    if good_length + delta < 1:
        delta = 2
    header = frame(msg_id, length=good_length + delta)
    # Both paths: whole header at once, and one byte at a time.
    with pytest.raises(RemoteProtocolError):
        wire.Decoder(expect_handshake=False).feed(header)
    decoder = wire.Decoder(expect_handshake=False)
    with pytest.raises(RemoteProtocolError):
        for i in range(len(header)):
            decoder.feed(header[i : i + 1])
    # And the right length is accepted.
    good = frame(msg_id, bytes(good_length - 1))
    assert len(wire.Decoder(expect_handshake=False).feed(good)) == 1


@pytest.mark.parametrize("length", [9, BLOCK + 10, 2 * BLOCK])
def test_piece_messages_outside_one_to_block_size_bytes_are_refused(length: int) -> None:
    with pytest.raises(RemoteProtocolError):
        wire.Decoder(expect_handshake=False).feed(frame(wire.MSG_PIECE, length=length))


def test_piece_of_exactly_block_size_is_accepted() -> None:
    block = bytes(range(256)) * (BLOCK // 256)
    (msg,) = wire.Decoder(expect_handshake=False).feed(wire.encode(wire.Piece(0, 0, block)))
    assert msg == wire.Piece(0, 0, block)


def test_block_size_comes_from_the_config() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, block_size=1024)
    decoder = wire.Decoder(config, expect_handshake=False)
    assert decoder.feed(wire.encode(wire.Piece(0, 0, bytes(1024)))) == [wire.Piece(0, 0, bytes(1024))]
    with pytest.raises(RemoteProtocolError):
        decoder.feed(wire.encode_piece_header(0, 0, 1025))


@pytest.mark.parametrize(("num_pieces", "good"), [(1, 1), (8, 1), (9, 2), (1000, 125)])
def test_bitfield_length_must_match_the_piece_count(num_pieces: int, good: int) -> None:
    decoder = wire.Decoder(num_pieces=num_pieces, expect_handshake=False)
    assert decoder.feed(frame(wire.MSG_BITFIELD, bytes(good))) == [wire.Bitfield(bytes(good))]
    for wrong in (good - 1, good + 1):
        with pytest.raises(RemoteProtocolError):
            wire.Decoder(num_pieces=num_pieces, expect_handshake=False).feed(frame(wire.MSG_BITFIELD, length=1 + wrong))


def test_bitfield_length_check_starts_once_the_piece_count_is_set() -> None:
    decoder = wire.Decoder(expect_handshake=False)
    assert decoder.feed(frame(wire.MSG_BITFIELD, b"\xff" * 3)) == [wire.Bitfield(b"\xff" * 3)]
    decoder.num_pieces = 16
    with pytest.raises(RemoteProtocolError):
        decoder.feed(frame(wire.MSG_BITFIELD, b"\xff" * 3))


def test_extended_message_without_its_id_byte_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        wire.Decoder(expect_handshake=False).feed(frame(wire.MSG_EXTENDED))


# --- copies of block bytes ----------------------------------------------------------------------


def test_a_whole_piece_in_one_receive_is_a_view_of_it_zero_copies() -> None:
    block = bytes(range(256)) * 64
    data = wire.encode(wire.Piece(1, 0, block)) + wire.encode(wire.Piece(1, BLOCK, block))
    first, second = wire.Decoder(expect_handshake=False).feed(data)
    assert isinstance(first, wire.Piece) and isinstance(second, wire.Piece)
    for msg in (first, second):
        assert isinstance(msg.block, memoryview)
        assert msg.block.obj is data  # no copy: a slice of the received bytes
        assert msg.block.readonly
        assert msg.block == block
    assert (first.begin, second.begin) == (0, BLOCK)


def test_a_piece_straddling_receives_is_gathered_with_one_copy() -> None:
    block = bytes(range(256)) * 64
    data = wire.encode(wire.Piece(2, 0, block))
    decoder = wire.Decoder(expect_handshake=False)
    assert decoder.feed(data[:5000]) == []
    assert decoder.buffered == len(block)  # the block's own buffer, allocated once
    (msg,) = decoder.feed(data[5000:])
    assert isinstance(msg, wire.Piece) and isinstance(msg.block, memoryview)
    gathered = msg.block.obj
    assert isinstance(gathered, bytearray) and len(gathered) == len(block)  # exactly one buffer
    assert msg.block.readonly and msg.block == block


def test_a_writable_receive_buffer_may_be_reused_after_feed() -> None:
    block = b"\x5a" * 1000
    buffer = bytearray(wire.encode(wire.Piece(0, 0, block)))
    (msg,) = wire.Decoder(expect_handshake=False).feed(buffer)
    buffer[:] = bytes(len(buffer))  # the caller's next recv_into
    assert isinstance(msg, wire.Piece) and msg.block == block


def test_micro_check_decoding_speed(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints how fast 64 KiB receives of 16 KiB blocks decode; informative only, no timing assert."""
    block = bytes(BLOCK)
    stream = b"".join(wire.encode(wire.Piece(i // 16, (i % 16) * BLOCK, block)) for i in range(512))
    receives = [stream[i : i + 64 * KiB] for i in range(0, len(stream), 64 * KiB)]
    decoder = wire.Decoder(expect_handshake=False)
    started = time.perf_counter()
    count = sum(len(decoder.feed(r)) for r in receives)
    elapsed = time.perf_counter() - started
    assert count == 512
    with capsys.disabled():
        print(f"\n[wire] decoded {count} blocks in {elapsed * 1e3:.2f} ms ({count * BLOCK / elapsed / 1e6:.0f} MB/s)")


# --- listener helper and extended handshake fuzzing ---------------------------------------------


def test_peek_handshake_waits_for_68_bytes_and_refuses_strangers_early() -> None:
    data = wire.encode(HANDSHAKE) + wire.encode(wire.HaveAll())
    assert wire.peek_handshake(data[:67]) is None
    assert wire.peek_handshake(data) == HANDSHAKE
    assert wire.peek_handshake(memoryview(data)[:68]) == HANDSHAKE
    with pytest.raises(RemoteProtocolError):
        wire.peek_handshake(b"\x13BitTorrent" + b"X")
    # The whole buffer (handshake included) then decodes as usual.
    assert wire.Decoder().feed(data) == [HANDSHAKE, wire.HaveAll()]


bencode_values = st.recursive(
    st.integers(-(2**70), 2**70) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=8), inner, max_size=4),
    max_leaves=8,
)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([b"m", b"v", b"p", b"reqq", b"yourip", b"metadata_size", b"other"]),
        bencode_values,
        max_size=6,
    )
)
def test_any_bencoded_dictionary_gives_an_extended_handshake(value: dict[bytes, bencode.Value]) -> None:
    (msg,) = wire.Decoder(expect_handshake=False).feed(frame(wire.MSG_EXTENDED, b"\x00" + bencode.encode(value)))
    assert isinstance(msg, wire.ExtendedHandshake)
    # Only values of the right type and range are kept, and they re-encode.
    assert all(0 <= ext_id <= 255 for ext_id in msg.m.values())
    raw_p, raw_ip, raw_size = value.get(b"p"), value.get(b"yourip"), value.get(b"metadata_size")
    assert msg.p == (raw_p if isinstance(raw_p, int) and 1 <= raw_p <= 65535 else None)
    assert msg.yourip == (raw_ip if isinstance(raw_ip, bytes) and len(raw_ip) in (4, 16) else None)
    assert msg.metadata_size == (raw_size if isinstance(raw_size, int) and raw_size >= 0 else None)
    assert wire.Decoder(expect_handshake=False).feed(wire.encode(msg)) == [msg]


@SETTINGS
@given(st.binary(max_size=100))
def test_random_extended_handshake_payloads_only_raise_remote_protocol_error(payload: bytes) -> None:
    try:
        (msg,) = wire.Decoder(expect_handshake=False).feed(frame(wire.MSG_EXTENDED, b"\x00" + payload))
    except RemoteProtocolError:
        return
    assert isinstance(msg, wire.ExtendedHandshake)
