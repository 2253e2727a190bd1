"""core/announce.py: HTTP announce URLs and responses, UDP packets, timing helpers."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import random
import struct
from urllib.parse import unquote_to_bytes, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core import bencode
from jstorrent_cli.core.announce import (
    PEER_ID_PREFIX,
    UDP_PROTOCOL_ID,
    AnnounceEvent,
    AnnounceRequest,
    ScrapeEntry,
    TrackerFailure,
    TransactionMismatch,
    UdpTrackerState,
    build_http_scrape_url,
    build_http_url,
    build_udp_announce,
    build_udp_connect,
    build_udp_scrape,
    make_key,
    make_peer_id,
    make_transaction_id,
    parse_http_response,
    parse_http_scrape,
    parse_udp_announce,
    parse_udp_connect,
    parse_udp_scrape,
    parse_udp_url,
    scrape_url,
    udp_retransmit_schedule,
)
from jstorrent_cli.errors import TrackerError

CONFIG = DEFAULT_CONFIG
INFO_HASH = bytes(range(20))
PEER_ID = b"-JS0100-" + b"\x00\xff &?=%#+/\n\x7f"
UNRESERVED = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def request(**changes: object) -> AnnounceRequest:
    base = AnnounceRequest(
        info_hash=INFO_HASH, peer_id=PEER_ID, port=6881, uploaded=1, downloaded=2, left=3, key=0x1234ABCD
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def query_params(url: str) -> list[tuple[str, bytes]]:
    query = urlsplit(url).query
    out = []
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        out.append((name, unquote_to_bytes(value)))
    return out


def compact(peers: list[tuple[str, int]]) -> bytes:
    return b"".join(ipaddress.ip_address(host).packed + port.to_bytes(2, "big") for host, port in peers)


def response(**fields: object) -> bytes:
    body: dict[bytes, object] = {b"interval": 1800}
    body.update({key.replace("_", " ").encode(): value for key, value in fields.items()})
    return bencode.encode(body)


# --- identity ------------------------------------------------------------------------------------


def test_peer_id_is_bep20_prefix_plus_random_tail() -> None:
    a = make_peer_id(random.Random(1).randbytes)
    b = make_peer_id(random.Random(2).randbytes)
    assert a.startswith(b"-JS0100-") and len(a) == 20
    assert a == make_peer_id(random.Random(1).randbytes)  # the random source decides the tail
    assert a[8:] != b[8:]
    assert a[8:] == random.Random(1).randbytes(12)


def test_peer_id_refuses_a_short_random_source() -> None:
    with pytest.raises(ValueError):
        make_peer_id(lambda n: b"x" * (n - 1))


def test_key_and_transaction_ids_are_32_bit_from_the_source() -> None:
    assert make_key(lambda n: b"\xff" * n) == 0xFFFFFFFF
    assert make_transaction_id(lambda n: b"\x00\x00\x01\x02") == 0x0102


def test_request_validates_its_fields() -> None:
    with pytest.raises(ValueError):
        request(info_hash=b"short")
    with pytest.raises(ValueError):
        request(peer_id=b"x" * 21)
    with pytest.raises(ValueError):
        request(port=70000)
    with pytest.raises(ValueError):
        request(key=2**32)


# --- HTTP request --------------------------------------------------------------------------------


def test_http_url_carries_every_parameter() -> None:
    url = build_http_url("http://tracker.example/announce", request(event=AnnounceEvent.STARTED, numwant=50))
    params = dict(query_params(url))
    assert url.startswith("http://tracker.example/announce?")
    assert params[b"info_hash".decode()] == INFO_HASH
    assert params["peer_id"] == PEER_ID
    assert params["port"] == b"6881"
    assert (params["uploaded"], params["downloaded"], params["left"]) == (b"1", b"2", b"3")
    assert params["compact"] == b"1"
    assert params["numwant"] == b"50"
    assert params["key"] == b"1234ABCD"
    assert params["event"] == b"started"
    assert "trackerid" not in params and "ip" not in params


def test_http_url_without_event_sends_no_event_and_passes_tracker_id() -> None:
    url = build_http_url("http://t/announce", request(tracker_id=b"id &1"))
    params = dict(query_params(url))
    assert "event" not in params
    assert params["trackerid"] == b"id &1"


def test_http_url_keeps_the_trackers_own_query_first_and_drops_the_fragment() -> None:
    url = build_http_url("https://t:8443/a/announce.php?passkey=a%20b&x=1#top", request())
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == ("https", "t:8443", "/a/announce.php", "")
    assert parts.query.startswith("passkey=a%20b&x=1&info_hash=")


@settings(max_examples=200, deadline=None)
@given(info_hash=st.binary(min_size=20, max_size=20), tail=st.binary(min_size=12, max_size=12))
def test_http_url_percent_encodes_binary_values_losslessly(info_hash: bytes, tail: bytes) -> None:
    url = build_http_url("http://t/announce", request(info_hash=info_hash, peer_id=PEER_ID_PREFIX + tail))
    query = urlsplit(url).query
    # Only unreserved characters, `%` escapes and the separators appear.
    assert set(query.encode()) <= UNRESERVED | set(b"%&=")
    params = dict(query_params(url))
    assert params["info_hash"] == info_hash
    assert params["peer_id"] == PEER_ID_PREFIX + tail


def test_scrape_url_follows_bep48() -> None:
    assert scrape_url("http://example.com/announce") == "http://example.com/scrape"
    assert scrape_url("http://example.com/x/announce.php?k=v") == "http://example.com/x/scrape.php?k=v"
    assert scrape_url("http://example.com/a") is None
    assert scrape_url("http://example.com/announce/x") is None
    url = build_http_scrape_url("http://example.com/scrape", [b"a" * 20, b"\x00" * 20])
    assert [value for _name, value in query_params(url)] == [b"a" * 20, b"\x00" * 20]


def test_http_scrape_response_parses_files() -> None:
    body = bencode.encode(
        {b"files": {b"x" * 20: {b"complete": 11, b"downloaded": 13772, b"incomplete": 19}, b"short": {}}}
    )
    assert parse_http_scrape(body) == {b"x" * 20: ScrapeEntry(seeders=11, completed=13772, leechers=19)}
    with pytest.raises(TrackerError):
        parse_http_scrape(bencode.encode({b"nofiles": 1}))


# --- HTTP response -------------------------------------------------------------------------------


def test_compact_peers_and_counters() -> None:
    peers = [("10.0.0.1", 6881), ("192.168.1.20", 51413)]
    body = response(peers=compact(peers), complete=5, incomplete=7, tracker_id=b"T1", min_interval=60)
    parsed = parse_http_response(body, CONFIG)
    assert parsed.peers == tuple(peers)
    assert parsed.interval == 1800.0 and parsed.min_interval == 60.0
    assert (parsed.complete, parsed.incomplete, parsed.tracker_id) == (5, 7, b"T1")
    assert parsed.warning is None and parsed.peers_dropped == 0


def test_dictionary_peers_take_address_literals_only() -> None:
    peers = [
        {b"ip": b"10.0.0.1", b"port": 1000, b"peer id": b"p" * 20},
        {b"ip": b"2001:db8::1", b"port": 2000},
        {b"ip": b"tracker-says-resolve-me.example", b"port": 3000},
        {b"ip": b"10.0.0.2"},
        {b"ip": b"10.0.0.3", b"port": 0},
        b"not a dict",
    ]
    parsed = parse_http_response(response(peers=peers), CONFIG)
    assert parsed.peers == (("10.0.0.1", 1000), ("2001:db8::1", 2000))
    assert parsed.peers_dropped == 4


def test_peers6_follow_the_ipv4_peers() -> None:
    body = response(peers=compact([("1.2.3.4", 1)]), peers6=compact([("2001:db8::7", 6881)]))
    assert parse_http_response(body, CONFIG).peers == (("1.2.3.4", 1), ("2001:db8::7", 6881))


def test_port_zero_and_duplicates_are_dropped() -> None:
    body = response(peers=compact([("1.1.1.1", 0), ("2.2.2.2", 5), ("2.2.2.2", 5), ("2.2.2.2", 6)]))
    parsed = parse_http_response(body, CONFIG)
    assert parsed.peers == (("2.2.2.2", 5), ("2.2.2.2", 6))
    assert parsed.peers_dropped == 2


def test_failure_reason_is_a_tracker_failure_with_the_reason() -> None:
    body = bencode.encode({b"failure reason": b"torrent not registered"})
    with pytest.raises(TrackerFailure) as info:
        parse_http_response(body, CONFIG)
    assert info.value.reason == "torrent not registered"
    assert "torrent not registered" in str(info.value)
    assert isinstance(info.value, TrackerError)


def test_warning_message_is_kept() -> None:
    parsed = parse_http_response(response(warning_message=b"slow down", peers=b""), CONFIG)
    assert parsed.warning == "slow down"


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502 Bad Gateway</html>",
        b"",
        b"d8:intervali1800e",  # truncated
        b"li1ee",  # not a dictionary
        b"d8:intervali1800e5:peers7:1234567e",  # compact list of the wrong length
        b"d8:intervali1800e6:peers617:12345678901234567e",
        b"d8:intervali-5e5:peers0:e",  # negative interval
        b"d8:interval3:abc5:peers0:e",  # interval of the wrong type
        b"d8:intervali1800e5:peersi3ee",  # peers of the wrong type
    ],
)
def test_nonsense_is_a_tracker_error(body: bytes) -> None:
    with pytest.raises(TrackerError):
        parse_http_response(body, CONFIG)


def test_unsorted_keys_are_accepted_duplicates_are_not() -> None:
    unsorted = b"d5:peers6:\x01\x02\x03\x04\x00\x058:intervali900ee"
    assert parse_http_response(unsorted, CONFIG).peers == (("1.2.3.4", 5),)
    with pytest.raises(TrackerError):
        parse_http_response(b"d8:intervali900e8:intervali900ee", CONFIG)


def test_intervals_are_bounded_by_config() -> None:
    assert parse_http_response(response(interval=1), CONFIG).interval == CONFIG.min_announce_interval
    assert parse_http_response(response(interval=10**12), CONFIG).interval == CONFIG.max_announce_interval
    missing = parse_http_response(bencode.encode({b"peers": b""}), CONFIG)
    assert missing.interval == CONFIG.default_announce_interval and missing.min_interval is None


def test_a_hundred_thousand_peers_are_truncated_to_the_cap() -> None:
    peers = b"".join(n.to_bytes(4, "big") + b"\x1a\xe1" for n in range(1, 100_001))
    small = dataclasses.replace(CONFIG, max_peers_per_response=500)
    parsed = parse_http_response(response(peers=peers), small)
    assert len(parsed.peers) == 500
    assert parsed.peers[0] == ("0.0.0.1", 6881) and parsed.peers[-1] == ("0.0.1.244", 6881)
    assert parsed.peers_dropped == 100_000 - 500


def test_cap_covers_peers_and_peers6_together() -> None:
    small = dataclasses.replace(CONFIG, max_peers_per_response=3)
    body = response(peers=compact([("1.1.1.1", 1), ("1.1.1.2", 1)]), peers6=compact([("::1", 1), ("::2", 1)]))
    parsed = parse_http_response(body, small)
    assert parsed.peers == (("1.1.1.1", 1), ("1.1.1.2", 1), ("::1", 1))
    assert parsed.peers_dropped == 1


def test_body_over_the_size_cap_is_refused() -> None:
    small = dataclasses.replace(CONFIG, max_tracker_response=100)
    with pytest.raises(TrackerError):
        parse_http_response(response(peers=b"\x01" * 600), small)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.ip_addresses(v=4).map(str), st.integers(1, 65535)),
        max_size=40,
        unique=True,
    )
)
def test_compact_peer_lists_round_trip(peers: list[tuple[str, int]]) -> None:
    assert parse_http_response(response(peers=compact(peers)), CONFIG).peers == tuple(peers)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bodies_only_raise_tracker_error(body: bytes) -> None:
    with contextlib.suppress(TrackerError):
        parse_http_response(body, CONFIG)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([b"interval", b"min interval", b"peers", b"peers6", b"complete", b"tracker id"]),
        st.one_of(st.integers(-5, 10**6), st.binary(max_size=40), st.lists(st.integers(), max_size=3)),
    )
)
def test_random_well_formed_dictionaries_only_raise_tracker_error(fields: dict[bytes, object]) -> None:
    try:
        parsed = parse_http_response(bencode.encode(fields), CONFIG)
    except TrackerError:
        return
    assert CONFIG.min_announce_interval <= parsed.interval <= CONFIG.max_announce_interval
    assert all(0 < port < 65536 for _host, port in parsed.peers)


# --- UDP -----------------------------------------------------------------------------------------


def test_udp_url_parts() -> None:
    address = parse_udp_url("udp://tracker.example:1337/dir?a=b&c=d")
    assert (address.host, address.port, address.url_data) == ("tracker.example", 1337, b"/dir?a=b&c=d")
    assert parse_udp_url("udp://[::1]:80").host == "::1"
    assert parse_udp_url("udp://h:80").url_data == b""
    for bad in ("udp://noport", "http://h:80/announce", "udp://h:notaport", "udp://:80"):
        with pytest.raises(TrackerError):
            parse_udp_url(bad)


def test_connect_request_layout() -> None:
    assert build_udp_connect(0xCAFEBABE) == struct.pack(">QII", UDP_PROTOCOL_ID, 0, 0xCAFEBABE)
    assert build_udp_connect(7)[:8] == bytes.fromhex("0000041727101980")


def test_connect_response_checks() -> None:
    good = struct.pack(">IIQ", 0, 99, 0x1122334455667788)
    assert parse_udp_connect(good, 99) == 0x1122334455667788
    assert parse_udp_connect(good + b"future extension", 99) == 0x1122334455667788
    with pytest.raises(TransactionMismatch):
        parse_udp_connect(good, 98)
    with pytest.raises(TrackerError):
        parse_udp_connect(good[:15], 99)
    with pytest.raises(TrackerError):
        parse_udp_connect(struct.pack(">IIQ", 1, 99, 5), 99)  # announce action in a connect reply
    with pytest.raises(TrackerFailure) as info:
        parse_udp_connect(struct.pack(">II", 3, 99) + b"go away", 99)
    assert info.value.reason == "go away"


def test_transaction_mismatch_is_checked_before_the_action() -> None:
    # An error packet for someone else's transaction must not fail ours.
    with pytest.raises(TransactionMismatch):
        parse_udp_connect(struct.pack(">II", 3, 1) + b"not yours", 2)


@pytest.mark.parametrize(
    ("event", "code"),
    [(None, 0), (AnnounceEvent.COMPLETED, 1), (AnnounceEvent.STARTED, 2), (AnnounceEvent.STOPPED, 3)],
)
def test_announce_request_layout(event: AnnounceEvent | None, code: int) -> None:
    req = request(event=event, uploaded=10, downloaded=20, left=30, numwant=-1, port=51413, ip="10.1.2.3")
    packet = build_udp_announce(0xABCDEF, 42, req)
    assert len(packet) == 98
    fields = struct.unpack(">QII20s20sQQQIIIiH", packet)
    assert fields == (0xABCDEF, 1, 42, INFO_HASH, PEER_ID, 20, 30, 10, code, 0x0A010203, 0x1234ABCD, -1, 51413)


def test_announce_request_leaves_a_non_ipv4_ip_at_zero() -> None:
    packet = build_udp_announce(1, 2, request(ip="2001:db8::1"))
    assert packet[84:88] == b"\x00\x00\x00\x00"


def test_bep41_url_data_options() -> None:
    packet = build_udp_announce(1, 2, request(), b"/dir?a=b&c=d")
    assert packet[98:] == b"\x02\x0c/dir?a=b&c=d"
    long = b"/" + b"q" * 299
    options = build_udp_announce(1, 2, request(), long)[98:]
    assert options[:2] == b"\x02\xff" and options[2:257] == long[:255]
    assert options[257:259] == bytes((2, 45)) and options[259:] == long[255:]
    assert build_udp_announce(1, 2, request(), b"")[98:] == b""


def test_announce_response_ipv4_and_ipv6() -> None:
    head = struct.pack(">IIIII", 1, 5, 1200, 3, 4)
    v4 = parse_udp_announce(head + compact([("127.0.0.2", 6881), ("10.0.0.1", 1)]), 5, ipv6=False, config=CONFIG)
    assert v4.peers == (("127.0.0.2", 6881), ("10.0.0.1", 1))
    assert (v4.interval, v4.incomplete, v4.complete) == (1200.0, 3, 4)
    v6 = parse_udp_announce(head + compact([("::1", 6881)]), 5, ipv6=True, config=CONFIG)
    assert v6.peers == (("::1", 6881),)
    with pytest.raises(TrackerError):  # 12 bytes: two IPv4 entries, not a whole IPv6 one
        parse_udp_announce(head + b"\x00" * 12, 5, ipv6=True, config=CONFIG)
    with pytest.raises(TrackerError):
        parse_udp_announce(head + b"\x00" * 7, 5, ipv6=False, config=CONFIG)
    with pytest.raises(TransactionMismatch):
        parse_udp_announce(head, 6, ipv6=False, config=CONFIG)
    with pytest.raises(TrackerError):
        parse_udp_announce(head[:19], 5, ipv6=False, config=CONFIG)


def test_announce_response_interval_and_cap() -> None:
    small = dataclasses.replace(CONFIG, max_peers_per_response=2)
    peers = compact([("1.0.0.1", 1), ("1.0.0.2", 2), ("1.0.0.3", 3)])
    parsed = parse_udp_announce(struct.pack(">IIIII", 1, 5, 0, 0, 0) + peers, 5, ipv6=False, config=small)
    assert parsed.interval == CONFIG.min_announce_interval
    assert parsed.peers == (("1.0.0.1", 1), ("1.0.0.2", 2)) and parsed.peers_dropped == 1


def test_scrape_request_and_response() -> None:
    hashes = [b"a" * 20, b"b" * 20]
    packet = build_udp_scrape(77, 8, hashes)
    assert packet == struct.pack(">QII", 77, 2, 8) + b"a" * 20 + b"b" * 20
    reply = struct.pack(">II", 2, 8) + struct.pack(">III", 1, 2, 3) + struct.pack(">III", 4, 5, 6)
    assert parse_udp_scrape(reply, 8, 2) == (ScrapeEntry(1, 2, 3), ScrapeEntry(4, 5, 6))
    with pytest.raises(TrackerError):
        parse_udp_scrape(reply[:-1], 8, 2)
    with pytest.raises(TransactionMismatch):
        parse_udp_scrape(reply, 9, 2)
    with pytest.raises(ValueError):
        build_udp_scrape(1, 1, [b"a" * 20] * 75)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 2**32 - 1))
def test_random_datagrams_only_raise_tracker_error(data: bytes, tid: int) -> None:
    for parse in (
        lambda: parse_udp_connect(data, tid),
        lambda: parse_udp_announce(data, tid, ipv6=False, config=CONFIG),
        lambda: parse_udp_announce(data, tid, ipv6=True, config=CONFIG),
        lambda: parse_udp_scrape(data, tid, 2),
    ):
        with contextlib.suppress(TrackerError):
            parse()


# --- UDP timing ----------------------------------------------------------------------------------


def test_retransmit_schedule_doubles_and_is_bounded() -> None:
    config = dataclasses.replace(CONFIG, udp_initial_timeout=1.5, udp_max_tries=4)
    assert udp_retransmit_schedule(config) == (1.5, 3.0, 6.0, 12.0)
    assert udp_retransmit_schedule(dataclasses.replace(config, udp_max_tries=1)) == (1.5,)
    assert sum(udp_retransmit_schedule(CONFIG)) < 120  # a command-line tool gives up in minutes, not hours


def test_connection_id_lifetime() -> None:
    state = UdpTrackerState(dataclasses.replace(CONFIG, udp_connection_id_lifetime=60.0))
    assert state.needs_connect(0.0) and state.connection_id(0.0) is None
    state.connected(0xDEAD, now=100.0)
    assert state.connection_id(100.0) == 0xDEAD
    assert state.connection_id(159.9) == 0xDEAD and not state.needs_connect(159.9)
    assert state.connection_id(160.0) is None and state.needs_connect(160.0)
    state.connected(0xBEEF, now=200.0)
    assert state.connection_id(201.0) == 0xBEEF
    state.forget()
    assert state.needs_connect(201.0)
