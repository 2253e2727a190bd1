"""Batch downloads in one process (tasks/batch.py): one port routed by info hash, one peer limit, one
shared budget, duplicates, and failures that stay with their item."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from jstorrent_cli.cli import read_torrent_file
from jstorrent_cli.config import DEFAULT_CONFIG, Config, KiB
from jstorrent_cli.core import wire
from jstorrent_cli.core.batchlist import STATUS_DUPLICATE, STATUS_ERROR, STATUS_OK, BatchItem, ItemResult
from jstorrent_cli.core.diagnose import StallReport
from jstorrent_cli.tasks.batch import BatchOptions, BatchResult, run_batch
from jstorrent_cli.ui.batchview import PHASE_ACTIVE, BatchPoll, BatchStatus
from tests.conftest import FileSpec, assert_payload, build_torrent, random_files, write_payload

DEADLINE = 60


class Recorder:
    """A batch display that samples the live status as often as the loop lets it, and keeps what ends."""

    def __init__(self) -> None:
        self.samples: list[BatchStatus] = []
        self.done: list[ItemResult] = []
        self.finished: list[ItemResult] = []

    async def run(self, poll: BatchPoll) -> None:
        while True:
            self.samples.append(poll())
            await trio.sleep(0.01)

    def item_done(self, result: ItemResult) -> None:
        self.done.append(result)

    def stall(self, item_id: int, report: StallReport) -> None:
        pass

    def finish(self, results: Sequence[ItemResult]) -> None:
        self.finished = list(results)


def make_torrents(tmp_path: Path, count: int, size: int,
                  piece_length: int = 64 * KiB) -> list[tuple[str, list[FileSpec]]]:
    """`count` multi-file torrents t0.torrent... in tmp_path, their payload under tmp_path/seed."""
    made = []
    for n in range(count):
        files = random_files(100 + n, [size, size // 3 + 1])
        name = f"set{n}"
        data, _ = build_torrent(name, files, piece_length)
        (tmp_path / f"t{n}.torrent").write_bytes(data)
        write_payload(tmp_path / "seed", name, files)
        made.append((name, files))
    return made


def items(*sources: str, dirs: dict[int, str] | None = None) -> list[BatchItem]:
    return [BatchItem(s, 0, (dirs or {}).get(n)) for n, s in enumerate(sources)]


async def start_seeder(nursery: trio.Nursery, tmp_path: Path, sources: Sequence[str], host: str,
                       config: Config = DEFAULT_CONFIG, seed_dir: Path | None = None) -> int:
    """A jstorrent batch seeding every source on one port (the router at work), once every item has checked
    its data and registered its info hash (a connection before that would be closed). Each seeder gets its
    own folder, hard links of `seed_dir` (default tmp_path/seed): one download runs per folder and name at a
    time (the lock)."""
    folder = tmp_path / f"seed-{host}"
    if not folder.exists():
        shutil.copytree(seed_dir or tmp_path / "seed", folder, copy_function=os.link)
    options = BatchOptions(out_dir=str(folder), listen_host=host, port=0, seed_time=math.inf)
    recorder = Recorder()
    port: int = await nursery.start(run_batch, config, items(*sources), options, recorder, read_torrent_file)

    def seeding() -> bool:
        last = recorder.samples[-1] if recorder.samples else None
        return last is not None and all(i.status is not None and i.status.state.value == "seeding" for i in last.items)

    while not seeding():
        assert not recorder.finished, f"a seeding item ended: {recorder.finished}"
        await trio.sleep(0.01)
    return port


async def test_two_torrents_through_one_port_each_routed_by_its_info_hash(tmp_path: Path) -> None:
    made = make_torrents(tmp_path, 2, 300 * KiB + 5)
    sources = [str(tmp_path / "t0.torrent"), str(tmp_path / "t1.torrent")]
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_seeder(nursery, tmp_path, sources, "127.0.0.2")
            recorder = Recorder()
            options = BatchOptions(out_dir=str(tmp_path / "out"), peers=[("127.0.0.2", port)],
                                   listen_host="127.0.0.3", port=0)
            result = await run_batch(DEFAULT_CONFIG, items(*sources), options, recorder, read_torrent_file)
            nursery.cancel_scope.cancel()
    assert [r.status for r in result.results] == [STATUS_OK, STATUS_OK], result
    assert result.exit_status == 0 and not result.interrupted
    for (name, files), r in zip(made, result.results, strict=True):
        assert_payload(tmp_path / "out", name, files)
        assert r.path == str((tmp_path / "out" / name).resolve())
        assert r.bytes >= r.total_bytes == sum(len(d) for _, d in files)
    assert sorted(r.id for r in recorder.done) == [1, 2] and [r.id for r in recorder.finished] == [1, 2]


async def test_unknown_info_hash_is_closed_without_an_answer(tmp_path: Path) -> None:
    make_torrents(tmp_path, 1, 100 * KiB)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_seeder(nursery, tmp_path, [str(tmp_path / "t0.torrent")], "127.0.0.2")
            torrent = read_torrent_file(str(tmp_path / "t0.torrent"))

            async def answer_to(info_hash: bytes) -> bytes:
                stream = await trio.open_tcp_stream("127.0.0.2", port, local_address="127.0.0.4")
                await stream.send_all(wire.encode(wire.Handshake(info_hash=info_hash, peer_id=b"-XX0000-" + b"1" * 12)))
                got = b""
                while len(got) < wire.HANDSHAKE_LENGTH:
                    try:
                        part = await stream.receive_some(wire.HANDSHAKE_LENGTH)
                    except trio.BrokenResourceError:  # closed with our peer id unread: a reset
                        break
                    if not part:
                        break
                    got += part
                await stream.aclose()
                return got

            assert await answer_to(b"\x07" * 20) == b""  # unknown: closed, not a byte sent
            known = await answer_to(torrent.info_hash)  # known: the torrent's session answers
            nursery.cancel_scope.cancel()
    assert known[:20] == bytes([19]) + b"BitTorrent protocol"
    assert known[28:48] == torrent.info_hash


async def test_duplicate_info_hash_is_downloaded_once_and_reported(tmp_path: Path) -> None:
    (name, files), = make_torrents(tmp_path, 1, 200 * KiB)
    copy = tmp_path / "copy.torrent"
    copy.write_bytes((tmp_path / "t0.torrent").read_bytes())
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_seeder(nursery, tmp_path, [str(tmp_path / "t0.torrent")], "127.0.0.2")
            options = BatchOptions(out_dir=str(tmp_path / "out"), peers=[("127.0.0.2", port)],
                                   listen_host="127.0.0.3", port=0)
            result = await run_batch(DEFAULT_CONFIG, items(str(tmp_path / "t0.torrent"), str(copy)), options,
                                     Recorder(), read_torrent_file)
            nursery.cancel_scope.cancel()
    first, dup = result.results
    assert first.status == STATUS_OK and dup.status == STATUS_DUPLICATE and dup.duplicate_of == 1
    assert dup.bytes == 0 and dup.info_hash == first.info_hash and result.exit_status == 0
    assert_payload(tmp_path / "out", name, files)


async def test_failures_stay_with_their_item(tmp_path: Path) -> None:
    made = make_torrents(tmp_path, 2, 150 * KiB)
    (tmp_path / "broken.torrent").write_bytes(b"d4:infoi3ee")
    (tmp_path / "afile").write_text("a file where a folder should be")
    sources = [str(tmp_path / "t0.torrent"), str(tmp_path / "broken.torrent"), str(tmp_path / "missing.torrent"),
               "magnet:?xt=urn:btih:" + "ab" * 20, str(tmp_path / "t1.torrent"), str(tmp_path / "t0.torrent")]
    # t1 gets a folder that cannot be created (a file is in the way); the second t0 is a duplicate.
    batch = items(*sources, dirs={4: str(tmp_path / "afile" / "sub")})
    config = dataclasses.replace(DEFAULT_CONFIG, max_concurrent_downloads=2)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_seeder(nursery, tmp_path, [str(tmp_path / "t0.torrent"), str(tmp_path / "t1.torrent")],
                                      "127.0.0.2")
            options = BatchOptions(out_dir=str(tmp_path / "out"), peers=[("127.0.0.2", port)],
                                   listen_host="127.0.0.3", port=0)
            result = await run_batch(config, batch, options, Recorder(), read_torrent_file)
            nursery.cancel_scope.cancel()
    statuses = [(r.status, r.exit_status) for r in result.results]
    assert statuses == [(STATUS_OK, 0), (STATUS_ERROR, 26), (STATUS_ERROR, 3), (STATUS_ERROR, 1), (STATUS_ERROR, 17),
                        (STATUS_DUPLICATE, 0)], result.results
    assert result.exit_status == 17  # the last failed item's
    assert "magnet" in (result.results[3].error or "") and "not supported" in (result.results[3].error or "")
    assert result.results[1].path == sources[1]  # never started: its source
    assert_payload(tmp_path / "out", made[0][0], made[0][1])


async def test_items_share_one_budget_and_one_peer_limit(tmp_path: Path) -> None:
    made = make_torrents(tmp_path, 3, 700 * KiB, piece_length=32 * KiB)
    sources = [str(tmp_path / f"t{n}.torrent") for n in range(3)]
    budget = 96 * KiB  # six blocks for three items: they must take turns
    leech_config = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=budget, max_peers=2)
    recorder = Recorder()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            ports = [await start_seeder(nursery, tmp_path, sources, f"127.0.0.{n}") for n in (2, 4)]
            options = BatchOptions(out_dir=str(tmp_path / "out"), listen_host="127.0.0.3", port=0,
                                   peers=[("127.0.0.2", ports[0]), ("127.0.0.4", ports[1])])
            result: BatchResult = await run_batch(leech_config, items(*sources), options, recorder, read_torrent_file)
            nursery.cancel_scope.cancel()
    assert [r.status for r in result.results] == [STATUS_OK] * 3, result.results
    for name, files in made:
        assert_payload(tmp_path / "out", name, files)
    busy = [s for s in recorder.samples if sum(1 for i in s.items if i.phase == PHASE_ACTIVE) > 1]
    assert busy, "the items never ran at the same time"
    for sample in recorder.samples:
        assert sample.buffer_total == budget and sample.buffer_used <= budget
        held = sum(i.status.scheduler.bytes_in_flight + i.status.scheduler.bytes_waiting_for_disk
                   for i in sample.items if i.status is not None)
        assert held <= budget, held
        assert sample.peers_connected <= 2  # two seeders, three items: the shared limit holds
    assert max(s.buffer_used for s in recorder.samples) > budget // 2  # the budget was really used


async def test_libtorrent_connecting_to_our_one_port_feeds_both_items(tmp_path: Path) -> None:
    """A real client's incoming connections, one per torrent, reach the right item through the router."""
    libtorrent_peer = pytest.importorskip("tests.interop.libtorrent_fixture").libtorrent_peer
    made = make_torrents(tmp_path, 2, 400 * KiB + 9)
    sources = [str(tmp_path / "t0.torrent"), str(tmp_path / "t1.torrent")]
    recorder = Recorder()
    with trio.fail_after(DEADLINE), libtorrent_peer("127.0.0.2") as lt_peer:
        handles = [lt_peer.add((tmp_path / f"t{n}.torrent").read_bytes(), tmp_path / "seed", seed=True)
                   for n in range(2)]
        async with trio.open_nursery() as nursery:
            options = BatchOptions(out_dir=str(tmp_path / "out"), listen_host="127.0.0.3", port=0)
            port = await nursery.start(run_batch, DEFAULT_CONFIG, items(*sources), options, recorder,
                                       read_torrent_file)

            def both_downloading() -> bool:
                last = recorder.samples[-1] if recorder.samples else None
                return last is not None and all(
                    i.status is not None and i.status.state.value == "downloading" for i in last.items)

            await lt_peer.wait_until(both_downloading, what="both items registered")
            for handle in handles:
                handle.connect_peer(("127.0.0.3", port))
            await lt_peer.wait_until(lambda: len(recorder.finished) == 2, what="batch download")
            nursery.cancel_scope.cancel()
    assert [r.status for r in recorder.finished] == [STATUS_OK, STATUS_OK], (recorder.finished, lt_peer.alerts())
    for name, files in made:
        assert_payload(tmp_path / "out", name, files)


async def test_two_torrents_with_one_name_in_one_folder_do_not_overwrite_each_other(tmp_path: Path) -> None:
    """Two different torrents both named `same` into one folder would write the same files and the same resume
    state: the later item fails (file exists, exit 13) naming the earlier one, whose download stays intact."""
    payloads = []
    for n in range(2):
        files = random_files(300 + n, [200 * KiB + 7])
        data, _ = build_torrent("same", files, 32 * KiB)
        (tmp_path / f"same{n}.torrent").write_bytes(data)
        write_payload(tmp_path / f"seed{n}", "same", files)
        payloads.append(files)
    sources = [str(tmp_path / "same0.torrent"), str(tmp_path / "same1.torrent")]
    config = dataclasses.replace(DEFAULT_CONFIG, max_concurrent_downloads=2)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            ports = [await start_seeder(nursery, tmp_path, [sources[n]], host, seed_dir=tmp_path / f"seed{n}")
                     for n, host in enumerate(("127.0.0.2", "127.0.0.4"))]
            options = BatchOptions(out_dir=str(tmp_path / "out"), listen_host="127.0.0.3", port=0,
                                   peers=[("127.0.0.2", ports[0]), ("127.0.0.4", ports[1])])
            result = await run_batch(config, items(*sources), options, Recorder(), read_torrent_file)
            nursery.cancel_scope.cancel()
    first, second = result.results
    assert first.status == STATUS_OK, first
    assert second.status == STATUS_ERROR and second.exit_status == 13, second
    assert "#1" in (second.error or "") and "dir=" in (second.error or "")
    assert second.bytes == 0 and result.exit_status == 13
    assert_payload(tmp_path / "out", "same", payloads[0])


async def test_a_duplicate_with_its_own_dir_reports_where_the_data_is(tmp_path: Path) -> None:
    """The same torrent twice, the second with `dir=`: it is downloaded once, into the first item's folder, so the
    duplicate's path (the results table, the JSON record) is that one, not a folder where nothing was written."""
    (name, files), = make_torrents(tmp_path, 1, 100 * KiB)
    source = str(tmp_path / "t0.torrent")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_seeder(nursery, tmp_path, [source], "127.0.0.2")
            options = BatchOptions(out_dir=str(tmp_path / "out"), peers=[("127.0.0.2", port)],
                                   listen_host="127.0.0.3", port=0)
            result = await run_batch(DEFAULT_CONFIG, items(source, source, dirs={1: str(tmp_path / "other")}),
                                     options, Recorder(), read_torrent_file)
            nursery.cancel_scope.cancel()
    first, dup = result.results
    assert first.status == STATUS_OK and dup.status == STATUS_DUPLICATE
    assert dup.path == first.path == str((tmp_path / "out" / name).resolve())
    assert not (tmp_path / "other").exists()
    assert_payload(tmp_path / "out", name, files)
