"""Disk full for real: `jstorrent get` into a small tmpfs mounted by the test (needs root; skipped otherwise).

It must end with exit status 9 and one clear line, keep a usable resume state whose pieces are on disk
and correct, and a rerun on a bigger disk (the partial data and the state copied over) must complete
without fetching the recorded pieces again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from jstorrent_cli.config import DEFAULT_CONFIG, KiB, MiB
from jstorrent_cli.core import resume
from jstorrent_cli.errors import ExitStatus
from jstorrent_cli.tasks import session
from jstorrent_cli.tasks.resume_store import state_file_name
from tests.conftest import assert_payload, build_torrent, random_files, write_payload

DEADLINE = 60
DISK = 4 * MiB  # the tmpfs
SIZE = 8 * MiB  # the torrent: twice the disk
PIECE = 64 * KiB
RATE = 2 * MiB  # the seeder's upload limit: the disk fills after about 2 s, after a few state saves


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mount_point)],
                              capture_output=True, text=True, check=False)
    except OSError as err:
        pytest.skip(f"cannot run mount ({err}): a disk-full test needs a small filesystem of its own")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip() or done.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


async def test_disk_full_exits_9_keeps_the_state_and_a_bigger_disk_completes(
    tmp_path: Path, small_disk: Path
) -> None:
    files = random_files(71, [SIZE])
    name = "big.bin"
    files = [((name,), files[0][1])]
    payload = files[0][1]
    data, torrent = build_torrent(name, files, PIECE, single=True)
    (tmp_path / "t.torrent").write_bytes(data)
    write_payload(tmp_path / "seed", name, files, single=True)
    big = tmp_path / "big"
    seeder_config = dataclasses.replace(DEFAULT_CONFIG, max_upload_rate=RATE)

    def get(folder: Path, port: int, output: str) -> list[str]:
        return [sys.executable, "-m", "jstorrent_cli", "get", str(tmp_path / "t.torrent"), "-d", str(folder),
                "--peer", f"127.0.0.2:{port}", "--listen", "127.0.0.3", "--port", "0", output]

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(
                session.run, seeder_config, torrent, tmp_path / "seed", listen_host="127.0.0.2", port=0,
                seed_time=math.inf))
            full = await trio.run_process(get(small_disk, port, "--quiet"), capture_stdout=True, capture_stderr=True,
                                          check=False)
            assert full.returncode == int(ExitStatus.DISK_FULL) == 9, full.stderr
            lines = full.stderr.decode().splitlines()
            assert len(lines) == 1 and lines[0].startswith("jstorrent: ") and "disk full" in lines[0], lines

            # The state is intact, names this torrent, and every piece it records is on disk and correct.
            state = resume.decode((small_disk / state_file_name(name)).read_bytes())
            assert state.info_hash == torrent.info_hash
            recorded = state.verified_pieces()
            assert 0 < len(recorded) < torrent.piece_count
            on_disk = (small_disk / name).read_bytes()
            for piece in recorded:
                span = slice(piece * PIECE, (piece + 1) * PIECE)
                assert on_disk[span] == payload[span], f"piece {piece} recorded but not on disk"

            shutil.copytree(small_disk, big)
            again = await trio.run_process(get(big, port, "--json"), capture_stdout=True, capture_stderr=True,
                                           check=False)
            nursery.cancel_scope.cancel()
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout.decode().splitlines()[-1])
    assert result["event"] == "result" and result["ok"]
    assert result["downloaded_bytes"] <= (torrent.piece_count - len(recorded)) * PIECE  # recorded: not again
    assert_payload(big, name, files, single=True)
    final = resume.decode((big / state_file_name(name)).read_bytes())
    assert final.verified_pieces() == set(range(torrent.piece_count))
