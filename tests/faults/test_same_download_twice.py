"""The same download started twice in the same folder.

Found by this work: two jstorrent processes on one torrent and folder raced for the state file's
.tmp name, and one of them died mid-run with "cannot save the resume state ...: No such file or
directory". Now the second one fails at once with one clear line (exit 16) and touches nothing; the
first completes exactly; once it is gone (even by kill -9) the lock is free again.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
from pathlib import Path

import trio

from jstorrent_cli.config import KiB, MiB
from jstorrent_cli.errors import ExitStatus
from tests.conftest import assert_payload, build_torrent, random_files, reaped, write_payload
from tests.faults.common import SEEDER_HOST, get_command, run_get, start_seeder, verified_pieces

DEADLINE = 40
RATE = 1 * MiB  # the first download takes about 3-4 s: time for the second to be refused beside it


async def test_second_get_of_the_same_download_is_refused_and_the_first_completes(tmp_path: Path) -> None:
    files = random_files(23, [2 * MiB + 5, 2 * MiB - 5])
    name = "twice"
    data, torrent = build_torrent(name, files, 64 * KiB)
    (tmp_path / "t.torrent").write_bytes(data)
    write_payload(tmp_path / "seed", name, files)
    out = tmp_path / "out"
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_seeder(nursery, torrent, tmp_path / "seed", rate=RATE)
            cmd = get_command(tmp_path / "t.torrent", out, [(SEEDER_HOST, port)], "--quiet")
            first = await trio.lowlevel.open_process(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            async with reaped(first):
                while not verified_pieces(out, torrent):
                    await trio.sleep(0.02)  # polling the first one's state file: it is running
                second = await run_get(cmd)
                assert first.returncode is None, "the first download ended before the second was tried"
                assert second.status == int(ExitStatus.FILE_OPEN) == 16, second
                line = second.one_error_line()
                assert "another jstorrent is already downloading" in line and str(out) in line, line
                assert await first.wait() == 0
            assert_payload(out, name, files)
            # A holder killed with -9 leaves the lock file behind, but not the lock. This one has no peer to
            # call, so it waits (holding the lock) until killed.
            out2 = tmp_path / "out2"
            waiting = await trio.lowlevel.open_process(
                get_command(tmp_path / "t.torrent", out2, [(SEEDER_HOST, 9)], "--quiet"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                while not _locked(out2 / f".{name}.lock"):
                    await trio.sleep(0.02)  # polling for the child's lock: it is starting
                assert waiting.returncode is None
            finally:
                waiting.send_signal(signal.SIGKILL)
                await waiting.wait()
            again = await run_get(get_command(tmp_path / "t.torrent", out2, [(SEEDER_HOST, port)], "--quiet"))
            nursery.cancel_scope.cancel()
    assert again.status == 0, again
    assert_payload(out2, name, files)


def _locked(path: Path) -> bool:
    """Whether another process holds the flock of `path` (False while the file is not there)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock if we took it
    return False
