"""jstorrent against libtorrent 2.1 on loopback: downloading from it, and uploading to it.

Every peer on its own address: libtorrent on 127.0.0.2, jstorrent on 127.0.0.3 (and 127.0.0.4 as a
seeder). Every output is compared byte for byte; every test runs under a hard trio.fail_after.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import httpx
import pytest
import trio

from jstorrent_cli.config import DEFAULT_CONFIG, KiB, MiB
from jstorrent_cli.core import announce
from jstorrent_cli.tasks import session
from tests.conftest import FileSpec, assert_payload, build_torrent, random_files, write_payload
from tests.interop.libtorrent_fixture import libtorrent_peer
from tests.interop.opentracker_fixture import OpenTracker, require_opentracker, running_opentracker

pytestmark = pytest.mark.interop

DEADLINE = 90
LT_HOST, OUR_HOST, OUR_SEED_HOST = "127.0.0.2", "127.0.0.3", "127.0.0.4"

CASES = [
    pytest.param(16 * KiB, [5 * MiB + 123], True, id="16KiB-single"),
    pytest.param(256 * KiB, [3 * MiB + 7, 0, 1, 100 * KiB, 2 * MiB - 5] + [3000 + i for i in range(40)], False,
                 id="256KiB-multi"),
]


# Bigger shapes, downloading only: 4 MiB pieces with an odd last piece; hundreds of small files.
DOWNLOAD_ONLY_CASES = [
    pytest.param(4 * MiB, [9 * MiB + 4097], True, id="4MiB-single"),
    pytest.param(16 * KiB, [1 + (i * 7919) % 20000 for i in range(300)], False, id="16KiB-300-files"),
]


def payload(piece_length: int, sizes: list[int], single: bool) -> tuple[str, list[FileSpec]]:
    files = random_files(piece_length + len(sizes), sizes)
    if single:
        return "single.bin", [(("single.bin",), files[0][1])]
    return "multi", files


@pytest.mark.parametrize(("piece_length", "sizes", "single"), CASES + DOWNLOAD_ONLY_CASES)
async def test_download_from_libtorrent_seeder(tmp_path: Path, piece_length: int, sizes: list[int],
                                               single: bool) -> None:
    name, files = payload(piece_length, sizes, single)
    data, torrent = build_torrent(name, files, piece_length, single=single)
    write_payload(tmp_path / "lt", name, files, single=single)
    with trio.fail_after(DEADLINE), libtorrent_peer(LT_HOST) as lt_peer:
        lt_peer.add(data, tmp_path / "lt", seed=True)
        result = await session.run(DEFAULT_CONFIG, torrent, tmp_path / "ours", peers=[(LT_HOST, lt_peer.port)],
                                   listen_host=OUR_HOST, port=0)
    assert result.status == "ok", (result, lt_peer.alerts())
    assert result.peers_used == 1
    assert_payload(tmp_path / "ours", name, files, single=single)


@pytest.mark.parametrize(("piece_length", "sizes", "single"), CASES)
async def test_libtorrent_downloads_from_jstorrent_seeder(tmp_path: Path, piece_length: int, sizes: list[int],
                                                          single: bool) -> None:
    name, files = payload(piece_length, sizes, single)
    data, torrent = build_torrent(name, files, piece_length, single=single)
    write_payload(tmp_path / "ours", name, files, single=single)
    with trio.fail_after(DEADLINE), libtorrent_peer(LT_HOST) as lt_peer:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(
                session.run, DEFAULT_CONFIG, torrent, tmp_path / "ours", listen_host=OUR_SEED_HOST, port=0,
                seed_time=math.inf))
            handle = lt_peer.add(data, tmp_path / "lt", seed=False)
            handle.connect_peer((OUR_SEED_HOST, port))
            await lt_peer.wait_until(lambda: bool(handle.status().is_seeding), what="libtorrent download")
            nursery.cancel_scope.cancel()
    assert_payload(tmp_path / "lt", name, files, single=single)


@pytest.mark.parametrize("scheme", ["http", "udp"])
async def test_download_from_libtorrent_found_through_opentracker(
    tmp_path: Path, scheme: str
) -> None:
    require_opentracker()
    name, files = payload(64 * KiB, [2 * MiB + 11, 300 * KiB], False)
    _, probe = build_torrent(name, files, 64 * KiB)
    with running_opentracker(tmp_path / "tracker", [probe.info_hash]) as tracker:
        await _download_through(tracker, tmp_path, scheme, name, files, probe.info_hash)


async def _download_through(tracker: OpenTracker, tmp_path: Path, scheme: str, name: str, files: list[FileSpec],
                            info_hash: bytes) -> None:
    url = tracker.http_url if scheme == "http" else tracker.udp_url
    data, torrent = build_torrent(name, files, 64 * KiB, trackers=[url])
    assert torrent.info_hash == info_hash  # trackers live outside `info`
    write_payload(tmp_path / "lt", name, files)
    with trio.fail_after(DEADLINE), libtorrent_peer(LT_HOST) as lt_peer:
        handle = lt_peer.add(data, tmp_path / "lt", seed=True)
        # libtorrent announces first, so the tracker hands it to us on our `started`.
        await lt_peer.wait_until(
            lambda: any(t.get("updating") is False and t.get("message") == "" and t.get("fails") == 0
                        and t.get("verified") for t in handle.trackers()),
            what="libtorrent announce")
        result = await session.run(DEFAULT_CONFIG, torrent, tmp_path / "ours", listen_host=OUR_HOST, port=0)
    assert result.status == "ok", (result, lt_peer.alerts())
    assert result.peers_used >= 1
    assert_payload(tmp_path / "ours", name, files)
    # Our `completed` got through before `stopped`: the tracker counts one finished download.
    scrape = announce.scrape_url(tracker.http_url)
    assert scrape is not None
    async with httpx.AsyncClient() as client:
        body = (await client.get(announce.build_http_scrape_url(scrape, [info_hash]))).content
    assert announce.parse_http_scrape(body)[info_hash].completed == 1


@pytest.mark.slow
async def test_throughput_from_libtorrent_seeder(tmp_path: Path) -> None:
    """Not a pass/fail speed bar: prints the rate (run with -s to see it) and checks every byte."""
    size = 256 * MiB
    name, files = "big.bin", [(("big.bin",), random_files(1, [size])[0][1])]
    data, torrent = build_torrent(name, files, 1 * MiB, single=True)
    write_payload(tmp_path / "lt", name, files, single=True)
    with trio.fail_after(180), libtorrent_peer(LT_HOST) as lt_peer:
        lt_peer.add(data, tmp_path / "lt", seed=True)
        started = time.monotonic()
        result = await session.run(DEFAULT_CONFIG, torrent, tmp_path / "ours", peers=[(LT_HOST, lt_peer.port)],
                                   listen_host=OUR_HOST, port=0)
        wall = time.monotonic() - started
    assert result.status == "ok"
    print(f"\nthroughput: {size / MiB:.0f} MiB in {wall:.2f} s = {size / MiB / wall:.1f} MiB/s "
          f"(session avg {result.average_rate / MiB:.1f} MiB/s, wasted {result.wasted_bytes})")
    assert_payload(tmp_path / "ours", name, files, single=True)


async def test_download_from_a_mixed_swarm_of_libtorrent_and_jstorrent_seeders(tmp_path: Path) -> None:
    name, files = payload(64 * KiB, [6 * MiB + 3, 100 * KiB], False)
    data, torrent = build_torrent(name, files, 64 * KiB)
    write_payload(tmp_path / "lt", name, files)
    write_payload(tmp_path / "seed", name, files)
    with trio.fail_after(DEADLINE), libtorrent_peer(LT_HOST) as lt_peer:
        lt_peer.add(data, tmp_path / "lt", seed=True)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(
                session.run, DEFAULT_CONFIG, torrent, tmp_path / "seed", listen_host=OUR_SEED_HOST, port=0,
                seed_time=math.inf))
            result = await session.run(DEFAULT_CONFIG, torrent, tmp_path / "ours",
                                       peers=[(LT_HOST, lt_peer.port), (OUR_SEED_HOST, port)],
                                       listen_host=OUR_HOST, port=0)
            nursery.cancel_scope.cancel()
    assert result.status == "ok", (result, lt_peer.alerts())
    assert result.downloaded_bytes - result.wasted_bytes == torrent.total_length
    assert_payload(tmp_path / "ours", name, files)
