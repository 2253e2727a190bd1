"""Selective download: where the bytes of unselected files go when a wanted piece holds them.

A piece is downloaded and hashed whole, so a piece shared by a selected and an unselected file
brings bytes of the unselected file too. Those bytes must be kept (the piece is re-hashed on
resume and uploaded to peers) but must not appear in the user's folder as a file they did not ask
for. Like other clients, jstorrent keeps them in one hidden file next to the download:

    <out_dir>/.<name>.parts

`PartsGeometry` is a Geometry whose spans say where bytes live on disk rather than in the torrent:
bytes of selected files and pad spans are unchanged; bytes of an unselected file that lie in a
wanted piece map to the parts file, which is one extra file at index `parts_index` (=
the torrent's file count). The parts file holds, in torrent order, exactly those byte ranges,
packed (no holes): at most the first and last piece of each unselected file can be wanted, so
it stays small (at most two pieces per unselected file, usually far less). Bytes of unselected
files in pieces that are not wanted have no place at all: asking for their spans is a
programming error (ValueError), as it is for any range outside a Geometry.

Storage needs no change: give it `layout_for_selection(...)`'s geometry and file list and it
writes, reads and hashes through these spans. Unselected files are never opened, so never
created. Call `Storage.prepare(wanted=sorted(geometry.selected))` so that unselected zero-length
files are not created either.

The parts layout depends on the selection: `layout_token` names it, so a resume state recorded
with another selection does not vouch for the parts file (core/resume.py, `layout_files`).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Sequence

from jstorrent_cli.core.geometry import Geometry, Span
from jstorrent_cli.core.resume import bitfield_from_pieces
from jstorrent_cli.core.selection import piece_is_wanted, wanted_piece_ranges
from jstorrent_cli.tasks.storage import StorageFile

__all__ = ["PartsGeometry", "layout_for_selection", "layout_of", "parts_file_name"]

_LAYOUT_TAG = b"jstorrent parts layout 1:"


def parts_file_name(name: str) -> str:
    """The parts file of torrent `name`, directly in the output folder (hidden by its dot)."""
    return f".{name}.parts"


class PartsGeometry(Geometry):
    """The on-disk layout of a selective download: the torrent's files plus one parts file.

    `selected` holds 0-based file indexes (pad files in it are ignored). Everything about pieces
    and blocks is the torrent's; `file_count`, `file_length`, `is_pad`, `file_pieces` and the
    span methods describe the files on disk (the parts file is the last one).
    """

    __slots__ = (
        "_parts_ends",
        "_parts_offsets",
        "_parts_starts",
        "parts_index",
        "parts_length",
        "selected",
        "wanted_ranges",
    )

    def __init__(self, base: Geometry, selected: Collection[int]) -> None:
        if isinstance(base, PartsGeometry):
            raise ValueError("a PartsGeometry is built on the torrent's own geometry, not on another one")
        count = base.file_count
        super().__init__(
            [base.file_length(i) for i in range(count)],
            [base.is_pad(i) for i in range(count)],
            base.piece_length,
            base.block_size,
        )
        if any(not 0 <= i < count for i in selected):
            raise ValueError("a selected file index is outside the torrent")
        self.selected: frozenset[int] = frozenset(i for i in selected if not base.is_pad(i))
        self.wanted_ranges: list[range] = wanted_piece_ranges(base, self.selected)
        self.parts_index: int = count
        starts: list[int] = []
        ends: list[int] = []
        for index in range(count):
            if index in self.selected or base.is_pad(index) or base.file_length(index) == 0:
                continue
            pieces = base.file_pieces(index)
            file_start = base.file_offset(index)
            file_end = file_start + base.file_length(index)
            for piece in sorted({pieces.start, pieces.stop - 1}):
                if not piece_is_wanted(self.wanted_ranges, piece):
                    continue
                piece_start = base.piece_offset(piece)
                start = max(file_start, piece_start)
                end = min(file_end, piece_start + base.piece_size(piece))
                if ends and ends[-1] == start:
                    ends[-1] = end  # contiguous with the previous range: one stretch of the parts file
                else:
                    starts.append(start)
                    ends.append(end)
        offsets: list[int] = []
        position = 0
        for start, end in zip(starts, ends, strict=True):
            offsets.append(position)
            position += end - start
        self._parts_starts: tuple[int, ...] = tuple(starts)
        self._parts_ends: tuple[int, ...] = tuple(ends)
        self._parts_offsets: tuple[int, ...] = tuple(offsets)
        self.parts_length: int = position

    # --- the files on disk ----------------------------------------------------------------------

    @property
    def file_count(self) -> int:
        return self.parts_index + 1

    def file_length(self, file_index: int) -> int:
        return self.parts_length if file_index == self.parts_index else super().file_length(file_index)

    def is_pad(self, file_index: int) -> bool:
        return False if file_index == self.parts_index else super().is_pad(file_index)

    def file_pieces(self, file_index: int) -> range:
        """Pieces with bytes in the file on disk: none for an unselected file; for the parts file,
        the hull of the pieces it holds bytes of (a superset, which is what resume checks need)."""
        if file_index == self.parts_index:
            if not self._parts_starts:
                return range(0)
            first = self._parts_starts[0] // self.piece_length
            return range(first, (self._parts_ends[-1] - 1) // self.piece_length + 1)
        if file_index not in self.selected:
            return range(0)
        return super().file_pieces(file_index)

    def is_wanted(self, piece: int) -> bool:
        return piece_is_wanted(self.wanted_ranges, piece)

    @property
    def layout_token(self) -> bytes:
        """Names this layout (which files are selected); b"" when no byte goes to the parts file."""
        if not self._parts_starts:
            return b""
        field = bitfield_from_pieces(self.selected, self.parts_index)
        return hashlib.sha1(_LAYOUT_TAG + field).digest()

    # --- spans ------------------------------------------------------------------------------------

    def byte_spans(self, offset: int, length: int) -> list[Span]:
        """Spans on disk of `length` torrent bytes at `offset`; unselected bytes go to the parts file."""
        out: list[Span] = []
        for span in super().byte_spans(offset, length):
            if span.pad or span.file_index in self.selected:
                out.append(span)
                continue
            start = self.file_offset(span.file_index) + span.file_offset
            k = bisect.bisect_right(self._parts_starts, start) - 1
            if k < 0 or start + span.length > self._parts_ends[k]:
                raise ValueError(
                    f"bytes {start}+{span.length} of unselected file {span.file_index} are in no wanted piece"
                )
            where = self._parts_offsets[k] + start - self._parts_starts[k]
            last = out[-1] if out else None
            if last is not None and last.file_index == self.parts_index and last.file_offset + last.length == where:
                out[-1] = Span(self.parts_index, last.file_offset, last.length + span.length)
            else:
                out.append(Span(self.parts_index, where, span.length))
        return out


def layout_for_selection(
    geometry: Geometry, files: Sequence[StorageFile], selected: Collection[int] | None, name: str
) -> tuple[Geometry, list[StorageFile]]:
    """The geometry and file list to give Storage for a download of the `selected` files.

    `None` (or every non-pad file) is the plain layout: `geometry` and `files` unchanged. Otherwise
    a PartsGeometry and `files` plus the parts file `.<name>.parts` in the output folder.
    """
    if len(files) != geometry.file_count:
        raise ValueError("files and geometry describe different torrents")
    if selected is None or all(i in selected or geometry.is_pad(i) for i in range(geometry.file_count)):
        return geometry, list(files)
    parts = PartsGeometry(geometry, selected)
    return parts, [*files, StorageFile((parts_file_name(name),), parts.parts_length)]


def layout_of(geometry: Geometry) -> tuple[bytes, tuple[int, ...]]:
    """The resume-state layout token of a geometry and the files whose bytes depend on it
    (core/resume.trusted_pieces' `layout` and `layout_files`): (b"", ()) for the plain layout."""
    if isinstance(geometry, PartsGeometry):
        return geometry.layout_token, (geometry.parts_index,)
    return b"", ()
