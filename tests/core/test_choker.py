"""core/choker.py: slots, ranking by the right rate, the optimistic rotation, prompt slot refills."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core.choker import Candidate, Choker

CONFIG = DEFAULT_CONFIG
SLOTS = CONFIG.upload_slots


def peers(rates: dict[str, float], *, uninterested: frozenset[str] = frozenset()) -> list[Candidate]:
    return [Candidate(p, p not in uninterested, r, 0.0) for p, r in rates.items()]


def test_best_three_by_download_rate_plus_one_optimistic() -> None:
    choker = Choker(CONFIG, random.Random(1))
    rates = {f"p{i}": float(i) for i in range(10)}
    unchoked = choker.decide(peers(rates), 0.0, seeding=False)
    assert len(unchoked) == SLOTS
    assert set(choker.regular) == {"p9", "p8", "p7"}
    assert choker.optimistic is not None and choker.optimistic not in choker.regular


def test_while_seeding_the_rate_we_upload_counts() -> None:
    choker = Choker(CONFIG, random.Random(1))
    candidates = [Candidate(f"p{i}", True, download_rate=float(100 - i), upload_rate=float(i)) for i in range(10)]
    choker.decide(candidates, 0.0, seeding=True)
    assert set(choker.regular) == {"p9", "p8", "p7"}
    choker2 = Choker(CONFIG, random.Random(1))
    choker2.decide(candidates, 0.0, seeding=False)
    assert set(choker2.regular) == {"p0", "p1", "p2"}


def test_uninterested_peers_are_never_unchoked() -> None:
    choker = Choker(CONFIG, random.Random(2))
    rates = {"a": 100.0, "b": 50.0, "c": 1.0}
    unchoked = choker.decide(peers(rates, uninterested=frozenset({"a"})), 0.0, seeding=False)
    assert unchoked == {"b", "c"}


def test_ranking_holds_between_re_evaluations_then_follows_the_rates() -> None:
    choker = Choker(CONFIG, random.Random(3))
    rates = {f"p{i}": float(i) for i in range(8)}
    choker.decide(peers(rates), 0.0, seeding=False)
    first = set(choker.regular)
    rates = {f"p{i}": float(100 - i) for i in range(8)}  # the order flips
    choker.decide(peers(rates), CONFIG.choke_interval / 2, seeding=False)
    assert set(choker.regular) == first  # not yet re-ranked
    choker.decide(peers(rates), CONFIG.choke_interval, seeding=False)
    assert set(choker.regular) == {"p0", "p1", "p2"}


def test_a_freed_slot_is_filled_at_once() -> None:
    choker = Choker(CONFIG, random.Random(4))
    choker.decide(peers({"a": 3.0, "b": 2.0}), 0.0, seeding=False)
    assert choker.unchoked == {"a", "b"}
    # A new leecher arrives a second later: it gets a free slot without waiting for the re-ranking.
    unchoked = choker.decide(peers({"a": 3.0, "b": 2.0, "c": 0.0}), 1.0, seeding=False)
    assert "c" in unchoked
    # One leaves: its slot is free for the next one at once.
    unchoked = choker.decide(peers({"b": 2.0, "c": 0.0, "d": 0.0}), 2.0, seeding=False)
    assert unchoked == {"b", "c", "d"}


def test_optimistic_rotates_every_interval_and_everyone_gets_a_turn() -> None:
    choker = Choker(CONFIG, random.Random(5))
    rates = {"fast1": 9.0, "fast2": 8.0, "fast3": 7.0, **{f"slow{i}": 0.0 for i in range(4)}}
    seen: set[object] = set()
    now = 0.0
    previous = None
    changes = 0
    for _ in range(60):
        choker.decide(peers(rates), now, seeding=False)
        assert set(choker.regular) == {"fast1", "fast2", "fast3"}
        seen.add(choker.optimistic)
        if previous is not None and choker.optimistic != previous:
            changes += 1
        previous = choker.optimistic
        now += CONFIG.choke_interval
    assert seen == {f"slow{i}" for i in range(4)}
    # Rotation happens on the optimistic interval, not on every re-evaluation.
    assert changes <= 60 * CONFIG.choke_interval / CONFIG.optimistic_interval + 1


def test_optimistic_that_loses_interest_is_replaced_at_once() -> None:
    choker = Choker(CONFIG, random.Random(6))
    rates = {"a": 3.0, "b": 2.0, "c": 1.0, "x": 0.0, "y": 0.0}
    choker.decide(peers(rates), 0.0, seeding=False)
    gone = choker.optimistic
    assert gone in {"x", "y"}
    unchoked = choker.decide(peers(rates, uninterested=frozenset({str(gone)})), 1.0, seeding=False)
    assert gone not in unchoked and choker.optimistic == ({"x", "y"} - {gone}).pop()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 15), st.booleans(), st.floats(0, 1e6)), max_size=16),
        min_size=1, max_size=20,
    ),
    st.integers(0, 2**32),
)
def test_never_more_than_the_slots_and_only_interested_connected_peers(
    rounds: list[list[tuple[int, bool, float]]], seed: int
) -> None:
    choker = Choker(CONFIG, random.Random(seed))
    now = 0.0
    for round_peers in rounds:
        candidates = {p: Candidate(p, interested, rate, rate) for p, interested, rate in round_peers}
        unchoked = choker.decide(list(candidates.values()), now, seeding=bool(seed & 1))
        interested = {p for p, c in candidates.items() if c.interested}
        assert unchoked <= interested
        assert len(unchoked) == min(SLOTS, len(interested))  # no slot left idle while someone waits
        now += 3.0
