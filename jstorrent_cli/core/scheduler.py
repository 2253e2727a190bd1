"""The download scheduler: who is asked for which block, and when. Sans-IO, time is an argument.

Theory of operation
-------------------
The scheduler is a state machine fed one fact at a time: ``commands = scheduler.handle(fact, now)``.
Facts say what happened (a peer joined, choked us, sent blocks; the writer wrote; the hasher hashed;
time passed); commands say what to do (send requests or cancels, write blocks, hash a piece, drop or
ban a peer, announce a piece). The caller routes commands without waiting; nothing here blocks.

State, and who owns it:

* core/picker.py keeps per-block states FREE -> REQUESTED -> RECEIVED -> WRITTEN for started pieces,
  availability, and which piece to start next (rarest first with a seeded random tie-break, or
  lowest index in sequential mode).
* This module keeps, per peer, every outstanding request as ``(piece, block) -> time sent``, the
  peer's request limit, its measured rate and request-to-block time, and whether it chokes us. It
  fills a peer's spare slots in this order (`_refill`): its own partial pieces (whole-piece
  affinity), partial pieces nobody owns, new pieces while the start cap allows, other peers' partial
  pieces, one new piece past the cap rather than leave the peer idle, and in endgame duplicates.

Every request exists in two places at once (the peer's ``outstanding`` and the block's holders); they
are changed together, so a block is never REQUESTED without an owner (invariant 3). A request ends in
exactly one of: the block arrives; the peer chokes us (unless the piece is allowed-fast); the peer
rejects it; the peer leaves; its deadline passes; the peer is snubbed or its limit halved (we cancel
the newest requests over the limit); another holder delivered the block first (we cancel). When the last
holder lets go, the block is FREE again and any hungry peer is offered it before `handle` returns.

Memory is bounded by one budget: bytes requested-and-not-received plus bytes received-and-not-written
never exceed ``Config.max_unflushed_bytes`` (invariant 2). Received blocks are handed to the writer at
once (WriteBlocks) and their bytes leave the budget when BlocksWritten comes back, whether or not their
piece is complete, so the budget always drains and no piece state can deadlock it. A piece whose
blocks are all written is hashed (HashPiece); a bad hash makes its blocks FREE again and counts against
its contributors (a sole contributor is banned by IP; several accumulate suspicion; per-block digests of
the failed attempt name the liar once the piece passes).

Per-peer limit: slow start from ``peer_limit_initial``, +1 per block; once the measured rate says the
queue holds ``peer_queue_seconds`` of data, the limit follows ``rate x peer_queue_seconds / block``
(still at most +1 per block), clamped to ``[peer_limit_min, min(peer_limit_max, reqq)]``. A choke, a
timeout or a reject halves it; a peer with requests out and no block for ``snub_timeout`` is snubbed
(limit 1). A reject or a timeout also keeps that peer off that piece for ``piece_retry_delay`` (a
timeout only while another peer could take the piece); a timeout also gives up its pieces' affinity.
A request's deadline runs from when it was sent or the peer's last block came, whichever is later.
A rate drop never cancels requests: the limit just stays at the outstanding count until it drains.

Endgame is derived: when no FREE block is left in any wanted piece, a peer with spare slots duplicates
the oldest outstanding requests (fully requested pieces included) up to ``endgame_max_dups`` holders per
block. The first copy to arrive is kept, the other holders get CANCEL, and late copies are dropped and
counted as wasted (invariant 5: a block is written at most once per attempt of its piece).

Requests go out at the end of `handle`, for every peer whose situation changed ("dirty") and, when
blocks were freed, the budget drained, a piece was started with blocks left over, endgame began, a
retry delay ended or a Tick came, for every "hungry" peer (spare slots and nothing to ask at its last
refill; those with the fewest requests out first). That is what makes liveness rule 6 hold after
every single fact. `check_invariants()` recounts everything from scratch, for tests and simulators.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Mapping, Sequence

from jstorrent_cli.config import Config
from jstorrent_cli.core.budget import BudgetPool
from jstorrent_cli.core.messages import (
    AllowedFast,
    BanPeer,
    BlockRef,
    BlocksReceived,
    BlocksWritten,
    Choked,
    Command,
    DropPeer,
    Fact,
    Finished,
    HashPiece,
    Have,
    PeerGone,
    PeerId,
    PeerInterested,
    PeerJoined,
    PeerNotInterested,
    PieceHashed,
    ReceivedBlock,
    RequestRejected,
    SendCancels,
    SendHave,
    SendInterested,
    SendNotInterested,
    SendRequests,
    Tick,
    Unchoked,
    WriteBlocks,
)
from jstorrent_cli.core.picker import (
    FREE,
    RECEIVED,
    REQUESTED,
    ActivePiece,
    PeerPieces,
    Picker,
    PieceState,
    _is_barred,
    parse_bitfield,
)

# Why a peer has no request out although it could take more (shown to the user, read by diagnose.py).
IDLE_CHOKED = "choked"
IDLE_NOTHING_WANTED = "has nothing we want"
IDLE_BUDGET = "waiting for budget (writer behind)"
IDLE_RATE = "waiting for the download rate limit"
IDLE_ALL_REQUESTED = "everything it has is requested from others"
IDLE_BARRED = "what it has timed out or was rejected: not asked again yet"


@dataclasses.dataclass(frozen=True, slots=True)
class PeerSnapshot:
    peer: PeerId
    ip: str
    outstanding: int  # requests out now
    limit: int  # current request limit
    rate: float  # bytes/s received, last measurement window
    peer_choking: bool
    am_interested: bool
    peer_interested: bool
    snubbed: bool
    slow_start: bool
    request_timeout: float  # current adaptive deadline (s)
    oldest_request_age: float | None  # s since the oldest outstanding request was sent
    idle_reason: str | None  # None when it has requests out or its limit is reached
    bytes_received: int
    wasted_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerSnapshot:
    peers: tuple[PeerSnapshot, ...]
    bytes_in_flight: int  # requested, not received (each block once, however many holders)
    bytes_waiting_for_disk: int  # received, not written
    budget: int  # Config.max_unflushed_bytes
    pieces_missing: int  # wanted, not started
    pieces_partial: int
    pieces_fully_requested: int
    pieces_awaiting_hash: int
    pieces_verified: int  # wanted and verified
    pieces_wanted: int
    free_blocks: int  # FREE blocks left in wanted pieces
    endgame: bool
    wasted_bytes: int  # received and thrown away (late duplicates, unrequested, failed hashes)
    hash_failures: int
    banned_ips: frozenset[str]
    done_bytes: int  # verified bytes of wanted pieces
    total_bytes: int  # bytes of wanted pieces
    finished: bool

    @property
    def budget_used(self) -> int:
        return self.bytes_in_flight + self.bytes_waiting_for_disk


@dataclasses.dataclass(frozen=True, slots=True)
class ActivePieceDetail:
    """Block counts of one started, not yet verified piece (FREE + REQUESTED + RECEIVED + WRITTEN = blocks)."""

    piece: int
    free: int
    requested: int
    received: int  # received, not yet written
    written: int
    # (holder, time its oldest outstanding request in this piece was sent), oldest first
    requested_from: tuple[tuple[PeerId, float], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class PieceDetail:
    """Per-piece state for the stall diagnosis (core/diagnose.py), from `Scheduler.piece_detail()`.

    `needed` and each `peer_has` entry are one byte (0/1) per piece, like the picker's own arrays.
    """

    num_pieces: int
    piece_length: int
    total_length: int
    block_size: int
    needed: bytes  # 1 = wanted and not verified
    active: tuple[ActivePieceDetail, ...]  # every started piece that is still needed
    peer_has: Mapping[PeerId, bytes | None]  # per joined peer; None = it has every piece (a seed)
    allowed_fast: Mapping[PeerId, frozenset[int]] = dataclasses.field(default_factory=dict)
    barred: Mapping[PeerId, frozenset[int]] = dataclasses.field(default_factory=dict)  # not asked again yet

    def piece_size(self, piece: int) -> int:
        if piece == self.num_pieces - 1:
            return self.total_length - self.piece_length * (self.num_pieces - 1)
        return self.piece_length


class _Peer:
    __slots__ = (
        "allowed_fast",
        "am_interested",
        "bars",
        "bytes_received",
        "fast",
        "id",
        "idle_reason",
        "ip",
        "last_block_at",
        "last_block_sent",
        "last_progress",
        "limit",
        "limit_cap",
        "outstanding",
        "own",
        "peer_choking",
        "peer_interested",
        "pieces",
        "rate",
        "released",
        "rtt_dev",
        "rtt_mean",
        "slow_start",
        "snubbed",
        "timed_out",
        "wasted_bytes",
        "win_bytes",
        "win_start",
    )

    def __init__(self, peer: PeerId, ip: str, pieces: PeerPieces, cap: int, fast: bool, config: Config,
                 now: float) -> None:
        self.id = peer
        self.ip = ip
        self.pieces = pieces
        self.fast = fast
        self.peer_choking = True
        self.peer_interested = False
        self.am_interested = False
        self.outstanding: dict[tuple[int, int], float] = {}  # (piece, block) -> time sent, oldest first
        # Requests released without their block (choke, timeout, cut), oldest first, at most
        # config.released_requests_kept: their block may still be on the wire, so a late copy was asked for.
        self.released: dict[tuple[int, int], None] = {}
        self.allowed_fast: set[int] = set()
        self.own: dict[int, None] = {}  # pieces this peer started (whole-piece affinity)
        self.bars: dict[int, float] = {}  # piece -> time until which we do not ask this peer for it
        self.limit_cap = cap
        self.limit = max(min(config.peer_limit_initial, cap), 1)
        self.slow_start = True
        self.snubbed = False
        self.timed_out = False  # a request of it timed out and no block came since
        self.rate = 0.0
        self.win_start = now
        self.win_bytes = 0
        self.rtt_mean: float | None = None
        self.rtt_dev = 0.0
        self.last_progress = now
        # When its last requested block arrived, and when the latest-sent request of that batch was sent:
        # a peer serves its queue in order, so a request's deadline runs from when it reached the head.
        self.last_block_at = now
        self.last_block_sent = now
        self.idle_reason: str | None = IDLE_CHOKED
        self.bytes_received = 0
        self.wasted_bytes = 0


class Scheduler:
    """All request state of one torrent. See the module docstring for the theory of operation."""

    def __init__(
        self,
        num_pieces: int,
        piece_length: int,
        total_length: int,
        config: Config,
        rng: random.Random,
        wanted: Sequence[bool] | None = None,
        have: Sequence[bool] | None = None,
        *,
        sequential: bool = False,
        budget_pool: BudgetPool | None = None,
    ) -> None:
        self.config = config
        self.picker = Picker(num_pieces, piece_length, total_length, config.block_size, rng,
                             wanted=wanted, have=have, sequential=sequential,
                             max_holders=config.endgame_max_dups)
        self._bs = config.block_size
        self._budget = config.max_unflushed_bytes
        # A batch shares one budget among its items (core/budget.py): then `_budget` is this scheduler's
        # grant, topped up from the pool while a fact is handled and settled back to what it uses.
        self._pool = budget_pool
        self._member = budget_pool.join() if budget_pool is not None else 0
        self._left_pool = False
        if budget_pool is not None:
            self._budget = 0
        # --max-download-limit: at most Config.download_rate_request_window seconds of the rate requested
        # at once, so a request never waits in our own limiter long enough to pass its deadline.
        rate = config.max_download_rate
        self._flight_cap = (max(self._bs, int(rate * config.download_rate_request_window)) if rate > 0
                            else None)
        self._peers: dict[PeerId, _Peer] = {}
        self._in_flight = 0
        self._waiting = 0
        self._wasted = 0
        self._hash_failures = 0
        self._banned: set[str] = set()
        self._suspicion: dict[str, int] = {}
        # (piece, contributor IPs still charged) of each failed attempt that raised suspicion
        self._shared_failures: list[tuple[int, set[str]]] = []
        # piece -> per failed attempt, per block: (ip, digest) of what was delivered
        self._failed_digests: dict[int, list[list[tuple[str, bytes]]]] = {}
        # Pieces that failed their hash and are not verified yet: one peer at a time fetches them (no
        # sharing with the owner, no endgame copies), so a liar ends up the sole contributor.
        self._single_source: set[int] = set()
        self._finished_sent = False
        self._hungry: dict[PeerId, None] = {}
        self._bar_expiries: list[float] = []  # heap: when a bar ends, hungry peers are offered work again
        # per-handle scratch
        self._now = 0.0
        self._dirty: dict[PeerId, None] = {}
        self._wake = False
        self._requests: dict[PeerId, list[BlockRef]] = {}
        self._cancels: dict[PeerId, list[BlockRef]] = {}
        self._out: list[Command] = []
        self._tail: list[Command] = []

    # --- public ----------------------------------------------------------------------------------

    def handle(self, fact: Fact, now: float) -> list[Command]:
        """Apply one fact at time `now`; return the commands it calls for, in the order to route them."""
        self._now = now
        expiries = self._bar_expiries
        while expiries and expiries[0] <= now:
            heapq.heappop(expiries)
            self._wake = True
        out: list[Command] = []
        self._out = out
        match fact:
            case BlocksReceived():
                self._on_blocks(fact)
            case BlocksWritten():
                self._on_written(fact)
            case Tick():
                self._on_tick()
            case Have():
                self._on_have(fact)
            case PeerJoined():
                self._on_join(fact)
            case Choked():
                self._on_choke(fact.peer)
            case Unchoked():
                peer = self._peers.get(fact.peer)
                if peer is not None:
                    peer.peer_choking = False
                    peer.bars.clear()
                    self._dirty[peer.id] = None
            case PeerInterested() | PeerNotInterested():
                peer = self._peers.get(fact.peer)
                if peer is not None:
                    peer.peer_interested = isinstance(fact, PeerInterested)
            case RequestRejected():
                self._on_reject(fact)
            case AllowedFast():
                peer = self._peers.get(fact.peer)
                if peer is not None and 0 <= fact.piece < self.picker.num_pieces:
                    peer.allowed_fast.add(fact.piece)
                    self._dirty[peer.id] = None
            case PeerGone():
                peer = self._peers.get(fact.peer)
                if peer is not None:
                    self._remove_peer(peer)
            case PieceHashed():
                self._on_hashed(fact)
        pool = self._pool
        if pool is None:
            self._flush()
            return out
        if self._left_pool:  # shutting down: what is in flight may land, nothing new is asked
            self._budget = self._in_flight + self._waiting
            self._flush()
            return out
        self._budget = pool.top_up(self._member, self._in_flight + self._waiting)
        self._flush()
        starving = bool(self._hungry) and self._budget_full() and self.picker.free_blocks > 0
        pool.settle(self._member, self._in_flight + self._waiting, starving=starving)
        self._budget = self._in_flight + self._waiting
        return out

    def leave_budget_pool(self) -> None:
        """The download ended: give this scheduler's share of a batch's budget back (no-op without one)."""
        if self._pool is not None and not self._left_pool:
            self._pool.leave(self._member)
            self._left_pool = True
            self._budget = self._in_flight + self._waiting

    def snapshot(self) -> SchedulerSnapshot:
        """A frozen picture of everything the display and the stall report need."""
        now = self._now
        picker = self.picker
        peers = tuple(
            PeerSnapshot(
                peer=p.id, ip=p.ip, outstanding=len(p.outstanding), limit=p.limit, rate=p.rate,
                peer_choking=p.peer_choking, am_interested=p.am_interested,
                peer_interested=p.peer_interested, snubbed=p.snubbed, slow_start=p.slow_start,
                request_timeout=self._deadline(p),
                oldest_request_age=(now - next(iter(p.outstanding.values()))) if p.outstanding else None,
                idle_reason=self._idle_reason(p),
                bytes_received=p.bytes_received, wasted_bytes=p.wasted_bytes,
            )
            for p in self._peers.values()
        )
        fully = sum(1 for ap in picker.active.values() if ap.n_free == 0 and ap.n_written < ap.nblocks)
        partial = len(picker.partial)
        wanted_count = picker.wanted_count
        verified = wanted_count - picker.needed_count
        return SchedulerSnapshot(
            peers=peers,
            bytes_in_flight=self._in_flight,
            bytes_waiting_for_disk=self._waiting,
            budget=self._budget if self._pool is None else self._pool.room(self._member),
            pieces_missing=picker.unstarted_count,
            pieces_partial=partial,
            pieces_fully_requested=fully,
            pieces_awaiting_hash=picker.awaiting_hash,
            pieces_verified=verified,
            pieces_wanted=wanted_count,
            free_blocks=picker.free_blocks,
            endgame=self.endgame,
            wasted_bytes=self._wasted,
            hash_failures=self._hash_failures,
            banned_ips=frozenset(self._banned),
            done_bytes=picker.verified_wanted_bytes,
            total_bytes=picker.wanted_bytes,
            finished=picker.needed_count == 0,
        )

    def piece_detail(self) -> PieceDetail:
        """What the snapshot does not carry and the stall diagnosis needs: per started piece its block
        counts and holders, per peer what it has, its allowed-fast pieces and its bars (as of the last fact).

        Cost: one C copy of the needed array and of each non-seed peer's bitmap (O(pieces x peers) bytes)
        plus O(blocks) per started piece (the start cap keeps those few) and O(bars) per peer.
        """
        picker = self.picker
        needed_arr = picker.needed
        active: list[ActivePieceDetail] = []
        for piece, ap in picker.active.items():
            if not needed_arr[piece]:
                continue
            states = ap.states
            oldest: dict[PeerId, float] = {}
            for holders in ap.holders:
                if holders:
                    for pid, sent in holders.items():
                        if sent < oldest.get(pid, sent + 1.0):
                            oldest[pid] = sent
            free, requested, received = states.count(FREE), states.count(REQUESTED), states.count(RECEIVED)
            active.append(ActivePieceDetail(
                piece=piece, free=free, requested=requested, received=received,
                written=ap.nblocks - free - requested - received,
                requested_from=tuple(sorted(oldest.items(), key=lambda item: item[1]))))
        now = self._now
        peers = self._peers.values()
        return PieceDetail(
            num_pieces=picker.num_pieces, piece_length=picker.piece_length, total_length=picker.total_length,
            block_size=picker.block_size, needed=bytes(needed_arr), active=tuple(active),
            peer_has={p.id: None if p.pieces.bitmap is None else bytes(p.pieces.bitmap) for p in peers},
            allowed_fast={p.id: frozenset(p.allowed_fast) for p in peers if p.fast and p.allowed_fast},
            barred={p.id: bars for p in peers if p.bars
                    and (bars := frozenset(piece for piece, until in p.bars.items() if now < until))},
        )

    def _idle_reason(self, peer: _Peer) -> str | None:
        if peer.outstanding or len(peer.outstanding) >= peer.limit:
            return None
        if self.picker.needed_of(peer.pieces) == 0:
            return IDLE_NOTHING_WANTED
        if peer.peer_choking:
            return IDLE_CHOKED
        if self._budget_full() and self.picker.free_blocks:
            return self._full_reason()  # said here: _flush skips hungry peers while the budget is full
        return peer.idle_reason

    @property
    def endgame(self) -> bool:
        """True while no FREE block is left in any wanted piece (and something is still missing)."""
        picker = self.picker
        return picker.free_blocks == 0 and picker.needed_count > 0

    # Cheap readers for a caller after every fact (the replay's timeline): O(1) / O(peers), where snapshot()
    # counts the started pieces.
    @property
    def bytes_in_flight(self) -> int:
        return self._in_flight

    @property
    def bytes_waiting_for_disk(self) -> int:
        return self._waiting

    def outstanding_counts(self) -> dict[PeerId, int]:
        """Requests out per peer, for the peers that have any."""
        return {p.id: len(p.outstanding) for p in self._peers.values() if p.outstanding}

    def piece_state(self, piece: int) -> PieceState:
        return self.picker.state(piece)

    def holders(self, piece: int, begin: int) -> dict[PeerId, float]:
        """Who holds a request for this block, and since when (empty unless REQUESTED)."""
        ap = self.picker.active.get(piece)
        if ap is None:
            return {}
        holders = ap.holders[begin // self._bs]
        return dict(holders) if holders else {}

    def outstanding(self, peer: PeerId) -> dict[BlockRef, float]:
        """This peer's outstanding requests as (piece, begin, length) -> time sent, oldest first."""
        p = self._peers.get(peer)
        if p is None:
            return {}
        block_length = self.picker.block_length
        return {(pc, b * self._bs, block_length(pc, b)): t for (pc, b), t in p.outstanding.items()}

    def peer_has(self, peer: PeerId, piece: int) -> bool:
        """True if this joined peer told us it has the piece (False for a peer not joined)."""
        p = self._peers.get(peer)
        return p is not None and p.pieces.has(piece)

    def is_barred(self, peer: PeerId, piece: int) -> bool:
        """True while a REJECT or a timeout keeps us from asking this peer for this piece."""
        p = self._peers.get(peer)
        if p is None:
            return False
        until = p.bars.get(piece)
        return until is not None and self._now < until

    def check_invariants(self) -> None:
        """Recount everything from scratch and raise AssertionError on any inconsistency.

        For tests and the swarm simulator (O(active pieces + outstanding requests)): invariants 1-4 of
        DESIGN.md, every REQUESTED block owned by exactly the peers whose outstanding lists name it,
        and the byte and block counters equal to what the block states say.
        """
        picker = self.picker
        config = self.config
        owners: dict[tuple[int, int], set[PeerId]] = {}
        for peer in self._peers.values():
            assert len(peer.outstanding) <= peer.limit, f"peer {peer.id!r} over its limit (invariant 1)"
            for key in peer.outstanding:
                owners.setdefault(key, set()).add(peer.id)
        in_flight = waiting = free = 0
        for piece, ap in picker.active.items():
            assert picker.needed[piece], f"piece {piece} active but not needed"
            for block in range(ap.nblocks):
                state = ap.states[block]
                holders = ap.holders[block]
                key = (piece, block)
                if state == REQUESTED:
                    assert holders, f"block {key} REQUESTED without an owner (invariant 3)"
                    assert set(holders) == owners.pop(key, set()), f"block {key}: holders disagree"
                    assert len(holders) <= max(config.endgame_max_dups, 1), f"block {key}: too many holders"
                    assert key in picker.requested_order
                    in_flight += picker.block_length(piece, block)
                else:
                    assert holders is None, f"block {key} has holders but is not REQUESTED"
                    if state == RECEIVED:
                        waiting += picker.block_length(piece, block)
                    elif state == FREE:
                        free += 1
                        assert block >= ap.cursor, f"block {key} FREE behind the cursor"
            assert (ap.index in picker.partial) == (ap.n_free > 0)
            assert ap.n_free < ap.nblocks or ap.n_written == ap.nblocks == 0, f"piece {piece}: all FREE yet active"
        assert not owners, f"outstanding requests for blocks that are not REQUESTED: {sorted(owners)[:5]}"
        free += sum(picker.block_count(p) for p in range(picker.num_pieces) if picker.unstarted[p])
        assert in_flight == self._in_flight, f"bytes in flight {self._in_flight} != {in_flight}"
        assert waiting == self._waiting, f"bytes waiting {self._waiting} != {waiting}"
        assert free == picker.free_blocks, f"free blocks {picker.free_blocks} != {free}"
        assert in_flight + waiting <= self._budget, "budget exceeded (invariant 2)"
        if picker.max_holders > 1:
            expected = {(piece, b) for piece, ap in picker.active.items() for b, h in enumerate(ap.holders)
                        if h is not None and len(h) < picker.max_holders}
            assert set(picker.dupable) == expected, "endgame candidates disagree with the holders"
        assert len(picker.requested_order) == sum(
            1 for ap in picker.active.values() for st in ap.states if st == REQUESTED)

    # --- facts -----------------------------------------------------------------------------------

    def _on_join(self, fact: PeerJoined) -> None:
        if fact.peer in self._peers:
            raise ValueError(f"peer id {fact.peer!r} joined twice")
        if fact.ip in self._banned:
            self._out.append(DropPeer(fact.peer, "banned IP address"))
            return
        picker = self.picker
        n = picker.num_pieces
        bitmap: bytearray | None
        if fact.have_all:
            bitmap = None
        elif fact.have_none or not fact.bitfield:
            bitmap = bytearray(n)
        else:
            bitmap = parse_bitfield(fact.bitfield, n)
            if bitmap is None:
                self._out.append(DropPeer(fact.peer, "malformed bitfield"))
                return
            if bitmap.count(1) == n:
                bitmap = None
        config = self.config
        cap = config.peer_limit_max if fact.reqq is None else min(config.peer_limit_max, max(fact.reqq, 1))
        view = picker.add_peer(fact.peer, bitmap)
        peer = _Peer(fact.peer, fact.ip, view, cap, fact.fast, config, self._now)
        self._peers[fact.peer] = peer
        self._update_interest(peer)

    def _on_have(self, fact: Have) -> None:
        peer = self._peers.get(fact.peer)
        if peer is None:
            return
        if not 0 <= fact.piece < self.picker.num_pieces:
            self._drop(peer, f"HAVE for piece {fact.piece} out of range")
            return
        if self.picker.add_have(peer.id, fact.piece):
            self._update_interest(peer)
        if self.picker.needed[fact.piece]:
            self._dirty[peer.id] = None

    def _on_choke(self, peer_id: PeerId) -> None:
        peer = self._peers.get(peer_id)
        if peer is None or peer.peer_choking:
            return
        peer.peer_choking = True
        keep = peer.allowed_fast if peer.fast else set()
        for key in [k for k in peer.outstanding if k[0] not in keep]:
            self._release(peer, key)
        self._halve(peer)
        self._disown(peer)
        self._dirty[peer.id] = None

    def _on_reject(self, fact: RequestRejected) -> None:
        peer = self._peers.get(fact.peer)
        if peer is None:
            return
        key = (fact.piece, fact.begin // self._bs)
        if fact.begin % self._bs or key not in peer.outstanding:
            return  # a reject for a request already released (choke, cancel): nothing to undo
        self._release(peer, key)
        self._bar(peer, fact.piece)
        # A reject is a loss signal like a timeout (a full queue at the peer, or a peer that will not
        # serve): halving keeps a peer that rejects at wire speed to a trickle of requests.
        self._halve(peer)
        self._dirty[peer.id] = None

    def _on_blocks(self, fact: BlocksReceived) -> None:
        peer = self._peers.get(fact.peer)
        if peer is None:
            return
        picker = self.picker
        bs = self._bs
        now = self._now
        writes: list[ReceivedBlock] = []
        outstanding = peer.outstanding
        active = picker.active
        last_piece = picker.num_pieces - 1
        last_blocks = picker.last_piece_blocks
        per_piece = picker.blocks_per_piece
        samples: list[float] = []  # request-to-block times, applied once for the batch (_progress)
        window_marks: list[int] = []  # the peer's window bytes at its first two samples
        latest_sent = peer.last_block_sent
        for entry in fact.blocks:
            piece, begin, data = entry
            length = len(data)
            peer.bytes_received += length
            peer.win_bytes += length
            block, misaligned = divmod(begin, bs)
            if piece == last_piece:
                expected = bs if block < last_blocks - 1 else picker.last_piece_length - block * bs
                too_far = block >= last_blocks
            else:
                expected = bs if block < per_piece - 1 else picker.piece_length - block * bs
                too_far = block >= per_piece
            if misaligned or too_far or block < 0 or length != expected or not 0 <= piece < last_piece + 1:
                self._drop(peer, f"PIECE message for a block we never ask for ({piece}, {begin}, {length})")
                break
            key = (piece, block)
            sent = outstanding.pop(key, None)
            ap = active.get(piece)
            asked = sent is not None
            if sent is not None:
                samples.append(now - sent)
                if sent > latest_sent:
                    latest_sent = sent
                if len(window_marks) < 2:
                    window_marks.append(peer.win_bytes)
            elif key in peer.released:  # released (choke, timeout, cut) while the block was on the wire
                del peer.released[key]
                asked = True
            if not asked or ap is None or ap.states[block] != REQUESTED:
                if (asked and ap is not None and ap.states[block] == FREE and piece not in self._single_source
                        and self._in_flight + self._waiting + length <= self._budget):
                    # A late copy of a released request (timeout, choke, cut) whose block nobody holds
                    # now: still wanted, so it is taken (not on a piece fetched from one peer at a time).
                    picker.receive_free(ap, block, peer.id, peer.ip)
                    self._waiting += length
                    writes.append(entry)
                    if picker.free_blocks == 0:
                        self._wake = True  # endgame began: hungry peers may now duplicate
                    continue
                # A late copy (endgame, or released and served elsewhere) or data never asked of this
                # peer: dropped and counted as waste (invariant 5), even while another peer holds the
                # block requested (that peer's copy is the one we asked for; unsolicited data is not
                # written over its turn, nor blamed on it if the piece fails).
                self._waste(peer, length)
                continue
            holders = picker.receive(ap, block, peer.id, peer.ip)
            for other in holders:
                if other != peer.id:
                    op = self._peers[other]
                    del op.outstanding[key]
                    self._cancels.setdefault(other, []).append((piece, begin, length))
                    self._dirty[other] = None
            self._in_flight -= length
            self._waiting += length
            writes.append(entry)
        if writes:
            self._out.append(WriteBlocks(tuple(writes)))
        if peer.id in self._peers:
            if samples:
                peer.last_block_at = now
                peer.last_block_sent = latest_sent
                self._progress(peer, samples, window_marks)
            self._dirty[peer.id] = None

    def _on_written(self, fact: BlocksWritten) -> None:
        picker = self.picker
        bs = self._bs
        for piece, begin, _length in fact.blocks:
            ap = picker.active.get(piece)
            block = begin // bs
            if ap is None or ap.states[block] != RECEIVED:
                continue
            self._waiting -= picker.block_length(piece, block)
            if picker.written(ap, block):
                self._out.append(HashPiece(piece, piece in self._failed_digests))
        if picker.free_blocks:
            self._wake = True  # budget room: peers held back by it may ask now (endgame needs none)

    def _on_hashed(self, fact: PieceHashed) -> None:
        picker = self.picker
        piece = fact.piece
        ap = picker.active.get(piece)
        if ap is None or ap.n_written != ap.nblocks:
            return
        if fact.ok:
            self._on_verified(piece, fact.block_digests)
            return
        self._hash_failures += 1
        self._single_source.add(piece)
        self._wasted += picker.piece_size(piece)
        contributors = picker.hashed_bad(piece)
        ips = [c[1] for c in contributors if c is not None]
        if fact.block_digests is not None and len(fact.block_digests) == len(ips):
            self._failed_digests.setdefault(piece, []).append(list(zip(ips, fact.block_digests, strict=True)))
        distinct = set(ips)
        if distinct & self._banned:
            pass  # an IP banned since delivered part of it: that explains the failure, blame no one else
        elif len(distinct) == 1:
            self._ban(distinct.pop(), f"sole contributor of piece {piece}, which failed its hash")
        elif piece in self._failed_digests and fact.block_digests is not None:
            pass  # the digests name the liar when the piece passes; the retry has a single source
        else:
            self._shared_failures.append((piece, set(distinct)))
            for ip in distinct:
                self._suspicion[ip] = self._suspicion.get(ip, 0) + 1
            threshold = self.config.hash_fail_ban_threshold
            for ip in sorted(ip for ip in distinct if self._suspicion[ip] >= threshold):
                self._ban(ip, f"contributed to {self._suspicion[ip]} pieces that failed their hash")
        self._wake = True

    def _on_verified(self, piece: int, digests: tuple[bytes, ...] | None) -> None:
        picker = self.picker
        sources = ({c[1] for c in picker.active[piece].contributors if c is not None} if self._shared_failures
                   else ())  # looked at only while some shared failure is unexplained (rare)
        if len(sources) == 1:
            # One IP delivered this whole good piece: its point for an earlier failed attempt of the
            # same piece is forgiven (without digests nothing better tells the liar from the honest).
            source = next(iter(sources))
            for failed_piece, charged in self._shared_failures:
                if failed_piece == piece and source in charged:
                    charged.discard(source)
                    self._suspicion[source] -= 1
        done_peers = picker.hashed_ok(piece)
        self._single_source.discard(piece)
        self._out.append(SendHave(piece))
        failed = self._failed_digests.pop(piece, None)
        if failed and digests is not None:
            liars = {ip for attempt in failed for (ip, d), good in zip(attempt, digests, strict=False)
                     if d != good}
            for ip in sorted(liars):
                self._ban(ip, f"sent a corrupt block of piece {piece}")
        for peer_id in done_peers:
            peer = self._peers.get(peer_id)
            if peer is not None:
                self._update_interest(peer)
        if picker.needed_count == 0:
            for peer in self._peers.values():
                self._update_interest(peer)

    def _on_tick(self) -> None:
        now = self._now
        config = self.config
        self._wake = True  # rates moved, bars may have ended: offer work to hungry peers again
        for peer in list(self._peers.values()):
            self._measure(peer)
            if not peer.outstanding:
                continue
            deadline = self._deadline(peer)
            expired = []
            # A peer serves its requests in order: one waiting behind others that are still arriving is
            # not late. Its clock starts when it was sent or when the peer's last block came, whichever
            # is later; a request sent before a block that already came was skipped: its clock is from
            # when it was sent. (Those starts never decrease along `outstanding`, so stop at the first
            # request in time.)
            served_at = peer.last_block_at
            served_sent = peer.last_block_sent
            for key, sent in peer.outstanding.items():
                start = sent if sent < served_sent else max(sent, served_at)
                if now - start < deadline:
                    break
                expired.append(key)
            if expired:
                peer.timed_out = True
                for key in expired:
                    self._release(peer, key)
                    self._cancel(peer, key)
                    if self._others_can_take(peer, key[0]):
                        self._bar(peer, key[0])  # the block goes to them; this peer is not asked at once
                self._halve(peer)
                # It is late: its pieces are others' to take first (a failed piece, fetched from one
                # peer at a time, would otherwise wait for it until snub_timeout).
                self._disown(peer)
                self._dirty[peer.id] = None
            if (peer.outstanding and not peer.snubbed
                    and now - peer.last_progress >= config.snub_timeout):
                peer.snubbed = True
                peer.slow_start = False
                peer.limit = 1
                self._shrink(peer)
                self._disown(peer)
                self._dirty[peer.id] = None

    # --- request bookkeeping -----------------------------------------------------------------------

    def _release(self, peer: _Peer, key: tuple[int, int]) -> None:
        """Forget one of the peer's outstanding requests (no CANCEL is sent here)."""
        del peer.outstanding[key]
        released = peer.released
        released[key] = None
        if len(released) > self.config.released_requests_kept:
            del released[next(iter(released))]
        piece, block = key
        ap = self.picker.active[piece]
        if self.picker.free_blocks == 0:
            self._wake = True  # endgame: the block may now take another holder
        if self.picker.release(ap, block, peer.id):
            self._in_flight -= self.picker.block_length(piece, block)
            self._wake = True
            owner = self._peers.get(ap.owner) if ap.owner is not None else None
            if owner is not None and piece in self.picker.active:
                owner.own[piece] = None

    def _others_can_take(self, peer: _Peer, piece: int) -> bool:
        """Another peer could be asked for this piece now (it has it, does not choke us, is not barred).

        A timeout bars the peer from the piece only then: barring the only peer that can serve a piece
        does not get its blocks elsewhere, it only stops the download for piece_retry_delay.
        """
        now = self._now
        for other in self._peers.values():
            if other is peer or not other.pieces.has(piece):
                continue
            if other.peer_choking and not (other.fast and piece in other.allowed_fast):
                continue
            if not (other.bars and _is_barred(other.bars, piece, now)):
                return True
        return False

    def _bar(self, peer: _Peer, piece: int) -> None:
        until = self._now + self.config.piece_retry_delay
        peer.bars[piece] = until
        heapq.heappush(self._bar_expiries, until)

    def _cancel(self, peer: _Peer, key: tuple[int, int]) -> None:
        piece, block = key
        self._cancels.setdefault(peer.id, []).append(
            (piece, block * self._bs, self.picker.block_length(piece, block)))

    def _shrink(self, peer: _Peer) -> None:
        """Cancel the newest requests over the peer's limit (invariant 1 after a cut)."""
        while len(peer.outstanding) > peer.limit:
            key = next(reversed(peer.outstanding))
            self._release(peer, key)
            self._cancel(peer, key)

    def _halve(self, peer: _Peer) -> None:
        config = self.config
        peer.slow_start = False
        if not peer.snubbed:
            peer.limit = max(min(config.peer_limit_min, peer.limit_cap), peer.limit // 2)
        self._shrink(peer)

    def _disown(self, peer: _Peer) -> None:
        """The peer cannot progress its pieces now: others may take them first."""
        active = self.picker.active
        for piece in peer.own:
            ap = active.get(piece)
            if ap is not None and ap.owner == peer.id:
                self.picker.set_owner(ap, None)
        peer.own.clear()

    def _progress(self, peer: _Peer, samples: list[float], window_marks: list[int]) -> None:
        """Requested blocks of one batch arrived after `samples` seconds: adapt deadline and limit.

        The same as applying the samples one at a time, in closed form for the limit (this runs per
        batch, not per block). `window_marks[i]` is the peer's window byte count when sample i
        arrived: the rate is measured where the per-block rule measured it (the first sample that
        grows the limit), with the bytes counted up to that block.
        """
        config = self.config
        now = self._now
        peer.last_progress = now
        peer.timed_out = False
        mean = peer.rtt_mean
        dev = peer.rtt_dev
        time_gain = config.request_time_gain
        dev_gain = config.request_dev_gain
        for sample in samples:
            if mean is None:
                mean = sample
                dev = sample / 2
            else:
                dev += dev_gain * (abs(sample - mean) - dev)
                mean += time_gain * (sample - mean)
        peer.rtt_mean = mean
        peer.rtt_dev = dev
        grow = len(samples)
        first = 0
        cap = peer.limit_cap
        if peer.snubbed:  # the first sample ends the snub and grows nothing
            peer.snubbed = False
            peer.limit = min(config.peer_limit_min, cap)
            grow -= 1
            first = 1
        if not grow:
            return
        elapsed = now - peer.win_start
        if elapsed >= config.peer_rate_window:  # _measure, at the first growing sample
            mark = window_marks[first]
            peer.rate = mark / elapsed
            peer.win_start = now
            peer.win_bytes -= mark  # the blocks after that sample open the new window
        target = max(min(config.peer_limit_min, cap),
                     min(int(peer.rate * config.peer_queue_seconds / self._bs), cap))  # _target
        limit = peer.limit
        if peer.slow_start:
            # +1 per sample (up to the cap) until the limit reaches the target (with a rate known)
            ends_at = max(1, target - limit) if peer.rate > 0 else grow + 1
            if ends_at > grow:
                peer.limit = min(limit + grow, cap)
                return
            peer.slow_start = False
            limit = min(limit + ends_at, cap)
            grow -= ends_at
            if not grow:
                peer.limit = limit
                return
        # +1 per sample up to the target; a lower target never cancels: the limit waits at the
        # outstanding count while it drains.
        peer.limit = max(min(limit + grow, target), len(peer.outstanding), 1)

    def _measure(self, peer: _Peer) -> None:
        elapsed = self._now - peer.win_start
        if elapsed >= self.config.peer_rate_window:
            peer.rate = peer.win_bytes / elapsed
            peer.win_start = self._now
            peer.win_bytes = 0

    def _target(self, peer: _Peer) -> int:
        config = self.config
        target = int(peer.rate * config.peer_queue_seconds / self._bs)
        return max(min(config.peer_limit_min, peer.limit_cap), min(target, peer.limit_cap))

    def _deadline(self, peer: _Peer) -> float:
        config = self.config
        if peer.rtt_mean is None:
            return config.request_timeout_initial
        value = peer.rtt_mean + config.request_timeout_k * peer.rtt_dev
        return min(max(value, config.request_timeout_min), config.request_timeout_max)

    def _waste(self, peer: _Peer, length: int) -> None:
        peer.wasted_bytes += length
        self._wasted += length

    # --- peers ---------------------------------------------------------------------------------------

    def _update_interest(self, peer: _Peer) -> None:
        wants = self.picker.needed_of(peer.pieces) > 0
        if wants and not peer.am_interested:
            peer.am_interested = True
            self._out.append(SendInterested(peer.id))
            self._dirty[peer.id] = None
        elif not wants and peer.am_interested:
            peer.am_interested = False
            self._out.append(SendNotInterested(peer.id))

    def _remove_peer(self, peer: _Peer) -> None:
        for key in list(peer.outstanding):
            self._release(peer, key)
        self._disown(peer)
        self.picker.remove_peer(peer.id)
        del self._peers[peer.id]
        self._hungry.pop(peer.id, None)
        self._dirty.pop(peer.id, None)
        self._requests.pop(peer.id, None)
        self._cancels.pop(peer.id, None)

    def _drop(self, peer: _Peer, reason: str) -> None:
        if peer.id not in self._peers:
            return
        self._remove_peer(peer)
        self._tail.append(DropPeer(peer.id, reason))

    def _ban(self, ip: str, reason: str) -> None:
        if ip in self._banned:
            return
        self._banned.add(ip)
        self._tail.append(BanPeer(ip, reason))
        for peer in [p for p in self._peers.values() if p.ip == ip]:
            self._drop(peer, f"banned: {reason}")
        # The failures this IP shared with others are now explained: forgive the others' points for
        # them, so a liar's blocks left in other pieces cannot walk an honest peer to a ban.
        kept = []
        for piece, charged in self._shared_failures:
            if ip in charged:
                for other in charged - self._banned:
                    self._suspicion[other] -= 1
            else:
                kept.append((piece, charged))
        self._shared_failures = kept

    # --- making requests -------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Refill dirty (and, when something was freed, hungry) peers; emit batched commands."""
        peers = self._peers
        # Another pass only when a pass freed work for hungry peers (a piece started with blocks left,
        # endgame began). Each pass leaves fewer hungry peers or less budget, so this ends quickly.
        for _round in range(len(peers) + 2):
            if self._wake and self._hungry:
                # Freed room goes to the hungry peers with the fewest requests out first, so a tight
                # budget is shared out like water filling instead of going to whoever asks first;
                # peers that are snubbed or just timed out come last, so a silent peer cannot keep
                # taking back the room its own timeouts free.
                order = sorted(self._hungry, key=lambda pid: (peers[pid].snubbed, peers[pid].timed_out,
                                                              len(peers[pid].outstanding)))
                self._dirty = dict.fromkeys([*order, *self._dirty])
            self._wake = False
            if not self._dirty:
                break
            dirty = self._dirty
            self._dirty = {}
            hungry = self._hungry
            picker = self.picker
            for peer_id in dirty:
                if peer_id in hungry and self._budget_full() and picker.free_blocks:
                    continue  # the room is gone and it is not endgame: it stays hungry, nothing to do
                peer = peers.get(peer_id)
                if peer is not None:
                    self._refill(peer)
        self._wake = False
        out = self._out
        if self._tail:
            out.extend(self._tail)  # drops and bans first: their released blocks are in the requests below
            self._tail = []
        if self._cancels:
            for peer_id, cancels in self._cancels.items():
                out.append(SendCancels(peer_id, tuple(cancels)))
            self._cancels = {}
        if self._requests:
            for peer_id, requests in self._requests.items():
                if requests:
                    out.append(SendRequests(peer_id, tuple(requests)))
            self._requests = {}
        if not self._finished_sent and self.picker.needed_count == 0:
            self._finished_sent = True
            out.append(Finished())

    def _refill(self, peer: _Peer) -> None:
        spare = peer.limit - len(peer.outstanding)
        if spare <= 0:
            self._hungry.pop(peer.id, None)
            return
        picker = self.picker
        view = peer.pieces
        if picker.needed_of(view) == 0:
            peer.idle_reason = IDLE_NOTHING_WANTED
            self._hungry.pop(peer.id, None)
            return
        if peer.peer_choking:
            if peer.fast and peer.allowed_fast:
                spare = self._refill_allowed_fast(peer, spare)
            peer.idle_reason = IDLE_CHOKED
            self._hungry.pop(peer.id, None)
            return
        if self._budget_full() and self.picker.free_blocks:
            # Nothing but an endgame duplicate could go out, and it is not endgame: wait for the writer.
            self._hungry[peer.id] = None
            if not peer.outstanding:
                peer.idle_reason = self._full_reason()
            return
        start = spare
        now = self._now
        bars = peer.bars
        active = picker.active
        # 1. its own partial pieces (whole-piece affinity)
        if peer.own:
            for piece in list(peer.own):
                ap = active.get(piece)
                if ap is None or ap.owner != peer.id or not ap.n_free:
                    del peer.own[piece]  # _release puts it back if a block of it becomes FREE again
                    continue
                if not (bars and _is_barred(bars, piece, now)):
                    spare = self._take(peer, ap, spare)
                    if spare <= 0 or self._budget_full():
                        break
        # 2. partial pieces nobody owns
        if spare > 0 and picker.orphans:
            for piece in list(picker.orphans):
                if piece not in picker.orphans or not view.has(piece) or _is_barred(bars, piece, now):
                    continue
                ap = active[piece]
                if not peer.snubbed:
                    picker.set_owner(ap, peer.id)
                    peer.own[piece] = None
                spare = self._take(peer, ap, spare)
                if spare <= 0 or self._budget_full():
                    break
        # 3. new pieces, rarest first, while the start cap allows
        if spare > 0 and not peer.snubbed:
            cap = self._start_cap()
            while spare > 0 and len(picker.partial) < cap and not self._budget_full():
                fresh = picker.new_piece(view, bars, now)
                if fresh is None:
                    break
                ap = picker.start(fresh, peer.id)
                peer.own[fresh] = None
                spare = self._take(peer, ap, spare)
                if ap.n_free:
                    self._wake = True  # a new partial piece: hungry peers may share it
        # 4. other peers' partial pieces
        if spare > 0 and picker.partial:
            for piece in list(picker.partial):
                ap2 = active.get(piece)
                if ap2 is None or not ap2.n_free or not view.has(piece) or _is_barred(bars, piece, now):
                    continue
                if piece in self._single_source and ap2.owner is not None:
                    continue  # a piece that failed its hash stays with the one peer fetching it
                spare = self._take(peer, ap2, spare)
                if spare <= 0 or self._budget_full():
                    break
        # 5. one new piece past the cap rather than leave the peer idle
        if spare == start and not self._budget_full():
            fresh = picker.new_piece(view, bars, now, common=peer.snubbed)
            if fresh is not None:
                owner = None if peer.snubbed else peer.id
                ap = picker.start(fresh, owner)
                if owner is not None:
                    peer.own[fresh] = None
                spare = self._take(peer, ap, spare)
                if ap.n_free:
                    self._wake = True
        # 6. endgame: duplicate the oldest outstanding requests, once this peer is nearly idle
        if spare > 0 and picker.free_blocks == 0:
            room = min(spare, self.config.endgame_peer_requests - len(peer.outstanding))
            if room > 0:
                spare -= room - self._endgame(peer, room)
        if spare > 0:
            self._hungry[peer.id] = None
            if not peer.outstanding:
                peer.idle_reason = (self._full_reason() if self._budget_full()
                                    else IDLE_BARRED if bars and picker.free_blocks else IDLE_ALL_REQUESTED)
        else:
            self._hungry.pop(peer.id, None)

    def _refill_allowed_fast(self, peer: _Peer, spare: int) -> int:
        picker = self.picker
        for piece in sorted(peer.allowed_fast):
            if spare <= 0 or self._budget_full():
                break
            if not picker.needed[piece] or not peer.pieces.has(piece) or _is_barred(peer.bars, piece, self._now):
                continue
            ap = picker.active.get(piece)
            if ap is None:
                if not picker.unstarted[piece]:
                    continue
                ap = picker.start(piece, None)
            if ap.n_free:
                spare = self._take(peer, ap, spare)
                if ap.n_free:
                    self._wake = True
        return spare

    def _budget_full(self) -> bool:
        """No room for one more block (a full-size one; the last piece's short block is not special), in
        the budget or under the download rate limit's cap on bytes in flight."""
        cap = self._flight_cap
        return (self._in_flight + self._waiting + self._bs > self._budget
                or (cap is not None and self._in_flight + self._bs > cap))

    def _full_reason(self) -> str:
        """Why a peer with spare slots gets nothing while `_budget_full()`: the rate cap or the writer."""
        cap = self._flight_cap
        if cap is not None and self._in_flight + self._bs > cap:
            return IDLE_RATE
        return IDLE_BUDGET

    def _start_cap(self) -> int:
        config = self.config
        by_peers = int(config.partial_pieces_per_peer * len(self._peers))
        by_bytes = config.partial_pieces_bytes // self.picker.piece_length
        return max(by_peers, by_bytes, 1)

    def _take(self, peer: _Peer, ap: ActivePiece, spare: int) -> int:
        """Request FREE blocks of `ap` from `peer` while it has spare slots and the budget has room."""
        picker = self.picker
        piece = ap.index
        bs = self._bs
        budget = self._budget
        cap = self._flight_cap
        now = self._now
        outstanding = peer.outstanding
        reqs = self._requests.get(peer.id)
        if reqs is None:
            reqs = self._requests[peer.id] = []
        if not outstanding and not peer.timed_out:
            peer.last_progress = now  # the snub clock starts now, unless its last requests timed out
        states = ap.states
        last_block = ap.nblocks - 1
        while spare > 0 and ap.n_free:
            block = ap.cursor  # picker.next_free, inlined
            while states[block] != FREE:
                block += 1
            ap.cursor = block
            length = bs if block < last_block else picker.block_length(piece, block)
            if self._in_flight + self._waiting + length > budget or (
                    cap is not None and self._in_flight + length > cap):
                break
            picker.request(ap, block, peer.id, now)
            outstanding[(piece, block)] = now
            self._in_flight += length
            reqs.append((piece, block * bs, length))
            spare -= 1
        if picker.free_blocks == 0:
            self._wake = True  # endgame began: hungry peers may now duplicate
        return spare

    def _endgame(self, peer: _Peer, spare: int) -> int:
        """Duplicate the oldest outstanding requests that still take another holder."""
        picker = self.picker
        bitmap = peer.pieces.bitmap
        now = self._now
        bars = peer.bars
        outstanding = peer.outstanding
        pid = peer.id
        reqs = self._requests.get(pid)
        if reqs is None:
            reqs = self._requests[pid] = []
        if not outstanding and not peer.timed_out:
            peer.last_progress = now  # the snub clock starts now, unless its last requests timed out
        active = picker.active
        taken: list[tuple[int, int]] = []
        single = self._single_source
        for key in picker.dupable:
            piece = key[0]
            if key in outstanding or (bitmap is not None and not bitmap[piece]):
                continue
            if single and piece in single:
                continue
            if bars and _is_barred(bars, piece, now):
                continue
            taken.append(key)
            if len(taken) >= spare:
                break
        for key in taken:  # picker.request edits dupable: not while iterating it
            piece, block = key
            picker.request(active[piece], block, pid, now)
            outstanding[key] = now
            reqs.append((piece, block * self._bs, picker.block_length(piece, block)))
        return spare - len(taken)


__all__ = [
    "FREE",
    "REQUESTED",
    "ActivePieceDetail",
    "PeerSnapshot",
    "PieceDetail",
    "Scheduler",
    "SchedulerSnapshot",
]
