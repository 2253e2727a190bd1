"""Random swarms (hypothesis) through the simulator and the real Scheduler.

Whenever the swarm keeps every piece available (honest peers that stay connected hold every piece
between them), the download finishes; in every swarm, available or not, the budget is never exceeded,
no block is written twice in one attempt of its piece, and the scheduler's accounting matches what its
commands imply (SimResult.violations is empty).
"""

from __future__ import annotations

import dataclasses
import math
import os

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import DEFAULT_CONFIG, KiB, MiB

from .swarm import KB, MB, PeerSpec, SimResult, Swarm, lower_bound, simulate, sole_slow_holder

BS = DEFAULT_CONFIG.block_size
MAX_TOTAL = 6 * MiB  # keeps one example well under a second
# A finished run may take this much longer than its bound: timeouts (10 s), retry bars (10 s) and
# snubbing (20 s) of misbehaving peers all fit many times over.
SLACK_FACTOR = 20.0
SLACK_SECONDS = 300.0
MAX_EVENTS = 400_000  # a guard: no example here needs a tenth of it

# Examples of the "finishes" property (the invariants property runs two thirds as many); CI runs 60.
# A longer hunt: JSTORRENT_SIM_EXAMPLES=2000 .venv/bin/python -m pytest tests/sim/test_swarm_properties.py
SIM_EXAMPLES = int(os.environ.get("JSTORRENT_SIM_EXAMPLES", "60"))
PROPERTY_SETTINGS = settings(max_examples=SIM_EXAMPLES, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def torrents(draw: st.DrawFn) -> tuple[int, int]:
    piece_length = draw(st.sampled_from([16 * KiB, 32 * KiB, 64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB]))
    most = max(1, MAX_TOTAL // piece_length)
    count = draw(st.integers(1, min(most, 48)))
    last = draw(st.integers(1, piece_length))
    return piece_length, piece_length * (count - 1) + last


@st.composite
def chokes(draw: st.DrawFn) -> tuple[tuple[float, float], ...]:
    starts = draw(st.lists(st.floats(0.0, 30.0), max_size=2, unique=True))
    out = []
    cursor = 0.0
    for start in sorted(starts):
        begin = max(start, cursor)
        end = begin + draw(st.floats(0.1, 8.0))
        out.append((begin, end))
        cursor = end + 0.01
    return tuple(out)


@st.composite
def peer_specs(draw: st.DrawFn, ip: str, num_pieces: int, *, honest: bool, permanent: bool,
               pieces: frozenset[int] | None, kinds: tuple[str, ...]) -> PeerSpec:
    rate = draw(st.floats(20 * KB, 2 * MB))
    latency = draw(st.floats(0.0, 0.2))
    fast = draw(st.booleans())
    reqq = draw(st.none() | st.integers(1, 64))
    silent = False
    corrupt = 0.0
    if not honest:
        kind = draw(st.sampled_from(kinds))
        silent = kind == "silent"
        corrupt = {"corrupt": 1.0, "flaky-liar": draw(st.floats(0.05, 0.5))}.get(kind, 0.0)
    sessions: tuple[tuple[float, float | None], ...] = ((0.0, None),)
    if not permanent:
        start = draw(st.floats(0.0, 10.0))
        leave = start + draw(st.floats(0.5, 20.0))
        rejoin = draw(st.none() | st.floats(0.1, 10.0))
        sessions = ((start, leave),) if rejoin is None else ((start, leave), (leave + rejoin, None))
    gains: tuple[tuple[float, int], ...] = ()
    if pieces is not None and not permanent and num_pieces > 1:
        later = draw(st.lists(st.integers(0, num_pieces - 1), max_size=4, unique=True))
        gains = tuple((draw(st.floats(0.0, 20.0)), p) for p in later if p not in pieces)
    return PeerSpec(ip, rate, latency=latency, sessions=sessions, pieces=pieces, gains=gains,
                    chokes=draw(chokes()), silent=silent, corrupt=corrupt, fast=fast, reqq=reqq)


ALL_KINDS = ("silent", "corrupt", "flaky-liar", "honest")


@st.composite
def swarms(draw: st.DrawFn, *, available: bool) -> Swarm:
    """Random swarms. `available`: honest permanent anchors hold every piece between them.

    Liars on multi-block pieces are included: a banned liar's blocks left in partial pieces once got
    an honest peer banned (test_swarm.py, test_banned_liars_blocks_do_not_get_an_honest_peer_banned).
    """
    piece_length, total = draw(torrents())
    n = -(-total // piece_length)
    budget_blocks = draw(st.integers(1, 512))
    kinds: tuple[str, ...] = ALL_KINDS
    peers: list[PeerSpec] = []
    address = iter(range(2, 250))
    if available:
        # Honest, permanent anchors that hold every piece between them (maybe one is a seed).
        anchors = draw(st.integers(1, 3))
        owner = [draw(st.integers(0, anchors - 1)) for _ in range(n)]
        seed_anchor = draw(st.none() | st.integers(0, anchors - 1))
        for a in range(anchors):
            held = None if a == seed_anchor else frozenset(p for p in range(n) if owner[p] == a)
            peers.append(draw(peer_specs(f"127.0.0.{next(address)}", n, honest=True, permanent=True,
                                         pieces=held, kinds=kinds)))
    others = draw(st.integers(0 if available else 1, 5))
    for _ in range(others):
        held = draw(st.none() | st.frozensets(st.integers(0, n - 1), max_size=n))
        peers.append(draw(peer_specs(f"127.0.0.{next(address)}", n, honest=False,
                                     permanent=draw(st.booleans()), pieces=held, kinds=kinds)))
    config = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=budget_blocks * BS)
    disk_rate = draw(st.none() | st.floats(200 * KB, 20 * MB))
    swarm = Swarm(
        piece_length, total, tuple(draw(st.permutations(peers))), config=config,
        seed=draw(st.integers(0, 2**32 - 1)), disk_rate=disk_rate,
        hash_delay=draw(st.floats(0.0, 0.2)), reader_batch=draw(st.sampled_from([0.0, 0.005])),
        max_events=MAX_EVENTS,
    )
    return with_time_limit(swarm)


def with_time_limit(swarm: Swarm) -> Swarm:
    bound = lower_bound(swarm)
    limit = SLACK_FACTOR * bound + SLACK_SECONDS if math.isfinite(bound) else 120.0
    return dataclasses.replace(swarm, time_limit=limit)


def describe(result: SimResult) -> str:
    snap = result.final_snapshot
    return (f"finished={result.finished} t={result.end_time:.1f} bound={result.lower_bound:.1f} "
            f"verified={result.pieces_verified}/{result.pieces_wanted} banned={sorted(result.banned_ips)} "
            f"violations={result.violations[:5]} peers={[(p.ip, p.idle_reason, p.outstanding) for p in snap.peers]}")


def check_finishes(swarm: Swarm) -> None:
    result = simulate(swarm)
    event(f"peers: {len(swarm.peers)}")
    event(f"pieces: {'1' if swarm.num_pieces == 1 else '2-9' if swarm.num_pieces < 10 else '10+'}")
    event("behaviours: " + ",".join(sorted({"silent" if p.silent else "liar" if p.corrupt else
                                             "leaves" if p.sessions != ((0.0, None),) else
                                             "chokes" if p.chokes else "plain" for p in swarm.peers})))
    assert result.violations == (), describe(result)
    assert result.finished, describe(result)
    assert result.pieces_verified == result.pieces_wanted
    assert result.peak_budget_used <= swarm.config.max_unflushed_bytes
    assert result.respects_bound, describe(result)
    anchors = {p.ip for p in swarm.peers if p.honest and p.sessions == ((0.0, None),)}
    assert not anchors & result.banned_ips, "an honest peer was banned"


@PROPERTY_SETTINGS
@given(swarm=swarms(available=True))
@example(swarm=with_time_limit(sole_slow_holder()))  # timeouts barred the only holder (test_swarm.py)
def test_available_swarm_always_finishes(swarm: Swarm) -> None:
    check_finishes(swarm)


@settings(max_examples=SIM_EXAMPLES * 2 // 3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(swarm=swarms(available=False))
def test_any_swarm_keeps_the_invariants(swarm: Swarm) -> None:
    result = simulate(dataclasses.replace(swarm, time_limit=min(swarm.time_limit, 120.0)))
    assert result.violations == (), describe(result)
    assert result.peak_budget_used <= swarm.config.max_unflushed_bytes
    if result.finished:
        assert result.pieces_verified == result.pieces_wanted
