"""The session with file selection and the resume state: real sessions (and `jstorrent get`) over loopback."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from jstorrent_cli.config import DEFAULT_CONFIG, KiB
from jstorrent_cli.core import resume
from jstorrent_cli.core.metainfo import Torrent
from jstorrent_cli.tasks import session
from jstorrent_cli.tasks.parts import parts_file_name
from jstorrent_cli.tasks.resume_store import state_file_name
from tests.conftest import assert_payload, build_torrent, random_files, reaped, write_payload

DEADLINE = 60


def _state(folder: Path, torrent: Torrent) -> resume.ResumeState:
    state = resume.decode((folder / state_file_name(torrent.name)).read_bytes())
    assert state.info_hash == torrent.info_hash
    return state


async def _seeder(nursery: trio.Nursery, torrent: Torrent, folder: Path, host: str, *, rate: int = 0) -> int:
    config = dataclasses.replace(DEFAULT_CONFIG, max_upload_rate=rate)
    port: int = await nursery.start(functools.partial(
        session.run, config, torrent, folder, listen_host=host, port=0, seed_time=math.inf))
    return port


async def test_select_file_downloads_only_the_selected_files_byte_exact(tmp_path: Path) -> None:
    # 64 KiB pieces; files straddle pieces so selected files share pieces with unselected ones.
    sizes = [100 * KiB + 3, 50 * KiB, 130 * KiB + 7, 10 * KiB, 0, 70 * KiB, 0]
    files = random_files(31, sizes)
    name = "sel"
    data, torrent = build_torrent(name, files, 64 * KiB)
    (tmp_path / "t.torrent").write_bytes(data)
    write_payload(tmp_path / "seed", name, files)
    out = tmp_path / "out"
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await _seeder(nursery, torrent, tmp_path / "seed", "127.0.0.2")
            done = await trio.run_process(
                [sys.executable, "-m", "jstorrent_cli", "get", str(tmp_path / "t.torrent"), "-d", str(out),
                 "--peer", f"127.0.0.2:{port}", "--listen", "127.0.0.3", "--port", "0", "--json",
                 "--select-file", "2,4-5", "--file-allocation", "none"],
                capture_stdout=True, capture_stderr=True, check=False)
            nursery.cancel_scope.cancel()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.decode().splitlines()[-1])
    assert result["event"] == "result" and result["ok"]
    selected = [files[1], files[3], files[4]]
    assert_payload(out, name, selected)
    # Only the selected files are in the user's folder; nothing of files 1, 3, 6 and 7.
    on_disk = sorted(str(p.relative_to(out / name)) for p in (out / name).rglob("*") if p.is_file())
    assert on_disk == sorted("/".join(parts) for parts, _ in selected)
    # The bytes of unselected files in shared pieces went to the hidden parts file: file 1's tail and
    # file 3's head share pieces 1 and 2 with file 2; file 6 shares piece 4 with file 4 (and the 0-byte 5).
    parts = (out / parts_file_name(name)).read_bytes()
    payload = b"".join(d for _, d in files)
    geometry_offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    assert payload[64 * KiB:geometry_offsets[1]] in parts
    assert payload[geometry_offsets[2]:3 * 64 * KiB] in parts
    assert len(parts) < sum(sizes[i] for i in (0, 2, 5))
    # The state records exactly the wanted pieces (those holding a byte of files 2 and 4).
    wanted = {1, 2, 4}
    assert _state(out, torrent).verified_pieces() == wanted
    assert result["verified_bytes"] == result["total_bytes"] == 3 * 64 * KiB


async def test_a_complete_download_restarts_from_its_state_without_reading_or_downloading(tmp_path: Path) -> None:
    files = random_files(37, [300 * KiB + 5, 90 * KiB])
    name = "again"
    _, torrent = build_torrent(name, files, 32 * KiB)
    write_payload(tmp_path / "seed", name, files)
    leech = tmp_path / "leech"
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await _seeder(nursery, torrent, tmp_path / "seed", "127.0.0.2")
            first = await session.run(DEFAULT_CONFIG, torrent, leech, peers=[("127.0.0.2", port)],
                                      listen_host="127.0.0.3", port=0)
            nursery.cancel_scope.cancel()
    assert first.status == "ok"
    assert _state(leech, torrent).verified_pieces() == set(range(torrent.piece_count))
    # Flip a byte but keep size and mtime: a state that is trusted is not re-read (that is the point of
    # it: a 50 GB download does not re-hash on every start), so the run ends at once with no peer.
    target = leech.joinpath(name, *files[0][0])
    before = target.stat()
    damaged = bytearray(target.read_bytes())
    damaged[7] ^= 0xFF
    target.write_bytes(bytes(damaged))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    with trio.fail_after(DEADLINE):
        second = await session.run(DEFAULT_CONFIG, torrent, leech, listen_host="127.0.0.4", port=0)
    assert second.status == "ok" and second.downloaded_bytes == 0
    assert target.read_bytes() == bytes(damaged)


async def test_a_file_changed_since_the_state_is_hashed_again_and_only_its_bad_piece_fetched(tmp_path: Path) -> None:
    files = random_files(41, [200 * KiB, 100 * KiB])
    name = "changed"
    _, torrent = build_torrent(name, files, 16 * KiB)
    write_payload(tmp_path / "seed", name, files)
    leech = tmp_path / "leech"
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await _seeder(nursery, torrent, tmp_path / "seed", "127.0.0.2")
            assert (await session.run(DEFAULT_CONFIG, torrent, leech, peers=[("127.0.0.2", port)],
                                      listen_host="127.0.0.3", port=0)).status == "ok"
            # The first file changes under us (new mtime): its pieces are re-hashed, one is bad.
            target = leech.joinpath(name, *files[0][0])
            damaged = bytearray(target.read_bytes())
            damaged[5 * 16 * KiB + 3] ^= 0xFF
            target.write_bytes(bytes(damaged))
            os.utime(target, ns=(0, 10**9))
            again = await session.run(DEFAULT_CONFIG, torrent, leech, peers=[("127.0.0.2", port)],
                                      listen_host="127.0.0.4", port=0)
            nursery.cancel_scope.cancel()
    assert again.status == "ok"
    assert again.downloaded_bytes == 16 * KiB  # the one bad piece, nothing else
    assert_payload(leech, name, files)


async def test_ctrl_c_writes_the_state_and_the_rerun_fetches_only_the_rest(tmp_path: Path) -> None:
    files = random_files(43, [2 * 1024 * KiB])
    name = "ctrlc"
    data, torrent = build_torrent(name, files, 32 * KiB)
    (tmp_path / "t.torrent").write_bytes(data)
    write_payload(tmp_path / "seed", name, files)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jstorrent_cli", "get", str(tmp_path / "t.torrent"), "-d", str(out),
           "--listen", "127.0.0.3", "--port", "0", "--json"]
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await _seeder(nursery, torrent, tmp_path / "seed", "127.0.0.2", rate=512 * KiB)
            process = await trio.lowlevel.open_process(
                [*cmd, "--peer", f"127.0.0.2:{port}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            async with reaped(process):
                assert process.stdout is not None
                buffered = b""
                # Wait until some data is verified (progress records say so), then Ctrl-C.
                while True:
                    chunk = await process.stdout.receive_some(65536)
                    assert chunk, "jstorrent get ended early"
                    buffered += chunk
                    lines = buffered.split(b"\n")
                    if any(json.loads(line)["verified_bytes"] > 0 for line in lines[:-1] if line):
                        break
                process.send_signal(signal.SIGINT)
                with trio.fail_after(DEFAULT_CONFIG.interrupt_grace):
                    status = await process.wait()
            assert status == 130
            recorded = _state(out, torrent).verified_pieces()
            assert 0 < len(recorded) < torrent.piece_count
            missing = torrent.total_length - sum(
                min(torrent.piece_length, torrent.total_length - p * torrent.piece_length) for p in recorded)
            rerun = await trio.run_process([*cmd, "--peer", f"127.0.0.2:{port}"], capture_stdout=True,
                                           capture_stderr=True, check=False)
            nursery.cancel_scope.cancel()
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout.decode().splitlines()[-1])
    assert result["ok"]
    assert result["downloaded_bytes"] <= missing  # recorded pieces were not fetched again
    assert _state(out, torrent).verified_pieces() == set(range(torrent.piece_count))
    assert_payload(out, name, files)
