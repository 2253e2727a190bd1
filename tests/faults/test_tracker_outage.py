"""The tracker goes away mid-download (opentracker killed with SIGKILL) and comes back.

Real sessions in this process: a seeder on 127.0.0.2 and the downloader on 127.0.0.3, both finding
each other only through a real opentracker. With the tracker gone the download finishes from the
peer it is connected to; the `completed` announce fails, and the announcer retries with a doubling
back-off (Config.tracker_retry_initial .. tracker_retry_max; shortened here) instead of spinning or
crashing; once opentracker is back on the same address, the next retry gets through and the tracker
counts the download as completed (its scrape says so).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import signal
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import httpx
import trio

from jstorrent_cli.config import DEFAULT_CONFIG, KiB, MiB
from jstorrent_cli.core.announce import parse_http_scrape, scrape_url
from jstorrent_cli.tasks import session
from tests.conftest import assert_payload, build_torrent, random_files, write_payload
from tests.faults.common import OUR_HOST, SEEDER_HOST
from tests.hostile.peers import RecordingDisplay
from tests.interop.opentracker_fixture import require_opentracker, running_opentracker

DEADLINE = 45
RETRY = 0.3  # the shortened first tracker retry (s)...
RETRY_MAX = 1.2  # ...and the longest
CONFIG = dataclasses.replace(DEFAULT_CONFIG, tracker_retry_initial=RETRY, tracker_retry_max=RETRY_MAX)
RATE = 1 * MiB  # the seeder's limit: a 4 MiB download takes about 4 s, time to kill the tracker in it


async def _until(predicate: Callable[[], object], interval: float = 0.02) -> None:
    while not predicate():
        await trio.sleep(interval)  # polling the sessions' status, not waiting out a race


async def test_tracker_killed_mid_download_download_completes_announcer_backs_off_and_recovers(
    tmp_path: Path,
) -> None:
    require_opentracker()
    files = random_files(13, [4 * MiB + 11])
    name = "tr.bin"
    files = [((name,), files[0][1])]
    workdir = tmp_path / "tracker"
    # The tracker's address and ports are fixed up front, so it can come back where it was.
    with running_opentracker(workdir, []) as probe:
        host, ports = probe.host, (probe.http_port, probe.udp_port)
    url = f"http://{host}:{ports[0]}/announce"
    _, torrent = build_torrent(name, files, 64 * KiB, trackers=[url], single=True)
    write_payload(tmp_path / "seed", name, files, single=True)
    seeder_display, ours = RecordingDisplay(), RecordingDisplay()
    failures: list[float] = []  # trio times of the failed announces the downloader's display saw

    def note_failure(status: session.SessionStatus) -> None:
        at = status.trackers[0].last_error_at if status.trackers else None
        if at is not None and (not failures or at > failures[-1]):
            failures.append(at)

    ours.on_poll = note_failure
    tracker = running_opentracker(workdir, [torrent.info_hash], host=host, ports=ports)
    first = tracker.__enter__()
    try:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(
                    session.run, dataclasses.replace(CONFIG, max_upload_rate=RATE), torrent, tmp_path / "seed",
                    listen_host=SEEDER_HOST, port=0, seed_time=math.inf, display=seeder_display))
                await _until(lambda: seeder_display.last is not None and seeder_display.last.trackers
                             and seeder_display.last.trackers[0].last_success_at is not None)
                results: list[session.SessionResult] = []

                async def download() -> None:
                    results.append(await session.run(CONFIG, torrent, tmp_path / "ours", listen_host=OUR_HOST,
                                                     port=0, seed_time=math.inf, display=ours))

                nursery.start_soon(download)
                # Some data verified, most still to come: the tracker dies.
                await _until(lambda: ours.last is not None and 0 < ours.last.verified_bytes < torrent.total_length // 2)
                os.kill(first.pid, signal.SIGKILL)
                killed_at = trio.current_time()
                # The download completes from the connected seeder.
                await _until(lambda: ours.last is not None and ours.last.verified_bytes == torrent.total_length)
                # The `completed` announce fails and is retried, backing off (several failures, spaced wider).
                await _until(lambda: len([t for t in failures if t > killed_at]) >= 4)
                down = [t for t in failures if t > killed_at]
                gaps = [b - a for a, b in itertools.pairwise(down)]
                assert all(gap >= RETRY * 0.9 for gap in gaps), gaps
                assert gaps[-1] >= RETRY_MAX * 0.9 > gaps[0] * 2, gaps  # doubled up to the max
                # The tracker comes back: the next retry gets through.
                tracker.__exit__(None, None, None)
                back_at = trio.current_time()
                with running_opentracker(workdir, [torrent.info_hash], host=host, ports=ports):
                    await _until(lambda: ours.last is not None and ours.last.trackers[0].consecutive_failures == 0
                                 and (ours.last.trackers[0].last_success_at or 0.0) > back_at)
                    assert trio.current_time() - back_at < RETRY_MAX + 3.0
                    scrape = scrape_url(url)
                    assert scrape is not None
                    async with httpx.AsyncClient() as client:
                        query = urllib.parse.quote_from_bytes(torrent.info_hash)
                        reply = await client.get(f"{scrape}?info_hash={query}")
                    entry = parse_http_scrape(reply.content)[torrent.info_hash]
                    assert entry.completed == 1, entry  # our `completed` reached the tracker that came back
                    # Still running (seeding), no crash:
                    assert ours.last is not None and ours.last.state is session.SessionState.SEEDING
                    nursery.cancel_scope.cancel()
    finally:
        tracker.__exit__(None, None, None)
    assert not results, results  # it was still seeding when the test cancelled it (no early exit)
    assert_payload(tmp_path / "ours", name, files, single=True)
