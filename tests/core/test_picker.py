"""The picker: bitfields, availability, rarest-first against a brute-force reference, block states."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import KiB
from jstorrent_cli.core.picker import (
    FREE,
    RECEIVED,
    REQUESTED,
    WRITTEN,
    PeerPieces,
    Picker,
    PieceState,
    parse_bitfield,
)

BS = 16 * KiB


def bitfield_of(num_pieces: int, have: set[int]) -> bytes:
    out = bytearray((num_pieces + 7) // 8)
    for i in have:
        out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 100).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1)))))
def test_parse_bitfield_matches_bits(case: tuple[int, set[int]]) -> None:
    n, have = case
    bitmap = parse_bitfield(bitfield_of(n, have), n)
    assert bitmap is not None and len(bitmap) == n
    assert {i for i in range(n) if bitmap[i]} == have


def test_parse_bitfield_rejects_bad_length_and_spare_bits() -> None:
    assert parse_bitfield(b"\xff", 9) is None
    assert parse_bitfield(b"\xff\x00\x00", 9) is None
    assert parse_bitfield(b"\xff\x40", 9) is None  # bit 9 does not exist
    assert parse_bitfield(b"\xff\x80", 9) == bytearray([1] * 9)


def test_geometry_of_the_short_last_piece() -> None:
    p = Picker(3, 4 * BS, 2 * 4 * BS + BS + 100, BS, random.Random(0))
    assert [p.piece_size(i) for i in range(3)] == [4 * BS, 4 * BS, BS + 100]
    assert p.block_count(2) == 2 and p.block_length(2, 1) == 100 and p.block_length(1, 3) == BS
    odd = Picker(2, 3 * BS - 5, 6 * BS - 10, BS, random.Random(0))
    assert odd.block_count(0) == 3 and odd.block_length(0, 2) == BS - 5
    with pytest.raises(ValueError):
        Picker(3, BS, 5 * BS, BS, random.Random(0))


def rarest_reference(p: Picker, have: set[int] | None, barred: set[int], common: bool = False) -> set[int]:
    candidates = [i for i in range(p.num_pieces) if p.unstarted[i] and (have is None or i in have)
                  and i not in barred]
    if not candidates:
        return set()
    best = (max if common else min)(p.availability(i) for i in candidates)
    return {i for i in candidates if p.availability(i) == best}


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 40),
    peers=st.lists(st.none() | st.sets(st.integers(0, 39)), min_size=1, max_size=6),
    started=st.sets(st.integers(0, 39)),
    barred=st.sets(st.integers(0, 39)),
    seed=st.integers(0, 1000),
    common=st.booleans(),
)
def test_new_piece_is_one_of_the_rarest(n: int, peers: list[set[int] | None], started: set[int],
                                        barred: set[int], seed: int, common: bool) -> None:
    """Rarest first; most common first with `common` (a snubbed peer)."""
    p = Picker(n, BS, n * BS, BS, random.Random(seed))
    views: list[tuple[PeerPieces, set[int] | None]] = []
    for i, have in enumerate(peers):
        if have is None:
            views.append((p.add_peer(i, None), None))
        else:
            have = {x % n for x in have}
            views.append((p.add_peer(i, parse_bitfield(bitfield_of(n, have), n)), have))
    for piece in sorted({x % n for x in started}):
        p.start(piece, None)
    bars = {x % n: float("inf") for x in barred}
    for view, have in views:
        choice = p.new_piece(view, dict(bars), 0.0, common=common)
        expected = rarest_reference(p, have, set(bars), common)
        if expected:
            assert choice in expected
        else:
            assert choice is None
        if have is not None:
            assert view.unstarted == sum(1 for i in have if p.unstarted[i])


def test_random_tie_break_is_deterministic_per_seed() -> None:
    def order(seed: int) -> list[int]:
        p = Picker(50, BS, 50 * BS, BS, random.Random(seed))
        view = p.add_peer("seed", None)
        out = []
        while (piece := p.new_piece(view, {}, 0.0)) is not None:
            p.start(piece, None)
            out.append(piece)
        return out

    assert order(1) == order(1)
    assert sorted(order(1)) == list(range(50))
    assert order(1) != order(2) and order(1) != list(range(50))


def test_sequential_picks_lowest_index_the_peer_has() -> None:
    p = Picker(10, BS, 10 * BS, BS, random.Random(0), sequential=True)
    sparse = p.add_peer("a", parse_bitfield(bitfield_of(10, {3, 7, 9}), 10))
    seed = p.add_peer("b", None)
    assert p.new_piece(sparse, {}, 0.0) == 3
    assert p.new_piece(seed, {}, 0.0) == 0
    p.start(0, None)
    p.start(3, None)
    assert p.new_piece(sparse, {}, 0.0) == 7
    assert p.new_piece(sparse, {7: 5.0}, 1.0) == 9  # barred until 5.0
    assert p.new_piece(seed, {}, 0.0) == 1


def test_wanted_mask_and_have_mask() -> None:
    p = Picker(4, BS, 4 * BS, BS, random.Random(0), wanted=[True, False, True, True],
               have=[False, False, True, False])
    seed = p.add_peer("s", None)
    picks = set()
    while (piece := p.new_piece(seed, {}, 0.0)) is not None:
        p.start(piece, None)
        picks.add(piece)
    assert picks == {0, 3}
    assert p.state(1) is PieceState.UNWANTED and p.state(2) is PieceState.VERIFIED
    assert p.free_blocks == 2  # the FREE blocks of the two needed pieces (started or not)
    assert p.needed_count == 2


def test_availability_and_removal() -> None:
    p = Picker(5, BS, 5 * BS, BS, random.Random(0))
    p.add_peer("a", parse_bitfield(bitfield_of(5, {0, 1}), 5))
    p.add_peer("b", None)
    assert p.add_have("a", 4) is False  # "a" already had something we need
    assert [p.availability(i) for i in range(5)] == [2, 2, 1, 1, 2]
    p.remove_peer("a")
    p.remove_peer("b")
    assert [p.availability(i) for i in range(5)] == [0] * 5
    view = p.add_peer("c", parse_bitfield(bitfield_of(5, set()), 5))
    assert p.add_have("c", 2) is True and p.needed_of(view) == 1


def test_block_state_machine() -> None:
    p = Picker(2, 2 * BS, 4 * BS, BS, random.Random(0))
    ap = p.start(1, "x")
    assert p.state(1) is PieceState.PARTIAL and p.free_blocks == 4
    p.request(ap, 0, "x", 1.0)
    p.request(ap, 0, "y", 2.0)  # endgame duplicate: one more holder
    p.request(ap, 1, "x", 1.0)
    assert ap.states[0] == REQUESTED and ap.holders[0] == {"x": 1.0, "y": 2.0}
    assert p.state(1) is PieceState.FULLY_REQUESTED and p.free_blocks == 2
    assert list(p.requested_order) == [(1, 0), (1, 1)]
    assert p.release(ap, 0, "y") is False
    holders = p.receive(ap, 0, "x", "127.0.0.2")
    assert holders == {"x": 1.0} and ap.states[0] == RECEIVED
    assert p.release(ap, 1, "x") is True and ap.states[1] == FREE
    assert p.state(1) is PieceState.PARTIAL and p.free_blocks == 3
    p.request(ap, p.next_free(ap), "z", 3.0)
    p.receive(ap, 1, "z", "127.0.0.3")
    assert p.written(ap, 0) is False and ap.states[0] == WRITTEN
    assert p.written(ap, 1) is True and p.state(1) is PieceState.AWAITING_HASH
    contributors = p.hashed_bad(1)
    assert contributors == [("x", "127.0.0.2"), ("z", "127.0.0.3")]
    assert p.state(1) is PieceState.MISSING and p.free_blocks == 4 and p.unstarted[1]


def test_a_piece_whose_blocks_all_return_to_free_is_unstarted() -> None:
    p = Picker(1, 2 * BS, 2 * BS, BS, random.Random(0))
    ap = p.start(0, "x")
    p.request(ap, 0, "x", 0.0)
    p.release(ap, 0, "x")
    assert p.state(0) is PieceState.MISSING and 0 not in p.partial and p.unstarted_count == 1


def test_picks_stay_cheap_with_80000_pieces() -> None:
    p = Picker(80_000, 256 * KiB, 80_000 * 256 * KiB, BS, random.Random(0))
    seed = p.add_peer("seed", None)
    sparse = p.add_peer("sparse", parse_bitfield(bitfield_of(80_000, {79_999, 12}), 80_000))
    picks = 0
    for _ in range(5000):
        piece = p.new_piece(seed, {}, 0.0)
        assert piece is not None
        p.start(piece, None)
        picks += 1
    assert p.new_piece(sparse, {}, 0.0) in {12, 79_999} or not (p.unstarted[12] or p.unstarted[79_999])
    assert picks == 5000 and p.unstarted_count == 80_000 - 5000
