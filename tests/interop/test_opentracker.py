"""Our tracker clients against a real opentracker on loopback, alongside a libtorrent session.

The tracker gets a loopback address of its own per test (see opentracker_fixture: libtorrent caches
UDP connection ids per tracker address for the whole process).

Each client announces from its own loopback address (ours 127.0.0.1 / 127.0.0.3, libtorrent
127.0.0.2); opentracker reports the source address it saw, so each side must find the other's
address and port in its peer list.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import secrets
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from jstorrent_cli.config import BLOCK_SIZE, DEFAULT_CONFIG
from jstorrent_cli.core import bencode
from jstorrent_cli.core.announce import (
    AnnounceEvent,
    AnnounceRequest,
    AnnounceResponse,
    UdpTrackerState,
    make_key,
    make_peer_id,
)
from jstorrent_cli.tasks.tracker import announce_http, announce_udp, open_http_client
from tests.interop.libtorrent_fixture import loopback_settings
from tests.interop.opentracker_fixture import OpenTracker, free_port, require_opentracker, running_opentracker

pytestmark = pytest.mark.interop

CONFIG = DEFAULT_CONFIG
PIECES = 3
HANDSHAKE_LENGTH = 68  # BEP 3: pstrlen, "BitTorrent protocol", 8 reserved bytes, info hash, peer id
HANDSHAKE_INFO_HASH = slice(28, 48)


@dataclasses.dataclass(frozen=True)
class SmallTorrent:
    data: bytes
    info_hash: bytes
    name: bytes

    def metainfo(self, announce: str) -> bytes:
        return bencode.encode({b"announce": announce.encode(), b"info": self.info()})

    def info(self) -> dict[bytes, Any]:
        pieces = b"".join(
            hashlib.sha1(self.data[i : i + BLOCK_SIZE]).digest() for i in range(0, len(self.data), BLOCK_SIZE)
        )
        return {b"length": len(self.data), b"name": self.name, b"piece length": BLOCK_SIZE, b"pieces": pieces}


def small_torrent() -> SmallTorrent:
    data = secrets.token_bytes(PIECES * BLOCK_SIZE - 100)
    stub = SmallTorrent(data, b"", b"interop.bin")
    info_hash = hashlib.sha1(bencode.encode(stub.info())).digest()
    return dataclasses.replace(stub, info_hash=info_hash)


@pytest.fixture
def start_tracker(tmp_path: Path) -> Iterator[Callable[[Iterable[bytes]], OpenTracker]]:
    require_opentracker()
    started = 0
    with contextlib.ExitStack() as stack:

        def start(info_hashes: Iterable[bytes]) -> OpenTracker:
            nonlocal started
            started += 1
            return stack.enter_context(running_opentracker(tmp_path / f"opentracker-{started}", info_hashes))

        yield start


def our_request(info_hash: bytes, port: int, event: AnnounceEvent | None, left: int) -> AnnounceRequest:
    return AnnounceRequest(
        info_hash=info_hash,
        peer_id=make_peer_id(secrets.token_bytes),
        port=port,
        uploaded=0,
        downloaded=0,
        left=left,
        event=event,
        key=make_key(secrets.token_bytes),
    )


async def announce_over(
    scheme: str, tracker: OpenTracker, req: AnnounceRequest, source: str, state: UdpTrackerState
) -> AnnounceResponse:
    if scheme == "http":
        async with open_http_client(CONFIG, local_address=source, trust_env=False) as client:
            return await announce_http(client, tracker.http_url, req, CONFIG)
    return await announce_udp(tracker.udp_url, req, CONFIG, state, local_host=source)


async def test_our_http_and_udp_clients_see_each_other(
    start_tracker: Callable[[Iterable[bytes]], OpenTracker],
) -> None:
    torrent = small_torrent()
    tracker = start_tracker([torrent.info_hash])
    http_port = free_port(socket.SOCK_STREAM, "127.0.0.1")
    udp_port = free_port(socket.SOCK_STREAM, "127.0.0.3")
    http_state, udp_state = UdpTrackerState(CONFIG), UdpTrackerState(CONFIG)
    size = len(torrent.data)
    with trio.fail_after(30):
        first = await announce_over(
            "http",
            tracker,
            our_request(torrent.info_hash, http_port, AnnounceEvent.STARTED, size),
            "127.0.0.1",
            http_state,
        )
        second = await announce_over(
            "udp", tracker, our_request(torrent.info_hash, udp_port, AnnounceEvent.STARTED, 0), "127.0.0.3", udp_state
        )
        again = await announce_over(
            "http", tracker, our_request(torrent.info_hash, http_port, None, size), "127.0.0.1", http_state
        )
    assert ("127.0.0.3", udp_port) not in first.peers  # not there yet
    assert ("127.0.0.1", http_port) in second.peers  # the UDP client sees the HTTP one...
    assert ("127.0.0.3", udp_port) in again.peers  # ...and the HTTP one the UDP one, at its source address
    assert first.interval >= CONFIG.min_announce_interval
    assert second.complete is not None and second.complete >= 1  # the UDP client announced left=0


def libtorrent_session(listen_port: int) -> Any:
    lt = pytest.importorskip("libtorrent")
    return lt.session(loopback_settings("127.0.0.2", listen_port, lt.alert_category.tracker))


async def accept_handshake(listener: trio.SocketListener) -> bytes:
    """Wait for a peer to connect and return its BitTorrent handshake."""
    stream = await listener.accept()
    async with stream:
        data = b""
        while len(data) < HANDSHAKE_LENGTH:
            part = await stream.receive_some(HANDSHAKE_LENGTH - len(data))
            if not part:
                break
            data += part
        return data


def describe_alerts(session: Any) -> str:
    return "; ".join(alert.message() for alert in session.pop_alerts())


@pytest.mark.parametrize("scheme", ["http", "udp"])
async def test_libtorrent_and_ours_see_each_other(
    scheme: str, start_tracker: Callable[[Iterable[bytes]], OpenTracker], tmp_path: Path
) -> None:
    lt = pytest.importorskip("libtorrent")
    torrent = small_torrent()
    tracker = start_tracker([torrent.info_hash])
    announce_url = tracker.http_url if scheme == "http" else tracker.udp_url
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    (seed_dir / torrent.name.decode()).write_bytes(torrent.data)

    lt_port = free_port(socket.SOCK_STREAM, "127.0.0.2")
    state = UdpTrackerState(CONFIG)
    size = len(torrent.data)
    with trio.fail_after(60):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.3")
        our_port = listeners[0].socket.getsockname()[1]
        session = libtorrent_session(lt_port)
        try:
            # We announce first, as a leecher: nobody else is there yet.
            req = our_request(torrent.info_hash, our_port, AnnounceEvent.STARTED, size)
            first = await announce_over(scheme, tracker, req, "127.0.0.3", state)
            assert ("127.0.0.2", lt_port) not in first.peers

            # libtorrent seeds the same torrent; its announce returns us, and it connects to us.
            params = lt.load_torrent_buffer(torrent.metainfo(announce_url))
            params.save_path = str(seed_dir)
            session.add_torrent(params)
            with trio.move_on_after(30) as waited:
                handshake = await accept_handshake(listeners[0])
            assert not waited.cancelled_caught, f"libtorrent never connected: {describe_alerts(session)}"
            assert len(handshake) == HANDSHAKE_LENGTH
            assert handshake[HANDSHAKE_INFO_HASH] == torrent.info_hash

            # Our next announce lists libtorrent at the address it announced from.
            req = our_request(torrent.info_hash, our_port, None, size)
            again = await announce_over(scheme, tracker, req, "127.0.0.3", state)
            assert ("127.0.0.2", lt_port) in again.peers, f"peers: {again.peers}; {describe_alerts(session)}"
            assert again.complete is not None and again.complete >= 1  # libtorrent counts as a seeder
        finally:
            session.pause()
            for listener in listeners:
                await listener.aclose()
            del session
