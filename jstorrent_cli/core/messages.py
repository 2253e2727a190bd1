"""What goes into the scheduler (facts) and what comes out of it (commands).

The scheduler is an actor: `Scheduler.handle(fact, now) -> list[Command]`. Facts are past tense
(something happened on a socket, on disk or on the clock); commands are imperative (the caller routes
each one to a peer's outbox, the disk writer, the hasher or the session, without waiting).

Peers are named by a `PeerId` chosen by the caller: any hashable value that is unique among the live
connections of one torrent (an int counter, or an ``(ip, port)`` tuple). The peer's IP address travels
in `PeerJoined` because bans are by IP: a liar that reconnects from another port stays banned.

A block is always named by ``(piece, begin)``; `begin` is a byte offset in the piece and a multiple
of the block size. Every type here is a frozen dataclass with slots: cheap, hashable, printable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import TypeAlias

PeerId: TypeAlias = Hashable
BlockData: TypeAlias = bytes | bytearray | memoryview
# (piece, begin, data): one block as it arrived in a PIECE message.
ReceivedBlock: TypeAlias = tuple[int, int, BlockData]
# (piece, begin, length): one block named on the wire (REQUEST / CANCEL) or one block written to disk.
BlockRef: TypeAlias = tuple[int, int, int]

# --- facts ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class PeerJoined:
    """A handshake completed and the peer said what it has (BEP 3 bitfield or BEP 6 have-all/none).

    `bitfield` is the raw BEP 3 payload (high bit of byte 0 is piece 0); empty when the peer sent no
    bitfield (then it has nothing until HAVE messages arrive). `reqq` is the queue depth the peer
    advertised in its extended handshake (None when it said nothing). `fast` is BEP 6 support.
    """

    peer: PeerId
    ip: str
    bitfield: bytes = b""
    have_all: bool = False
    have_none: bool = False
    reqq: int | None = None
    fast: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Have:
    """The peer announced a piece (HAVE)."""

    peer: PeerId
    piece: int


@dataclasses.dataclass(frozen=True, slots=True)
class Choked:
    """The peer chokes us (peer_choking became true)."""

    peer: PeerId


@dataclasses.dataclass(frozen=True, slots=True)
class Unchoked:
    """The peer unchoked us (peer_choking became false)."""

    peer: PeerId


@dataclasses.dataclass(frozen=True, slots=True)
class PeerInterested:
    """The peer is interested in what we have (peer_interested became true)."""

    peer: PeerId


@dataclasses.dataclass(frozen=True, slots=True)
class PeerNotInterested:
    """The peer is no longer interested (peer_interested became false)."""

    peer: PeerId


@dataclasses.dataclass(frozen=True, slots=True)
class BlocksReceived:
    """One or more PIECE messages arrived from one peer (a reader may batch several into one fact)."""

    peer: PeerId
    blocks: tuple[ReceivedBlock, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RequestRejected:
    """The peer rejected one of our requests (BEP 6 REJECT_REQUEST)."""

    peer: PeerId
    piece: int
    begin: int
    length: int


@dataclasses.dataclass(frozen=True, slots=True)
class AllowedFast:
    """The peer lets us request this piece even while it chokes us (BEP 6 ALLOWED_FAST)."""

    peer: PeerId
    piece: int


@dataclasses.dataclass(frozen=True, slots=True)
class PeerGone:
    """The connection ended, for whatever reason (the peer task reports this in its `finally`)."""

    peer: PeerId


@dataclasses.dataclass(frozen=True, slots=True)
class BlocksWritten:
    """The writer put these blocks in their place in the files: their memory is free again."""

    blocks: tuple[BlockRef, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class PieceHashed:
    """The hasher read a piece back from disk and compared its SHA-1.

    `block_digests`, when the hasher provides it, is the SHA-1 of each block of the piece in order.
    The scheduler keeps those of a failed piece to find which contributor lied once the piece
    passes with blocks from others.
    """

    piece: int
    ok: bool
    block_digests: tuple[bytes, ...] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: the scheduler checks request deadlines, snubbing and rates."""


Fact: TypeAlias = (
    PeerJoined
    | Have
    | Choked
    | Unchoked
    | PeerInterested
    | PeerNotInterested
    | BlocksReceived
    | RequestRejected
    | AllowedFast
    | PeerGone
    | BlocksWritten
    | PieceHashed
    | Tick
)


# --- commands ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SendRequests:
    """Send these REQUEST messages to the peer, in order."""

    peer: PeerId
    requests: tuple[BlockRef, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SendCancels:
    """Send these CANCEL messages to the peer (the block came from elsewhere or timed out)."""

    peer: PeerId
    cancels: tuple[BlockRef, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SendInterested:
    """Tell the peer we are interested (am_interested becomes true)."""

    peer: PeerId


@dataclasses.dataclass(frozen=True, slots=True)
class SendNotInterested:
    """Tell the peer we are not interested (am_interested becomes false)."""

    peer: PeerId


@dataclasses.dataclass(frozen=True, slots=True)
class SendHave:
    """Announce a verified piece: to every connected peer when `peer` is None, else to that one."""

    piece: int
    peer: PeerId | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class WriteBlocks:
    """Write these blocks to their place in the files; answer with BlocksWritten for each."""

    blocks: tuple[ReceivedBlock, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class HashPiece:
    """Every block of the piece is on disk: read it back, hash it, answer with PieceHashed.

    The answer carries per-block digests when the piece fails its hash (kept to compare later)
    or when `want_block_digests` is set (the piece failed before: the digests name the liar once
    it passes). Otherwise only the whole-piece SHA-1 is computed.
    """

    piece: int
    want_block_digests: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class DropPeer:
    """Close this connection (a PeerGone for it afterwards is expected and harmless)."""

    peer: PeerId
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class BanPeer:
    """Never talk to this IP address again in this session (any port)."""

    ip: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Finished:
    """Every wanted piece is verified. Emitted once."""


Command: TypeAlias = (
    SendRequests
    | SendCancels
    | SendInterested
    | SendNotInterested
    | SendHave
    | WriteBlocks
    | HashPiece
    | DropPeer
    | BanPeer
    | Finished
)
