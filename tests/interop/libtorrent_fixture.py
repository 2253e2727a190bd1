"""A libtorrent 2.x session as a test peer on its own loopback address.

    with libtorrent_peer("127.0.0.2") as peer:          # listening, DHT/LSD/UPnP/NAT-PMP off
        handle = peer.add(torrent_bytes, save_dir, seed=True)   # seed_mode: data already there
        handle.connect_peer(("127.0.0.3", port))
        await peer.wait_until(lambda: handle.status().is_seeding, what="download")

libtorrent runs its own threads; the test's trio loop only polls it (`wait_until` sleeps between
polls), so every wait sits under the test's `trio.fail_after`. The newer API only (settings dict,
`load_torrent_buffer`, `torrent_flags`), which does not warn under -W error.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

# How often the trio loop looks at libtorrent's state while waiting.
POLL_INTERVAL = 0.05


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class LibtorrentPeer:
    def __init__(self, lt: Any, session: Any, host: str, port: int) -> None:
        self.lt = lt
        self.session = session
        self.host = host
        self.port = port

    def add(self, torrent_bytes: bytes, save_dir: Path, *, seed: bool, tracker: str | None = None) -> Any:
        lt = self.lt
        params = lt.load_torrent_buffer(torrent_bytes)
        params.save_path = str(save_dir)
        if seed:
            params.flags |= lt.torrent_flags.seed_mode
        if tracker is not None:
            params.trackers = [tracker]
        return self.session.add_torrent(params)

    def alerts(self) -> str:
        return "; ".join(alert.message() for alert in self.session.pop_alerts())

    async def wait_until(self, done: Callable[[], bool], *, what: str) -> None:
        while not done():
            await trio.sleep(POLL_INTERVAL)


def loopback_settings(host: str, port: int, alerts: int) -> dict[str, Any]:
    """libtorrent settings for a test peer on host:port: DHT, LSD, UPnP, NAT-PMP and uTP off, several
    connections per IP allowed (every test peer has its own loopback address), errors, status and
    `alerts` reported."""
    lt = pytest.importorskip("libtorrent")
    return {
        "listen_interfaces": f"{host}:{port}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "stop_tracker_timeout": 1,
        "alert_mask": lt.alert_category.error | lt.alert_category.status | alerts,
    }


@contextlib.contextmanager
def libtorrent_peer(host: str, *, port: int | None = None) -> Iterator[LibtorrentPeer]:
    lt = pytest.importorskip("libtorrent")
    port = port if port is not None else free_port(host)
    settings = loopback_settings(host, port, lt.alert_category.peer)
    settings.update({"outgoing_interfaces": host, "announce_to_all_trackers": True})
    session = lt.session(settings)
    try:
        yield LibtorrentPeer(lt, session, host, port)
    finally:
        session.pause()
        del session
