"""Stall diagnosis: each reason built by driving the real Scheduler with facts, then the report checked.

Every situation here is made of the same facts the session feeds the scheduler (PeerJoined with a
bitfield, Choked, BlocksReceived without BlocksWritten, written blocks with PieceHashed withheld, ...);
the report must name the reason, count it, and name the pieces and peers behind it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import DEFAULT_CONFIG, Config
from jstorrent_cli.core import messages as m
from jstorrent_cli.core.diagnose import (
    PieceDetail,
    Reason,
    StallDetector,
    StallReport,
    diagnose,
    format_ranges,
    report_lines,
    report_record,
)
from jstorrent_cli.core.scheduler import IDLE_CHOKED, IDLE_NOTHING_WANTED, Scheduler
from jstorrent_cli.tasks.tracker import TrackerStatus

BS = DEFAULT_CONFIG.block_size


def make(num_pieces: int = 8, blocks: int = 4, config: Config = DEFAULT_CONFIG, seed: int = 0) -> Scheduler:
    piece_length = blocks * BS
    return Scheduler(num_pieces, piece_length, num_pieces * piece_length, config, random.Random(seed))


def ip_of(peer: int) -> str:
    return f"127.0.0.{peer + 2}"


def bitfield(num_pieces: int, have: set[int]) -> bytes:
    out = bytearray((num_pieces + 7) // 8)
    for i in have:
        out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


def join(s: Scheduler, peer: int, have: set[int] | None = None, *, unchoke: bool, now: float = 0.0) -> list[m.Command]:
    n = s.picker.num_pieces
    fact = (m.PeerJoined(peer, ip_of(peer), have_all=True) if have is None
            else m.PeerJoined(peer, ip_of(peer), bitfield=bitfield(n, have)))
    out = s.handle(fact, now)
    if unchoke:
        out += s.handle(m.Unchoked(peer), now)
    return out


def requested(commands: list[m.Command], peer: int | None = None) -> list[m.BlockRef]:
    return [r for c in commands if isinstance(c, m.SendRequests) and (peer is None or c.peer == peer)
            for r in c.requests]


def deliver(s: Scheduler, peer: int, refs: list[m.BlockRef], now: float) -> list[m.Command]:
    return s.handle(m.BlocksReceived(peer, tuple((p, b, bytes(n)) for p, b, n in refs)), now)


def report_of(s: Scheduler, now: float, **kwargs: object) -> StallReport:
    return diagnose(s.snapshot(), now=now, detail=s.piece_detail(), **kwargs)  # type: ignore[arg-type]


def pieces_of(report: StallReport, reason: Reason) -> set[int]:
    entry = report.entry(reason)
    assert entry is not None, f"{reason} missing from {[e.reason for e in report.reasons]}"
    assert entry.more_ranges == 0
    return {p for a, b in entry.piece_ranges for p in range(a, b + 1)}


def peer_names(report: StallReport, reason: Reason) -> set[str]:
    entry = report.entry(reason)
    assert entry is not None
    return {p.name for p in entry.peers}


def name(peer: int) -> str:
    return f"{ip_of(peer)} (#{peer})"


def check_consistent(report: StallReport, s: Scheduler) -> None:
    """Every missing wanted piece is in exactly one reason; counts and ranges agree."""
    snap = s.snapshot()
    assert report.missing_pieces == snap.pieces_wanted - snap.pieces_verified
    seen: set[int] = set()
    for entry in report.reasons:
        pieces = {p for a, b in entry.piece_ranges for p in range(a, b + 1)}
        assert len(pieces) == entry.pieces
        assert not pieces & seen
        seen |= pieces
    assert seen == {p for p in range(s.picker.num_pieces) if s.picker.needed[p]}
    json.dumps(report_record(report))


# --- one test per reason ------------------------------------------------------------------------------


def test_no_peers_names_the_tracker_error_and_next_announce() -> None:
    s = make()
    tracker = TrackerStatus(last_error="connection refused", last_error_at=40.0, next_announce_at=62.0,
                            last_tracker="http://127.0.0.1:6969/announce", consecutive_failures=2)
    report = report_of(s, 50.0, trackers=[tracker], stalled_for=50.0)
    check_consistent(report, s)
    assert report.cause is Reason.NO_PEERS
    assert report.count(Reason.NO_PEERS) == 8 and pieces_of(report, Reason.NO_PEERS) == set(range(8))
    assert report.peers_connected == 0
    assert "connection refused" in report.most_likely_cause
    assert "10s ago" in report.most_likely_cause and "next announce in 12s" in report.most_likely_cause
    text = "\n".join(report.lines())
    assert "http://127.0.0.1:6969/announce" in text and "last announce failed 10s ago" in text


def test_no_peers_after_the_last_one_left_and_not_when_one_is_connected() -> None:
    s = make()
    join(s, 0, unchoke=True)
    s.handle(m.PeerGone(0), 1.0)
    report = report_of(s, 2.0, trackers=[TrackerStatus(peers_received=1, next_announce_at=30.0)])
    assert report.cause is Reason.NO_PEERS and report.count(Reason.NO_PEERS) == 8
    assert "gave 1 peer" in report.most_likely_cause
    # A peer that chokes us is a peer: the report must not say "no peers".
    join(s, 1, unchoke=False, now=3.0)
    report = report_of(s, 4.0)
    assert report.count(Reason.NO_PEERS) == 0
    assert report.cause is Reason.HOLDERS_CHOKE_US


def test_nobody_has_it() -> None:
    s = make(num_pieces=8)
    out = join(s, 0, {0}, unchoke=True)
    refs = requested(out, 0)
    assert {r[0] for r in refs} == {0}
    out = deliver(s, 0, refs, 1.0)
    out = s.handle(m.BlocksWritten(tuple(refs)), 1.1)
    assert m.HashPiece(0) in out
    s.handle(m.PieceHashed(0, True), 1.2)
    join(s, 1, {0}, unchoke=False, now=1.3)  # another peer with nothing we lack
    report = report_of(s, 40.0, stalled_for=38.0)
    check_consistent(report, s)
    assert report.cause is Reason.NOBODY_HAS_IT
    assert pieces_of(report, Reason.NOBODY_HAS_IT) == set(range(1, 8))
    assert "None of the 2 connected peers" in report.most_likely_cause
    assert {(p.name, p.reason) for p in report.idle_peers} == {(name(0), IDLE_NOTHING_WANTED),
                                                              (name(1), IDLE_NOTHING_WANTED)}
    assert report.entry(Reason.NOBODY_HAS_IT) is not None
    assert report.entry(Reason.NOBODY_HAS_IT).peers == ()  # type: ignore[union-attr]


def test_holders_choke_us_names_the_chokers_and_not_the_open_peer() -> None:
    s = make(num_pieces=12)
    join(s, 0, unchoke=False)
    join(s, 1, set(range(6)), unchoke=False)
    out = join(s, 2, {11}, unchoke=True)  # an open peer with one piece: that one is requested
    assert {r[0] for r in requested(out, 2)} == {11}
    report = report_of(s, 5.0, stalled_for=5.0)
    check_consistent(report, s)
    assert report.cause is Reason.HOLDERS_CHOKE_US
    assert pieces_of(report, Reason.HOLDERS_CHOKE_US) == set(range(11))
    assert peer_names(report, Reason.HOLDERS_CHOKE_US) == {name(0), name(1)}
    assert pieces_of(report, Reason.REQUESTED_SLOW) == {11}
    assert "All 2 peers that have the 11 missing pieces are choking us" in report.most_likely_cause
    assert (name(0), IDLE_CHOKED) in {(p.name, p.reason) for p in report.idle_peers}


def test_choke_after_requests_turns_slow_pieces_into_choked_ones() -> None:
    s = make(num_pieces=4)
    out = join(s, 0, unchoke=True)
    assert requested(out, 0)
    assert report_of(s, 1.0).count(Reason.HOLDERS_CHOKE_US) == 0
    s.handle(m.Choked(0), 2.0)
    report = report_of(s, 3.0)
    check_consistent(report, s)
    assert report.count(Reason.HOLDERS_CHOKE_US) == 4 and report.count(Reason.REQUESTED_SLOW) == 0


def test_requested_slow_names_the_peer_and_the_age() -> None:
    s = make(num_pieces=1, blocks=4)
    out = join(s, 0, unchoke=True, now=100.0)
    assert len(requested(out, 0)) == 4  # the one piece is fully requested from peer 0
    report = report_of(s, 108.0, stalled_for=8.0)
    check_consistent(report, s)
    assert report.cause is Reason.REQUESTED_SLOW and pieces_of(report, Reason.REQUESTED_SLOW) == {0}
    entry = report.entry(Reason.REQUESTED_SLOW)
    assert entry is not None and [p.name for p in entry.peers] == [name(0)]
    assert entry.peers[0].request_age == pytest.approx(8.0)
    assert name(0) in report.most_likely_cause and "for 8s" in report.most_likely_cause


def test_partial_piece_with_requests_out_is_slow_not_queued() -> None:
    s = make(num_pieces=1, blocks=8)
    out = join(s, 0, unchoke=True, now=10.0)
    assert len(requested(out, 0)) == DEFAULT_CONFIG.peer_limit_initial < 8  # half the piece is still FREE
    report = report_of(s, 40.0, stalled_for=30.0)
    assert report.count(Reason.QUEUED) == 0 and pieces_of(report, Reason.REQUESTED_SLOW) == {0}
    entry = report.entry(Reason.REQUESTED_SLOW)
    assert entry is not None and entry.peers[0].request_age == pytest.approx(30.0)
    live = report_of(s, 11.0)
    assert "on its way" in live.most_likely_cause and "slow" not in live.most_likely_cause


def test_requested_slow_after_a_reject_the_peer_is_not_asked_again_yet() -> None:
    s = make(num_pieces=1, blocks=4)
    refs = requested(join(s, 0, unchoke=True), 0)
    for ref in refs:  # it rejects them all (the first reject halves its limit: two are cancelled)
        if ref in s.outstanding(0):
            s.handle(m.RequestRejected(0, *ref), 1.0)
    assert s.is_barred(0, 0) and not s.outstanding(0)
    # (A timeout bars the piece only while another peer could take it: the only holder is asked
    # again at once, tests/core/test_scheduler.py.)
    report = report_of(s, 2.0)
    check_consistent(report, s)
    # The only peer refused it: that is a slow peer, not a scheduler that forgot to ask.
    assert report.count(Reason.NOT_YET_REQUESTED) == 0
    assert pieces_of(report, Reason.REQUESTED_SLOW) == {0}
    assert peer_names(report, Reason.REQUESTED_SLOW) == {name(0)}


def test_waiting_for_budget_when_the_writer_is_behind() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=4 * BS)
    s = make(num_pieces=6, blocks=4, config=config)
    refs = requested(join(s, 0, unchoke=True), 0)
    assert len(refs) == 4
    out = deliver(s, 0, refs, 1.0)  # received, and the writer never answers
    assert requested(out) == []  # the budget is full of bytes waiting for the disk
    snap = s.snapshot()
    assert snap.bytes_waiting_for_disk == 4 * BS == snap.budget
    report = report_of(s, 40.0, stalled_for=39.0, config=config)
    check_consistent(report, s)
    assert report.cause is Reason.WAITING_FOR_BUDGET
    assert report.count(Reason.WAITING_FOR_BUDGET) == 6
    assert "disk is behind" in report.most_likely_cause and "64.0KiB" in report.most_likely_cause
    # The same swarm once the writer catches up is not a budget problem any more.
    s.handle(m.BlocksWritten(tuple(refs)), 41.0)
    after = report_of(s, 42.0, config=config)
    check_consistent(after, s)
    assert after.count(Reason.WAITING_FOR_BUDGET) == 0
    assert after.count(Reason.WAITING_FOR_HASH) == 1


def test_budget_full_of_requests_in_flight_is_not_blamed_on_the_scheduler() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=4 * BS)
    s = make(num_pieces=6, blocks=4, config=config)
    assert len(requested(join(s, 0, unchoke=True), 0)) == 4  # the whole budget is in flight from peer 0
    assert requested(join(s, 1, unchoke=True), 1) == []  # peer 1 has free slots but no budget room
    snap = s.snapshot()
    assert {ps.peer: ps.outstanding < ps.limit for ps in snap.peers} == {0: False, 1: True}
    report = report_of(s, 30.0, stalled_for=30.0, config=config)
    check_consistent(report, s)
    assert report.count(Reason.NOT_YET_REQUESTED) == 0 and report.count(Reason.WAITING_FOR_BUDGET) == 0
    assert report.count(Reason.QUEUED) == 5 and pieces_of(report, Reason.REQUESTED_SLOW) == {
        ref[0] for ref in s.outstanding(0)}
    assert peer_names(report, Reason.REQUESTED_SLOW) == {name(0)}


def test_waiting_for_hash() -> None:
    s = make(num_pieces=1, blocks=4)
    refs = requested(join(s, 0, unchoke=True), 0)
    deliver(s, 0, refs, 1.0)
    out = s.handle(m.BlocksWritten(tuple(refs)), 2.0)
    assert m.HashPiece(0) in out  # ... and PieceHashed is withheld
    report = report_of(s, 35.0, stalled_for=33.0)
    check_consistent(report, s)
    assert report.cause is Reason.WAITING_FOR_HASH and pieces_of(report, Reason.WAITING_FOR_HASH) == {0}
    assert "hash check" in report.most_likely_cause
    s.handle(m.PieceHashed(0, True), 36.0)
    done = report_of(s, 37.0)
    assert done.missing_pieces == 0 and done.cause is None and done.reasons == ()


def test_rate_limited() -> None:
    s = make(num_pieces=3, blocks=4)
    join(s, 0, unchoke=True)
    join(s, 1, unchoke=False)
    limited = report_of(s, 20.0, rate_limited=True, stalled_for=20.0)
    check_consistent(limited, s)
    assert limited.cause is Reason.RATE_LIMITED and limited.count(Reason.RATE_LIMITED) == 3
    assert "--max-download-limit" in limited.most_likely_cause
    assert peer_names(limited, Reason.RATE_LIMITED) == {name(0)}
    free = report_of(s, 20.0, rate_limited=False, stalled_for=20.0)
    assert free.count(Reason.RATE_LIMITED) == 0


def test_not_yet_requested_is_blamed_on_the_scheduler() -> None:
    # The real scheduler refills at once, so its bug is simulated: the same snapshot with a limit that was
    # raised without a refill (a peer with spare slots, pieces it has and nothing asked).
    s = make(num_pieces=8, blocks=4)
    join(s, 0, unchoke=True)
    snap = s.snapshot()
    healthy = diagnose(snap, now=5.0, detail=s.piece_detail())
    assert healthy.count(Reason.NOT_YET_REQUESTED) == 0 and healthy.count(Reason.QUEUED) == 7
    peer = snap.peers[0]
    buggy = dataclasses.replace(snap, peers=(dataclasses.replace(peer, limit=peer.outstanding + 4),))
    report = diagnose(buggy, now=5.0, detail=s.piece_detail(), stalled_for=5.0)
    assert report.cause is Reason.NOT_YET_REQUESTED
    assert report.count(Reason.NOT_YET_REQUESTED) == 7
    assert peer_names(report, Reason.NOT_YET_REQUESTED) == {name(0)}
    assert "scheduler bug" in report.most_likely_cause and name(0) in report.most_likely_cause


def test_queued_behind_busy_peers_is_not_called_a_bug_or_slow_while_moving() -> None:
    s = make(num_pieces=20, blocks=4)
    join(s, 0, unchoke=True)
    report = report_of(s, 0.5)
    check_consistent(report, s)
    assert report.cause is Reason.QUEUED and report.count(Reason.QUEUED) == 19
    assert peer_names(report, Reason.QUEUED) == {name(0)}
    assert "next in line" in report.most_likely_cause
    stalled = report_of(s, 25.0, stalled_for=25.0)
    assert "slow" in stalled.most_likely_cause and "25s" in stalled.most_likely_cause


def test_mixed_reasons_priority_budget_first_then_most_bytes() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=4 * BS)
    s = make(num_pieces=10, blocks=4, config=config)
    join(s, 1, set(range(2, 10)), unchoke=False)  # 8 pieces only a choking peer has
    refs = requested(join(s, 0, {0, 1}, unchoke=True), 0)
    deliver(s, 0, refs, 1.0)  # budget full of unwritten bytes
    report = report_of(s, 40.0, config=config)
    check_consistent(report, s)
    assert report.count(Reason.HOLDERS_CHOKE_US) == 8 and report.count(Reason.WAITING_FOR_BUDGET) == 2
    assert report.reasons[0].reason is Reason.HOLDERS_CHOKE_US  # most bytes first in the list...
    assert report.cause is Reason.WAITING_FOR_BUDGET  # ...but a disk-full budget is named first
    s.handle(m.BlocksWritten(tuple(refs)), 41.0)
    assert report_of(s, 42.0, config=config).cause is Reason.HOLDERS_CHOKE_US


# --- without per-piece detail -------------------------------------------------------------------------------


def test_estimate_from_totals_without_detail() -> None:
    s = make(num_pieces=8)
    none = diagnose(s.snapshot(), now=1.0)
    assert not none.precise and none.cause is Reason.NO_PEERS and none.count(Reason.NO_PEERS) == 8
    assert "estimated from totals" in "\n".join(none.lines())
    join(s, 0, unchoke=False)
    join(s, 1, unchoke=False)
    choked = diagnose(s.snapshot(), now=1.0)
    assert choked.cause is Reason.HOLDERS_CHOKE_US and choked.count(Reason.HOLDERS_CHOKE_US) == 8
    assert choked.count(Reason.NO_PEERS) == 0
    assert json.loads(json.dumps(report_record(choked)))["precise"] is False


# --- renderers ---------------------------------------------------------------------------------------------


def test_lines_and_record_name_reasons_pieces_and_peers() -> None:
    s = make(num_pieces=12)
    join(s, 0, set(range(6)), unchoke=False)
    tracker = TrackerStatus(last_success_at=1.0, next_announce_at=1800.0, peers_received=3, seeders=2, leechers=7,
                            last_tracker="udp://127.0.0.1:6969")
    report = report_of(s, 31.0, trackers=[tracker], stalled_for=31.0)
    lines = report_lines(report)
    assert lines == report.lines()
    assert lines[0].startswith("Stall report: no block for 31s; 12 wanted pieces missing")
    assert lines[1] == f"Most likely cause: {report.most_likely_cause}"
    text = "\n".join(lines)
    assert "pieces: 0-5" in text and "pieces: 6-11" in text and name(0) in text
    assert "udp://127.0.0.1:6969: 3 peers received (2 seeds, 7 leechers); next announce in 29m29s" in text
    record = json.loads(json.dumps(report_record(report)))
    assert record["event"] == "stall" and record["schema"] == 1
    assert record["cause"] == report.cause.value  # type: ignore[union-attr]
    by_reason = {r["reason"]: r for r in record["reasons"]}
    assert by_reason["holders_choke_us"]["piece_ranges"] == [[0, 5]]
    assert by_reason["holders_choke_us"]["peers"][0]["peer"] == name(0)
    assert by_reason["holders_choke_us"]["peers"][0]["peer_choking"] is True
    assert by_reason["nobody_has_it"]["pieces"] == 6
    assert by_reason["nobody_has_it"]["bytes"] == 6 * 4 * BS
    assert record["missing_bytes"] == 12 * 4 * BS
    assert record["trackers"][0]["next_announce_in"] == pytest.approx(1769.0)
    assert set(record) == {"event", "schema", "stalled_for", "precise", "missing_pieces", "missing_bytes",
                           "peers_connected", "cause", "most_likely_cause", "reasons", "idle_peers",
                           "more_idle_peers", "bytes_in_flight", "bytes_waiting_for_disk", "buffer_budget",
                           "trackers", "unreachable_peers", "more_unreachable_peers"}


def test_ranges_are_capped_and_counted() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, stall_report_max_ranges=3, stall_report_max_peers=2)
    s = make(num_pieces=20, blocks=1, config=config)
    join(s, 0, set(range(0, 20, 2)), unchoke=False)  # every even piece: 10 ranges of one piece
    for peer in (1, 2, 3):
        join(s, peer, {0}, unchoke=False)
    report = report_of(s, 1.0, config=config)
    entry = report.entry(Reason.HOLDERS_CHOKE_US)
    assert entry is not None and entry.pieces == 10
    assert entry.piece_ranges == ((0, 0), (2, 2), (4, 4)) and entry.more_ranges == 7
    assert len(entry.peers) == 2 and entry.more_peers == 2
    assert "0, 2, 4 (+7 more ranges)" in "\n".join(report.lines())
    assert format_ranges(((3, 9), (12, 12))) == "3-9, 12"


def test_last_piece_bytes_are_its_own_length() -> None:
    piece_length = 4 * BS
    s = Scheduler(3, piece_length, 2 * piece_length + 100, DEFAULT_CONFIG, random.Random(0))
    report = diagnose(s.snapshot(), now=0.0, detail=s.piece_detail())
    assert report.missing_bytes == 2 * piece_length + 100
    assert report.entry(Reason.NO_PEERS).bytes == 2 * piece_length + 100  # type: ignore[union-attr]


# --- against a brute-force reference, over random swarms -----------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    num_pieces=st.integers(1, 24),
    peers=st.lists(st.tuples(st.sets(st.integers(0, 23)), st.booleans(), st.booleans()), max_size=5),
    deliveries=st.integers(0, 6),
    write=st.booleans(),
)
def test_reference_model(num_pieces: int, peers: list[tuple[set[int], bool, bool]], deliveries: int,
                         write: bool) -> None:
    s = make(num_pieces=num_pieces, blocks=2)
    out: list[m.Command] = []
    for i, (have, seed, unchoke) in enumerate(peers):
        out += join(s, i, None if seed else {p for p in have if p < num_pieces}, unchoke=unchoke)
    refs = requested(out)[:deliveries]
    by_peer: dict[object, list[m.BlockRef]] = {}
    for c in out:
        if isinstance(c, m.SendRequests):
            for r in c.requests:
                if r in refs:
                    by_peer.setdefault(c.peer, []).append(r)
    for peer, mine in by_peer.items():
        deliver(s, peer, mine, 1.0)  # type: ignore[arg-type]
    if write and refs:
        s.handle(m.BlocksWritten(tuple(refs)), 2.0)
    detail = s.piece_detail()
    report = diagnose(s.snapshot(), now=3.0, detail=detail)
    check_consistent(report, s)
    snap = s.snapshot()
    chokes = {ps.peer: ps.peer_choking for ps in snap.peers}

    def holders(piece: int) -> list[object]:
        return [pid for pid, h in detail.peer_has.items() if h is None or h[piece]]

    if pieces_or_empty(report, Reason.NO_PEERS):
        assert not snap.peers
    for piece in pieces_or_empty(report, Reason.NOBODY_HAS_IT):
        assert snap.peers and holders(piece) == []
    for piece in pieces_or_empty(report, Reason.HOLDERS_CHOKE_US):
        assert holders(piece) and all(chokes[p] for p in holders(piece))
    for piece in pieces_or_empty(report, Reason.WAITING_FOR_HASH):
        assert s.piece_state(piece).value == "awaiting hash"
    # The real scheduler never leaves work for an open peer with a spare slot.
    assert report.count(Reason.NOT_YET_REQUESTED) == 0
    if not snap.peers:
        assert report.cause in (Reason.NO_PEERS, Reason.WAITING_FOR_HASH, None)


def pieces_or_empty(report: StallReport, reason: Reason) -> set[int]:
    return pieces_of(report, reason) if report.entry(reason) is not None else set()


# --- cost ----------------------------------------------------------------------------------------------


def test_80000_pieces_50_peers_is_cheap() -> None:
    n = 80_000
    s = Scheduler(n, BS, n * BS, DEFAULT_CONFIG, random.Random(1))
    rng = random.Random(2)
    for peer in range(50):
        if peer % 16:
            join(s, peer, unchoke=peer % 3 == 0)  # seeds: cheap to join
        else:  # a partial peer with about a quarter of the pieces (random bits AND random bits)
            bits = bytes(a & b for a, b in zip(rng.randbytes(n // 8), rng.randbytes(n // 8), strict=True))
            s.handle(m.PeerJoined(peer, ip_of(peer), bitfield=bits), 0.0)
            s.handle(m.Unchoked(peer), 0.0)
    snap = s.snapshot()
    detail = s.piece_detail()
    start = time.perf_counter()
    report = diagnose(snap, now=10.0, detail=detail)
    elapsed = time.perf_counter() - start
    assert report.missing_pieces == n
    assert sum(e.pieces for e in report.reasons) == n
    assert elapsed < 0.5, f"diagnose took {elapsed:.3f}s on 80,000 pieces"


def test_detail_is_optional_input_type() -> None:
    d = PieceDetail(num_pieces=2, piece_length=BS, total_length=2 * BS, block_size=BS, needed=b"\x01\x01",
                    active=(), peer_has={})
    snap = make(num_pieces=2, blocks=1).snapshot()
    assert diagnose(snap, now=0.0, detail=d).count(Reason.NO_PEERS) == 2


# --- the stall detector ------------------------------------------------------------------------------------


def test_detector_reports_once_after_the_delay_and_rearms_on_a_block() -> None:
    d = StallDetector(30.0)
    assert d.observe(0.0, 0, True) is False
    assert d.observe(29.9, 0, True) is False and not d.stalled
    assert d.stalled_for(29.9) == pytest.approx(29.9)
    assert d.observe(30.0, 0, True) is True and d.stalled
    assert d.observe(45.0, 0, True) is False  # once per stall
    assert d.stalled_for(45.0) == pytest.approx(45.0)
    assert d.observe(50.0, BS, True) is False and not d.stalled  # a block: the clock restarts
    assert d.stalled_for(50.0) == 0.0
    assert d.observe(79.0, BS, True) is False
    assert d.observe(80.0, BS, True) is True


def test_detector_counts_only_while_wanted_data_is_missing() -> None:
    d = StallDetector(10.0)
    assert d.observe(0.0, 100, False) is False
    assert d.observe(50.0, 100, False) is False and d.stalled_for(50.0) == 0.0  # complete, seeding: no stall
    assert d.observe(60.0, 100, True) is False  # data wanted again from now on (e.g. a failed hash)
    assert d.observe(69.0, 100, True) is False
    assert d.observe(70.0, 100, True) is True


def test_detector_timeout() -> None:
    d = StallDetector(30.0)
    d.observe(0.0, 0, True)
    d.observe(59.0, 0, True)
    assert not d.timed_out(59.0, 60.0) and d.timed_out(60.0, 60.0)
    assert not d.timed_out(1e9, None)
    d.observe(61.0, 1, True)
    assert not d.timed_out(61.0, 60.0)
    with pytest.raises(ValueError):
        StallDetector(-1.0)
    with pytest.raises(ValueError):
        StallDetector(float("nan"))


# --- what the scheduler's piece_detail() carries ------------------------------------------------------------


def test_allowed_fast_pieces_of_a_choking_peer_are_not_blamed_on_choking() -> None:
    s = make(num_pieces=8, blocks=1)
    s.handle(m.PeerJoined(0, ip_of(0), have_all=True, fast=True), 0.0)
    s.handle(m.AllowedFast(0, 3), 0.0)
    detail = s.piece_detail()
    assert detail.allowed_fast == {0: frozenset({3})}
    report = diagnose(s.snapshot(), now=1.0, detail=detail)
    assert pieces_of(report, Reason.HOLDERS_CHOKE_US) == set(range(8)) - {3}
    assert Reason.HOLDERS_CHOKE_US not in {e.reason for e in report.reasons if 3 in pieces_of(report, e.reason)}


def test_piece_detail_bars_end_with_their_delay() -> None:
    s = make(num_pieces=1, blocks=1)
    [ref] = requested(join(s, 0, unchoke=True), 0)
    s.handle(m.RequestRejected(0, *ref), 1.0)
    assert s.piece_detail().barred == {0: frozenset({0})}
    assert requested(s.handle(m.Tick(), 1.0 + DEFAULT_CONFIG.piece_retry_delay), 0) == [ref]  # asked again
    assert s.piece_detail().barred == {}


def test_reports_use_the_callers_names_for_peers() -> None:
    s = make(num_pieces=4, blocks=1)
    join(s, 0, unchoke=False)
    join(s, 1, unchoke=False)
    report = diagnose(s.snapshot(), now=1.0, detail=s.piece_detail(), names={0: "127.0.0.5:6881 qBittorrent 4.6"})
    # The named peer by its name; the other by address and our number for it.
    assert peer_names(report, Reason.HOLDERS_CHOKE_US) == {"127.0.0.5:6881 qBittorrent 4.6", name(1)}
    assert {p.name for p in report.idle_peers} == {"127.0.0.5:6881 qBittorrent 4.6", name(1)}
