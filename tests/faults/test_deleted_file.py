"""A payload file deleted while `jstorrent get` downloads it.

Decision (docs/reliability.md): the download fails with one clear line naming the file and exit
status 18 (I/O error on a file), at the next resume-state save (about once a second while pieces
complete) and at the latest before it could report success; the resume state keeps no claim on the
lost file's pieces. Running the same command again fetches what was lost and completes exactly.
Before the fix, the open descriptor kept writing into the deleted inode, every piece hashed fine
from it, and `get` reported success with the file gone.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import trio

from jstorrent_cli.config import KiB, MiB
from jstorrent_cli.errors import ExitStatus
from tests.conftest import assert_payload, build_torrent, random_files, reaped, write_payload
from tests.faults.common import SEEDER_HOST, get_command, run_get, start_seeder, verified_pieces

DEADLINE = 60
PIECE = 64 * KiB
RATE = 2 * MiB  # the seeder's limit: the 8 MiB download takes about 4 s, time to delete a file mid-way


async def _wait_for(predicate: Callable[[], object], interval: float = 0.02) -> None:
    while not predicate():
        await trio.sleep(interval)  # polling a file on disk the child writes, not waiting out a race


async def test_file_deleted_mid_download_fails_with_status_18_and_a_rerun_completes(tmp_path: Path) -> None:
    files = random_files(91, [5 * MiB + 3, 3 * MiB - 3])
    name = "del"
    data, torrent = build_torrent(name, files, PIECE)
    (tmp_path / "t.torrent").write_bytes(data)
    write_payload(tmp_path / "seed", name, files)
    out = tmp_path / "out"
    victim = out.joinpath(name, *files[0][0])
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_seeder(nursery, torrent, tmp_path / "seed", rate=RATE)
            cmd = get_command(tmp_path / "t.torrent", out, [(SEEDER_HOST, port)], "--quiet")
            process = await trio.lowlevel.open_process(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            async with reaped(process):
                first_file_pieces = range(0, (5 * MiB + 3) // PIECE)
                # Some pieces of the victim verified and recorded, the download not finished.
                await _wait_for(lambda: bool(verified_pieces(out, torrent) & set(first_file_pieces)))
                assert process.returncode is None, "the download ended before the file could be deleted"
                victim.unlink()
                assert process.stderr is not None
                err = b""
                async for chunk in process.stderr:
                    err += chunk
                status = await process.wait()
            lines = err.decode().splitlines()
            assert status == int(ExitStatus.FILE_IO) == 18, (status, lines)
            assert len(lines) == 1 and lines[0].startswith("jstorrent: "), lines
            assert str(victim) in lines[0] and "deleted" in lines[0], lines
            # The state claims nothing of the lost file that is not on disk (here: nothing at all of it,
            # or a rerun re-checks it).
            again = await run_get([*cmd[:-1], "--json"])
            nursery.cancel_scope.cancel()
    assert again.status == 0, again.stderr
    result = again.records()[-1]
    assert result["event"] == "result" and result["ok"], result
    assert_payload(out, name, files)
    assert verified_pieces(out, torrent) == set(range(torrent.piece_count))
