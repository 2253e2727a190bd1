"""Hash what is on disk, read-only, and say per file what is complete, damaged, partial or missing.

This never creates, sizes or modifies a file (tasks/storage.py opens everything read-write and
creating, which a check must not do). Every file is opened O_RDONLY, one path component at a time
from a descriptor of the output folder with O_NOFOLLOW (a symlink inside the folder is not
followed: the file counts as missing), O_NONBLOCK (a FIFO planted at a file's name does not hang
us; it is not a regular file and counts as missing) and, where the kernel allows, O_NOATIME.

Pieces are hashed in worker threads (at most `config.hash_threads` at once, a CapacityLimiter),
several consecutive pieces per thread hop (`config.verify_batch_bytes`), each read in slices of
`config.hash_read_size`. A piece is:
- ok:      its SHA-1 matches;
- missing: a byte of it is not on disk (a file absent or shorter than the torrent says), or its
           hash does not match and one of its blocks is all zeros on disk (never written: a hole
           of a sparse file, an interrupted download);
- bad:     all there, no block all zeros, and the hash does not match.

A file is `complete` (right size, every piece holding its bytes ok), `damaged` (a bad piece, or
longer than the torrent says), `missing` (absent, or not a regular file), else `partial` (some of
its pieces missing, its own data or a neighbour's).

`check_pieces` is the piece-level part, for the download's start-up check of existing data;
`verify` adds the per-file report for `jstorrent verify`. Both take the geometry and relative
paths of the files on disk, so a selective download's parts layout (tasks/parts.py) works too.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import os
import stat
from collections.abc import Callable, Collection, Iterator, Sequence

import trio

from jstorrent_cli.config import DEFAULT_CONFIG, Config
from jstorrent_cli.core.geometry import Geometry

__all__ = [
    "COMPLETE",
    "DAMAGED",
    "MISSING",
    "PARTIAL",
    "FileReport",
    "PieceResults",
    "VerifyReport",
    "check_pieces",
    "verify",
]

COMPLETE = "complete"
DAMAGED = "damaged"
MISSING = "missing"
PARTIAL = "partial"

SHA1_LENGTH = 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NOATIME = getattr(os, "O_NOATIME", 0)

Progress = Callable[[int, int], None]  # (bytes checked so far, bytes to check in all)


@dataclasses.dataclass(frozen=True, slots=True)
class PieceResults:
    """Which of the checked pieces are ok, bad (data there, wrong hash) or missing (data absent)."""

    ok: frozenset[int]
    bad: frozenset[int]
    missing: frozenset[int]


@dataclasses.dataclass(frozen=True, slots=True)
class FileReport:
    index: int  # 0-based position in the geometry's files (jstorrent info prints index + 1)
    path: tuple[str, ...]
    length: int
    status: str  # COMPLETE, DAMAGED, MISSING or PARTIAL
    size_on_disk: int | None  # None when the file is not there (or not a regular file)
    pieces: int  # pieces holding bytes of the file
    bad_pieces: int
    missing_pieces: int
    note: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyReport:
    files: tuple[FileReport, ...]
    pieces: PieceResults

    @property
    def complete(self) -> bool:
        return all(f.status == COMPLETE for f in self.files)


class _Opened:
    """The read-only descriptors of one thread hop; a file that cannot be used maps to None."""

    def __init__(self, root: str, paths: Sequence[tuple[str, ...] | None]) -> None:
        self._root = root
        self._paths = paths
        self._fds: dict[int, int | None] = {}

    def get(self, index: int) -> int | None:
        if index not in self._fds:
            parts = self._paths[index]
            self._fds[index] = None if parts is None else _open_read_only(self._root, parts)
        return self._fds[index]

    def close(self) -> None:
        for fd in self._fds.values():
            if fd is not None:
                os.close(fd)
        self._fds.clear()


def _open_read_only(root: str, parts: tuple[str, ...]) -> int | None:
    """A descriptor of regular file `parts` under `root`, or None (absent, symlink, not a file)."""
    try:
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for name in parts[:-1]:
            inner = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = inner
        try:
            fd = os.open(parts[-1], _FILE_FLAGS | _NOATIME, dir_fd=dir_fd)
        except PermissionError:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)  # O_NOATIME is for the owner only
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _file_state(root: str, parts: tuple[str, ...]) -> tuple[int | None, str | None]:
    """(size, None) for a regular file; (None, why) when it is not usable."""
    path = os.path.join(root, *parts)
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, os.strerror(err.errno) if err.errno else str(err)
    if stat.S_ISLNK(info.st_mode):
        return None, "a symbolic link (not followed)"
    if not stat.S_ISREG(info.st_mode):
        return None, "not a regular file"
    fd = _open_read_only(root, parts)
    if fd is None:
        return None, "cannot be opened for reading (or a folder on the way is a symbolic link)"
    os.close(fd)
    return info.st_size, None


_OK, _BAD, _MISSING = 0, 1, 2


def _hash_piece(geometry: Geometry, opened: _Opened, piece: int, expected: bytes, read_size: int) -> int:
    digest = hashlib.sha1()
    block_size = geometry.block_size
    # Per block of the piece: whether it holds file bytes, and whether one of them is not zero.
    blocks = geometry.blocks_in_piece(piece)
    has_data = [False] * blocks
    nonzero = [False] * blocks
    at = 0  # offset inside the piece
    for span in geometry.piece_spans(piece):
        if span.pad:
            left = span.length
            while left:
                take = min(left, read_size)
                digest.update(bytes(take))
                left -= take
            at += span.length
            continue
        fd = opened.get(span.file_index)
        if fd is None:
            return _MISSING
        position, end = span.file_offset, span.file_offset + span.length
        while position < end:
            try:
                data = os.pread(fd, min(read_size, end - position), position)
            except OSError as err:
                if err.errno == errno.EINTR:
                    continue
                return _MISSING  # an unreadable stretch is data we do not have
            if not data:
                return _MISSING  # the file ends early
            digest.update(data)
            for block in range(at // block_size, (at + len(data) - 1) // block_size + 1):
                low = max(block * block_size, at) - at
                high = min((block + 1) * block_size, at + len(data)) - at
                has_data[block] = True
                nonzero[block] = nonzero[block] or data.count(0, low, high) != high - low
            at += len(data)
            position += len(data)
    if digest.digest() == expected:
        return _OK
    # A wrong piece with a block of nothing but zeros was most likely never fully written (a hole of
    # a sparse file, an interrupted download): data missing, not damage.
    unwritten = any(h and not n for h, n in zip(has_data, nonzero, strict=True))
    return _MISSING if unwritten else _BAD


def _hash_batch(
    root: str,
    paths: Sequence[tuple[str, ...] | None],
    geometry: Geometry,
    piece_hashes: bytes,
    batch: Sequence[int],
    read_size: int,
) -> list[tuple[int, int]]:
    opened = _Opened(root, paths)
    try:
        return [
            (p, _hash_piece(geometry, opened, p, piece_hashes[p * SHA1_LENGTH : (p + 1) * SHA1_LENGTH], read_size))
            for p in batch
        ]
    finally:
        opened.close()


def _batches(geometry: Geometry, pieces: Sequence[int], batch_bytes: int) -> Iterator[list[int]]:
    batch: list[int] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += geometry.piece_size(piece)
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


async def check_pieces(
    root: str | os.PathLike[str],
    paths: Sequence[tuple[str, ...] | None],
    geometry: Geometry,
    piece_hashes: bytes,
    pieces: Collection[int] | None = None,
    *,
    progress: Progress | None = None,
    config: Config = DEFAULT_CONFIG,
) -> PieceResults:
    """Hash `pieces` (default: all) as they are on disk under `root`, read-only.

    `paths[i]` is the relative path of the geometry's file i (None for pad files); `piece_hashes`
    is the torrent's concatenated SHA-1 digests. `progress(done, total)` is called in bytes.
    """
    if len(paths) != geometry.file_count:
        raise ValueError("paths must have one entry per file of the geometry")
    if len(piece_hashes) != SHA1_LENGTH * geometry.piece_count:
        raise ValueError("piece_hashes must hold one SHA-1 per piece")
    folder = os.path.realpath(os.fspath(root))
    order = sorted(range(geometry.piece_count) if pieces is None else set(pieces))
    total = sum(geometry.piece_size(p) for p in order)
    done = 0
    results: dict[int, int] = {}
    limiter = trio.CapacityLimiter(config.hash_threads)
    batches = _batches(geometry, order, config.verify_batch_bytes)
    if progress is not None:
        progress(0, total)

    async def worker() -> None:
        nonlocal done
        for batch in batches:  # shared iterator: each batch goes to exactly one worker
            hashed = await trio.to_thread.run_sync(
                _hash_batch, folder, paths, geometry, piece_hashes, batch, config.hash_read_size, limiter=limiter
            )
            results.update(hashed)
            done += sum(geometry.piece_size(p) for p in batch)
            if progress is not None:
                progress(done, total)

    async with trio.open_nursery() as nursery:
        for _ in range(config.hash_threads):
            nursery.start_soon(worker)
    return PieceResults(
        ok=frozenset(p for p, r in results.items() if r == _OK),
        bad=frozenset(p for p, r in results.items() if r == _BAD),
        missing=frozenset(p for p, r in results.items() if r == _MISSING),
    )


async def verify(
    root: str | os.PathLike[str],
    paths: Sequence[tuple[str, ...] | None],
    geometry: Geometry,
    piece_hashes: bytes,
    *,
    report_files: Collection[int] | None = None,
    progress: Progress | None = None,
    config: Config = DEFAULT_CONFIG,
) -> VerifyReport:
    """Check the files on disk and report on `report_files` (default: every file with a path).

    Only the pieces holding bytes of the reported files are hashed.
    """
    folder = os.path.realpath(os.fspath(root))
    named: list[tuple[int, tuple[str, ...]]] = []
    for i in sorted(range(geometry.file_count) if report_files is None else set(report_files)):
        parts = paths[i]
        if parts is not None:
            named.append((i, parts))
    states = await trio.to_thread.run_sync(lambda: [_file_state(folder, parts) for _, parts in named])
    wanted = set(itertools.chain.from_iterable(geometry.file_pieces(i) for i, _ in named))
    results = await check_pieces(folder, paths, geometry, piece_hashes, wanted, progress=progress, config=config)
    reports: list[FileReport] = []
    for (i, parts), (size, why) in zip(named, states, strict=True):
        pieces = geometry.file_pieces(i)
        bad = sum(1 for p in pieces if p in results.bad)
        missing = sum(1 for p in pieces if p in results.missing)
        length = geometry.file_length(i)
        note = why
        if size is None:
            status = MISSING
        elif bad or size > length:
            status = DAMAGED
            if size > length:
                note = f"{size - length} bytes longer than the torrent says"
        elif missing or size < length:
            status = PARTIAL
        else:
            status = COMPLETE
        reports.append(FileReport(i, parts, length, status, size, len(pieces), bad, missing, note))
    return VerifyReport(tuple(reports), results)
