"""ConnectionManager: an accepted connection belongs to its torrent's manager, not to the listener."""

from __future__ import annotations

import trio
import trio.testing

from jstorrent_cli.config import DEFAULT_CONFIG, KiB
from jstorrent_cli.core.messages import Fact
from jstorrent_cli.tasks.connections import ConnectionManager
from jstorrent_cli.tasks.peer import TorrentContext


async def _no_block(piece: int, begin: int, length: int) -> bytes:
    raise AssertionError("nothing is uploaded here")


async def test_an_accepted_link_ends_with_its_manager_even_while_the_listener_goes_on() -> None:
    """In a batch one listener serves every item; when an item ends, its incoming links must end with it
    (they ran in the listener's task before, outliving the item's storage and its peer limit share)."""
    send, _receive = trio.open_memory_channel[Fact](100)
    ctx = TorrentContext(b"\x01" * 20, b"-JS0100-" + b"o" * 12, 4, 32 * KiB, 128 * KiB, DEFAULT_CONFIG,
                         bytearray(1), send, _no_block)
    manager = ConnectionManager(ctx, DEFAULT_CONFIG)
    ours, _theirs = trio.testing.memory_stream_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as listener:
            async with trio.open_nursery() as torrent:
                await torrent.start(manager.run)
                listener.start_soon(manager.accept, ours, "127.0.0.9", 6881)
                await trio.testing.wait_all_tasks_blocked()
                assert manager.incoming == 1 and len(manager.links) == 1  # waiting for the handshake
                torrent.cancel_scope.cancel()
            assert manager.incoming == 0 and not manager.links  # gone with its torrent
            listener.cancel_scope.cancel()


async def test_a_connection_before_the_manager_runs_is_refused() -> None:
    send, _receive = trio.open_memory_channel[Fact](1)
    ctx = TorrentContext(b"\x01" * 20, b"-JS0100-" + b"o" * 12, 4, 32 * KiB, 128 * KiB, DEFAULT_CONFIG,
                         bytearray(1), send, _no_block)
    manager = ConnectionManager(ctx, DEFAULT_CONFIG)
    ours, theirs = trio.testing.memory_stream_pair()
    with trio.fail_after(10):
        await manager.accept(ours, "127.0.0.9", 6881)
        assert await theirs.receive_some() == b""  # closed without a byte
    assert manager.incoming == 0
