"""jstorrent downloads from jstorrent: a seeder session and a leecher session in one trio run."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from jstorrent_cli.config import DEFAULT_CONFIG, KiB
from jstorrent_cli.tasks import session
from tests.conftest import assert_payload, build_torrent, random_files, write_payload

DEADLINE = 60


@pytest.mark.parametrize(
    ("piece_length", "sizes", "single"),
    [
        (16 * KiB, [3 * 1024 * KiB + 5], True),  # many small pieces, odd last piece
        (256 * KiB, [700 * KiB + 3, 0, 1, 2 * 1024 * KiB, 17], False),  # files cross pieces, an empty file
    ],
)
async def test_leecher_gets_every_byte_from_a_seeder(
    tmp_path: Path, piece_length: int, sizes: list[int], single: bool
) -> None:
    files = random_files(piece_length, sizes)
    if single:
        files = [(("payload.bin",), files[0][1])]
    name = "payload.bin" if single else "set"
    _, torrent = build_torrent(name, files, piece_length, single=single)
    seed_dir, leech_dir = tmp_path / "seed", tmp_path / "leech"
    write_payload(seed_dir, name, files, single=single)
    config = DEFAULT_CONFIG
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(
                    session.run, config, torrent, seed_dir, listen_host="127.0.0.2", port=0,
                    seed_time=math.inf, rng=random.Random(1),
                )
            )
            result = await session.run(
                config, torrent, leech_dir, peers=[("127.0.0.2", port)], listen_host="127.0.0.3", port=0,
                rng=random.Random(2),
            )
            nursery.cancel_scope.cancel()
    assert result.status == "ok", result
    assert result.verified_bytes == torrent.total_length
    assert result.downloaded_bytes >= torrent.total_length
    assert result.peers_used == 1
    assert_payload(leech_dir, name, files, single=single)


async def test_complete_data_is_checked_and_the_session_ends_without_peers(tmp_path: Path) -> None:
    files = random_files(7, [100 * KiB + 1])
    _, torrent = build_torrent("x", files, 16 * KiB)
    write_payload(tmp_path, "x", files)
    with trio.fail_after(DEADLINE):
        result = await session.run(DEFAULT_CONFIG, torrent, tmp_path, listen_host="127.0.0.4", port=0)
    assert result.status == "ok"
    assert result.verified_bytes == torrent.total_length
    assert result.downloaded_bytes == 0


async def test_corrupt_existing_piece_is_downloaded_again(tmp_path: Path) -> None:
    files = random_files(9, [200 * KiB])
    name = "c"
    _, torrent = build_torrent(name, files, 16 * KiB)
    seed_dir, leech_dir = tmp_path / "seed", tmp_path / "leech"
    write_payload(seed_dir, name, files)
    # The leecher has every byte but one flipped: one piece fails the check and comes from the seeder.
    write_payload(leech_dir, name, files)
    target = leech_dir.joinpath(name, *files[0][0])
    data = bytearray(target.read_bytes())
    data[50 * KiB] ^= 0xFF
    target.write_bytes(bytes(data))
    config = dataclasses.replace(DEFAULT_CONFIG)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(session.run, config, torrent, seed_dir, listen_host="127.0.0.2", port=0,
                                  seed_time=math.inf)
            )
            result = await session.run(config, torrent, leech_dir, peers=[("127.0.0.2", port)],
                                       listen_host="127.0.0.3", port=0)
            nursery.cancel_scope.cancel()
    assert result.status == "ok"
    assert result.downloaded_bytes == 16 * KiB  # exactly the one bad piece
    assert_payload(leech_dir, name, files)


async def test_two_seeders_both_serve_and_a_seed_ratio_ends_seeding(tmp_path: Path) -> None:
    files = random_files(11, [3 * 1024 * KiB + 9, 40 * KiB])
    name = "two"
    _, torrent = build_torrent(name, files, 32 * KiB)
    for host in ("a", "b"):
        write_payload(tmp_path / host, name, files)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port_a = await nursery.start(functools.partial(
                session.run, DEFAULT_CONFIG, torrent, tmp_path / "a", listen_host="127.0.0.2", port=0,
                seed_time=math.inf))
            port_b = await nursery.start(functools.partial(
                session.run, DEFAULT_CONFIG, torrent, tmp_path / "b", listen_host="127.0.0.4", port=0,
                seed_time=math.inf))
            # The leecher seeds until it uploaded the whole torrent once, to a last peer that knows only it.
            leecher: list[session.SessionResult] = []

            async def leech(task_status: trio.TaskStatus[int]) -> None:
                leecher.append(await session.run(
                    DEFAULT_CONFIG, torrent, tmp_path / "leech", peers=[("127.0.0.2", port_a), ("127.0.0.4", port_b)],
                    listen_host="127.0.0.3", port=0, seed_ratio=1.0, task_status=task_status))

            port_leech = await nursery.start(leech)
            last = await session.run(DEFAULT_CONFIG, torrent, tmp_path / "last", peers=[("127.0.0.3", port_leech)],
                                     listen_host="127.0.0.5", port=0)
            while not leecher:
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    first = leecher[0]
    assert first.status == "ok" and last.status == "ok"
    assert first.peers_used == 3  # both seeders sent blocks, and the last peer took some
    assert first.uploaded_bytes >= torrent.total_length  # the ratio was reached before it ended
    assert_payload(tmp_path / "leech", name, files)
    assert_payload(tmp_path / "last", name, files)


async def test_cli_get_downloads_and_reports_json(tmp_path: Path) -> None:
    files = random_files(13, [600 * KiB + 1])
    name = "cli"
    data, torrent = build_torrent(name, files, 64 * KiB)
    (tmp_path / "t.torrent").write_bytes(data)
    write_payload(tmp_path / "seed", name, files)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(
                session.run, DEFAULT_CONFIG, torrent, tmp_path / "seed", listen_host="127.0.0.2", port=0,
                seed_time=math.inf))
            done = await trio.run_process(
                [sys.executable, "-m", "jstorrent_cli", "get", str(tmp_path / "t.torrent"), "-d", str(tmp_path / "out"),
                 "--peer", f"127.0.0.2:{port}", "--listen", "127.0.0.3", "--port", "0", "--json"],
                capture_stdout=True, capture_stderr=True, check=False)
            nursery.cancel_scope.cancel()
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert records[-1]["event"] == "result" and records[-1]["verified_bytes"] == torrent.total_length
    assert_payload(tmp_path / "out", name, files)


async def test_cli_get_stops_on_sigint_and_sigterm_with_status_130(tmp_path: Path) -> None:
    files = random_files(17, [100 * KiB])
    data, _ = build_torrent("never", files, 16 * KiB)
    (tmp_path / "t.torrent").write_bytes(data)
    for signum in (signal.SIGINT, signal.SIGTERM):
        with trio.fail_after(DEADLINE):
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "jstorrent_cli", "get", str(tmp_path / "t.torrent"), "-d", str(tmp_path),
                 "--peer", "127.0.0.9:9", "--listen", "127.0.0.3", "--port", "0", "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            try:
                assert process.stdout is not None
                await process.stdout.receive_some(1)  # the first progress record: the session is running
                process.send_signal(signum)
                sent = trio.current_time()
                with trio.fail_after(DEFAULT_CONFIG.interrupt_grace):
                    status = await process.wait()
                assert trio.current_time() - sent < DEFAULT_CONFIG.interrupt_grace
                assert status == 130
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
