"""Incoming connections: pick a listening port, accept, hand each stream to the session.

`open_listeners(config, host, port)` binds `port` when given (0 lets the system choose), else the
first free port of Config.listen_port_min..listen_port_max, on `host` (None: every address).
`serve(listeners, handler)` accepts until cancelled; each connection runs `handler(stream, ip, port)`
in its own task, and the handler owns (and closes) the stream.

A batch (tasks/batch.py) listens on one port for all its torrents: `Router.handle` is then the
handler. It reads the start of the peer's handshake, up to its info hash (within
Config.handshake_timeout), and hands the connection to the handler registered for that info hash,
wrapped in a `ReplayStream` that gives the bytes already read back first, so the peer task reads a
whole handshake as if nobody had looked. An unknown info hash, or anything that is not a BitTorrent
handshake, is closed without a byte sent back.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable

import trio

from jstorrent_cli.config import Config
from jstorrent_cli.core.wire import INFO_HASH_LENGTH, PROTOCOL_NAME
from jstorrent_cli.errors import JsTorrentError, UsageError

log = logging.getLogger("jstorrent.listener")

Handler = Callable[[trio.abc.Stream, str, int], Awaitable[None]]
# BEP 3 handshake: <19>"BitTorrent protocol", 8 reserved bytes, then the 20-byte info hash.
_PREFIX = bytes([len(PROTOCOL_NAME)]) + PROTOCOL_NAME
_RESERVED_LENGTH = 8
_INFO_HASH_START = len(_PREFIX) + _RESERVED_LENGTH
_ROUTING_LENGTH = _INFO_HASH_START + INFO_HASH_LENGTH


class ListenError(JsTorrentError):
    """No port could be bound for incoming connections."""


async def open_listeners(config: Config, host: str | None, port: int | None) -> list[trio.SocketListener]:
    """Bind the listening socket(s); a port in use (or no free port in the range) is a clear error."""
    ports = [port] if port is not None else list(range(config.listen_port_min, config.listen_port_max + 1))
    last: OSError | None = None
    for candidate in ports:
        try:
            return await trio.open_tcp_listeners(candidate, host=host)
        except OSError as err:
            last = err
            if err.errno not in (errno.EADDRINUSE, errno.EACCES):
                break
    where = f"{host or '*'}:{port}" if port is not None else f"{host or '*'} ports {ports[0]}-{ports[-1]}"
    reason = last.strerror if last is not None and last.strerror else str(last)
    if port is not None or (last is not None and last.errno not in (errno.EADDRINUSE, errno.EACCES)):
        raise UsageError(f"cannot listen on {where}: {reason}")
    raise ListenError(f"cannot listen on {where}: {reason}")


def listening_port(listeners: list[trio.SocketListener]) -> int:
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def serve(listeners: list[trio.SocketListener], handler: Handler) -> None:
    """Accept connections forever (until cancelled); each one runs `handler` in its own task."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            address = stream.socket.getpeername()
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        await handler(stream, str(address[0]), int(address[1]))

    await trio.serve_listeners(handle, listeners)


class ReplayStream(trio.abc.Stream):
    """A stream whose first bytes were already read: `receive_some` gives them back first."""

    def __init__(self, head: bytes, stream: trio.abc.Stream) -> None:
        self._head = head
        self.stream = stream

    def take_head(self) -> bytes:
        """The bytes read ahead and not received yet; after this, reading `stream` itself is safe (a peer
        connection does that, so the router's connections keep the socket's receive-into path)."""
        head, self._head = self._head, b""
        return head

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._head:
            if max_bytes is None or max_bytes >= len(self._head):
                data, self._head = self._head, b""
            else:
                data, self._head = self._head[:max_bytes], self._head[max_bytes:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _receive_exactly(stream: trio.abc.Stream, count: int) -> bytes | None:
    """`count` bytes, or None if the peer closed first or sent something that is not a handshake."""
    data = bytearray()
    while len(data) < count:
        chunk_size = count - len(data)
        part = await stream.receive_some(chunk_size)
        if not part:
            return None
        data += part
        checked = min(len(data), len(_PREFIX))
        if data[:checked] != _PREFIX[:checked]:
            return None
    return bytes(data)


class Router:
    """Incoming connections of several torrents on one port, routed by the info hash they ask for."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.handlers: dict[bytes, Handler] = {}
        self.routed = 0  # connections handed to a torrent (tests read it)
        self.refused = 0  # connections closed: unknown info hash, no handshake, or too slow

    def register(self, info_hash: bytes, handler: Handler) -> None:
        if info_hash in self.handlers:
            raise ValueError(f"info hash {info_hash.hex()} registered twice")
        self.handlers[info_hash] = handler

    def unregister(self, info_hash: bytes) -> None:
        self.handlers.pop(info_hash, None)

    async def handle(self, stream: trio.abc.Stream, ip: str, port: int) -> None:
        head: bytes | None = None
        try:
            with trio.move_on_after(self.config.handshake_timeout):
                head = await _receive_exactly(stream, _ROUTING_LENGTH)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
            log.debug("incoming %s:%s failed before its handshake: %s", ip, port, err)
            head = None
        handler = None if head is None else self.handlers.get(head[_INFO_HASH_START:_ROUTING_LENGTH])
        if head is None or handler is None:
            self.refused += 1
            await trio.aclose_forcefully(stream)
            return
        self.routed += 1
        await handler(ReplayStream(head, stream), ip, port)
