"""Regression tests for the five scheduler bugs jstorrent was born from (DESIGN.md, issue [3]).

Each test runs its scenario twice: against a deliberately broken variant that reintroduces the bug (a
subclass overriding one method, defined next to the test) to show the scenario catches it, and against
the real Scheduler, which must pass.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from jstorrent_cli.config import DEFAULT_CONFIG, Config
from jstorrent_cli.core import messages as m
from jstorrent_cli.core.scheduler import Scheduler, _Peer

BS = DEFAULT_CONFIG.block_size


class Swarm:
    """A tiny lock-step driver: peers answer requests at a fixed number of blocks per step."""

    def __init__(self, scheduler_cls: type[Scheduler], num_pieces: int, blocks_per_piece: int,
                 config: Config, seed: int = 0) -> None:
        self.piece_length = blocks_per_piece * BS
        self.s = scheduler_cls(num_pieces, self.piece_length, num_pieces * self.piece_length, config,
                               random.Random(seed))
        self.now = 0.0
        self.queues: dict[int, list[m.BlockRef]] = {}
        self.rates: dict[int, int] = {}
        self.to_write: list[m.BlockRef] = []
        self.to_hash: list[int] = []
        self.hasher_on = True
        self.write_rate = 10**9
        self.finished_at: float | None = None
        self.commands: list[m.Command] = []

    def route(self, commands: Sequence[m.Command]) -> list[m.Command]:
        for cmd in commands:
            self.commands.append(cmd)
            if isinstance(cmd, m.SendRequests):
                assert isinstance(cmd.peer, int)
                self.queues.setdefault(cmd.peer, []).extend(cmd.requests)
            elif isinstance(cmd, m.SendCancels):
                assert isinstance(cmd.peer, int)
                queue = self.queues.get(cmd.peer, [])
                for ref in cmd.cancels:
                    if ref in queue:
                        queue.remove(ref)
            elif isinstance(cmd, m.WriteBlocks):
                self.to_write.extend((p, b, len(d)) for p, b, d in cmd.blocks)
            elif isinstance(cmd, m.HashPiece):
                self.to_hash.append(cmd.piece)
            elif isinstance(cmd, m.Finished):
                self.finished_at = self.now
        return list(commands)

    def fact(self, fact: m.Fact) -> list[m.Command]:
        out = self.route(self.s.handle(fact, self.now))
        if type(self.s) is Scheduler:  # broken variants break the books on purpose
            self.s.check_invariants()
        return out

    def join(self, peer: int, rate: int, unchoke: bool = True, fast: bool = False) -> None:
        self.rates[peer] = rate
        self.fact(m.PeerJoined(peer, f"127.0.0.{peer + 2}", have_all=True, fast=fast))
        if unchoke:
            self.fact(m.Unchoked(peer))

    def step(self, dt: float = 0.1) -> None:
        self.now += dt
        for peer in list(self.queues):
            queue = self.queues[peer]
            batch = queue[: self.rates.get(peer, 0)]
            del queue[: len(batch)]
            if batch:
                self.fact(m.BlocksReceived(peer, tuple((p, b, bytes(n)) for p, b, n in batch)))
        if self.to_write:
            batch = self.to_write[: self.write_rate]
            del self.to_write[: len(batch)]
            self.fact(m.BlocksWritten(tuple(batch)))
        if self.hasher_on:
            while self.to_hash:
                self.fact(m.PieceHashed(self.to_hash.pop(0), True))
        self.fact(m.Tick())

    def run(self, seconds: float, dt: float = 0.1) -> bool:
        end = self.now + seconds
        while self.finished_at is None and self.now < end:
            self.step(dt)
        return self.finished_at is not None


def requested_blocks(commands: Sequence[m.Command], peer: int) -> set[tuple[int, int]]:
    return {(p, b) for c in commands if isinstance(c, m.SendRequests) and c.peer == peer for p, b, _ in c.requests}


# --- 1. the buffer deadlock ----------------------------------------------------------------------


class HostageBudget(Scheduler):
    """Bug: received data is freed only when its piece verifies (a piece buffer), not when written."""

    def _on_written(self, fact: m.BlocksWritten) -> None:
        waiting = self._waiting
        super()._on_written(fact)
        self._held = getattr(self, "_held", 0) + (waiting - self._waiting)
        self._waiting = waiting

    def _on_hashed(self, fact: m.PieceHashed) -> None:
        if fact.ok and fact.piece in self.picker.active:
            size = self.picker.piece_size(fact.piece)
            self._waiting -= size
            self._held -= size
        super()._on_hashed(fact)


def buffer_deadlock(cls: type[Scheduler]) -> Swarm:
    # capacity for 20 blocks, 50 missing pieces of 8 blocks, 12 peers each starting its own pieces
    config = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=20 * BS, peer_limit_initial=2,
                                 peer_limit_min=2, partial_pieces_bytes=BS)
    swarm = Swarm(cls, 50, 8, config, seed=3)
    for peer in range(12):
        swarm.join(peer, rate=1)
    swarm.run(600.0)
    return swarm


def test_buffer_deadlock_broken_variant_stalls() -> None:
    swarm = buffer_deadlock(HostageBudget)
    assert swarm.finished_at is None
    snap = swarm.s.snapshot()
    assert snap.bytes_in_flight == 0 and all(p.outstanding == 0 for p in snap.peers)


def test_buffer_deadlock_download_completes() -> None:
    swarm = buffer_deadlock(Scheduler)
    assert swarm.finished_at is not None
    snap = swarm.s.snapshot()
    assert snap.done_bytes == snap.total_bytes == 50 * 8 * BS
    assert snap.bytes_in_flight == snap.bytes_waiting_for_disk == 0


# --- 2. the stale "requested" mark -----------------------------------------------------------------


class StaleMark(Scheduler):
    """Bug: a departing peer's requests are forgotten on its side but stay "requested" on the blocks."""

    def _remove_peer(self, peer: _Peer) -> None:
        peer.outstanding.clear()
        super()._remove_peer(peer)

    def _on_tick(self) -> None:
        for peer in self._peers.values():  # timeouts never release either
            peer.rtt_mean = None
        saved = self.config
        self.config = dataclasses.replace(saved, request_timeout_initial=float("inf"),
                                          snub_timeout=float("inf"))
        try:
            super()._on_tick()
        finally:
            self.config = saved


STALE_CONFIG = dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=8, endgame_max_dups=1,
                                   request_timeout_initial=5.0, snub_timeout=30.0)


def stale_mark(cls: type[Scheduler], how: str) -> tuple[Swarm, set[tuple[int, int]], set[tuple[int, int]]]:
    swarm = Swarm(cls, 1, 8, STALE_CONFIG)
    swarm.join(0, rate=0)  # A takes every block and never answers
    held = requested_blocks(swarm.commands, 0)
    swarm.join(1, rate=8)  # B: nothing FREE left for it (and no duplicates allowed)
    assert not requested_blocks(swarm.commands, 1)
    mark = len(swarm.commands)
    if how == "gone":
        swarm.fact(m.PeerGone(0))
    else:
        swarm.now += STALE_CONFIG.request_timeout_initial
        swarm.fact(m.Tick())
    return swarm, held, requested_blocks(swarm.commands[mark:], 1)


def test_stale_mark_broken_variant_never_reasks() -> None:
    for how in ("gone", "timeout"):
        swarm, held, reasked = stale_mark(StaleMark, how)
        assert len(held) == 8 and reasked == set()
        assert not swarm.run(120.0)


def test_stale_mark_blocks_reasked_within_one_step() -> None:
    for how in ("gone", "timeout"):
        swarm, held, reasked = stale_mark(Scheduler, how)
        assert len(held) == 8
        assert reasked == held  # every block A held goes to B in the very same step
        assert swarm.run(10.0)


# --- 3. choke without release ----------------------------------------------------------------------


class ChokeKeepsRequests(Scheduler):
    """Bug: a choke only sets the flag; the 40 requests stay marked as outstanding at the choker."""

    def _on_choke(self, peer_id: m.PeerId) -> None:
        peer = self._peers.get(peer_id)
        if peer is not None:
            peer.peer_choking = True


CHOKE_CONFIG = dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=40, endgame_max_dups=1,
                                   request_timeout_initial=60.0, snub_timeout=60.0)


def choke_scenario(cls: type[Scheduler], fast: bool) -> tuple[Swarm, set[tuple[int, int]], set[tuple[int, int]]]:
    swarm = Swarm(cls, 5, 8, CHOKE_CONFIG)  # 40 blocks
    swarm.rates[0] = 0
    swarm.fact(m.PeerJoined(0, "127.0.0.2", have_all=True, fast=fast))
    if fast:
        swarm.fact(m.AllowedFast(0, 1))
    swarm.fact(m.Unchoked(0))
    held = requested_blocks(swarm.commands, 0)
    swarm.join(1, rate=8)
    assert not requested_blocks(swarm.commands, 1)
    mark = len(swarm.commands)
    swarm.fact(m.Choked(0))
    return swarm, held, requested_blocks(swarm.commands[mark:], 1)


def test_choke_broken_variant_keeps_blocks_hostage() -> None:
    swarm, held, moved = choke_scenario(ChokeKeepsRequests, fast=False)
    assert len(held) == 40 and moved == set()
    assert not swarm.run(30.0)


def test_choke_releases_blocks_to_other_peers_at_once() -> None:
    swarm, held, moved = choke_scenario(Scheduler, fast=False)
    assert len(held) == 40 and moved == held
    assert swarm.s.snapshot().peers[0].outstanding == 0
    assert swarm.run(10.0)


def test_choke_keeps_allowed_fast_requests() -> None:
    swarm, held, moved = choke_scenario(Scheduler, fast=True)
    allowed = {(p, b) for p, b in held if p == 1}
    assert len(held) == 40 and allowed
    assert moved == held - allowed
    assert set(swarm.s.outstanding(0)) == {(p, b, BS) for p, b in allowed}


# --- 4. endgame only on partial pieces -------------------------------------------------------------


class PartialOnlyEndgame(Scheduler):
    """Bug: endgame looks only at pieces that still have unrequested blocks."""

    def _endgame(self, peer: _Peer, spare: int) -> int:
        return spare  # no partial piece has a FREE block once everything is requested


ENDGAME_CONFIG = dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=4, request_timeout_initial=30.0,
                                     snub_timeout=60.0, request_timeout_min=30.0)


def endgame_scenario(cls: type[Scheduler]) -> Swarm:
    swarm = Swarm(cls, 6, 4, ENDGAME_CONFIG)
    swarm.join(0, rate=0)  # slow peer: takes one whole piece (fully requested) and sits on it
    assert len(requested_blocks(swarm.commands, 0)) == 4
    for peer in (1, 2, 3):
        swarm.join(peer, rate=4)
    swarm.run(60.0)
    return swarm


def test_endgame_broken_variant_waits_for_timeout() -> None:
    swarm = endgame_scenario(PartialOnlyEndgame)
    assert swarm.finished_at is not None and swarm.finished_at >= ENDGAME_CONFIG.request_timeout_initial


def test_endgame_covers_fully_requested_pieces() -> None:
    swarm = endgame_scenario(Scheduler)
    assert swarm.finished_at is not None and swarm.finished_at < 2.0
    snap = swarm.s.snapshot()
    assert snap.done_bytes == snap.total_bytes
    # the slow peer's blocks were cancelled once fast peers delivered them
    cancels = {(p, b) for c in swarm.commands if isinstance(c, m.SendCancels) and c.peer == 0
               for p, b, _ in c.cancels}
    assert cancels == requested_blocks(swarm.commands, 0)


# --- 5. pipeline drain while hashing --------------------------------------------------------------


class DrainWhileHashing(Scheduler):
    """Bug: no new requests while a piece waits for the hasher."""

    def _refill(self, peer: _Peer) -> None:
        if self.picker.awaiting_hash:
            return
        super()._refill(peer)


def hashing_scenario(cls: type[Scheduler]) -> tuple[Swarm, list[int]]:
    config = dataclasses.replace(DEFAULT_CONFIG, peer_limit_initial=8, request_timeout_initial=60.0,
                                 snub_timeout=60.0)
    swarm = Swarm(cls, 20, 4, config)
    swarm.hasher_on = False  # the hasher is busy: nothing comes back from it
    swarm.join(0, rate=4)
    outstanding = []
    for _ in range(40):
        swarm.step()
        outstanding.append(swarm.s.snapshot().peers[0].outstanding)
    return swarm, outstanding


def test_hashing_broken_variant_drains_pipeline() -> None:
    swarm, outstanding = hashing_scenario(DrainWhileHashing)
    assert outstanding[-1] == 0
    assert swarm.s.snapshot().pieces_awaiting_hash < 20


def test_requests_flow_while_pieces_wait_for_hash() -> None:
    swarm, outstanding = hashing_scenario(Scheduler)
    snap = swarm.s.snapshot()
    assert snap.pieces_awaiting_hash == 20  # every block arrived although nothing was hashed yet
    first_idle = outstanding.index(0)
    assert all(n > 0 for n in outstanding[:first_idle])
    assert first_idle >= 20 * 4 // 4 - 1  # never idle before the last block was asked for
    swarm.hasher_on = True
    assert swarm.run(1.0)
