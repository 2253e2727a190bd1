"""Read-only verification: the right status per file, the right pieces, and nothing on disk changed."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import os
import random
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.tasks import verify as verify_module
from jstorrent_cli.tasks.parts import layout_for_selection
from jstorrent_cli.tasks.storage import Block, Storage, StorageFile
from jstorrent_cli.tasks.verify import COMPLETE, DAMAGED, MISSING, PARTIAL, check_pieces, verify

DEADLINE = 20
BLOCK = 64
# Small hops so that several workers and several batches are exercised on tiny torrents.
CONFIG = dataclasses.replace(DEFAULT_CONFIG, verify_batch_bytes=500, hash_read_size=100, hash_threads=3)


@dataclasses.dataclass
class Payload:
    files: list[StorageFile]
    geometry: Geometry
    data: bytes

    @property
    def paths(self) -> list[tuple[str, ...] | None]:
        return [None if f.pad else f.path for f in self.files]

    @property
    def hashes(self) -> bytes:
        g = self.geometry
        return b"".join(
            hashlib.sha1(self.data[g.piece_offset(p) : g.piece_offset(p) + g.piece_size(p)]).digest()
            for p in range(g.piece_count)
        )

    def file_bytes(self, i: int) -> bytes:
        start = self.geometry.file_offset(i)
        return self.data[start : start + self.files[i].length]

    def write(self, root: Path) -> None:
        for i, f in enumerate(self.files):
            if not f.pad:
                path = root.joinpath(*f.path)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(self.file_bytes(i))


def make(layout: list[tuple[int, bool]], piece_length: int, seed: int = 0) -> Payload:
    rng = random.Random(seed)
    files: list[StorageFile] = []
    data = bytearray()
    for i, (length, pad) in enumerate(layout):
        files.append(StorageFile(("t", ".pad", str(i)) if pad else ("t", f"d{i % 2}", f"f{i}"), length, pad))
        data += bytes(length) if pad else rng.randbytes(length)
    return Payload(files, Geometry([f.length for f in files], [f.pad for f in files], piece_length, BLOCK), bytes(data))


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under root with its mode, size and mtime_ns (not following symlinks)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            info = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return out


# Files: 0 -> 300 bytes, 1 -> 500, 2 -> 0 (empty), 3 -> 250 ; pieces of 256:
# file 0 [0,300) pieces 0-1; file 1 [300,800) pieces 1-3; file 3 [800,1050) pieces 3-4.
LAYOUT = [(300, False), (500, False), (0, False), (250, False)]


def statuses(report: object) -> dict[int, str]:
    return {f.index: f.status for f in report.files}  # type: ignore[attr-defined]


async def test_an_intact_payload_is_complete(tmp_path: Path) -> None:
    payload = make(LAYOUT, 256)
    payload.write(tmp_path)
    seen: list[tuple[int, int]] = []
    with trio.fail_after(DEADLINE):
        report = await verify(tmp_path, payload.paths, payload.geometry, payload.hashes,
                              progress=lambda done, total: seen.append((done, total)), config=CONFIG)
    assert report.complete
    assert statuses(report) == {0: COMPLETE, 1: COMPLETE, 2: COMPLETE, 3: COMPLETE}
    assert report.pieces.ok == set(range(5)) and not report.pieces.bad and not report.pieces.missing
    # Progress: starts at 0, never goes back, ends at the whole payload.
    assert seen[0] == (0, 1050) and seen[-1] == (1050, 1050)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))


async def test_corruption_missing_and_short_files_are_told_apart(tmp_path: Path) -> None:
    payload = make(LAYOUT, 256)
    payload.write(tmp_path)
    f1 = tmp_path / "t" / "d1" / "f1"
    raw = bytearray(f1.read_bytes())
    raw[400] ^= 0xFF  # torrent byte 700: piece 2, wholly inside file 1
    f1.write_bytes(bytes(raw))
    (tmp_path / "t" / "d1" / "f3").unlink()
    before = snapshot(tmp_path)
    with trio.fail_after(DEADLINE):
        report = await verify(tmp_path, payload.paths, payload.geometry, payload.hashes, config=CONFIG)
    assert snapshot(tmp_path) == before  # nothing created (not f3), nothing changed
    by_index = {f.index: f for f in report.files}
    assert by_index[0].status == COMPLETE
    assert by_index[1].status == DAMAGED and by_index[1].bad_pieces == 1 and by_index[1].missing_pieces == 1
    assert by_index[3].status == MISSING and by_index[3].size_on_disk is None
    assert report.pieces.bad == {2} and report.pieces.missing == {3, 4} and report.pieces.ok == {0, 1}
    assert not report.complete


async def test_short_sparse_and_long_files(tmp_path: Path) -> None:
    payload = make(LAYOUT, 256)
    payload.write(tmp_path)
    f0 = tmp_path / "t" / "d0" / "f0"
    with open(f0, "r+b") as f:
        f.truncate(280)  # short: piece 1 incomplete; piece 0 (bytes 0-256) intact
    f3 = tmp_path / "t" / "d1" / "f3"
    f3.write_bytes(bytes(250))  # full size, never written (zeros): missing data, not damage
    (tmp_path / "t" / "d0" / "f2").write_bytes(b"x")  # the empty file has a byte too many
    with trio.fail_after(DEADLINE):
        report = await verify(tmp_path, payload.paths, payload.geometry, payload.hashes, config=CONFIG)
    by_index = {f.index: f for f in report.files}
    assert by_index[0].status == PARTIAL and by_index[0].size_on_disk == 280 and by_index[0].missing_pieces == 1
    assert by_index[1].status == PARTIAL  # its own bytes are fine, but pieces 1 and 3 lack neighbours' data
    assert by_index[2].status == DAMAGED and "1 bytes longer" in (by_index[2].note or "")
    assert by_index[3].status == PARTIAL and by_index[3].bad_pieces == 0
    assert report.pieces.missing == {1, 3, 4} and report.pieces.ok == {0, 2}


async def test_symlinks_and_fifos_are_not_followed_or_read(tmp_path: Path) -> None:
    payload = make(LAYOUT, 256)
    outside = tmp_path / "outside"
    payload.write(outside)
    root = tmp_path / "root"
    payload.write(root)
    (root / "t" / "d1" / "f3").unlink()
    (root / "t" / "d1" / "f3").symlink_to(outside / "t" / "d1" / "f3")  # right bytes, behind a link
    (root / "t" / "d0" / "f0").unlink()
    os.mkfifo(root / "t" / "d0" / "f0")  # reading it would block forever
    with trio.fail_after(DEADLINE):
        report = await verify(root, payload.paths, payload.geometry, payload.hashes, config=CONFIG)
    by_index = {f.index: f for f in report.files}
    assert by_index[3].status == MISSING and "symbolic link" in (by_index[3].note or "")
    assert by_index[0].status == MISSING and "not a regular file" in (by_index[0].note or "")
    assert report.pieces.ok == {2}


async def test_a_selective_download_verifies_through_its_parts_file(tmp_path: Path) -> None:
    payload = make(LAYOUT, 256, seed=5)
    selected = {1}
    geometry, files = layout_for_selection(payload.geometry, payload.files, selected, "t")
    blocks: list[Block] = []
    for piece in range(1, 4):  # the pieces of file 1
        start = payload.geometry.piece_offset(piece)
        for b in range(payload.geometry.blocks_in_piece(piece)):
            begin = payload.geometry.block_begin(b)
            length = payload.geometry.block_length(piece, b)
            blocks.append((piece, begin, payload.data[start + begin : start + begin + length]))
    with trio.fail_after(DEADLINE):
        with Storage(tmp_path, files, geometry) as storage:
            await storage.write_blocks(blocks)
        paths = [None if f.pad else f.path for f in files]
        report = await verify(tmp_path, paths, geometry, payload.hashes, report_files=selected, config=CONFIG)
    assert report.complete and [f.index for f in report.files] == [1]
    assert report.pieces.ok == {1, 2, 3}
    assert not (tmp_path / "t" / "d0" / "f0").exists()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 700), st.booleans()), min_size=1, max_size=6).filter(
        lambda fs: any(n and not p for n, p in fs)),
    st.sampled_from([64, 200, 256]),
    st.data(),
)
async def test_piece_results_equal_a_byte_comparison(
    layout: list[tuple[int, bool]], piece_length: int, data: st.DataObject
) -> None:
    payload = make(layout, piece_length, seed=data.draw(st.integers(0, 99)))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        payload.write(root)
        real = [i for i, f in enumerate(payload.files) if not f.pad and f.length]
        damaged: dict[int, bytes] = {}
        for i in data.draw(st.lists(st.sampled_from(real), max_size=3, unique=True)):
            raw = bytearray(payload.file_bytes(i))
            action = data.draw(st.sampled_from(["flip", "truncate", "delete"]))
            path = root.joinpath(*payload.files[i].path)
            if action == "flip":
                raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 + data.draw(st.integers(0, 254))
                path.write_bytes(bytes(raw))
            elif action == "truncate":
                raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
                path.write_bytes(bytes(raw))
            else:
                path.unlink()
                raw = bytearray()
            damaged[i] = bytes(raw)
        with trio.fail_after(DEADLINE):
            results = await check_pieces(root, payload.paths, payload.geometry, payload.hashes, config=CONFIG)
    # Brute force: a piece is ok exactly when the bytes on disk equal the payload's.
    g = payload.geometry
    disk = bytearray()
    complete = []
    for i, f in enumerate(payload.files):
        got = damaged.get(i, payload.file_bytes(i))
        complete.extend(k < len(got) for k in range(f.length))
        disk += got[: f.length].ljust(f.length, b"\0")
    for p in range(g.piece_count):
        lo, hi = g.piece_offset(p), g.piece_offset(p) + g.piece_size(p)
        same = disk[lo:hi] == payload.data[lo:hi] and all(complete[lo:hi])
        assert (p in results.ok) == same, p
    assert results.ok | results.bad | results.missing == set(range(g.piece_count))
    assert not (results.ok & results.bad) and not (results.ok & results.missing) and not (results.bad & results.missing)



async def test_hashing_runs_in_at_most_hash_threads_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = make([(5000, False), (3000, False)], 64)
    payload.write(tmp_path)
    lock = threading.Lock()
    running = 0
    peak = 0
    # Two hops meet at the barrier if two can run at once; the timeout lets an odd last hop through.
    gate = threading.Barrier(2, timeout=2)
    original = verify_module._hash_batch

    def counting(*args: Any) -> list[tuple[int, int]]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            with contextlib.suppress(threading.BrokenBarrierError):
                gate.wait()
            return original(*args)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(verify_module, "_hash_batch", counting)
    config = dataclasses.replace(CONFIG, hash_threads=2, verify_batch_bytes=256)
    with trio.fail_after(DEADLINE):
        results = await check_pieces(tmp_path, payload.paths, payload.geometry, payload.hashes, config=config)
    assert results.ok == set(range(payload.geometry.piece_count))
    assert peak == 2  # hashing ran in parallel, and never in more threads than the limit
