"""jstorrent against Debian's aria2c on loopback: downloading from an aria2c seeder (by --peer), and
aria2c downloading from a jstorrent seeder found through opentracker. Byte for byte, under hard
deadlines; aria2c is stopped by PID whatever happens."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from jstorrent_cli.config import DEFAULT_CONFIG, KiB, MiB
from jstorrent_cli.tasks import session
from tests.conftest import (
    FileSpec,
    assert_payload,
    build_torrent,
    free_port,
    random_files,
    stop_process,
    write_payload,
)
from tests.interop.opentracker_fixture import require_opentracker, running_opentracker

pytestmark = pytest.mark.interop

ARIA2C = shutil.which("aria2c") or "/usr/bin/aria2c"
DEADLINE = 30
ARIA_HOST, OUR_HOST = "127.0.0.5", "127.0.0.6"
# How often the test looks whether aria2c has exited.
POLL_INTERVAL = 0.05

CASES = [
    pytest.param(16 * KiB, [2 * MiB + 77], True, id="16KiB-single"),
    pytest.param(256 * KiB, [1 * MiB + 5, 0, 3 * MiB, 999] + [4000 + i for i in range(30)], False, id="256KiB-multi"),
]


def require_aria2c() -> None:
    if not os.access(ARIA2C, os.X_OK):
        pytest.skip(f"aria2c is not installed ({ARIA2C})")


def aria2c_command(torrent: Path, out_dir: Path, port: int, *extra: str) -> list[str]:
    return [
        ARIA2C, "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
        "--enable-peer-exchange=false", "--disable-ipv6=true", f"--listen-port={port}", f"--interface={ARIA_HOST}",
        "--summary-interval=0", "--console-log-level=warn", "--file-allocation=none", "--check-certificate=false",
        "-d", str(out_dir), *extra, str(torrent),
    ]


@contextlib.contextmanager
def running(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process)


def payload(piece_length: int, sizes: list[int], single: bool) -> tuple[str, list[FileSpec]]:
    files = random_files(piece_length ^ len(sizes), sizes)
    if single:
        return "one.bin", [(("one.bin",), files[0][1])]
    return "many", files


@pytest.mark.parametrize(("piece_length", "sizes", "single"), CASES)
async def test_download_from_aria2c_seeder(tmp_path: Path, piece_length: int, sizes: list[int], single: bool) -> None:
    require_aria2c()
    name, files = payload(piece_length, sizes, single)
    data, torrent = build_torrent(name, files, piece_length, single=single)
    (tmp_path / "t.torrent").write_bytes(data)
    write_payload(tmp_path / "aria", name, files, single=single)
    port = free_port(ARIA_HOST)
    # -V checks the data it has, --seed-ratio=0 seeds until stopped.
    command = aria2c_command(tmp_path / "t.torrent", tmp_path / "aria", port, "-V", "--seed-ratio=0")
    with running(command, tmp_path / "aria2c.log"), trio.fail_after(DEADLINE):
        # aria2c binds its port after checking its files; our connection manager retries until then.
        config = dataclasses.replace(DEFAULT_CONFIG, connect_retry_initial=0.2, connect_retry_max=0.5)
        result = await session.run(config, torrent, tmp_path / "ours", peers=[(ARIA_HOST, port)],
                                   listen_host=OUR_HOST, port=0)
    assert result.status == "ok", (result, (tmp_path / "aria2c.log").read_text(errors="replace"))
    assert result.peers_used == 1
    assert_payload(tmp_path / "ours", name, files, single=single)


# aria2c 1.37 announces pieces it got with a BITFIELD in the middle of the connection (when several
# completed since its last check, which on loopback is almost always); core/wire.py takes a late
# bitfield as an update, so these must pass every time.
# aria2c finishes these in a second or two; a stuck run fails soon instead of holding CI.
LEECH_DEADLINE = 15


@pytest.mark.parametrize(("piece_length", "sizes", "single"), CASES)
async def test_aria2c_downloads_from_jstorrent_seeder_through_opentracker(
    tmp_path: Path, piece_length: int, sizes: list[int], single: bool
) -> None:
    require_aria2c()
    require_opentracker()
    name, files = payload(piece_length, sizes, single)
    _, probe = build_torrent(name, files, piece_length, single=single)
    write_payload(tmp_path / "ours", name, files, single=single)
    with running_opentracker(tmp_path / "tracker", [probe.info_hash]) as tracker:
        data, torrent = build_torrent(name, files, piece_length, single=single, trackers=[tracker.http_url])
        (tmp_path / "t.torrent").write_bytes(data)
        with trio.fail_after(LEECH_DEADLINE):
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(
                    session.run, DEFAULT_CONFIG, torrent, tmp_path / "ours", listen_host=OUR_HOST, port=0,
                    seed_time=math.inf))
                command = aria2c_command(tmp_path / "t.torrent", tmp_path / "aria", free_port(ARIA_HOST),
                                         "--seed-time=0")
                with running(command, tmp_path / "aria2c.log") as process:
                    while process.poll() is None:
                        await trio.sleep(POLL_INTERVAL)
                nursery.cancel_scope.cancel()
    log = (tmp_path / "aria2c.log").read_text(errors="replace")
    assert process.returncode == 0, log
    assert_payload(tmp_path / "aria", name, files, single=single)
