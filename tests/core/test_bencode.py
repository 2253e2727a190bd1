"""Property tests for core/bencode.py: the strict decoder and the bencodepy-backed encoder."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import bencodepy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core.bencode import Value, decode, decode_with_spans, encode
from jstorrent_cli.errors import BencodeEncodeError, BencodeError

MAX_DEPTH = DEFAULT_CONFIG.bencode_max_depth
# Integers stay within the decoder's digit limit (256 digits) so that every generated value is valid.
BIG = 10**200

scalars = st.integers(-BIG, BIG) | st.binary(max_size=40)
values: st.SearchStrategy[Value] = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.binary(max_size=8), children, max_size=6),
    max_leaves=12,
)
top_dicts = st.dictionaries(st.binary(max_size=8), values, max_size=4)
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def plain(value: Any) -> Any:
    """bencodepy returns OrderedDicts; compare as plain dicts, keeping nested order irrelevant."""
    if isinstance(value, OrderedDict | dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def bencodepy_decode(data: bytes) -> Any:
    """bencodepy.decode, undoing its habit of wrapping a top-level scalar in a tuple."""
    result = bencodepy.decode(data)
    if data[:1] not in (b"d", b"l"):
        assert isinstance(result, tuple) and len(result) == 1
        return plain(result[0])
    return plain(result)


@FAST
@given(values)
def test_round_trip(value: Value) -> None:
    assert decode(encode(value)) == value


@FAST
@given(values)
def test_encoding_is_canonical_so_decode_then_encode_is_identity(value: Value) -> None:
    data = encode(value)
    assert encode(decode(data)) == data


@FAST
@given(values, st.data())
def test_mutations_decode_to_their_own_encoding_or_fail_cleanly(value: Value, data: st.DataObject) -> None:
    buf = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "swap"]))
        at = data.draw(st.integers(0, len(buf)))
        if kind == "flip" and at < len(buf):
            buf[at] = data.draw(st.sampled_from(b"0123456789-+ie:ld\x00\xff"))
        elif kind == "insert":
            buf[at:at] = data.draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b"0", b"e", b"i0e", b"-"]))
        elif kind == "delete":
            del buf[at : at + data.draw(st.integers(1, 4))]
        elif kind == "swap" and at + 1 < len(buf):
            buf[at], buf[at + 1] = buf[at + 1], buf[at]
    mutated = bytes(buf)
    try:
        decoded = decode(mutated)
    except BencodeError as err:
        assert 0 <= err.offset <= len(mutated)
        return
    assert encode(decoded) == mutated


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda a, b: a + b, st.sampled_from([b"d", b"l", b"i", b"1:"]), st.binary()))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    for lenient in (False, True):
        try:
            decoded = decode(data, sorted_keys=not lenient)
        except BencodeError:
            pass
        else:
            if not lenient:
                assert encode(decoded) == data
        try:
            top, spans = decode_with_spans(data, sorted_keys=not lenient)
        except BencodeError:
            continue
        for key, (start, end) in spans.items():
            assert decode(data[start:end], sorted_keys=not lenient) == top[key]


@FAST
@given(values)
def test_agrees_with_bencodepy_on_canonical_input(value: Value) -> None:
    data = encode(value)
    assert bencodepy_decode(data) == decode(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=60) | st.builds(lambda a, b: a + b, st.sampled_from([b"d", b"l", b"i"]), st.binary()))
def test_whatever_we_accept_bencodepy_reads_the_same(data: bytes) -> None:
    try:
        ours = decode(data)
    except BencodeError:
        return
    assert bencodepy_decode(data) == ours


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"i03e", "leading zero"),
        (b"i00e", "leading zero"),
        (b"i-0e", "negative zero"),
        (b"i+3e", "invalid integer"),
        (b"i-e", "invalid integer"),
        (b"ie", "empty integer"),
        (b"i 3e", "invalid integer"),
        (b"i3", "unterminated integer"),
        (b"i" + b"9" * 257 + b"e", "longer than"),
        (b"03:abc", "leading zero"),
        (b"3:ab", "past the end"),
        (b"-1:a", "unexpected byte"),
        (b"3abc", "unterminated string length"),
        (b"d1:bi1e1:ai2ee", "out of order"),
        (b"d1:ai1e1:ai2ee", "duplicate"),
        (b"di1ei2ee", "expected a byte string"),
        (b"i1ei2e", "trailing data"),
        (b"le ", "trailing data"),
        (b"l", "unterminated list"),
        (b"d", "unterminated dictionary"),
        (b"d1:a", "unexpected end"),
        (b"", "unexpected end"),
        (b"x", "unexpected byte"),
    ],
)
def test_non_canonical_and_broken_inputs(data: bytes, reason: str) -> None:
    with pytest.raises(BencodeError, match=reason) as caught:
        decode(data)
    assert 0 <= caught.value.offset <= len(data)
    assert caught.value.reason in str(caught.value)


def test_offsets_point_at_the_problem() -> None:
    cases = {b"li1ei03ee": 5, b"d1:bi1e1:ai2ee": 7, b"i1ei2e": 3, b"l1:ai-0ee": 5}
    for data, offset in cases.items():
        with pytest.raises(BencodeError) as caught:
            decode(data)
        assert caught.value.offset == offset, data


def test_lenient_mode_allows_only_key_order() -> None:
    assert decode(b"d1:bi1e1:ai2ee", sorted_keys=False) == {b"b": 1, b"a": 2}
    with pytest.raises(BencodeError, match="duplicate"):
        decode(b"d1:ai1e1:ai2ee", sorted_keys=False)
    with pytest.raises(BencodeError, match="leading zero"):
        decode(b"d1:bi01e1:ai2ee", sorted_keys=False)


def test_depth_cap_is_exact() -> None:
    at_cap = b"l" * MAX_DEPTH + b"e" * MAX_DEPTH
    assert decode(at_cap) is not None
    over = b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1)
    with pytest.raises(BencodeError, match="nesting too deep") as caught:
        decode(over)
    assert caught.value.offset == MAX_DEPTH
    dicts = b"d1:a" * (MAX_DEPTH + 1) + b"i1e" + b"e" * (MAX_DEPTH + 1)
    with pytest.raises(BencodeError, match="nesting too deep"):
        decode(dicts)
    assert decode(b"l" * 5 + b"e" * 5, max_depth=5) == [[[[[]]]]]
    with pytest.raises(BencodeError):
        decode(b"l" * 6 + b"e" * 6, max_depth=5)


def test_very_deep_input_is_a_bencode_error_not_a_recursion_error() -> None:
    for data in (b"l" * 100_000, b"d1:a" * 100_000, b"l" * 100_000 + b"e" * 100_000):
        with pytest.raises(BencodeError):
            decode(data)


def test_size_cap_is_exact() -> None:
    data = encode([b"x" * 100, 5])
    assert decode(data, max_size=len(data)) == [b"x" * 100, 5]
    with pytest.raises(BencodeError, match="limit"):
        decode(data, max_size=len(data) - 1)
    with pytest.raises(BencodeError, match="limit"):
        decode_with_spans(encode({b"a": b"x" * 100}), max_size=50)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(top_dicts)
def test_spans_are_exact(value: dict[bytes, Value]) -> None:
    data = encode(value)
    decoded, spans = decode_with_spans(data)
    assert decoded == value
    assert set(spans) == set(value)
    previous_end = 1
    for key in sorted(value):
        start, end = spans[key]
        assert data[start:end] == encode(value[key])
        assert start == previous_end + len(encode(key))  # the key's own encoding sits right before
        previous_end = end
    assert previous_end == len(data) - 1


def test_spans_in_lenient_mode_follow_the_file_order() -> None:
    data = b"d4:infod1:xi1ee1:ai2ee"
    decoded, spans = decode_with_spans(data, sorted_keys=False)
    assert list(decoded) == [b"info", b"a"]
    start, end = spans[b"info"]
    assert data[start:end] == b"d1:xi1ee"


@pytest.mark.parametrize(
    "data",
    [b"le", b"i1e", b"1:a", b"", b"d1:ai1e", b"d1:ai1eee"],
)
def test_decode_with_spans_wants_one_whole_dictionary(data: bytes) -> None:
    with pytest.raises(BencodeError):
        decode_with_spans(data)


@pytest.mark.parametrize(
    "value",
    [True, False, "text", 1.5, None, {"str key": 1}, {1: b"int key"}, [1, True], {b"k": [b"ok", "nested str"]}, {1, 2}],
)
def test_encode_refuses_what_bencode_cannot_represent(value: object) -> None:
    with pytest.raises(BencodeEncodeError):
        encode(value)


def test_encode_sorts_keys_and_accepts_byte_like_and_tuples() -> None:
    assert encode({b"b": 1, b"a": 2}) == b"d1:ai2e1:bi1ee"
    assert encode((bytearray(b"ab"), memoryview(b"c"))) == b"l2:ab1:ce"
    assert encode(-42) == b"i-42e"


def test_encode_refuses_what_decode_would_refuse() -> None:
    nested: Value = []
    for _ in range(MAX_DEPTH - 1):  # MAX_DEPTH lists in all: the deepest the decoder reads
        nested = [nested]
    assert decode(encode(nested)) == nested
    with pytest.raises(BencodeEncodeError, match="nested deeper"):
        encode([nested])


def test_encode_refuses_integers_decode_would_refuse() -> None:
    with pytest.raises(BencodeEncodeError, match="longer than"):
        encode(10**300)
    with pytest.raises(BencodeEncodeError, match="longer than"):
        encode(-(10**256))
    assert decode(encode(10**256 - 1)) == 10**256 - 1


def test_integer_digit_cap_is_exact() -> None:
    widest = 10**256 - 1  # 256 digits
    assert decode(encode(widest)) == widest
    assert decode(encode(-widest)) == -widest
    with pytest.raises(BencodeError, match="longer than"):
        decode(b"i1" + b"0" * 256 + b"e")
