"""Every peer leaves mid-download and comes back: one `jstorrent get` (never restarted) resumes and
completes byte for byte.

Two jstorrent seeders in this process (127.0.0.2 and .4, rate-limited so the download takes a few
seconds) are stopped once part of the data is recorded, stay away until the child reports it has no
peer left, and start again on the same ports. The child, with the default settings, calls the known
addresses again (Config.connect_retry_initial, doubling) and finishes: exit 0, exact files, and its
progress records show the outage (no peer, no verified byte gained) and the recovery.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import trio

from jstorrent_cli.config import KiB, MiB
from tests.conftest import assert_payload, build_torrent, random_files, reaped, write_payload
from tests.faults.common import SEEDER_HOST, get_command, start_seeder, verified_pieces

DEADLINE = 60
OTHER_SEEDER_HOST = "127.0.0.4"
EXIT_GRACE = 10.0  # a child that printed its result must have exited within this long
RATE = 512 * KiB  # per seeder: 1 MiB/s together, so 6 MiB takes about 6 s without the outage


async def _serve_until_stopped(torrent_args: tuple[Any, ...], host: str, port: int,
                               task_status: trio.TaskStatus[trio.CancelScope]) -> None:
    """A seeder on host:port that runs until the cancel scope it reports is cancelled."""
    torrent, folder = torrent_args
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await start_seeder(nursery, torrent, folder, rate=RATE, host=host, port=port)
            task_status.started(scope)
            await trio.sleep_forever()


async def test_all_seeders_leave_and_come_back_and_the_same_get_completes(tmp_path: Path) -> None:
    files = random_files(17, [3 * MiB + 1, 3 * MiB - 1])
    name = "back"
    data, torrent = build_torrent(name, files, 32 * KiB)
    (tmp_path / "t.torrent").write_bytes(data)
    folders = {SEEDER_HOST: tmp_path / "seed", OTHER_SEEDER_HOST: tmp_path / "seed2"}  # one per seeder
    for folder in folders.values():
        write_payload(folder, name, files)
    out = tmp_path / "out"
    records: list[dict[str, Any]] = []
    new_record = trio.Condition()

    async def until(predicate: Any) -> None:
        async with new_record:
            while not predicate():
                await new_record.wait()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            # Ports fixed by a first start, so that the restarted seeders are where the child knows them.
            ports = {}
            scopes = {}
            for host in (SEEDER_HOST, OTHER_SEEDER_HOST):
                async with trio.open_nursery() as probe:
                    ports[host] = await start_seeder(probe, torrent, folders[host], rate=RATE, host=host)
                    probe.cancel_scope.cancel()
            for host in ports:
                scopes[host] = await nursery.start(functools.partial(
                    _serve_until_stopped, (torrent, folders[host]), host, ports[host]))
            cmd = get_command(tmp_path / "t.torrent", out, list(ports.items()), "--json")
            process = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert process.stdout is not None
            stdout = process.stdout

            async def read_records() -> None:
                buffer = b""
                async for chunk in stdout:
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    async with new_record:
                        records.extend(json.loads(line) for line in lines if line.strip())
                        new_record.notify_all()

            async with reaped(process):
                nursery.start_soon(read_records)
                await until(lambda: any(r["event"] == "progress" and r["peers_connected"] == 2 and
                                        0 < r["verified_bytes"] < torrent.total_length * 2 // 3 for r in records))
                for scope in scopes.values():
                    scope.cancel()  # every peer leaves
                gone_at = len(records)
                await until(lambda: any(r["event"] == "progress" and r["peers_connected"] == 0
                                        for r in records[gone_at:]))
                alone = next(i for i in range(gone_at, len(records)) if records[i]["peers_connected"] == 0)
                stalled_at = records[alone]["verified_bytes"]
                assert stalled_at < torrent.total_length
                recorded_alone = verified_pieces(out, torrent)
                # Two more records with nobody there: nothing gained while every peer is away.
                await until(lambda: len(records) >= alone + 3)
                assert all(r["peers_connected"] == 0 and r["verified_bytes"] == stalled_at
                           for r in records[alone : alone + 3] if r["event"] == "progress"), records[alone:]
                for host in ports:  # they come back where they were
                    await nursery.start(functools.partial(
                        _serve_until_stopped, (torrent, folders[host]), host, ports[host]))
                await until(lambda: bool(records) and records[-1]["event"] == "result")
                with trio.move_on_after(EXIT_GRACE) as exit_scope:
                    status = await process.wait()
                assert not exit_scope.cancelled_caught, f"the child printed its result but did not exit: {records[-1]}"
            nursery.cancel_scope.cancel()
    assert status == 0, records[-1:]
    result = records[-1]
    assert result["event"] == "result" and result["ok"], result
    assert result["verified_bytes"] == torrent.total_length
    assert_payload(out, name, files)
    assert recorded_alone < verified_pieces(out, torrent) == set(range(torrent.piece_count))
    # After the outage the child was connected again and gained data (it did not end some other way).
    after = [r for r in records[alone + 3 :] if r["event"] == "progress"]
    assert any(r["peers_connected"] > 0 for r in after), after
