"""Bencode: a strict decoder of our own, and an encoder that wraps bencodepy.

Every byte that comes from outside (a .torrent file, a tracker, a peer's extended handshake) goes
through `decode`, never through bencodepy, which accepts non-canonical input, raises four different
exception types and dies of RecursionError on deep nesting (DESIGN.md, known traps).

The decoder accepts exactly the canonical encoding: integers without leading zeros, `+` or `-0`;
string lengths without leading zeros; dictionary keys that are byte strings in strictly increasing
order (duplicates refused); nothing after the value. Depth and size are capped. Any failure is one
BencodeError carrying the byte offset where decoding stopped.

`decode_with_spans` also returns the raw byte span of each top-level dictionary key's value, so the
infohash is SHA-1 of the very bytes of `info`, never of a re-encoding.
"""

from __future__ import annotations

from typing import TypeAlias

import bencodepy

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.errors import BencodeEncodeError, BencodeError

Value: TypeAlias = int | bytes | list["Value"] | dict[bytes, "Value"]

_DIGITS = frozenset(b"0123456789")
# Longest integer accepted, in digits: 64-bit values need 20; Python refuses to parse over 4300.
_MAX_DIGITS = 256
_INT_LIMIT = 10**_MAX_DIGITS


class _Decoder:
    __slots__ = ("data", "end", "max_depth", "sorted_keys")

    def __init__(self, data: bytes, max_depth: int, sorted_keys: bool) -> None:
        self.data = data
        self.end = len(data)
        self.max_depth = max_depth
        self.sorted_keys = sorted_keys

    def fail(self, message: str, offset: int) -> BencodeError:
        return BencodeError(message, offset)

    def _int_until(self, start: int, terminator: int, what: str) -> tuple[int, int]:
        """Parse a canonical decimal from `start` up to `terminator`; returns (value, index after it)."""
        data = self.data
        stop = data.find(terminator, start)
        if stop < 0:
            raise self.fail(f"unterminated {what}", self.end)
        text = data[start:stop]
        if not text:
            raise self.fail(f"empty {what}", start)
        negative = text[0] == 0x2D  # '-'
        digits = text[1:] if negative else text
        if len(digits) > _MAX_DIGITS:
            raise self.fail(f"{what} longer than {_MAX_DIGITS} digits", start)
        if not digits or any(c not in _DIGITS for c in digits):
            raise self.fail(f"invalid {what}", start)
        if len(digits) > 1 and digits[0] == 0x30:
            raise self.fail(f"{what} with a leading zero", start)
        if negative and digits == b"0":
            raise self.fail(f"negative zero {what}", start)
        return int(text), stop + 1

    def value(self, pos: int, depth: int) -> tuple[Value, int]:
        data = self.data
        if pos >= self.end:
            raise self.fail("unexpected end of data", pos)
        c = data[pos]
        if c == 0x69:  # 'i'
            return self._int_until(pos + 1, 0x65, "integer")
        if c in _DIGITS:
            return self.string(pos)
        if c == 0x6C:  # 'l'
            if depth >= self.max_depth:
                raise self.fail("nesting too deep", pos)
            items: list[Value] = []
            pos += 1
            while True:
                if pos >= self.end:
                    raise self.fail("unterminated list", pos)
                if data[pos] == 0x65:
                    return items, pos + 1
                item, pos = self.value(pos, depth + 1)
                items.append(item)
        if c == 0x64:  # 'd'
            if depth >= self.max_depth:
                raise self.fail("nesting too deep", pos)
            result, _spans, pos = self.dictionary(pos, depth, want_spans=False)
            return result, pos
        raise self.fail(f"unexpected byte 0x{c:02x}", pos)

    def string(self, pos: int) -> tuple[bytes, int]:
        if pos >= self.end or self.data[pos] not in _DIGITS:
            raise self.fail("expected a byte string", pos)
        length, start = self._int_until(pos, 0x3A, "string length")  # ':'
        stop = start + length
        if stop > self.end:
            raise self.fail("string runs past the end of data", pos)
        return self.data[start:stop], stop

    def dictionary(
        self, pos: int, depth: int, *, want_spans: bool
    ) -> tuple[dict[bytes, Value], dict[bytes, tuple[int, int]], int]:
        data = self.data
        result: dict[bytes, Value] = {}
        spans: dict[bytes, tuple[int, int]] = {}
        previous: bytes | None = None
        pos += 1
        while True:
            if pos >= self.end:
                raise self.fail("unterminated dictionary", pos)
            if data[pos] == 0x65:
                return result, spans, pos + 1
            key_at = pos
            key, pos = self.string(pos)
            if previous is not None:
                if key == previous or key in result:
                    raise self.fail("duplicate dictionary key", key_at)
                if self.sorted_keys and key < previous:
                    raise self.fail("dictionary keys out of order", key_at)
            previous = key
            start = pos
            item, pos = self.value(pos, depth + 1)
            result[key] = item
            if want_spans:
                spans[key] = (start, pos)


def _check_size(data: bytes, max_size: int) -> None:
    if len(data) > max_size:
        raise BencodeError(f"input of {len(data)} bytes is over the {max_size}-byte limit", max_size)


def decode(
    data: bytes,
    *,
    max_depth: int = DEFAULT_CONFIG.bencode_max_depth,
    max_size: int = DEFAULT_CONFIG.bencode_max_size,
    sorted_keys: bool = True,
) -> Value:
    """Decode one canonical bencoded value that spans all of `data`.

    `sorted_keys=False` is the lenient mode for .torrent files only: keys may come in any order
    (libtorrent accepts such files) but duplicates are still refused.
    """
    data = bytes(data)
    _check_size(data, max_size)
    decoder = _Decoder(data, max_depth, sorted_keys)
    value, end = decoder.value(0, 0)
    if end != len(data):
        raise BencodeError("trailing data after the value", end)
    return value


def decode_with_spans(
    data: bytes,
    *,
    max_depth: int = DEFAULT_CONFIG.bencode_max_depth,
    max_size: int = DEFAULT_CONFIG.bencode_max_size,
    sorted_keys: bool = True,
) -> tuple[dict[bytes, Value], dict[bytes, tuple[int, int]]]:
    """Decode a top-level dictionary and return it with the raw (start, end) span of each value.

    `data[start:end]` of the `info` key is what the infohash is computed over.
    """
    data = bytes(data)
    _check_size(data, max_size)
    if not data or data[0] != 0x64:
        raise BencodeError("expected a dictionary", 0)
    decoder = _Decoder(data, max_depth, sorted_keys)
    value, spans, end = decoder.dictionary(0, 0, want_spans=True)
    if end != len(data):
        raise BencodeError("trailing data after the value", end)
    return value, spans


def _check_encodable(value: object, path: str, depth: int) -> None:
    if isinstance(value, bool):
        raise BencodeEncodeError(f"cannot encode {path}: bool is not a bencode type (use 0 or 1)")
    if isinstance(value, int):
        if abs(value) >= _INT_LIMIT:
            raise BencodeEncodeError(f"cannot encode {path}: integer longer than {_MAX_DIGITS} digits")
        return
    if isinstance(value, bytes):
        return
    if isinstance(value, list | tuple | dict) and depth >= DEFAULT_CONFIG.bencode_max_depth:
        # The decoder refuses a container at this depth, so the encoder must too.
        raise BencodeEncodeError(f"cannot encode {path}: nested deeper than {DEFAULT_CONFIG.bencode_max_depth}")
    if isinstance(value, bytearray | memoryview):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_encodable(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, bytes):
                raise BencodeEncodeError(f"cannot encode {path}: dictionary key {key!r} is not bytes")
            _check_encodable(item, f"{path}[{key!r}]", depth + 1)
        return
    raise BencodeEncodeError(f"cannot encode {path}: {type(value).__name__} is not a bencode type")


def _normalise(value: object) -> object:
    """Copy into the plain types bencodepy handles, with dictionary keys sorted as bytes."""
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, list | tuple):
        return [_normalise(item) for item in value]
    if isinstance(value, dict):
        return {key: _normalise(value[key]) for key in sorted(value)}
    return value


def encode(value: object) -> bytes:
    """Encode int, bytes, lists and bytes-keyed dicts canonically (keys sorted).

    Refuses bool, str and anything else with BencodeEncodeError, because bencodepy would silently
    encode True as `iTruee` and str as UTF-8.
    """
    _check_encodable(value, "value", 0)
    encoded = bencodepy.encode(_normalise(value))
    assert isinstance(encoded, bytes)
    return encoded
