"""Each stall reason built for real in a whole session over loopback, and the report that names it.

A scripted peer (tests/hostile/peers.py) serves honestly, or holds back in the way under test; the disk
writer and the hasher are held by a test-owned event in a Storage subclass (the hook lives here, not in
the product). Each test waits for the session's stall report, checks its reason, pieces and peers, and
where the situation can end (the gate opens) checks that the download then completes.

Reasons covered elsewhere with a real session: holders_choke_us, no_peers (tests/tasks/test_session_stall.py).
not_yet_requested is a scheduler bug by definition: it has no real situation to build (its unit test drives
the scheduler into it by hand, tests/core/test_diagnose.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest
import trio

from jstorrent_cli.config import Config, KiB
from jstorrent_cli.core import messages as m
from jstorrent_cli.core import wire
from jstorrent_cli.core.diagnose import Reason, StallReport, report_lines, report_record
from jstorrent_cli.core.messages import BlockData
from jstorrent_cli.core.recorder import read_log
from jstorrent_cli.core.replay import Replay
from jstorrent_cli.core.scheduler import IDLE_BARRED
from jstorrent_cli.tasks import session
from jstorrent_cli.tasks.storage import Storage
from tests.conftest import FileSpec, assert_payload, build_torrent, free_port, random_files
from tests.hostile.peers import PeerConn, ScriptedPeer
from tests.tasks.test_session_stall import FAST, Recorder

DEADLINE = 20
OUR_HOST = "127.0.0.3"


def _bitfield(piece_count: int, pieces: Sequence[int]) -> bytes:
    bits = bytearray(wire.bitfield_length(piece_count))
    for piece in pieces:
        bits[piece >> 3] |= 0x80 >> (piece & 7)
    return bytes(bits)


def seeder(pieces: Sequence[int] | None = None, *, answer: bool = True) -> Callable[[PeerConn], Awaitable[None]]:
    """A peer that has `pieces` (None: all), unchokes us, and answers every request (or, with
    `answer=False`, accepts requests and never sends a block)."""

    async def script(conn: PeerConn) -> None:
        await conn.handshake(fast=False)
        n = conn.torrent.piece_count
        await conn.send(wire.encode(wire.Bitfield(_bitfield(n, range(n) if pieces is None else pieces)))
                        + wire.encode(wire.UNCHOKE))
        while True:
            msg = await conn.next_message()
            if isinstance(msg, wire.Request) and answer:
                await conn.send_piece(msg)

    return script


class Gate:
    """A Storage whose writes (or hashes) wait until the test opens the gate; `reached` is set by the
    first one that waits."""

    def __init__(self) -> None:
        self.open = trio.Event()
        self.reached = trio.Event()

    async def wait(self) -> None:
        self.reached.set()
        await self.open.wait()

    def writer(self) -> type[Storage]:
        gate = self

        class GatedWriter(Storage):
            async def write_blocks(self, blocks: Sequence[tuple[int, int, BlockData]]) -> list[tuple[int, int, int]]:
                await gate.wait()
                return await super().write_blocks(blocks)

        return GatedWriter

    def hasher(self) -> type[Storage]:
        gate = self

        class GatedHasher(Storage):
            async def hash_pieces(
                self, jobs: Sequence[tuple[int, bytes, bool]],
            ) -> list[tuple[bool, tuple[bytes, ...]]]:
                await gate.wait()
                return await super().hash_pieces(jobs)

        return GatedHasher


async def stall_then(
    tmp_path: Path, config: Config, peer: ScriptedPeer, *, gate: Gate | None = None, finish: bool = False,
) -> tuple[StallReport, session.SessionResult | None, int]:
    """Run a session against `peer` until its first stall report; then open the gate and (with `finish`)
    wait for the download to end, else cancel it. Returns the report, the result (when it ended) and the
    peer's port."""
    display = Recorder()
    result: list[session.SessionResult] = []
    done = trio.Event()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(peer.serve)

            async def run() -> None:
                result.append(await session.run(config, peer.torrent, tmp_path, peers=[(peer.host, port)],
                                                listen_host=OUR_HOST, port=0, display=display))
                done.set()

            nursery.start_soon(run)
            await display.stalled.wait()
            if gate is not None:
                gate.open.set()
            if finish:
                await done.wait()
            nursery.cancel_scope.cancel()
    return display.reports[0], (result[0] if result else None), port


def pieces_of(report: StallReport, reason: Reason) -> set[int]:
    entry = report.entry(reason)
    assert entry is not None, f"{reason} not in {[e.reason for e in report.reasons]}"
    return {p for a, b in entry.piece_ranges for p in range(a, b + 1)}


def peer_names(report: StallReport, reason: Reason) -> list[str]:
    entry = report.entry(reason)
    assert entry is not None
    return [p.name for p in entry.peers]


def make_peer(host: str, seed: int, size: int, piece_length: int, *, pieces: Sequence[int] | None = None,
              answer: bool = True) -> tuple[ScriptedPeer, list[FileSpec]]:
    files = random_files(seed, [size])
    _, torrent = build_torrent(f"stall{seed}", files, piece_length)
    payload = b"".join(data for _, data in files)
    return ScriptedPeer(host, torrent, payload, seeder(pieces, answer=answer)), files


# --- the reasons ---------------------------------------------------------------------------------------------


async def test_a_blocked_disk_writer_is_waiting_for_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()
    monkeypatch.setattr(session, "Storage", gate.writer())
    peer, files = make_peer("127.0.0.21", 71, 256 * KiB, 32 * KiB)
    config = dataclasses.replace(FAST, max_unflushed_bytes=64 * KiB)  # a tiny --max-buffer: 4 blocks
    report, result, port = await stall_then(tmp_path, config, peer, gate=gate, finish=True)
    assert gate.reached.is_set()
    assert report.cause is Reason.WAITING_FOR_BUDGET
    # Every missing piece waits on the disk: those with blocks received and the ones not started.
    assert report.count(Reason.WAITING_FOR_BUDGET) == report.missing_pieces == peer.torrent.piece_count
    assert report.bytes_waiting_for_disk == config.max_unflushed_bytes and report.bytes_in_flight == 0
    assert [(p.name, p.reason) for p in report.idle_peers] == [
        (f"127.0.0.21:{port}", "waiting for budget (writer behind)")]
    assert "The disk is behind" in report.most_likely_cause
    # Once the writer moves, the budget drains and the download completes.
    assert result is not None and result.status == "ok"
    assert_payload(tmp_path, peer.torrent.name, files)


async def test_a_blocked_hasher_is_waiting_for_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()
    monkeypatch.setattr(session, "Storage", gate.hasher())
    peer, files = make_peer("127.0.0.22", 73, 96 * KiB, 32 * KiB)
    report, result, _ = await stall_then(tmp_path, FAST, peer, gate=gate, finish=True)
    assert report.cause is Reason.WAITING_FOR_HASH
    assert pieces_of(report, Reason.WAITING_FOR_HASH) == {0, 1, 2}
    assert report.bytes_in_flight == report.bytes_waiting_for_disk == 0  # all on disk, nothing asked
    assert "waiting for the hash check" in report.most_likely_cause
    assert result is not None and result.status == "ok"
    assert_payload(tmp_path, peer.torrent.name, files)


async def test_a_peer_that_takes_requests_and_never_answers_is_requested_slow(tmp_path: Path) -> None:
    # 8 pieces of 2 blocks; the first 4 requests (the slow-start limit) cover pieces that are then
    # "requested"; the rest wait behind that peer ("queued").
    peer, _ = make_peer("127.0.0.23", 75, 256 * KiB, 32 * KiB, answer=False)
    report, _, port = await stall_then(tmp_path, FAST, peer)
    name = f"127.0.0.23:{port}"
    limit = FAST.peer_limit_initial
    slow = pieces_of(report, Reason.REQUESTED_SLOW)
    assert len(slow) == limit // 2  # whole-piece affinity: 4 requests fill 2 pieces of 2 blocks
    assert pieces_of(report, Reason.QUEUED) == set(range(8)) - slow
    [slow_peer] = report.entry(Reason.REQUESTED_SLOW).peers  # type: ignore[union-attr]
    assert slow_peer.name == name and slow_peer.outstanding == limit and not slow_peer.peer_choking
    assert slow_peer.request_age is not None and slow_peer.request_age >= FAST.stall_report_after
    assert peer_names(report, Reason.QUEUED) == [name]
    assert report.cause is Reason.QUEUED  # most bytes: the queued pieces, behind the silent peer
    assert name in report.most_likely_cause and "do not come back" in report.most_likely_cause


async def test_a_snubbed_peer_is_named_as_snubbed(tmp_path: Path) -> None:
    peer, _ = make_peer("127.0.0.24", 77, 64 * KiB, 32 * KiB, answer=False)
    config = dataclasses.replace(FAST, snub_timeout=0.3, tick_interval=0.1)  # snubbed before the report
    report, _, port = await stall_then(tmp_path, config, peer)
    assert report.cause is Reason.REQUESTED_SLOW
    entry = report.entry(Reason.REQUESTED_SLOW)
    assert entry is not None and [(p.name, p.snubbed, p.limit) for p in entry.peers] == [
        (f"127.0.0.24:{port}", True, 1)]
    assert f"127.0.0.24:{port} (snubbed)" in report.most_likely_cause


async def test_a_tight_download_limit_is_rate_limited(tmp_path: Path) -> None:
    # 16 KiB/s with 1 s of burst: the first 4 requests (64 KiB) wait 3 s for tokens before they go out.
    peer, _ = make_peer("127.0.0.25", 79, 128 * KiB, 32 * KiB)
    config = dataclasses.replace(FAST, max_download_rate=16 * KiB, rate_limit_burst=1.0)
    report, _, port = await stall_then(tmp_path, config, peer)
    assert report.cause is Reason.RATE_LIMITED
    assert report.count(Reason.RATE_LIMITED) == report.missing_pieces == peer.torrent.piece_count
    assert peer_names(report, Reason.RATE_LIMITED) == [f"127.0.0.25:{port}"]
    assert "--max-download-limit" in report.most_likely_cause


async def test_pieces_no_connected_peer_has(tmp_path: Path) -> None:
    peer, _ = make_peer("127.0.0.26", 81, 128 * KiB, 32 * KiB, pieces=[0, 1])
    report, _, port = await stall_then(tmp_path, FAST, peer)
    assert report.cause is Reason.NOBODY_HAS_IT
    assert report.missing_pieces == 2 and pieces_of(report, Reason.NOBODY_HAS_IT) == {2, 3}  # 0-1 arrived
    assert [(p.name, p.reason) for p in report.idle_peers] == [(f"127.0.0.26:{port}", "has nothing we want")]
    assert "The only connected peer does not have the 2 missing pieces" in report.most_likely_cause


async def test_a_given_peer_that_cannot_be_reached_is_named_not_asked_for(tmp_path: Path) -> None:
    """`--peer` to an address where nothing listens, no tracker: the report names that peer as unreachable
    instead of telling the user to give peers with --peer (which they did)."""
    dead = free_port("127.0.0.28")  # nothing listens there: connection refused
    files = random_files(85, [64 * KiB])
    _, torrent = build_torrent("unreachable", files, 16 * KiB)
    display = Recorder()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(
                session.run, FAST, torrent, tmp_path, peers=[("127.0.0.28", dead)], listen_host=OUR_HOST, port=0,
                display=display))
            await display.stalled.wait()
            nursery.cancel_scope.cancel()
    report = display.reports[0]
    assert report.cause is Reason.NO_PEERS and report.peers_connected == 0
    assert report.unreachable_peers == (f"127.0.0.28:{dead}",) and report.more_unreachable_peers == 0
    assert f"127.0.0.28:{dead}" in report.most_likely_cause and "could not be reached" in report.most_likely_cause
    assert "give peers with --peer" not in report.most_likely_cause
    assert f"Unreachable peers: 127.0.0.28:{dead}" in report_lines(report)
    assert report_record(report)["unreachable_peers"] == [f"127.0.0.28:{dead}"]


async def test_the_stall_timeout_line_gives_the_cause_without_a_stale_duration(tmp_path: Path) -> None:
    """--stall-timeout's one line said "no data for 2 s (--stall-timeout 2): stalled 1s: ..." (the note of the
    first report, 1 s old): it gives the cause alone, as diagnosed when the timeout fires."""
    peer, _ = make_peer("127.0.0.29", 87, 128 * KiB, 32 * KiB, pieces=[0, 1])
    config = dataclasses.replace(FAST, stall_timeout=2.0)
    display = Recorder()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(peer.serve)
            result = await session.run(config, peer.torrent, tmp_path, peers=[(peer.host, port)],
                                       listen_host=OUR_HOST, port=0, display=display)
            nursery.cancel_scope.cancel()
    assert result.status == "error" and result.exit_status == 2
    error = result.error or ""
    assert error.startswith("no data for 2 s (--stall-timeout 2): "), error
    assert "stalled" not in error, error
    assert error.endswith(display.reports[0].most_likely_cause), error  # the same situation: the same cause


def test_a_limiter_in_debt_with_nothing_in_flight_is_not_called_the_cause() -> None:
    """Seen for real: `get --max-download-limit 1M` of a 5.7 MiB torrent from one seeder took 14 s instead of 5,
    8 s of them with nothing requested (the requests that waited in the limiter timed out and their pieces were
    barred for the only peer). The report blamed the rate limit, because the limiter's balance (refilled only
    when a request takes from it) stayed negative; and named the peer idle because "everything it has is
    requested from others". With nothing in flight the limiter holds nothing back: the pieces are waiting on
    the timed-out peer, and its idle reason says so."""
    from tests.core.test_diagnose import join, make, name, peer_names, report_of, requested

    s = make(num_pieces=1, blocks=4)
    for ref in requested(join(s, 0, unchoke=True), 0):
        if ref in s.outstanding(0):  # it rejects them all: the piece is barred for it, nothing is in flight
            s.handle(m.RequestRejected(0, *ref), 1.0)
    # (A timeout no longer bars the only holder: it is asked again at once. A reject still bars.)
    assert s.is_barred(0, 0) and s.snapshot().bytes_in_flight == 0
    report = report_of(s, 2.0, rate_limited=True, stalled_for=8.0)
    assert report.count(Reason.RATE_LIMITED) == 0 and "--max-download-limit" not in report.most_likely_cause
    assert report.cause is Reason.REQUESTED_SLOW and peer_names(report, Reason.REQUESTED_SLOW) == {name(0)}
    assert [p.reason for p in report.idle_peers] == [IDLE_BARRED]
    # With requests out, a limiter in debt does hold them back.
    busy = make(num_pieces=3, blocks=4)
    join(busy, 0, unchoke=True)
    assert report_of(busy, 20.0, rate_limited=True, stalled_for=20.0).cause is Reason.RATE_LIMITED


# --- a recorded stall, replayed ------------------------------------------------------------------------------


async def test_a_recorded_stall_replays_with_the_same_classification(tmp_path: Path) -> None:
    """The silent peer again, with --log-json: the replay of the log finds the stall and blames the same reason
    and pieces as the live report (its clock is the log's, so it is checked at the recorded report delay)."""
    peer, _ = make_peer("127.0.0.27", 83, 256 * KiB, 32 * KiB, answer=False)
    log = tmp_path / "stall.log"
    display = Recorder()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(peer.serve)
            nursery.start_soon(functools.partial(
                session.run, FAST, peer.torrent, tmp_path / "out", peers=[(peer.host, port)], listen_host=OUR_HOST,
                port=0, display=display, log_json=log, live_diagnosis=True))
            await display.stalled.wait()
            # The replay's clock starts at the first fact, a little after the live one: let the log run on
            # (the -v note counts the stall's seconds) so it reaches the replay's stall moment too.
            while not any(note.startswith("stalled 2s") for note in display.notes):
                await trio.sleep(FAST.stall_check_interval)  # the display polls at this pace too
            nursery.cancel_scope.cancel()
    live = display.reports[0]
    header, entries = read_log(log.read_text().splitlines(keepends=True))
    replay = Replay(header)
    assert all(replay.feed(entry) for entry in entries)  # no divergence
    assert replay.divergence is None and replay.facts > 0
    stalls = [e.stall for e in replay.events if e.stall is not None]
    assert stalls, [e.text for e in replay.events]
    replayed = stalls[0]
    assert replayed.cause is live.cause is Reason.QUEUED
    assert {(e.reason, e.piece_ranges) for e in replayed.reasons} == {(e.reason, e.piece_ranges) for e in live.reasons}
