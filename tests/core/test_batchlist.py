"""The download list of `get -i` (core/batchlist.py) and the batch's exit status rule."""

from __future__ import annotations

import dataclasses

import pytest

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core.batchlist import (
    STATUS_DUPLICATE,
    STATUS_ERROR,
    STATUS_INTERRUPTED,
    STATUS_OK,
    BatchItem,
    BatchListError,
    ItemResult,
    batch_exit_status,
    parse_batch_list,
)
from jstorrent_cli.errors import UsageError


def test_sources_options_comments_and_blank_lines() -> None:
    text = ("\ufeff# my list\r\n"
            "a.torrent\r\n"
            "\r\n"
            "  dir = /srv/one two \r\n"
            "   # an indented comment\n"
            "b c.torrent   \n"
            "magnet:?xt=urn:btih:abc\n"
            "\tdir=x\n")
    assert parse_batch_list(text.encode()) == [
        BatchItem("a.torrent", 2, "/srv/one two"),
        BatchItem("b c.torrent", 6, None),
        BatchItem("magnet:?xt=urn:btih:abc", 7, "x"),
    ]
    assert parse_batch_list(b"") == [] and parse_batch_list(b"# nothing\n\n   \n") == []
    assert BatchItem("MAGNET:?xt=1", 1).is_magnet and not BatchItem("magnet.torrent", 1).is_magnet


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("  dir=/x\na.torrent\n", 1, "no download above it"),
        ("a.torrent\n  dri=/x\n", 2, "unknown option 'dri'"),
        ("a.torrent\n\n  dir\n", 3, "not an option"),
        ("a.torrent\n  dir=\n", 2, "empty value"),
        ("a.torrent\n  dir=/a\n  dir=/b\n", 3, "given twice"),
        ("a.torrent\nb\x00.torrent\n", 2, "NUL"),
        ("ok.torrent\n\n\n\xff\xfe.torrent\n", 4, "UTF-8"),
    ],
)
def test_bad_lists_name_the_line(text: str, line: int, words: str) -> None:
    data = text.encode("latin-1") if "\xff" in text else text.encode()
    with pytest.raises(BatchListError) as info:
        parse_batch_list(data, name="list.txt")
    assert f"list.txt line {line}:" in str(info.value) and words in str(info.value)
    assert isinstance(info.value, UsageError) and info.value.exit_status == 28


def test_caps_on_size_line_and_items() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, batch_list_max_bytes=100, batch_list_max_line=20,
                                 batch_list_max_items=3)
    with pytest.raises(BatchListError, match="more than a download list may hold"):
        parse_batch_list(b"a\n" * 51, config=config)
    with pytest.raises(BatchListError, match="line 2: longer than 20 bytes"):
        parse_batch_list(b"a\n" + b"b" * 21, config=config)
    assert len(parse_batch_list(b"a\nb\nc\n", config=config)) == 3
    with pytest.raises(BatchListError, match="line 4: more than 3 downloads"):
        parse_batch_list(b"a\nb\nc\nd\n", config=config)


def _result(n: int, status: str, exit_status: int) -> ItemResult:
    return ItemResult(id=n, source=f"{n}.torrent", status=status, exit_status=exit_status, error=None, name=None,
                      info_hash=None, path="", average_rate=0.0, bytes=0, total_bytes=0, verified_bytes=0)


def test_exit_status_is_that_of_the_last_failed_item() -> None:
    ok, dup = _result(1, STATUS_OK, 0), _result(4, STATUS_DUPLICATE, 0)
    assert batch_exit_status([ok, dup]) == 0
    failures = [_result(2, STATUS_ERROR, 25), _result(3, STATUS_ERROR, 3), _result(5, STATUS_ERROR, 2)]
    # Order of completion does not matter: the position in the list does.
    assert batch_exit_status([failures[2], ok, failures[0], dup, failures[1]]) == 2
    assert batch_exit_status([ok, failures[0], failures[1]]) == 3
    assert batch_exit_status([ok, _result(2, STATUS_INTERRUPTED, 130)]) == 130
    assert batch_exit_status([ok, dup], interrupted=True) == 130
