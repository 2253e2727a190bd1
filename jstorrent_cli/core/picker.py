"""Piece and block bookkeeping for the scheduler: availability, block states, piece order.

The picker knows *what* is missing and *who has it*; the scheduler (core/scheduler.py) decides *who is
asked for what and when*. Everything here is O(work): no method scans all pieces per block.

Pieces move through these states::

    MISSING (not started) -> PARTIAL (some block FREE) -> FULLY_REQUESTED (no block FREE)
        -> AWAITING_HASH (every block written, HashPiece sent) -> VERIFIED
    a failed hash sends the piece back to MISSING; so does a started piece whose blocks are all FREE again.

Only started pieces carry per-block state (an `ActivePiece`); a MISSING piece is implicitly all FREE and
a VERIFIED one all WRITTEN, so memory follows the pieces in progress, not the torrent size. Blocks are
FREE -> REQUESTED (one holder, or up to endgame_max_dups in endgame, each with its send time) ->
RECEIVED (handed to the writer) -> WRITTEN.

Rarest first: not-started wanted pieces sit in availability buckets (one insertion-ordered dict per
count of non-seed holders; seeds add the same to every piece, so they are one counter and never move a
piece). Pieces enter the buckets in an order drawn from the injected rng, which is the random tie-break.
A peer with few pieces is served by scanning its own piece list instead, whichever is cheaper.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterator, Sequence

from jstorrent_cli.core.messages import PeerId

# Block states, stored as bytes in a bytearray per active piece.
FREE = 0
REQUESTED = 1
RECEIVED = 2
WRITTEN = 3


class PieceState(enum.Enum):
    UNWANTED = "unwanted"
    MISSING = "missing"
    PARTIAL = "partial"
    FULLY_REQUESTED = "fully requested"
    AWAITING_HASH = "awaiting hash"
    VERIFIED = "verified"


_ALL_ONES = bytes.maketrans(b"01", b"\x00\x01")


class PeerPieces:
    """What one peer has, and how much of it we still need (kept up to date by the Picker)."""

    __slots__ = ("bitmap", "count", "has_all", "have_list", "needed", "unstarted")

    def __init__(self, num_pieces: int, has_all: bool) -> None:
        self.has_all = has_all
        self.bitmap: bytearray | None = None if has_all else bytearray(num_pieces)
        self.have_list: list[int] = []
        self.count = num_pieces if has_all else 0
        # For non-seeds: how many pieces it has that we still need / that are not started yet.
        self.needed = 0
        self.unstarted = 0

    def has(self, piece: int) -> bool:
        bitmap = self.bitmap
        return bitmap is None or bitmap[piece] == 1


class ActivePiece:
    """Per-block state of one started, not yet verified piece."""

    __slots__ = (
        "contributors",
        "cursor",
        "holders",
        "index",
        "n_free",
        "n_received",
        "n_written",
        "nblocks",
        "owner",
        "states",
    )

    def __init__(self, index: int, nblocks: int, owner: PeerId | None) -> None:
        self.index = index
        self.nblocks = nblocks
        self.states = bytearray(nblocks)
        # Per block: {peer: time sent} while REQUESTED, else None.
        self.holders: list[dict[PeerId, float] | None] = [None] * nblocks
        # Per block: (peer, ip) that delivered the data of this attempt.
        self.contributors: list[tuple[PeerId, str] | None] = [None] * nblocks
        self.n_free = nblocks
        self.n_received = 0
        self.n_written = 0
        self.owner = owner  # whole-piece affinity: the peer that takes this piece's FREE blocks first
        self.cursor = 0  # every block before this index is not FREE


class Picker:
    """Availability, block states and piece order for one torrent."""

    def __init__(
        self,
        num_pieces: int,
        piece_length: int,
        total_length: int,
        block_size: int,
        rng: random.Random,
        wanted: Sequence[bool] | None = None,
        have: Sequence[bool] | None = None,
        sequential: bool = False,
        max_holders: int = 1,
    ) -> None:
        if num_pieces <= 0 or piece_length <= 0 or block_size <= 0:
            raise ValueError("num_pieces, piece_length and block_size must be positive")
        last = total_length - piece_length * (num_pieces - 1)
        if not 0 < last <= piece_length:
            raise ValueError("total_length does not match num_pieces x piece_length")
        if (wanted is not None and len(wanted) != num_pieces) or (have is not None and len(have) != num_pieces):
            raise ValueError("wanted and have must have one entry per piece")
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self.total_length = total_length
        self.block_size = block_size
        self.last_piece_length = last
        self.sequential = sequential
        self.blocks_per_piece = -(-piece_length // block_size)
        self.last_piece_blocks = -(-last // block_size)

        self.wanted = bytearray(1 if (wanted is None or wanted[i]) else 0 for i in range(num_pieces))
        self.verified = bytearray(1 if (have is not None and have[i]) else 0 for i in range(num_pieces))
        # needed = wanted and not verified
        self.needed = bytearray(w & (1 - v) for w, v in zip(self.wanted, self.verified, strict=True))
        self.needed_count = sum(self.needed)
        self.wanted_count = sum(self.wanted)
        self.wanted_bytes = sum(self.piece_size(i) for i in range(num_pieces) if self.wanted[i])
        self.verified_wanted_bytes = sum(
            self.piece_size(i) for i in range(num_pieces) if self.wanted[i] and self.verified[i]
        )

        self.avail = [0] * num_pieces  # non-seed holders per piece
        self.seeds = 0
        self.peers: dict[PeerId, PeerPieces] = {}

        # Not-started needed pieces, bucketed by availability, in random order within a bucket.
        self.unstarted = bytearray(self.needed)
        self.unstarted_count = self.needed_count
        self.rank = list(range(num_pieces))
        rng.shuffle(self.rank)  # rank[piece]: the random tie-break among equally rare pieces
        order = sorted(range(num_pieces), key=self.rank.__getitem__)
        self._buckets: list[dict[int, None]] = [dict.fromkeys(p for p in order if self.unstarted[p])]
        # Deletions per bucket since it was last compacted: a dict never shrinks on delete, and
        # iterating one walks over every hole left at its front, so a bucket is rebuilt once holes
        # outnumber its entries (amortised O(1) per deletion).
        self._holes: list[int] = [0]
        self._seq_cursor = 0

        self.active: dict[int, ActivePiece] = {}
        self.partial: dict[int, None] = {}  # active pieces with a FREE block, in start order
        self.orphans: dict[int, None] = {}  # partial pieces with no owner
        self.requested_order: dict[tuple[int, int], None] = {}  # REQUESTED blocks, oldest first
        # REQUESTED blocks with fewer than max_holders holders: what endgame may duplicate, oldest first
        self.max_holders = max_holders
        self.dupable: dict[tuple[int, int], None] = {}
        self.free_blocks = sum(self.block_count(i) for i in range(num_pieces) if self.needed[i])
        self.awaiting_hash = 0

    # --- geometry --------------------------------------------------------------------------------

    def piece_size(self, piece: int) -> int:
        return self.last_piece_length if piece == self.num_pieces - 1 else self.piece_length

    def block_count(self, piece: int) -> int:
        return self.last_piece_blocks if piece == self.num_pieces - 1 else self.blocks_per_piece

    def block_length(self, piece: int, block: int) -> int:
        if piece == self.num_pieces - 1 and block == self.last_piece_blocks - 1:
            return self.last_piece_length - block * self.block_size
        if block == self.blocks_per_piece - 1:
            return self.piece_length - block * self.block_size
        return self.block_size

    # --- states ------------------------------------------------------------------------------------

    def state(self, piece: int) -> PieceState:
        if self.verified[piece]:
            return PieceState.VERIFIED
        if not self.wanted[piece]:
            return PieceState.UNWANTED
        ap = self.active.get(piece)
        if ap is None:
            return PieceState.MISSING
        if ap.n_written == ap.nblocks:
            return PieceState.AWAITING_HASH
        if ap.n_free:
            return PieceState.PARTIAL
        return PieceState.FULLY_REQUESTED

    def needed_of(self, view: PeerPieces) -> int:
        return self.needed_count if view.has_all else view.needed

    def unstarted_of(self, view: PeerPieces) -> int:
        return self.unstarted_count if view.has_all else view.unstarted

    def availability(self, piece: int) -> int:
        return self.avail[piece] + self.seeds

    # --- peers and availability --------------------------------------------------------------------

    def add_peer(self, peer: PeerId, bitmap: bytearray | None) -> PeerPieces:
        """Register a peer: `bitmap` is one byte (0/1) per piece, or None for a peer that has all."""
        view = PeerPieces(self.num_pieces, bitmap is None)
        self.peers[peer] = view
        if bitmap is None:
            self.seeds += 1
            return view
        view.bitmap = bitmap
        for piece in (i for i, bit in enumerate(bitmap) if bit):
            self._gain(view, piece)
        return view

    def add_have(self, peer: PeerId, piece: int) -> bool:
        """The peer has a new piece. True when that made it have something we need for the first time."""
        view = self.peers[peer]
        bitmap = view.bitmap
        if bitmap is None or bitmap[piece]:
            return False
        bitmap[piece] = 1
        before = view.needed
        self._gain(view, piece)
        return before == 0 and view.needed > 0

    def _gain(self, view: PeerPieces, piece: int) -> None:
        assert view.bitmap is not None
        view.bitmap[piece] = 1
        view.have_list.append(piece)
        view.count += 1
        count = self.avail[piece]
        self.avail[piece] = count + 1
        if self.unstarted[piece]:
            self._move(piece, count, count + 1)
            view.unstarted += 1
        if self.needed[piece]:
            view.needed += 1

    def remove_peer(self, peer: PeerId) -> None:
        view = self.peers.pop(peer)
        if view.has_all:
            self.seeds -= 1
            return
        for piece in view.have_list:
            count = self.avail[piece]
            self.avail[piece] = count - 1
            if self.unstarted[piece]:
                self._move(piece, count, count - 1)

    def _move(self, piece: int, old: int, new: int) -> None:
        self._take_out(piece, old)
        buckets = self._buckets
        while len(buckets) <= new:
            buckets.append({})
            self._holes.append(0)
        buckets[new][piece] = None

    def _take_out(self, piece: int, bucket: int) -> None:
        entries = self._buckets[bucket]
        del entries[piece]
        holes = self._holes[bucket] + 1
        if holes > len(entries):
            self._buckets[bucket] = dict(entries)  # a copy has no holes
            holes = 0
        self._holes[bucket] = holes

    # --- starting pieces ---------------------------------------------------------------------------

    def start(self, piece: int, owner: PeerId | None) -> ActivePiece:
        """MISSING -> PARTIAL."""
        assert self.unstarted[piece]
        self.unstarted[piece] = 0
        self.unstarted_count -= 1
        self._take_out(piece, self.avail[piece])
        for view in self.peers.values():
            if not view.has_all and view.bitmap is not None and view.bitmap[piece]:
                view.unstarted -= 1
        ap = ActivePiece(piece, self.block_count(piece), owner)
        self.active[piece] = ap
        self.partial[piece] = None
        if owner is None:
            self.orphans[piece] = None
        return ap

    def _unstart(self, ap: ActivePiece) -> None:
        """A started piece whose blocks are all FREE again goes back to MISSING (frees the start cap)."""
        piece = ap.index
        del self.active[piece]
        self.partial.pop(piece, None)
        self.orphans.pop(piece, None)
        self.unstarted[piece] = 1
        self.unstarted_count += 1
        bucket = self.avail[piece]
        while len(self._buckets) <= bucket:
            self._buckets.append({})
            self._holes.append(0)
        self._buckets[bucket][piece] = None
        for view in self.peers.values():
            if not view.has_all and view.bitmap is not None and view.bitmap[piece]:
                view.unstarted += 1
        self._seq_cursor = min(self._seq_cursor, piece)

    def set_owner(self, ap: ActivePiece, owner: PeerId | None) -> None:
        ap.owner = owner
        if owner is None:
            if ap.n_free:
                self.orphans[ap.index] = None
        else:
            self.orphans.pop(ap.index, None)

    def new_piece(self, view: PeerPieces, barred: dict[int, float], now: float,
                  common: bool = False) -> int | None:
        """The piece this peer should start next: rarest first (most common first when `common`, for
        a snubbed peer, so that what it holds up is easy to get elsewhere), or lowest index in
        sequential mode. None when it has no unstarted needed piece it is not barred from."""
        unstarted = self.unstarted_of(view)
        if unstarted == 0:
            return None
        if self.sequential:
            return self._new_sequential(view, barred, now)
        sign = -1 if common else 1
        if not view.has_all and len(view.have_list) * unstarted <= self.unstarted_count:
            # Few pieces: scanning the peer's own list is cheaper than scanning buckets for a hit.
            best: int | None = None
            best_key = (0, 0)
            for piece in view.have_list:
                if self.unstarted[piece] and not _is_barred(barred, piece, now):
                    key = (sign * self.avail[piece], self.rank[piece])
                    if best is None or key < best_key:
                        best, best_key = piece, key
            return best
        has = view.has
        for bucket in (reversed(self._buckets) if common else self._buckets):
            for piece in bucket:
                if has(piece) and not _is_barred(barred, piece, now):
                    return piece
        return None

    def _new_sequential(self, view: PeerPieces, barred: dict[int, float], now: float) -> int | None:
        unstarted = self.unstarted
        cursor = self._seq_cursor
        n = self.num_pieces
        while cursor < n and not unstarted[cursor]:
            cursor += 1
        self._seq_cursor = cursor
        if not view.has_all and len(view.have_list) < n - cursor:
            candidates = [p for p in view.have_list if unstarted[p] and not _is_barred(barred, p, now)]
            return min(candidates) if candidates else None
        has = view.has
        for piece in range(cursor, n):
            if unstarted[piece] and has(piece) and not _is_barred(barred, piece, now):
                return piece
        return None

    # --- block transitions ---------------------------------------------------------------------------

    def next_free(self, ap: ActivePiece) -> int:
        """Index of the first FREE block (the piece must have one)."""
        states = ap.states
        block = ap.cursor
        while states[block] != FREE:
            block += 1
        ap.cursor = block
        return block

    def request(self, ap: ActivePiece, block: int, peer: PeerId, now: float) -> None:
        """FREE -> REQUESTED by `peer`, or one more holder of a REQUESTED block (endgame)."""
        holders = ap.holders[block]
        if holders is None:
            ap.states[block] = REQUESTED
            ap.holders[block] = {peer: now}
            ap.n_free -= 1
            self.free_blocks -= 1
            key = (ap.index, block)
            self.requested_order[key] = None
            if self.max_holders > 1:
                self.dupable[key] = None
            if ap.n_free == 0:
                del self.partial[ap.index]
                self.orphans.pop(ap.index, None)
        else:
            holders[peer] = now
            if len(holders) >= self.max_holders:
                self.dupable.pop((ap.index, block), None)

    def release(self, ap: ActivePiece, block: int, peer: PeerId) -> bool:
        """`peer` no longer holds the block. True when the block became FREE."""
        holders = ap.holders[block]
        assert holders is not None
        del holders[peer]
        if holders:
            if len(holders) < self.max_holders:
                self.dupable[(ap.index, block)] = None
            return False
        ap.holders[block] = None
        ap.states[block] = FREE
        ap.n_free += 1
        self.free_blocks += 1
        del self.requested_order[(ap.index, block)]
        self.dupable.pop((ap.index, block), None)
        ap.cursor = min(ap.cursor, block)
        if ap.n_free == ap.nblocks:
            self._unstart(ap)
        elif ap.index not in self.partial:
            self.partial[ap.index] = None
            if ap.owner is None:
                self.orphans[ap.index] = None
        return True

    def receive(self, ap: ActivePiece, block: int, peer: PeerId, ip: str) -> dict[PeerId, float]:
        """REQUESTED -> RECEIVED. Returns the holders (they must be cancelled, except the sender)."""
        holders = ap.holders[block]
        assert holders is not None
        ap.holders[block] = None
        ap.states[block] = RECEIVED
        ap.n_received += 1
        ap.contributors[block] = (peer, ip)
        del self.requested_order[(ap.index, block)]
        self.dupable.pop((ap.index, block), None)
        return holders

    def receive_free(self, ap: ActivePiece, block: int, peer: PeerId, ip: str) -> None:
        """FREE -> RECEIVED: a late copy of a request released from `peer`, while nobody holds the block."""
        assert ap.states[block] == FREE
        ap.states[block] = RECEIVED
        ap.n_free -= 1
        self.free_blocks -= 1
        ap.n_received += 1
        ap.contributors[block] = (peer, ip)
        if ap.n_free == 0:
            self.partial.pop(ap.index, None)
            self.orphans.pop(ap.index, None)

    def written(self, ap: ActivePiece, block: int) -> bool:
        """RECEIVED -> WRITTEN. True when the whole piece is on disk (it now awaits its hash)."""
        ap.states[block] = WRITTEN
        ap.n_received -= 1
        ap.n_written += 1
        if ap.n_written == ap.nblocks:
            self.awaiting_hash += 1
            return True
        return False

    def hashed_ok(self, piece: int) -> list[PeerId]:
        """AWAITING_HASH -> VERIFIED. Returns the non-seed peers that no longer have anything we need."""
        del self.active[piece]
        self.awaiting_hash -= 1
        self.verified[piece] = 1
        self.needed[piece] = 0
        self.needed_count -= 1
        self.verified_wanted_bytes += self.piece_size(piece)
        done: list[PeerId] = []
        for peer, view in self.peers.items():
            if view.bitmap is not None and view.bitmap[piece]:
                view.needed -= 1
                if view.needed == 0:
                    done.append(peer)
        return done

    def hashed_bad(self, piece: int) -> list[tuple[PeerId, str] | None]:
        """AWAITING_HASH -> MISSING: every block FREE again. Returns who contributed each block."""
        ap = self.active[piece]
        self.awaiting_hash -= 1
        contributors = ap.contributors
        self.free_blocks += ap.nblocks
        ap.n_free = ap.nblocks
        self._unstart(ap)
        return contributors

    def wanted_blocks_in(self, piece: int) -> Iterator[int]:
        """FREE blocks of a needed piece (all of them when it is not started)."""
        if not self.needed[piece]:
            return iter(())
        ap = self.active.get(piece)
        if ap is None:
            return iter(range(self.block_count(piece)) if self.unstarted[piece] else ())
        return (b for b in range(ap.nblocks) if ap.states[b] == FREE)


def _is_barred(barred: dict[int, float], piece: int, now: float) -> bool:
    until = barred.get(piece)
    if until is None:
        return False
    if now < until:
        return True
    del barred[piece]
    return False


def parse_bitfield(bitfield: bytes, num_pieces: int) -> bytearray | None:
    """BEP 3 bitfield -> one byte (0/1) per piece. None when the payload is malformed.

    Malformed means: wrong length, or a spare bit past the last piece set.
    """
    if len(bitfield) != (num_pieces + 7) // 8:
        return None
    if not bitfield:
        return bytearray(num_pieces)
    bits = bin(int.from_bytes(bitfield, "big"))[2:].zfill(len(bitfield) * 8).encode()
    if b"1" in bits[num_pieces:]:
        return None
    return bytearray(bits[:num_pieces].translate(_ALL_ONES))
