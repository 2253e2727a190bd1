"""Incoming connections: pick a listening port, accept, hand each stream to the session.

`open_listeners(config, host, port)` binds `port` when given (0 lets the system choose), else the
first free port of Config.listen_port_min..listen_port_max, on `host` (None: every address).
`serve(listeners, handler)` accepts until cancelled; each connection runs `handler(stream, ip, port)`
in its own task, and the handler owns (and closes) the stream.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

import trio

from jstorrent_cli.config import Config
from jstorrent_cli.errors import JsTorrentError, UsageError

Handler = Callable[[trio.SocketStream, str, int], Awaitable[None]]


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
