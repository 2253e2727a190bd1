"""`jstorrent create`: walk the files, hash the pieces in worker threads, write the .torrent."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import trio

from jstorrent_cli.config import DEFAULT_CONFIG, Config
from jstorrent_cli.core.create import SourceFile, build_metainfo, choose_piece_length
from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.errors import (
    FileOpenError,
    InputNotFoundError,
    JsTorrentError,
    OutputExistsError,
    StorageError,
    UsageError,
)

# Pieces hashed per worker-thread hop: enough to amortise the hop, small enough for a smooth bar.
_BATCH_BYTES_TARGET = 8 * 1024 * 1024


class CreateError(JsTorrentError):
    """Nothing usable to put in a torrent (an empty folder, only empty files)."""


def collect_files(root: Path) -> tuple[str, list[SourceFile], list[Path], list[str]]:
    """Walk `root`: returns (name, files inside the torrent, their paths on disk, skipped notes).

    A single file gives one SourceFile with empty parts. Directories are walked in sorted order;
    symlinks are skipped (never followed), so a torrent never carries data from outside `root`.
    """
    if not root.exists() and not root.is_symlink():
        raise InputNotFoundError(f"{root}: no such file or directory")
    name = root.resolve().name
    if root.is_file():
        return name, [SourceFile((), root.stat().st_size)], [root], []
    if not root.is_dir():
        raise UsageError(f"{root}: not a regular file or directory")
    files: list[SourceFile] = []
    paths: list[Path] = []
    skipped: list[str] = []

    def walk(folder: Path, parts: tuple[str, ...]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise FileOpenError(f"{folder}: cannot list: {exc.strerror}") from None
        for entry in entries:
            here = (*parts, entry.name)
            if entry.is_symlink():
                skipped.append(f"{Path(folder, entry.name)}: symlink skipped")
            elif entry.is_dir():
                walk(Path(entry.path), here)
            elif entry.is_file():
                files.append(SourceFile(here, entry.stat().st_size))
                paths.append(Path(entry.path))
            else:
                skipped.append(f"{Path(folder, entry.name)}: not a regular file, skipped")

    walk(root, ())
    return name, files, paths, skipped


def _read_range(paths: list[Path], geometry: Geometry, start: int, length: int) -> bytes:
    """Read `length` bytes of the concatenated files from `start`."""
    out = bytearray()
    for span in geometry.byte_spans(start, length):
        path = paths[span.file_index]
        try:
            with open(path, "rb") as f:
                f.seek(span.file_offset)
                data = f.read(span.length)
        except OSError as exc:
            raise FileOpenError(f"{path}: cannot read: {exc.strerror}") from None
        if len(data) != span.length:
            raise StorageError(f"{path}: file changed size while hashing")
        out += data
    return bytes(out)


def _hash_batch(paths: list[Path], geometry: Geometry, first: int, count: int) -> bytes:
    piece_length = geometry.piece_length
    start = first * piece_length
    end = min(geometry.total_length, (first + count) * piece_length)
    data = memoryview(_read_range(paths, geometry, start, end - start))
    return b"".join(
        hashlib.sha1(data[i : i + piece_length]).digest() for i in range(0, len(data), piece_length)
    )


async def hash_pieces(
    paths: list[Path],
    lengths: list[int],
    piece_length: int,
    progress: Callable[[int], None],
    config: Config = DEFAULT_CONFIG,
) -> bytes:
    """SHA-1 of every piece of the concatenated files, in worker threads; `progress(bytes)` per batch."""
    geometry = Geometry(lengths, [False] * len(lengths), piece_length)
    total = geometry.total_length
    count = geometry.piece_count
    per_batch = max(1, _BATCH_BYTES_TARGET // piece_length)
    results: dict[int, bytes] = {}
    limiter = trio.CapacityLimiter(config.hash_threads)
    # At most hash_threads + 1 batches are read into memory at once.
    window = trio.Semaphore(config.hash_threads + 1)

    async def run(first: int) -> None:
        try:
            n = min(per_batch, count - first)
            digest = await trio.to_thread.run_sync(
                _hash_batch, paths, geometry, first, n, limiter=limiter
            )
            results[first] = digest
            progress(min(total, (first + n) * piece_length) - first * piece_length)
        finally:
            window.release()

    async with trio.open_nursery() as nursery:
        for first in range(0, count, per_batch):
            await window.acquire()
            nursery.start_soon(run, first)
    return b"".join(results[first] for first in sorted(results))


async def create_torrent(
    source: Path,
    output: Path,
    *,
    trackers: list[list[str]],
    web_seeds: list[str],
    piece_length: int | None,
    private: bool,
    comment: str | None,
    force: bool,
    progress_start: Callable[[int], None],
    progress: Callable[[int], None],
    config: Config = DEFAULT_CONFIG,
) -> tuple[bytes, list[str]]:
    """Make the .torrent for `source` and write it to `output`. Returns (its bytes, skipped notes)."""
    if output.exists() and not force:
        raise OutputExistsError(f"{output} exists; pass --force to overwrite it")
    name, files, paths, skipped = collect_files(source)
    total = sum(f.length for f in files)
    if total == 0:
        raise CreateError(f"{source}: nothing to share (no data in it)")
    if piece_length is None:
        piece_length = choose_piece_length(total, config)
    progress_start(total)
    hashes = await hash_pieces(paths, [f.length for f in files], piece_length, progress, config)
    single = source.is_file()
    data = build_metainfo(
        name=name,
        files=None if single else files,
        single_length=total if single else None,
        piece_length=piece_length,
        piece_hashes=hashes,
        trackers=trackers,
        web_seeds=web_seeds,
        private=private,
        comment=comment,
        creation_date=int(time.time()),
    )
    tmp = output.with_name(output.name + ".part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, output)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FileOpenError(f"{output}: cannot write: {exc.strerror}") from None
    return data, skipped
