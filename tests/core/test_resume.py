"""The resume state: its bytes, its strictness, and which pieces it lets a restart trust."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jstorrent_cli.core import bencode
from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.core.resume import (
    FORMAT_VERSION,
    FileStat,
    ResumeState,
    ResumeStateError,
    bitfield_from_pieces,
    decode,
    encode,
    pieces_from_bitfield,
    trusted_pieces,
)

HASH = bytes(range(20))

stats = st.one_of(st.none(), st.builds(FileStat, st.integers(0, 2**40), st.integers(-(2**62), 2**62)))


@st.composite
def states(draw: st.DrawFn) -> ResumeState:
    piece_count = draw(st.integers(0, 100))
    verified = draw(st.sets(st.integers(0, piece_count - 1))) if piece_count else set()
    files = draw(st.lists(stats, max_size=8))
    return ResumeState.make(draw(st.binary(min_size=20, max_size=20)), piece_count, verified, files,
                            draw(st.binary(max_size=24)))


def test_bitfield_bit_order_is_bep3() -> None:
    assert bitfield_from_pieces([0], 1) == b"\x80"
    assert bitfield_from_pieces([0, 7, 8], 9) == b"\x81\x80"
    assert list(pieces_from_bitfield(b"\x81\x80", 9)) == [0, 7, 8]
    with pytest.raises(ValueError):
        bitfield_from_pieces([9], 9)


@settings(max_examples=200, deadline=None)
@given(states())
def test_round_trip(state: ResumeState) -> None:
    data = encode(state)
    assert decode(data) == state
    assert bencode.decode(data)[b"version"] == FORMAT_VERSION  # type: ignore[index]


@settings(max_examples=100, deadline=None)
@given(states())
def test_every_truncation_is_refused(state: ResumeState) -> None:
    data = encode(state)
    for cut in range(len(data)):
        with pytest.raises(ResumeStateError):
            decode(data[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_only_raises_the_module_error(data: bytes) -> None:
    with contextlib.suppress(ResumeStateError):
        decode(data)


@settings(max_examples=300, deadline=None)
@given(states(), st.data())
def test_mutated_states_decode_or_raise_the_module_error(state: ResumeState, data: st.DataObject) -> None:
    raw = bytearray(encode(state))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] = data.draw(st.integers(0, 255))
    try:
        decoded = decode(bytes(raw))
    except ResumeStateError:
        return
    assert len(decoded.info_hash) == 20
    assert all(0 <= p < decoded.piece_count for p in decoded.verified_pieces())


def _raw(**changes: bencode.Value) -> bytes:
    fields: dict[bytes, bencode.Value] = {
        b"format": b"jstorrent resume", b"version": 1, b"info hash": HASH, b"piece count": 9,
        b"verified": b"\x80\x80", b"files": [[5, 7], []], b"layout": b"",
    }
    for key, value in changes.items():
        k = key.replace("_", " ").encode()
        if value is None:
            del fields[k]
        else:
            fields[k] = value
    return bencode.encode(fields)


def test_a_well_formed_state_decodes() -> None:
    state = decode(_raw())
    assert state.verified_pieces() == {0, 8}
    assert state.files == (FileStat(5, 7), None)


@pytest.mark.parametrize(
    "changes",
    [
        {"version": 2},
        {"version": None},
        {"format": b"something else"},
        {"info_hash": b"short"},
        {"piece_count": -1},
        {"piece_count": 17},  # bitfield too short for 17 pieces
        {"piece_count": 8},  # bitfield too long for 8 pieces
        {"verified": b"\x80\x81"},  # a spare bit set past piece 8
        {"verified": 5},
        {"files": [[5]]},
        {"files": [[-1, 5]]},
        {"files": [[1, b"x"]]},
        {"files": b"x"},
        {"layout": None},
        {"layout": [1]},
    ],
)
def test_malformed_states_are_refused(changes: dict[str, bencode.Value]) -> None:
    with pytest.raises(ResumeStateError):
        decode(_raw(**changes))


def test_non_canonical_and_deep_input_is_refused() -> None:
    data = _raw()
    with pytest.raises(ResumeStateError):
        decode(data + b"x")  # trailing bytes
    with pytest.raises(ResumeStateError):
        decode(b"l" * 50 + b"e" * 50)  # nesting past the cap, no recursion error
    with pytest.raises(ResumeStateError):
        decode(b"i5e")


# --- trusting pieces ---------------------------------------------------------------------------

def _geometry() -> Geometry:
    # Files of 250, 100 (pad), 300, 0, 350 bytes; pieces of 200 -> 5 pieces over 1000 bytes.
    # Bytes: file 0 at 0-250 (pieces 0-1), pad 250-350 (1), file 2 at 350-650 (1-3), file 4 at 650-1000 (3-4).
    return Geometry.from_files([(250, False), (100, True), (300, False), (0, False), (350, False)], 200, 100)


def test_a_touched_file_loses_its_pieces_and_only_those() -> None:
    geometry = _geometry()
    recorded = [FileStat(250, 1000), None, FileStat(300, 2000), FileStat(0, 3000), FileStat(350, 4000)]
    state = ResumeState.make(HASH, 5, range(5), recorded)
    assert trusted_pieces(state, recorded, geometry, info_hash=HASH) == set(range(5))
    touched = list(recorded)
    touched[2] = FileStat(300, 2001)  # mtime changed by 1 ns
    assert trusted_pieces(state, touched, geometry) == {0, 4}
    resized = list(recorded)
    resized[0] = FileStat(251, 1000)
    assert trusted_pieces(state, resized, geometry) == {2, 3, 4}
    gone = list(recorded)
    gone[4] = None
    assert trusted_pieces(state, gone, geometry) == {0, 1, 2}
    # A zero-length file holds no piece: touching it changes nothing.
    empty_touched = list(recorded)
    empty_touched[3] = FileStat(0, 9999)
    assert trusted_pieces(state, empty_touched, geometry) == set(range(5))


def test_a_state_of_another_download_trusts_nothing() -> None:
    geometry = _geometry()
    recorded = [FileStat(250, 1), None, FileStat(300, 2), FileStat(0, 3), FileStat(350, 4)]
    state = ResumeState.make(HASH, 5, range(5), recorded)
    assert trusted_pieces(state, recorded, geometry, info_hash=bytes(20)) == frozenset()
    assert trusted_pieces(ResumeState.make(HASH, 6, range(6), recorded), recorded, geometry) == frozenset()
    assert trusted_pieces(ResumeState.make(HASH, 5, range(5), recorded[:4]), recorded, geometry) == frozenset()
    with pytest.raises(ValueError):
        trusted_pieces(state, recorded[:4], geometry)


def test_a_changed_layout_untrusts_the_layout_files() -> None:
    geometry = _geometry()
    recorded = [FileStat(250, 1), None, FileStat(300, 2), FileStat(0, 3), FileStat(350, 4)]
    state = ResumeState.make(HASH, 5, range(5), recorded, layout=b"A")
    assert trusted_pieces(state, recorded, geometry, layout=b"A", layout_files=[4]) == set(range(5))
    assert trusted_pieces(state, recorded, geometry, layout=b"B", layout_files=[4]) == {0, 1, 2}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 700), st.booleans()), min_size=1, max_size=8).filter(
        lambda fs: sum(n for n, _ in fs) > 0),
    st.sampled_from([100, 128, 300]),
    st.data(),
)
def test_trusted_pieces_equal_brute_force_over_spans(
    files: list[tuple[int, bool]], piece_length: int, data: st.DataObject
) -> None:
    geometry = Geometry.from_files(files, piece_length, 50)
    recorded = data.draw(st.lists(stats, min_size=len(files), max_size=len(files)))
    # Current stats: each file unchanged, changed, or gone.
    current = [
        data.draw(st.sampled_from([r, None, FileStat(7, 7)] if r is not None else [None, FileStat(1, 1)]))
        for r in recorded
    ]
    verified = data.draw(st.sets(st.integers(0, geometry.piece_count - 1)))
    state = ResumeState.make(HASH, geometry.piece_count, verified, recorded)

    def unchanged(i: int) -> bool:
        return recorded[i] is not None and recorded[i] == current[i]

    expected = {p for p in verified if all(s.pad or unchanged(s.file_index) for s in geometry.piece_spans(p))}
    assert trusted_pieces(state, current, geometry) == expected
