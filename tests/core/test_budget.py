"""One unflushed-data budget shared by several schedulers (core/budget.py and the scheduler's hook)."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core import messages as m
from jstorrent_cli.core.budget import BudgetPool
from jstorrent_cli.core.scheduler import Scheduler

BS = DEFAULT_CONFIG.block_size
BLOCKS_PER_PIECE = 4


class Item:
    """One scheduler of a batch, with the writer and hasher it would have (driven by hand)."""

    def __init__(self, pool: BudgetPool, index: int, pieces: int, budget: int) -> None:
        config = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=budget)
        length = BLOCKS_PER_PIECE * BS
        self.scheduler = Scheduler(pieces, length, pieces * length, config, random.Random(index), budget_pool=pool)
        self.index = index
        self.to_write: list[m.BlockRef] = []
        self.to_hash: list[int] = []
        self.peers: set[int] = set()
        self.next_peer = index * 1000

    def used(self) -> int:
        snap = self.scheduler.snapshot()
        return snap.bytes_in_flight + snap.bytes_waiting_for_disk

    def handle(self, fact: m.Fact, now: float) -> None:
        for cmd in self.scheduler.handle(fact, now):
            if isinstance(cmd, m.WriteBlocks):
                self.to_write += [(p, b, len(d)) for p, b, d in cmd.blocks]
            elif isinstance(cmd, m.HashPiece):
                self.to_hash.append(cmd.piece)

    def join(self, now: float) -> None:
        peer = self.next_peer
        self.next_peer += 1
        self.peers.add(peer)
        self.handle(m.PeerJoined(peer, f"127.0.{self.index}.{peer % 250 + 2}", have_all=True), now)
        self.handle(m.Unchoked(peer), now)

    def deliver(self, count: int, now: float) -> None:
        for peer in sorted(self.peers):
            out = list(self.scheduler.outstanding(peer))[:count]
            if out:
                self.handle(m.BlocksReceived(peer, tuple((p, b, bytes(n)) for p, b, n in out)), now)

    def write(self, count: int, now: float) -> None:
        done, self.to_write = self.to_write[:count], self.to_write[count:]
        if done:
            self.handle(m.BlocksWritten(tuple(done)), now)

    def hash(self, now: float) -> None:
        pieces, self.to_hash = self.to_hash, []
        for piece in pieces:
            self.handle(m.PieceHashed(piece, True), now)


def check(pool: BudgetPool, items: list[Item]) -> None:
    pool.check()
    for item in items:
        item.scheduler.check_invariants()
    assert sum(item.used() for item in items) <= pool.total
    assert pool.granted == sum(item.used() for item in items)  # between facts, nobody holds idle budget


ACTIONS = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(["join", "deliver", "write", "hash", "tick", "gone"]),
              st.integers(1, 12)),
    min_size=1, max_size=120,
)


@settings(max_examples=100, deadline=None)
@given(budget_blocks=st.integers(1, 24), actions=ACTIONS)
def test_items_together_never_exceed_the_shared_budget(budget_blocks: int, actions: list[tuple[int, str, int]]) -> None:
    total = budget_blocks * BS
    pool = BudgetPool(total, min_share=BS)
    items = [Item(pool, i, pieces=6, budget=total) for i in range(4)]
    now = 0.0
    for which, action, count in actions:
        now += 0.1
        item = items[which]
        if action == "join" or not item.peers:
            item.join(now)
        elif action == "deliver":
            item.deliver(count, now)
        elif action == "write":
            item.write(count, now)
        elif action == "hash":
            item.hash(now)
        elif action == "tick":
            item.handle(m.Tick(), now)
        else:
            peer = min(item.peers)
            item.peers.discard(peer)
            item.handle(m.PeerGone(peer), now)
        check(pool, items)
    # Drain everything: all the budget comes back, and every item could finish.
    for _ in range(200):
        now += 0.1
        for item in items:
            if not item.peers:
                item.join(now)
            item.deliver(BLOCKS_PER_PIECE * 6, now)
            item.write(BLOCKS_PER_PIECE * 6, now)
            item.hash(now)
            item.handle(m.Tick(), now)
        check(pool, items)
        if all(item.scheduler.snapshot().finished for item in items):
            break
    assert all(item.scheduler.snapshot().finished for item in items)
    assert pool.granted == 0


def test_an_item_waiting_for_room_gets_its_share_as_the_busy_one_drains() -> None:
    total = 16 * BS
    pool = BudgetPool(total, min_share=BS)
    busy, late = Item(pool, 0, pieces=400, budget=total), Item(pool, 1, pieces=400, budget=total)
    for _ in range(4):
        busy.join(0.0)
        busy.handle(m.Tick(), 0.0)
    assert busy.used() == total  # alone, it may take the whole budget
    late.join(0.1)
    assert late.used() == 0 and pool.starving == 1  # no room: it waits, marked starving
    check(pool, [busy, late])
    now = 0.1
    for _ in range(30):  # the busy item's blocks arrive and reach the disk; ticks offer the room again
        now += 0.5
        busy.deliver(16, now)
        busy.write(64, now)
        busy.hash(now)
        late.handle(m.Tick(), now)
        late.deliver(16, now)
        late.write(64, now)
        late.hash(now)
        busy.handle(m.Tick(), now)
        check(pool, [busy, late])
    share = total // 2
    assert late.used() >= share - BS, (busy.used(), late.used())  # the room went to the starving item
    assert busy.used() <= share + BS


def test_an_idle_item_holds_no_budget_and_leaving_returns_all() -> None:
    total = 8 * BS
    pool = BudgetPool(total, min_share=BS)
    item = Item(pool, 0, pieces=10, budget=total)
    item.join(0.0)
    assert pool.granted == item.used() > 0
    peer = min(item.peers)
    item.handle(m.Choked(peer), 1.0)  # requests released: nothing in flight, nothing held
    assert item.used() == 0 and pool.granted == 0
    item.handle(m.Unchoked(peer), 2.0)
    item.deliver(3, 2.0)
    assert pool.granted == item.used() > 0
    item.scheduler.leave_budget_pool()
    assert pool.granted == 0 and pool.members == 0
    item.deliver(5, 3.0)  # late blocks of a finished item still land; nothing new is asked
    assert not any(isinstance(c, m.SendRequests) for c in item.scheduler.handle(m.Tick(), 4.0))


def test_pool_refuses_inconsistent_use() -> None:
    pool = BudgetPool(10 * BS, min_share=BS)
    member = pool.join()
    with pytest.raises(ValueError, match="grant"):
        pool.top_up(member, BS)
    with pytest.raises(ValueError, match="positive"):
        BudgetPool(0, min_share=BS)
