"""Selective download on disk: selected files byte-exact, unselected bytes only in the parts file."""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.core.selection import wanted_pieces
from jstorrent_cli.tasks.parts import PartsGeometry, layout_for_selection, parts_file_name
from jstorrent_cli.tasks.storage import Block, Storage, StorageFile

DEADLINE = 20
NAME = "payload"
BLOCK = 64


def _torrent(layout: list[tuple[int, bool]], piece_length: int, seed: int) -> tuple[Geometry, list[StorageFile], bytes]:
    rng = random.Random(seed)
    files: list[StorageFile] = []
    payload = bytearray()
    for i, (length, pad) in enumerate(layout):
        files.append(StorageFile((NAME, ".pad", str(i)) if pad else (NAME, f"f{i}.bin"), length, pad))
        payload += bytes(length) if pad else rng.randbytes(length)
    return Geometry([f.length for f in files], [f.pad for f in files], piece_length, BLOCK), files, bytes(payload)


def _blocks(geometry: Geometry, payload: bytes, pieces: set[int], rng: random.Random) -> list[Block]:
    out: list[Block] = []
    for piece in pieces:
        start = geometry.piece_offset(piece)
        for b in range(geometry.blocks_in_piece(piece)):
            begin = geometry.block_begin(b)
            length = geometry.block_length(piece, b)
            out.append((piece, begin, payload[start + begin : start + begin + length]))
    rng.shuffle(out)
    return out


def _expected_parts(geometry: Geometry, payload: bytes, selected: set[int]) -> bytes:
    """Brute force: every byte of an unselected real file whose piece is wanted, in torrent order."""
    wanted = wanted_pieces(geometry, selected)
    out = bytearray()
    for i in range(geometry.file_count):
        if i in selected or geometry.is_pad(i):
            continue
        start = geometry.file_offset(i)
        for position in range(start, start + geometry.file_length(i)):
            if position // geometry.piece_length in wanted:
                out.append(payload[position])
    return bytes(out)


layouts = st.lists(
    st.tuples(st.one_of(st.just(0), st.integers(1, 40), st.integers(41, 900)), st.booleans()),
    min_size=1, max_size=8,
).filter(lambda fs: any(n and not p for n, p in fs))


@settings(max_examples=60, deadline=None)
@given(layouts, st.sampled_from([64, 128, 300, 512]), st.data())
async def test_selected_files_exact_and_unselected_bytes_only_in_parts(
    layout: list[tuple[int, bool]], piece_length: int, data: st.DataObject
) -> None:
    geometry, files, payload = _torrent(layout, piece_length, data.draw(st.integers(0, 1000)))
    real = [i for i, (n, pad) in enumerate(layout) if not pad]
    selected = data.draw(st.sets(st.sampled_from(real), min_size=1))
    disk_geometry, disk_files = layout_for_selection(geometry, files, selected, NAME)
    wanted = set(wanted_pieces(geometry, selected))
    with tempfile.TemporaryDirectory() as tmp, trio.fail_after(DEADLINE):
        root = Path(tmp)
        with Storage(root, disk_files, disk_geometry, DEFAULT_CONFIG) as storage:
            await storage.prepare(wanted=sorted(selected))
            await storage.write_blocks(_blocks(geometry, payload, wanted, random.Random(len(payload))))
            for piece in sorted(wanted):
                start = geometry.piece_offset(piece)
                digest = hashlib.sha1(payload[start : start + geometry.piece_size(piece)]).digest()
                assert await storage.hash_piece(piece, digest), f"piece {piece} does not hash back"
        # Selected files byte-exact; nothing else in the user's folder but the hidden parts file.
        on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        expected_names = {"/".join(files[i].path) for i in selected}
        parts_path = root / parts_file_name(NAME)
        unselected_bytes = _expected_parts(geometry, payload, selected)
        if unselected_bytes:
            expected_names.add(parts_path.name)
        assert on_disk == expected_names
        for i in selected:
            start = geometry.file_offset(i)
            assert root.joinpath(*files[i].path).read_bytes() == payload[start : start + files[i].length]
        if unselected_bytes:
            assert parts_path.read_bytes() == unselected_bytes
        else:
            assert not parts_path.exists()


def test_layout_for_everything_is_the_plain_layout() -> None:
    geometry, files, _ = _torrent([(100, False), (28, True), (300, False)], 128, 1)
    assert layout_for_selection(geometry, files, None, NAME) == (geometry, files)
    same_geometry, same_files = layout_for_selection(geometry, files, {0, 2}, NAME)
    assert same_geometry is geometry and same_files == files


def test_parts_geometry_places_shared_bytes_and_refuses_unwanted_ones() -> None:
    # Files: a 100, b 200, c 100 bytes; pieces of 128: a [0,100) p0; b [100,300) p0-2; c [300,400) p2-3.
    geometry, _, _ = _torrent([(100, False), (200, False), (100, False)], 128, 2)
    parts = PartsGeometry(geometry, {0})
    assert parts.wanted_ranges == [range(0, 1)]
    assert parts.parts_length == 28  # b's bytes 100..128 share piece 0 with a
    assert parts.file_count == 4 and parts.parts_index == 3
    spans = parts.piece_spans(0)
    assert [(s.file_index, s.file_offset, s.length) for s in spans] == [(0, 0, 100), (3, 0, 28)]
    assert parts.file_pieces(1) == range(0) and parts.file_pieces(3) == range(0, 1)
    with pytest.raises(ValueError, match="no wanted piece"):
        parts.piece_spans(1)
    assert parts.layout_token != b"" and parts.layout_token != PartsGeometry(geometry, {2}).layout_token
    with pytest.raises(ValueError):
        PartsGeometry(geometry, {3})
    with pytest.raises(ValueError):
        PartsGeometry(parts, {0})


def test_selecting_the_middle_file_keeps_both_neighbours_edges() -> None:
    geometry, _, _ = _torrent([(100, False), (200, False), (100, False)], 128, 3)
    parts = PartsGeometry(geometry, {1})  # pieces 0-2 wanted
    # a's 100 bytes (piece 0) and c's bytes 300..384 (piece 2), packed one after the other.
    assert parts.parts_length == 100 + 84
    assert [(s.file_index, s.file_offset, s.length) for s in parts.piece_spans(2)] == [(1, 156, 44), (3, 100, 84)]


async def test_unselected_zero_length_files_are_not_created(tmp_path: Path) -> None:
    geometry, files, _ = _torrent([(0, False), (100, False), (0, False)], 64, 4)
    disk_geometry, disk_files = layout_for_selection(geometry, files, {1, 2}, NAME)
    with trio.fail_after(DEADLINE), Storage(tmp_path, disk_files, disk_geometry) as storage:
        assert isinstance(disk_geometry, PartsGeometry)
        await storage.prepare(wanted=sorted(disk_geometry.selected))
    assert sorted(os.listdir(tmp_path / NAME)) == ["f2.bin"]
