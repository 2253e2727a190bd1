"""Tracker announces without sockets: HTTP URLs and responses, UDP packets (BEP 3, 7, 15, 20, 23, 41, 48).

Everything here is pure: bytes and numbers in, bytes and dataclasses out; time is a float argument and
randomness an injected `randbytes(n) -> bytes` source. The Trio side lives in tasks/tracker.py.

Untrusted input (a tracker's HTTP body or UDP datagram) only ever raises TrackerError (or one of its
subclasses below). Memory stays bounded: the caller caps the HTTP body at Config.max_tracker_response
before it gets here, and at most Config.max_peers_per_response peers are ever materialised.

Decision on key order: tracker responses are decoded with `sorted_keys=False`. Canonical bencode sorts
dictionary keys, but hand-written tracker scripts have been seen to emit them in insertion order, and an
out-of-order key carries no ambiguity (duplicates, which do, are still refused).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import struct
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import quote_from_bytes, urlsplit, urlunsplit

from jstorrent_cli.config import DEFAULT_CONFIG, Config
from jstorrent_cli.core import bencode
from jstorrent_cli.errors import BencodeError, TrackerError

Peer = tuple[str, int]
RandBytes = Callable[[int], bytes]

INFO_HASH_LENGTH = 20
PEER_ID_LENGTH = 20
# BEP 20, Azureus style: dash, two letters for the client, four digits of version, dash.
PEER_ID_PREFIX = b"-JS0100-"

# Compact peer entries: BEP 23 (IPv4 address + port) and BEP 7 (IPv6 address + port).
COMPACT_V4_LENGTH = 6
COMPACT_V6_LENGTH = 18
_MAX_PORT = 0xFFFF

# BEP 15 wire constants.
UDP_PROTOCOL_ID = 0x41727101980
UDP_ACTION_CONNECT = 0
UDP_ACTION_ANNOUNCE = 1
UDP_ACTION_SCRAPE = 2
UDP_ACTION_ERROR = 3
# BEP 15: "up to about 74 torrents can be scraped at once".
UDP_SCRAPE_MAX_HASHES = 74
# BEP 41 option types.
_OPTION_URL_DATA = 0x02
_OPTION_MAX_DATA = 255

_CONNECT_REQUEST = struct.Struct(">QII")  # protocol_id, action, transaction_id
_HEADER = struct.Struct(">II")  # action, transaction_id
_CONNECT_RESPONSE = struct.Struct(">IIQ")  # action, transaction_id, connection_id
# connection_id, action, transaction_id, info_hash, peer_id, downloaded, left, uploaded, event, ip, key,
# num_want, port
_ANNOUNCE_REQUEST = struct.Struct(">QII20s20sQQQIIIiH")
_ANNOUNCE_RESPONSE = struct.Struct(">IIIII")  # action, transaction_id, interval, leechers, seeders
_SCRAPE_REQUEST = struct.Struct(">QII")  # connection_id, action, transaction_id; then the info hashes
_SCRAPE_ENTRY = struct.Struct(">III")  # seeders, completed, leechers
_UINT32_MAX = 0xFFFFFFFF
_UINT64_MAX = 0xFFFFFFFFFFFFFFFF
_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


class AnnounceEvent(enum.Enum):
    """The `event` of an announce; None (no event) is the regular re-announce."""

    STARTED = "started"
    COMPLETED = "completed"
    STOPPED = "stopped"


# BEP 15 event codes: 0 none, 1 completed, 2 started, 3 stopped.
_UDP_EVENT_CODES: dict[AnnounceEvent | None, int] = {
    None: 0,
    AnnounceEvent.COMPLETED: 1,
    AnnounceEvent.STARTED: 2,
    AnnounceEvent.STOPPED: 3,
}


class TrackerFailure(TrackerError):
    """The tracker answered with a `failure reason` (HTTP) or an error packet (UDP)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"tracker refused: {reason}")
        self.reason = reason


class TransactionMismatch(TrackerError):
    """A UDP reply for some other transaction (stale, duplicated or forged): ignore it, keep waiting."""


@dataclasses.dataclass(frozen=True, slots=True)
class AnnounceRequest:
    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: AnnounceEvent | None = None
    numwant: int = DEFAULT_CONFIG.numwant
    key: int = 0  # 32 bits, the same for the whole session (BEP 7); see make_key
    compact: int = 1
    tracker_id: bytes | None = None
    ip: str | None = None

    def __post_init__(self) -> None:
        if len(self.info_hash) != INFO_HASH_LENGTH:
            raise ValueError(f"info_hash must be {INFO_HASH_LENGTH} bytes, not {len(self.info_hash)}")
        if len(self.peer_id) != PEER_ID_LENGTH:
            raise ValueError(f"peer_id must be {PEER_ID_LENGTH} bytes, not {len(self.peer_id)}")
        if not 0 <= self.port <= _MAX_PORT:
            raise ValueError(f"port {self.port} out of range")
        if not 0 <= self.key <= _UINT32_MAX:
            raise ValueError(f"key {self.key} is not a 32-bit unsigned value")
        for name in ("uploaded", "downloaded", "left"):
            if not 0 <= getattr(self, name) <= _UINT64_MAX:
                raise ValueError(f"{name} out of range")
        if not _INT32_MIN <= self.numwant <= _INT32_MAX:
            raise ValueError(f"numwant {self.numwant} out of range")


@dataclasses.dataclass(frozen=True, slots=True)
class AnnounceResponse:
    interval: float  # seconds until the next regular announce, already bounded by Config
    min_interval: float | None  # the tracker's "do not announce sooner than", bounded likewise
    peers: tuple[Peer, ...]  # (host, port): IPv4 first, then IPv6; no duplicates, no port 0
    peers_dropped: int = 0  # entries ignored: over the cap, port 0, duplicates, unusable addresses
    tracker_id: bytes | None = None
    complete: int | None = None  # seeders
    incomplete: int | None = None  # leechers
    warning: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ScrapeEntry:
    seeders: int  # BEP 48 "complete"
    completed: int  # BEP 48 "downloaded": how many ever finished
    leechers: int  # BEP 48 "incomplete"


# --- identity ------------------------------------------------------------------------------------


def make_peer_id(randbytes: RandBytes) -> bytes:
    """A BEP 20 style peer id: `-JS0100-` and 12 random bytes."""
    tail = randbytes(PEER_ID_LENGTH - len(PEER_ID_PREFIX))
    if len(tail) != PEER_ID_LENGTH - len(PEER_ID_PREFIX):
        raise ValueError("random source returned the wrong number of bytes")
    return PEER_ID_PREFIX + tail


def make_key(randbytes: RandBytes) -> int:
    """A 32-bit announce key (BEP 7: at least 32 bits of entropy, constant per torrent session)."""
    return int.from_bytes(randbytes(4), "big")


def make_transaction_id(randbytes: RandBytes) -> int:
    """A random 32-bit UDP transaction id (BEP 15)."""
    return int.from_bytes(randbytes(4), "big")


# --- shared response bounds ----------------------------------------------------------------------


def _bounded_interval(seconds: int, config: Config) -> float:
    return float(min(max(seconds, config.min_announce_interval), config.max_announce_interval))


def _format_address(address: bytes) -> str:
    """A packed IPv4 (4 bytes) or IPv6 (16 bytes) address as text."""
    if len(address) == 4:
        return ".".join(map(str, address))
    return str(ipaddress.IPv6Address(address))


class _PeerCollector:
    """Accumulates peers up to the cap, dropping port 0 and duplicates, counting what it dropped."""

    __slots__ = ("dropped", "limit", "peers", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.peers: list[Peer] = []
        self.seen: set[Peer] = set()
        self.dropped = 0

    @property
    def full(self) -> bool:
        return len(self.peers) >= self.limit

    def add(self, host: str, port: int) -> None:
        peer = (host, port)
        if self.full or port <= 0 or port > _MAX_PORT or peer in self.seen:
            self.dropped += 1
            return
        self.seen.add(peer)
        self.peers.append(peer)

    def add_compact(self, data: bytes, stride: int, what: str) -> None:
        if len(data) % stride:
            raise TrackerError(f"{what} peer list of {len(data)} bytes is not a multiple of {stride}")
        count = len(data) // stride
        unpacked = 0
        for offset in range(0, count * stride, stride):
            if self.full:
                break  # the rest is never unpacked: a 2 MiB list holds ~350,000 entries
            unpacked += 1
            address = data[offset : offset + stride - 2]
            port = int.from_bytes(data[offset + stride - 2 : offset + stride], "big")
            self.add(_format_address(address), port)
        self.dropped += count - unpacked


# --- HTTP (BEP 3, 7, 23, 48) ---------------------------------------------------------------------


def _query_pairs(req: AnnounceRequest) -> list[tuple[str, str]]:
    pairs = [
        ("info_hash", quote_from_bytes(req.info_hash, safe="")),
        ("peer_id", quote_from_bytes(req.peer_id, safe="")),
        ("port", str(req.port)),
        ("uploaded", str(req.uploaded)),
        ("downloaded", str(req.downloaded)),
        ("left", str(req.left)),
        ("compact", str(req.compact)),
        ("numwant", str(req.numwant)),
        ("key", f"{req.key:08X}"),
    ]
    if req.event is not None:
        pairs.append(("event", req.event.value))
    if req.tracker_id is not None:
        pairs.append(("trackerid", quote_from_bytes(req.tracker_id, safe="")))
    if req.ip is not None:
        pairs.append(("ip", quote_from_bytes(req.ip.encode("utf-8"), safe="")))
    return pairs


def _append_query(url: str, pairs: Iterable[tuple[str, str]]) -> str:
    try:
        parts = urlsplit(url)
    except ValueError as err:  # a torrent's URL is untrusted input too
        raise TrackerError(f"bad tracker URL {url!r}: {err}") from None
    ours = "&".join(f"{name}={value}" for name, value in pairs)
    query = f"{parts.query}&{ours}" if parts.query else ours
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def build_http_url(announce_url: str, req: AnnounceRequest) -> str:
    """The GET URL of an HTTP announce: the tracker's URL with our parameters appended.

    A query the tracker's URL already has (a passkey, say) is kept in front of ours; a fragment is
    dropped. Binary info_hash and peer_id are percent-encoded byte by byte. A URL that cannot be
    split raises TrackerError.
    """
    return _append_query(announce_url, _query_pairs(req))


def _decode_dict(body: bytes, config: Config, what: str) -> dict[bytes, bencode.Value]:
    try:
        value = bencode.decode(
            body, max_depth=config.bencode_max_depth, max_size=config.max_tracker_response, sorted_keys=False
        )
    except BencodeError as err:
        raise TrackerError(f"{what} is not bencode: {err}") from None
    if not isinstance(value, dict):
        raise TrackerError(f"{what} is not a bencoded dictionary")
    failure = value.get(b"failure reason")
    if failure is not None:
        text = failure.decode("utf-8", "replace") if isinstance(failure, bytes) else repr(failure)
        raise TrackerFailure(text)
    return value


def _optional_count(value: bencode.Value | None) -> int | None:
    """Informational counters: a missing or nonsensical one is just unknown."""
    if isinstance(value, int) and value >= 0:
        return value
    return None


def _interval_field(value: bencode.Value | None, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or value < 0:
        raise TrackerError(f"tracker sent an invalid {name}: {value!r:.40}")
    return value


def _add_dictionary_peers(peers: list[bencode.Value], collector: _PeerCollector) -> None:
    """BEP 3's original model: a list of {ip, port, peer id}. Entries we cannot use are dropped.

    `ip` may be a DNS name there; we only take address literals, so a tracker cannot make us resolve
    (or connect to) arbitrary names.
    """
    for entry in peers:
        if collector.full:
            collector.dropped += 1
            continue
        if not isinstance(entry, dict):
            collector.dropped += 1
            continue
        ip = entry.get(b"ip")
        port = entry.get(b"port")
        if not isinstance(ip, bytes) or not isinstance(port, int):
            collector.dropped += 1
            continue
        try:
            address = ipaddress.ip_address(ip.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            collector.dropped += 1
            continue
        collector.add(str(address), port)


def parse_http_response(body: bytes, config: Config = DEFAULT_CONFIG) -> AnnounceResponse:
    """Parse an HTTP tracker's announce answer. Raises TrackerError (TrackerFailure for `failure reason`)."""
    value = _decode_dict(body, config, "tracker response")
    interval = _interval_field(value.get(b"interval"), "interval")
    min_interval = _interval_field(value.get(b"min interval"), "min interval")
    collector = _PeerCollector(config.max_peers_per_response)
    peers = value.get(b"peers")
    if isinstance(peers, bytes):
        collector.add_compact(peers, COMPACT_V4_LENGTH, "compact")
    elif isinstance(peers, list):
        _add_dictionary_peers(peers, collector)
    elif peers is not None:
        raise TrackerError("tracker sent `peers` that is neither a string nor a list")
    peers6 = value.get(b"peers6")
    if isinstance(peers6, bytes):
        collector.add_compact(peers6, COMPACT_V6_LENGTH, "compact IPv6")
    elif peers6 is not None:
        raise TrackerError("tracker sent `peers6` that is not a string")
    tracker_id = value.get(b"tracker id")
    warning = value.get(b"warning message")
    return AnnounceResponse(
        interval=_bounded_interval(interval, config) if interval is not None else config.default_announce_interval,
        min_interval=_bounded_interval(min_interval, config) if min_interval is not None else None,
        peers=tuple(collector.peers),
        peers_dropped=collector.dropped,
        tracker_id=tracker_id if isinstance(tracker_id, bytes) and tracker_id else None,
        complete=_optional_count(value.get(b"complete")),
        incomplete=_optional_count(value.get(b"incomplete")),
        warning=warning.decode("utf-8", "replace") if isinstance(warning, bytes) else None,
    )


def scrape_url(announce_url: str) -> str | None:
    """BEP 48: the scrape URL is the announce URL with the last path segment's `announce` -> `scrape`.

    None when the tracker's URL does not allow it (no `announce` at the start of its last segment).
    """
    parts = urlsplit(announce_url)
    head, _, last = parts.path.rpartition("/")
    if not last.startswith("announce"):
        return None
    path = f"{head}/scrape{last[len('announce') :]}"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def build_http_scrape_url(scrape: str, info_hashes: Sequence[bytes]) -> str:
    return _append_query(scrape, (("info_hash", quote_from_bytes(h, safe="")) for h in info_hashes))


def parse_http_scrape(body: bytes, config: Config = DEFAULT_CONFIG) -> dict[bytes, ScrapeEntry]:
    """BEP 48 scrape answer: {info_hash: ScrapeEntry}. Entries that are not dictionaries are skipped."""
    value = _decode_dict(body, config, "scrape response")
    files = value.get(b"files")
    if not isinstance(files, dict):
        raise TrackerError("scrape response has no `files` dictionary")
    result: dict[bytes, ScrapeEntry] = {}
    for info_hash, stats in files.items():
        if len(info_hash) != INFO_HASH_LENGTH or not isinstance(stats, dict):
            continue
        result[info_hash] = ScrapeEntry(
            seeders=_optional_count(stats.get(b"complete")) or 0,
            completed=_optional_count(stats.get(b"downloaded")) or 0,
            leechers=_optional_count(stats.get(b"incomplete")) or 0,
        )
    return result


# --- UDP (BEP 15, 41) ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class UdpTrackerAddress:
    host: str
    port: int
    url_data: bytes  # BEP 41: the URL's path and query, sent as URLData options


def parse_udp_url(url: str) -> UdpTrackerAddress:
    """Split `udp://host:port/path?query`. Raises TrackerError when there is no usable host or port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise TrackerError(f"bad UDP tracker URL {url!r}: {err}") from None
    if parts.scheme != "udp" or not parts.hostname or not port:
        raise TrackerError(f"bad UDP tracker URL {url!r}: need udp://host:port")
    url_data = parts.path + (f"?{parts.query}" if parts.query else "")
    return UdpTrackerAddress(parts.hostname, port, url_data.encode("utf-8"))


def _url_data_options(url_data: bytes) -> bytes:
    """BEP 41 URLData options, chunked into pieces of at most 255 bytes. Nothing when there is no path."""
    out = bytearray()
    for start in range(0, len(url_data), _OPTION_MAX_DATA):
        part = url_data[start : start + _OPTION_MAX_DATA]
        out += bytes((_OPTION_URL_DATA, len(part))) + part
    return bytes(out)


def build_udp_connect(transaction_id: int) -> bytes:
    return _CONNECT_REQUEST.pack(UDP_PROTOCOL_ID, UDP_ACTION_CONNECT, transaction_id)


def _check_header(data: bytes, transaction_id: int, action: int, minimum: int, what: str) -> None:
    """BEP 15 checks, in its order: size, transaction id, then action (an error packet -> TrackerFailure)."""
    if len(data) < _HEADER.size:
        raise TrackerError(f"UDP {what} reply of {len(data)} bytes is too short")
    got_action, got_transaction = _HEADER.unpack_from(data)
    if got_transaction != transaction_id:
        raise TransactionMismatch(
            f"UDP {what} reply for transaction {got_transaction:#010x}, expected {transaction_id:#010x}"
        )
    if got_action == UDP_ACTION_ERROR:
        raise TrackerFailure(data[_HEADER.size :].decode("utf-8", "replace"))
    if got_action != action:
        raise TrackerError(f"UDP {what} reply has action {got_action}, expected {action}")
    if len(data) < minimum:
        raise TrackerError(f"UDP {what} reply of {len(data)} bytes is too short")


def parse_udp_connect(data: bytes, transaction_id: int) -> int:
    """The connection id from a connect reply."""
    _check_header(data, transaction_id, UDP_ACTION_CONNECT, _CONNECT_RESPONSE.size, "connect")
    _action, _transaction, connection_id = _CONNECT_RESPONSE.unpack_from(data)
    return int(connection_id)


def build_udp_announce(connection_id: int, transaction_id: int, req: AnnounceRequest, url_data: bytes = b"") -> bytes:
    ip = 0
    if req.ip is not None:
        try:
            address = ipaddress.ip_address(req.ip)
        except ValueError:
            address = None
        # BEP 15: the field is 32 bits, so only an IPv4 address fits; anything else is left 0.
        if isinstance(address, ipaddress.IPv4Address):
            ip = int(address)
    packet = _ANNOUNCE_REQUEST.pack(
        connection_id,
        UDP_ACTION_ANNOUNCE,
        transaction_id,
        req.info_hash,
        req.peer_id,
        req.downloaded,
        req.left,
        req.uploaded,
        _UDP_EVENT_CODES[req.event],
        ip,
        req.key,
        req.numwant,
        req.port,
    )
    return packet + _url_data_options(url_data)


def parse_udp_announce(
    data: bytes, transaction_id: int, *, ipv6: bool, config: Config = DEFAULT_CONFIG
) -> AnnounceResponse:
    """An announce reply; peers are 6-byte entries, or 18-byte ones when the exchange ran over IPv6."""
    _check_header(data, transaction_id, UDP_ACTION_ANNOUNCE, _ANNOUNCE_RESPONSE.size, "announce")
    _action, _transaction, interval, leechers, seeders = _ANNOUNCE_RESPONSE.unpack_from(data)
    collector = _PeerCollector(config.max_peers_per_response)
    stride = COMPACT_V6_LENGTH if ipv6 else COMPACT_V4_LENGTH
    collector.add_compact(data[_ANNOUNCE_RESPONSE.size :], stride, "UDP")
    return AnnounceResponse(
        interval=_bounded_interval(interval, config),
        min_interval=None,
        peers=tuple(collector.peers),
        peers_dropped=collector.dropped,
        complete=seeders,
        incomplete=leechers,
    )


def build_udp_scrape(connection_id: int, transaction_id: int, info_hashes: Sequence[bytes]) -> bytes:
    if not 0 < len(info_hashes) <= UDP_SCRAPE_MAX_HASHES:
        raise ValueError(f"scrape 1 to {UDP_SCRAPE_MAX_HASHES} info hashes at once, not {len(info_hashes)}")
    if any(len(h) != INFO_HASH_LENGTH for h in info_hashes):
        raise ValueError("every info hash is 20 bytes")
    return _SCRAPE_REQUEST.pack(connection_id, UDP_ACTION_SCRAPE, transaction_id) + b"".join(info_hashes)


def parse_udp_scrape(data: bytes, transaction_id: int, count: int) -> tuple[ScrapeEntry, ...]:
    """A scrape reply for `count` info hashes, in the order they were asked."""
    _check_header(data, transaction_id, UDP_ACTION_SCRAPE, _HEADER.size + count * _SCRAPE_ENTRY.size, "scrape")
    return tuple(
        ScrapeEntry(*_SCRAPE_ENTRY.unpack_from(data, _HEADER.size + i * _SCRAPE_ENTRY.size)) for i in range(count)
    )


# --- UDP timing ----------------------------------------------------------------------------------


def udp_retransmit_schedule(config: Config = DEFAULT_CONFIG) -> tuple[float, ...]:
    """How long to wait for a reply after each send: initial, doubling, Config.udp_max_tries entries.

    BEP 15 asks for 15 x 2^n up to n = 8 (over an hour); a command-line tool gives up far sooner. The
    whole exchange (connect and announce together) shares one schedule, as in BEP 15's examples.
    """
    return tuple(config.udp_initial_timeout * 2**n for n in range(config.udp_max_tries))


class UdpTrackerState:
    """One UDP tracker's connection id and when it stops being usable (BEP 15: a minute after receipt)."""

    __slots__ = ("_connection_id", "_expires_at", "lifetime")

    def __init__(self, config: Config = DEFAULT_CONFIG) -> None:
        self.lifetime = config.udp_connection_id_lifetime
        self._connection_id: int | None = None
        self._expires_at = 0.0

    def connection_id(self, now: float) -> int | None:
        """The connection id if still valid at `now`; None means: connect first."""
        if self._connection_id is None or now >= self._expires_at:
            return None
        return self._connection_id

    def needs_connect(self, now: float) -> bool:
        return self.connection_id(now) is None

    def connected(self, connection_id: int, now: float) -> None:
        """Record a connection id received at `now`."""
        self._connection_id = connection_id
        self._expires_at = now + self.lifetime

    def forget(self) -> None:
        """Drop the connection id (the tracker answered with an error: perhaps it no longer knows it)."""
        self._connection_id = None
