"""Unit tests of the scheduler's policy: limits, timeouts, rejects, interest, hash failures, bans, snapshot."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import DEFAULT_CONFIG, Config, KiB
from jstorrent_cli.core import messages as m
from jstorrent_cli.core.picker import PieceState
from jstorrent_cli.core.scheduler import Scheduler

BS = DEFAULT_CONFIG.block_size


def make(num_pieces: int = 4, blocks: int = 4, config: Config = DEFAULT_CONFIG, seed: int = 0,
         **kwargs: object) -> Scheduler:
    piece_length = blocks * BS
    return Scheduler(num_pieces, piece_length, num_pieces * piece_length, config, random.Random(seed),
                     **kwargs)  # type: ignore[arg-type]


def requests(commands: list[m.Command], peer: object = None) -> list[m.BlockRef]:
    return [r for c in commands if isinstance(c, m.SendRequests) and (peer is None or c.peer == peer)
            for r in c.requests]


def cancels(commands: list[m.Command], peer: object = None) -> list[m.BlockRef]:
    return [r for c in commands if isinstance(c, m.SendCancels) and (peer is None or c.peer == peer)
            for r in c.cancels]


def join(s: Scheduler, peer: int, now: float = 0.0, unchoke: bool = True, **kwargs: object) -> list[m.Command]:
    fact = m.PeerJoined(peer, kwargs.pop("ip", f"127.0.0.{peer + 2}"), **kwargs)  # type: ignore[arg-type]
    out = s.handle(fact, now)
    if unchoke:
        out += s.handle(m.Unchoked(peer), now)
    return out


def deliver(s: Scheduler, peer: int, refs: list[m.BlockRef], now: float, fill: int = 0) -> list[m.Command]:
    return s.handle(m.BlocksReceived(peer, tuple((p, b, bytes([fill]) * n) for p, b, n in refs)), now)


def bitfield(num_pieces: int, have: set[int]) -> bytes:
    out = bytearray((num_pieces + 7) // 8)
    for i in have:
        out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


# --- limits ---------------------------------------------------------------------------------------


def test_slow_start_from_initial_limit_and_one_more_per_block() -> None:
    s = make(num_pieces=20)
    out = join(s, 0, have_all=True)
    first = requests(out, 0)
    assert len(first) == DEFAULT_CONFIG.peer_limit_initial
    out = deliver(s, 0, first[:1], 0.01)
    # one slot freed plus one more slot: two new requests
    assert len(requests(out, 0)) == 2
    assert s.snapshot().peers[0].limit == DEFAULT_CONFIG.peer_limit_initial + 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 3.0), st.lists(st.integers(1, 6), min_size=1, max_size=6)),
                min_size=1, max_size=8))
def test_limits_and_request_times_do_not_depend_on_how_blocks_are_batched(
    rounds: list[tuple[float, list[int]]],
) -> None:
    # Each round every outstanding block arrives: in `whole` as one fact, in `split` as several facts
    # at the same moment. The per-peer limit, rate, slow start and request deadline must agree.
    whole, split = make(num_pieces=400), make(num_pieces=400)
    join(whole, 0, have_all=True)
    join(split, 0, have_all=True)
    now = 0.0
    for dt, cuts in rounds:
        now += dt
        deliver(whole, 0, list(whole.outstanding(0)), now)
        pending = list(split.outstanding(0))
        for size in [*cuts, len(pending)]:
            if pending:
                deliver(split, 0, pending[:size], now)
                pending = pending[size:]
        a, b = whole.snapshot().peers[0], split.snapshot().peers[0]
        assert (a.limit, a.rate, a.slow_start, a.request_timeout, a.outstanding) == (
            b.limit, b.rate, b.slow_start, b.request_timeout, b.outstanding)
        whole.check_invariants()
        split.check_invariants()


def test_limit_is_bounded_by_the_peers_reqq() -> None:
    s = make(num_pieces=20)
    out = join(s, 0, have_all=True, reqq=3)
    assert len(requests(out, 0)) == 3
    now = 0.0
    pending = requests(out, 0)
    for _ in range(30):
        now += 0.01
        out = deliver(s, 0, pending[:1], now)
        pending = pending[1:] + requests(out, 0)
        assert s.snapshot().peers[0].outstanding <= 3
    assert s.snapshot().peers[0].limit == 3


def test_limit_follows_rate_after_slow_start() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, peer_queue_seconds=1.0, peer_rate_window=1.0)
    s = make(num_pieces=200, blocks=16, config=config)
    pending = requests(join(s, 0, have_all=True), 0)
    now = 0.0
    # 20 blocks per second = 320 KiB/s: the target is 20 blocks in the queue
    for _ in range(200):
        now += 0.05
        out = deliver(s, 0, pending[:1], now)
        pending = pending[1:] + requests(out, 0)
    peer = s.snapshot().peers[0]
    assert not peer.slow_start
    assert peer.rate == pytest.approx(20 * BS, rel=0.1)
    assert 18 <= peer.limit <= 22


def test_choke_halves_the_limit_and_releases_requests() -> None:
    s = make(num_pieces=20)
    pending = requests(join(s, 0, have_all=True), 0)
    now = 0.0
    for _ in range(12):
        now += 0.01
        out = deliver(s, 0, pending[:1], now)
        pending = pending[1:] + requests(out, 0)
    before = s.snapshot().peers[0].limit
    s.handle(m.Choked(0), now)
    peer = s.snapshot().peers[0]
    assert peer.limit == before // 2 and peer.outstanding == 0
    assert s.snapshot().bytes_in_flight == 0


def test_timeout_releases_cancels_bars_and_halves() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=8, request_timeout_initial=5.0)
    s = make(num_pieces=4, config=config)
    held = requests(join(s, 0, have_all=True), 0)
    assert len(held) == 8
    join(s, 1, now=1.0, have_all=True)  # another holder the timed-out blocks can go to
    out = s.handle(m.Tick(), 4.9)
    assert not cancels(out)
    out = s.handle(m.Tick(), 5.0)
    assert sorted(cancels(out, 0)) == sorted(held)  # every request timed out together
    assert all(s.is_barred(0, p) for p, _, _ in held)
    snap = s.snapshot()
    assert snap.peers[0].limit == 4 and snap.peers[0].outstanding == len(requests(out, 0))
    # the peer is not asked for the same pieces again at once
    assert not {p for p, _, _ in requests(out, 0)} & {p for p, _, _ in held}


def test_requests_queued_behind_arriving_blocks_do_not_time_out() -> None:
    # A peer serves its requests in order, one block every 0.8 s: the fourth request waits 3.2 s for
    # its turn, past a 2 s deadline, yet the peer is never late. Timing it out threw its block away
    # when it came (the request was released) and, for a sole holder, barred the piece for 10 s.
    config = dataclasses.replace(DEFAULT_CONFIG, request_timeout_initial=2.0, request_timeout_min=2.0,
                                 request_timeout_max=2.0)
    s = make(num_pieces=4, blocks=16, config=config)
    queue = requests(join(s, 0, have_all=True), 0)
    assert len(queue) == config.peer_limit_initial
    now = 0.0
    for _ in range(40):
        for _ in range(4):  # Ticks between two blocks
            now += 0.2
            out = s.handle(m.Tick(), now)
            assert not cancels(out), f"a request timed out at {now:.1f} s while its peer was delivering"
            queue += requests(out, 0)
        out = deliver(s, 0, queue[:1], now)
        queue = queue[1:] + requests(out, 0)
        s.check_invariants()
    assert s.snapshot().wasted_bytes == 0
    # The peer stops: its requests time out one deadline after its last block, not later.
    last = now
    assert not cancels(s.handle(m.Tick(), last + 1.9))
    assert sorted(cancels(s.handle(m.Tick(), last + 2.05), 0)) == sorted(queue)


def test_a_request_the_peer_skipped_times_out_from_when_it_was_sent() -> None:
    # The peer answers a later request but not an earlier one: the earlier one is not waiting for its
    # turn any more, so later blocks do not keep it alive.
    config = dataclasses.replace(DEFAULT_CONFIG, request_timeout_initial=2.0, request_timeout_min=2.0,
                                 request_timeout_max=2.0)
    s = make(num_pieces=4, blocks=16, config=config)
    first, *rest = requests(join(s, 0, have_all=True), 0)
    now = 0.0
    queue = rest
    while now < 1.9:
        now += 0.5
        out = deliver(s, 0, queue[:1], now)  # `first` never comes
        queue = queue[1:] + requests(out, 0)
    assert first in s.outstanding(0)
    assert first in cancels(s.handle(m.Tick(), 2.0), 0)


def test_the_only_holder_is_asked_again_at_once_after_a_timeout() -> None:
    # Barring a timed-out peer from a piece lets others take its blocks; when no other peer can, it
    # only stopped the download for piece_retry_delay (a sole slow holder sat idle 10 s per timeout).
    config = dataclasses.replace(DEFAULT_CONFIG, request_timeout_initial=5.0)
    s = make(num_pieces=1, blocks=8, config=config)
    held = requests(join(s, 0, have_all=True), 0)
    join(s, 1, unchoke=False, have_all=True)  # a holder that chokes us cannot take them
    join(s, 2, bitfield=bitfield(1, set()))  # unchokes us, has nothing
    out = s.handle(m.Tick(), 5.0)
    assert sorted(cancels(out, 0)) == sorted(held)
    assert not s.is_barred(0, 0)
    again = requests(out, 0)
    assert again and set(again) <= set(held)  # halved limit, same blocks, from the same peer, at once
    s.check_invariants()
    # Once another holder unchokes us, a timeout bars the peer again and the blocks go to the other.
    out = s.handle(m.Unchoked(1), 5.5)
    late = s.outstanding(0)
    out = s.handle(m.Tick(), 10.0)
    assert sorted(cancels(out, 0)) == sorted(late)
    assert s.is_barred(0, 0) and not requests(out, 0)
    out = deliver(s, 1, list(s.outstanding(1))[:1], 10.1)
    assert set(late) & set(requests(out, 1))
    s.check_invariants()


def test_adaptive_deadline_follows_request_times() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, request_timeout_min=0.5)
    s = make(num_pieces=40, config=config)
    pending = requests(join(s, 0, have_all=True), 0)
    now = 0.0
    for _ in range(50):
        now += 0.25
        out = deliver(s, 0, pending[:1], now)
        pending = pending[1:] + requests(out, 0)
    timeout = s.snapshot().peers[0].request_timeout
    assert config.request_timeout_min <= timeout < DEFAULT_CONFIG.request_timeout_initial


def test_snubbed_peer_gets_limit_one_then_recovers() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=6, request_timeout_initial=100.0,
                                 snub_timeout=20.0)
    s = make(num_pieces=4, config=config)
    held = requests(join(s, 0, have_all=True), 0)
    out = s.handle(m.Tick(), 20.0)
    peer = s.snapshot().peers[0]
    assert peer.snubbed and peer.limit == 1 and peer.outstanding == 1
    assert len(cancels(out, 0)) == 5
    kept = [r for r in held if r not in cancels(out, 0)]
    out = deliver(s, 0, kept, 21.0)
    peer = s.snapshot().peers[0]
    assert not peer.snubbed and peer.limit == config.peer_limit_min


# --- rejects ----------------------------------------------------------------------------------------


def test_reject_bars_the_piece_for_that_peer_no_request_storm() -> None:
    s = make(num_pieces=3, blocks=4, config=dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=2))
    pending = requests(join(s, 0, have_all=True), 0)
    now = 0.0
    sent = len(pending)
    # the peer rejects everything at wire speed
    while pending:
        piece, begin, length = pending.pop(0)
        out = s.handle(m.RequestRejected(0, piece, begin, length), now)
        new = requests(out, 0)
        assert all(p != piece for p, _, _ in new)
        pending += new
        sent += len(new)
    assert sent <= 3 * 2  # at most one round of requests per piece, then it waits
    assert s.snapshot().peers[0].outstanding == 0
    # once the retry delay passed, the pieces are asked again
    out = s.handle(m.Tick(), now + DEFAULT_CONFIG.piece_retry_delay)
    assert requests(out, 0)


def test_rejected_blocks_go_to_another_peer_at_once() -> None:
    s = make(num_pieces=1, blocks=4, config=dataclasses.replace(DEFAULT_CONFIG, endgame_max_dups=1))
    held = requests(join(s, 0, have_all=True), 0)
    join(s, 1, have_all=True)
    out = s.handle(m.RequestRejected(0, *held[0]), 0.1)
    # the reject halves peer 0's limit (4 -> 2): its newest request is cancelled too, and both
    # blocks go to peer 1 in the same step
    assert cancels(out, 0) == [held[-1]]
    assert sorted(requests(out, 1)) == sorted([held[0], held[-1]])
    assert s.snapshot().peers[0].limit == 2


# --- interest, have, finished -------------------------------------------------------------------------


def test_interest_follows_what_the_peer_has() -> None:
    s = make(num_pieces=10)
    out = join(s, 0, bitfield=bitfield(10, set()), unchoke=False)
    assert not [c for c in out if isinstance(c, m.SendInterested)]
    out = s.handle(m.Have(0, 3), 0.0)
    assert m.SendInterested(0) in out
    out = s.handle(m.Unchoked(0), 0.0)
    refs = requests(out, 0)
    assert {p for p, _, _ in refs} == {3}
    out = deliver(s, 0, refs, 0.1)
    [write] = [c for c in out if isinstance(c, m.WriteBlocks)]
    out = s.handle(m.BlocksWritten(tuple((p, b, len(d)) for p, b, d in write.blocks)), 0.2)
    assert m.HashPiece(3) in out
    out = s.handle(m.PieceHashed(3, True), 0.3)
    assert m.SendHave(3) in out and m.SendNotInterested(0) in out


def test_finished_once_when_every_wanted_piece_is_verified() -> None:
    wanted = [True, False, True]
    s = make(num_pieces=3, blocks=2, wanted=wanted)
    out = join(s, 0, have_all=True)
    assert {p for p, _, _ in requests(out, 0)} == {0, 2}  # the unwanted piece is never asked for
    finished = []
    pending = requests(out, 0)
    now = 0.0
    while pending:
        now += 0.1
        out = deliver(s, 0, pending, now)
        pending = requests(out, 0)
        for c in out:
            if isinstance(c, m.WriteBlocks):
                out2 = s.handle(m.BlocksWritten(tuple((p, b, len(d)) for p, b, d in c.blocks)), now)
                for h in out2:
                    if isinstance(h, m.HashPiece):
                        finished += [c2 for c2 in s.handle(m.PieceHashed(h.piece, True), now)
                                     if isinstance(c2, m.Finished)]
    assert finished == [m.Finished()]
    snap = s.snapshot()
    assert snap.finished and snap.done_bytes == snap.total_bytes == 4 * BS
    assert s.piece_state(1) is PieceState.UNWANTED
    assert not [c for c in s.handle(m.Tick(), now + 1) if isinstance(c, m.Finished)]


def test_resume_with_have_mask() -> None:
    s = make(num_pieces=3, have=[True, True, True])
    assert m.Finished() in s.handle(m.Tick(), 0.0)
    s = make(num_pieces=3, have=[True, False, True])
    out = join(s, 0, have_all=True)
    assert {p for p, _, _ in requests(out, 0)} == {1}


# --- blocks -----------------------------------------------------------------------------------------


def test_endgame_first_arrival_wins_and_late_copies_are_wasted() -> None:
    s = make(num_pieces=1, blocks=2, config=dataclasses.replace(DEFAULT_CONFIG, endgame_max_dups=2))
    held = requests(join(s, 0, have_all=True), 0)
    assert len(held) == 2 and s.snapshot().endgame
    out = join(s, 1, have_all=True)
    assert sorted(requests(out, 1)) == sorted(held)  # duplicates of the oldest requests
    assert s.snapshot().bytes_in_flight == 2 * BS  # counted once per block
    out = deliver(s, 1, held[:1], 0.1)
    assert cancels(out, 0) == held[:1]
    [write] = [c for c in out if isinstance(c, m.WriteBlocks)]
    assert [(p, b) for p, b, _ in write.blocks] == [held[0][:2]]
    out = deliver(s, 0, held[:1], 0.2)  # the cancelled copy arrives anyway
    assert not [c for c in out if isinstance(c, m.WriteBlocks)]
    assert s.snapshot().wasted_bytes == BS


def test_block_released_by_choke_is_still_accepted_if_useful() -> None:
    s = make(num_pieces=1, blocks=2, config=dataclasses.replace(DEFAULT_CONFIG, endgame_max_dups=1))
    held = requests(join(s, 0, have_all=True), 0)
    s.handle(m.Choked(0), 0.1)
    out = join(s, 1, have_all=True, now=0.1)
    assert sorted(requests(out, 1)) == sorted(held)
    out = deliver(s, 0, held[:1], 0.2)  # it was already on the wire when the choke came
    assert [c for c in out if isinstance(c, m.WriteBlocks)]
    assert cancels(out, 1) == held[:1]
    assert s.snapshot().bytes_in_flight == BS and s.snapshot().bytes_waiting_for_disk == BS


@pytest.mark.parametrize("block", [(9, 0, BS), (0, 1, BS), (0, 0, BS - 1), (0, 4 * BS, BS)])
def test_block_that_cannot_exist_drops_the_peer(block: m.BlockRef) -> None:
    s = make(num_pieces=2, blocks=4)
    join(s, 0, have_all=True)
    out = deliver(s, 0, [block], 0.1)
    assert any(isinstance(c, m.DropPeer) and c.peer == 0 for c in out)
    assert s.snapshot().peers == () and s.snapshot().bytes_in_flight == 0


def test_malformed_bitfield_and_have_drop_the_peer() -> None:
    s = make(num_pieces=10)
    out = s.handle(m.PeerJoined(0, "127.0.0.2", bitfield=b"\xff"), 0.0)  # too short
    assert out == [m.DropPeer(0, "malformed bitfield")]
    out = s.handle(m.PeerJoined(1, "127.0.0.3", bitfield=b"\x00\x01"), 0.0)  # spare bit set
    assert out == [m.DropPeer(1, "malformed bitfield")]
    join(s, 2, bitfield=bitfield(10, {1}))
    out = s.handle(m.Have(2, 10), 0.0)
    assert any(isinstance(c, m.DropPeer) for c in out)
    assert s.handle(m.PeerGone(2), 0.0) == []  # the late PeerGone is harmless


# --- hash failures and bans ---------------------------------------------------------------------------


def complete_piece(s: Scheduler, sources: dict[int, list[m.BlockRef]], now: float, fill: dict[int, int],
                   hashes: list[m.HashPiece] | None = None) -> int:
    piece = -1
    for peer, refs in sources.items():
        out = deliver(s, peer, refs, now, fill=fill.get(peer, 0))
        for c in out:
            if isinstance(c, m.WriteBlocks):
                for h in s.handle(m.BlocksWritten(tuple((p, b, len(d)) for p, b, d in c.blocks)), now):
                    if isinstance(h, m.HashPiece):
                        piece = h.piece
                        if hashes is not None:
                            hashes.append(h)
    return piece


def test_sole_contributor_of_a_bad_piece_is_banned_by_ip() -> None:
    s = make(num_pieces=2, blocks=2, config=dataclasses.replace(DEFAULT_CONFIG, endgame_max_dups=1))
    held = requests(join(s, 0, have_all=True, ip="127.0.0.9"), 0)
    piece = complete_piece(s, {0: [r for r in held if r[0] == held[0][0]]}, 0.1, {})
    out = s.handle(m.PieceHashed(piece, False), 0.2)
    assert any(isinstance(c, m.BanPeer) and c.ip == "127.0.0.9" for c in out)
    assert any(isinstance(c, m.DropPeer) and c.peer == 0 for c in out)
    snap = s.snapshot()
    assert snap.hash_failures == 1 and snap.banned_ips == {"127.0.0.9"}
    assert snap.wasted_bytes == 2 * BS and s.piece_state(piece) is PieceState.MISSING
    # the liar reconnects from another port (another peer id): still banned
    out = s.handle(m.PeerJoined(7, "127.0.0.9", have_all=True), 1.0)
    assert out == [m.DropPeer(7, "banned IP address")]
    # an honest peer gets the piece's blocks again
    out = join(s, 1, have_all=True, now=1.0)
    assert {p for p, _, _ in requests(out, 1)} == {0, 1}


def two_peers_sharing_pieces(
    num_pieces: int, blocks: int, **overrides: object,
) -> tuple[Scheduler, dict[int, list[m.BlockRef]]]:
    """Two peers that have everything, with one request and one started piece each at a time (a start cap
    of one piece), so they share each piece's first attempt; their requests so far, by peer."""
    config = dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=1, peer_limit_min=1,
                                 partial_pieces_per_peer=0.5, partial_pieces_bytes=BS,
                                 **overrides)  # type: ignore[arg-type]
    s = make(num_pieces=num_pieces, blocks=blocks, config=config)
    return s, {0: requests(join(s, 0, have_all=True, reqq=1), 0), 1: requests(join(s, 1, have_all=True, reqq=1), 1)}


def run_until_hashed(s: Scheduler, pending: dict[int, list[m.BlockRef]], now: float,
                     contributors: dict[int, set[int]]) -> tuple[int, float]:
    """Deliver every pending request (collecting new ones) until a piece awaits its hash."""
    for _ in range(50):
        now += 0.1
        hashed = -1
        for peer in list(pending):
            refs, pending[peer] = pending[peer], []
            out = deliver(s, peer, refs, now)
            for c in out:
                if isinstance(c, m.WriteBlocks):
                    for p, _b, _d in c.blocks:
                        contributors.setdefault(p, set()).add(peer)
                    out += s.handle(m.BlocksWritten(tuple((p, b, len(d)) for p, b, d in c.blocks)), now)
            for c in out:
                if isinstance(c, m.SendRequests):
                    pending.setdefault(c.peer, []).extend(c.requests)  # type: ignore[arg-type]
                elif isinstance(c, m.SendCancels):
                    pending[c.peer] = [r for r in pending[c.peer] if r not in c.cancels]  # type: ignore[index]
                elif isinstance(c, m.HashPiece):
                    hashed = c.piece
        if hashed >= 0:
            return hashed, now
    raise AssertionError("no piece completed")


def test_shared_bad_pieces_raise_suspicion_until_the_threshold() -> None:
    # a start cap of one piece makes the two peers share each piece's first attempt
    s, pending = two_peers_sharing_pieces(num_pieces=2, blocks=2, hash_fail_ban_threshold=2, endgame_max_dups=1)
    contributors: dict[int, set[int]] = {}
    bans: list[str] = []
    now = 0.0
    for strike in (1, 2):
        piece, now = run_until_hashed(s, pending, now, contributors)
        assert contributors.pop(piece) == {0, 1}  # shared: nobody can be blamed alone
        out = s.handle(m.PieceHashed(piece, False), now)
        bans += [c.ip for c in out if isinstance(c, m.BanPeer)]
        for c in out:
            if isinstance(c, m.SendRequests):
                pending[c.peer].extend(c.requests)  # type: ignore[index]
        assert bans == ([] if strike == 1 else bans)
    assert sorted(bans) == ["127.0.0.2", "127.0.0.3"]  # two strikes each: the threshold


def test_a_failed_piece_is_fetched_from_one_peer_at_a_time() -> None:
    s, pending = two_peers_sharing_pieces(num_pieces=1, blocks=4, endgame_max_dups=3)
    contributors: dict[int, set[int]] = {}
    piece, now = run_until_hashed(s, pending, 0.0, contributors)
    assert contributors.pop(piece) == {0, 1}
    out = s.handle(m.PieceHashed(piece, False), now)
    for c in out:
        if isinstance(c, m.SendRequests):
            pending[c.peer].extend(c.requests)  # type: ignore[index]
    piece, now = run_until_hashed(s, pending, now, contributors)
    assert len(contributors[piece]) == 1  # the retry came from one peer, no sharing, no endgame copies
    out = s.handle(m.PieceHashed(piece, False), now)
    assert [c for c in out if isinstance(c, m.BanPeer)]  # so the liar is now the sole contributor


def test_block_digests_name_the_liar_once_the_piece_passes() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=1, peer_limit_min=1, endgame_max_dups=1)
    s = make(num_pieces=1, blocks=2, config=config)
    r0 = requests(join(s, 0, have_all=True, reqq=1), 0)
    r1 = requests(join(s, 1, have_all=True, reqq=1), 1)
    first: list[m.HashPiece] = []
    piece = complete_piece(s, {0: r0, 1: r1}, 0.1, {}, first)
    # a first attempt needs no block digests (the hasher adds them if the piece fails)
    assert first == [m.HashPiece(piece, want_block_digests=False)]
    good, bad = b"g" * 20, b"b" * 20
    # peer 0 sent the first block: its digest differs from the one that finally passes
    blocks_of = {r0[0][1] // BS: 0, r1[0][1] // BS: 1}
    digests = tuple(bad if blocks_of[i] == 0 else good for i in range(2))
    out = s.handle(m.PieceHashed(piece, False, digests), 0.2)
    assert not [c for c in out if isinstance(c, m.BanPeer)]
    gone = s.handle(m.PeerGone(0), 0.3)
    refs = requests(out, 1) + requests(gone, 1) + requests(s.handle(m.Tick(), 0.3), 1)
    pending = refs
    now = 0.3
    for _ in range(20):
        now += 0.1
        out = deliver(s, 1, pending, now)
        hashed = None
        for c in out:
            if isinstance(c, m.WriteBlocks):
                for h in s.handle(m.BlocksWritten(tuple((p, b, len(d)) for p, b, d in c.blocks)), now):
                    if isinstance(h, m.HashPiece):
                        hashed = h.piece
                        # the piece failed before: its retry must be hashed with block digests
                        assert h.want_block_digests
        if hashed is not None:
            break
        pending = requests(out, 1)
    assert hashed == piece
    out = s.handle(m.PieceHashed(piece, True, (good, good)), now)
    assert [c.ip for c in out if isinstance(c, m.BanPeer)] == ["127.0.0.2"]


# --- the budget and the snapshot -------------------------------------------------------------------------


def test_budget_bounds_requests_and_frees_on_write() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=5 * BS, peer_limit_initial=10)
    s = make(num_pieces=4, config=config)
    held = requests(join(s, 0, have_all=True), 0)
    assert len(held) == 5
    snap = s.snapshot()
    assert snap.bytes_in_flight == 5 * BS and snap.peers[0].idle_reason is None
    out = deliver(s, 0, held, 0.1)
    assert not requests(out, 0)  # received, not written: the room is still taken
    assert s.snapshot().bytes_waiting_for_disk == 5 * BS
    [write] = [c for c in out if isinstance(c, m.WriteBlocks)]
    out = s.handle(m.BlocksWritten(tuple((p, b, len(d)) for p, b, d in write.blocks[:2])), 0.2)
    assert len(requests(out, 0)) == 2
    assert s.snapshot().budget_used == 5 * BS


def test_snapshot_piece_states_and_idle_reasons() -> None:
    s = make(num_pieces=4, blocks=4, config=dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=6))
    join(s, 0, have_all=True)
    join(s, 1, bitfield=bitfield(4, set()))
    join(s, 2, have_all=True, unchoke=False)
    snap = s.snapshot()
    assert snap.pieces_fully_requested == 1 and snap.pieces_partial == 1 and snap.pieces_missing == 2
    reasons = {p.peer: p.idle_reason for p in snap.peers}
    assert reasons == {0: None, 1: "has nothing we want", 2: "choked"}
    assert snap.total_bytes == 4 * 4 * BS and snap.done_bytes == 0 and not snap.endgame


def test_sequential_mode_asks_in_piece_order() -> None:
    s = make(num_pieces=8, blocks=1, config=dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=5),
             sequential=True)
    out = join(s, 0, have_all=True)
    assert [p for p, _, _ in requests(out, 0)] == [0, 1, 2, 3, 4]


def test_rarest_piece_first() -> None:
    s = make(num_pieces=8, blocks=4, config=dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=4))
    for peer in range(3):
        join(s, peer, bitfield=bitfield(8, {0, 1, 2, 3, 4, 5, 6}), unchoke=False)
    join(s, 3, bitfield=bitfield(8, {0, 1, 2, 3, 4, 5, 7}), unchoke=False)
    out = s.handle(m.Unchoked(3), 0.0)
    assert {p for p, _, _ in requests(out, 3)} == {7}


def test_pieces_a_fast_peer_started_stay_with_it() -> None:
    s = make(num_pieces=8, blocks=8, config=dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=4))
    a = requests(join(s, 0, have_all=True), 0)
    b = requests(join(s, 1, have_all=True), 1)
    assert len({p for p, _, _ in a}) == 1 and len({p for p, _, _ in b}) == 1
    assert {p for p, _, _ in a} != {p for p, _, _ in b}  # each starts its own piece
    out = deliver(s, 0, a[:1], 0.1)
    assert {p for p, _, _ in requests(out, 0)} == {a[0][0]}  # and keeps to it


def test_80000_pieces_join_and_request_quickly() -> None:
    s = Scheduler(80_000, 256 * KiB, 80_000 * 256 * KiB, DEFAULT_CONFIG, random.Random(1))
    have = set(range(0, 80_000, 3))
    out = join(s, 0, bitfield=bitfield(80_000, have))
    out += join(s, 1, have_all=True)
    assert {p for p, _, _ in requests(out, 0)} <= have
    assert requests(out, 1)
    assert s.snapshot().pieces_wanted == 80_000


def test_peer_joining_twice_is_a_caller_bug() -> None:
    s = make()
    join(s, 0, have_all=True)
    with pytest.raises(ValueError):
        s.handle(m.PeerJoined(0, "127.0.0.2"), 0.0)


# --- liveness rule 7 in small random swarms ----------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    num_pieces=st.integers(1, 12),
    blocks=st.integers(1, 5),
    rates=st.lists(st.integers(0, 6), min_size=1, max_size=6).filter(lambda r: any(r)),
    budget_blocks=st.integers(1, 40),
    max_dups=st.integers(1, 3),
    chokes=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 5)), max_size=8),
    holdings=st.lists(st.integers(0, 2**12 - 1), min_size=6, max_size=6),
    leave_at=st.integers(0, 80),
    liar=st.integers(0, 8),
    seed=st.integers(0, 1000),
)
def test_random_swarm_always_finishes(num_pieces: int, blocks: int, rates: list[int], budget_blocks: int,
                                      max_dups: int, chokes: list[tuple[int, int]], holdings: list[int],
                                      leave_at: int, liar: int, seed: int) -> None:
    """Peers of random speed (0 = never answers) with random pieces, some choking us for a while, the
    silent ones leaving at some point, maybe one that sends corrupt data: whenever the honest
    answering peers hold every piece between them, the download finishes, bounded by the silent
    peers' request timeouts, and the books balance after every fact."""
    config = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=budget_blocks * BS,
                                 endgame_max_dups=max_dups, request_timeout_initial=3.0,
                                 request_timeout_max=3.0, snub_timeout=5.0, piece_retry_delay=1.0)
    s = make(num_pieces=num_pieces, blocks=blocks, config=config, seed=seed)
    queues: dict[int, list[m.BlockRef]] = {p: [] for p in range(len(rates))}
    writes: list[m.BlockRef] = []
    hashes: list[int] = []
    finished: list[float] = []
    corrupt: dict[tuple[int, int], bool] = {}  # (piece, begin) -> the written data is a liar's
    now = 0.0

    def route(out: list[m.Command]) -> None:
        s.check_invariants()
        for c in out:
            if isinstance(c, m.SendRequests):
                queues[c.peer].extend(c.requests)  # type: ignore[index]
            elif isinstance(c, m.SendCancels):
                queues[c.peer] = [r for r in queues[c.peer] if r not in c.cancels]  # type: ignore[index]
            elif isinstance(c, m.WriteBlocks):
                writes.extend((p, b, len(d)) for p, b, d in c.blocks)
                corrupt.update({(p, b): bytes(d[:1]) == b"X" for p, b, d in c.blocks})
            elif isinstance(c, m.HashPiece):
                hashes.append(c.piece)
            elif isinstance(c, m.Finished):
                finished.append(now)

    have = [{i for i in range(num_pieces) if holdings[peer] >> i & 1} for peer in range(len(rates))]
    answering = [p for p, rate in enumerate(rates) if rate and p != liar]
    if not answering:
        return  # only the liar answers: nothing can finish
    have[answering[0]] |= set(range(num_pieces)) - set().union(*(have[p] for p in answering))
    for peer in range(len(rates)):
        if have[peer] == set(range(num_pieces)):
            route(join(s, peer, have_all=True))
        else:
            route(join(s, peer, bitfield=bitfield(num_pieces, have[peer])))
    choked_until: dict[int, int] = {}
    for step in range(2000):
        if finished:
            break
        now = step * 0.1
        if step == leave_at:
            for peer, rate in enumerate(rates):
                if not rate:
                    route(s.handle(m.PeerGone(peer), now))
        for at, peer in chokes:
            if at == step and peer < len(rates):
                route(s.handle(m.Choked(peer), now))
                queues[peer].clear()  # a choking peer discards our requests
                choked_until[peer] = step + 10
        for peer, until in list(choked_until.items()):
            if until == step:
                route(s.handle(m.Unchoked(peer), now))
                del choked_until[peer]
        for peer, rate in enumerate(rates):
            if step >= leave_at and not rate:
                continue
            batch, queues[peer] = queues[peer][:rate], queues[peer][rate:]
            if batch:
                route(deliver(s, peer, batch, now, fill=ord("X") if peer == liar else 0))
        if writes:
            route(s.handle(m.BlocksWritten(tuple(writes)), now))
            writes.clear()
        while hashes:
            piece = hashes.pop()
            ok = not any(bad for (p, _b), bad in corrupt.items() if p == piece)
            route(s.handle(m.PieceHashed(piece, ok), now))
        route(s.handle(m.Tick(), now))
    assert finished, s.snapshot()
    snap = s.snapshot()
    assert snap.done_bytes == snap.total_bytes and snap.bytes_in_flight == snap.bytes_waiting_for_disk == 0


def test_a_banned_liars_leftover_blocks_do_not_count_against_honest_peers() -> None:
    # The honest peer shares one failed piece with a liar; once the liar is banned that point is forgiven.
    s, pending = two_peers_sharing_pieces(num_pieces=3, blocks=2, hash_fail_ban_threshold=2, endgame_max_dups=1)
    contributors: dict[int, set[int]] = {}
    # piece A: shared between the liar (peer 0) and the honest peer 1; it fails: one point each
    a, now = run_until_hashed(s, pending, 0.0, contributors)
    assert contributors.pop(a) == {0, 1}
    out = s.handle(m.PieceHashed(a, False), now)
    assert not [c for c in out if isinstance(c, m.BanPeer)]
    # the liar is then caught alone on another piece: banned, and peer 1's point for A is forgiven
    out += s.handle(m.PeerGone(1), now)
    s.handle(m.Tick(), now)
    pending = {0: requests(out, 0) + pending.get(0, [])}
    b, now = run_until_hashed(s, pending, now, contributors)
    assert contributors.pop(b) == {0}
    out = s.handle(m.PieceHashed(b, False), now)
    assert [c.ip for c in out if isinstance(c, m.BanPeer)] == ["127.0.0.2"]
    # peer 1 comes back: one more shared failure with the (banned) liar's old blocks costs it nothing,
    # and a failure it shares with a new peer is its first point, not its second
    assert s._suspicion.get("127.0.0.3", 0) == 0
    s.handle(m.PeerJoined(5, "127.0.0.3", have_all=True), now)
    assert "127.0.0.3" not in s.snapshot().banned_ips


def test_a_good_single_source_retry_forgives_its_source() -> None:
    s, pending = two_peers_sharing_pieces(num_pieces=1, blocks=2, endgame_max_dups=1)
    contributors: dict[int, set[int]] = {}
    piece, now = run_until_hashed(s, pending, 0.0, contributors)
    assert contributors.pop(piece) == {0, 1}
    out = s.handle(m.PieceHashed(piece, False), now)
    assert s._suspicion == {"127.0.0.2": 1, "127.0.0.3": 1}
    for c in out:
        if isinstance(c, m.SendRequests):
            pending[c.peer].extend(c.requests)  # type: ignore[index]
    piece, now = run_until_hashed(s, pending, now, contributors)
    [source] = contributors[piece]
    s.handle(m.PieceHashed(piece, True), now)
    ip = f"127.0.0.{source + 2}"
    assert s._suspicion[ip] == 0 and s._suspicion[f"127.0.0.{3 - source}"] == 1


def test_peer_has_follows_bitfield_have_and_leaving() -> None:
    s = make(num_pieces=4)
    join(s, 0, bitfield=bitfield(4, {2}))
    join(s, 1, have_all=True)
    assert [s.peer_has(0, p) for p in range(4)] == [False, False, True, False]
    assert all(s.peer_has(1, p) for p in range(4))
    s.handle(m.Have(0, 3), 0.1)
    assert s.peer_has(0, 3) and not s.peer_has(0, 1)
    s.handle(m.PeerGone(0), 0.2)
    assert not s.peer_has(0, 2)  # unknown peers are never assumed to have anything
    assert not s.peer_has(7, 0)


def test_a_failed_piece_goes_to_another_peer_when_its_fetcher_times_out() -> None:
    # A piece that failed its hash is fetched from one peer at a time. The peer that took it went
    # silent: its request timed out, yet it stayed the piece's owner, so the other holder sat idle
    # until the silent one was snubbed (20 s) instead of one request timeout (found by the simulator).
    s = make(num_pieces=1, blocks=8)
    first = requests(join(s, 0, have_all=True), 0)
    second = requests(join(s, 1, have_all=True), 1)
    assert len(first) == len(second) == 4
    deliver(s, 0, first, 0.5)
    deliver(s, 1, second, 0.5)
    s.handle(m.BlocksWritten(tuple(first + second)), 0.6)
    out = s.handle(m.PieceHashed(0, False, tuple(bytes([i]) * 20 for i in range(8))), 0.7)
    assert not [c for c in out if isinstance(c, (m.BanPeer, m.DropPeer))]  # digests will name the liar
    fetcher = 0 if requests(out, 0) else 1
    other = 1 - fetcher
    retry = requests(out, fetcher)
    assert retry and not requests(out, other)  # one peer at a time
    out = deliver(s, fetcher, retry[:2], 1.0)  # two blocks of the retry come, then nothing more
    assert not requests(out, other)
    deadline = s.snapshot().peers[fetcher].request_timeout
    assert deadline < DEFAULT_CONFIG.snub_timeout
    out = s.handle(m.Tick(), 1.0 + deadline + 0.01)
    assert cancels(out, fetcher)
    assert requests(out, other), "the other holder must take the failed piece after one request timeout"
    assert not requests(out, fetcher)
    s.check_invariants()


def test_a_late_block_of_a_timed_out_request_is_taken_while_nobody_holds_it() -> None:
    # docs/reliability.md: a released request's late copy "is written if the block is still wanted".
    # It was only written while another peer held the block; a FREE block (the others had no spare
    # slot to take it yet) was thrown away as waste and had to be fetched again.
    config = dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=2, request_timeout_initial=5.0,
                                 endgame_max_dups=1)
    s = make(num_pieces=1, blocks=8, config=config)
    slow = requests(join(s, 0, have_all=True), 0)
    busy = requests(join(s, 1, now=1.0, have_all=True), 1)  # full: its two slots are taken
    out = s.handle(m.Tick(), 5.0)  # peer 0's requests time out; peer 1 could take them, but not yet
    assert sorted(cancels(out, 0)) == sorted(slow) and s.is_barred(0, 0)
    assert not requests(out) and not s.holders(*slow[0][:2])  # FREE: nobody holds it
    out = deliver(s, 0, slow[:1], 5.1)  # its copy was already on the wire
    assert [c for c in out if isinstance(c, m.WriteBlocks)], "a wanted late block was thrown away"
    assert s.snapshot().wasted_bytes == 0
    assert s.snapshot().bytes_waiting_for_disk == slow[0][2]
    out = deliver(s, 1, busy, 5.2)
    assert slow[0] not in requests(out, 1) and slow[1] in requests(out, 1)  # the taken block is not asked again
    s.check_invariants()
    # The same late copy again (a second copy, or one from another attempt) is waste, never a second write.
    out = deliver(s, 0, slow[:1], 5.3)
    assert not [c for c in out if isinstance(c, m.WriteBlocks)] and s.snapshot().wasted_bytes == slow[0][2]
    s.check_invariants()
