"""Hostile input: every decoder that faces the network or the user, fuzzed with hypothesis.

Each target feeds arbitrary and mutated-valid inputs to one decoder and asserts the only outcomes are
a value or the module's own error type (anything else - IndexError, struct.error, RecursionError,
UnicodeDecodeError, ValueError, a hang - is a bug).

CI runs FUZZ_EXAMPLES (default 200) examples per target. A long campaign:

    JSTORRENT_FUZZ_EXAMPLES=100000 .venv/bin/python -m pytest tests/fuzz -q -s -p no:cacheprovider --timeout=0

(`--timeout=0` lifts pytest-timeout's 300 s per test: at 20,000 examples the bencode target takes
~200 s alone and longer on a busy machine; hitting the timeout shows up as a hypothesis FlakyFailure.)

Each target records how many inputs it ran in `RUNS` and prints it at the end of the session
(`-s` shows it); docs/reliability.md lists the figures of the last long run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import struct
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import DEFAULT_CONFIG, KiB
from jstorrent_cli.core import announce, bencode, magnet, metainfo, resume, selection, wire
from jstorrent_cli.errors import (
    BencodeError,
    MagnetError,
    MetainfoError,
    RemoteProtocolError,
    TrackerError,
    UsageError,
)

FUZZ_EXAMPLES = int(os.environ.get("JSTORRENT_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    database=None,
)
RUNS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_runs() -> Iterator[None]:
    yield
    if RUNS:
        print("\nfuzz inputs per target: " + ", ".join(f"{k}={v}" for k, v in sorted(RUNS.items())))


# --- strategies ---------------------------------------------------------------------------------

bvalues: st.SearchStrategy[bencode.Value] = st.recursive(
    st.integers(min_value=-(2**70), max_value=2**70) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.binary(max_size=12), children, max_size=5),
    max_leaves=20,
)


def _torrent_bytes(files: int, piece_length: int) -> bytes:
    payload = bytes(range(256)) * (files * 40)
    hashes = b"".join(hashlib.sha1(payload[i : i + piece_length]).digest()
                      for i in range(0, len(payload), piece_length))
    per = len(payload) // files
    info: dict[bytes, bencode.Value] = {
        b"name": b"seed",
        b"piece length": piece_length,
        b"pieces": hashes,
        b"files": [{b"length": per + (len(payload) - per * files if i == files - 1 else 0),
                    b"path": [b"d", f"f{i}".encode()]} for i in range(files)],
    }
    return bencode.encode({b"announce": b"http://t/a", b"info": info})


SEED_TORRENTS = [_torrent_bytes(1, 16 * KiB), _torrent_bytes(3, 16 * KiB)]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid input with a few bytes flipped, inserted, deleted, or cut short."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "digit"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        elif op == "digit" and data:
            data[pos : pos + 1] = draw(st.sampled_from([b"9", b"0", b"-", b"99999999999", b"e", b":"]))
    return bytes(data)


def _check(target: str, call: Callable[[], object], *allowed: type[BaseException]) -> None:
    RUNS[target] += 1
    with contextlib.suppress(*allowed):
        call()


# --- bencode ------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300) | st.builds(bencode.encode, bvalues).flatmap(lambda b: mutated([b])))
def test_bencode_decode_raises_only_bencode_error(data: bytes) -> None:
    _check("bencode", lambda: bencode.decode(data, max_depth=16), BencodeError)
    _check("bencode", lambda: bencode.decode(data, sorted_keys=False), BencodeError)
    _check("bencode", lambda: bencode.decode_with_spans(data), BencodeError)


@FUZZ
@given(bvalues)
def test_bencode_round_trips_every_value(value: bencode.Value) -> None:
    RUNS["bencode-roundtrip"] += 1
    assert bencode.decode(bencode.encode(value)) == value


def test_bencode_deep_nesting_is_an_error_not_a_recursion() -> None:
    with pytest.raises(BencodeError):
        bencode.decode(b"l" * 100_000 + b"e" * 100_000)


# --- metainfo -----------------------------------------------------------------------------------


@FUZZ
@given(mutated(SEED_TORRENTS) | st.binary(max_size=200)
       | st.builds(lambda v: bencode.encode({b"info": v}), bvalues))
def test_metainfo_parse_raises_only_metainfo_error(data: bytes) -> None:
    _check("metainfo", lambda: metainfo.parse(data), MetainfoError)


# --- wire ---------------------------------------------------------------------------------------

INFO_HASH = b"\x11" * 20
OUR_ID, THEIR_ID = b"-JS0000-" + b"o" * 12, b"-XX0000-" + b"t" * 12


def _frame(msg_id: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, msg_id) + body


wire_messages = st.one_of(
    st.builds(lambda i, b: _frame(i, b), st.integers(0, 30), st.binary(max_size=20)),
    st.builds(lambda i: _frame(wire.MSG_HAVE, struct.pack(">I", i)), st.integers(0, 2**32 - 1)),
    st.builds(lambda i, b, n: _frame(wire.MSG_REQUEST, struct.pack(">III", i, b, n)),
              st.integers(0, 12), st.integers(0, 2**32 - 1), st.integers(0, 2**20)),
    st.builds(lambda i, b, d: _frame(wire.MSG_PIECE, struct.pack(">II", i, b) + d),
              st.integers(0, 12), st.integers(0, 70_000), st.binary(max_size=64)),
    st.builds(lambda n: struct.pack(">I", n), st.integers(0, 2**32 - 1)),
    st.builds(lambda b: _frame(wire.MSG_BITFIELD, b), st.binary(max_size=4)),
    st.builds(lambda b: _frame(wire.MSG_EXTENDED, b"\x00" + bencode.encode(b)), bvalues),
    st.binary(max_size=30),
)


@FUZZ
@given(st.lists(wire_messages, max_size=12), st.lists(st.integers(1, 40), max_size=8))
def test_wire_decoder_raises_only_remote_protocol_error(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts)
    decoder = wire.Decoder(DEFAULT_CONFIG, num_pieces=10, expect_handshake=False)
    RUNS["wire-decoder"] += 1
    pos = 0
    try:
        for cut in [*cuts, len(stream)]:
            decoder.feed(stream[pos : pos + cut])
            pos += cut
            assert decoder.buffered <= DEFAULT_CONFIG.max_message_length + 4 + DEFAULT_CONFIG.block_size
    except RemoteProtocolError:
        pass


@FUZZ
@given(st.booleans(), st.booleans(), st.lists(wire_messages, max_size=12), st.integers(1, 97))
def test_peer_protocol_raises_only_remote_protocol_error(
    fast: bool, extended: bool, parts: list[bytes], cut: int
) -> None:
    proto = wire.PeerProtocol(INFO_HASH, OUR_ID, 10, 32 * KiB, 9 * 32 * KiB + 5, DEFAULT_CONFIG)
    proto.send_handshake()
    handshake = wire.encode_handshake(wire.Handshake(INFO_HASH, THEIR_ID, supports_extended=extended,
                                                     supports_fast=fast))
    stream = handshake + b"".join(parts)
    RUNS["wire-protocol"] += 1
    try:
        for pos in range(0, len(stream), cut):
            for msg in proto.receive_data(stream[pos : pos + cut]):
                if isinstance(msg, wire.Have):
                    assert msg.index < 10
                if isinstance(msg, wire.Piece | wire.Request):
                    assert msg.index < 10
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):  # and it stays failed
            proto.receive_data(b"\x00\x00\x00\x00")


@FUZZ
@given(st.binary(max_size=80))
def test_handshake_garbage_raises_only_remote_protocol_error(data: bytes) -> None:
    proto = wire.PeerProtocol(INFO_HASH, OUR_ID, 10, 32 * KiB, 9 * 32 * KiB + 5, DEFAULT_CONFIG)
    proto.send_handshake()
    _check("wire-handshake", lambda: proto.receive_data(wire._HANDSHAKE_PREFIX[:data[0] % 21] + data if data else b""),
           RemoteProtocolError)


# --- trackers -----------------------------------------------------------------------------------

_tracker_dicts = st.fixed_dictionaries(
    {},
    optional={
        b"interval": st.integers(-(2**40), 2**40) | st.binary(max_size=4),
        b"min interval": st.integers(-(2**40), 2**40),
        b"peers": st.binary(max_size=60) | st.lists(
            st.fixed_dictionaries({}, optional={b"ip": st.binary(max_size=40), b"port": st.integers(-5, 70000),
                                                b"peer id": st.binary(max_size=21)}) | bvalues, max_size=6),
        b"peers6": st.binary(max_size=60) | bvalues,
        b"failure reason": st.binary(max_size=20) | bvalues,
        b"warning message": st.binary(max_size=20) | bvalues,
        b"complete": st.integers(-5, 2**40) | bvalues,
        b"incomplete": st.integers(-5, 2**40) | bvalues,
    },
)


@FUZZ
@given(st.builds(bencode.encode, _tracker_dicts).flatmap(lambda b: st.just(b) | mutated([b]))
       | st.binary(max_size=120) | st.builds(bencode.encode, bvalues))
def test_http_tracker_response_raises_only_tracker_error(body: bytes) -> None:
    _check("tracker-http", lambda: announce.parse_http_response(body), TrackerError)
    _check("tracker-http", lambda: announce.parse_http_scrape(body), TrackerError)


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 2**32 - 1), st.booleans(), st.integers(1, 5),
       st.sampled_from([0, 1, 2, 3]))
def test_udp_tracker_replies_raise_only_tracker_error(data: bytes, tid: int, ipv6: bool, count: int,
                                                      action: int) -> None:
    framed = struct.pack(">II", action, tid) + data  # most replies pass the header check and reach the body
    for packet in (data, framed):
        _check("tracker-udp", functools.partial(announce.parse_udp_connect, packet, tid), TrackerError)
        _check("tracker-udp", functools.partial(announce.parse_udp_announce, packet, tid, ipv6=ipv6), TrackerError)
        _check("tracker-udp", functools.partial(announce.parse_udp_scrape, packet, tid, count), TrackerError)


# --- magnet URIs --------------------------------------------------------------------------------

_magnet_params = st.lists(
    st.tuples(st.sampled_from(["xt", "dn", "tr", "x.pe", "ws", "so", "xl", "kt", "xt.1", "", "as"]),
              st.sampled_from(["urn:btih:" + "a" * 40, "urn:btih:" + "A" * 32, "urn:btmh:1220" + "0" * 64,
                               "127.0.0.1:80", "[::1]:6881", "1-3,5", "%zz", "%E2%82", "http://x/a"])
              | st.text(max_size=50)),
    max_size=8,
)


@FUZZ
@given(st.text(max_size=120) | _magnet_params.map(lambda ps: "magnet:?" + "&".join(f"{k}={v}" for k, v in ps)))
def test_magnet_parse_raises_only_magnet_error(uri: str) -> None:
    _check("magnet", lambda: magnet.parse_magnet(uri), MagnetError)


# --- resume state -------------------------------------------------------------------------------

_RESUME_SEEDS = [
    resume.encode(resume.ResumeState.make(b"\x22" * 20, 37, [0, 5, 36], [resume.FileStat(100, 123)])),
]


@FUZZ
@given(mutated(_RESUME_SEEDS) | st.binary(max_size=100) | st.builds(bencode.encode, bvalues))
def test_resume_decode_raises_only_resume_state_error(data: bytes) -> None:
    _check("resume", lambda: resume.decode(data), resume.ResumeStateError)


# --- --select-file ------------------------------------------------------------------------------


@FUZZ
@given(st.text(alphabet="0123456789,- \t+x", max_size=30) | st.text(max_size=20), st.integers(1, 50),
       st.data())
def test_select_file_parser_raises_only_usage_error(text: str, count: int, data: st.DataObject) -> None:
    pads = data.draw(st.lists(st.booleans(), min_size=count, max_size=count))
    RUNS["select-file"] += 1
    try:
        chosen = selection.parse_select_file(text, count, pads)
    except UsageError:
        return
    assert chosen, "an empty selection must be a UsageError"
    assert all(0 <= i < count and not pads[i] for i in chosen)
