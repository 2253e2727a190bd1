"""The write path on a real temporary folder: bytes land exactly, pieces hash, errors are named."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import random
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import BLOCK_SIZE, DEFAULT_CONFIG, Config
from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.errors import (
    DiskFullError,
    ExitStatus,
    FileCreateError,
    FileOpenError,
    StorageError,
    UsageError,
)
from jstorrent_cli.tasks.storage import Block, Storage, StorageFile, Written, _in_thread, storage_files

DEADLINE = 10
T = TypeVar("T")


@dataclasses.dataclass
class Torrent:
    files: list[StorageFile]
    geometry: Geometry
    payload: bytes  # the whole torrent byte string, pad bytes zero

    def file_bytes(self, index: int) -> bytes:
        start = self.geometry.file_offset(index)
        return self.payload[start : start + self.files[index].length]

    def piece_bytes(self, piece: int) -> bytes:
        start = self.geometry.piece_offset(piece)
        return self.payload[start : start + self.geometry.piece_size(piece)]

    def piece_hash(self, piece: int) -> bytes:
        return hashlib.sha1(self.piece_bytes(piece)).digest()

    def blocks(self) -> list[Block]:
        g = self.geometry
        out: list[Block] = []
        for piece in range(g.piece_count):
            data = self.piece_bytes(piece)
            for b in range(g.blocks_in_piece(piece)):
                begin = g.block_begin(b)
                out.append((piece, begin, data[begin : begin + g.block_length(piece, b)]))
        return out


def make_torrent(layout: Sequence[tuple[int, bool]], piece_length: int, seed: int = 0) -> Torrent:
    rng = random.Random(seed)
    files: list[StorageFile] = []
    payload = bytearray()
    for i, (length, pad) in enumerate(layout):
        path = (".pad", str(i)) if pad else (f"dir{i % 3}", "sub", f"file{i}.bin") if i % 2 else (f"file{i}.bin",)
        files.append(StorageFile(path, length, pad))
        payload += bytes(length) if pad else rng.randbytes(length)
    geometry = Geometry([f.length for f in files], [f.pad for f in files], piece_length)
    return Torrent(files, geometry, bytes(payload))


def read_back(root: Path, torrent: Torrent) -> None:
    """Every real file equals its payload byte for byte; no pad file exists."""
    for i, f in enumerate(torrent.files):
        path = root.joinpath(*f.path)
        if f.pad:
            assert not path.exists()
        else:
            assert path.read_bytes() == torrent.file_bytes(i), f"file {i} differs"
    assert not (root / ".pad").exists()


class CountingPwritev:
    """os.pwritev that counts its calls (and can fail on demand)."""

    def __init__(self, fail_errno: int | None = None) -> None:
        self.calls = 0
        self.fail_errno = fail_errno

    def __call__(self, fd: int, buffers: Sequence[memoryview], offset: int) -> int:
        self.calls += 1
        if self.fail_errno is not None:
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))
        return os.pwritev(fd, buffers, offset)


@st.composite
def torrents(draw: st.DrawFn) -> Torrent:
    piece_length = draw(st.sampled_from([BLOCK_SIZE, 2 * BLOCK_SIZE, 3 * BLOCK_SIZE]))
    layout: list[tuple[int, bool]] = []
    offset = 0
    for _ in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from(["zero", "small", "odd", "align-pad", "odd-pad"]))
        if kind == "zero":
            length, pad = 0, False
        elif kind == "small":
            length, pad = draw(st.integers(1, 50)), False
        elif kind == "odd":
            length, pad = draw(st.integers(1, 2 * piece_length + 1)), False
        elif kind == "align-pad":
            length, pad = -offset % piece_length, True
        else:
            length, pad = draw(st.integers(1, piece_length)), True
        layout.append((length, pad))
        offset += length
    if not any(length and not pad for length, pad in layout):  # at least one real byte to corrupt
        layout.append((draw(st.integers(1, 2 * piece_length)), False))
    return make_torrent(layout, piece_length, draw(st.integers(0, 2**32)))


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "out"
    # undo any immutable flag a test set, so pytest can clean up
    subprocess.run(["chattr", "-R", "-i", str(tmp_path)], capture_output=True, check=False)


# --- the property: any order, any batching, duplicates: exact files, right hashes -----------------


@settings(max_examples=100, deadline=None)
@given(torrents(), st.data())
async def test_any_block_order_gives_exact_files_and_good_hashes(torrent: Torrent, data: st.DataObject) -> None:
    blocks = torrent.blocks()
    order = data.draw(st.permutations(blocks))
    dups = data.draw(st.lists(st.sampled_from(blocks), max_size=len(blocks)))
    stream = list(order) + dups
    data.draw(st.randoms()).shuffle(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    batches = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    config = dataclasses.replace(DEFAULT_CONFIG, max_open_files=data.draw(st.integers(1, 4)))
    with tempfile.TemporaryDirectory() as tmp, trio.fail_after(DEADLINE):
        root = Path(tmp) / "out"
        with Storage(root, torrent.files, torrent.geometry, config) as storage:
            await storage.prepare()
            written: list[Written] = []
            for batch in batches:
                written += await storage.write_blocks(batch)
            assert written == [(p, b, len(d)) for p, b, d in stream]
            assert storage.open_file_count <= config.max_open_files
            read_back(root, torrent)
            g = torrent.geometry
            for piece in range(g.piece_count):
                assert await storage.hash_piece(piece, torrent.piece_hash(piece))
                [(ok, digests)] = await storage.hash_pieces([(piece, torrent.piece_hash(piece), True)])
                assert ok
                assert digests == tuple(hashlib.sha1(d).digest() for p, _, d in blocks if p == piece)
                whole = torrent.piece_bytes(piece)
                begin = data.draw(st.integers(0, len(whole) - 1))
                length = data.draw(st.integers(1, len(whole) - begin))
                assert await storage.read_block(piece, begin, length) == whole[begin : begin + length]
            # corrupt one real byte on disk: that piece, and only that one, fails
            index = data.draw(st.sampled_from([i for i, f in enumerate(torrent.files) if f.length and not f.pad]))
            off = data.draw(st.integers(0, torrent.files[index].length - 1))
            path = root.joinpath(*torrent.files[index].path)
            raw = bytearray(path.read_bytes())
            raw[off] ^= 0xFF
            path.write_bytes(raw)
            bad = g.file_offset(index) + off
            for piece in range(g.piece_count):
                inside = g.piece_offset(piece) <= bad < g.piece_offset(piece) + g.piece_size(piece)
                assert await storage.hash_piece(piece, torrent.piece_hash(piece)) is not inside


async def test_pad_bytes_hash_as_zeros_without_a_file(root: Path) -> None:
    torrent = make_torrent([(5, False), (BLOCK_SIZE - 5, True), (BLOCK_SIZE, False)], BLOCK_SIZE)
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry) as storage:
        await storage.write_blocks(torrent.blocks())
        assert await storage.hash_piece(0, torrent.piece_hash(0))
        # the piece hash covers the pad zeros: the hash of the real bytes alone is not it
        assert not await storage.hash_piece(0, hashlib.sha1(torrent.file_bytes(0)).digest())
        assert await storage.read_block(0, 0, BLOCK_SIZE) == torrent.file_bytes(0) + bytes(BLOCK_SIZE - 5)
    read_back(root, torrent)


async def test_zero_length_files_are_created_empty_and_pad_files_never(root: Path) -> None:
    torrent = make_torrent([(0, False), (0, True), (10, False), (0, False)], BLOCK_SIZE)
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry) as storage:
        await storage.prepare([0])
        assert (root / "file0.bin").read_bytes() == b""
        assert not root.joinpath(*torrent.files[3].path).exists()  # not wanted (yet)
        await storage.prepare()
    assert root.joinpath(*torrent.files[3].path).read_bytes() == b""
    assert not (root / ".pad").exists()


async def test_symlink_entries_are_never_created(root: Path) -> None:
    @dataclasses.dataclass(frozen=True)
    class Entry:  # the shape of core/metainfo.FileEntry that storage_files reads
        path: tuple[str, ...]
        length: int
        pad: bool = False
        symlink: bool = False

    files = storage_files([Entry(("a",), 0), Entry(("link",), 0, symlink=True), Entry(("b",), 3)])
    assert files[1] == StorageFile(("link",), 0, symlink=True)
    geometry = Geometry([f.length for f in files], [f.pad for f in files], BLOCK_SIZE)
    with trio.fail_after(DEADLINE), Storage(root, files, geometry) as storage:
        await storage.prepare()
        await storage.write_blocks([(0, 0, b"xyz")])
    assert sorted(p.name for p in root.iterdir()) == ["a", "b"]


async def test_a_short_file_fails_the_hash_and_the_read(root: Path) -> None:
    torrent = make_torrent([(2 * BLOCK_SIZE, False)], 2 * BLOCK_SIZE)
    config = dataclasses.replace(DEFAULT_CONFIG, file_allocation="none")
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, config) as storage:
        await storage.write_blocks(torrent.blocks()[:1])
        assert not await storage.hash_piece(0, torrent.piece_hash(0))
        for want in (False, True):
            assert await storage.hash_pieces([(0, torrent.piece_hash(0), want)]) == [(False, ())]
        with pytest.raises(StorageError):
            await storage.read_block(0, BLOCK_SIZE, BLOCK_SIZE)


# --- coalescing ------------------------------------------------------------------------------------


async def test_contiguous_blocks_are_one_write_and_gaps_split_it(root: Path) -> None:
    torrent = make_torrent([(8 * BLOCK_SIZE, False)], 4 * BLOCK_SIZE)
    blocks = torrent.blocks()
    counter = CountingPwritev()
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, pwritev=counter) as storage:
        shuffled = blocks[:]
        random.Random(1).shuffle(shuffled)
        await storage.write_blocks(shuffled + shuffled[:3])  # all eight, across two pieces, plus duplicates
        assert counter.calls == 1
        counter.calls = 0
        await storage.write_blocks([blocks[0], blocks[1], blocks[3], blocks[4], blocks[7]])
        assert counter.calls == 3
    read_back(root, torrent)


async def test_a_run_across_files_is_one_write_per_file(root: Path) -> None:
    torrent = make_torrent([(BLOCK_SIZE + 7, False), (100, True), (BLOCK_SIZE, False), (3, False)], BLOCK_SIZE)
    counter = CountingPwritev()
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, pwritev=counter) as storage:
        await storage.write_blocks(torrent.blocks())
        assert counter.calls == 3  # the pad file is skipped, not written
    read_back(root, torrent)


async def test_writer_loop_takes_everything_queued_into_one_hop(root: Path) -> None:
    torrent = make_torrent([(6 * BLOCK_SIZE + 1, False)], 2 * BLOCK_SIZE)
    blocks = torrent.blocks()
    counter = CountingPwritev()
    facts: list[list[Written]] = []

    async def send_written(written: list[Written]) -> None:
        facts.append(written)

    send, receive = trio.open_memory_channel[Sequence[Block]](len(blocks))
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, pwritev=counter) as storage:
        for block in reversed(blocks):
            send.send_nowait([block])
        send.close()
        await storage.writer_loop(receive, send_written)
    assert counter.calls == 1
    assert len(facts) == 1 and sorted(facts[0]) == sorted((p, b, len(d)) for p, b, d in blocks)
    read_back(root, torrent)


async def test_writer_loop_batches_are_bounded_and_all_answered(root: Path) -> None:
    torrent = make_torrent([(10 * BLOCK_SIZE, False), (5, False)], 2 * BLOCK_SIZE)
    blocks = torrent.blocks()
    config = dataclasses.replace(DEFAULT_CONFIG, write_batch_max_bytes=3 * BLOCK_SIZE, disk_threads=2)
    facts: list[list[Written]] = []

    async def send_written(written: list[Written]) -> None:
        facts.append(written)

    send, receive = trio.open_memory_channel[Sequence[Block]](0)
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, config) as storage:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(storage.writer_loop, receive, send_written)
            async with send:
                for block in blocks:
                    await send.send([block])
    assert sorted(w for fact in facts for w in fact) == sorted((p, b, len(d)) for p, b, d in blocks)
    assert all(sum(n for _, _, n in fact) <= 3 * BLOCK_SIZE for fact in facts)
    read_back(root, torrent)


async def test_writer_loop_runs_disk_threads_hops_at_once_and_no_more(root: Path) -> None:
    # Three hops must be in their threads together (the barrier lets none through before that);
    # a fourth batch waits for one of them.
    torrent = make_torrent([(8 * BLOCK_SIZE, False)], BLOCK_SIZE)
    blocks = torrent.blocks()
    config = dataclasses.replace(DEFAULT_CONFIG, disk_threads=3, write_batch_max_bytes=BLOCK_SIZE)
    barrier = threading.Barrier(3, timeout=DEADLINE)
    lock = threading.Lock()
    running = most = 0

    def pwritev(fd: int, buffers: Sequence[memoryview], offset: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            if offset < 3 * BLOCK_SIZE:  # the first three hops (one block each) meet here
                barrier.wait()
            return os.pwritev(fd, buffers, offset)
        finally:
            with lock:
                running -= 1

    facts: list[list[Written]] = []

    async def send_written(written: list[Written]) -> None:
        facts.append(written)

    send, receive = trio.open_memory_channel[Sequence[Block]](0)
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, config, pwritev=pwritev) as storage:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(storage.writer_loop, receive, send_written)
            async with send:
                for block in blocks:
                    await send.send([block])
    assert most == 3
    assert sorted(w for fact in facts for w in fact) == sorted((p, b, len(d)) for p, b, d in blocks)
    read_back(root, torrent)


@pytest.mark.parametrize("batch_pieces", [1, 3, 100])
async def test_hasher_loop_hashes_queued_pieces_in_one_hop_up_to_the_batch_bytes(root: Path, batch_pieces: int) -> None:
    torrent = make_torrent([(7 * BLOCK_SIZE, False)], BLOCK_SIZE)
    n = torrent.geometry.piece_count
    config = dataclasses.replace(DEFAULT_CONFIG, hash_threads=1, hash_batch_bytes=batch_pieces * BLOCK_SIZE)
    token = trio.lowlevel.current_trio_token()
    first_in = trio.Event()
    release = threading.Event()
    batches: list[list[int]] = []

    def pread(fd: int, length: int, offset: int) -> bytes:
        if offset == 0 and not first_in.is_set():  # piece 0's hop waits until the rest is queued
            trio.from_thread.run_sync(first_in.set, trio_token=token)
            assert release.wait(DEADLINE)
        return os.pread(fd, length, offset)

    class Recording(Storage):
        def _hash_many_sync(self, jobs: Sequence[tuple[int, bytes, bool]]) -> list[tuple[bool, tuple[bytes, ...]]]:
            batches.append([piece for piece, _, _ in jobs])
            return super()._hash_many_sync(jobs)

    answers: dict[int, bool] = {}

    async def send_hashed(piece: int, ok: bool, digests: tuple[bytes, ...]) -> None:
        answers[piece] = ok

    send, receive = trio.open_memory_channel[tuple[int, bytes, bool]](n)
    with trio.fail_after(DEADLINE), Recording(root, torrent.files, torrent.geometry, config, pread=pread) as storage:
        await storage.write_blocks(torrent.blocks())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(storage.hasher_loop, receive, send_hashed)
            send.send_nowait((0, torrent.piece_hash(0), False))
            await first_in.wait()
            for piece in range(1, n):
                send.send_nowait((piece, torrent.piece_hash(piece) if piece != 4 else bytes(20), False))
            release.set()
            send.close()
    rest = list(range(1, n))
    assert batches == [[0]] + [rest[i : i + batch_pieces] for i in range(0, len(rest), batch_pieces)]
    assert answers == {piece: piece != 4 for piece in range(n)}


async def test_hasher_loop_answers_every_piece_with_block_digests_only_when_wanted_or_failed(root: Path) -> None:
    torrent = make_torrent([(7 * BLOCK_SIZE + 3, False)], 2 * BLOCK_SIZE)
    g = torrent.geometry
    answers: dict[int, tuple[bool, tuple[bytes, ...]]] = {}

    async def send_hashed(piece: int, ok: bool, digests: tuple[bytes, ...]) -> None:
        answers[piece] = (ok, digests)

    def block_digests(piece: int) -> tuple[bytes, ...]:
        whole = torrent.piece_bytes(piece)
        return tuple(hashlib.sha1(whole[i : i + BLOCK_SIZE]).digest() for i in range(0, len(whole), BLOCK_SIZE))

    # piece 0: passes, digests not wanted; 1: passes, wanted; 2: fails, not wanted; 3: fails, wanted
    wanted = {0: False, 1: True, 2: False, 3: True}
    failing = {2, 3}
    send, receive = trio.open_memory_channel[tuple[int, bytes, bool]](0)
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, g) as storage:
        await storage.write_blocks(torrent.blocks())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(storage.hasher_loop, receive, send_hashed)
            async with send:
                for piece in range(g.piece_count):
                    expected = bytes(20) if piece in failing else torrent.piece_hash(piece)
                    await send.send((piece, expected, wanted[piece]))
    assert g.piece_count == 4 and g.blocks_in_piece(3) == 2
    assert answers == {
        0: (True, ()),
        1: (True, block_digests(1)),
        2: (False, block_digests(2)),  # a failure always carries them: kept to name the liar later
        3: (False, block_digests(3)),
    }


# --- allocation and the handle cache ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "sparse", "full"])
async def test_file_allocation_modes(root: Path, mode: str) -> None:
    torrent = make_torrent([(4 * BLOCK_SIZE + 9, False)], BLOCK_SIZE)
    config = dataclasses.replace(DEFAULT_CONFIG, file_allocation=mode)
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, config) as storage:
        await storage.write_blocks(torrent.blocks()[:1])
        info = os.stat(root / "file0.bin")
        expected = BLOCK_SIZE if mode == "none" else 4 * BLOCK_SIZE + 9
        assert info.st_size == expected
        if mode == "full":
            assert info.st_blocks * 512 >= 4 * BLOCK_SIZE
        await storage.write_blocks(torrent.blocks())
    read_back(root, torrent)


async def test_a_longer_existing_file_is_cut_to_length(root: Path) -> None:
    torrent = make_torrent([(BLOCK_SIZE, False)], BLOCK_SIZE)
    root.mkdir()
    (root / "file0.bin").write_bytes(b"x" * (3 * BLOCK_SIZE))
    config = dataclasses.replace(DEFAULT_CONFIG, file_allocation="none")
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, config) as storage:
        await storage.write_blocks(torrent.blocks())
    read_back(root, torrent)


def test_unknown_allocation_mode_is_a_usage_error(root: Path) -> None:
    torrent = make_torrent([(10, False)], BLOCK_SIZE)
    with pytest.raises(UsageError):
        Storage(root, torrent.files, torrent.geometry, dataclasses.replace(DEFAULT_CONFIG, file_allocation="x"))


async def test_handle_cache_stays_bounded(root: Path) -> None:
    torrent = make_torrent([(BLOCK_SIZE // 2, False)] * 9, BLOCK_SIZE)
    config = dataclasses.replace(DEFAULT_CONFIG, max_open_files=2)
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, config) as storage:
        for block in torrent.blocks():
            await storage.write_blocks([block])
            assert storage.open_file_count <= 2
        for piece in range(torrent.geometry.piece_count):
            assert await storage.hash_piece(piece, torrent.piece_hash(piece))
    read_back(root, torrent)


# --- sync and the handle cache: no descriptor closed while flushed, none closed unflushed --------


async def test_sync_holds_each_file_while_flushing_it(root: Path) -> None:
    """The race behind a once-failed 300-file download: while `sync` flushes file 0, a write to
    another file evicts file 0 from a one-descriptor cache. The descriptor being flushed must
    still be file 0's, open, when the flush runs (not closed: EBADF; not reused by another file)."""
    torrent = make_torrent([(BLOCK_SIZE, False)] * 2, BLOCK_SIZE)
    config = dataclasses.replace(DEFAULT_CONFIG, max_open_files=1, disk_threads=2)
    blocks = torrent.blocks()
    raced = False
    flushed: list[int] = []  # inode of each file flushed

    def fsync(fd: int) -> None:
        nonlocal raced
        before = os.fstat(fd).st_ino
        if not raced:
            raced = True
            # Another writer thread, at the worst moment: it opens file 1, which evicts file 0.
            trio.from_thread.run(storage.write_blocks, [blocks[1]])
        assert os.fstat(fd).st_ino == before, "the descriptor being flushed was closed and reused"
        os.fsync(fd)
        flushed.append(before)

    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, config, fsync=fsync) as storage:
        await storage.write_blocks([blocks[0]])
        await storage.sync()
        assert raced
        inode = [root.joinpath(*f.path).stat().st_ino for f in torrent.files]
        # File 1 was flushed when it was evicted (file 0 stayed pinned, so file 1 left instead).
        assert sorted(flushed) == sorted(inode)
        assert storage.open_file_count == 1
        for piece in range(torrent.geometry.piece_count):
            assert await storage.hash_piece(piece, torrent.piece_hash(piece))
    read_back(root, torrent)


async def test_an_evicted_file_is_flushed_before_closing_only_if_written(root: Path) -> None:
    torrent = make_torrent([(BLOCK_SIZE, False)] * 3, BLOCK_SIZE)
    config = dataclasses.replace(DEFAULT_CONFIG, max_open_files=1)
    blocks = torrent.blocks()
    flushed: list[int] = []  # inode of each file flushed; fstat raises if the descriptor is closed

    def fsync(fd: int) -> None:
        flushed.append(os.fstat(fd).st_ino)
        os.fsync(fd)

    def inode(index: int) -> int:  # files are created on first use
        return root.joinpath(*torrent.files[index].path).stat().st_ino

    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, config, fsync=fsync) as storage:
        await storage.write_blocks([blocks[0]])
        assert flushed == []  # written, not yet owed a flush
        await storage.write_blocks([blocks[1]])  # evicts file 0, written and unflushed
        assert flushed == [inode(0)]
        await storage.sync()  # file 1 only: file 0's writes were flushed when it left
        assert flushed == [inode(0), inode(1)]
        await storage.sync()  # nothing written since
        assert flushed == [inode(0), inode(1)]
        assert await storage.hash_piece(2, torrent.piece_hash(2)) is False  # opens file 2 unwritten
        assert await storage.hash_piece(0, torrent.piece_hash(0))  # evicts file 2: read only, no flush
        await storage.write_blocks([blocks[2]])  # evicts file 0: only read since its flush
        assert flushed == [inode(0), inode(1)]
        await storage.hash_piece(1, torrent.piece_hash(1))  # evicts file 2, written
        assert flushed == [inode(0), inode(1), inode(2)]
        assert storage.open_file_count == 1
    read_back(root, torrent)


async def test_sync_waits_for_a_flush_of_an_evicted_file_still_running(root: Path) -> None:
    """A writer thread evicted file 0 and is still flushing it when `sync` starts: file 0 is no
    longer in the cache, yet `sync` must not return (and let a resume state list file 0's pieces)
    before that flush is done."""
    torrent = make_torrent([(BLOCK_SIZE, False)] * 2, BLOCK_SIZE)
    config = dataclasses.replace(DEFAULT_CONFIG, max_open_files=1, disk_threads=2)
    blocks = torrent.blocks()
    log: list[str] = []
    evicting = trio.Event()
    let_flush_finish = threading.Event()
    token = trio.lowlevel.current_trio_token()  # storage's worker threads are not to_thread's: name the run

    def fsync(fd: int) -> None:
        inode = os.fstat(fd).st_ino
        if not evicting.is_set():  # the first flush: file 0's, by the evicting writer; hold it
            trio.from_thread.run_sync(evicting.set, trio_token=token)
            assert let_flush_finish.wait(DEADLINE)
        os.fsync(fd)
        log.append(f"flushed {inode}")

    class Watched(threading.Condition):
        def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
            let_flush_finish.set()  # sync is waiting: now let the eviction's flush end
            return super().wait_for(predicate, timeout)

    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, config, fsync=fsync) as storage:
        handles = storage._handles
        handles._retired = Watched(handles._lock)
        await storage.write_blocks([blocks[0]])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(storage.write_blocks, [blocks[1]])  # evicts file 0, flush held
            await evicting.wait()
            await storage.sync()
            log.append("sync returned")
            let_flush_finish.set()  # a sync that did not wait must not hang the test
    assert log[-1] == "sync returned"
    assert log[0] == f"flushed {root.joinpath(*torrent.files[0].path).stat().st_ino}"
    read_back(root, torrent)


async def test_a_failed_flush_at_eviction_is_a_storage_error_and_stays_owed(root: Path) -> None:
    torrent = make_torrent([(BLOCK_SIZE, False)] * 2, BLOCK_SIZE)
    config = dataclasses.replace(DEFAULT_CONFIG, max_open_files=1)
    blocks = torrent.blocks()
    failing = True

    def fsync(fd: int) -> None:
        if failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)

    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, config, fsync=fsync) as storage:
        await storage.write_blocks([blocks[0]])
        with pytest.raises(StorageError, match=r"file0\.bin"):
            await storage.write_blocks([blocks[1]])  # evicting file 0 cannot flush it: not written
        await storage.write_blocks([blocks[1]])  # file 0 is gone from the cache: nothing to flush
        with pytest.raises(StorageError, match=r"file1\.bin"):
            await storage.sync()  # file 1 was written; its flush fails too
        failing = False
        await storage.sync()  # file 1's flush is still owed and now succeeds
        assert storage.open_file_count == 1
    read_back(root, torrent)


async def test_concurrent_writes_and_syncs_on_a_tiny_cache(root: Path) -> None:
    """Many files, two descriptors, four writer threads and a syncing task: no flush ever meets a
    closed descriptor, and every byte lands."""
    torrent = make_torrent([(BLOCK_SIZE // 4, False)] * 80, BLOCK_SIZE, seed=3)
    config = dataclasses.replace(DEFAULT_CONFIG, max_open_files=2, disk_threads=4)
    blocks = torrent.blocks()
    random.Random(5).shuffle(blocks)
    syncs = 0
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, config) as storage:
        done = trio.Event()

        async def writer(part: list[Block]) -> None:
            for block in part:
                await storage.write_blocks([block])

        async def syncer() -> None:
            nonlocal syncs
            while not done.is_set():
                await storage.sync()
                syncs += 1

        async with trio.open_nursery() as outer:
            outer.start_soon(syncer)
            async with trio.open_nursery() as writers:
                for k in range(4):
                    writers.start_soon(writer, blocks[k::4])
            done.set()
        await storage.sync()
        assert syncs >= 1
        assert storage.open_file_count <= 2
    read_back(root, torrent)


# --- errors ----------------------------------------------------------------------------------------


async def test_a_directory_where_a_file_should_be_is_a_file_open_error(root: Path) -> None:
    torrent = make_torrent([(10, False)], BLOCK_SIZE)
    (root / "file0.bin").mkdir(parents=True)
    with (
        trio.fail_after(DEADLINE),
        Storage(root, torrent.files, torrent.geometry) as storage,
        pytest.raises(FileOpenError) as caught,
    ):
        await storage.write_blocks(torrent.blocks())
    assert caught.value.exit_status == ExitStatus.FILE_OPEN
    assert str(root / "file0.bin") in str(caught.value)


async def test_a_file_where_a_directory_should_be_is_a_file_create_error(root: Path) -> None:
    torrent = make_torrent([(0, False), (10, False)], BLOCK_SIZE)  # file1 is dir1/sub/file1.bin
    root.mkdir()
    (root / "dir1").write_bytes(b"in the way")
    with (
        trio.fail_after(DEADLINE),
        Storage(root, torrent.files, torrent.geometry) as storage,
        pytest.raises(FileCreateError) as caught,
    ):
        await storage.write_blocks(torrent.blocks())
    assert caught.value.exit_status == ExitStatus.FILE_CREATE
    assert "file1.bin" in str(caught.value)


def make_read_only(path: Path) -> None:
    """A folder nobody may create in: chmod for a normal user, the immutable flag for root."""
    if os.geteuid() != 0:
        path.chmod(0o500)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a folder read-only")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode:
        pytest.skip("running as root on a filesystem without the immutable flag")


async def test_a_read_only_folder_is_a_file_create_error(root: Path) -> None:
    torrent = make_torrent([(10, False)], BLOCK_SIZE)
    root.mkdir()
    make_read_only(root)
    try:
        with (
            trio.fail_after(DEADLINE),
            Storage(root, torrent.files, torrent.geometry) as storage,
            pytest.raises(FileCreateError) as caught,
        ):
            await storage.write_blocks(torrent.blocks())
    finally:
        subprocess.run(["chattr", "-i", str(root)], capture_output=True, check=False)
        root.chmod(0o700)
    assert str(root / "file0.bin") in str(caught.value)
    assert not (root / "file0.bin").exists()


@pytest.mark.parametrize(
    ("code", "error", "status"),
    [
        (errno.ENOSPC, DiskFullError, ExitStatus.DISK_FULL),
        (errno.EDQUOT, DiskFullError, ExitStatus.DISK_FULL),
        (errno.EIO, StorageError, ExitStatus.FILE_IO),
    ],
)
async def test_write_errors_map_to_the_error_tree(
    root: Path, code: int, error: type[StorageError], status: ExitStatus
) -> None:
    torrent = make_torrent([(3 * BLOCK_SIZE, False)], BLOCK_SIZE)
    with (
        trio.fail_after(DEADLINE),
        Storage(root, torrent.files, torrent.geometry, pwritev=CountingPwritev(code)) as s,
        pytest.raises(error) as caught,
    ):
        await s.write_blocks(torrent.blocks())
    assert type(caught.value) is error
    assert caught.value.exit_status == status
    assert str(root / "file0.bin") in str(caught.value)


async def test_writer_loop_stops_on_disk_full_with_the_plain_error(root: Path) -> None:
    torrent = make_torrent([(3 * BLOCK_SIZE, False)], BLOCK_SIZE)
    answered: list[list[Written]] = []

    async def send_written(written: list[Written]) -> None:
        answered.append(written)

    send, receive = trio.open_memory_channel[Sequence[Block]](10)
    counter = CountingPwritev(errno.ENOSPC)
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, pwritev=counter) as storage:
        for block in torrent.blocks():
            send.send_nowait([block])
        with pytest.raises(DiskFullError):
            await storage.writer_loop(receive, send_written)  # the channel is still open: the error ends it
    assert answered == []


async def test_read_errors_are_storage_errors(root: Path) -> None:
    torrent = make_torrent([(BLOCK_SIZE, False)], BLOCK_SIZE)

    def failing_pread(fd: int, length: int, offset: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry, pread=failing_pread) as storage:
        await storage.write_blocks(torrent.blocks())
        with pytest.raises(StorageError) as caught:
            await storage.hash_piece(0, torrent.piece_hash(0))
    assert caught.value.exit_status == ExitStatus.FILE_IO
    assert "file0.bin" in str(caught.value)


# --- path safety -----------------------------------------------------------------------------------


@pytest.mark.parametrize("parts", [("..", "x"), ("a", "..", "..", "x"), ("",), (".",), ("a/../../x",), ()])
def test_unsafe_paths_are_refused_up_front(root: Path, parts: tuple[str, ...]) -> None:
    geometry = Geometry([1], [False], BLOCK_SIZE)
    with pytest.raises(StorageError):
        Storage(root, [StorageFile(parts, 1)], geometry)


async def test_a_symlinked_folder_inside_the_root_is_not_followed(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    torrent = make_torrent([(0, False), (3 * BLOCK_SIZE, False)], BLOCK_SIZE)  # dir1/sub/file1.bin
    root.mkdir()
    (root / "dir1").symlink_to(outside, target_is_directory=True)
    with (
        trio.fail_after(DEADLINE),
        Storage(root, torrent.files, torrent.geometry) as storage,
        pytest.raises(StorageError, match="symbolic link"),
    ):
        await storage.write_blocks(torrent.blocks())
    assert list(outside.iterdir()) == []


async def test_a_symlinked_file_inside_the_root_is_not_followed(tmp_path: Path, root: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    torrent = make_torrent([(BLOCK_SIZE, False)], BLOCK_SIZE)
    root.mkdir()
    (root / "file0.bin").symlink_to(target)
    with trio.fail_after(DEADLINE), Storage(root, torrent.files, torrent.geometry) as storage:
        with pytest.raises(StorageError, match="symbolic link"):
            await storage.write_blocks(torrent.blocks())
        with pytest.raises(StorageError, match="symbolic link"):
            await storage.hash_piece(0, torrent.piece_hash(0))
    assert target.read_bytes() == b"keep me"


async def test_a_dangling_symlink_is_not_created_through(tmp_path: Path, root: Path) -> None:
    torrent = make_torrent([(0, False), (0, False), (0, False), (10, False)], BLOCK_SIZE)  # dir0/sub/file3.bin
    root.mkdir()
    (root / "dir0").mkdir()
    (root / "dir0" / "sub").symlink_to(tmp_path / "nowhere")
    with (
        trio.fail_after(DEADLINE),
        Storage(root, torrent.files, torrent.geometry) as storage,
        pytest.raises(StorageError, match="symbolic link"),
    ):
        await storage.write_blocks(torrent.blocks())
    assert not (tmp_path / "nowhere").exists()


async def test_a_symlinked_root_is_resolved_and_used(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    torrent = make_torrent([(10, False)], BLOCK_SIZE)
    with trio.fail_after(DEADLINE), Storage(link, torrent.files, torrent.geometry) as storage:
        assert storage.root == str(real)
        await storage.write_blocks(torrent.blocks())
    read_back(real, torrent)


def test_config_defaults_are_sane() -> None:
    config = Config()
    assert config.file_allocation == "sparse"  # never slow to start
    assert config.max_open_files >= 1 and config.disk_threads >= 1
    assert config.hash_read_size % BLOCK_SIZE == 0


# --- the worker-thread hop ---------------------------------------------------------------------------


async def test_a_thread_hop_returns_the_result_raises_the_error_and_respects_the_limiter() -> None:
    limiter = trio.CapacityLimiter(1)
    main = threading.get_ident()
    with trio.fail_after(DEADLINE):
        assert await _in_thread(lambda: threading.get_ident() != main, limiter)
        with pytest.raises(ZeroDivisionError):
            await _in_thread(lambda: 1 // 0, limiter)
        running = 0
        most = 0
        lock = threading.Lock()
        release = threading.Event()

        def job() -> None:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            release.wait(DEADLINE)
            with lock:
                running -= 1

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(_in_thread, job, limiter)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert most == 1 and limiter.borrowed_tokens == 0


async def test_a_cancelled_thread_hop_waits_for_the_thread_to_finish() -> None:
    started = threading.Event()
    release = threading.Event()
    finished: list[bool] = []
    seen_at_cancel: list[list[bool]] = []

    def job() -> None:
        started.set()
        release.wait(DEADLINE)
        finished.append(True)

    scope = trio.CancelScope()

    async def hop() -> None:
        with scope:
            try:
                await _in_thread(job, trio.CapacityLimiter(1))
                await trio.lowlevel.checkpoint()
            except trio.Cancelled:
                seen_at_cancel.append(list(finished))
                raise

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hop)
            await trio.to_thread.run_sync(started.wait, DEADLINE)
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert not finished and not seen_at_cancel  # the hop still waits for the thread
            release.set()
    assert seen_at_cancel == [[True]] and scope.cancelled_caught
