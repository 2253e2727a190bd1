"""File selection: aria2's `--select-file` syntax, and the pieces a selection needs.

Indexes are the ones `jstorrent info` prints: 1-based positions in the torrent's file list, pad
files included in the numbering (BEP 47 pad files keep their index but are never listed, so a user
never types one). The text is a comma-separated list of items, each one index `5`, a closed range
`1-3`, or an open range `2-` (from 2 to the last file). Spaces around numbers, dashes and commas
are ignored. Overlapping items are fine. A range silently skips pad files; naming a pad file alone
is an error, as is 0, an index past the last file, a reversed range `5-3`, an empty item (`1,,2`)
or anything that is not a number. Every such error is one UsageError (exit 28) naming the item.

`parse_select_file` returns 0-based indexes into the torrent's file list (what Geometry and
Storage use). A piece is wanted when it holds at least one byte of a selected file; pad files and
unselected files never make a piece wanted, zero-length files hold no piece.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Sequence

from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.errors import UsageError

__all__ = ["parse_select_file", "piece_is_wanted", "wanted_piece_ranges", "wanted_pieces"]

_ITEM_SEPARATOR = ","
_RANGE_SEPARATOR = "-"


def _number(text: str, item: str, file_count: int) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise UsageError(f"--select-file: {item.strip()!r} is not an index or a range such as 1-3")
    value = int(text)
    if value == 0:
        raise UsageError(f"--select-file: indexes start at 1 ({item.strip()!r}); see 'jstorrent info'")
    if value > file_count:
        raise UsageError(
            f"--select-file: index {value} in {item.strip()!r} is past the last file ({file_count}); "
            "see 'jstorrent info'"
        )
    return value


def parse_select_file(text: str, file_count: int, pad_flags: Sequence[bool] | None = None) -> frozenset[int]:
    """The 0-based file indexes selected by aria2-style `text` ("1-3,5", "2-") out of `file_count`.

    `pad_flags[i]` marks file i (0-based) as a BEP 47 pad file: ranges skip pad files, naming one
    alone is an error. Raises UsageError for any malformed item or an empty selection.
    """
    if pad_flags is not None and len(pad_flags) != file_count:
        raise ValueError("pad_flags must have one flag per file")
    pads = pad_flags if pad_flags is not None else [False] * file_count
    if not text.strip():
        raise UsageError("--select-file: empty selection (give indexes such as 1-3,5)")
    selected: set[int] = set()
    for item in text.split(_ITEM_SEPARATOR):
        if not item.strip():
            raise UsageError(f"--select-file: empty item in {text.strip()!r}")
        if _RANGE_SEPARATOR in item:
            low_text, _, high_text = item.partition(_RANGE_SEPARATOR)
            low = _number(low_text, item, file_count)
            high = file_count if not high_text.strip() else _number(high_text, item, file_count)
            if high < low:
                raise UsageError(f"--select-file: reversed range {item.strip()!r} (write it low-high)")
            selected.update(i for i in range(low - 1, high) if not pads[i])
        else:
            index = _number(item, item, file_count) - 1
            if pads[index]:
                raise UsageError(f"--select-file: index {index + 1} is a pad file, not a file of the torrent")
            selected.add(index)
    if not selected:
        raise UsageError(f"--select-file: {text.strip()!r} selects no file (only pad files)")
    return frozenset(selected)


def wanted_piece_ranges(geometry: Geometry, selected: Collection[int]) -> list[range]:
    """The pieces holding a byte of a selected (non-pad) file, as sorted, disjoint, merged ranges.

    O(selected files log selected files): no per-piece work, so a 4M-piece torrent costs nothing.
    """
    spans = sorted(
        (r.start, r.stop)
        for r in (geometry.file_pieces(i) for i in selected if not geometry.is_pad(i))
        if len(r)
    )
    merged: list[range] = []
    for start, stop in spans:
        if merged and start <= merged[-1].stop:
            last = merged[-1]
            merged[-1] = range(last.start, max(last.stop, stop))
        else:
            merged.append(range(start, stop))
    return merged


def piece_is_wanted(ranges: Sequence[range], piece: int) -> bool:
    """Whether `piece` lies in one of `ranges` (as returned by wanted_piece_ranges): O(log ranges)."""
    k = bisect.bisect_right(ranges, piece, key=lambda r: r.start) - 1
    return k >= 0 and piece in ranges[k]


def wanted_pieces(geometry: Geometry, selected: Collection[int]) -> frozenset[int]:
    """The set of pieces holding a byte of a selected file (see wanted_piece_ranges)."""
    return frozenset(p for r in wanted_piece_ranges(geometry, selected) for p in r)
