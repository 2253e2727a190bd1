"""libtorrent's own corpus of real and malformed .torrent files, judged by libtorrent itself.

For every file in tests/data/torrents the real libtorrent package decides accept or reject, and:
- a v1 or hybrid file it accepts, we accept with the same v1 infohash, file count (pad files
  included), piece length, piece count and total size;
- a v2-only file it accepts, we refuse with a MetainfoError that says v2-only;
- a file it rejects, we refuse with a MetainfoError (BencodeError is one);
- nothing raises anything else, and no resulting path leaves the output folder.
MANIFEST.tsv (what libtorrent's tests expect) is only cross-checked against libtorrent's verdict.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import libtorrent as lt
import pytest

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core.metainfo import Torrent, is_safe_relative, parse
from jstorrent_cli.errors import BencodeError, MetainfoError

CORPUS = Path(__file__).resolve().parent.parent / "data" / "torrents"
FILES = sorted(CORPUS.glob("*.torrent"))
CORPUS_SIZE = 108  # files in libtorrent's corpus as copied here

# Names over Config.max_path_element_bytes: libtorrent cuts them at 240 bytes plus the extension
# (249 here), we cut them to 240 bytes in all so a ".N" rename still fits the usual 255-byte limit.
CUT_DIFFERENTLY = {"long_name.torrent"}


@dataclass(frozen=True)
class LibtorrentVerdict:
    accepted: bool
    v1_hex: str | None = None  # None for a v2-only torrent
    num_files: int = 0
    piece_length: int = 0
    num_pieces: int = 0
    total_size: int = 0
    name: str = ""
    paths: tuple[str, ...] = ()
    pad_flags: tuple[bool, ...] = ()


def libtorrent_verdict(data: bytes) -> LibtorrentVerdict:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the newer API only: no deprecated call sneaks in
        try:
            ti = lt.load_torrent_buffer(data).ti
        except RuntimeError:
            return LibtorrentVerdict(accepted=False)
        assert ti is not None
        layout = ti.layout()
        hashes = ti.info_hashes()
        return LibtorrentVerdict(
            accepted=True,
            v1_hex=str(hashes.v1) if hashes.has_v1() else None,
            num_files=ti.num_files(),
            piece_length=ti.piece_length(),
            num_pieces=ti.num_pieces(),
            total_size=ti.total_size(),
            name=ti.name(),
            paths=tuple(layout.file_path(i) for i in range(layout.num_files())),
            pad_flags=tuple(
                bool(layout.file_flags(i) & lt.file_storage.flag_pad_file) for i in range(layout.num_files())
            ),
        )


def manifest() -> dict[str, dict[str, str]]:
    with (CORPUS / "MANIFEST.tsv").open(newline="", encoding="utf-8") as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


def assert_paths_stay_inside(torrent: Torrent, root: Path) -> None:
    base = os.path.realpath(root)
    for entry in torrent.files:
        assert is_safe_relative(entry.path), entry.path
        joined = os.path.normpath(os.path.join(base, *entry.path))
        assert os.path.commonpath([base, joined]) == base, entry.path
        assert joined != base
        real = os.path.realpath(joined)
        assert os.path.commonpath([base, real]) == base, entry.path


def test_corpus_is_complete() -> None:
    assert len(FILES) == CORPUS_SIZE
    assert set(manifest()) == {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_corpus_file(path: Path, tmp_path: Path) -> None:
    data = path.read_bytes()
    verdict = libtorrent_verdict(data)
    row = manifest()[path.name]
    # Cross-check only: the verdict that counts is the real library's, computed above.
    assert row["libtorrent_verdict"] == ("accept" if verdict.accepted else "reject")

    try:
        torrent: Torrent | None = parse(data)
        error: MetainfoError | None = None
    except MetainfoError as err:  # anything else fails the test with its traceback
        torrent, error = None, err

    if error is not None:
        message = str(error)
        assert message and "\n" not in message
        if isinstance(error, BencodeError):
            assert 0 <= error.offset <= len(data)

    if verdict.accepted and verdict.v1_hex is None:
        assert error is not None and "v2-only" in str(error), path.name
        return
    if not verdict.accepted:
        assert error is not None, f"{path.name}: libtorrent rejects it, we accepted it"
        return

    assert torrent is not None, f"{path.name}: libtorrent accepts it, we raised {error}"
    assert torrent.info_hash_hex == verdict.v1_hex
    assert len(torrent.files) == verdict.num_files
    assert torrent.piece_length == verdict.piece_length
    assert torrent.piece_count == verdict.num_pieces
    assert torrent.total_length == verdict.total_size
    if path.name in CUT_DIFFERENTLY:
        assert len(torrent.name.encode()) == DEFAULT_CONFIG.max_path_element_bytes < len(verdict.name.encode())
        assert verdict.name.endswith(torrent.name[-9:])  # both keep the extension ".23456789"
    else:
        assert torrent.name == verdict.name
    if not torrent.is_hybrid and path.name not in CUT_DIFFERENTLY:
        # Same sanitised paths as libtorrent, except where we renamed a duplicate (libtorrent's
        # layout keeps duplicates; it renames them later, when the torrent is added).
        assert [f.pad for f in torrent.files] == list(verdict.pad_flags)
        for ours, theirs in zip(torrent.files, verdict.paths, strict=True):
            if verdict.paths.count(theirs) == 1 and not ours.pad:
                assert "/".join(ours.path) == theirs, path.name
    assert row["format"] in {"v1", "hybrid"}
    assert torrent.is_hybrid == (row["format"] == "hybrid")
    assert_paths_stay_inside(torrent, tmp_path)


def test_the_largest_piece_length_in_the_corpus_loads() -> None:
    """32767 x 16 KiB pieces: accepted like libtorrent does; one more byte of piece length is not."""
    data = (CORPUS / "large_piece_size.torrent").read_bytes()
    torrent = parse(data)
    assert torrent.piece_length == 32767 * 16384 <= DEFAULT_CONFIG.max_piece_length
    assert torrent.info_hash_hex == libtorrent_verdict(data).v1_hex
    tighter = dataclasses.replace(DEFAULT_CONFIG, max_piece_length=torrent.piece_length - 1)
    with pytest.raises(MetainfoError, match="piece length"):
        parse(data, tighter)


def test_sanitised_paths_match_libtorrent_notes() -> None:
    """The MANIFEST notes record libtorrent's sanitised results; ours agree."""
    expected = {
        "absolute_filename.torrent": [("temp", "abcde"), ("temp", "foobar")],
        "slash_path.torrent": [("temp", "_", "_", "bar")],
        "slash_path2.torrent": [("temp", "abc....def", "_", "bar")],
        "slash_path3.torrent": [("temp....abc",)],
        "parent_path.torrent": [("temp", "_", "_", "bar")],
        "backslash_path.torrent": [("temp", "_", "_", "bar")],
        "hidden_parent_path.torrent": [("temp", "foo......bar", "bar")],
        "duplicate_files.torrent": [("temp", "foo", "bar.txt"), ("temp", "foo", "bar.1.txt")],
        "invalid_directory_name.torrent": [("test2", "_", "foo"), ("test2", "_", "foo.1")],
    }
    for name, paths in expected.items():
        torrent = parse((CORPUS / name).read_bytes())
        assert [f.path for f in torrent.files] == paths, name
    invalid_name2 = parse((CORPUS / "invalid_name2.torrent").read_bytes())
    assert invalid_name2.name == "b61560c2918f463768cd122b6d2fdd47b77bdb35" == invalid_name2.info_hash_hex


def test_whitespace_tracker_is_trimmed_and_web_seed_encoded() -> None:
    assert parse((CORPUS / "whitespace_url.torrent").read_bytes()).trackers == (("udp://test.com/announce",),)
    spaced = parse((CORPUS / "url_seed_multi_space.torrent").read_bytes())
    assert spaced.web_seeds == ("http://test.com/test%20file/foo%20bar/",)
    assert parse((CORPUS / "url_seed_multi.torrent").read_bytes()).web_seeds == ("http://test.com/file/",)
    assert parse((CORPUS / "url_seed.torrent").read_bytes()).web_seeds == ("http://test.com/file",)
    duplicates = parse((CORPUS / "duplicate_web_seeds.torrent").read_bytes())
    assert duplicates.web_seeds == ("http://foobar.com/foo", "http://foobar.com/foobar", "http://foobar.com/bar")
    for name in ("url_list.torrent", "url_list2.torrent", "url_list3.torrent", "empty_httpseed.torrent"):
        assert parse((CORPUS / name).read_bytes()).web_seeds == ()


def test_pad_and_symlink_entries_are_flagged() -> None:
    pad = parse((CORPUS / "pad_file.torrent").read_bytes())
    assert [f.pad for f in pad.files] == [False, True]  # BitComet's "_____padding_file_" name
    no_path = parse((CORPUS / "pad_file_no_path.torrent").read_bytes())
    assert no_path.files[1].pad and no_path.files[1].length == 2124
    symlink = parse((CORPUS / "symlink1.torrent").read_bytes())
    link = symlink.files[1]
    assert link.symlink and link.length == 0 and link.symlink_target == ("a", "b", "bar")
    assert not link.is_created
    assert symlink.total_length == 425  # the symlink's own `length` of 425 takes no payload space
