"""Piece and block arithmetic: where each byte of the torrent lives in its files.

A torrent is one long byte string cut into pieces of `piece_length` (the last one shorter) and
stored as the concatenation of its files. A piece, or a block inside it, maps onto a list of spans
`(file_index, file_offset, length)` that may cross file boundaries.

BEP 47 pad files count in the byte string (their bytes are zeros and are hashed) but are never
written to disk: their spans carry `pad=True` so the writer skips them and the hasher feeds zeros.
Zero-length files occupy no bytes and so never appear in a span; storage creates them empty.

Lookups bisect on the start offsets of the non-empty files, so each costs O(log files) plus the
number of spans returned. The inputs are plain numbers (what core/metainfo.py parsed and
validated); a call with arguments outside the torrent is a programming error and raises ValueError.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Sequence

from jstorrent_cli.config import BLOCK_SIZE


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    """`length` bytes at `file_offset` of file `file_index`; `pad` marks a BEP 47 pad file."""

    file_index: int
    file_offset: int
    length: int
    pad: bool = False


class Geometry:
    """The layout of one torrent's bytes over its pieces, blocks and files."""

    __slots__ = (
        "_file_lengths",
        "_file_offsets",
        "_nonempty",
        "_pad_flags",
        "_starts",
        "block_size",
        "piece_count",
        "piece_length",
        "total_length",
    )

    def __init__(
        self,
        file_lengths: Sequence[int],
        pad_flags: Sequence[bool],
        piece_length: int,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        if len(file_lengths) != len(pad_flags):
            raise ValueError("file_lengths and pad_flags differ in length")
        if piece_length <= 0 or block_size <= 0:
            raise ValueError("piece_length and block_size must be positive")
        if any(length < 0 for length in file_lengths):
            raise ValueError("a file length is negative")
        self._file_lengths: tuple[int, ...] = tuple(file_lengths)
        self._pad_flags: tuple[bool, ...] = tuple(bool(p) for p in pad_flags)
        offsets: list[int] = []
        position = 0
        for length in self._file_lengths:
            offsets.append(position)
            position += length
        self._file_offsets: tuple[int, ...] = tuple(offsets)
        # Non-empty files only, in order: their start offsets are strictly increasing, so bisect
        # finds the one file that holds any byte.
        self._nonempty: tuple[int, ...] = tuple(i for i, n in enumerate(self._file_lengths) if n > 0)
        self._starts: tuple[int, ...] = tuple(self._file_offsets[i] for i in self._nonempty)
        self.total_length: int = position
        self.piece_length: int = piece_length
        self.block_size: int = block_size
        self.piece_count: int = -(-position // piece_length)

    @classmethod
    def from_files(cls, files: Iterable[tuple[int, bool]], piece_length: int, block_size: int = BLOCK_SIZE) -> Geometry:
        """Build from `(length, pad)` pairs, one per file in torrent order."""
        pairs = list(files)
        return cls([n for n, _ in pairs], [p for _, p in pairs], piece_length, block_size)

    # --- files ----------------------------------------------------------------------------------

    @property
    def file_count(self) -> int:
        return len(self._file_lengths)

    def file_length(self, file_index: int) -> int:
        return self._file_lengths[file_index]

    def file_offset(self, file_index: int) -> int:
        """Offset of the file's first byte in the torrent's byte string."""
        return self._file_offsets[file_index]

    def is_pad(self, file_index: int) -> bool:
        return self._pad_flags[file_index]

    def file_at_offset(self, offset: int) -> int:
        """Index of the (non-empty) file holding the byte at `offset` of the torrent."""
        if not 0 <= offset < self.total_length:
            raise ValueError(f"offset {offset} outside the torrent (0..{self.total_length})")
        return self._nonempty[bisect.bisect_right(self._starts, offset) - 1]

    def file_pieces(self, file_index: int) -> range:
        """The pieces holding at least one byte of the file (empty for a zero-length file)."""
        start = self._file_offsets[file_index]
        length = self._file_lengths[file_index]
        first = start // self.piece_length
        if length == 0:
            return range(first, first)
        return range(first, (start + length - 1) // self.piece_length + 1)

    # --- pieces and blocks ----------------------------------------------------------------------

    def _check_piece(self, piece: int) -> None:
        if not 0 <= piece < self.piece_count:
            raise ValueError(f"piece {piece} outside 0..{self.piece_count - 1}")

    def piece_offset(self, piece: int) -> int:
        """Offset of the piece's first byte in the torrent's byte string."""
        self._check_piece(piece)
        return piece * self.piece_length

    def piece_size(self, piece: int) -> int:
        """Bytes in the piece: `piece_length`, except a shorter last piece."""
        self._check_piece(piece)
        return min(self.piece_length, self.total_length - piece * self.piece_length)

    def blocks_in_piece(self, piece: int) -> int:
        return -(-self.piece_size(piece) // self.block_size)

    def block_length(self, piece: int, block_index: int) -> int:
        """Bytes in block `block_index` of the piece (the last block of a piece may be short)."""
        size = self.piece_size(piece)
        begin = block_index * self.block_size
        if not 0 <= begin < size:
            raise ValueError(f"block {block_index} outside piece {piece}")
        return min(self.block_size, size - begin)

    def block_begin(self, block_index: int) -> int:
        """Offset of block `block_index` inside its piece."""
        return block_index * self.block_size

    def valid_block(self, piece: int, begin: int, length: int) -> bool:
        """True if `(piece, begin, length)` is exactly one of the piece's blocks."""
        if not 0 <= piece < self.piece_count or begin < 0 or begin % self.block_size:
            return False
        size = self.piece_size(piece)
        return begin < size and length == min(self.block_size, size - begin)

    def piece_spans(self, piece: int) -> list[Span]:
        """The file spans of the whole piece, in order, pad spans included."""
        return self.byte_spans(self.piece_offset(piece), self.piece_size(piece))

    def block_spans(self, piece: int, begin: int, length: int) -> list[Span]:
        """The file spans of `length` bytes at `begin` inside the piece (any range in the piece)."""
        size = self.piece_size(piece)
        if begin < 0 or length < 0 or begin + length > size:
            raise ValueError(f"range {begin}+{length} outside piece {piece} of {size} bytes")
        return self.byte_spans(piece * self.piece_length + begin, length)

    def byte_spans(self, offset: int, length: int) -> list[Span]:
        """The file spans of `length` bytes at `offset` of the torrent's byte string."""
        if offset < 0 or length < 0 or offset + length > self.total_length:
            raise ValueError(f"range {offset}+{length} outside the torrent of {self.total_length} bytes")
        spans: list[Span] = []
        if length == 0:
            return spans
        k = bisect.bisect_right(self._starts, offset) - 1
        end = offset + length
        while offset < end:
            index = self._nonempty[k]
            file_start = self._starts[k]
            take = min(end, file_start + self._file_lengths[index]) - offset
            spans.append(Span(index, offset - file_start, take, self._pad_flags[index]))
            offset += take
            k += 1
        return spans
