"""tasks/tracker.py against small trackers of our own on 127.0.0.1, honest and hostile."""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import shutil
import socket
import ssl
import struct
import subprocess
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

import pytest
import trio
import trio.testing

from jstorrent_cli.config import DEFAULT_CONFIG, Config, MiB
from jstorrent_cli.core import bencode
from jstorrent_cli.core.announce import (
    UDP_PROTOCOL_ID,
    AnnounceEvent,
    AnnounceRequest,
    AnnounceResponse,
    TrackerFailure,
    UdpTrackerState,
    udp_retransmit_schedule,
)
from jstorrent_cli.errors import TrackerError
from jstorrent_cli.tasks.tracker import (
    Announcer,
    LazyHttpClient,
    TrackerClient,
    TrackerTiers,
    announce_http,
    announce_udp,
    open_http_client,
)

CONFIG = dataclasses.replace(DEFAULT_CONFIG, tracker_timeout=2.0)
INFO_HASH = bytes(range(100, 120))
PEER_ID = b"-JS0100-" + bytes(range(12))
HOST = "127.0.0.1"
FAST_CHUNK = 64 * 1024


def make_request(**changes: object) -> AnnounceRequest:
    base = AnnounceRequest(
        info_hash=INFO_HASH, peer_id=PEER_ID, port=6881, uploaded=0, downloaded=0, left=1000, key=0xA1B2C3D4
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def compact(*peers: tuple[str, int]) -> bytes:
    return b"".join(bytes(map(int, host.split("."))) + port.to_bytes(2, "big") for host, port in peers)


def ok_body(peers: bytes = compact(("10.0.0.1", 6881)), **extra: object) -> bytes:
    body: dict[bytes, object] = {b"interval": 900, b"peers": peers}
    body.update({key.replace("_", " ").encode(): value for key, value in extra.items()})
    return bencode.encode(body)


# --- a tiny HTTP responder (tests only; the client side is httpx) --------------------------------

Responder = Callable[[trio.SocketStream, str], Awaitable[None]]


@dataclasses.dataclass
class HttpServer:
    url: str
    targets: list[str] = dataclasses.field(default_factory=list)
    bytes_sent: int = 0


async def send_response(
    stream: trio.SocketStream, body: bytes, status: int = 200, *, declare_length: bool = True
) -> None:
    head = f"HTTP/1.1 {status} Whatever\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    if declare_length:
        head += f"Content-Length: {len(body)}\r\n"
    await stream.send_all(head.encode() + b"\r\n" + body)


@asynccontextmanager
async def http_tracker(respond: Responder, path: str = "/announce") -> AsyncIterator[HttpServer]:
    server = HttpServer(url="")

    async def handle(stream: trio.SocketStream) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data and len(data) < FAST_CHUNK:
                part = await stream.receive_some()
                if not part:
                    return
                data += part
            target = data.split(b" ", 2)[1].decode()
            server.targets.append(target)
            await respond(stream, target)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host=HOST))
        port = listeners[0].socket.getsockname()[1]
        server.url = f"http://{HOST}:{port}{path}"
        yield server
        nursery.cancel_scope.cancel()


def query(target: str) -> dict[str, bytes]:
    out = {}
    for pair in urlsplit(target).query.split("&"):
        name, _, value = pair.partition("=")
        out[name] = unquote_to_bytes(value)
    return out


async def http_announce(server: HttpServer, config: Config = CONFIG) -> AnnounceResponse:
    async with open_http_client(config, trust_env=False) as client:
        return await announce_http(client, server.url, make_request(event=AnnounceEvent.STARTED), config)


# --- HTTP ----------------------------------------------------------------------------------------


async def test_http_announce_sends_parameters_and_parses_peers() -> None:
    async def respond(stream: trio.SocketStream, target: str) -> None:
        await send_response(stream, ok_body(compact(("10.0.0.1", 6881), ("10.0.0.2", 51413)), complete=3))

    with trio.fail_after(10):
        async with http_tracker(respond, path="/announce?passkey=s3cret") as server:
            response = await http_announce(server)
    assert response.peers == (("10.0.0.1", 6881), ("10.0.0.2", 51413))
    assert response.interval == 900.0 and response.complete == 3
    params = query(server.targets[0])
    assert params["passkey"] == b"s3cret"
    assert params["info_hash"] == INFO_HASH and params["peer_id"] == PEER_ID
    assert params["event"] == b"started" and params["key"] == b"A1B2C3D4"


async def test_http_failure_reason_wins_over_the_status_code() -> None:
    async def respond(stream: trio.SocketStream, target: str) -> None:
        await send_response(stream, bencode.encode({b"failure reason": b"unregistered torrent"}), 403)

    with trio.fail_after(10):
        async with http_tracker(respond) as server:
            with pytest.raises(TrackerFailure, match="unregistered torrent"):
                await http_announce(server)


async def test_http_error_status_with_an_html_body() -> None:
    async def respond(stream: trio.SocketStream, target: str) -> None:
        await send_response(stream, b"<html>not found</html>", 404)

    with trio.fail_after(10):
        async with http_tracker(respond) as server:
            with pytest.raises(TrackerError, match="HTTP 404"):
                await http_announce(server)


async def test_http_body_that_is_not_bencode() -> None:
    async def respond(stream: trio.SocketStream, target: str) -> None:
        await send_response(stream, b"<html><body>502 Bad Gateway</body></html>")

    with trio.fail_after(10):
        async with http_tracker(respond) as server:
            with pytest.raises(TrackerError, match="not bencode"):
                await http_announce(server)


async def test_http_peer_list_of_the_wrong_length() -> None:
    async def respond(stream: trio.SocketStream, target: str) -> None:
        await send_response(stream, ok_body(compact(("10.0.0.1", 1)) + b"\x01\x02\x03"))

    with trio.fail_after(10):
        async with http_tracker(respond) as server:
            with pytest.raises(TrackerError, match="not a multiple of 6"):
                await http_announce(server)


async def test_http_hundred_thousand_peers_are_truncated() -> None:
    peers = b"".join(n.to_bytes(4, "big") + b"\x1a\xe1" for n in range(1, 100_001))

    async def respond(stream: trio.SocketStream, target: str) -> None:
        await send_response(stream, ok_body(peers))

    with trio.fail_after(10):
        async with http_tracker(respond) as server:
            response = await http_announce(server)
    assert len(response.peers) == CONFIG.max_peers_per_response
    assert response.peers_dropped == 100_000 - CONFIG.max_peers_per_response
    assert response.peers[0] == ("0.0.0.1", 6881)


@pytest.mark.parametrize("declare_length", [True, False])
async def test_http_fifty_megabyte_body_is_refused_with_bounded_memory(declare_length: bool) -> None:
    total = 50 * MiB
    sent = 0
    chunk = b"x" * FAST_CHUNK

    async def respond(stream: trio.SocketStream, target: str) -> None:
        nonlocal sent
        head = "HTTP/1.1 200 OK\r\nConnection: close\r\n"
        if declare_length:
            head += f"Content-Length: {total}\r\n"
        await stream.send_all(head.encode() + b"\r\n")
        while sent < total:
            await stream.send_all(chunk)
            sent += len(chunk)

    tracemalloc.start()
    try:
        with trio.fail_after(20):
            async with http_tracker(respond) as server:
                with pytest.raises(TrackerError, match="limit"):
                    await http_announce(server)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The client read at most the cap plus a little, never the 50 MB the tracker tried to send.
    assert peak < 4 * CONFIG.max_tracker_response
    assert sent < total


async def test_http_silent_tracker_times_out_as_a_tracker_error() -> None:
    async def respond(stream: trio.SocketStream, target: str) -> None:
        await trio.sleep_forever()

    config = dataclasses.replace(CONFIG, tracker_timeout=0.3)
    with trio.fail_after(10):
        async with http_tracker(respond) as server:
            start = trio.current_time()
            with pytest.raises(TrackerError, match="no answer within"):
                await http_announce(server, config)
            assert trio.current_time() - start < 5


async def test_http_nobody_listening_is_a_tracker_error() -> None:
    with trio.fail_after(10), trio.socket.socket() as probe:
        await probe.bind((HOST, 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        async with open_http_client(CONFIG, trust_env=False) as client:
            with pytest.raises(TrackerError):
                await announce_http(client, f"http://{HOST}:{port}/announce", make_request(), CONFIG)


# --- a small UDP tracker -------------------------------------------------------------------------


@dataclasses.dataclass
class FakeUdpTracker:
    """Answers BEP 15 packets; knobs make it misbehave."""

    peers: bytes = compact(("10.9.8.7", 4444))
    interval: int = 600
    silent: bool = False
    wrong_tid_first: bool = False
    always_wrong_tid: bool = False
    error_message: bytes | None = None
    next_connection_id: int = 0x1000
    connects: int = 0
    announces: list[bytes] = dataclasses.field(default_factory=list)
    received: int = 0
    port: int = 0

    def replies(self, data: bytes) -> list[bytes]:
        self.received += 1
        if self.silent or len(data) < 16:
            return []
        action, tid = struct.unpack_from(">II", data, 8)
        if self.error_message is not None:
            return [struct.pack(">II", 3, tid) + self.error_message]
        if len(data) == 16 and struct.unpack_from(">Q", data)[0] == UDP_PROTOCOL_ID and action == 0:
            self.connects += 1
            self.next_connection_id += 1
            body = struct.pack(">Q", self.next_connection_id)
        elif action == 1 and len(data) >= 98:
            self.announces.append(data)
            body = struct.pack(">III", self.interval, 1, 2) + self.peers
        else:
            return []
        right = struct.pack(">II", action, tid) + body
        wrong = struct.pack(">II", action, tid ^ 0xFFFF) + body
        if self.always_wrong_tid:
            return [wrong]
        if self.wrong_tid_first:
            return [wrong, right]
        return [right]


@asynccontextmanager
async def udp_tracker(tracker: FakeUdpTracker, host: str = HOST) -> AsyncIterator[FakeUdpTracker]:
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    with trio.socket.socket(family, trio.socket.SOCK_DGRAM) as sock:
        await sock.bind((host, 0))
        tracker.port = sock.getsockname()[1]

        async def serve() -> None:
            while True:
                data, address = await sock.recvfrom(65536)
                for reply in tracker.replies(data):
                    await sock.sendto(reply, address)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            yield tracker
            nursery.cancel_scope.cancel()


def udp_url(tracker: FakeUdpTracker, path: str = "/announce") -> str:
    return f"udp://{HOST}:{tracker.port}{path}"


async def test_udp_announce_connects_then_announces(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with udp_tracker(FakeUdpTracker()) as tracker:
            state = UdpTrackerState(CONFIG)
            req = make_request(event=AnnounceEvent.STARTED, numwant=33, port=51413)
            response = await announce_udp(udp_url(tracker, "/announce?auth=xyz"), req, CONFIG, state)
    assert response.peers == (("10.9.8.7", 4444),)
    assert (response.interval, response.incomplete, response.complete) == (600.0, 1, 2)
    assert tracker.connects == 1
    packet = tracker.announces[0]
    connection_id, action, _tid, info_hash, peer_id = struct.unpack_from(">QII20s20s", packet)
    event, _ip, key, numwant, port = struct.unpack_from(">IIIiH", packet, 80)
    assert (connection_id, action, info_hash, peer_id) == (0x1001, 1, INFO_HASH, PEER_ID)
    assert (event, key, numwant, port) == (2, 0xA1B2C3D4, 33, 51413)
    assert packet[98:] == b"\x02\x12/announce?auth=xyz"  # BEP 41 URLData


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback (::1) on this machine")
async def test_udp_announce_over_ipv6_reads_18_byte_peers(autojump_clock: trio.testing.MockClock) -> None:
    peers6 = bytes.fromhex("20010db8000000000000000000000001") + (6881).to_bytes(2, "big")
    with trio.fail_after(60):
        async with udp_tracker(FakeUdpTracker(peers=peers6), host="::1") as tracker:
            url = f"udp://[::1]:{tracker.port}/announce"
            response = await announce_udp(url, make_request(), CONFIG, UdpTrackerState(CONFIG))
    assert response.peers == (("2001:db8::1", 6881),)


async def test_udp_connection_id_is_reused_within_its_lifetime(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with udp_tracker(FakeUdpTracker()) as tracker:
            state = UdpTrackerState(CONFIG)
            await announce_udp(udp_url(tracker), make_request(), CONFIG, state)
            await trio.sleep(CONFIG.udp_connection_id_lifetime / 2)
            await announce_udp(udp_url(tracker), make_request(), CONFIG, state)
            assert tracker.connects == 1
            await trio.sleep(CONFIG.udp_connection_id_lifetime)
            await announce_udp(udp_url(tracker), make_request(), CONFIG, state)
            assert tracker.connects == 2
    used = [struct.unpack_from(">Q", packet)[0] for packet in tracker.announces]
    assert used == [0x1001, 0x1001, 0x1002]


async def test_udp_reply_with_a_wrong_transaction_id_is_ignored(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with udp_tracker(FakeUdpTracker(wrong_tid_first=True, interval=1234)) as tracker:
            response = await announce_udp(udp_url(tracker), make_request(), CONFIG, UdpTrackerState(CONFIG))
    assert response.interval == 1234.0 and response.peers == (("10.9.8.7", 4444),)
    assert tracker.received == 2  # no retransmission was needed: the right reply followed the wrong one


async def test_udp_only_wrong_transaction_ids_is_never_accepted(autojump_clock: trio.testing.MockClock) -> None:
    schedule = udp_retransmit_schedule(CONFIG)
    with trio.fail_after(sum(schedule) + 10):
        async with udp_tracker(FakeUdpTracker(always_wrong_tid=True)) as tracker:
            with pytest.raises(TrackerError, match="no answer after"):
                await announce_udp(udp_url(tracker), make_request(), CONFIG, UdpTrackerState(CONFIG))
    assert tracker.connects == len(schedule)  # every try was a connect: no reply was ever taken
    assert tracker.announces == []


async def test_udp_silence_retries_on_the_schedule_then_fails(autojump_clock: trio.testing.MockClock) -> None:
    config = dataclasses.replace(CONFIG, udp_initial_timeout=1.0, udp_max_tries=3)
    with trio.fail_after(60):
        async with udp_tracker(FakeUdpTracker(silent=True)) as tracker:
            start = trio.current_time()
            with pytest.raises(TrackerError, match="no answer after 3 tries"):
                await announce_udp(udp_url(tracker), make_request(), config, UdpTrackerState(config))
            elapsed = trio.current_time() - start
    assert tracker.received == 3
    assert elapsed == pytest.approx(1.0 + 2.0 + 4.0, abs=0.01)


async def test_udp_error_packet_is_a_tracker_failure(autojump_clock: trio.testing.MockClock) -> None:
    state = UdpTrackerState(CONFIG)
    state.connected(0x1234, trio.current_time())
    with trio.fail_after(60):
        async with udp_tracker(FakeUdpTracker(error_message=b"info_hash not allowed")) as tracker:
            with pytest.raises(TrackerFailure, match="info_hash not allowed"):
                await announce_udp(udp_url(tracker), make_request(), CONFIG, state)
    assert state.needs_connect(trio.current_time())  # the id is forgotten after an error


async def test_udp_peer_list_of_the_wrong_length(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with udp_tracker(FakeUdpTracker(peers=b"\x01" * 10)) as tracker:
            with pytest.raises(TrackerError, match="not a multiple of 6"):
                await announce_udp(udp_url(tracker), make_request(), CONFIG, UdpTrackerState(CONFIG))


async def test_udp_port_closed_is_a_quick_tracker_error() -> None:
    with trio.fail_after(5):  # ICMP port unreachable comes back at once; no schedule to wait out
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as probe:
            await probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        with pytest.raises(TrackerError, match="refused"):
            await announce_udp(f"udp://{HOST}:{port}", make_request(), CONFIG, UdpTrackerState(CONFIG))


async def test_tracker_client_dispatches_by_scheme(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with udp_tracker(FakeUdpTracker()) as tracker, open_http_client(CONFIG, trust_env=False) as http:
            client = TrackerClient(http, CONFIG)
            await client.announce(udp_url(tracker), make_request())
            await client.announce(udp_url(tracker, "/other"), make_request())
            with pytest.raises(TrackerError, match="unsupported"):
                await client.announce("wss://tracker.example/announce", make_request())
    assert tracker.connects == 1  # one connection id per tracker address, whatever the path


async def test_lazy_http_client_is_made_at_the_first_http_announce_only() -> None:
    async def respond(stream: trio.SocketStream, target: str) -> None:
        await send_response(stream, ok_body())

    with trio.fail_after(60):
        lazy = LazyHttpClient(CONFIG, trust_env=False)
        client = TrackerClient(lazy, CONFIG)
        async with udp_tracker(FakeUdpTracker()) as tracker:
            await client.announce(udp_url(tracker), make_request())
        assert not lazy.opened  # UDP trackers only: no HTTP client (and no httpx import) was needed
        await lazy.aclose()  # closing one never made is a no-op
        async with http_tracker(respond) as server:
            response = await client.announce(server.url, make_request())
            assert lazy.opened
            first = lazy.get()
            await client.announce(server.url, make_request())
            assert lazy.get() is first  # one client (one connection pool) for every HTTP announce
        await lazy.aclose()
    assert response.peers == (("10.0.0.1", 6881),)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (openssl, EC: a few milliseconds)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=30)
    return cert, key


@asynccontextmanager
async def https_tracker(cert: Path, key: Path) -> AsyncIterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # not create_default_context: the test counts those
    context.load_cert_chain(cert, key)

    async def handle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                part = await stream.receive_some()
                if not part:
                    return
                data += part
            body = ok_body()
            await stream.send_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                                  % (len(body), body))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client refused our certificate
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_ssl_over_tcp, handle, 0, context, host=HOST))
        yield f"https://{HOST}:{listeners[0].transport_listener.socket.getsockname()[1]}/announce"
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_https_is_verified_and_http_loads_no_certificates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The https:// transport (and the CA certificates it loads) is made at the first HTTPS request only;
    # an http:// tracker never loads them, and HTTPS still verifies the tracker's certificate.
    loads: list[object] = []
    real = ssl.create_default_context

    def counting(*args: object, **kwargs: object) -> ssl.SSLContext:
        loads.append(kwargs.get("cafile"))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    async def respond(stream: trio.SocketStream, target: str) -> None:
        await send_response(stream, ok_body())

    cert, key = self_signed(tmp_path)
    monkeypatch.setattr(ssl, "create_default_context", counting)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with trio.fail_after(30):
        async with open_http_client(CONFIG, trust_env=False) as client:
            async with http_tracker(respond) as server:
                await announce_http(client, server.url, make_request(), CONFIG)
            assert loads == []  # plain HTTP: no certificate store was loaded
            async with https_tracker(cert, key) as url:
                with pytest.raises(TrackerError, match="HTTP announce failed"):
                    await announce_http(client, url, make_request(), CONFIG)  # self-signed: refused
        assert len(loads) == 1  # the https:// transport was made once, at the first HTTPS announce
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now trust it (the transport honours SSL_CERT_FILE)
        async with open_http_client(CONFIG, trust_env=False) as client, https_tracker(cert, key) as url:
            response = await announce_http(client, url, make_request(), CONFIG)
    assert loads[-1] == str(cert)
    assert response.peers == (("10.0.0.1", 6881),)


# --- tiers ---------------------------------------------------------------------------------------


def test_tiers_shuffle_within_a_tier_and_keep_tier_order() -> None:
    tiers = [["a", "b", "c", "d"], ["x", "y"], ["a", "z"]]
    orders = set()
    for seed in range(20):
        order = TrackerTiers(tiers, random.Random(seed)).order()
        assert sorted(order[:4]) == ["a", "b", "c", "d"]
        assert sorted(order[4:6]) == ["x", "y"]
        assert order[6:] == ["z"]  # a URL already in an earlier tier is not tried twice
        orders.add(tuple(order))
    assert len(orders) > 1


def test_a_responding_tracker_moves_to_the_front_of_its_tier() -> None:
    tiers = TrackerTiers([["t1", "t2", "t3"], ["b1"]], random.Random(0))
    tiers._tiers = [["t1", "t2", "t3"], ["b1"]]  # fix the shuffle to follow BEP 12's example
    tiers.succeeded("t2")
    assert tiers.tiers == (("t2", "t1", "t3"), ("b1",))
    tiers.succeeded("t3")
    assert tiers.order() == ["t3", "t2", "t1", "b1"]
    tiers.succeeded("b1")
    assert tiers.order() == ["t3", "t2", "t1", "b1"]


# --- the announce loop (fake transport, autojump clock) ------------------------------------------


@dataclasses.dataclass
class Call:
    url: str
    event: AnnounceEvent | None
    tracker_id: bytes | None
    at: float


class FakeTrackers:
    """An announce function: per-URL behaviour, every call recorded with its time."""

    def __init__(self, behaviour: dict[str, Callable[[AnnounceRequest], AnnounceResponse | None]]) -> None:
        self.behaviour = behaviour
        self.calls: list[Call] = []

    async def announce(self, url: str, req: AnnounceRequest) -> AnnounceResponse:
        self.calls.append(Call(url, req.event, req.tracker_id, trio.current_time()))
        result = self.behaviour[url](req)
        if result is None:
            await trio.sleep_forever()
        assert result is not None
        return result


def answer(interval: float = 300.0, min_interval: float | None = None, **kw: object) -> Callable[..., AnnounceResponse]:
    response = AnnounceResponse(interval=interval, min_interval=min_interval, peers=(("10.0.0.1", 1),), **kw)  # type: ignore[arg-type]
    return lambda req: response


def fail(message: str = "down") -> Callable[[AnnounceRequest], AnnounceResponse]:
    def raise_(req: AnnounceRequest) -> AnnounceResponse:
        raise TrackerError(message)

    return raise_


def hang(req: AnnounceRequest) -> None:
    return None


def announcer_for(
    fake: FakeTrackers, tiers: list[list[str]], config: Config = CONFIG
) -> tuple[Announcer, list[tuple[tuple[str, int], ...]]]:
    delivered: list[tuple[tuple[str, int], ...]] = []
    ordered = TrackerTiers(tiers, random.Random(0))
    ordered._tiers = [list(tier) for tier in tiers]  # deterministic order for the test
    return Announcer(ordered, fake.announce, make_request, delivered.append, config), delivered


async def run_for(announcer: Announcer, seconds: float) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(announcer.run)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


async def test_loop_starts_then_honours_the_interval(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeTrackers({"t": answer(interval=300.0, tracker_id=b"TID")})
    announcer, delivered = announcer_for(fake, [["t"]])
    with trio.fail_after(10_000):
        start = trio.current_time()
        await run_for(announcer, 1000)
    regular = [c for c in fake.calls if c.event is not AnnounceEvent.STOPPED]
    assert [round(c.at - start) for c in regular] == [0, 300, 600, 900]
    assert [c.event for c in regular] == [AnnounceEvent.STARTED, None, None, None]
    assert [c.tracker_id for c in regular] == [None, b"TID", b"TID", b"TID"]
    assert fake.calls[-1].event is AnnounceEvent.STOPPED  # cancelling the loop says goodbye
    assert delivered == [(("10.0.0.1", 1),)] * 4
    assert announcer.status.peers_received == 4
    assert announcer.status.last_tracker == "t"


async def test_loop_falls_through_tiers_and_moves_the_responder_forward(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeTrackers({"a": fail(), "b": answer(), "c": answer(), "backup": answer()})
    announcer, _ = announcer_for(fake, [["a", "b", "c"], ["backup"]])
    with trio.fail_after(100):
        assert await announcer.announce_once()
    assert [c.url for c in fake.calls] == ["a", "b"]
    assert announcer.tiers.tiers == (("b", "a", "c"), ("backup",))
    fake.behaviour["b"] = fail()
    fake.behaviour["c"] = fail()
    fake.calls.clear()
    with trio.fail_after(100):
        assert await announcer.announce_once()
    assert [c.url for c in fake.calls] == ["b", "a", "c", "backup"]
    assert announcer.status.last_tracker == "backup"


async def test_every_tracker_failing_backs_off_and_logs(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = dataclasses.replace(CONFIG, tracker_retry_initial=10.0, tracker_retry_max=35.0)
    fake = FakeTrackers({"a": fail("connection refused"), "b": fail("garbage")})
    announcer, _ = announcer_for(fake, [["a"], ["b"]], config)
    with caplog.at_level(logging.WARNING, logger="jstorrent.tracker"), trio.fail_after(1000):
        start = trio.current_time()
        await run_for(announcer, 120)
    rounds = sorted({round(c.at - start) for c in fake.calls})
    assert rounds == [0, 10, 30, 65, 100]  # 10, 20, then capped at 35
    assert announcer.status.consecutive_failures == 5
    assert announcer.status.last_error == "b: garbage"
    assert "connection refused" in caplog.text and "garbage" in caplog.text
    assert all(c.event is AnnounceEvent.STARTED for c in fake.calls)  # `started` stays pending
    assert not any(c.event is AnnounceEvent.STOPPED for c in fake.calls)  # never started, nothing to stop


async def test_swarm_running_dry_reannounces_sooner(autojump_clock: trio.testing.MockClock) -> None:
    config = dataclasses.replace(CONFIG, dry_swarm_reannounce=30.0)
    fake = FakeTrackers({"t": answer(interval=1800.0, min_interval=100.0)})
    announcer, _ = announcer_for(fake, [["t"]], config)
    with trio.fail_after(10_000):
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(announcer.run)
            await trio.sleep(10)
            announcer.swarm_ran_dry()  # too soon after the last announce: min interval rules
            await trio.sleep(200)
            announcer.swarm_ran_dry()  # now the dry delay rules
            await trio.sleep(100)
            nursery.cancel_scope.cancel()
    times = [round(c.at - start) for c in fake.calls if c.event is not AnnounceEvent.STOPPED]
    assert times == [0, 100, 240]


async def test_download_completed_is_announced_at_once(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeTrackers({"t": answer(interval=1800.0)})
    announcer, _ = announcer_for(fake, [["t"]])
    with trio.fail_after(10_000):
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(announcer.run)
            await trio.sleep(50)
            announcer.download_completed()
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
    assert [(round(c.at - start), c.event) for c in fake.calls] == [
        (0, AnnounceEvent.STARTED),
        (50, AnnounceEvent.COMPLETED),
        (60, AnnounceEvent.STOPPED),
    ]


async def test_round_ended_wakes_at_the_end_of_each_round_answered_or_not(
        autojump_clock: trio.testing.MockClock) -> None:
    # The session waits on round_ended() for its `completed` to get through: it must wake when the
    # round ends (a slow tracker's 0.37 s, or the failure of every tier), not at a polling step.
    answered = 0

    def slow_then_down(req: AnnounceRequest) -> AnnounceResponse:
        nonlocal answered
        answered += 1
        if req.event is AnnounceEvent.COMPLETED:
            raise TrackerError("down")
        return AnnounceResponse(interval=1800.0, min_interval=None, peers=())

    fake = FakeTrackers({"t": slow_then_down})
    inner = fake.announce

    async def slow(url: str, req: AnnounceRequest) -> AnnounceResponse:
        await trio.sleep(0.37)
        return await inner(url, req)

    announcer = Announcer(TrackerTiers([["t"]], random.Random(0)), slow, make_request, lambda peers: None, CONFIG)
    ended: list[tuple[float, int, int]] = []
    with trio.fail_after(10_000):
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(announcer.run)
            await announcer.round_ended()  # the `started` round
            ended.append((trio.current_time() - start, answered, announcer.status.consecutive_failures))
            await trio.sleep(5)
            announcer.download_completed()
            await announcer.round_ended()  # the `completed` round, which fails
            ended.append((trio.current_time() - start, answered, announcer.status.consecutive_failures))
            nursery.cancel_scope.cancel()
    assert [(round(at, 6), n, failures) for at, n, failures in ended] == [(0.37, 1, 0), (5.74, 2, 1)]  # 5.37 + 0.37


async def test_final_stopped_is_bounded_by_its_deadline(autojump_clock: trio.testing.MockClock) -> None:
    config = dataclasses.replace(CONFIG, stopped_announce_deadline=3.0)
    fake = FakeTrackers({"t": answer()})
    announcer, _ = announcer_for(fake, [["t"]], config)
    with trio.fail_after(100):
        assert await announcer.announce_once()
        fake.behaviour["t"] = hang
        start = trio.current_time()
        assert not await announcer.stop()
        assert trio.current_time() - start == pytest.approx(3.0)
        assert not await announcer.stop()  # only once
    assert [c.event for c in fake.calls] == [AnnounceEvent.STARTED, AnnounceEvent.STOPPED]



@pytest.mark.parametrize(("deadline", "expected"), [(None, 3.0), (0.5, 0.5), (5.0, 5.0)])
async def test_stop_to_a_silent_tracker_returns_within_the_deadline_given(
    deadline: float | None, expected: float, autojump_clock: trio.testing.MockClock
) -> None:
    """No deadline: Config.stopped_announce_deadline (a normal exit); a deadline given wins, shorter
    (the session's cap after a Ctrl-C) or longer."""
    config = dataclasses.replace(CONFIG, stopped_announce_deadline=3.0)
    fake = FakeTrackers({"t": answer()})
    announcer, _ = announcer_for(fake, [["t"]], config)
    with trio.fail_after(100):
        assert await announcer.announce_once()
        fake.behaviour["t"] = hang
        start = trio.current_time()
        assert not await announcer.stop(deadline)
        assert trio.current_time() - start == pytest.approx(expected)
    assert [c.event for c in fake.calls] == [AnnounceEvent.STARTED, AnnounceEvent.STOPPED]


async def test_interrupt_path_caps_the_stopped_and_the_loop_sends_no_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The session's Ctrl-C path: `stop(cap)` while the loop runs, under a cancelled scope (the
    shield still lets it out), then the loop is cancelled and its own `stop` sends nothing more."""
    config = dataclasses.replace(CONFIG, stopped_announce_deadline=3.0)
    fake = FakeTrackers({"t": answer(interval=1800.0)})
    announcer, _ = announcer_for(fake, [["t"]], config)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(announcer.run)
            await trio.sleep(10)
            fake.behaviour["t"] = hang
            start = trio.current_time()
            with trio.CancelScope() as scope:
                scope.cancel()
                assert not await announcer.stop(0.5)
            assert trio.current_time() - start == pytest.approx(0.5)
            cancelled_at = trio.current_time()
            nursery.cancel_scope.cancel()
        assert trio.current_time() == pytest.approx(cancelled_at)  # no second, uncapped `stopped`
    assert [c.event for c in fake.calls] == [AnnounceEvent.STARTED, AnnounceEvent.STOPPED]


async def test_normal_exit_path_gives_the_stopped_the_configured_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The session's normal exit: the loop is cancelled and sends `stopped` itself, bounded by
    Config.stopped_announce_deadline, not by any cap."""
    config = dataclasses.replace(CONFIG, stopped_announce_deadline=3.0, stopped_announce_cap=1.0)
    fake = FakeTrackers({"t": answer(interval=1800.0)})
    announcer, _ = announcer_for(fake, [["t"]], config)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(announcer.run)
            await trio.sleep(10)
            fake.behaviour["t"] = hang
            start = trio.current_time()
            nursery.cancel_scope.cancel()
        assert trio.current_time() - start == pytest.approx(3.0)
    assert [c.event for c in fake.calls] == [AnnounceEvent.STARTED, AnnounceEvent.STOPPED]


# --- hostile trackers through the loop: a logged error and a retry, never a crash ----------------


async def _silent(stream: trio.SocketStream, target: str) -> None:
    await trio.sleep_forever()


async def _html(stream: trio.SocketStream, target: str) -> None:
    await send_response(stream, b"<html>oops</html>")


async def _bad_length(stream: trio.SocketStream, target: str) -> None:
    await send_response(stream, ok_body(b"\x00" * 7))


async def _huge(stream: trio.SocketStream, target: str) -> None:
    await stream.send_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    while True:
        await stream.send_all(b"d" * FAST_CHUNK)


@pytest.mark.parametrize("respond", [_silent, _html, _bad_length, _huge], ids=["silent", "html", "length", "huge"])
async def test_hostile_http_tracker_becomes_a_logged_error_and_a_retry(
    respond: Responder, caplog: pytest.LogCaptureFixture
) -> None:
    config = dataclasses.replace(CONFIG, tracker_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="jstorrent.tracker"), trio.fail_after(20):
        async with http_tracker(respond) as server, open_http_client(config, trust_env=False) as http:
            client = TrackerClient(http, config)
            tiers = TrackerTiers([[server.url]], random.Random(0))
            announcer = Announcer(tiers, client.announce, make_request, lambda peers: None, config)
            assert not await announcer.announce_once()
            now = trio.current_time()
    status = announcer.status
    assert status.last_error is not None and status.last_error.startswith(server.url)
    assert status.next_announce_at == pytest.approx(now + config.tracker_retry_initial, abs=1.0)
    assert status.consecutive_failures == 1
    assert server.url in caplog.text


async def test_completed_during_an_in_flight_started_follows_it(autojump_clock: trio.testing.MockClock) -> None:
    release = trio.Event()
    left = 1000

    async def slow_started(url: str, req: AnnounceRequest) -> AnnounceResponse:
        calls.append((req.event, req.left, trio.current_time()))
        if req.event is AnnounceEvent.STARTED:
            await release.wait()
        return AnnounceResponse(interval=1800.0, min_interval=None, peers=())

    def current() -> AnnounceRequest:
        return make_request(left=left)

    calls: list[tuple[AnnounceEvent | None, int, float]] = []
    announcer = Announcer(TrackerTiers([["t"]], random.Random(0)), slow_started, current, lambda p: None, CONFIG)
    with trio.fail_after(10_000):
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(announcer.run)
            await trio.sleep(5)  # `started` (left=1000) is on its way
            left = 0
            announcer.download_completed()
            await trio.sleep(5)
            release.set()
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
    assert [(event, sent_left, round(at - start)) for event, sent_left, at in calls] == [
        (AnnounceEvent.STARTED, 1000, 0),
        (AnnounceEvent.COMPLETED, 0, 10),
        (AnnounceEvent.STOPPED, 0, 15),
    ]


async def test_completed_before_started_got_through_sends_no_completed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeTrackers({"t": fail()})
    left = 1000
    tiers = TrackerTiers([["t"]], random.Random(0))
    announcer = Announcer(tiers, fake.announce, lambda: make_request(left=left), lambda p: None, CONFIG)
    with trio.fail_after(10_000):
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(announcer.run)
            await trio.sleep(5)  # the first `started` failed; its retry is due at 15 s
            left = 0
            fake.behaviour["t"] = answer(interval=1800.0)
            announcer.download_completed()  # the retried `started` carries left=0 and says it all
            await trio.sleep(95)
            nursery.cancel_scope.cancel()
    assert [(c.event, round(c.at - start)) for c in fake.calls] == [
        (AnnounceEvent.STARTED, 0),
        (AnnounceEvent.STARTED, CONFIG.tracker_retry_initial),
        (AnnounceEvent.STOPPED, 100),
    ]


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/announce",
        "udp://[::1:80",
        "http://a..b/announce",
        "udp://a..b:80/announce",
        "udp://127.0.0.1:99999",
        "http:///announce",
        "ftp://tracker.example/announce",
        "not a url at all",
    ],
)
async def test_bad_tracker_urls_are_tracker_errors(url: str) -> None:
    with trio.fail_after(10):
        async with open_http_client(CONFIG, trust_env=False) as http:
            with pytest.raises(TrackerError):
                await TrackerClient(http, CONFIG).announce(url, make_request())


@pytest.mark.parametrize(
    "misbehaviour",
    [
        {"silent": True},
        {"always_wrong_tid": True},
        {"peers": b"\x00" * 5},
        {"error_message": b"banned"},
    ],
    ids=["silent", "wrong-tid", "length", "error"],
)
async def test_hostile_udp_tracker_becomes_a_logged_error_and_a_retry(
    misbehaviour: dict[str, object], autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="jstorrent.tracker"), trio.fail_after(100):
        fake = FakeUdpTracker(**misbehaviour)  # type: ignore[arg-type]
        async with udp_tracker(fake) as tracker, open_http_client(CONFIG, trust_env=False) as http:
            client = TrackerClient(http, CONFIG)
            tiers = TrackerTiers([[udp_url(tracker)]], random.Random(0))
            announcer = Announcer(tiers, client.announce, make_request, lambda peers: None, CONFIG)
            assert not await announcer.announce_once()
            now = trio.current_time()
    status = announcer.status
    assert status.last_error is not None and status.last_error.startswith(udp_url(tracker))
    assert status.next_announce_at == pytest.approx(now + CONFIG.tracker_retry_initial)
    assert udp_url(tracker) in caplog.text
