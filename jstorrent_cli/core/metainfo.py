"""Metainfo: a .torrent file's bytes in, one frozen `Torrent` out, or one `MetainfoError`.

Sans-IO: `parse(data)` takes the bytes; reading the file is the caller's business.

What this module guarantees about untrusted input:
- Only MetainfoError ever escapes (BencodeError, a subclass, for bytes that are not bencode).
- The infohash is SHA-1 of the raw bytes of `info`, never of a re-encoding. Keys out of order are
  tolerated (libtorrent loads such files), except inside a BEP 52 info dictionary, where libtorrent
  refuses them too.
- Sizes are checked with arithmetic before anything proportional to them is built: a file claiming
  10**9 pieces fails on its numbers, not on memory.
- Every `FileEntry.path` is relative and safe (`is_safe_relative`): no `..`, `.`, empty element, `/`,
  `\\` or NUL, so joining it under an output folder can never leave that folder. Names are sanitised
  the way libtorrent 2.x does it, so both agree on what a torrent contains; duplicates (compared
  case-insensitively, also against directories) get `name.1.ext`-style names.
- Symlink entries (BEP 47 attr `l`) are recorded, never followed: their length is zero and storage
  does not create them. Pad files (attr `p`, or BitComet's `_____padding_file_`) are recorded with
  their offsets and are never written either.

Hybrid torrents (BEP 52 `meta version` 2 plus v1 `pieces`) load through their v1 part after a check
that both file lists agree; v2-only torrents are refused with a clear message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import urllib.parse
from collections.abc import Iterator

from jstorrent_cli.config import BLOCK_SIZE, DEFAULT_CONFIG, Config
from jstorrent_cli.core import bencode
from jstorrent_cli.core.bencode import Value
from jstorrent_cli.core.magnet import Magnet, parse_magnet
from jstorrent_cli.errors import BencodeError, MetainfoError

__all__ = [
    "FileEntry",
    "Magnet",
    "Torrent",
    "is_safe_relative",
    "parse",
    "parse_magnet",
    "sanitize_path_element",
]

SHA1_LENGTH = 20  # bytes in a v1 piece hash and in a v1 infohash
SHA256_LENGTH = 32  # bytes in a BEP 52 `pieces root`
META_VERSION_2 = 2  # BEP 52's `meta version`

# libtorrent's BitComet compatibility: a path containing this is a pad file even without attr "p".
_BITCOMET_PAD_MARKER = "_____padding_file_"
# Characters dropped from names: separators, NUL, and the Unicode direction overrides that make
# "evil\u202egpj.exe" look like "evil.exe.jpg".
_DROPPED_CHARS = frozenset("/\\\x00\u202a\u202b\u202c\u202d\u202e\u200e\u200f")
_DEL = 0x7F
_FIRST_PRINTABLE = 0x20
# Python's surrogateescape maps each undecodable byte to U+DC80..U+DCFF.
_ESCAPED_BYTE_FIRST = 0xDC80
_ESCAPED_BYTE_LAST = 0xDCFF
_UNSAFE_ELEMENTS = frozenset({"", ".", ".."})
# Replacement for a character that cannot appear in a name, and for a name that sanitised to nothing.
_PLACEHOLDER = "_"
# BEP 19 web seeds: characters left as they are when percent-encoding a URL (reserved + '%').
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"
_TRAILING_WHITESPACE = b" \t\r\n"


@dataclasses.dataclass(frozen=True, slots=True)
class FileEntry:
    """One entry of the torrent's file list, in payload order.

    `path` is relative to the output folder: for a multi-file torrent it starts with the torrent's
    (sanitised) name, for a single-file torrent it is just that name. `offset` is the byte offset of
    the file in the torrent's concatenated payload (pad files included, symlinks take no space).
    """

    path: tuple[str, ...]
    length: int
    offset: int
    pad: bool = False  # BEP 47 "p": zeros that are never written to disk
    executable: bool = False  # BEP 47 "x"
    hidden: bool = False  # BEP 47 "h"
    symlink: bool = False  # BEP 47 "l": length 0, never created (storage does not make symlinks)
    symlink_target: tuple[str, ...] | None = None  # sanitised, relative to the torrent root

    @property
    def is_created(self) -> bool:
        """Whether storage creates this entry on disk (pad files and symlinks are not)."""
        return not self.pad and not self.symlink

    @property
    def end(self) -> int:
        """Offset one past the file's last byte in the payload."""
        return self.offset + self.length


@dataclasses.dataclass(frozen=True, slots=True)
class Torrent:
    """A parsed v1 (or hybrid, through its v1 part) torrent."""

    name: str
    info_hash: bytes
    piece_length: int
    piece_hashes: bytes = dataclasses.field(repr=False)  # SHA-1 digests, 20 bytes each, concatenated
    total_length: int
    files: tuple[FileEntry, ...]
    trackers: tuple[tuple[str, ...], ...]  # BEP 12 tiers, in file order (no shuffling here)
    web_seeds: tuple[str, ...]  # BEP 19, percent-encoded, duplicates removed
    private: bool  # BEP 27
    creation_date: int | None
    comment: str | None
    created_by: str | None
    is_multi_file: bool
    is_hybrid: bool  # BEP 52 hybrid, loaded through its v1 part
    info_bytes: bytes = dataclasses.field(repr=False)  # the raw `info` dictionary, for ut_metadata

    @property
    def info_hash_hex(self) -> str:
        return self.info_hash.hex()

    @property
    def piece_count(self) -> int:
        return len(self.piece_hashes) // SHA1_LENGTH

    def piece_hash(self, index: int) -> bytes:
        """The SHA-1 digest piece `index` must have."""
        if not 0 <= index < self.piece_count:
            raise IndexError(f"piece {index} out of range 0..{self.piece_count - 1}")
        start = index * SHA1_LENGTH
        return self.piece_hashes[start : start + SHA1_LENGTH]

    def piece_size(self, index: int) -> int:
        """Length of piece `index`: `piece_length`, except a shorter last piece."""
        if not 0 <= index < self.piece_count:
            raise IndexError(f"piece {index} out of range 0..{self.piece_count - 1}")
        return min(self.piece_length, self.total_length - index * self.piece_length)


# --- path safety ----------------------------------------------------------------------------------


def is_safe_relative(parts: tuple[str, ...] | list[str]) -> bool:
    """True if joining `parts` under any folder stays inside that folder.

    Every part must be a non-empty name that is not `.` or `..` and contains no `/`, `\\` or NUL:
    then no part can climb, be absolute, or split into more parts on any platform we run on.
    """
    if not parts:
        return False
    for part in parts:
        if not isinstance(part, str) or part in _UNSAFE_ELEMENTS:
            return False
        if "/" in part or "\\" in part or "\x00" in part:
            return False
    return True


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def sanitize_path_element(raw: bytes, config: Config = DEFAULT_CONFIG) -> str:
    """One file or directory name from a torrent, made safe; "" if nothing usable is left.

    As libtorrent 2.x does: `/`, `\\`, NUL and direction overrides are dropped; other control
    characters and each byte of invalid UTF-8 become `_`; a result of "", "." or ".." is unusable
    (returned as ""). Names longer than `max_path_element_bytes` are cut, keeping a short extension.
    """
    text = raw.decode("utf-8", "surrogateescape")
    out: list[str] = []
    for ch in text:
        if ch in _DROPPED_CHARS:
            continue
        code = ord(ch)
        if code < _FIRST_PRINTABLE or code == _DEL or _ESCAPED_BYTE_FIRST <= code <= _ESCAPED_BYTE_LAST:
            out.append(_PLACEHOLDER)
        else:
            out.append(ch)
    name = "".join(out)
    if name in _UNSAFE_ELEMENTS:
        return ""
    limit = config.max_path_element_bytes
    if len(name.encode("utf-8")) > limit:
        dot = name.rfind(".")
        extension = name[dot:] if dot > 0 else ""
        if len(extension.encode("utf-8")) > config.max_kept_extension_bytes:
            extension = ""
        stem = name[: len(name) - len(extension)]
        name = _truncate_utf8(stem, limit - len(extension.encode("utf-8"))) + extension
        if name in _UNSAFE_ELEMENTS:
            return ""
    return name


# --- small typed accessors --------------------------------------------------------------------------


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _valid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _preferred_bytes(d: dict[bytes, Value], key: bytes) -> bytes | None:
    """`key.utf-8` when it is valid UTF-8 bytes (as libtorrent prefers it), else `key` if bytes."""
    alt = d.get(key + b".utf-8")
    if isinstance(alt, bytes) and _valid_utf8(alt):
        return alt
    value = d.get(key)
    return value if isinstance(value, bytes) else None


def _text_field(d: dict[bytes, Value], key: bytes) -> str | None:
    raw = _preferred_bytes(d, key)
    return None if raw is None else _decode_text(raw)


def _is_bytes_list(value: Value | None) -> bool:
    return isinstance(value, list) and all(isinstance(item, bytes) for item in value)


# --- the raw file list --------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _RawFile:
    """A file before duplicate resolution: sanitised path inside the torrent (without its name)."""

    rel: tuple[str, ...]
    length: int
    pad: bool
    executable: bool
    hidden: bool
    symlink: bool
    symlink_target: tuple[str, ...] | None


def _sanitize_parts(elements: list[bytes], config: Config) -> tuple[str, ...]:
    return tuple(sanitize_path_element(e, config) or _PLACEHOLDER for e in elements)


def _file_length(d: dict[bytes, Value], where: str, config: Config) -> int:
    length = d.get(b"length")
    if not isinstance(length, int):
        raise MetainfoError(f"{where}: missing or non-integer 'length'")
    if length < 0:
        raise MetainfoError(f"{where}: negative length {length}")
    if length > config.max_total_size:
        raise MetainfoError(f"{where}: length {length} is over the {config.max_total_size}-byte limit")
    return length


def _attributes(d: dict[bytes, Value]) -> bytes:
    attr = d.get(b"attr")
    return attr if isinstance(attr, bytes) else b""


def _symlink_target(d: dict[bytes, Value], where: str, config: Config) -> tuple[str, ...] | None:
    target = d.get(b"symlink path")
    if not isinstance(target, list):
        return None
    if not _is_bytes_list(target):
        raise MetainfoError(f"{where}: 'symlink path' has an element that is not a string")
    assert isinstance(target, list)
    elements = [e for e in target if isinstance(e, bytes)]
    return _sanitize_parts(elements, config) if elements else None


def _raw_file(d: dict[bytes, Value], elements: list[bytes] | None, where: str, config: Config) -> _RawFile:
    attr = _attributes(d)
    symlink = b"l" in attr
    target = _symlink_target(d, where, config) if symlink else None
    # BEP 47: a symlink takes no payload space whatever its `length` says.
    length = 0 if symlink else _file_length(d, where, config)
    pad = b"p" in attr
    if elements is None:
        rel: tuple[str, ...] = ()
    else:
        rel = _sanitize_parts(elements, config)
    if rel and any(_BITCOMET_PAD_MARKER in part for part in rel):
        pad = True
    return _RawFile(
        rel=rel,
        length=length,
        pad=pad,
        executable=b"x" in attr,
        hidden=b"h" in attr,
        symlink=symlink and target is not None,
        symlink_target=target,
    )


def _path_elements(entry: dict[bytes, Value], where: str) -> list[bytes] | None:
    """The raw path of a `files` entry: `path.utf-8` when usable, else `path`; None when absent."""
    alt = entry.get(b"path.utf-8")
    if isinstance(alt, list) and alt and all(isinstance(e, bytes) and _valid_utf8(e) for e in alt):
        return [e for e in alt if isinstance(e, bytes)]
    path = entry.get(b"path")
    if path is None:
        return None
    if not isinstance(path, list):
        raise MetainfoError(f"{where}: 'path' is not a list")
    if not _is_bytes_list(path):
        raise MetainfoError(f"{where}: 'path' has an element that is not a string")
    if not path:
        return None
    return [e for e in path if isinstance(e, bytes)]


def _multi_files(files: Value, config: Config) -> list[_RawFile]:
    if not isinstance(files, list):
        raise MetainfoError("'files' is not a list")
    if len(files) > config.max_file_count:
        raise MetainfoError(f"{len(files)} files is over the limit of {config.max_file_count}")
    result: list[_RawFile] = []
    for index, entry in enumerate(files):
        where = f"file {index}"
        if not isinstance(entry, dict):
            raise MetainfoError(f"{where}: not a dictionary")
        elements = _path_elements(entry, where)
        raw = _raw_file(entry, elements, where, config)
        if elements is None:
            if not raw.pad:
                raise MetainfoError(f"{where}: missing or empty 'path'")
            # BEP 47: a pad file may omit its path; it is never created, so any name will do.
            raw.rel = (".pad", str(raw.length))
        result.append(raw)
    return result


# --- BEP 52 hybrids ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _V2File:
    rel: tuple[str, ...]
    length: int


def _v2_files(tree: Value | None, config: Config) -> list[_V2File]:
    """Flatten a BEP 52 `file tree` (only to check a hybrid's v1 list against it)."""
    if not isinstance(tree, dict):
        raise MetainfoError("'file tree' is not a dictionary")
    result: list[_V2File] = []
    # Depth-first in key order, as creators write the v1 list. An explicit stack of iterators instead
    # of recursion (the depth is bounded by the bencode depth cap anyway).
    stack: list[tuple[tuple[bytes, ...], Iterator[tuple[bytes, Value]]]] = [((), iter(tree.items()))]
    while stack:
        prefix, items = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            continue
        key, child = item
        path = (*prefix, key)
        where = f"'file tree' entry {b'/'.join(path)!r}"
        if not key or not isinstance(child, dict):
            raise MetainfoError(f"{where}: invalid file tree entry")
        leaf = child.get(b"")
        if len(child) == 1 and leaf is not None:
            if not isinstance(leaf, dict):
                raise MetainfoError(f"{where}: file entry is not a dictionary")
            result.append(_v2_leaf(leaf, path, where, config))
            if len(result) > config.max_file_count:
                raise MetainfoError(f"more than {config.max_file_count} files in 'file tree'")
        else:
            stack.append((path, iter(child.items())))
    return result


def _v2_leaf(leaf: dict[bytes, Value], path: tuple[bytes, ...], where: str, config: Config) -> _V2File:
    attr = _attributes(leaf)
    if b"p" in attr:
        raise MetainfoError(f"{where}: a v2 file may not be a pad file")
    symlink = b"l" in attr
    length = 0 if symlink else _file_length(leaf, where, config)
    if not (symlink and isinstance(leaf.get(b"symlink path"), list)):
        root = leaf.get(b"pieces root")
        if length > 0 and (not isinstance(root, bytes) or len(root) != SHA256_LENGTH or not any(root)):
            raise MetainfoError(f"{where}: missing or invalid 'pieces root'")
    return _V2File(rel=_sanitize_parts(list(path), config), length=length)


def _check_hybrid(info: dict[bytes, Value], v1_files: list[_RawFile], piece_length: int, config: Config) -> None:
    """A hybrid's v1 file list must describe the same files as its v2 tree, piece-aligned."""
    if piece_length < BLOCK_SIZE or piece_length & (piece_length - 1):
        raise MetainfoError(f"piece length {piece_length} of a v2 torrent is not a power of two >= {BLOCK_SIZE}")
    v2 = _v2_files(info.get(b"file tree"), config)
    real = [f for f in v1_files if not f.pad]
    mismatch = MetainfoError("the v1 and v2 file lists of this hybrid torrent do not match")
    if len(real) != len(v2):
        raise mismatch
    for mine, theirs in zip(real, v2, strict=True):
        if mine.rel != theirs.rel or mine.length != theirs.length:
            raise mismatch
    offset = 0
    for f in v1_files:
        if not f.pad and f.length > 0 and offset % piece_length:
            raise MetainfoError("a file of this hybrid torrent does not start on a piece boundary")
        offset += f.length


# --- duplicates -------------------------------------------------------------------------------------


def _split_extension(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    if dot <= 0:
        return name, ""
    return name[:dot], name[dot:]


def _resolve_duplicates(paths: list[tuple[str, ...] | None], config: Config) -> list[tuple[str, ...] | None]:
    """Rename created files whose path (case-insensitively) repeats a file or a directory.

    `None` marks entries that are not created (pads, symlinks): they neither clash nor get renamed.
    The second `a/bar.txt` becomes `a/bar.1.txt`. Too many clashes means a hostile torrent
    (libtorrent agrees: too_many_duplicate_filenames).
    """

    def key(parts: tuple[str, ...]) -> str:
        return "/".join(parts).lower()

    directories: set[str] = set()
    for parts in paths:
        if parts is not None:
            for depth in range(1, len(parts)):
                directories.add(key(parts[:depth]))
    taken: set[str] = set()
    clashes = 0
    result: list[tuple[str, ...] | None] = []
    for parts in paths:
        if parts is None:
            result.append(None)
            continue
        candidate = parts
        if key(candidate) in taken or key(candidate) in directories:
            stem, extension = _split_extension(parts[-1])
            counter = 0
            while True:
                counter += 1
                candidate = (*parts[:-1], f"{stem}.{counter}{extension}")
                if key(candidate) not in taken and key(candidate) not in directories:
                    break
                clashes += 1
                if clashes > config.max_duplicate_renames:
                    raise MetainfoError("too many duplicate file names")
        taken.add(key(candidate))
        result.append(candidate)
    return result


# --- trackers and web seeds -------------------------------------------------------------------------


def _clean_url(raw: Value | None) -> str | None:
    if not isinstance(raw, bytes):
        return None
    url = _decode_text(raw).strip()
    return url or None


def _trackers(meta: dict[bytes, Value]) -> tuple[tuple[str, ...], ...]:
    tiers: list[tuple[str, ...]] = []
    seen: set[str] = set()
    announce_list = meta.get(b"announce-list")
    if isinstance(announce_list, list):
        for tier in announce_list:
            if not isinstance(tier, list):
                continue
            urls: list[str] = []
            for item in tier:
                url = _clean_url(item)
                if url is not None and url not in seen:
                    seen.add(url)
                    urls.append(url)
            if urls:
                tiers.append(tuple(urls))
    if not tiers:
        url = _clean_url(meta.get(b"announce"))
        if url is not None:
            tiers.append((url,))
    return tuple(tiers)


def _web_seeds(meta: dict[bytes, Value], multi_file: bool, file_count: int) -> tuple[str, ...]:
    url_list = meta.get(b"url-list")
    items: list[Value] = url_list if isinstance(url_list, list) else [url_list] if url_list else []
    seeds: list[str] = []
    for item in items:
        if not isinstance(item, bytes):
            continue
        raw = item.strip()
        if not raw:
            continue
        url = urllib.parse.quote(raw, safe=_URL_SAFE)
        # BEP 19: for a multi-file torrent the URL names a directory; libtorrent adds the slash.
        if multi_file and file_count > 1 and not url.endswith("/"):
            url += "/"
        if url not in seeds:
            seeds.append(url)
    return tuple(seeds)


# --- parse ------------------------------------------------------------------------------------------


def _decode(data: bytes, config: Config) -> tuple[dict[bytes, Value], dict[bytes, tuple[int, int]]]:
    if len(data) > config.max_torrent_file_size:
        raise MetainfoError(f"torrent file of {len(data)} bytes is over the {config.max_torrent_file_size}-byte limit")
    # Editors leave a newline after the final "e" (libtorrent ignores trailing bytes; a few files in its
    # own test suite have one). A dictionary ends in "e", so stripping white space never cuts into it,
    # and the spans still index `data` from its start.
    body = data.rstrip(_TRAILING_WHITESPACE)
    try:
        if not body.startswith(b"d"):
            # Valid bencode that is not a dictionary is a bad torrent, not bad bencode.
            top = bencode.decode(body, max_depth=config.bencode_max_depth, max_size=config.bencode_max_size)
            kind = {int: "an integer", bytes: "a byte string", list: "a list"}.get(type(top), "not a dictionary")
            raise MetainfoError(f"not a torrent file: the top level is {kind}, not a dictionary")
        return bencode.decode_with_spans(
            body, max_depth=config.bencode_max_depth, max_size=config.bencode_max_size, sorted_keys=False
        )
    except BencodeError as err:
        raise BencodeError(f"not a torrent file (invalid bencode): {err.reason}", err.offset) from err


def _meta_version(info: dict[bytes, Value], info_bytes: bytes, info_start: int, config: Config) -> int:
    version = info.get(b"meta version")
    if version is None:
        if b"file tree" in info:
            raise MetainfoError("'file tree' without 'meta version'")
        return 1
    if not isinstance(version, int) or version < 1:
        raise MetainfoError(f"invalid 'meta version' {version!r}")
    if version > META_VERSION_2:
        raise MetainfoError(f"unsupported 'meta version' {version}")
    if version == META_VERSION_2:
        if b"files" not in info and b"length" not in info:
            raise MetainfoError("v2-only torrents are not supported yet")
        if b"file tree" not in info:
            raise MetainfoError("a v2 torrent without 'file tree'")
        # BEP 52 info dictionaries must be canonical (libtorrent refuses them otherwise).
        try:
            bencode.decode(info_bytes, max_depth=config.bencode_max_depth, max_size=config.bencode_max_size)
        except BencodeError as err:
            raise BencodeError(
                f"invalid bencode in a v2 info dictionary: {err.reason}", info_start + err.offset
            ) from err
    return version


def parse(data: bytes, config: Config = DEFAULT_CONFIG) -> Torrent:
    """Parse a .torrent file's bytes. Raises MetainfoError (BencodeError for bad bencode), nothing else."""
    meta, spans = _decode(data, config)
    info = meta.get(b"info")
    if not isinstance(info, dict):
        raise MetainfoError("missing or invalid 'info' dictionary")
    info_start, info_end = spans[b"info"]
    info_bytes = bytes(data[info_start:info_end])
    info_hash = hashlib.sha1(info_bytes).digest()
    version = _meta_version(info, info_bytes, info_start, config)

    piece_length = info.get(b"piece length")
    if not isinstance(piece_length, int) or piece_length <= 0:
        raise MetainfoError("missing or invalid 'piece length'")
    if piece_length < config.min_piece_length:
        raise MetainfoError(f"piece length {piece_length} is below the minimum of {config.min_piece_length}")
    if piece_length > config.max_piece_length:
        raise MetainfoError(f"piece length {piece_length} is over the maximum of {config.max_piece_length}")

    raw_name = _preferred_bytes(info, b"name")
    if raw_name is None:
        raise MetainfoError("missing 'name'")
    name = sanitize_path_element(raw_name, config)

    multi_file = b"files" in info
    if multi_file:
        raw_files = _multi_files(info[b"files"], config)
        if not name:
            # As libtorrent does: a directory name that sanitises to nothing becomes the infohash.
            name = info_hash.hex()
    else:
        if b"length" not in info:
            raise MetainfoError("neither 'files' nor 'length' in 'info'")
        if not name:
            raise MetainfoError("the file name is empty once made safe")
        raw_files = [_raw_file(info, [raw_name], "the file", config)]
    if not raw_files:
        raise MetainfoError("no files in torrent")

    total = 0
    for f in raw_files:
        total += f.length
    if total == 0:
        raise MetainfoError("the torrent's total length is zero")
    if total > config.max_total_size:
        raise MetainfoError(f"total length {total} is over the {config.max_total_size}-byte limit")
    piece_count = -(-total // piece_length)
    if piece_count > config.max_piece_count:
        raise MetainfoError(f"{piece_count} pieces is over the limit of {config.max_piece_count}")
    pieces = info.get(b"pieces")
    if not isinstance(pieces, bytes):
        raise MetainfoError("missing or invalid 'pieces'")
    if len(pieces) % SHA1_LENGTH:
        raise MetainfoError(f"'pieces' is {len(pieces)} bytes, not a multiple of {SHA1_LENGTH}")
    if len(pieces) != piece_count * SHA1_LENGTH:
        raise MetainfoError(
            f"'pieces' holds {len(pieces) // SHA1_LENGTH} hashes but {total} bytes in pieces of "
            f"{piece_length} need {piece_count}"
        )

    if version == META_VERSION_2:
        _check_hybrid(info, raw_files, piece_length, config)

    # Paths relative to the output folder: multi-file torrents live in a directory named after them.
    full = [(name, *f.rel) if multi_file else (name,) for f in raw_files]
    resolved = _resolve_duplicates(
        [p if not f.pad and not f.symlink else None for p, f in zip(full, raw_files, strict=True)], config
    )

    entries: list[FileEntry] = []
    offset = 0
    for f, original, path in zip(raw_files, full, resolved, strict=True):
        final = path if path is not None else original
        if not is_safe_relative(final):
            raise MetainfoError(f"unsafe file path {final!r}")
        entries.append(
            FileEntry(
                path=final,
                length=f.length,
                offset=offset,
                pad=f.pad,
                executable=f.executable,
                hidden=f.hidden,
                symlink=f.symlink,
                symlink_target=f.symlink_target,
            )
        )
        offset += f.length

    private = info.get(b"private")
    creation_date = meta.get(b"creation date")
    return Torrent(
        name=name,
        info_hash=info_hash,
        piece_length=piece_length,
        piece_hashes=pieces,
        total_length=total,
        files=tuple(entries),
        trackers=_trackers(meta),
        web_seeds=_web_seeds(meta, multi_file, len(entries)),
        private=isinstance(private, int) and private != 0,
        creation_date=creation_date if isinstance(creation_date, int) and creation_date >= 0 else None,
        comment=_text_field(meta, b"comment"),
        created_by=_text_field(meta, b"created by"),
        is_multi_file=multi_file,
        is_hybrid=version == META_VERSION_2,
        info_bytes=info_bytes,
    )
