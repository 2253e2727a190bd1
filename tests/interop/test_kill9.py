"""Kill -9 in the middle of a real `jstorrent get`, then run it again: it finishes, the files are exact,
and no piece the resume state recorded as verified is downloaded again.

The seeder is a jstorrent session on 127.0.0.2 with an upload limit, so a download takes several seconds
and the kills land mid-transfer (at random moments, a bounded number of times).
"""

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

import trio

from jstorrent_cli.config import DEFAULT_CONFIG, KiB
from jstorrent_cli.core import resume
from jstorrent_cli.core.metainfo import Torrent
from jstorrent_cli.tasks import session
from jstorrent_cli.tasks.resume_store import state_file_name
from tests.conftest import assert_payload, build_torrent, random_files, write_payload

DEADLINE = 90
KILLS = 3
PIECE = 32 * KiB
SIZE = 8 * 1024 * KiB
RATE = 1024 * KiB  # the seeder's upload limit: about 8 s for the whole payload
# A kill lands this long after the run started reporting; past the first save (Config.resume_save_interval).
KILL_AFTER = (1.5, 2.5)


def _missing_bytes(folder: Path, torrent: Torrent) -> tuple[int, frozenset[int]]:
    """Bytes not recorded as verified in the state file (all of them without one), and the recorded pieces."""
    path = folder / state_file_name(torrent.name)
    if not path.exists():
        return torrent.total_length, frozenset()
    state = resume.decode(path.read_bytes())
    assert state.info_hash == torrent.info_hash
    pieces = state.verified_pieces()
    have = sum(min(torrent.piece_length, torrent.total_length - p * torrent.piece_length) for p in pieces)
    return torrent.total_length - have, pieces


async def _run_get(cmd: list[str], kill_after: float | None) -> tuple[int, list[dict[str, object]]]:
    """Run `jstorrent get`; SIGKILL it `kill_after` seconds after its first record (None: let it finish)."""
    process = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = bytearray()
    try:
        assert process.stdout is not None
        stdout = process.stdout

        async def read_all() -> None:
            async for chunk in stdout:
                out.extend(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            while not out:
                await trio.sleep(0.01)  # polling for the first record, not waiting out a race
            if kill_after is not None:
                with trio.move_on_after(kill_after):
                    await process.wait()  # it may finish first: then there is nothing to kill
                if process.returncode is None:
                    process.send_signal(signal.SIGKILL)
            status = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    records = [json.loads(line) for line in bytes(out).decode().splitlines() if line.strip()]
    return status, records


async def test_kill9_mid_download_then_rerun_fetches_only_what_was_not_verified(tmp_path: Path) -> None:
    rng = random.Random()
    files = random_files(61, [SIZE // 2 + 5, SIZE // 2 - 5])
    name = "k9"
    data, torrent = build_torrent(name, files, PIECE)
    (tmp_path / "t.torrent").write_bytes(data)
    write_payload(tmp_path / "seed", name, files)
    out = tmp_path / "out"
    seeder_config = dataclasses.replace(DEFAULT_CONFIG, max_upload_rate=RATE)
    kills: list[tuple[float, int, int]] = []  # (delay, recorded pieces before, after)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(
                session.run, seeder_config, torrent, tmp_path / "seed", listen_host="127.0.0.2", port=0,
                seed_time=math.inf))
            cmd = [sys.executable, "-m", "jstorrent_cli", "get", str(tmp_path / "t.torrent"), "-d", str(out),
                   "--peer", f"127.0.0.2:{port}", "--listen", "127.0.0.3", "--port", "0", "--json"]
            finished: list[dict[str, object]] | None = None
            for _ in range(KILLS):
                missing, before = _missing_bytes(out, torrent)
                delay = rng.uniform(*KILL_AFTER)
                status, records = await _run_get(cmd, delay)
                progress = [r for r in records if r["event"] == "progress"]
                # Whatever it fetched before it died, it never fetched a piece the state already had.
                assert progress and int(progress[-1]["downloaded_bytes"]) <= missing  # type: ignore[call-overload]
                _, after = _missing_bytes(out, torrent)
                assert before <= after, f"a kill after {delay:.2f}s lost recorded pieces"
                kills.append((delay, len(before), len(after)))
                if status == 0:  # it finished before its kill: that run is the rerun checked below
                    finished, recorded = records, before
                    break
                assert status == -signal.SIGKILL, (status, delay)
            if finished is None:
                missing, recorded = _missing_bytes(out, torrent)
                status, finished = await _run_get(cmd, None)
                assert status == 0, kills
            nursery.cancel_scope.cancel()
    # A kill landed mid-transfer (part of the data recorded, not all, not none), and the last run started
    # from what the kills left (a kill may land after the last piece, while the process is exiting).
    assert any(0 < after < torrent.piece_count for _, _, after in kills), kills
    assert recorded, kills
    result = finished[-1]
    assert result["event"] == "result" and result["ok"], result
    assert int(result["downloaded_bytes"]) <= missing, (result, missing, kills)  # type: ignore[call-overload]
    assert int(result["verified_bytes"]) == torrent.total_length  # type: ignore[call-overload]
    assert_payload(out, name, files)
    _, final = _missing_bytes(out, torrent)
    assert final == set(range(torrent.piece_count))
