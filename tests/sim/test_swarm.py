"""The real Scheduler in simulated swarms (tests/sim/swarm.py): every scenario finishes with correct
accounting, near its lower bound; peer misbehaviour is survived; and the simulator's own checks catch
deliberately broken schedulers (so a clean run means something).

All runs are in virtual time with fixed seeds: the ratios asserted here are properties of the algorithm,
not wall-clock timings, and they are the same on any machine.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random

import pytest

from jstorrent_cli.config import DEFAULT_CONFIG, Config, KiB, MiB
from jstorrent_cli.core.messages import Choked, Command, Fact, PeerJoined, SendRequests, Tick, Unchoked, WriteBlocks
from jstorrent_cli.core.scheduler import Scheduler

from .swarm import (
    FIRST_PORT,
    KB,
    MB,
    SCENARIOS,
    PeerSpec,
    SimResult,
    Swarm,
    equal_peers,
    fast_and_slow,
    lower_bound,
    many_peers,
    simulate,
    sole_slow_holder,
)

SEED = 1
# Targets of issue [3]: equal peers within 10 % of the bound, 1 fast + 9 slow within 25 %.
EQUAL_PEERS_TARGET = 1.10
FAST_AND_SLOW_TARGET = 1.25
# Every other scenario: a regression ceiling (all measured near 1.01; see docs/design/sim-results.md).
SCENARIO_CEILING = 1.25
# One slow peer holding everything, delivering steadily: nothing but its own pace limits the download.
SOLE_HOLDER_TARGET = 1.01
# Longest pause between two arriving blocks in a steady swarm of equal seeds (measured 0.06 s; the
# handshake before the first block is 4 one-way latencies, at most 0.32 s here).
STEADY_MAX_GAP = 0.5


@functools.cache
def scenario(name: str, seed: int = SEED) -> SimResult:
    return simulate(SCENARIOS[name](seed))


def assert_clean(result: SimResult) -> None:
    assert result.violations == (), result.violations
    assert result.finished, f"not finished at t={result.end_time}: {result.final_snapshot}"
    assert result.pieces_verified == result.pieces_wanted
    assert result.peak_budget_used <= result.budget
    assert result.respects_bound, "the bound is not a bound"


# --- scenarios ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_finishes_with_correct_accounting(name: str) -> None:
    result = scenario(name)
    assert_clean(result)
    swarm = SCENARIOS[name](SEED)
    assert result.bytes_written >= swarm.total_length
    # Every byte written beyond the torrent size belongs to a piece that failed its hash.
    assert (result.bytes_written - swarm.total_length) <= result.hash_failures * swarm.piece_length
    assert result.ratio <= SCENARIO_CEILING, f"{name}: {result.finish_time:.2f} s = {result.ratio:.3f} x bound"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_equal_peers_within_target(seed: int) -> None:
    result = scenario("8 equal peers", seed)
    assert_clean(result)
    assert result.ratio <= EQUAL_PEERS_TARGET, f"{result.ratio:.3f} x the bound"
    # No stall on the way: blocks keep arriving (a drained pipeline would show as a long gap).
    assert result.max_block_gap <= STEADY_MAX_GAP, f"{result.max_block_gap:.2f} s without a block"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_one_fast_nine_slow_within_target(seed: int) -> None:
    result = scenario("1 fast + 9 slow", seed)
    assert_clean(result)
    assert result.ratio <= FAST_AND_SLOW_TARGET, f"{result.ratio:.3f} x the bound"
    # The slow peers did serve (the bound counts them), yet the tail did not wait for them.
    slow_requests = sum(n for ip, n in result.requests_by_ip.items() if ip != "127.0.0.2")
    assert slow_requests > 0


def test_the_budget_binds_and_holds() -> None:
    """A 1 MiB budget with a slow disk: the budget is used in full and never exceeded."""
    result = scenario("slow disk, 1 MiB budget")
    assert_clean(result)
    assert result.budget == 1 * MiB
    assert result.peak_budget_used > result.budget - 4 * DEFAULT_CONFIG.block_size


def test_corrupt_peer_is_banned_and_download_completes() -> None:
    result = scenario("corrupt peer")
    assert_clean(result)
    assert result.banned_ips == frozenset({"127.0.0.7"})
    assert result.hash_failures >= 1
    assert any(isinstance(peer, tuple) and peer[0] == "127.0.0.7" for peer, _reason in result.drops)


def test_simulation_is_deterministic() -> None:
    def swarm(seed: int) -> Swarm:
        return dataclasses.replace(many_peers(seed), total_length=8 * MiB)

    first = simulate(swarm(7))
    again = simulate(swarm(7))
    assert (first.finish_time, first.events, first.facts, first.requests_by_ip) == (
        again.finish_time, again.events, again.facts, again.requests_by_ip)
    other = simulate(swarm(8))
    assert other.requests_by_ip != first.requests_by_ip


def test_reader_batching_keeps_the_target() -> None:
    """Several blocks per BlocksReceived fact (as a socket reader batches them) changes nothing essential."""
    result = simulate(dataclasses.replace(equal_peers(SEED), reader_batch=0.005))
    assert_clean(result)
    assert result.facts < scenario("8 equal peers").facts
    assert result.ratio <= EQUAL_PEERS_TARGET


# --- peer behaviours ------------------------------------------------------------------------------------


def ips(count: int) -> list[str]:
    return [f"127.0.0.{i}" for i in range(2, 2 + count)]


def test_silent_peer_delays_the_tail_by_at_most_its_timeout() -> None:
    """Liveness rule 7: a peer that takes requests and never answers costs at most a request timeout."""
    honest = [PeerSpec(ip, 500 * KB, latency=0.03) for ip in ips(4)]
    silent = PeerSpec("127.0.0.9", 1 * MB, latency=0.01, silent=True)
    swarm = Swarm(256 * KiB, 16 * MiB, (silent, *honest), seed=SEED)
    result = simulate(swarm)
    assert_clean(result)
    assert result.requests_by_ip["127.0.0.9"] > 0, "the silent peer was never asked: the test proves nothing"
    assert result.finish_time is not None
    assert result.finish_time <= result.lower_bound + DEFAULT_CONFIG.request_timeout_initial


def test_silent_peers_past_their_timeout_are_routed_around() -> None:
    """Long enough for timeouts and snubbing to fire: a silent peer's blocks go to others, repeatedly."""
    honest = [PeerSpec(ip, 100 * KB, latency=0.03) for ip in ips(3)]
    silent = [PeerSpec(f"127.0.0.{i}", 1 * MB, latency=0.01, silent=True) for i in (20, 21)]
    swarm = Swarm(64 * KiB, 8 * MiB, (*silent, *honest), seed=SEED)
    result = simulate(swarm)
    assert_clean(result)
    assert result.finish_time is not None and result.finish_time > DEFAULT_CONFIG.snub_timeout
    assert result.finish_time <= result.lower_bound + DEFAULT_CONFIG.request_timeout_initial
    # Their requests timed out and were re-made more than once: the blocks they held went elsewhere.
    assert result.requests_by_ip["127.0.0.20"] > DEFAULT_CONFIG.peer_limit_initial


def test_silent_fetcher_of_a_failed_piece_delays_it_by_at_most_its_timeout() -> None:
    """Found by the property test (seeded run of 3,000 examples): a piece that failed its hash is fetched
    from one peer at a time, and a silent seed (reqq 1) took it. Its request timed out at 13 s, but it
    stayed the piece's owner, so the honest holder was kept off the piece until the silent one was
    snubbed: no block at all from 4.0 s to 23.7 s (rule 7 allows one request timeout)."""
    peers = (
        PeerSpec("127.0.0.7", 1_621_438.0, latency=0.173, pieces=frozenset(), fast=True),
        PeerSpec("127.0.0.4", 1_945_046.0, latency=0.125, sessions=((2.6146, 19.5332),), silent=True, fast=True),
        PeerSpec("127.0.0.5", 804_661.0, latency=0.193, silent=True, reqq=1),
        PeerSpec("127.0.0.3", 1_643_196.0, latency=0.0641, pieces=frozenset(), chokes=((23.1192, 23.3692),),
                 fast=True, reqq=16),
        PeerSpec("127.0.0.2", 1_219_569.0, latency=0.0943, pieces=frozenset({0, 1, 2, 3})),
        PeerSpec("127.0.0.6", 1_708_178.0, latency=0.1609, pieces=frozenset({0, 1, 2, 3}),
                 chokes=((2.6812, 3.7041), (19.7924, 24.4196)), corrupt=0.1359),
    )
    config = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=268 * DEFAULT_CONFIG.block_size)
    swarm = Swarm(1 * MiB, 3_152_252, peers, config=config, seed=1194, disk_rate=4_708_517.0,
                  hash_delay=0.1166, reader_batch=0.005)
    result = simulate(swarm)
    assert_clean(result)
    assert result.hash_failures > 0 and "127.0.0.6" in result.banned_ips  # the retries were exercised
    assert result.max_block_gap <= DEFAULT_CONFIG.request_timeout_initial


def test_silent_peer_is_snubbed_after_snub_timeout() -> None:
    """DESIGN.md: a peer with requests out and no block for 20 s is snubbed (limit 1).

    Found by the simulator: its timeouts used to restart the snub clock (every 10 s all its requests
    expired, the refill sent new ones and reset it), so a silent peer was never snubbed. Fixed in 96769e5.
    """
    config = DEFAULT_CONFIG
    scheduler = Scheduler(64, config.block_size, 64 * config.block_size, config, random.Random(0))
    scheduler.handle(PeerJoined("mute", "127.0.0.2", have_all=True, fast=True), 0.0)
    first = scheduler.handle(Unchoked("mute"), 0.0)
    assert any(isinstance(c, SendRequests) for c in first)
    t = 0.0
    while t < 1.5 * config.snub_timeout:
        t += 1.0
        scheduler.handle(Tick(), t)
    (peer,) = scheduler.snapshot().peers
    assert peer.outstanding > 0, "the mute peer keeps being asked"
    assert peer.snubbed and peer.limit == 1


def test_very_slow_peer_does_not_hold_the_tail() -> None:
    peers = (PeerSpec("127.0.0.2", 2 * MB, latency=0.03), PeerSpec("127.0.0.3", 5 * KB, latency=0.05))
    result = simulate(Swarm(256 * KiB, 16 * MiB, peers, seed=SEED))
    assert_clean(result)
    assert result.requests_by_ip["127.0.0.3"] > 0
    assert result.ratio <= FAST_AND_SLOW_TARGET


def test_slow_sole_holder_is_not_timed_out_while_it_delivers() -> None:
    # Found by the property test: the only holder of the only piece served 20 KB/s; requests waiting
    # behind its own blocks passed the 2 s deadline, each timeout threw its late block away and barred
    # the holder from the piece for 10 s: not verified after 455 s, 409,574 bytes wasted. Its blocks
    # come steadily, so nothing may time out, and it must go at its own pace (4 MiB / 20 KB/s = 210 s).
    result = scenario("1 slow sole holder")
    assert_clean(result)
    assert result.cancels_sent == 0 and result.wasted_bytes == 0
    assert result.ratio <= SOLE_HOLDER_TARGET, f"{result.finish_time:.1f} s = {result.ratio:.3f} x bound"


@pytest.mark.parametrize("fast", [False, True])
def test_choke_patterns_and_rejoins(fast: bool) -> None:
    """Peers that choke and unchoke us, leave holding requests and come back from another port."""
    rng = random.Random(5)
    peers = []
    for i, ip in enumerate(ips(6)):
        chokes = tuple((t, t + rng.uniform(0.5, 3.0)) for t in (2.0 + i, 9.0 + 2 * i))
        sessions = ((0.0, 6.0 + i), (7.0 + i, None)) if i % 2 else ((0.0, None),)
        peers.append(PeerSpec(ip, rng.uniform(100 * KB, 400 * KB), latency=rng.uniform(0.01, 0.1),
                              chokes=chokes, sessions=sessions, fast=fast, reqq=rng.choice([None, 16, 64])))
    swarm = Swarm(128 * KiB, 12 * MiB, tuple(peers), seed=SEED)
    result = simulate(swarm)
    assert_clean(result)
    assert result.ratio <= SCENARIO_CEILING


def test_partial_peers_and_late_haves() -> None:
    """No seed at all: two halves, and a peer whose pieces only appear later by HAVE."""
    n = 64
    first = PeerSpec("127.0.0.2", 300 * KB, pieces=frozenset(range(0, n // 2)))
    second = PeerSpec("127.0.0.3", 300 * KB, pieces=frozenset(range(n // 2, n - 8)))
    late = PeerSpec("127.0.0.4", 300 * KB, pieces=frozenset(), fast=True,
                    gains=tuple((1.0 + 0.2 * k, p) for k, p in enumerate(range(n - 8, n))))
    swarm = Swarm(64 * KiB, n * 64 * KiB - 1000, (first, second, late), seed=SEED)
    result = simulate(swarm)
    assert_clean(result)
    for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        assert result.requests_by_ip[ip] > 0


def test_liar_reconnecting_from_a_new_port_stays_banned() -> None:
    """Bans are by IP address: the liar's second connection (same IP, next port) is refused at once."""
    honest = [PeerSpec(ip, 300 * KB, latency=0.02) for ip in ips(3)]
    liar = PeerSpec("127.0.0.9", 1 * MB, latency=0.01, corrupt=1.0, sessions=((0.0, 3.0), (3.5, None)))
    swarm = Swarm(64 * KiB, 8 * MiB, (liar, *honest), seed=SEED, connect_banned=True)
    result = simulate(swarm)
    assert_clean(result)
    assert "127.0.0.9" in result.banned_ips
    second = ("127.0.0.9", FIRST_PORT + 1)
    assert any(peer == second for peer, _reason in result.drops)


def test_tiny_and_huge_pieces() -> None:
    """16 KiB pieces (one block each) and 4 MiB pieces (256 blocks), odd last piece."""
    for piece_length in (16 * KiB, 4 * MiB):
        peers = tuple(PeerSpec(ip, 1 * MB, latency=0.02) for ip in ips(3))
        result = simulate(Swarm(piece_length, 24 * MiB + 5 * KiB + 3, peers, seed=SEED))
        assert_clean(result)
        assert result.ratio <= SCENARIO_CEILING


# --- the lower bound ---------------------------------------------------------------------------------------


def test_lower_bound_one_peer() -> None:
    swarm = Swarm(256 * KiB, 32 * MiB, (PeerSpec("127.0.0.2", 2 * MB, latency=0.04),))
    expected = 32 * MiB / (2 * MB) + 4 * 0.04 + 256 * KiB / swarm.hash_rate
    assert lower_bound(swarm) == pytest.approx(expected)


def test_lower_bound_counts_only_connected_unchoking_honest_peers() -> None:
    peer = PeerSpec("127.0.0.2", 1 * MB, latency=0.0, sessions=((0.0, 5.0), (10.0, None)), chokes=((12.0, 13.0),))
    base = Swarm(8 * MB, 8 * MB, (peer,), hash_rate=math.inf)
    # 5 MB by t=5; nothing until 10; 2 MB by 12; choked until 13; the last 1 MB by 14.
    assert lower_bound(base) == pytest.approx(14.0)
    liar = PeerSpec("127.0.0.3", 100 * MB, corrupt=1.0)
    mute = PeerSpec("127.0.0.4", 100 * MB, silent=True)
    assert lower_bound(dataclasses.replace(base, peers=(peer, liar, mute))) == pytest.approx(14.0)
    assert lower_bound(dataclasses.replace(base, peers=(liar, mute))) == math.inf
    always_choking = PeerSpec("127.0.0.6", 1 * MB, sessions=((1.0, 4.0),), chokes=((0.0, 5.0),))
    assert lower_bound(dataclasses.replace(base, peers=(always_choking,))) == math.inf
    # A peer that lies only sometimes may deliver good blocks: it counts (a bound must not overestimate).
    flaky = PeerSpec("127.0.0.5", 1 * MB, latency=0.0, corrupt=0.5)
    assert lower_bound(dataclasses.replace(base, peers=(peer, flaky))) < 14.0


def test_lower_bound_counts_only_the_peers_that_hold_each_piece() -> None:
    # One 4 MiB piece held by one peer at 20 KB/s: two faster peers that have nothing do not help
    # (the bound said 7.8 s here, counting their upload too).
    swarm = sole_slow_holder()
    assert lower_bound(swarm) == pytest.approx(swarm.total_length / (20 * KB), rel=1e-3)
    # Two pieces of 1 MB, each held by one 1 MB/s peer, beside a 10 MB/s peer that holds nothing:
    # each holder uploads its own piece, 1 s; counting every peer's rate would say 2 MB / 12 MB/s.
    a = PeerSpec("127.0.0.2", 1 * MB, latency=0.0, pieces=frozenset({0}))
    b = PeerSpec("127.0.0.3", 1 * MB, latency=0.0, pieces=frozenset({1}))
    idle = PeerSpec("127.0.0.4", 10 * MB, latency=0.0, pieces=frozenset())
    pair = Swarm(1 * MB, 2 * MB, (a, b, idle), hash_rate=math.inf)
    assert lower_bound(pair) == pytest.approx(1.0)
    # A piece gained later counts as held from the start (generous), and so it adds the gainer's rate.
    late = dataclasses.replace(b, pieces=frozenset(), gains=((5.0, 1),))
    assert lower_bound(dataclasses.replace(pair, peers=(a, late, idle))) == pytest.approx(1.0)
    # A piece nobody useful holds can never come.
    mute = dataclasses.replace(b, silent=True)
    assert lower_bound(dataclasses.replace(pair, peers=(a, mute, idle))) == math.inf


def test_lower_bound_respects_the_disk() -> None:
    peers = (PeerSpec("127.0.0.2", 10 * MB, latency=0.0),)
    swarm = Swarm(1 * MB, 10 * MB, peers, disk_rate=2 * MB, hash_rate=math.inf)
    assert lower_bound(swarm) == pytest.approx(5.0)


# --- the simulator catches broken schedulers ------------------------------------------------------------------


def small_swarm(**changes: object) -> Swarm:
    peers = (PeerSpec("127.0.0.2", 500 * KB, latency=0.02, chokes=((1.0, 2.0),)),
             PeerSpec("127.0.0.3", 500 * KB, latency=0.02))
    swarm = Swarm(64 * KiB, 4 * MiB, peers, seed=SEED, time_limit=120.0)
    return dataclasses.replace(swarm, **changes)  # type: ignore[arg-type]


def test_the_small_swarm_is_clean_with_the_real_scheduler() -> None:
    assert_clean(simulate(small_swarm()))


class WritesTwice(Scheduler):
    def handle(self, fact: Fact, now: float) -> list[Command]:
        out = super().handle(fact, now)
        return out + [c for c in out if isinstance(c, WriteBlocks)]


class ForgetsChokes(Scheduler):
    """The born-with bug: a choke does not release the requests it killed."""

    def handle(self, fact: Fact, now: float) -> list[Command]:
        if isinstance(fact, Choked):
            return []
        return super().handle(fact, now)


class NeverWrites(Scheduler):
    def handle(self, fact: Fact, now: float) -> list[Command]:
        return [c for c in super().handle(fact, now) if not isinstance(c, WriteBlocks)]


def bigger_budget(n: int, piece_length: int, total: int, config: Config, rng: random.Random) -> Scheduler:
    return Scheduler(n, piece_length, total, dataclasses.replace(config, max_unflushed_bytes=8 * MiB), rng)


def test_catches_a_block_written_twice() -> None:
    result = simulate(small_swarm(), WritesTwice)
    assert any("written twice" in v for v in result.violations)


def test_catches_requests_not_released_on_choke() -> None:
    result = simulate(small_swarm(), ForgetsChokes)
    assert any("in flight" in v for v in result.violations), result.violations


def test_catches_a_budget_overrun() -> None:
    config = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=256 * KiB)
    clean = simulate(small_swarm(config=config))
    assert_clean(clean)
    result = simulate(small_swarm(config=config), bigger_budget)
    assert result.peak_budget_used > 256 * KiB
    assert any("budget use" in v for v in result.violations)


def test_catches_a_stall() -> None:
    result = simulate(small_swarm(), NeverWrites)
    assert not result.finished
    assert result.pieces_verified == 0


def test_fast_and_slow_factory_is_what_the_issue_describes() -> None:
    swarm = fast_and_slow(SEED)
    rates = sorted(p.upload_rate for p in swarm.peers)
    assert rates[:-1] == [50 * KB] * 9 and rates[-1] > 10 * 50 * KB


# --- scheduler bugs found by the simulator ---------------------------------------------------------------------


def test_honest_peer_sharing_pieces_with_a_liar_is_not_banned() -> None:
    """One 1 MiB piece, one honest seed and one seed whose blocks are all corrupt.

    Found by the simulator: every attempt mixed both, the piece failed 3 times, the suspicion count
    counted the same piece 3 times and banned both IPs; the download never finished. A piece that failed
    is now fetched from one peer at a time (the scheduler's single-source re-fetch).
    """
    peers = (PeerSpec("127.0.0.2", 1 * MB), PeerSpec("127.0.0.9", 1 * MB, corrupt=1.0))
    result = simulate(Swarm(1 * MiB, 1 * MiB, peers, seed=SEED, time_limit=120.0))
    assert result.violations == ()
    assert "127.0.0.2" not in result.banned_ips
    assert result.finished


def test_silent_peer_cannot_keep_the_budget() -> None:
    """Liveness rule 7 with a budget of one block and a silent peer that got it first.

    Found by the simulator: when its request timed out, the same refill gave the freed budget straight
    back to the timed-out peer (it was dirty before the hungry peers were woken), for ever; the honest
    seed waited "for budget". Fixed in 96769e5 (timed-out and snubbed peers are refilled last).
    """
    config = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=DEFAULT_CONFIG.block_size)
    bs = config.block_size
    scheduler = Scheduler(3, bs, 3 * bs, config, random.Random(0))
    scheduler.handle(PeerJoined("mute", "127.0.0.2", have_all=True), 0.0)
    first = scheduler.handle(Unchoked("mute"), 0.0)
    assert any(isinstance(c, SendRequests) for c in first), "the mute peer took the only budget slot"
    scheduler.handle(PeerJoined("seed", "127.0.0.3", have_all=True), 0.0)
    scheduler.handle(Unchoked("seed"), 0.0)
    asked_seed = False
    for t in range(1, 61):
        for command in scheduler.handle(Tick(), float(t)):
            asked_seed |= isinstance(command, SendRequests) and command.peer == "seed"
    assert asked_seed, "in 60 s the honest seed was never asked for anything"


def test_silent_peer_and_small_budget_in_the_simulator() -> None:
    """The same through the simulator, as the property test found it: only the honest seed can serve."""
    config = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=DEFAULT_CONFIG.block_size)
    mute = PeerSpec("127.0.0.2", 1 * MB, silent=True)
    seed = PeerSpec("127.0.0.3", 1 * MB, sessions=((0.5, None),))
    result = simulate(Swarm(16 * KiB, 3 * 16 * KiB, (mute, seed), config=config, seed=SEED, time_limit=60.0))
    assert result.violations == ()
    assert result.finished


class IgnoresAnUnchoke(Scheduler):
    """Never learns that 127.0.0.3 unchoked it, so never asks it for anything."""

    def handle(self, fact: Fact, now: float) -> list[Command]:
        if isinstance(fact, Unchoked) and fact.peer == ("127.0.0.3", FIRST_PORT):
            return []
        return super().handle(fact, now)


def test_catches_an_idle_unchoking_peer() -> None:
    """Liveness rule 6 as the simulator checks it (after each tick)."""
    result = simulate(small_swarm(), IgnoresAnUnchoke)
    assert any("rule 6" in v and "127.0.0.3" in v for v in result.violations), result.violations


# Regression (found by the hypothesis swarm property, fixed in 0f22565 and d352773): a banned liar's
# blocks stayed in unverified pieces and the failures they caused counted against the honest peer
# that completed those pieces, until it was banned too and the download never finished. Exact floats
# kept: the run is chaotic.
def test_banned_liars_blocks_do_not_get_an_honest_peer_banned() -> None:
    peers = (
        PeerSpec("127.0.0.8", 963779.9431900702, latency=0.1919445387481818, silent=True),
        # (it joins a hair after the others: the join order matters in this chaotic run)
        PeerSpec("127.0.0.5", 760842.1157061859, latency=0.02, corrupt=1.0,
                 sessions=((2.3362429829723774e-107, 15.115872213795033), (17.889406792728362, None)),
                 pieces=frozenset({0, 5, 7, 8, 9, 12, 13, 17})),
        PeerSpec("127.0.0.4", 1682687.3178275826, latency=0.05, pieces=frozenset({0, 4, 7, 9, 17})),
        PeerSpec("127.0.0.6", 334143.6599467478, latency=0.07863203873289966, corrupt=1.0,
                 sessions=((3.1108842182616296, 22.11088421826163), (23.411349371849187, None))),
        PeerSpec("127.0.0.3", 593203.0436497869, latency=0.1296393441068027, pieces=frozenset({3, 10, 14, 15, 16})),
        PeerSpec("127.0.0.7", 853431.2927645721, latency=0.1605155791748817, chokes=((0.5, 0.6),),
                 corrupt=0.11283793030553681),
        PeerSpec("127.0.0.2", 72899.44569723772, latency=0.02, pieces=frozenset({1, 2, 5, 6, 8, 11, 12, 13, 18})),
    )
    config = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=52 * DEFAULT_CONFIG.block_size)
    swarm = Swarm(256 * KiB, 4720483, peers, config=config, seed=3799, hash_delay=0.11345803935599647,
                  time_limit=600.0)
    result = simulate(swarm)
    assert result.violations == ()
    assert result.banned_ips <= {"127.0.0.5", "127.0.0.6", "127.0.0.7"}
    assert result.finished
