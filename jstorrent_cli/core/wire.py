"""The peer wire protocol (BEP 3, BEP 6 fast extension, BEP 10 extension protocol, BEP 5 port).

Three layers, all sans-IO (bytes in, messages out, bytes to send; no sockets, no clock):

* Messages: one frozen dataclass per message, and `encode(msg) -> bytes`.
  `encode_piece_header(index, begin, length)` lets a sender write the 13-byte header and the block
  separately instead of concatenating a 16 KiB buffer.
* `Decoder`: an incremental decoder. `feed(data)` returns every message completed by `data`; any
  chunking of the stream gives the same messages. Every length prefix is checked against what its
  message type allows *before* any of the body is buffered, so a hostile 4 GiB prefix costs nothing.
* `PeerProtocol`: the state of one connection in the h11 style. `receive_data(data)` decodes and
  checks the rules of the protocol (handshake first, infohash, no connection to ourselves,
  a late bitfield only as an update, indices and block ranges inside the torrent, fast and extension messages only
  when both sides advertised them) and tracks the choke and interest flags of both sides and the
  peer's pieces. `send(msg)` returns the bytes to write and updates our side's flags.

Decisions:

* Unknown message ids are ignored, as clients have always done: new ids are how the protocol grew
  (BEP 6, BEP 10), and a peer that assumes we know one must not cost the connection. Their
  bodies are skipped without being buffered and counted in `Decoder.unknown_messages`; their
  length is still capped by `Config.max_message_length`.
* The reserved bits other than extension (BEP 10), fast (BEP 6) and DHT (BEP 5) are not kept.
* A PORT message is accepted whatever the peer's DHT bit says: it is harmless and some clients send
  it regardless.
* The extended handshake (extended message id 0) is decoded into `ExtendedHandshake`; it may arrive
  before the bitfield (libtorrent sends it first), so it does not close the "first message" window.
  Other extended messages come out as `Extended(ext_id, payload)` with the payload undecoded.
* A fast peer that sends none of bitfield / have-all / have-none is tolerated (it is taken to have
  nothing). One of them arriving later than first is an update, as aria2c sends it: it comes out
  as one HAVE per newly announced piece; one that withdraws a piece is a RemoteProtocolError.
* Whether a PIECE or REJECT answers a request we made is the scheduler's business (it owns every
  outstanding request); this module checks only that its coordinates lie inside the torrent.

Copies of a block's bytes (counted from the `bytes` object that the socket's receive returned to
what the disk writer gets): 0 when the whole PIECE message lies inside one fed buffer (the block is
a read-only memoryview slice of that buffer); 1 when it straddles feeds (its bytes are gathered
into a fresh bytearray of exactly the block's length, handed out as a read-only memoryview of it)
or when the fed buffer is writable (a bytearray or a writable memoryview, which the caller may
reuse, so its block is copied once into its own bytes). Never more than 1.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Sequence
from typing import Final

from jstorrent_cli.config import DEFAULT_CONFIG, Config
from jstorrent_cli.core import bencode
from jstorrent_cli.errors import BencodeError, RemoteProtocolError

# --- protocol constants (BEP 3, 5, 6, 10) -------------------------------------------------------

PROTOCOL_NAME: Final = b"BitTorrent protocol"
HANDSHAKE_LENGTH: Final = 1 + len(PROTOCOL_NAME) + 8 + 20 + 20  # 68
INFO_HASH_LENGTH: Final = 20
PEER_ID_LENGTH: Final = 20
_RESERVED_LENGTH: Final = 8
_HANDSHAKE_PREFIX: Final = bytes([len(PROTOCOL_NAME)]) + PROTOCOL_NAME

# Reserved-bit positions: (byte index, mask).
_EXTENDED_BYTE, _EXTENDED_MASK = 5, 0x10  # BEP 10
_FAST_BYTE, _FAST_MASK = 7, 0x04  # BEP 6
_DHT_BYTE, _DHT_MASK = 7, 0x01  # BEP 5

MSG_CHOKE: Final = 0
MSG_UNCHOKE: Final = 1
MSG_INTERESTED: Final = 2
MSG_NOT_INTERESTED: Final = 3
MSG_HAVE: Final = 4
MSG_BITFIELD: Final = 5
MSG_REQUEST: Final = 6
MSG_PIECE: Final = 7
MSG_CANCEL: Final = 8
MSG_PORT: Final = 9
MSG_SUGGEST_PIECE: Final = 0x0D
MSG_HAVE_ALL: Final = 0x0E
MSG_HAVE_NONE: Final = 0x0F
MSG_REJECT_REQUEST: Final = 0x10
MSG_ALLOWED_FAST: Final = 0x11
MSG_EXTENDED: Final = 20
EXTENDED_HANDSHAKE_ID: Final = 0

_LENGTH_PREFIX: Final = 4
_PIECE_HEADER: Final = 1 + 4 + 4  # id, index, begin: what a PIECE's length counts besides the block
_MAX_PORT: Final = 0xFFFF
_MAX_EXTENDED_ID: Final = 0xFF
_IPV4_LENGTH: Final = 4
_IPV6_LENGTH: Final = 16

_U32 = struct.Struct(">I")
_HEADER = struct.Struct(">IB")  # length prefix and message id
_PIECE_HEAD = struct.Struct(">IBII")
_PIECE_HEAD_SIZE: Final = _PIECE_HEAD.size  # length prefix, id, index, begin: 13 bytes
_INDEX_MSG = struct.Struct(">IBI")
_TRIPLE_MSG = struct.Struct(">IBIII")
_PORT_MSG = struct.Struct(">IBH")
_U32_PAIR = struct.Struct(">II")
_U32_TRIPLE = struct.Struct(">III")
_U16 = struct.Struct(">H")

# Body lengths (the length prefix's value, id byte included) of the fixed-size messages.
_FIXED_LENGTHS: Final[dict[int, int]] = {
    MSG_CHOKE: 1,
    MSG_UNCHOKE: 1,
    MSG_INTERESTED: 1,
    MSG_NOT_INTERESTED: 1,
    MSG_HAVE: 5,
    MSG_REQUEST: 13,
    MSG_CANCEL: 13,
    MSG_PORT: 3,
    MSG_SUGGEST_PIECE: 5,
    MSG_HAVE_ALL: 1,
    MSG_HAVE_NONE: 1,
    MSG_REJECT_REQUEST: 13,
    MSG_ALLOWED_FAST: 5,
}
_MESSAGE_NAMES: Final[dict[int, str]] = {
    MSG_CHOKE: "choke",
    MSG_UNCHOKE: "unchoke",
    MSG_INTERESTED: "interested",
    MSG_NOT_INTERESTED: "not interested",
    MSG_HAVE: "have",
    MSG_BITFIELD: "bitfield",
    MSG_REQUEST: "request",
    MSG_PIECE: "piece",
    MSG_CANCEL: "cancel",
    MSG_PORT: "port",
    MSG_SUGGEST_PIECE: "suggest piece",
    MSG_HAVE_ALL: "have all",
    MSG_HAVE_NONE: "have none",
    MSG_REJECT_REQUEST: "reject request",
    MSG_ALLOWED_FAST: "allowed fast",
    MSG_EXTENDED: "extended",
}


class SelfConnectionError(RemoteProtocolError):
    """The peer at the other end is ourselves (its peer id is ours): drop the connection."""


class LocalProtocolError(RuntimeError):
    """We were asked to send something the protocol forbids at this point (a programming error)."""


# --- messages -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Handshake:
    info_hash: bytes
    peer_id: bytes
    supports_extended: bool = False
    supports_fast: bool = False
    supports_dht: bool = False

    def __post_init__(self) -> None:
        if len(self.info_hash) != INFO_HASH_LENGTH or len(self.peer_id) != PEER_ID_LENGTH:
            raise ValueError("a handshake needs a 20-byte info hash and a 20-byte peer id")


@dataclasses.dataclass(frozen=True, slots=True)
class KeepAlive:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Choke:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Unchoke:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Interested:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class NotInterested:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Have:
    index: int


@dataclasses.dataclass(frozen=True, slots=True)
class Bitfield:
    bits: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    index: int
    begin: int
    length: int


@dataclasses.dataclass(frozen=True, slots=True)
class Piece:
    """A block. `block` is a read-only memoryview (or bytes): pass it to the writer as is."""

    index: int
    begin: int
    block: memoryview | bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Cancel:
    index: int
    begin: int
    length: int


@dataclasses.dataclass(frozen=True, slots=True)
class Port:
    port: int


@dataclasses.dataclass(frozen=True, slots=True)
class HaveAll:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class HaveNone:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class SuggestPiece:
    index: int


@dataclasses.dataclass(frozen=True, slots=True)
class RejectRequest:
    index: int
    begin: int
    length: int


@dataclasses.dataclass(frozen=True, slots=True)
class AllowedFast:
    index: int


@dataclasses.dataclass(frozen=True, slots=True)
class Extended:
    """An extension message other than the handshake; `ext_id` is the id we advertised for it."""

    ext_id: int
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class ExtendedHandshake:
    """The BEP 10 handshake dictionary (extended message id 0). Unknown keys are ignored.

    Values of the wrong type or out of range are dropped (None, or left out of `m`), as BEP 10
    asks receivers to ignore what they do not understand; only bytes that are not a bencoded
    dictionary make the message a protocol error.
    """

    m: dict[str, int] = dataclasses.field(default_factory=dict)
    v: str | None = None
    reqq: int | None = None
    p: int | None = None
    yourip: bytes | None = None
    metadata_size: int | None = None


Message = (
    Handshake
    | KeepAlive
    | Choke
    | Unchoke
    | Interested
    | NotInterested
    | Have
    | Bitfield
    | Request
    | Piece
    | Cancel
    | Port
    | HaveAll
    | HaveNone
    | SuggestPiece
    | RejectRequest
    | AllowedFast
    | Extended
    | ExtendedHandshake
)

KEEP_ALIVE: Final = KeepAlive()
CHOKE: Final = Choke()
UNCHOKE: Final = Unchoke()
INTERESTED: Final = Interested()
NOT_INTERESTED: Final = NotInterested()
HAVE_ALL: Final = HaveAll()
HAVE_NONE: Final = HaveNone()

# --- encoding -----------------------------------------------------------------------------------


def _bare(msg_id: int) -> bytes:
    return _HEADER.pack(1, msg_id)


_KEEP_ALIVE_BYTES: Final = _U32.pack(0)
_BARE_BYTES: Final[dict[type, bytes]] = {
    Choke: _bare(MSG_CHOKE),
    Unchoke: _bare(MSG_UNCHOKE),
    Interested: _bare(MSG_INTERESTED),
    NotInterested: _bare(MSG_NOT_INTERESTED),
    HaveAll: _bare(MSG_HAVE_ALL),
    HaveNone: _bare(MSG_HAVE_NONE),
}


def encode_handshake(msg: Handshake) -> bytes:
    reserved = bytearray(_RESERVED_LENGTH)
    if msg.supports_extended:
        reserved[_EXTENDED_BYTE] |= _EXTENDED_MASK
    if msg.supports_fast:
        reserved[_FAST_BYTE] |= _FAST_MASK
    if msg.supports_dht:
        reserved[_DHT_BYTE] |= _DHT_MASK
    return _HANDSHAKE_PREFIX + bytes(reserved) + msg.info_hash + msg.peer_id


def encode_piece_header(index: int, begin: int, length: int) -> bytes:
    """The 13 bytes that precede a block of `length` bytes in a PIECE message."""
    return _PIECE_HEAD.pack(_PIECE_HEADER + length, MSG_PIECE, index, begin)


def encode_extended_handshake(msg: ExtendedHandshake) -> bytes:
    """The bencoded dictionary of an extended handshake (the payload after the id byte 0)."""
    body: dict[bytes, bencode.Value] = {b"m": {name.encode("utf-8"): ext_id for name, ext_id in msg.m.items()}}
    if msg.v is not None:
        body[b"v"] = msg.v.encode("utf-8")
    if msg.reqq is not None:
        body[b"reqq"] = msg.reqq
    if msg.p is not None:
        body[b"p"] = msg.p
    if msg.yourip is not None:
        body[b"yourip"] = msg.yourip
    if msg.metadata_size is not None:
        body[b"metadata_size"] = msg.metadata_size
    return bencode.encode(body)


def encode_block_refs(msg_id: int, refs: Sequence[tuple[int, int, int]]) -> bytearray:
    """Many REQUEST, CANCEL or REJECT REQUEST messages `(index, begin, length)` as one buffer, packed
    in place (no message object and no bytes object per block)."""
    if msg_id not in (MSG_REQUEST, MSG_CANCEL, MSG_REJECT_REQUEST):
        raise ValueError(f"message id {msg_id} does not name a block")
    size = _TRIPLE_MSG.size
    out = bytearray(size * len(refs))
    pack_into = _TRIPLE_MSG.pack_into
    position = 0
    for index, begin, length in refs:
        pack_into(out, position, 13, msg_id, index, begin, length)
        position += size
    return out


def _encode_extended(ext_id: int, payload: bytes) -> bytes:
    return _HEADER.pack(2 + len(payload), MSG_EXTENDED) + bytes((ext_id,)) + payload


def encode(msg: Message) -> bytes:
    """The bytes of one message on the wire (length prefix included)."""
    kind = type(msg)
    bare = _BARE_BYTES.get(kind)
    if bare is not None:
        return bare
    if isinstance(msg, Piece):
        return encode_piece_header(msg.index, msg.begin, len(msg.block)) + bytes(msg.block)
    if isinstance(msg, Request):
        return _TRIPLE_MSG.pack(13, MSG_REQUEST, msg.index, msg.begin, msg.length)
    if isinstance(msg, Have):
        return _INDEX_MSG.pack(5, MSG_HAVE, msg.index)
    if isinstance(msg, Cancel):
        return _TRIPLE_MSG.pack(13, MSG_CANCEL, msg.index, msg.begin, msg.length)
    if isinstance(msg, RejectRequest):
        return _TRIPLE_MSG.pack(13, MSG_REJECT_REQUEST, msg.index, msg.begin, msg.length)
    if isinstance(msg, KeepAlive):
        return _KEEP_ALIVE_BYTES
    if isinstance(msg, Bitfield):
        return _HEADER.pack(1 + len(msg.bits), MSG_BITFIELD) + bytes(msg.bits)
    if isinstance(msg, SuggestPiece):
        return _INDEX_MSG.pack(5, MSG_SUGGEST_PIECE, msg.index)
    if isinstance(msg, AllowedFast):
        return _INDEX_MSG.pack(5, MSG_ALLOWED_FAST, msg.index)
    if isinstance(msg, Port):
        return _PORT_MSG.pack(3, MSG_PORT, msg.port)
    if isinstance(msg, Extended):
        if not 0 <= msg.ext_id <= _MAX_EXTENDED_ID:
            raise ValueError(f"extended message id {msg.ext_id} does not fit in a byte")
        return _encode_extended(msg.ext_id, bytes(msg.payload))
    if isinstance(msg, ExtendedHandshake):
        return _encode_extended(EXTENDED_HANDSHAKE_ID, encode_extended_handshake(msg))
    if isinstance(msg, Handshake):
        return encode_handshake(msg)
    raise TypeError(f"not a peer wire message: {msg!r}")


# --- decoding -----------------------------------------------------------------------------------


def _decode_handshake(data: bytes) -> Handshake:
    """Decode the 68 handshake bytes (the 20-byte prefix already checked)."""
    start = len(_HANDSHAKE_PREFIX)
    reserved = data[start : start + _RESERVED_LENGTH]
    info_start = start + _RESERVED_LENGTH
    peer_start = info_start + INFO_HASH_LENGTH
    return Handshake(
        info_hash=bytes(data[info_start:peer_start]),
        peer_id=bytes(data[peer_start:HANDSHAKE_LENGTH]),
        supports_extended=bool(reserved[_EXTENDED_BYTE] & _EXTENDED_MASK),
        supports_fast=bool(reserved[_FAST_BYTE] & _FAST_MASK),
        supports_dht=bool(reserved[_DHT_BYTE] & _DHT_MASK),
    )


def _optional_int(value: object, low: int, high: int | None) -> int | None:
    if isinstance(value, int) and value >= low and (high is None or value <= high):
        return value
    return None


def decode_extended_handshake(payload: bytes, config: Config = DEFAULT_CONFIG) -> ExtendedHandshake:
    """Parse the bencoded dictionary of an extended handshake; not a dictionary -> RemoteProtocolError."""
    try:
        # Keys in any order: BEP 10 does not ask for canonical bencode here, only for a dictionary.
        value = bencode.decode(
            payload,
            max_depth=config.bencode_max_depth,
            max_size=config.max_message_length,
            sorted_keys=False,
        )
    except BencodeError as err:
        raise RemoteProtocolError(f"extended handshake is not valid bencode: {err}") from None
    if not isinstance(value, dict):
        raise RemoteProtocolError("extended handshake is not a dictionary")
    m: dict[str, int] = {}
    raw_m = value.get(b"m")
    if isinstance(raw_m, dict):
        for raw_name, raw_id in raw_m.items():
            ext_id = _optional_int(raw_id, 0, _MAX_EXTENDED_ID)
            if ext_id is None:
                continue
            try:
                m[raw_name.decode("utf-8")] = ext_id
            except UnicodeDecodeError:
                continue
    raw_v = value.get(b"v")
    v = raw_v.decode("utf-8", errors="replace") if isinstance(raw_v, bytes) else None
    raw_ip = value.get(b"yourip")
    yourip = raw_ip if isinstance(raw_ip, bytes) and len(raw_ip) in (_IPV4_LENGTH, _IPV6_LENGTH) else None
    return ExtendedHandshake(
        m=m,
        v=v,
        reqq=_optional_int(value.get(b"reqq"), 1, None),
        p=_optional_int(value.get(b"p"), 1, _MAX_PORT),
        yourip=yourip,
        metadata_size=_optional_int(value.get(b"metadata_size"), 0, None),
    )


def bitfield_length(num_pieces: int) -> int:
    """Bytes in a bitfield of `num_pieces` pieces (ceil(num_pieces / 8))."""
    return (num_pieces + 7) // 8


def peek_handshake(data: bytes | bytearray | memoryview) -> Handshake | None:
    """The handshake at the start of `data`, or None while fewer than 68 bytes are there.

    For a listener that must learn the info hash before it knows which torrent (and so which
    PeerProtocol) a connection is for: gather bytes until this returns a Handshake, then create the
    PeerProtocol and pass it *all* the bytes (handshake included). A wrong protocol string is a
    RemoteProtocolError as soon as its first differing byte is there.
    """
    head = bytes(data[:HANDSHAKE_LENGTH])
    checked = min(len(head), len(_HANDSHAKE_PREFIX))
    if head[:checked] != _HANDSHAKE_PREFIX[:checked]:
        raise RemoteProtocolError("not a BitTorrent handshake")
    if len(head) < HANDSHAKE_LENGTH:
        return None
    return _decode_handshake(head)


class Decoder:
    """Incremental decoder of one direction of a peer connection.

    `feed(data)` returns the messages that `data` completes, in order. The first message is the
    68-byte handshake unless `expect_handshake=False`. Errors are RemoteProtocolError, after which
    the decoder must not be fed again.

    Buffers: `_pending` holds at most one message's header, or the whole body of a non-PIECE
    message (at most `max_message_length` + 4 bytes, only once the length was accepted); `_block`
    holds one PIECE's block (at most `block_size`, allocated once its length was accepted). The
    body of an unknown message is skipped, never buffered. `buffered` tells how many bytes are held.
    """

    __slots__ = (
        "_block",
        "_block_begin",
        "_block_filled",
        "_block_index",
        "_config",
        "_handshake_buf",
        "_max_length",
        "_max_piece_length",
        "_num_pieces",
        "_pending",
        "_skip",
        "unknown_messages",
    )

    def __init__(
        self,
        config: Config = DEFAULT_CONFIG,
        *,
        num_pieces: int | None = None,
        expect_handshake: bool = True,
    ) -> None:
        self._config = config
        self._num_pieces = num_pieces
        self._max_piece_length = config.block_size + _PIECE_HEADER
        self._max_length = max(self._max_piece_length, config.max_message_length)
        # None once the handshake is done; else the bytes of it received so far.
        self._handshake_buf: bytearray | None = bytearray() if expect_handshake else None
        self._pending = bytearray()
        self._block: bytearray | None = None
        self._block_filled = 0
        self._block_index = 0
        self._block_begin = 0
        self._skip = 0
        self.unknown_messages = 0

    @property
    def num_pieces(self) -> int | None:
        return self._num_pieces

    @num_pieces.setter
    def num_pieces(self, value: int | None) -> None:
        """Set once the torrent's size is known (after a magnet link's metadata arrived)."""
        self._num_pieces = value

    @property
    def buffered(self) -> int:
        """Bytes held for incomplete messages (the header buffer plus a partial block)."""
        held = len(self._pending) + (len(self._block) if self._block is not None else 0)
        if self._handshake_buf is not None:
            held += len(self._handshake_buf)
        return held

    # -- checks made before any body byte is buffered --

    def _check_length(self, length: int) -> None:
        if length > self._max_length:
            raise RemoteProtocolError(f"message length {length} is over the {self._max_length}-byte limit")

    def _check_kind(self, msg_id: int, length: int) -> None:
        fixed = _FIXED_LENGTHS.get(msg_id)
        if fixed is not None:
            if length != fixed:
                name = _MESSAGE_NAMES[msg_id]
                raise RemoteProtocolError(f"{name} message of length {length}, expected {fixed}")
        elif msg_id == MSG_PIECE:
            if length <= _PIECE_HEADER or length > self._max_piece_length:
                raise RemoteProtocolError(
                    f"piece message of length {length}: its block must be 1..{self._config.block_size} bytes"
                )
        elif msg_id == MSG_BITFIELD:
            if self._num_pieces is not None:
                expected = 1 + bitfield_length(self._num_pieces)
                if length != expected:
                    raise RemoteProtocolError(f"bitfield message of length {length}, expected {expected}")
            elif length > self._config.max_message_length:
                raise RemoteProtocolError(f"bitfield message of length {length} is too long")
        elif msg_id == MSG_EXTENDED:
            if length < 2 or length > self._config.max_message_length:
                raise RemoteProtocolError(f"extended message of length {length}")
        elif length > self._config.max_message_length:
            raise RemoteProtocolError(f"unknown message {msg_id} of length {length} is too long")

    # -- parsing of a complete non-PIECE body (msg_id byte excluded) --

    def _parse_body(self, msg_id: int, body: memoryview) -> Message | None:
        if msg_id == MSG_HAVE:
            return Have(_U32.unpack_from(body)[0])
        if msg_id == MSG_REQUEST:
            return Request(*_U32_TRIPLE.unpack_from(body))
        if msg_id == MSG_CANCEL:
            return Cancel(*_U32_TRIPLE.unpack_from(body))
        if msg_id == MSG_CHOKE:
            return CHOKE
        if msg_id == MSG_UNCHOKE:
            return UNCHOKE
        if msg_id == MSG_INTERESTED:
            return INTERESTED
        if msg_id == MSG_NOT_INTERESTED:
            return NOT_INTERESTED
        if msg_id == MSG_BITFIELD:
            return Bitfield(bytes(body))
        if msg_id == MSG_REJECT_REQUEST:
            return RejectRequest(*_U32_TRIPLE.unpack_from(body))
        if msg_id == MSG_ALLOWED_FAST:
            return AllowedFast(_U32.unpack_from(body)[0])
        if msg_id == MSG_SUGGEST_PIECE:
            return SuggestPiece(_U32.unpack_from(body)[0])
        if msg_id == MSG_HAVE_ALL:
            return HAVE_ALL
        if msg_id == MSG_HAVE_NONE:
            return HAVE_NONE
        if msg_id == MSG_PORT:
            return Port(_U16.unpack_from(body)[0])
        if msg_id == MSG_EXTENDED:
            ext_id = body[0]
            payload = bytes(body[1:])
            if ext_id == EXTENDED_HANDSHAKE_ID:
                return decode_extended_handshake(payload, self._config)
            return Extended(ext_id, payload)
        # Unknown ids never reach here: their bodies are skipped.
        raise AssertionError(f"unexpected message id {msg_id}")  # pragma: no cover

    # -- feeding --

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Decode what `data` completes. Several blocks of one receive come out in one list.

        When `data` is `bytes` (or a read-only memoryview), the PIECE blocks that lie wholly in it
        are views of it: the caller must not mutate it (bytes cannot be). Writable buffers are
        copied from (once), so a caller may reuse its receive buffer.
        """
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        out: list[Message] = []
        pos = 0
        end = len(mv)
        if self._handshake_buf is not None:
            pos = self._feed_handshake(mv, out)
            if self._handshake_buf is not None:
                return out
        zero_copy = mv.readonly
        pending = self._pending
        piece_head = _PIECE_HEAD.unpack_from
        max_piece = self._max_piece_length
        while pos < end:
            if self._block is not None:
                pos = self._fill_block(mv, pos, end, out)
                continue
            if self._skip:
                taken = min(self._skip, end - pos)
                self._skip -= taken
                pos += taken
                continue
            if not pending:
                # Fast path: whole PIECE messages back to back (the bulk of a download). Anything
                # else, or anything to complain about, goes the general way below. From a writable
                # buffer the run is copied once, as one bytes object, and its blocks are views of
                # that copy: one allocation per run, not per block, and nothing but the run (its
                # 13-byte headers aside) is kept alive by the blocks.
                run_start = pos
                spans: list[tuple[int, int, int, int]] = []
                while end - pos >= _PIECE_HEAD_SIZE:
                    length, msg_id, index, begin = piece_head(mv, pos)
                    block_end = pos + _LENGTH_PREFIX + length
                    if msg_id != MSG_PIECE or not _PIECE_HEADER < length <= max_piece or block_end > end:
                        break
                    spans.append((index, begin, pos + _PIECE_HEAD_SIZE, block_end))
                    pos = block_end
                if spans:
                    base, shift = (mv, 0) if zero_copy else (memoryview(bytes(mv[run_start:pos])), run_start)
                    for index, begin, start, stop in spans:
                        out.append(Piece(index, begin, base[start - shift : stop - shift]))
                if pos >= end:
                    break
                new_pos = self._parse_direct(mv, pos, end, zero_copy, out)
                if new_pos != pos:
                    pos = new_pos
                    continue
            # Slow path: gather the message into `_pending` up to its next decision point.
            need = self._need()
            taken = min(need - len(pending), end - pos)
            pending += mv[pos : pos + taken]
            pos += taken
            if len(pending) == need:
                self._advance(out)
        return out

    def _feed_handshake(self, mv: memoryview, out: list[Message]) -> int:
        buf = self._handshake_buf
        assert buf is not None
        old = len(buf)
        taken = min(HANDSHAKE_LENGTH - old, len(mv))
        buf += mv[:taken]
        # Check the protocol string as soon as its bytes arrive: a stranger is dropped at once.
        checked = min(len(buf), len(_HANDSHAKE_PREFIX))
        if buf[:checked] != _HANDSHAKE_PREFIX[:checked]:
            raise RemoteProtocolError("not a BitTorrent handshake")
        if len(buf) == HANDSHAKE_LENGTH:
            out.append(_decode_handshake(bytes(buf)))
            self._handshake_buf = None
        return taken

    def _parse_direct(self, mv: memoryview, pos: int, end: int, zero_copy: bool, out: list[Message]) -> int:
        """Decode one message starting at `pos` from `mv` itself; return `pos` if it is not whole
        (a PIECE whose header is whole starts its block instead)."""
        avail = end - pos
        if avail < _LENGTH_PREFIX:
            return pos
        length: int = _U32.unpack_from(mv, pos)[0]
        if length == 0:
            out.append(KEEP_ALIVE)
            return pos + _LENGTH_PREFIX
        self._check_length(length)
        if avail < _LENGTH_PREFIX + 1:
            return pos
        msg_id = mv[pos + _LENGTH_PREFIX]
        if msg_id == MSG_PIECE:
            self._check_kind(msg_id, length)
            head_end = pos + _LENGTH_PREFIX + _PIECE_HEADER
            if end < head_end:
                return pos
            index, begin = _U32_PAIR.unpack_from(mv, pos + _LENGTH_PREFIX + 1)
            block_length = length - _PIECE_HEADER
            block_end = head_end + block_length
            if block_end <= end:
                view = mv[head_end:block_end]
                out.append(Piece(index, begin, view if zero_copy else bytes(view)))
                return block_end
            self._start_block(index, begin, block_length)
            return self._fill_block(mv, head_end, end, out)
        if msg_id not in _MESSAGE_NAMES:
            self._check_kind(msg_id, length)
            self.unknown_messages += 1
            self._skip = length - 1
            return pos + _LENGTH_PREFIX + 1
        self._check_kind(msg_id, length)
        msg_end = pos + _LENGTH_PREFIX + length
        if msg_end > end:
            return pos
        parsed = self._parse_body(msg_id, mv[pos + _LENGTH_PREFIX + 1 : msg_end])
        if parsed is not None:
            out.append(parsed)
        return msg_end

    def _need(self) -> int:
        """How many bytes `_pending` must hold before the next decision about its message."""
        held = len(self._pending)
        if held < _LENGTH_PREFIX + 1:
            return _LENGTH_PREFIX if held < _LENGTH_PREFIX else _LENGTH_PREFIX + 1
        length, msg_id = _HEADER.unpack_from(self._pending)
        if msg_id == MSG_PIECE:
            return _LENGTH_PREFIX + _PIECE_HEADER
        return _LENGTH_PREFIX + int(length)

    def _advance(self, out: list[Message]) -> None:
        """`_pending` just reached `_need()` bytes: check, decode or hand over to block/skip."""
        pending = self._pending
        held = len(pending)
        length: int = _U32.unpack_from(pending)[0]
        if held == _LENGTH_PREFIX:
            if length == 0:
                out.append(KEEP_ALIVE)
                pending.clear()
            else:
                self._check_length(length)
            return
        msg_id = pending[_LENGTH_PREFIX]
        if held == _LENGTH_PREFIX + 1:
            self._check_kind(msg_id, length)
            if msg_id not in _MESSAGE_NAMES:
                self.unknown_messages += 1
                self._skip = length - 1
                pending.clear()
                return
            if length > 1:
                return  # more to gather (this is never the end of a PIECE or a longer message)
        if msg_id == MSG_PIECE:
            index, begin = _U32_PAIR.unpack_from(pending, _LENGTH_PREFIX + 1)
            pending.clear()
            self._start_block(index, begin, length - _PIECE_HEADER)
            return
        body = bytes(pending[_LENGTH_PREFIX + 1 :])
        pending.clear()
        parsed = self._parse_body(msg_id, memoryview(body))
        if parsed is not None:
            out.append(parsed)

    def _start_block(self, index: int, begin: int, block_length: int) -> None:
        # The one copy of a block that straddles feeds goes into this buffer, sized once its
        # length passed _check_kind (at most block_size).
        self._block = bytearray(block_length)
        self._block_filled = 0
        self._block_index = index
        self._block_begin = begin

    def _fill_block(self, mv: memoryview, pos: int, end: int, out: list[Message]) -> int:
        block = self._block
        assert block is not None
        filled = self._block_filled
        taken = min(len(block) - filled, end - pos)
        block[filled : filled + taken] = mv[pos : pos + taken]
        filled += taken
        if filled == len(block):
            out.append(Piece(self._block_index, self._block_begin, memoryview(block).toreadonly()))
            self._block = None
            self._block_filled = 0
        else:
            self._block_filled = filled
        return pos + taken


# --- the per-connection protocol state ----------------------------------------------------------

_Handler = Callable[["PeerProtocol", Message], "list[Message] | None"]


class PeerProtocol:
    """The state of one peer connection: bytes in, checked messages out, bytes to send.

    Typical use: `sock.send(proto.send_handshake())`; then for each receive,
    `for msg in proto.receive_data(data): ...`; to send, `sock.send(proto.send(msg))`.
    A RemoteProtocolError from `receive_data` means: drop this connection (further calls raise
    again). `LocalProtocolError` from `send` is our own bug.

    Flags follow BEP 3: both sides start choking and not interested.
    `peer_have` is the peer's bitfield (bit 0x80 of byte 0 is piece 0), kept up to date by
    BITFIELD, HAVE, HAVE ALL and HAVE NONE.
    """

    __slots__ = (
        "_decoder",
        "_dispatch",
        "_failed",
        "_first_window",
        "_last_piece_length",
        "_our_first_window",
        "_spare_mask",
        "am_choking",
        "am_interested",
        "block_size",
        "config",
        "extended",
        "fast",
        "handshake_received",
        "handshake_sent",
        "info_hash",
        "num_pieces",
        "our_extensions",
        "our_peer_id",
        "peer_choking",
        "peer_extended_handshake",
        "peer_extensions",
        "peer_handshake",
        "peer_have",
        "peer_interested",
        "piece_length",
        "supports_dht",
        "supports_extended",
        "supports_fast",
        "total_length",
    )

    def __init__(
        self,
        info_hash: bytes,
        our_peer_id: bytes,
        num_pieces: int,
        piece_length: int,
        total_length: int,
        config: Config = DEFAULT_CONFIG,
        *,
        supports_extended: bool = True,
        supports_fast: bool = True,
        supports_dht: bool = False,
        our_extensions: dict[str, int] | None = None,
    ) -> None:
        if len(info_hash) != INFO_HASH_LENGTH or len(our_peer_id) != PEER_ID_LENGTH:
            raise ValueError("info hash and peer id are 20 bytes each")
        if num_pieces < 1 or piece_length < 1:
            raise ValueError("a torrent has at least one piece of at least one byte")
        last = total_length - (num_pieces - 1) * piece_length
        if not 0 < last <= piece_length:
            raise ValueError("total_length does not match num_pieces x piece_length")
        self.info_hash = bytes(info_hash)
        self.our_peer_id = bytes(our_peer_id)
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self.total_length = total_length
        self.config = config
        self.block_size = config.block_size
        self.supports_extended = supports_extended
        self.supports_fast = supports_fast
        self.supports_dht = supports_dht
        # The extension names we understand and the ids we advertised for them (BEP 10 `m`).
        self.our_extensions: dict[str, int] = dict(our_extensions or {})
        self._last_piece_length = last
        spare = bitfield_length(num_pieces) * 8 - num_pieces
        self._spare_mask = (1 << spare) - 1  # the low bits of the last byte that must be zero
        self._decoder = Decoder(config, num_pieces=num_pieces)
        self._failed: str | None = None
        # Negotiated once both handshakes are known.
        self.handshake_sent = False
        self.handshake_received = False
        self.peer_handshake: Handshake | None = None
        self.fast = False
        self.extended = False
        self.peer_extended_handshake: ExtendedHandshake | None = None
        # The ids the peer wants us to use for each extension name (non-zero entries of its `m`).
        self.peer_extensions: dict[str, int] = {}
        # While True, a BITFIELD / HAVE ALL / HAVE NONE is still allowed (from them / from us).
        self._first_window = True
        self._our_first_window = True
        self.am_choking = True
        self.am_interested = False
        self.peer_choking = True
        self.peer_interested = False
        self.peer_have = bytearray(bitfield_length(num_pieces))
        self._dispatch: dict[type, _Handler] = _DISPATCH

    # -- queries --

    def piece_size(self, index: int) -> int:
        """Length of piece `index` (the last one may be short)."""
        return self._last_piece_length if index == self.num_pieces - 1 else self.piece_length

    def peer_has(self, index: int) -> bool:
        return bool(self.peer_have[index >> 3] & (0x80 >> (index & 7)))

    @property
    def unknown_messages(self) -> int:
        """Messages with ids we do not know, ignored so far."""
        return self._decoder.unknown_messages

    # -- receiving --

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Decode and check what `data` completes; RemoteProtocolError drops the connection."""
        if self._failed is not None:
            raise RemoteProtocolError(f"connection already failed: {self._failed}")
        try:
            messages = self._decoder.feed(data)
            dispatch = self._dispatch
            out = messages
            last_piece = self.num_pieces - 1
            for i, msg in enumerate(messages):
                if type(msg) is Piece and msg.index < last_piece and msg.begin + len(msg.block) <= self.piece_length:
                    # A block of a full-size piece inside it (the bulk of a download): _on_piece's checks,
                    # inlined (the decoder already bounded the block's length to 1..block_size).
                    self._first_window = False
                    if out is not messages:
                        out.append(msg)
                    continue
                replacement = dispatch[type(msg)](self, msg)
                if replacement is not None:  # a late bitfield / have-all, handed out as HAVEs
                    if out is messages:
                        out = messages[:i]
                    out.extend(replacement)
                elif out is not messages:
                    out.append(msg)
        except RemoteProtocolError as err:
            self._failed = str(err)
            raise
        return out

    def _on_handshake(self, msg: Message) -> None:
        assert isinstance(msg, Handshake)
        if msg.info_hash != self.info_hash:
            raise RemoteProtocolError("handshake for another torrent (info hash differs)")
        if msg.peer_id == self.our_peer_id:
            raise SelfConnectionError("connected to ourselves (peer id is ours)")
        self.handshake_received = True
        self.peer_handshake = msg
        self.fast = self.supports_fast and msg.supports_fast
        self.extended = self.supports_extended and msg.supports_extended

    def _on_keep_alive(self, msg: Message) -> None:
        pass

    def _on_choke(self, msg: Message) -> None:
        self._first_window = False
        self.peer_choking = True

    def _on_unchoke(self, msg: Message) -> None:
        self._first_window = False
        self.peer_choking = False

    def _on_interested(self, msg: Message) -> None:
        self._first_window = False
        self.peer_interested = True

    def _on_not_interested(self, msg: Message) -> None:
        self._first_window = False
        self.peer_interested = False

    def _check_index(self, index: int, what: str) -> None:
        if index >= self.num_pieces:
            raise RemoteProtocolError(f"{what} for piece {index}, the torrent has {self.num_pieces}")

    def _check_range(self, index: int, begin: int, length: int, what: str) -> None:
        if index >= self.num_pieces:
            raise RemoteProtocolError(f"{what} for piece {index}, the torrent has {self.num_pieces}")
        if length <= 0 or length > self.block_size:
            raise RemoteProtocolError(f"{what} of {length} bytes (block size is {self.block_size})")
        size = self._last_piece_length if index == self.num_pieces - 1 else self.piece_length
        if begin + length > size:
            raise RemoteProtocolError(f"{what} {index}:{begin}+{length} past the end of the piece ({size})")

    def _require_fast(self, what: str) -> None:
        if not self.fast:
            raise RemoteProtocolError(f"{what} without the fast extension on both sides")

    def _on_have(self, msg: Message) -> None:
        assert isinstance(msg, Have)
        index = msg.index
        if index >= self.num_pieces:
            raise RemoteProtocolError(f"have for piece {index}, the torrent has {self.num_pieces}")
        self._first_window = False
        self.peer_have[index >> 3] |= 0x80 >> (index & 7)

    def _on_bitfield(self, msg: Message) -> list[Message] | None:
        assert isinstance(msg, Bitfield)
        bits = msg.bits
        if len(bits) != len(self.peer_have):  # pragma: no cover - the decoder checks the length
            raise RemoteProtocolError("bitfield of the wrong length")
        if bits and bits[-1] & self._spare_mask:
            raise RemoteProtocolError("bitfield with spare bits set")
        if not self._first_window:
            return self._late_pieces(bytes(bits), "bitfield")
        self._first_window = False
        self.peer_have[:] = bits
        return None

    def _late_pieces(self, bits: bytes, what: str) -> list[Message]:
        """A bitfield (or have-all) after the first message: the new pieces, as HAVE messages.

        aria2c announces several new pieces at once with a BITFIELD mid-connection (and a HAVE ALL
        once it is complete), so a late one is taken as an update. A peer cannot lose pieces: a
        late bitfield without a piece it announced before is a protocol error.
        """
        have = self.peer_have
        added: list[Message] = []
        for byte_index, (old, new) in enumerate(zip(have, bits, strict=True)):
            if old & ~new:
                raise RemoteProtocolError(f"late {what} withdraws pieces the peer announced")
            fresh = new & ~old
            while fresh:
                bit = fresh.bit_length() - 1
                added.append(Have(byte_index * 8 + 7 - bit))
                fresh &= ~(1 << bit)
        have[:] = bits
        return added

    def _on_have_all(self, msg: Message) -> list[Message] | None:
        self._require_fast("have all")
        full = bytearray(b"\xff" * len(self.peer_have))
        full[-1] &= 0xFF ^ self._spare_mask
        if not self._first_window:
            return self._late_pieces(bytes(full), "have all")
        self._first_window = False
        self.peer_have[:] = full
        return None

    def _on_have_none(self, msg: Message) -> list[Message] | None:
        self._require_fast("have none")
        if not self._first_window:
            if any(self.peer_have):
                raise RemoteProtocolError("late have none withdraws pieces the peer announced")
            return []
        self._first_window = False
        self.peer_have[:] = bytes(len(self.peer_have))
        return None

    def _on_request(self, msg: Message) -> None:
        assert isinstance(msg, Request)
        self._check_range(msg.index, msg.begin, msg.length, "request")
        self._first_window = False

    def _on_cancel(self, msg: Message) -> None:
        assert isinstance(msg, Cancel)
        self._check_range(msg.index, msg.begin, msg.length, "cancel")
        self._first_window = False

    def _on_reject(self, msg: Message) -> None:
        assert isinstance(msg, RejectRequest)
        self._require_fast("reject request")
        self._check_range(msg.index, msg.begin, msg.length, "reject")
        self._first_window = False

    def _on_piece(self, msg: Message) -> None:
        assert isinstance(msg, Piece)
        self._check_range(msg.index, msg.begin, len(msg.block), "piece")
        self._first_window = False

    def _on_port(self, msg: Message) -> None:
        self._first_window = False

    def _on_suggest(self, msg: Message) -> None:
        assert isinstance(msg, SuggestPiece)
        self._require_fast("suggest piece")
        self._check_index(msg.index, "suggest piece")
        self._first_window = False

    def _on_allowed_fast(self, msg: Message) -> None:
        assert isinstance(msg, AllowedFast)
        self._require_fast("allowed fast")
        self._check_index(msg.index, "allowed fast")
        self._first_window = False

    def _on_extended(self, msg: Message) -> None:
        if not self.extended:
            raise RemoteProtocolError("extended message without the extension protocol on both sides")
        self._first_window = False

    def _on_extended_handshake(self, msg: Message) -> None:
        assert isinstance(msg, ExtendedHandshake)
        if not self.extended:
            raise RemoteProtocolError("extended handshake without the extension protocol on both sides")
        # BEP 10: a later handshake updates the earlier one; an id of 0 disables that extension.
        for name, ext_id in msg.m.items():
            if ext_id == 0:
                self.peer_extensions.pop(name, None)
            else:
                self.peer_extensions[name] = ext_id
        self.peer_extended_handshake = msg

    # -- sending --

    def send_handshake(self) -> bytes:
        """Our handshake, with the reserved bits of what we support."""
        if self.handshake_sent:
            raise LocalProtocolError("handshake already sent")
        self.handshake_sent = True
        return encode_handshake(
            Handshake(
                self.info_hash,
                self.our_peer_id,
                supports_extended=self.supports_extended,
                supports_fast=self.supports_fast,
                supports_dht=self.supports_dht,
            )
        )

    def send(self, msg: Message) -> bytes:
        """The bytes of `msg`, after checking we may send it now and updating our flags."""
        if not self.handshake_sent:
            raise LocalProtocolError("send our handshake first")
        kind = type(msg)
        if kind is Piece or kind is Request or kind is Cancel or kind is Have or kind is KeepAlive:
            if kind is not KeepAlive:
                self._our_first_window = False
            return encode(msg)
        if kind is Choke:
            self.am_choking = True
        elif kind is Unchoke:
            self.am_choking = False
        elif kind is Interested:
            self.am_interested = True
        elif kind is NotInterested:
            self.am_interested = False
        elif kind is Bitfield or kind is HaveAll or kind is HaveNone:
            if not self._our_first_window:
                raise LocalProtocolError("bitfield / have all / have none only as our first message")
            if kind is not Bitfield and not self._negotiated_fast():
                raise LocalProtocolError("have all / have none need the fast extension on both sides")
        elif kind is SuggestPiece or kind is RejectRequest or kind is AllowedFast:
            if not self._negotiated_fast():
                raise LocalProtocolError("fast-extension message without the fast extension on both sides")
        elif kind is Extended or kind is ExtendedHandshake:
            if not self.handshake_received or not self.extended:
                raise LocalProtocolError("extended message without the extension protocol on both sides")
            return encode(msg)  # does not close our first-message window
        elif kind is Handshake:
            raise LocalProtocolError("use send_handshake()")
        self._our_first_window = False
        return encode(msg)

    def send_block_refs(self, msg_id: int, refs: Sequence[tuple[int, int, int]]) -> bytearray:
        """Many REQUESTs, CANCELs or (fast extension) REJECT REQUESTs in one buffer (`encode_block_refs`)."""
        if not self.handshake_sent:
            raise LocalProtocolError("send our handshake first")
        if msg_id == MSG_REJECT_REQUEST and not self._negotiated_fast():
            raise LocalProtocolError("fast-extension message without the fast extension on both sides")
        out = encode_block_refs(msg_id, refs)
        if out:
            self._our_first_window = False
        return out

    def send_piece_header(self, index: int, begin: int, length: int) -> bytes:
        """The header of a PIECE message; write the block after it without concatenating."""
        if not self.handshake_sent:
            raise LocalProtocolError("send our handshake first")
        self._our_first_window = False
        return encode_piece_header(index, begin, length)

    def _negotiated_fast(self) -> bool:
        return self.handshake_received and self.fast


_DISPATCH: Final[dict[type, _Handler]] = {
    Handshake: PeerProtocol._on_handshake,
    KeepAlive: PeerProtocol._on_keep_alive,
    Choke: PeerProtocol._on_choke,
    Unchoke: PeerProtocol._on_unchoke,
    Interested: PeerProtocol._on_interested,
    NotInterested: PeerProtocol._on_not_interested,
    Have: PeerProtocol._on_have,
    Bitfield: PeerProtocol._on_bitfield,
    Request: PeerProtocol._on_request,
    Piece: PeerProtocol._on_piece,
    Cancel: PeerProtocol._on_cancel,
    Port: PeerProtocol._on_port,
    HaveAll: PeerProtocol._on_have_all,
    HaveNone: PeerProtocol._on_have_none,
    SuggestPiece: PeerProtocol._on_suggest,
    RejectRequest: PeerProtocol._on_reject,
    AllowedFast: PeerProtocol._on_allowed_fast,
    Extended: PeerProtocol._on_extended,
    ExtendedHandshake: PeerProtocol._on_extended_handshake,
}
