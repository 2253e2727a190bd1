"""A read-only download folder, through `jstorrent get`: one clear line and exit status 17 (could not
create a file or directory), whether the folder itself, a parent of it, or the torrent's own folder
inside it is read-only; nothing is reported as done.

Root ignores permission bits, so as root the read-only folders are read-only tmpfs mounts made by the
test (skipped with the reason if mounting is impossible); otherwise they are chmod 0555.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from jstorrent_cli.config import KiB, MiB
from jstorrent_cli.core.metainfo import Torrent
from jstorrent_cli.errors import ExitStatus
from tests.conftest import build_torrent, random_files, write_payload
from tests.faults.common import SEEDER_HOST, get_command, run_get, start_seeder, verified_pieces

DEADLINE = 30


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """`path` as an empty read-only folder for as long as the context lasts."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                              capture_output=True, text=True, check=False)
    except OSError as err:
        pytest.skip(f"root ignores permission bits and mount cannot run ({err}): no read-only folder to test")
    if done.returncode != 0:
        pytest.skip(f"root ignores permission bits and a read-only tmpfs cannot be mounted: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


@pytest.fixture
def swarm(tmp_path: Path) -> tuple[Path, Torrent]:
    files = random_files(5, [1 * MiB + 1, 1 * MiB - 1])
    data, torrent = build_torrent("ro", files, 64 * KiB)
    (tmp_path / "t.torrent").write_bytes(data)
    write_payload(tmp_path / "seed", "ro", files)
    return tmp_path / "t.torrent", torrent


@pytest.mark.parametrize("where", ["folder", "parent"])
async def test_read_only_download_folder_exits_17_at_once(tmp_path: Path, swarm: tuple[Path, Torrent],
                                                          where: str) -> None:
    torrent_file, _ = swarm
    with read_only_dir(tmp_path / "ro") as ro, trio.fail_after(DEADLINE):
        out = ro if where == "folder" else ro / "sub"
        # No peer at all: the folder is refused before anything waits for the network.
        done = await run_get(get_command(torrent_file, out, [(SEEDER_HOST, 9)], "--quiet"))
        assert not list(ro.iterdir())
    assert done.status == int(ExitStatus.FILE_CREATE) == 17, done
    line = done.one_error_line()
    assert str(out) in line and ("Read-only file system" in line or "Permission denied" in line), line


async def test_read_only_torrent_folder_exits_17_when_data_arrives(tmp_path: Path, swarm: tuple[Path, Torrent]) -> None:
    """The download folder is writable (the state file can be saved) but the torrent's folder in it is
    not: the first write fails, the line names the file, and the state records no piece."""
    torrent_file, torrent = swarm
    out = tmp_path / "out"
    with read_only_dir(out / "ro"), trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_seeder(nursery, torrent, tmp_path / "seed", rate=0)
            done = await run_get(get_command(torrent_file, out, [(SEEDER_HOST, port)], "--quiet"))
            nursery.cancel_scope.cancel()
    assert done.status == int(ExitStatus.FILE_CREATE) == 17, done
    line = done.one_error_line()
    assert str(out / "ro" / "dir") in line and ("Read-only file system" in line or "Permission denied" in line)
    assert verified_pieces(out, torrent) == frozenset()
