"""core/metainfo.py: parse() on torrents built here, one property at a time, plus fuzzing."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import DEFAULT_CONFIG, KiB, MiB
from jstorrent_cli.core import bencode
from jstorrent_cli.core.bencode import Value
from jstorrent_cli.core.metainfo import Torrent, is_safe_relative, parse, sanitize_path_element
from jstorrent_cli.errors import BencodeError, MetainfoError

PIECE = 16 * KiB


def fake_pieces(total: int, piece_length: int = PIECE) -> bytes:
    count = -(-total // piece_length)
    return b"".join(hashlib.sha1(i.to_bytes(4, "big")).digest() for i in range(count))


def single_info(name: bytes = b"file.bin", length: int = 40_000, piece_length: int = PIECE) -> dict[bytes, Value]:
    return {
        b"name": name,
        b"length": length,
        b"piece length": piece_length,
        b"pieces": fake_pieces(length, piece_length),
    }


def multi_info(
    files: list[tuple[list[bytes], int]] | list[dict[bytes, Value]],
    name: bytes = b"dir",
    piece_length: int = PIECE,
) -> dict[bytes, Value]:
    entries: list[Value] = []
    total = 0
    for item in files:
        if isinstance(item, dict):
            entry: dict[bytes, Value] = item
        else:
            path, length = item
            entry = {b"length": length, b"path": list(path)}
        entries.append(entry)
        length_value = entry.get(b"length", 0)
        if isinstance(length_value, int) and b"l" not in entry.get(b"attr", b""):  # type: ignore[operator]
            total += length_value
    return {
        b"name": name,
        b"piece length": piece_length,
        b"files": entries,
        b"pieces": fake_pieces(total, piece_length),
    }


TOP_LEVEL_KEYS = {
    "announce_list": b"announce-list",
    "url_list": b"url-list",
    "created_by": b"created by",
    "creation_date": b"creation date",
    "piece_layers": b"piece layers",
}


def torrent_bytes(info: dict[bytes, Value], **top: Value) -> bytes:
    meta: dict[bytes, Value] = {b"info": info}
    for key, value in top.items():
        meta[TOP_LEVEL_KEYS.get(key, key.encode())] = value
    return bencode.encode(meta)


def load(info: dict[bytes, Value], **top: Value) -> Torrent:
    return parse(torrent_bytes(info, **top))


def info_hash_of(info: dict[bytes, Value]) -> bytes:
    return hashlib.sha1(bencode.encode(info)).digest()


# --- the basics ---------------------------------------------------------------------------------------


def test_single_file_torrent() -> None:
    info = single_info(length=40_000)
    t = load(
        info, announce=b"http://tracker.example/announce", created_by=b"jstorrent test", creation_date=1_700_000_000
    )
    assert t.name == "file.bin"
    assert t.info_hash == info_hash_of(info) and len(t.info_hash) == 20
    assert t.info_hash_hex == info_hash_of(info).hex()
    assert not t.is_multi_file and not t.is_hybrid
    assert t.total_length == 40_000
    assert t.piece_length == PIECE and t.piece_count == 3
    assert [t.piece_size(i) for i in range(3)] == [PIECE, PIECE, 40_000 - 2 * PIECE]
    assert t.piece_hash(1) == hashlib.sha1((1).to_bytes(4, "big")).digest()
    with pytest.raises(IndexError):
        t.piece_hash(3)
    with pytest.raises(IndexError):
        t.piece_size(-1)
    assert len(t.files) == 1
    only = t.files[0]
    assert only.path == ("file.bin",) and only.length == 40_000 and only.offset == 0 and only.is_created
    assert t.trackers == (("http://tracker.example/announce",),)
    assert t.created_by == "jstorrent test" and t.creation_date == 1_700_000_000
    assert t.comment is None and t.private is False and t.web_seeds == ()
    assert hashlib.sha1(t.info_bytes).digest() == t.info_hash
    assert "piece_hashes" not in repr(t) and "info_bytes" not in repr(t)


def test_multi_file_offsets_and_paths() -> None:
    info = multi_info([([b"a.txt"], 100), ([b"sub", b"b.bin"], 70_000), ([b"empty"], 0), ([b"sub", b"c"], 5)])
    t = load(info)
    assert t.is_multi_file and t.name == "dir"
    assert [f.path for f in t.files] == [
        ("dir", "a.txt"),
        ("dir", "sub", "b.bin"),
        ("dir", "empty"),
        ("dir", "sub", "c"),
    ]
    assert [f.offset for f in t.files] == [0, 100, 70_100, 70_100]
    assert [f.end for f in t.files] == [100, 70_100, 70_100, 70_105]
    assert t.total_length == 70_105 and t.piece_count == 5


def test_one_file_in_a_files_list_is_multi_file() -> None:
    t = load(multi_info([([b"foo", b"bar"], 425)], name=b"temp"))
    assert t.is_multi_file and t.files[0].path == ("temp", "foo", "bar")


def test_normal_creator_output_round_trips() -> None:
    """What `jstorrent create` will do: build an info dict, bencode.encode it, parse it."""
    info = multi_info([([b"x.iso"], 3 * MiB + 1), ([b"readme.txt"], 12)], name=b"release", piece_length=256 * KiB)
    info[b"private"] = 1
    data = torrent_bytes(
        info,
        announce=b"udp://t.example:6969/announce",
        announce_list=[[b"udp://t.example:6969/announce"], [b"http://backup.example/announce"]],
        comment=b"hello",
        url_list=[b"https://mirror.example/release/"],
    )
    t = parse(data)
    assert t.private and t.comment == "hello"
    assert t.trackers == (("udp://t.example:6969/announce",), ("http://backup.example/announce",))
    assert t.web_seeds == ("https://mirror.example/release/",)
    assert t.piece_count == 13 and t.total_length == 3 * MiB + 13


# --- trackers and web seeds (BEP 12, BEP 19) ----------------------------------------------------------


def test_tiers_are_trimmed_deduplicated_and_empty_ones_dropped() -> None:
    t = load(
        single_info(),
        announce=b"http://ignored.example/",
        announce_list=[
            [b"  http://a.example/announce\t", b"http://b.example/announce"],
            [b"", b"   "],
            b"not a tier",
            [b"http://a.example/announce", 7, b"udp://c.example:80"],
        ],
    )
    assert t.trackers == (("http://a.example/announce", "http://b.example/announce"), ("udp://c.example:80",))


def test_announce_used_when_announce_list_has_no_url() -> None:
    t = load(single_info(), announce=b" http://only.example/a ", announce_list=[[b""], []])
    assert t.trackers == (("http://only.example/a",),)
    assert load(single_info(), announce=b"   ").trackers == ()
    assert load(single_info()).trackers == ()


@pytest.mark.parametrize(
    ("url_list", "multi", "expected"),
    [
        (b"http://s.example/file", False, ("http://s.example/file",)),
        ([b"http://s.example/a", b"http://s.example/a", b""], False, ("http://s.example/a",)),
        ([b"http://s.example/dir"], True, ("http://s.example/dir/",)),
        ([b"http://s.example/with space/\xc3\xa9"], False, ("http://s.example/with%20space/%C3%A9",)),
        ([b"http://s.example/already%20encoded"], False, ("http://s.example/already%20encoded",)),
        ([[b"nested"], -20, b""], False, ()),
        (b"", False, ()),
        (5, False, ()),
    ],
)
def test_web_seeds(url_list: Value, multi: bool, expected: tuple[str, ...]) -> None:
    info = multi_info([([b"a"], 10), ([b"b"], 10)]) if multi else single_info()
    assert load(info, url_list=url_list).web_seeds == expected


def test_private_flag() -> None:
    assert load({**single_info(), b"private": 1}).private is True
    assert load({**single_info(), b"private": 0}).private is False
    assert load(single_info()).private is False


def test_utf8_variants_are_preferred_when_valid() -> None:
    info = {**single_info(name=b"caf\xe9"), b"name.utf-8": "café".encode()}
    assert load(info).name == "café"
    bad_alt = {**single_info(name=b"plain"), b"name.utf-8": b"\xff\xfe"}
    assert load(bad_alt).name == "plain"
    files: list[dict[bytes, Value]] = [{b"length": 5, b"path": [b"x\xe9"], b"path.utf-8": ["xé".encode()]}]
    assert load(multi_info(files)).files[0].path == ("dir", "xé")
    t = load(single_info(), comment=b"latin1 \xe9", **{"comment.utf-8": "ok é".encode()})
    assert t.comment == "ok é"


def test_creation_date_must_be_a_non_negative_integer() -> None:
    assert load(single_info(), creation_date=-5).creation_date is None
    assert load(single_info(), creation_date=b"yesterday").creation_date is None


# --- BEP 47 pad files and attributes --------------------------------------------------------------------


def test_pad_files_attributes_and_offsets() -> None:
    files: list[dict[bytes, Value]] = [
        {b"length": 1000, b"path": [b"run.sh"], b"attr": b"x"},
        {b"length": PIECE - 1000, b"path": [b".pad", str(PIECE - 1000).encode()], b"attr": b"p"},
        {b"length": 2 * PIECE, b"path": [b".hidden"], b"attr": b"hq"},  # unknown "q" is ignored
        {b"length": 7, b"attr": b"p"},  # a pad file may omit its path
    ]
    t = load(multi_info(files))
    assert [f.pad for f in t.files] == [False, True, False, True]
    assert [f.offset for f in t.files] == [0, 1000, PIECE, 3 * PIECE]
    assert t.files[0].executable and not t.files[0].hidden
    assert t.files[2].hidden and not t.files[2].executable
    assert t.files[3].path == ("dir", ".pad", "7")
    assert [f.is_created for f in t.files] == [True, False, True, False]
    assert t.total_length == 3 * PIECE + 7


def test_symlinks_take_no_space_and_are_never_created() -> None:
    files: list[dict[bytes, Value]] = [
        {b"length": 500, b"path": [b"target"]},
        {b"length": 999_999, b"path": [b"link"], b"attr": b"l", b"symlink path": [b"..", b"..", b"etc", b"passwd"]},
        {b"path": [b"link2"], b"attr": b"l"},  # no target: libtorrent drops the flag, length still 0
    ]
    t = load(multi_info(files))
    link = t.files[1]
    assert link.symlink and link.length == 0 and not link.is_created
    assert link.symlink_target == ("_", "_", "etc", "passwd") and is_safe_relative(link.symlink_target)
    assert not t.files[2].symlink and t.files[2].length == 0
    assert t.total_length == 500


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({b"length": -1}, "negative length"),
        ({b"length": b"12"}, "length"),
        ({b"length": [5]}, "length"),
        ({b"length": 0, b"pieces": b""}, "total length is zero"),
        ({b"piece length": 0}, "piece length"),
        ({b"piece length": -PIECE}, "piece length"),
        ({b"piece length": b"16384"}, "piece length"),
        ({b"piece length": 1024}, "below the minimum"),
        ({b"piece length": 1024 * MiB}, "over the maximum"),
        ({b"pieces": b"x" * 41}, "not a multiple of 20"),
        ({b"pieces": b"x" * 40}, "need 3"),
        ({b"pieces": 5}, "pieces"),
        ({b"name": 5}, "name"),
        ({b"name": b".."}, "name"),
        ({b"name": b"/"}, "name"),
    ],
)
def test_bad_single_file_fields(change: dict[bytes, Value], message: str) -> None:
    info = {**single_info(), **change}
    with pytest.raises(MetainfoError, match=message):
        load(info)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (b"not a list", "'files' is not a list"),
        ([], "no files"),
        ([b"entry"], "not a dictionary"),
        ([{b"length": 5}], "missing or empty 'path'"),
        ([{b"length": 5, b"path": []}], "missing or empty 'path'"),
        ([{b"length": 5, b"path": b"a/b"}], "'path' is not a list"),
        ([{b"length": 5, b"path": [b"a", 3]}], "not a string"),
        ([{b"length": -5, b"path": [b"a"]}], "negative length"),
        ([{b"path": [b"a"]}], "length"),
        ([{b"length": 5, b"path": [b"l"], b"attr": b"l", b"symlink path": [b"x", [b"y"]]}], "not a string"),
    ],
)
def test_bad_file_lists(files: Value, message: str) -> None:
    info: dict[bytes, Value] = {b"name": b"d", b"piece length": PIECE, b"files": files, b"pieces": b"p" * 20}
    with pytest.raises(MetainfoError, match=message):
        load(info)


@pytest.mark.parametrize(
    ("data", "is_bencode_error", "message"),
    [
        (b"", True, "invalid bencode"),
        (b"i03e", True, "leading zero"),
        (b"d4:infod", True, "unterminated"),
        (b"l1:ae garbage", True, "trailing data"),
        (b"i5e", False, "top level is an integer"),
        (b"li1ee", False, "top level is a list"),
        (b"5:hello", False, "top level is a byte string"),
        (b"d4:infoi5ee", False, "'info'"),
        (b"de", False, "'info'"),
        (b"d3:fooi1ee", False, "'info'"),
    ],
)
def test_not_a_torrent(data: bytes, is_bencode_error: bool, message: str) -> None:
    """Bytes that are not bencode are a BencodeError (exit 25); bencode that is no torrent is not (26)."""
    with pytest.raises(MetainfoError, match=message) as caught:
        parse(data)
    assert isinstance(caught.value, BencodeError) is is_bencode_error
    assert "\n" not in str(caught.value)


def test_random_bytes_are_refused() -> None:
    with pytest.raises(MetainfoError) as caught:
        parse(b"d" + os.urandom(64))
    assert "\n" not in str(caught.value)


def test_bencode_errors_keep_their_offset_and_say_what_is_wrong() -> None:
    data = torrent_bytes(single_info())
    broken = data[:20] + b"i03e" + data[24:]
    with pytest.raises(BencodeError) as caught:
        parse(b"d4:infoi03ee")
    assert caught.value.offset == 8 and "invalid bencode" in str(caught.value) and "leading zero" in str(caught.value)
    with pytest.raises(MetainfoError):
        parse(broken)


def test_trailing_newline_is_tolerated_but_not_garbage() -> None:
    data = torrent_bytes(single_info())
    assert parse(data + b"\r\n").info_hash == parse(data).info_hash
    with pytest.raises(BencodeError, match="trailing"):
        parse(data + b"xx")


def test_file_size_cap() -> None:
    data = torrent_bytes(single_info())
    small = dataclasses.replace(DEFAULT_CONFIG, max_torrent_file_size=len(data) - 1)
    with pytest.raises(MetainfoError, match="over the"):
        parse(data, small)


# --- resource caps ----------------------------------------------------------------------------------------


def test_absurd_piece_count_fails_fast_without_allocating() -> None:
    info: dict[bytes, Value] = {
        b"name": b"huge",
        b"length": 10**9 * PIECE,
        b"piece length": PIECE,
        b"pieces": b"h" * 20,
    }
    data = torrent_bytes(info)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(MetainfoError, match="1000000000 pieces is over the limit"):
            parse(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 1 * MiB


def test_total_size_cap() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, max_total_size=10 * PIECE)
    with pytest.raises(MetainfoError, match="over the"):
        parse(torrent_bytes(single_info(length=10 * PIECE + 1)), config)
    parse(torrent_bytes(single_info(length=10 * PIECE)), config)
    many = multi_info([([b"a"], 6 * PIECE), ([b"b"], 6 * PIECE)])
    with pytest.raises(MetainfoError, match="total length"):
        parse(torrent_bytes(many), config)


def test_file_count_cap() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, max_file_count=3)
    info = multi_info([([f"f{i}".encode()], 1) for i in range(4)])
    with pytest.raises(MetainfoError, match="4 files is over the limit of 3"):
        parse(torrent_bytes(info), config)
    parse(torrent_bytes(multi_info([([f"f{i}".encode()], 1) for i in range(3)])), config)


def test_piece_count_cap_is_exact() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, max_piece_count=4)
    assert parse(torrent_bytes(single_info(length=4 * PIECE)), config).piece_count == 4
    with pytest.raises(MetainfoError, match="5 pieces"):
        parse(torrent_bytes(single_info(length=4 * PIECE + 1)), config)


# --- path safety ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"plain.txt", "plain.txt"),
        (b"..", ""),
        (b".", ""),
        (b"", ""),
        (b"...", "..."),
        (b"/", ""),
        (b"\\", ""),
        (b"/etc", "etc"),
        (b"a/../b", "a..b"),
        (b"a\\b", "ab"),
        (b"a\x00b", "ab"),
        (b"a\x01b", "a_b"),
        (b"a\x7fb", "a_b"),
        (b"a\xffb", "a_b"),
        (b"\xed\xa0\x80", "___"),  # a UTF-8-encoded surrogate is invalid UTF-8
        ("\u202eevil.exe".encode(), "evil.exe"),
        ("日本語".encode(), "日本語"),
        (b"C:", "C:"),
        (b" spaced ", " spaced "),
        (b"./.", ""),
    ],
)
def test_sanitize_path_element(raw: bytes, expected: str) -> None:
    assert sanitize_path_element(raw) == expected


def test_long_names_are_cut_keeping_the_extension() -> None:
    limit = DEFAULT_CONFIG.max_path_element_bytes
    cut = sanitize_path_element(b"x" * 300 + b".txt")
    assert cut == "x" * (limit - 4) + ".txt"
    assert len(sanitize_path_element(b"y" * 300).encode()) == limit
    multibyte = sanitize_path_element("é".encode() * 200)
    assert len(multibyte.encode()) <= limit and multibyte == "é" * (limit // 2)
    odd_extension = sanitize_path_element(b"z" * 300 + b"." + b"e" * 40)
    assert len(odd_extension.encode()) == limit


@pytest.mark.parametrize(
    ("parts", "safe"),
    [
        (("a", "b"), True),
        (("a",), True),
        ((), False),
        (("a", ".."), False),
        (("..",), False),
        ((".", "a"), False),
        (("", "a"), False),
        (("/etc",), False),
        (("a/b",), False),
        (("a\\b",), False),
        (("a\x00",), False),
        (("...",), True),
    ],
)
def test_is_safe_relative(parts: tuple[str, ...], safe: bool) -> None:
    assert is_safe_relative(parts) is safe


@pytest.mark.parametrize(
    ("elements", "expected"),
    [
        ([b"..", b"..", b"etc", b"passwd"], ("dir", "_", "_", "etc", "passwd")),
        ([b"/abs", b"file"], ("dir", "abs", "file")),
        ([b"", b"x"], ("dir", "_", "x")),
        ([b".", b"."], ("dir", "_", "_")),
        ([b"a/../../b"], ("dir", "a....b")),
        ([b"\\\\server", b"share"], ("dir", "server", "share")),
    ],
)
def test_hostile_paths_are_made_safe(elements: list[bytes], expected: tuple[str, ...]) -> None:
    t = load(multi_info([(elements, 10)]))
    assert t.files[0].path == expected
    assert is_safe_relative(t.files[0].path)


def test_hostile_name_becomes_infohash_for_multi_file() -> None:
    info = multi_info([([b"f"], 10)], name=b"..")
    t = load(info)
    assert t.name == info_hash_of(info).hex() and t.files[0].path == (t.name, "f")


def test_duplicates_are_renamed_case_insensitively_and_against_directories() -> None:
    t = load(
        multi_info(
            [
                ([b"bar.txt"], 1),
                ([b"BAR.txt"], 1),
                ([b"bar.txt"], 1),
                ([b"sub"], 1),  # clashes with the directory "sub" below
                ([b"sub", b"x"], 1),
                ([b"noext"], 1),
                ([b"noext"], 1),
            ]
        )
    )
    paths = [f.path[1:] for f in t.files]
    assert paths == [("bar.txt",), ("BAR.1.txt",), ("bar.2.txt",), ("sub.1",), ("sub", "x"), ("noext",), ("noext.1",)]
    lowered = ["/".join(f.path).lower() for f in t.files]
    assert len(set(lowered)) == len(lowered)


def test_pad_files_may_share_a_path() -> None:
    files: list[dict[bytes, Value]] = [
        {b"length": 10, b"path": [b"a"]},
        {b"length": PIECE - 10, b"path": [b".pad", b"x"], b"attr": b"p"},
        {b"length": 10, b"path": [b"b"]},
        {b"length": PIECE - 10, b"path": [b".pad", b"x"], b"attr": b"p"},
        {b"length": 10, b"path": [b"c"]},
    ]
    t = load(multi_info(files))
    assert t.files[1].path == t.files[3].path == ("dir", ".pad", "x")


def test_too_many_duplicates_is_an_error() -> None:
    dup = multi_info([([b"foo", b"bar.txt"], 1) for _ in range(60)])
    with pytest.raises(MetainfoError, match="too many duplicate file names"):
        load(dup)
    relaxed = dataclasses.replace(DEFAULT_CONFIG, max_duplicate_renames=10_000)
    t = parse(torrent_bytes(dup), relaxed)
    assert len({f.path for f in t.files}) == 60


# --- key order and the infohash -----------------------------------------------------------------------------


def test_unordered_keys_hash_the_raw_bytes() -> None:
    pieces = fake_pieces(425)
    raw_info = b"d4:name4:temp6:lengthi425e12:piece lengthi16384e6:pieces20:" + pieces + b"e"
    data = b"d4:info" + raw_info + b"e"
    t = parse(data)
    assert t.info_hash == hashlib.sha1(raw_info).digest()
    assert t.info_bytes == raw_info
    # A re-encoding sorts the keys, so it would give a different (wrong) infohash.
    assert hashlib.sha1(bencode.encode(bencode.decode(raw_info, sorted_keys=False))).digest() != t.info_hash


def test_duplicate_keys_are_refused_even_in_lenient_mode() -> None:
    with pytest.raises(BencodeError, match="duplicate"):
        parse(b"d4:infod4:name1:a4:name1:bee")


# --- BEP 52 ----------------------------------------------------------------------------------------------------


def hybrid_info(files: list[tuple[bytes, int]], piece_length: int = PIECE, pad: bool = True) -> dict[bytes, Value]:
    """A hybrid info dict; a file name "d/x" is the file x in the directory d."""
    v1: list[Value] = []
    tree: dict[bytes, Value] = {}
    total = 0
    for index, (name, length) in enumerate(files):
        elements: list[Value] = list(name.split(b"/"))
        v1.append({b"length": length, b"path": elements})
        node = tree
        for directory in name.split(b"/")[:-1]:
            child = node.setdefault(directory, {})
            assert isinstance(child, dict)
            node = child
        node[name.split(b"/")[-1]] = {b"": {b"length": length, b"pieces root": hashlib.sha256(name).digest()}}
        total += length
        remainder = total % piece_length
        if pad and remainder and index < len(files) - 1:
            v1.append(
                {
                    b"attr": b"p",
                    b"length": piece_length - remainder,
                    b"path": [b".pad", b"%d" % (piece_length - remainder)],
                }
            )
            total += piece_length - remainder
    return {
        b"name": b"hybrid",
        b"piece length": piece_length,
        b"meta version": 2,
        b"file tree": tree,
        b"files": v1,
        b"pieces": fake_pieces(total, piece_length),
    }


def test_hybrid_loads_through_v1() -> None:
    info = hybrid_info([(b"a", 100), (b"b", PIECE + 1), (b"c", 5)])
    t = load(info, piece_layers={})
    assert t.is_hybrid and t.info_hash == info_hash_of(info)
    assert [f.pad for f in t.files] == [False, True, False, True, False]
    assert [f.offset for f in t.files if not f.pad] == [0, PIECE, 3 * PIECE]


def test_hybrid_tree_is_walked_depth_first_in_key_order() -> None:
    info = hybrid_info([(b"a/x", 100), (b"a/y/z", 7), (b"b", 5)])
    t = load(info)
    assert [f.path[1:] for f in t.files if not f.pad] == [("a", "x"), ("a", "y", "z"), ("b",)]
    # The same files listed in another order in v1 do not match the tree.
    files = info[b"files"]
    assert isinstance(files, list)
    info[b"files"] = [files[2], files[3], files[0], files[1], files[4]]
    with pytest.raises(MetainfoError, match="do not match"):
        load(info)


def test_hybrid_with_mismatched_lists_is_refused() -> None:
    info = hybrid_info([(b"a", 100), (b"b", 200)])
    tree = info[b"file tree"]
    assert isinstance(tree, dict)
    tree[b"b"] = {b"": {b"length": 201, b"pieces root": b"r" * 32}}
    with pytest.raises(MetainfoError, match="do not match"):
        load(info)


def test_hybrid_without_alignment_is_refused() -> None:
    with pytest.raises(MetainfoError, match="piece boundary"):
        load(hybrid_info([(b"a", 100), (b"b", 200)], pad=False))


def test_hybrid_needs_power_of_two_pieces() -> None:
    with pytest.raises(MetainfoError, match="power of two"):
        load(hybrid_info([(b"a", 100)], piece_length=3 * PIECE))


def test_hybrid_info_must_be_canonical() -> None:
    pieces = fake_pieces(5)
    tree = b"9:file treed1:ad0:d6:lengthi5e11:pieces root32:" + b"r" * 32 + b"eee"
    raw_info = b"d" + tree + b"6:lengthi5e12:meta versioni2e4:name1:a12:piece lengthi16384e6:pieces20:" + pieces + b"e"
    assert parse(b"d4:info" + raw_info + b"e").is_hybrid
    unordered = b"d4:name1:a6:lengthi5e" + tree + b"12:meta versioni2e12:piece lengthi16384e6:pieces20:" + pieces + b"e"
    with pytest.raises(BencodeError, match="v2 info dictionary"):
        parse(b"d4:info" + unordered + b"e")


def test_v2_only_is_not_supported_yet() -> None:
    info: dict[bytes, Value] = {
        b"name": b"v2",
        b"piece length": PIECE,
        b"meta version": 2,
        b"file tree": {b"v2": {b"": {b"length": 5, b"pieces root": b"r" * 32}}},
    }
    with pytest.raises(MetainfoError, match="v2-only torrents are not supported yet"):
        load(info)


@pytest.mark.parametrize(("version", "message"), [(3, "unsupported"), (0, "invalid"), (b"2", "invalid")])
def test_unknown_meta_versions(version: Value, message: str) -> None:
    with pytest.raises(MetainfoError, match=message):
        load({**single_info(), b"meta version": version})


def test_file_tree_without_meta_version() -> None:
    with pytest.raises(MetainfoError, match="meta version"):
        load({**single_info(), b"file tree": {}})


# --- fuzzing ------------------------------------------------------------------------------------------------------

VALID_FILES: list[dict[bytes, Value]] = [
    {b"length": 3000, b"path": [b"a", b"b.txt"]},
    {b"length": PIECE - 3000, b"path": [b".pad", b"x"], b"attr": b"p"},
    {b"length": 20_000, b"path": [b"c"], b"attr": b"x"},
    {b"length": 0, b"path": [b"l"], b"attr": b"l", b"symlink path": [b"c"]},
]
VALID = torrent_bytes(
    {**multi_info(VALID_FILES), b"private": 1},
    announce=b"http://t.example/a",
    announce_list=[[b"http://t.example/a"], [b"udp://u.example:1"]],
    url_list=[b"http://w.example/"],
    comment=b"c",
)


def assert_sound(t: Torrent) -> None:
    assert len(t.info_hash) == 20
    assert t.piece_count * 20 == len(t.piece_hashes)
    assert t.piece_count == -(-t.total_length // t.piece_length)
    offset = 0
    created: set[str] = set()
    for f in t.files:
        assert is_safe_relative(f.path)
        assert f.offset == offset and f.length >= 0
        offset += f.length
        if f.is_created:
            key = "/".join(f.path).lower()
            assert key not in created
            created.add(key)
    assert offset == t.total_length
    # No created file sits where another created file needs a directory.
    directories = {"/".join(f.path[:depth]).lower() for f in t.files if f.is_created for depth in range(1, len(f.path))}
    assert not created & directories


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_mutations_give_a_torrent_or_a_metainfo_error(data: st.DataObject) -> None:
    buf = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if kind == "flip" and buf:
            buf[at] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            buf[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del buf[at : at + data.draw(st.integers(1, 8))]
        else:
            del buf[at:]
    try:
        t = parse(bytes(buf))
    except MetainfoError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert_sound(t)


path_bytes = st.binary(max_size=12) | st.sampled_from([b"..", b".", b"", b"/", b"\\", b"a/../b", b"\x00", b"CON"])
file_entries = st.lists(
    st.tuples(st.lists(path_bytes, max_size=4), st.integers(0, 3 * PIECE), st.sampled_from([b"", b"p", b"x", b"l"])),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(file_entries, path_bytes)
def test_arbitrary_file_lists_give_safe_unique_paths(
    entries: list[tuple[list[bytes], int, bytes]], name: bytes
) -> None:
    files: list[dict[bytes, Value]] = []
    for path, length, attr in entries:
        path_value: list[Value] = list(path)
        entry: dict[bytes, Value] = {b"length": length, b"path": path_value}
        if attr:
            entry[b"attr"] = attr
        files.append(entry)
    info = multi_info(files, name=name)
    try:
        t = load(info)
    except MetainfoError:
        return
    assert t.info_hash == info_hash_of(info)
    assert len(t.files) == len(files)
    assert_sound(t)
