"""Geometry against libtorrent's own file layout, plus the invariants a writer relies on."""

from __future__ import annotations

from dataclasses import dataclass

import libtorrent as lt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import BLOCK_SIZE, KiB, MiB
from jstorrent_cli.core.bencode import Value, encode
from jstorrent_cli.core.geometry import Geometry, Span

# Piece lengths 16 KiB..16 MiB: every power of two plus a few odd multiples of 16 KiB.
PIECE_LENGTHS = [16 * KiB << k for k in range(11)] + [48 * KiB, 80 * KiB, 16 * KiB * 7 * 11]


@dataclass(frozen=True)
class Layout:
    files: list[tuple[int, bool]]
    piece_length: int

    @property
    def total(self) -> int:
        return sum(n for n, _ in self.files)


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    piece_length = draw(st.sampled_from(PIECE_LENGTHS))
    count = draw(st.integers(1, 12))
    files: list[tuple[int, bool]] = []
    offset = 0
    for _ in range(count):
        kind = draw(st.sampled_from(["zero", "small", "odd", "pieces", "align-pad", "odd-pad", "zero-pad"]))
        if kind == "zero":
            length, pad = 0, False
        elif kind == "small":
            length, pad = draw(st.integers(1, 100)), False
        elif kind == "odd":
            length, pad = draw(st.integers(1, 3 * piece_length)), False
        elif kind == "pieces":
            length = draw(st.integers(1, 3)) * piece_length + draw(st.sampled_from([-1, 0, 1]))
            pad = False
        elif kind == "align-pad":  # what BEP 47 creators do: pad to the next piece boundary
            length, pad = -offset % piece_length, True
        elif kind == "odd-pad":
            length, pad = draw(st.integers(1, 2 * piece_length)), True
        else:
            length, pad = 0, True
        files.append((length, pad))
        offset += length
    if offset == 0:  # libtorrent refuses an empty torrent
        files.append((draw(st.integers(1, 2 * piece_length)), False))
    return Layout(files, piece_length)


def lt_torrent(layout: Layout) -> lt.torrent_info:
    """A v1 multi-file torrent with these files (pad files flagged `attr: p`), parsed by libtorrent."""
    entries: list[Value] = []
    for i, (length, pad) in enumerate(layout.files):
        entry: dict[bytes, Value] = {b"length": length, b"path": [b"f%d" % i]}
        if pad:
            entry[b"attr"] = b"p"
            entry[b"path"] = [b".pad", b"%d" % i]
        entries.append(entry)
    pieces = -(-layout.total // layout.piece_length)
    info: dict[bytes, Value] = {
        b"name": b"t",
        b"piece length": layout.piece_length,
        b"pieces": b"\0" * 20 * pieces,
        b"files": entries,
    }
    return lt.torrent_info(encode({b"info": info}))


def lt_file_storage(layout: Layout) -> lt.file_storage:
    fs = lt.file_storage()
    for i, (length, pad) in enumerate(layout.files):
        flags = lt.file_storage.flag_pad_file if pad else 0
        fs.add_file(f"t/f{i}", length, flags)
    fs.set_piece_length(layout.piece_length)
    fs.set_num_pieces(-(-fs.total_size() // layout.piece_length))
    return fs


def ours(layout: Layout) -> Geometry:
    return Geometry.from_files(layout.files, layout.piece_length)


def triples(spans: list[Span]) -> list[tuple[int, int, int]]:
    return [(s.file_index, s.file_offset, s.length) for s in spans]


def lt_triples(ti: lt.torrent_info, piece: int, begin: int, length: int) -> list[tuple[int, int, int]]:
    return [(s.file_index, s.offset, s.size) for s in ti.map_block(piece, begin, length)]


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_layout_matches_libtorrent_file_storage(layout: Layout) -> None:
    fs = lt_file_storage(layout)
    g = ours(layout)
    assert g.total_length == fs.total_size()
    assert g.piece_count == fs.num_pieces()
    assert [g.piece_size(p) for p in range(g.piece_count)] == [fs.piece_size(p) for p in range(fs.num_pieces())]
    assert [g.file_offset(i) for i in range(g.file_count)] == [fs.file_offset(i) for i in range(fs.num_files())]
    for i in range(g.file_count):
        assert g.is_pad(i) == bool(fs.file_flags(i) & lt.file_storage.flag_pad_file)
        if g.file_length(i) > 0:
            assert g.file_pieces(i).start == fs.piece_index_at_file(i)


@settings(max_examples=200, deadline=None)
@given(layouts(), st.data())
def test_piece_spans_match_libtorrent_map_block(layout: Layout, data: st.DataObject) -> None:
    ti = lt_torrent(layout)
    g = ours(layout)
    assert g.piece_count == ti.num_pieces()
    pieces = range(g.piece_count)
    sample = (
        pieces
        if len(pieces) <= 8
        else sorted({0, len(pieces) - 1, *data.draw(st.lists(st.sampled_from(pieces), max_size=6))})
    )
    for piece in sample:
        assert g.piece_size(piece) == ti.piece_size(piece)
        spans = g.piece_spans(piece)
        assert triples(spans) == lt_triples(ti, piece, 0, ti.piece_size(piece))
        # pad spans are the ones libtorrent flags as pad files, and they are counted in the piece
        assert [s.pad for s in spans] == [g.is_pad(s.file_index) for s in spans]
        assert sum(s.length for s in spans) == g.piece_size(piece)
        assert all(s.length > 0 for s in spans)


@settings(max_examples=200, deadline=None)
@given(layouts(), st.data())
def test_block_spans_match_libtorrent_map_block(layout: Layout, data: st.DataObject) -> None:
    ti = lt_torrent(layout)
    g = ours(layout)
    for _ in range(5):
        piece = data.draw(st.integers(0, g.piece_count - 1))
        size = g.piece_size(piece)
        # a real block, and an arbitrary range inside the piece
        block = data.draw(st.integers(0, g.blocks_in_piece(piece) - 1))
        begin, length = g.block_begin(block), g.block_length(piece, block)
        assert triples(g.block_spans(piece, begin, length)) == lt_triples(ti, piece, begin, length)
        begin = data.draw(st.integers(0, size - 1))
        length = data.draw(st.integers(1, size - begin))
        assert triples(g.block_spans(piece, begin, length)) == lt_triples(ti, piece, begin, length)


@settings(max_examples=200, deadline=None)
@given(layouts(), st.data())
def test_file_lookup_matches_libtorrent(layout: Layout, data: st.DataObject) -> None:
    fs = lt_file_storage(layout)
    g = ours(layout)
    for _ in range(10):
        offset = data.draw(st.integers(0, g.total_length - 1))
        index = g.file_at_offset(offset)
        assert index == fs.file_index_at_offset(offset)
        assert g.file_offset(index) <= offset < g.file_offset(index) + g.file_length(index)


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_blocks_tile_each_piece_and_pieces_tile_each_file(layout: Layout) -> None:
    g = ours(layout)
    covered: dict[int, list[tuple[int, int]]] = {}
    for piece in range(g.piece_count):
        lengths = [g.block_length(piece, b) for b in range(g.blocks_in_piece(piece))]
        assert sum(lengths) == g.piece_size(piece)
        assert all(n == BLOCK_SIZE for n in lengths[:-1]) and 0 < lengths[-1] <= BLOCK_SIZE
        # the blocks' spans, concatenated, are the piece's spans cut at block boundaries
        joined: list[tuple[int, int, int]] = []
        for b, n in enumerate(lengths):
            assert g.valid_block(piece, g.block_begin(b), n)
            assert not g.valid_block(piece, g.block_begin(b), n + 1)
            for s in g.block_spans(piece, g.block_begin(b), n):
                if joined and joined[-1][0] == s.file_index and sum(joined[-1][1:]) == s.file_offset:
                    joined[-1] = (s.file_index, joined[-1][1], joined[-1][2] + s.length)
                else:
                    joined.append((s.file_index, s.file_offset, s.length))
        assert joined == triples(g.piece_spans(piece))
        for s in g.piece_spans(piece):
            covered.setdefault(s.file_index, []).append((s.file_offset, s.length))
            assert piece in g.file_pieces(s.file_index)
    # every byte of every non-empty file is in exactly one piece span; zero-length files in none
    for i in range(g.file_count):
        runs = sorted(covered.get(i, []))
        position = 0
        for start, length in runs:
            assert start == position
            position += length
        assert position == g.file_length(i)
        assert len(g.file_pieces(i)) == len(runs)


def test_short_last_piece_and_short_last_block() -> None:
    g = Geometry([BLOCK_SIZE * 5 + 7], [False], 2 * BLOCK_SIZE)
    assert g.piece_count == 3
    assert [g.piece_size(p) for p in range(3)] == [2 * BLOCK_SIZE, 2 * BLOCK_SIZE, BLOCK_SIZE + 7]
    assert g.blocks_in_piece(2) == 2
    assert g.block_length(2, 1) == 7
    assert not g.valid_block(2, BLOCK_SIZE, BLOCK_SIZE)
    assert not g.valid_block(3, 0, 7)


def test_zero_length_files_have_no_spans_and_no_pieces() -> None:
    g = Geometry([0, 5, 0, 0, 5, 0], [False] * 6, 16 * KiB)
    assert g.piece_spans(0) == [Span(1, 0, 5), Span(4, 0, 5)]
    assert [len(g.file_pieces(i)) for i in range(6)] == [0, 1, 0, 0, 1, 0]


def test_largest_piece_length() -> None:
    g = Geometry([16 * MiB + 1, 3], [False, True], 16 * MiB)
    assert g.piece_count == 2
    assert g.piece_spans(1) == [Span(0, 16 * MiB, 1), Span(1, 0, 3, pad=True)]
    assert g.blocks_in_piece(0) == 16 * MiB // BLOCK_SIZE


def test_out_of_range_arguments_raise() -> None:
    g = Geometry([100], [False], 16 * KiB)
    with pytest.raises(ValueError):
        g.piece_spans(1)
    with pytest.raises(ValueError):
        g.block_spans(0, 90, 11)
    with pytest.raises(ValueError):
        g.file_at_offset(100)
    with pytest.raises(ValueError):
        Geometry([1], [False, True], 16 * KiB)
