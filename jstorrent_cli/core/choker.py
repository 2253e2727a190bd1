"""Who we upload to: tit-for-tat with an optimistic unchoke. Pure: the clock and the rng are injected.

Per DESIGN.md: `Config.upload_slots` slots (4); all but one go to the interested peers with the best
rate (the rate a peer gives us while we download, the rate it takes from us while we seed), re-ranked
every `Config.choke_interval` (10 s); one optimistic slot goes to a random interested peer outside
those, rotated every `Config.optimistic_interval` (30 s).

Between re-rankings the regular set only shrinks (a peer left or lost interest) and its free slots
are filled at once from the best-rated other interested peers, so a new leecher does not wait 10 s
for a free slot. The optimistic peer is replaced at once when it leaves or loses interest.

Use: `unchoked = choker.decide(candidates, now, seeding=...)` whenever something changed or on a
timer; the caller sends CHOKE / UNCHOKE for the difference with what it had.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Hashable, Sequence

from jstorrent_cli.config import Config


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """One connected peer as the choker sees it."""

    peer: Hashable
    interested: bool  # peer_interested: it wants something we have
    download_rate: float  # bytes/s it sends us
    upload_rate: float  # bytes/s we send it


class Choker:
    """The choking state of one torrent."""

    def __init__(self, config: Config, rng: random.Random) -> None:
        if config.upload_slots < 1:
            raise ValueError("at least one upload slot")
        self.config = config
        self.rng = rng
        self.regular: list[Hashable] = []
        self.optimistic: Hashable | None = None
        self._next_rank: float | None = None  # when the regular set is re-ranked
        self._optimistic_until = 0.0

    @property
    def unchoked(self) -> frozenset[Hashable]:
        chosen = set(self.regular)
        if self.optimistic is not None:
            chosen.add(self.optimistic)
        return frozenset(chosen)

    def decide(self, candidates: Sequence[Candidate], now: float, *, seeding: bool) -> frozenset[Hashable]:
        """The set of peers to unchoke now."""
        config = self.config
        regular_slots = max(config.upload_slots - 1, 0)
        interested = {c.peer: c for c in candidates if c.interested}

        def rate(c: Candidate) -> float:
            return c.upload_rate if seeding else c.download_rate

        # Ties broken at random so equal peers (all at 0 B/s at first) take turns.
        ranked = sorted(interested.values(), key=lambda c: (-rate(c), self.rng.random()))
        if self._next_rank is None or now >= self._next_rank:
            self.regular = [c.peer for c in ranked[:regular_slots]]
            self._next_rank = now + config.choke_interval
        else:
            self.regular = [p for p in self.regular if p in interested]
            for c in ranked:
                if len(self.regular) >= regular_slots:
                    break
                if c.peer not in self.regular and c.peer != self.optimistic:
                    self.regular.append(c.peer)
        if self.optimistic in self.regular:
            self.optimistic = None
        if self.optimistic is not None and (self.optimistic not in interested or now >= self._optimistic_until):
            self.optimistic = None
        if self.optimistic is None:
            others = sorted((p for p in interested if p not in self.regular), key=repr)
            if others:
                self.optimistic = self.rng.choice(others)
                self._optimistic_until = now + config.optimistic_interval
        return self.unchoked
