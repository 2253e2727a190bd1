"""Scripted hostile peers over loopback, built on core/wire.py and trio sockets.

    hostile = ScriptedPeer("127.0.0.5", torrent, payload, script)
    port = await nursery.start(hostile.serve)        # the session connects to ("127.0.0.5", port)

Every connection the session opens to it runs `script(conn)`: a coroutine that does whatever the
behaviour under test is, with `PeerConn` helpers for the honest parts (handshake, bitfield,
unchoke, reading the session's messages, serving a block). `connections` counts them, so a test can
tell whether a banned IP was ever called again.

`attacker(...)` opens a connection *to* the session's listener from a chosen loopback address.
`RecordingDisplay` polls the session's status (and so the scheduler snapshot: banned IPs).
`honest_libtorrent_seeder` is the interop fixture's libtorrent session, optionally rate-limited so
the hostile peer gets its share of requests before the honest one has sent everything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from jstorrent_cli.config import DEFAULT_CONFIG, KiB, MiB
from jstorrent_cli.core import wire
from jstorrent_cli.core.metainfo import Torrent
from jstorrent_cli.tasks import connections, session
from tests.conftest import FileSpec, assert_payload, build_torrent, random_files, write_payload
from tests.interop.libtorrent_fixture import LibtorrentPeer, libtorrent_peer

OUR_HOST = "127.0.0.3"
HONEST_HOST = "127.0.0.2"
HOSTILE_HOST = "127.0.0.5"
THEIR_ID = b"-HP0001-" + b"h" * 12

# Small timeouts so every hostile behaviour is noticed within a second or two.
FAST_CONFIG = dataclasses.replace(
    DEFAULT_CONFIG,
    handshake_timeout=1.0,
    connect_retry_initial=0.1,
    connect_retry_max=0.3,
    request_timeout_initial=1.0,
    request_timeout_min=0.5,
    request_timeout_max=2.0,
    snub_timeout=1.0,
    silence_timeout=3.0,
    piece_retry_delay=0.5,
    tick_interval=0.1,
)


@dataclasses.dataclass
class Swarm:
    """One torrent's payload on disk for the honest seeder, and its metainfo."""

    name: str
    files: list[FileSpec]
    data: bytes  # the .torrent
    torrent: Torrent
    payload: bytes  # every byte of the torrent, in order


def make_swarm(root: Path, *, size: int = 2 * MiB + 777, piece_length: int = 32 * KiB, seed: int = 8) -> Swarm:
    files: list[FileSpec] = [(("hostile.bin",), random_files(seed, [size])[0][1])]
    data, torrent = build_torrent("hostile.bin", files, piece_length, single=True)
    write_payload(root / "seed", "hostile.bin", files, single=True)
    return Swarm("hostile.bin", files, data, torrent, files[0][1])


class PeerConn:
    """One connection of a scripted peer: raw bytes out, decoded messages in."""

    def __init__(self, stream: trio.SocketStream, torrent: Torrent, payload: bytes) -> None:
        self.stream = stream
        self.torrent = torrent
        self.payload = payload
        self.decoder = wire.Decoder(DEFAULT_CONFIG, num_pieces=torrent.piece_count)
        self.inbox: list[wire.Message] = []
        self.closed_by_them = False

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def handshake(self, *, fast: bool = True) -> wire.Handshake:
        await self.send(wire.encode_handshake(wire.Handshake(self.torrent.info_hash, THEIR_ID, supports_fast=fast,
                                                             supports_extended=False)))
        while True:
            msg = await self.next_message()
            if isinstance(msg, wire.Handshake):
                return msg

    async def next_message(self) -> wire.Message:
        """The session's next message; raises EOFError once it hangs up."""
        while not self.inbox:
            try:
                data = await self.stream.receive_some(64 * KiB)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                self.closed_by_them = True
                raise EOFError("the session closed the connection")
            self.inbox.extend(self.decoder.feed(data))
        return self.inbox.pop(0)

    async def next_of(self, kind: type[wire.Message]) -> wire.Message:
        while True:
            msg = await self.next_message()
            if isinstance(msg, kind):
                return msg

    async def wait_closed(self) -> bool:
        """Read (and drop) everything until the session hangs up; True when it did."""
        with contextlib.suppress(EOFError):
            while True:
                await self.next_message()
        return self.closed_by_them

    async def announce_all_and_unchoke(self) -> None:
        bits = bytearray(b"\xff" * wire.bitfield_length(self.torrent.piece_count))
        spare = len(bits) * 8 - self.torrent.piece_count
        bits[-1] &= (0xFF << spare) & 0xFF
        await self.send(wire.encode(wire.Bitfield(bytes(bits))) + wire.encode(wire.UNCHOKE))

    def block(self, index: int, begin: int, length: int) -> bytes:
        start = index * self.torrent.piece_length + begin
        return self.payload[start : start + length]

    async def send_piece(self, req: wire.Request, data: bytes | None = None) -> None:
        block = self.block(req.index, req.begin, req.length) if data is None else data
        await self.send(wire.encode(wire.Piece(req.index, req.begin, block)))


Script = Callable[[PeerConn], Awaitable[None]]


class ScriptedPeer:
    """Listens on `host`; every connection runs `script`. Never raises for the session's hang-ups."""

    def __init__(self, host: str, torrent: Torrent, payload: bytes, script: Script) -> None:
        self.host = host
        self.torrent = torrent
        self.payload = payload
        self.script = script
        self.connections = 0
        self.connected_at: list[float] = []  # trio clock
        self.conns: list[PeerConn] = []
        self.port = 0

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.connected_at.append(trio.current_time())
        conn = PeerConn(stream, self.torrent, self.payload)
        self.conns.append(conn)
        with contextlib.suppress(EOFError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self.script(conn)
        await trio.aclose_forcefully(stream)


async def attacker(host: str, port: int, source: str) -> trio.SocketStream:
    """A connection to the session's listener from loopback address `source`."""
    return await trio.open_tcp_stream(host, port, local_address=source)


class RecordingDisplay:
    """A display that keeps every status it polls (the snapshot carries the banned IPs)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.banned: set[str] = set()
        self.last: session.SessionStatus | None = None
        self.on_poll: Callable[[session.SessionStatus], None] | None = None

    async def run(self, poll: Callable[[], session.SessionStatus]) -> None:
        while True:
            status = poll()
            self.last = status
            self.banned |= status.scheduler.banned_ips
            if self.on_poll is not None:
                self.on_poll(status)
            await trio.sleep(self.interval)

    def finish(self, result: session.SessionResult) -> None:
        pass


@contextlib.contextmanager
def honest_libtorrent_seeder(swarm: Swarm, root: Path, *, upload_rate: int = 0,
                             port: int | None = None) -> Iterator[LibtorrentPeer]:
    """libtorrent seeding `swarm` from root/seed on HONEST_HOST (upload_rate bytes/s, 0: unlimited)."""
    with libtorrent_peer(HONEST_HOST, port=port) as peer:
        if upload_rate:
            peer.session.apply_settings({"upload_rate_limit": upload_rate})
        peer.add(swarm.data, root / "seed", seed=True)
        yield peer


async def download_beside(
    hostile: ScriptedPeer, swarm: Swarm, root: Path, *, upload_rate: int, display: RecordingDisplay,
) -> session.SessionResult:
    """Download `swarm` into root/ours from `hostile` and an honest libtorrent seeder side by side;
    the download must complete byte-exact (the point of every hostile test)."""
    with honest_libtorrent_seeder(swarm, root, upload_rate=upload_rate) as lt:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(hostile.serve)
            result = await session.run(FAST_CONFIG, swarm.torrent, root / "ours",
                                       peers=[(HOSTILE_HOST, port), (HONEST_HOST, lt.port)],
                                       listen_host=OUR_HOST, port=0, display=display)
            nursery.cancel_scope.cancel()
    assert result.status == "ok", result
    assert_payload(root / "ours", swarm.name, swarm.files, single=True)
    return result


class BanRecorder:
    """Every ban the session's connection manager takes, with its trio time (wraps ConnectionManager.ban)."""

    def __init__(self) -> None:
        self.bans: dict[str, float] = {}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> BanRecorder:
        real = connections.ConnectionManager.ban
        bans = self.bans

        def ban(manager: connections.ConnectionManager, ip: str) -> None:
            bans.setdefault(ip, trio.current_time())
            real(manager, ip)

        monkeypatch.setattr(connections.ConnectionManager, "ban", ban)
        return self


def sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()


INF = math.inf
