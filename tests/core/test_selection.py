"""--select-file parsing (aria2 syntax, `jstorrent info` indexes) and the pieces a selection needs."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.core.selection import parse_select_file, piece_is_wanted, wanted_piece_ranges, wanted_pieces
from jstorrent_cli.errors import ExitStatus, UsageError


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [
        ("1-3,5", 6, {0, 1, 2, 4}),
        ("2-", 4, {1, 2, 3}),
        (" 1 - 2 , 4 ", 5, {0, 1, 3}),
        ("3", 3, {2}),
        ("1-1", 2, {0}),
        ("2-3,1-2,2", 3, {0, 1, 2}),  # overlaps are fine
        ("5-", 5, {4}),
    ],
)
def test_parse_accepts(text: str, count: int, expected: set[int]) -> None:
    assert parse_select_file(text, count) == frozenset(expected)


@pytest.mark.parametrize(
    ("text", "count", "needle"),
    [
        ("0", 3, "start at 1"),
        ("0-2", 3, "start at 1"),
        ("4", 3, "past the last file (3)"),
        ("1-9", 3, "past the last file"),
        ("3-1", 3, "reversed range"),
        ("1,,2", 3, "empty item"),
        ("1,", 3, "empty item"),
        ("", 3, "empty selection"),
        ("  ", 3, "empty selection"),
        ("a", 3, "not an index"),
        ("-2", 3, "not an index"),
        ("1-2-3", 3, "not an index"),
        ("+1", 3, "not an index"),
        ("1.5", 3, "not an index"),
        ("١", 3, "not an index"),  # a non-ASCII digit is not an index
    ],
)
def test_parse_refuses(text: str, count: int, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_select_file(text, count)
    assert needle in str(info.value)
    assert info.value.exit_status == ExitStatus.BAD_OPTION == 28


def test_pad_files_are_skipped_by_ranges_and_refused_alone() -> None:
    pads = [False, True, False, True]
    assert parse_select_file("1-4", 4, pads) == frozenset({0, 2})
    assert parse_select_file("2-", 4, pads) == frozenset({2})
    with pytest.raises(UsageError, match="pad file"):
        parse_select_file("2", 4, pads)
    with pytest.raises(UsageError, match="selects no file"):
        parse_select_file("4-4", 4, pads)


def _model(text: str, count: int) -> set[int]:
    """An independent reading of the syntax for well-formed input."""
    out: set[int] = set()
    for item in text.split(","):
        a, dash, b = item.partition("-")
        lo = int(a)
        hi = (int(b) if b.strip() else count) if dash else lo
        out.update(range(lo - 1, hi))
    return out


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40).flatmap(lambda n: st.tuples(st.just(n), st.lists(
    st.tuples(st.integers(1, n), st.integers(0, n), st.sampled_from(["", " "]),
              st.sampled_from(["one", "closed", "open"])),
    min_size=1, max_size=6))))
def test_parse_matches_model(case: tuple[int, list[tuple[int, int, str, str]]]) -> None:
    count, items = case
    parts = []
    for lo, extra, space, kind in items:
        hi = min(count, lo + extra)
        if kind == "one":
            parts.append(f"{space}{lo}{space}")
        elif kind == "closed":
            parts.append(f"{lo}{space}-{space}{hi}")
        else:
            parts.append(f"{space}{lo}-{space}")
    text = ",".join(parts)
    assert parse_select_file(text, count) == frozenset(_model(text, count))


files_strategy = st.lists(
    st.tuples(st.one_of(st.just(0), st.integers(1, 5000)), st.booleans()), min_size=1, max_size=12
).filter(lambda fs: sum(n for n, _ in fs) > 0)


@settings(max_examples=200, deadline=None)
@given(files_strategy, st.sampled_from([512, 1000, 1024, 4096]), st.data())
def test_wanted_pieces_equal_brute_force(files: list[tuple[int, bool]], piece_length: int, data: st.DataObject) -> None:
    geometry = Geometry.from_files(files, piece_length, block_size=256)
    selected = data.draw(st.sets(st.integers(0, len(files) - 1)))
    # Brute force from the spans: a piece is wanted iff one of its spans is a non-pad selected file.
    expected = {
        p for p in range(geometry.piece_count)
        if any(s.file_index in selected and not s.pad for s in geometry.piece_spans(p))
    }
    assert wanted_pieces(geometry, selected) == expected
    ranges = wanted_piece_ranges(geometry, selected)
    # Sorted, disjoint and not touching (merged), and the membership test agrees with the set.
    assert all(a.stop < b.start for a, b in itertools.pairwise(ranges))
    assert all(len(r) for r in ranges)
    assert [p for p in range(geometry.piece_count) if piece_is_wanted(ranges, p)] == sorted(expected)


def test_selecting_a_small_file_wants_the_shared_pieces_only() -> None:
    # Files of 300, 500, 300 bytes, pieces of 400: index 1 is in pieces 0-1, index 2 in piece 2 only.
    geometry = Geometry.from_files([(300, False), (500, False), (300, False)], 400, block_size=100)
    assert wanted_pieces(geometry, {1}) == {0, 1}
    assert wanted_pieces(geometry, {2}) == {2}
    assert wanted_pieces(geometry, set()) == frozenset()
