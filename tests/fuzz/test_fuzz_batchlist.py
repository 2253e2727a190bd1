"""Hostile download lists: core/batchlist.parse_batch_list gives items or its own BatchListError, nothing
else, for arbitrary bytes, arbitrary text and mutations of valid lists; a valid list round-trips."""

from __future__ import annotations

import dataclasses
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core.batchlist import BatchItem, BatchListError, parse_batch_list

EXAMPLES = int(os.environ.get("JSTORRENT_FUZZ_EXAMPLES", "200"))
# Small caps, so the size checks are reached too.
CONFIG = dataclasses.replace(DEFAULT_CONFIG, batch_list_max_bytes=4096, batch_list_max_line=200,
                             batch_list_max_items=20)


def _parse(data: bytes) -> list[BatchItem] | None:
    try:
        items = parse_batch_list(data, name="fuzz", config=CONFIG)
    except BatchListError as err:
        assert str(err).startswith("fuzz"), err  # every message names the list
        return None
    assert len(items) <= CONFIG.batch_list_max_items
    for item in items:
        assert item.source and item.source == item.source.strip() and "\x00" not in item.source
        assert not item.source.startswith("#") and item.line >= 1
        assert item.dir is None or (item.dir and item.dir == item.dir.strip())
    return items


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    _parse(data)


LINE = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.sampled_from(["a.torrent", "  dir=/x", "\tdir = y ", "# c", "", "  ", "  bogus=1", "  dir=", "magnet:?xt=1",
                     "\r", "\ufeffb.torrent", "  dir"]),
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(LINE, max_size=30), st.sampled_from(["\n", "\r\n"]))
def test_arbitrary_text_lines(lines: list[str], end: str) -> None:
    _parse(end.join(lines).encode("utf-8", "surrogatepass"))


SOURCE = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=30)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.tuples(SOURCE.filter(lambda s: not s.startswith(("#", "\ufeff")) and s.strip() == s),
                          st.none() | SOURCE.filter(lambda s: s.strip() == s)), max_size=10),
       st.integers(0, 10_000), st.binary(min_size=1, max_size=3))
def test_valid_lists_round_trip_and_mutations_stay_safe(entries: list[tuple[str, str | None]], where: int,
                                                        junk: bytes) -> None:
    lines: list[str] = []
    for source, folder in entries:
        lines.append(source)
        if folder is not None:
            lines.append(f"  dir={folder}")
    data = "\n".join(lines).encode()
    items = _parse(data)
    if len(data) <= CONFIG.batch_list_max_bytes and all(len(x.encode()) <= CONFIG.batch_list_max_line for x in lines):
        assert items is not None
        assert [(i.source, i.dir) for i in items] == entries
    at = where % (len(data) + 1)
    _parse(data[:at] + junk + data[at:])
