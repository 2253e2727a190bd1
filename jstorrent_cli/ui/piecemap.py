"""The one-line piece map: where the holes are, downsampled to the terminal width.

Input is one byte per piece (``piece_states``): MISSING, IN_FLIGHT (started: some block requested,
received or written, not yet verified), VERIFIED, UNWANTED (not selected and not verified). Every
operation here runs in C over the byte string (``bytes.translate``, ``bytes.count`` with bounds, big-int
bitwise arithmetic), never a Python loop per piece, so an 80,000-piece torrent costs well under a
millisecond per refresh. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable

# One byte per piece (MISSING must stay 0: build_piece_states relies on it). The values are a contract
# with whoever builds `piece_states` (see `build_piece_states`); they should move to core/picker.py once
# the scheduler snapshot carries the map.
MISSING = 0
IN_FLIGHT = 1
VERIFIED = 2
UNWANTED = 3

# What one column of the map shows (it covers one or more pieces).
COLUMN_DONE = "█"  # every wanted piece in the column is verified
COLUMN_SOME = "▄"  # some verified, the rest missing, nothing in flight
COLUMN_ACTIVE = "▒"  # at least one piece in the column is in flight
COLUMN_MISSING = "·"  # nothing verified, nothing in flight
COLUMN_UNWANTED = " "  # only pieces we do not download

_MISSING_B = bytes([MISSING])
_ZERO = b"\x00"
_IN_FLIGHT_B = bytes([IN_FLIGHT])
_VERIFIED_B = bytes([VERIFIED])
_UNWANTED_B = bytes([UNWANTED])
# The picker's 0/1 `verified` byte -> MISSING / VERIFIED (bytes.translate wants a 256-entry table).
_VERIFIED_TO_STATE = bytes([MISSING, VERIFIED]) + bytes(254)


def build_piece_states(verified: bytes | bytearray, wanted: bytes | bytearray, active: Iterable[int]) -> bytes:
    """One state byte per piece from the picker's 0/1 arrays and the started pieces.

    `verified` and `wanted` hold one 0/1 byte per piece (as core/picker.py keeps them); `active` lists
    the started, not yet verified pieces. O(pieces) in C plus O(active) in Python.
    """
    n = len(verified)
    if len(wanted) != n:
        raise ValueError("verified and wanted must have one byte per piece")
    if n == 0:
        return b""
    if _ZERO not in wanted:  # everything wanted (the usual case): one translate
        states = bytearray(verified.translate(_VERIFIED_TO_STATE))
    else:
        states = bytearray(_with_unwanted(verified, wanted))
    for piece in active:
        if states[piece] == MISSING:
            states[piece] = IN_FLIGHT
    return bytes(states)


def _with_unwanted(verified: bytes | bytearray, wanted: bytes | bytearray) -> bytes:
    n = len(verified)
    # Each byte is a base-256 digit of 0 or 1, so bitwise and small multiples never carry.
    v = int.from_bytes(verified, "big")
    w = int.from_bytes(wanted, "big")
    ones = int.from_bytes(b"\x01" * n, "big")
    unwanted_unverified = (ones - w) & (ones - v)
    code = VERIFIED * v + UNWANTED * unwanted_unverified  # MISSING is 0: everything else
    return code.to_bytes(n, "big")


def column_bounds(num_pieces: int, width: int) -> list[tuple[int, int]]:
    """[start, end) piece ranges of each column: min(width, num_pieces) columns, sizes differing by <= 1."""
    columns = min(width, num_pieces)
    if columns <= 0:
        return []
    return [(i * num_pieces // columns, (i + 1) * num_pieces // columns) for i in range(columns)]


def piece_map(states: bytes | bytearray, width: int) -> str:
    """The map as a string of at most `width` characters (one per piece when there are fewer pieces)."""
    chars: list[str] = []
    for start, end in column_bounds(len(states), width):
        chars.append(_column(states, start, end))
    return "".join(chars)


def piece_map_runs(states: bytes | bytearray, width: int) -> list[tuple[str, int]]:
    """The map as (column character, run length) pairs, for styling a run at a time."""
    runs: list[tuple[str, int]] = []
    for char in piece_map(states, width):
        if runs and runs[-1][0] == char:
            runs[-1] = (char, runs[-1][1] + 1)
        else:
            runs.append((char, 1))
    return runs


def _column(states: bytes | bytearray, start: int, end: int) -> str:
    if states.find(_IN_FLIGHT_B, start, end) != -1:
        return COLUMN_ACTIVE
    unwanted = states.count(_UNWANTED_B, start, end)
    size = end - start
    if unwanted == size:
        return COLUMN_UNWANTED
    verified = states.count(_VERIFIED_B, start, end)
    if verified + unwanted == size:
        return COLUMN_DONE
    if verified:
        return COLUMN_SOME
    return COLUMN_MISSING


def count_states(states: bytes | bytearray) -> dict[int, int]:
    """How many pieces are in each state (for tests and summaries)."""
    return {
        MISSING: states.count(_MISSING_B),
        IN_FLIGHT: states.count(_IN_FLIGHT_B),
        VERIFIED: states.count(_VERIFIED_B),
        UNWANTED: states.count(_UNWANTED_B),
    }
