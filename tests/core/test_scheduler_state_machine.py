"""The scheduler under arbitrary interleavings of facts from several peers (hypothesis state machine).

The test keeps its own model of what the scheduler's commands imply (which requests are out to whom,
which blocks wait for the disk, which were written in the current attempt of their piece) and, after
every fact, checks DESIGN.md's invariants 1-5, that no block is REQUESTED without an owner, that the
scheduler's accounting equals the model's, and liveness rule 6 (a peer that does not choke us, has a
spare slot, and has a FREE block we want while the budget has room, has a request out).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core import messages as m
from jstorrent_cli.core.picker import REQUESTED
from jstorrent_cli.core.scheduler import Scheduler, SchedulerSnapshot

BS = DEFAULT_CONFIG.block_size
PEERS = (0, 1, 2, 3)
IPS = {p: f"127.0.0.{p + 2}" for p in PEERS}

Key = tuple[int, int]  # (piece, begin)


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    @initialize(
        num_pieces=st.integers(1, 7),
        blocks_per_piece=st.integers(1, 3),
        short_tail=st.integers(0, BS - 1),
        budget_blocks=st.integers(1, 12),
        max_dups=st.integers(1, 3),
        initial=st.integers(1, 6),
        sequential=st.booleans(),
        wanted_bits=st.integers(0, 2**7 - 1),
        seed=st.integers(0, 2**16),
    )
    def setup(self, num_pieces: int, blocks_per_piece: int, short_tail: int, budget_blocks: int,
              max_dups: int, initial: int, sequential: bool, wanted_bits: int, seed: int) -> None:
        self.config = dataclasses.replace(
            DEFAULT_CONFIG,
            max_unflushed_bytes=budget_blocks * BS,
            endgame_max_dups=max_dups,
            peer_limit_initial=initial,
            peer_limit_min=1,
            peer_limit_max=8,
            snub_timeout=5.0,
            request_timeout_initial=3.0,
            request_timeout_min=1.0,
            request_timeout_max=6.0,
            piece_retry_delay=2.0,
            partial_pieces_bytes=BS,
            partial_pieces_per_peer=0.5,
        )
        piece_length = blocks_per_piece * BS
        total = num_pieces * piece_length - short_tail
        wanted = [bool(wanted_bits >> i & 1) or i == 0 for i in range(num_pieces)]
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self.total = total
        self.wanted = wanted
        self.s = Scheduler(num_pieces, piece_length, total, self.config, random.Random(seed), wanted=wanted,
                           sequential=sequential)
        self.live: dict[int, set[int] | None] = {}  # peer -> pieces it has (None: all)
        self.fast: dict[int, bool] = {}
        self.choking: dict[int, bool] = {}
        self.allowed: dict[int, set[int]] = {}
        self.out: dict[tuple[int, Key], int] = {}  # (peer, block) -> length, in send order
        self.cancelled: dict[tuple[int, Key], int] = {}  # released or cancelled: may still arrive
        self.pending_writes: dict[Key, int] = {}
        self.attempt_writes: dict[int, set[Key]] = {}  # piece -> blocks written this attempt
        self.written: dict[int, set[Key]] = {}  # piece -> blocks the writer confirmed this attempt
        self.hash_queue: list[int] = []
        self.verified: set[int] = set()
        self.failed: set[int] = set()  # failed a hash, not verified since: fetched from one peer at a time
        self.banned: set[str] = set()
        self.finished = False
        self.handle(m.Tick())

    # --- plumbing ----------------------------------------------------------------------------

    def block_len(self, piece: int, begin: int) -> int:
        end = min((piece + 1) * self.piece_length, self.total)
        return min(BS, end - piece * self.piece_length - begin)

    def forget(self, peer: int, predicate: Callable[[int], bool] | None = None) -> None:
        for key in [k for k in self.out if k[0] == peer]:
            if predicate is None or predicate(key[1][0]):
                self.cancelled[key] = self.out.pop(key)

    def handle(self, fact: m.Fact) -> list[m.Command]:
        commands = self.s.handle(fact, self.now)
        snap = self.s.snapshot()
        for cmd in commands:
            if isinstance(cmd, m.SendRequests):
                assert isinstance(cmd.peer, int) and cmd.peer in self.live
                for piece, begin, length in cmd.requests:
                    key = (cmd.peer, (piece, begin))
                    assert key not in self.out, "the same request twice to one peer"
                    assert length == self.block_len(piece, begin)
                    assert (piece, begin) not in self.attempt_writes.get(piece, set())
                    if any(k[1] == (piece, begin) for k in self.out):
                        assert snap.endgame, "a duplicate request outside endgame (invariant 4)"
                    self.out[key] = length
                    self.cancelled.pop(key, None)
            elif isinstance(cmd, m.SendCancels):
                assert isinstance(cmd.peer, int)
                for piece, begin, _length in cmd.cancels:
                    key = (cmd.peer, (piece, begin))
                    assert key in self.out, "a cancel for a request not out"
                    self.cancelled[key] = self.out.pop(key)
            elif isinstance(cmd, m.WriteBlocks):
                for piece, begin, data in cmd.blocks:
                    done = self.attempt_writes.setdefault(piece, set())
                    assert (piece, begin) not in done, "a block written twice in one attempt (invariant 5)"
                    done.add((piece, begin))
                    assert len(data) == self.block_len(piece, begin)
                    self.pending_writes[(piece, begin)] = len(data)
            elif isinstance(cmd, m.HashPiece):
                assert cmd.piece not in self.hash_queue
                expected = {(cmd.piece, b * BS) for b in range(-(-self.piece_size(cmd.piece) // BS))}
                assert self.written.get(cmd.piece) == expected
                self.hash_queue.append(cmd.piece)
            elif isinstance(cmd, m.DropPeer):
                if cmd.peer in self.live:
                    self.drop(cmd.peer)
            elif isinstance(cmd, m.BanPeer):
                self.banned.add(cmd.ip)
            elif isinstance(cmd, m.Finished):
                assert not self.finished
                assert all(p in self.verified for p in range(self.num_pieces) if self.wanted[p])
                self.finished = True
            elif isinstance(cmd, m.SendHave):
                assert cmd.piece in self.verified
        return commands

    def piece_size(self, piece: int) -> int:
        return min(self.piece_length, self.total - piece * self.piece_length)

    def drop(self, peer: int) -> None:
        self.forget(peer)
        for key in [k for k in self.cancelled if k[0] == peer]:
            del self.cancelled[key]
        del self.live[peer]

    def tick_time(self, dt: float) -> None:
        self.now += dt

    # --- rules ---------------------------------------------------------------------------------

    @rule(peer=st.sampled_from(PEERS), kind=st.sampled_from(["all", "none", "bits"]),
          bits=st.integers(0, 2**7 - 1), fast=st.booleans(), reqq=st.none() | st.integers(1, 10))
    def join(self, peer: int, kind: str, bits: int, fast: bool, reqq: int | None) -> None:
        if peer in self.live:
            return
        n = self.num_pieces
        have = {i for i in range(n) if bits >> i & 1}
        bitfield = bytearray((n + 7) // 8)
        for i in have:
            bitfield[i // 8] |= 0x80 >> (i % 8)
        fact = m.PeerJoined(peer, IPS[peer], bitfield=bytes(bitfield) if kind == "bits" else b"",
                            have_all=kind == "all", have_none=kind == "none", reqq=reqq, fast=fast)
        self.live[peer] = None if kind == "all" else (have if kind == "bits" else set())
        self.fast[peer] = fast
        self.choking[peer] = True
        self.allowed[peer] = set()
        cmds = self.handle(fact)
        if IPS[peer] in self.banned:
            assert any(isinstance(c, m.DropPeer) and c.peer == peer for c in cmds)
            assert peer not in self.live

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), piece=st.integers(0, 6))
    def have(self, data: st.DataObject, piece: int) -> None:
        peer = data.draw(st.sampled_from(sorted(self.live)))
        piece %= self.num_pieces
        pieces = self.live[peer]
        if pieces is not None:
            pieces.add(piece)
        self.handle(m.Have(peer, piece))

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def unchoke(self, data: st.DataObject) -> None:
        peer = data.draw(st.sampled_from(sorted(self.live)))
        self.choking[peer] = False
        self.handle(m.Unchoked(peer))

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def choke(self, data: st.DataObject) -> None:
        peer = data.draw(st.sampled_from(sorted(self.live)))
        if not self.choking[peer]:
            keep = self.allowed[peer] if self.fast[peer] else set()
            self.forget(peer, lambda piece: piece not in keep)
        self.choking[peer] = True
        self.handle(m.Choked(peer))

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), piece=st.integers(0, 6))
    def allowed_fast(self, data: st.DataObject, piece: int) -> None:
        peer = data.draw(st.sampled_from(sorted(self.live)))
        piece %= self.num_pieces
        self.allowed[peer].add(piece)
        self.handle(m.AllowedFast(peer, piece))

    @precondition(lambda self: bool(self.out))
    @rule(data=st.data(), count=st.integers(1, 4), dt=st.floats(0.0, 0.5))
    def deliver(self, data: st.DataObject, count: int, dt: float) -> None:
        peer = data.draw(st.sampled_from(sorted({k[0] for k in self.out})))
        keys = [k for k in self.out if k[0] == peer][:count]
        self.tick_time(dt)
        for key in keys:
            del self.out[key]
        blocks = tuple((piece, begin, bytes(self.block_len(piece, begin))) for _p, (piece, begin) in keys)
        self.handle(m.BlocksReceived(peer, blocks))

    @precondition(lambda self: bool([k for k in self.cancelled if k[0] in self.live]))
    @rule(data=st.data())
    def deliver_late(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(k for k in self.cancelled if k[0] in self.live)))
        del self.cancelled[key]
        peer, (piece, begin) = key
        self.handle(m.BlocksReceived(peer, ((piece, begin, bytes(self.block_len(piece, begin))),)))

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), kind=st.sampled_from(["out of range", "misaligned", "wrong length"]))
    def deliver_garbage(self, data: st.DataObject, kind: str) -> None:
        peer = data.draw(st.sampled_from(sorted(self.live)))
        length = self.block_len(0, 0)
        block = {"out of range": (self.num_pieces, 0, length), "misaligned": (0, 1, length),
                 "wrong length": (0, 0, length + 1)}[kind]
        self.drop(peer)
        out = self.handle(m.BlocksReceived(peer, ((block[0], block[1], bytes(block[2])),)))
        assert any(isinstance(c, m.DropPeer) and c.peer == peer for c in out)

    @precondition(lambda self: bool(self.out))
    @rule(data=st.data())
    def reject(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.out)))
        del self.out[key]
        peer, (piece, begin) = key
        self.handle(m.RequestRejected(peer, piece, begin, self.block_len(piece, begin)))
        assert self.s.is_barred(peer, piece)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def gone(self, data: st.DataObject) -> None:
        peer = data.draw(st.sampled_from(sorted(self.live)))
        self.drop(peer)
        self.handle(m.PeerGone(peer))

    @precondition(lambda self: bool(self.pending_writes))
    @rule(count=st.integers(1, 5))
    def write(self, count: int) -> None:
        keys = list(self.pending_writes)[:count]
        entries = tuple((piece, begin, self.pending_writes.pop((piece, begin))) for piece, begin in keys)
        for piece, begin, _ in entries:
            self.written.setdefault(piece, set()).add((piece, begin))
        self.handle(m.BlocksWritten(entries))

    @precondition(lambda self: bool(self.hash_queue))
    @rule(ok=st.booleans(), which=st.integers(0, 10), digests=st.booleans(), liar=st.integers(0, 2))
    def hashed(self, ok: bool, which: int, digests: bool, liar: int) -> None:
        piece = self.hash_queue.pop(which % len(self.hash_queue))
        self.attempt_writes.pop(piece, None)
        self.written.pop(piece, None)
        if ok:
            self.verified.add(piece)
            self.failed.discard(piece)
        else:
            self.failed.add(piece)
        nblocks = -(-self.piece_size(piece) // BS)
        # the good digest of every block is all zeros; a failed attempt has one bad block
        block_digests = tuple(b"\1" * 20 if (not ok and i == liar % nblocks) else bytes(20)
                              for i in range(nblocks)) if digests else None
        self.handle(m.PieceHashed(piece, ok, block_digests))

    @rule(dt=st.floats(0.0, 4.0))
    def tick(self, dt: float) -> None:
        self.tick_time(dt)
        self.handle(m.Tick())

    # --- invariants --------------------------------------------------------------------------------

    @invariant()
    def accounting_and_invariants(self) -> None:
        if not hasattr(self, "s"):
            return
        s = self.s
        s.check_invariants()  # the scheduler's own recount agrees with itself...
        snap = s.snapshot()  # ...and, below, with the model built from its commands
        config = self.config
        # the scheduler's peers are the model's live peers
        assert {p.peer for p in snap.peers} == set(self.live)
        # accounting: what the commands imply
        in_flight = sum(self.block_len(*block) for block in {k[1] for k in self.out})
        assert snap.bytes_in_flight == in_flight
        assert snap.bytes_waiting_for_disk == sum(self.pending_writes.values())
        # invariant 2
        assert snap.bytes_in_flight + snap.bytes_waiting_for_disk <= config.max_unflushed_bytes
        by_peer: dict[int, int] = {}
        for peer, _block in self.out:
            by_peer[peer] = by_peer.get(peer, 0) + 1
        holders_of: dict[Key, set[int]] = {}
        for peer, block in self.out:
            holders_of.setdefault(block, set()).add(peer)
        for p in snap.peers:
            # invariant 1
            assert p.outstanding == by_peer.get(p.peer, 0)  # type: ignore[call-overload]
            assert p.outstanding <= p.limit
            assert set(s.outstanding(p.peer)) == {(b[0], b[1], self.block_len(*b))
                                                 for (q, b) in self.out if q == p.peer}
        # invariant 3 and 4: every REQUESTED block has exactly the model's holders, at most max_dups
        for piece, ap in s.picker.active.items():
            for b in range(ap.nblocks):
                key = (piece, b * BS)
                holders = s.holders(piece, b * BS)
                if ap.states[b] == REQUESTED:
                    assert holders, "REQUESTED without an owner"
                assert set(holders) == holders_of.get(key, set())
        for key, owners in holders_of.items():
            assert len(owners) <= max(config.endgame_max_dups, 1)
            assert s.piece_state(key[0]).value in ("partial", "fully requested")
        # peers we still want something from have been told we are interested
        for p in snap.peers:
            pieces = self.live[p.peer]  # type: ignore[index]
            wants = any(self.wanted[i] and i not in self.verified
                        and (pieces is None or i in pieces) for i in range(self.num_pieces))
            assert p.am_interested == wants
        self.liveness(snap)

    def liveness(self, snap: SchedulerSnapshot) -> None:
        """Rule 6, with FREE computed from the model: not held by anyone, not received this attempt."""
        if snap.bytes_in_flight + snap.bytes_waiting_for_disk + BS > self.config.max_unflushed_bytes:
            return
        held = {k[1] for k in self.out}
        for p in snap.peers:
            if p.peer_choking or p.outstanding >= p.limit:
                continue
            pieces = self.live[p.peer]  # type: ignore[index]
            for piece in range(self.num_pieces):
                if not self.wanted[piece] or piece in self.verified or self.s.is_barred(p.peer, piece):
                    continue
                if pieces is not None and piece not in pieces:
                    continue
                blocks = [(piece, b * BS) for b in range(-(-self.piece_size(piece) // BS))]
                received = self.attempt_writes.get(piece, set())
                free = [k for k in blocks if k not in held and k not in received]
                started = len(free) < len(blocks)
                if not free or (started and piece in self.failed):
                    continue  # a started piece that failed its hash is left to the one peer fetching it
                # an idle peer with a FREE block it has, or a spare slot and a started piece with one
                assert p.outstanding > 0 and not started, (
                    f"peer {p.peer} idle ({p.outstanding}/{p.limit}) while piece {piece} has FREE blocks")
            if snap.endgame and p.outstanding < self.config.endgame_peer_requests:
                # derived endgame: a nearly idle peer (fewer than endgame_peer_requests out) with a spare
                # slot means every block it could duplicate is at max holders
                for (holder, (piece, begin)) in self.out:
                    if holder == p.peer or (pieces is not None and piece not in pieces) or piece in self.failed:
                        continue
                    if self.s.is_barred(p.peer, piece) or (p.peer, (piece, begin)) in self.out:
                        continue
                    count = sum(1 for k in self.out if k[1] == (piece, begin))
                    assert count >= self.config.endgame_max_dups, (
                        f"endgame: peer {p.peer} has a spare slot and ({piece}, {begin}) has {count} holders")


SchedulerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSchedulerMachine = SchedulerMachine.TestCase
