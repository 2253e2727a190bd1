"""One unflushed-data budget shared by several schedulers (a batch download; sans-IO).

Each scheduler is a member. Between two facts a member holds a grant equal to the bytes it uses
(requested-not-received + received-not-written), so an idle item holds nothing beyond the bytes
still on their way to its disk, and those drain by themselves. While it handles a fact, a member
`top_up`s: its limit becomes what it uses plus the room the others leave, and after its requests
went out it `settle`s back to what it now uses. Schedulers run one at a time (one Trio thread and
`Scheduler.handle` never awaits), so the room one member sees is never promised to another.

Fairness: a member that wanted more than it got (hungry peers, no room) is marked starving. While
any other member starves, a member already at or above its fair share (total / members using the
budget, at least Config.budget_min_share and one block) gets no more, so the room freed as blocks reach the disk
flows to the starving member instead of back to the busiest one. A starving member takes that room
at its next fact, at the latest its next Tick (Config.tick_interval): nobody pushes it a wake-up.

The bound, for every moment: sum of grants <= total, and each scheduler keeps its bytes within its
grant (its own invariant 2), so the bytes of all items together never exceed the total.
"""

from __future__ import annotations

import itertools


class BudgetPool:
    def __init__(self, total: int, *, min_share: int) -> None:
        """`min_share`: the smallest fair share, at least one block: a share smaller than a block would
        let a starving member and the busy ones all wait for each other for ever."""
        if total <= 0 or min_share <= 0:
            raise ValueError("a budget pool needs a positive total and a positive smallest share")
        self.total = total
        self.min_share = min_share
        self._grants: dict[int, int] = {}
        self._starving: set[int] = set()
        self._granted = 0
        self._ids = itertools.count(1)

    # -- membership --

    def join(self) -> int:
        member = next(self._ids)
        self._grants[member] = 0
        return member

    def leave(self, member: int) -> None:
        """The member's bytes are gone (its download ended): its whole grant returns to the pool."""
        self._granted -= self._grants.pop(member, 0)
        self._starving.discard(member)

    # -- what the scheduler calls --

    def room(self, member: int) -> int:
        """The most this member could hold now if it alone asked (the pool's total less the others')."""
        return self.total - (self._granted - self._grants.get(member, 0))

    def top_up(self, member: int, used: int) -> int:
        """The member's limit while it handles one fact: at least `used`, at most what fairness allows."""
        own = self._grants[member]
        if used > own:
            raise ValueError(f"member {member} uses {used} bytes with a grant of {own}")
        limit = self.room(member)
        if self._starving - {member}:
            limit = min(limit, max(self.share(), used))
        limit = max(limit, used)
        self._granted += limit - own
        self._grants[member] = limit
        return limit

    def settle(self, member: int, used: int, *, starving: bool) -> None:
        """After the fact: the grant shrinks to what the member uses; `starving` if it wanted more."""
        own = self._grants[member]
        if used > own:
            raise ValueError(f"member {member} uses {used} bytes with a grant of {own}")
        self._granted -= own - used
        self._grants[member] = used
        if starving:
            self._starving.add(member)
        else:
            self._starving.discard(member)

    # -- reading --

    def share(self) -> int:
        """The fair share: the total split among the members holding budget or waiting for it."""
        using = sum(1 for m, g in self._grants.items() if g > 0 or m in self._starving)
        return max(self.total // max(using, 1), self.min_share)

    @property
    def granted(self) -> int:
        """Bytes of the budget held by all members together."""
        return self._granted

    @property
    def members(self) -> int:
        return len(self._grants)

    @property
    def starving(self) -> int:
        return len(self._starving)

    def grant(self, member: int) -> int:
        return self._grants.get(member, 0)

    def check(self) -> None:
        """Recount (tests): the grants add up and never exceed the total."""
        assert self._granted == sum(self._grants.values()), "granted bytes disagree with the grants"
        assert 0 <= self._granted <= self.total, f"pool over its total: {self._granted} > {self.total}"
        assert all(g >= 0 for g in self._grants.values()), "a negative grant"
        assert self._starving <= set(self._grants), "a starving member that left"


__all__ = ["BudgetPool"]
