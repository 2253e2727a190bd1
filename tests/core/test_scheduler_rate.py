"""--max-download-limit in the scheduler: bytes in flight stay within Config.download_rate_request_window
seconds of the rate, so requests never queue in our own limiter past their deadline (a sole holder whose
requests timed out there had its pieces barred and sat idle for piece_retry_delay)."""

from __future__ import annotations

import dataclasses
import random

from jstorrent_cli.config import DEFAULT_CONFIG, KiB
from jstorrent_cli.core import messages as m
from jstorrent_cli.core.scheduler import IDLE_BUDGET, IDLE_RATE, Scheduler

BS = DEFAULT_CONFIG.block_size


def requested(commands: list[m.Command]) -> list[m.BlockRef]:
    return [r for c in commands if isinstance(c, m.SendRequests) for r in c.requests]


def written(commands: list[m.Command]) -> m.BlocksWritten:
    return m.BlocksWritten(tuple((p, b, len(d)) for c in commands if isinstance(c, m.WriteBlocks)
                                 for p, b, d in c.blocks))


def test_in_flight_stays_within_the_rate_window_and_the_peer_says_why() -> None:
    rate = 64 * KiB
    config = dataclasses.replace(DEFAULT_CONFIG, max_download_rate=rate, peer_limit_initial=50)
    cap = int(rate * config.download_rate_request_window)
    s = Scheduler(8, 16 * BS, 8 * 16 * BS, config, random.Random(1))
    out = s.handle(m.PeerJoined(0, "127.0.0.2", have_all=True), 0.0) + s.handle(m.Unchoked(0), 0.0)
    out_refs = requested(out)
    assert sum(n for _, _, n in out_refs) == cap  # the budget (64 MiB) and the limit (50) would allow far more
    assert s.snapshot().peers[0].idle_reason is None
    s.check_invariants()
    now = 0.0
    received = 0
    while out_refs:  # the peer serves every request; the limit lets more go out only as room comes back
        now += 0.25
        ref = out_refs.pop(0)
        out = s.handle(m.BlocksReceived(0, ((ref[0], ref[1], bytes(ref[2])),)), now)
        out += s.handle(written(out), now)
        received += ref[2]
        out_refs += requested(out)
        s.check_invariants()
        snap = s.snapshot()
        assert snap.bytes_in_flight <= cap
    assert received == 8 * 16 * BS and s.snapshot().finished is False  # every block came; hashes pending


def test_idle_reason_is_the_rate_limit_not_the_writer() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, max_download_rate=2 * BS, peer_limit_initial=50)
    s = Scheduler(4, 4 * BS, 16 * BS, config, random.Random(1))
    s.handle(m.PeerJoined(0, "127.0.0.2", have_all=True), 0.0)
    s.handle(m.Unchoked(0), 0.0)
    s.handle(m.PeerJoined(1, "127.0.0.3", have_all=True), 0.0)
    s.handle(m.Unchoked(1), 0.0)
    reasons = {p.peer: p.idle_reason for p in s.snapshot().peers}
    assert IDLE_RATE in reasons.values() and IDLE_BUDGET not in reasons.values(), reasons


def test_without_a_limit_nothing_changes() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=50)
    s = Scheduler(8, 16 * BS, 8 * 16 * BS, config, random.Random(1))
    out = s.handle(m.PeerJoined(0, "127.0.0.2", have_all=True), 0.0) + s.handle(m.Unchoked(0), 0.0)
    assert len(requested(out)) == 50
