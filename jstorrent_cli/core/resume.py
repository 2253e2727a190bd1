"""The resume state of one download: what it holds, its bytes, and which pieces it lets us trust.

Sans-IO: `encode` / `decode` turn a ResumeState into bytes and back; `trusted_pieces` compares it
with file facts the caller gathered (tasks/resume_store.py reads and writes the file, stats files).

The state is one bencoded dictionary (keys sorted, so it decodes with our strict decoder):

    format       b"jstorrent resume"          what this file is
    version      1                            FORMAT_VERSION; another version is not read
    info hash    20 bytes                     the torrent it belongs to
    piece count  int                          the torrent's piece count
    verified     bytes                        BEP 3 bitfield (high bit first) of pieces hashed ok
                                              and flushed to disk; spare bits zero
    files        list, one per file index     [size, mtime_ns] as stat saw it when the state was
                                              written, or [] if the file was not on disk
    layout       bytes                        an opaque token of where bytes live (a selective
                                              download's parts layout); b"" for the plain layout

A state is trusted piece by piece, never wholesale: a piece recorded verified is trusted only if
every file holding one of its bytes (pad files aside) still has exactly the recorded size and
mtime_ns. A file that was touched since (by us after the save, by the user, by anything) makes all
its pieces untrusted; those are re-hashed, not re-downloaded. A state for another torrent, another
piece count or another file count trusts nothing.

Everything untrusted that `decode` reads raises ResumeStateError, which the store treats as "no
state" (a corrupt state file costs a re-hash, never a crash).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Iterator, Sequence

from jstorrent_cli.config import DEFAULT_CONFIG, Config
from jstorrent_cli.core import bencode
from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.errors import BencodeError, JsTorrentError

__all__ = [
    "FORMAT_VERSION",
    "FileStat",
    "ResumeState",
    "ResumeStateError",
    "bitfield_from_pieces",
    "decode",
    "encode",
    "pieces_from_bitfield",
    "trusted_pieces",
]

FORMAT_VERSION = 1
INFO_HASH_LENGTH = 20  # a v1 infohash (SHA-1)
_MAGIC = b"jstorrent resume"
_BITS_PER_BYTE = 8
_HIGH_BIT = 0x80
_STAT_FIELDS = 2  # [size, mtime_ns]

_K_FORMAT = b"format"
_K_VERSION = b"version"
_K_INFO_HASH = b"info hash"
_K_PIECE_COUNT = b"piece count"
_K_VERIFIED = b"verified"
_K_FILES = b"files"
_K_LAYOUT = b"layout"


class ResumeStateError(JsTorrentError):
    """Bytes that are not a resume state we can use (never shown to a user: it means "no state")."""


@dataclasses.dataclass(frozen=True, slots=True)
class FileStat:
    """What stat said about a file on disk: its size and modification time in nanoseconds."""

    size: int
    mtime_ns: int


def bitfield_from_pieces(pieces: Iterable[int], piece_count: int) -> bytes:
    """A BEP 3 bitfield (piece 0 is the high bit of byte 0) with the given pieces set."""
    field = bytearray(-(-piece_count // _BITS_PER_BYTE))
    for piece in pieces:
        if not 0 <= piece < piece_count:
            raise ValueError(f"piece {piece} outside 0..{piece_count - 1}")
        field[piece // _BITS_PER_BYTE] |= _HIGH_BIT >> (piece % _BITS_PER_BYTE)
    return bytes(field)


def pieces_from_bitfield(field: bytes, piece_count: int) -> Iterator[int]:
    """The pieces set in a BEP 3 bitfield. Raises ResumeStateError on a wrong length or spare bits."""
    if len(field) != -(-piece_count // _BITS_PER_BYTE):
        raise ResumeStateError(f"bitfield of {len(field)} bytes for {piece_count} pieces")
    spare = len(field) * _BITS_PER_BYTE - piece_count
    if spare and field[-1] & ((1 << spare) - 1):
        raise ResumeStateError("bitfield has spare bits set")
    return _set_bits(field)


def _set_bits(field: bytes) -> Iterator[int]:
    for index, byte in enumerate(field):
        if byte:
            base = index * _BITS_PER_BYTE
            for bit in range(_BITS_PER_BYTE):
                if byte & (_HIGH_BIT >> bit):
                    yield base + bit


@dataclasses.dataclass(frozen=True, slots=True)
class ResumeState:
    """One download's resume state. `files` is indexed like the geometry's files."""

    info_hash: bytes
    piece_count: int
    verified: bytes  # bitfield, see pieces_from_bitfield
    files: tuple[FileStat | None, ...]
    layout: bytes = b""

    @classmethod
    def make(
        cls,
        info_hash: bytes,
        piece_count: int,
        verified: Iterable[int],
        files: Sequence[FileStat | None],
        layout: bytes = b"",
    ) -> ResumeState:
        """Build a state from a set of verified pieces (checked to lie in 0..piece_count-1)."""
        return cls(info_hash, piece_count, bitfield_from_pieces(verified, piece_count), tuple(files), layout)

    def verified_pieces(self) -> frozenset[int]:
        return frozenset(_set_bits(self.verified))


def encode(state: ResumeState) -> bytes:
    """The bytes of a state file."""
    files: list[bencode.Value] = [[] if s is None else [s.size, s.mtime_ns] for s in state.files]
    return bencode.encode(
        {
            _K_FORMAT: _MAGIC,
            _K_VERSION: FORMAT_VERSION,
            _K_INFO_HASH: state.info_hash,
            _K_PIECE_COUNT: state.piece_count,
            _K_VERIFIED: state.verified,
            _K_FILES: files,
            _K_LAYOUT: state.layout,
        }
    )


def _get(d: dict[bytes, bencode.Value], key: bytes) -> bencode.Value:
    try:
        return d[key]
    except KeyError:
        raise ResumeStateError(f"no {key.decode()!r} in the state") from None


def _int(d: dict[bytes, bencode.Value], key: bytes) -> int:
    value = _get(d, key)
    if not isinstance(value, int) or value < 0:
        raise ResumeStateError(f"{key.decode()!r} is not a count")
    return value


def _bytes(d: dict[bytes, bencode.Value], key: bytes) -> bytes:
    value = _get(d, key)
    if not isinstance(value, bytes):
        raise ResumeStateError(f"{key.decode()!r} is not a byte string")
    return value


def _file_stat(value: bencode.Value) -> FileStat | None:
    if value == []:
        return None
    if not isinstance(value, list) or len(value) != _STAT_FIELDS:
        raise ResumeStateError("a file entry is not [size, mtime_ns]")
    size, mtime_ns = value
    # mtime_ns may be negative (a file dated before 1970); a size may not.
    if not isinstance(size, int) or not isinstance(mtime_ns, int) or size < 0:
        raise ResumeStateError("a file entry is not [size, mtime_ns]")
    return FileStat(size, mtime_ns)


def decode(data: bytes, config: Config = DEFAULT_CONFIG) -> ResumeState:
    """Parse a state file's bytes. Anything that is not a well-formed version-1 state raises
    ResumeStateError (bad bencode, missing or mistyped keys, another version, a bitfield whose
    length or spare bits disagree with the piece count)."""
    try:
        top = bencode.decode(data, max_depth=config.resume_max_depth, max_size=config.resume_max_state_bytes)
    except BencodeError as err:
        raise ResumeStateError(f"not bencode: {err}") from None
    if not isinstance(top, dict):
        raise ResumeStateError("the state is not a dictionary")
    if _get(top, _K_FORMAT) != _MAGIC:
        raise ResumeStateError("not a jstorrent resume state")
    version = _int(top, _K_VERSION)
    if version != FORMAT_VERSION:
        raise ResumeStateError(f"state format version {version}, this jstorrent reads {FORMAT_VERSION}")
    info_hash = _bytes(top, _K_INFO_HASH)
    if len(info_hash) != INFO_HASH_LENGTH:
        raise ResumeStateError("the info hash is not 20 bytes")
    piece_count = _int(top, _K_PIECE_COUNT)
    verified = _bytes(top, _K_VERIFIED)
    for _ in pieces_from_bitfield(verified, piece_count):  # checks length and spare bits
        break
    files = _get(top, _K_FILES)
    if not isinstance(files, list):
        raise ResumeStateError("'files' is not a list")
    return ResumeState(info_hash, piece_count, verified, tuple(_file_stat(v) for v in files), _bytes(top, _K_LAYOUT))


def trusted_pieces(
    state: ResumeState,
    current_file_stats: Sequence[FileStat | None],
    geometry: Geometry,
    *,
    info_hash: bytes | None = None,
    layout: bytes = b"",
    layout_files: Collection[int] = (),
) -> frozenset[int]:
    """The pieces recorded verified whose every touching (non-pad) file is unchanged.

    `current_file_stats[i]` is file i as stat sees it now (None: not on disk), indexed like
    `geometry`'s files. A file is unchanged when it was on disk at the save, is now, and has the
    same size and mtime_ns. When `layout` differs from the recorded one, the files named in
    `layout_files` (a selective download's parts file) count as changed: their bytes moved.
    A state for another torrent (`info_hash`), piece count or file count trusts nothing.

    Cost: O(files + pieces of changed files + verified pieces), no per-piece span lookups.
    """
    if len(current_file_stats) != geometry.file_count:
        raise ValueError("current_file_stats must have one entry per file of the geometry")
    if (
        state.piece_count != geometry.piece_count
        or len(state.files) != geometry.file_count
        or (info_hash is not None and info_hash != state.info_hash)
    ):
        return frozenset()
    moved = set(layout_files) if layout != state.layout else set()
    untrusted: set[int] = set()
    for index in range(geometry.file_count):
        if geometry.is_pad(index):
            continue
        recorded, now = state.files[index], current_file_stats[index]
        if recorded is None or now is None or recorded != now or index in moved:
            untrusted.update(geometry.file_pieces(index))
    return frozenset(p for p in _set_bits(state.verified) if p not in untrusted)
