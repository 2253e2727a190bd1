"""Peers that break the wire protocol: only their connection is dropped, the download completes.

Each hostile peer runs next to an honest libtorrent seeder. Every violation must end the hostile
connection (the hostile side sees our hang-up) without costing anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from jstorrent_cli.config import KiB
from jstorrent_cli.core import wire
from tests.hostile.peers import (
    HONEST_HOST,
    HOSTILE_HOST,
    PeerConn,
    RecordingDisplay,
    ScriptedPeer,
    download_beside,
    make_swarm,
)

DEADLINE = 30


async def _until_requested(conn: PeerConn) -> wire.Request:
    await conn.handshake()
    await conn.announce_all_and_unchoke()
    req = await conn.next_of(wire.Request)
    assert isinstance(req, wire.Request)
    return req


async def huge_length(conn: PeerConn) -> None:
    await conn.handshake()
    await conn.send(struct.pack(">IB", 0xFFFFFFFF, wire.MSG_PIECE) + b"\x00" * 4096)


async def wrong_size_bitfield(conn: PeerConn) -> None:
    await conn.handshake()
    size = wire.bitfield_length(conn.torrent.piece_count) + 3
    await conn.send(struct.pack(">IB", size + 1, wire.MSG_BITFIELD) + b"\xff" * size)


async def have_out_of_range(conn: PeerConn) -> None:
    await conn.handshake()
    await conn.send(wire.encode(wire.Have(conn.torrent.piece_count + 1000)))


async def block_never_requested(conn: PeerConn) -> None:
    req = await _until_requested(conn)
    other = (req.index + 7) % conn.torrent.piece_count
    # A misaligned block in a piece it was not asked for: no honest peer sends this.
    await conn.send(wire.encode(wire.Piece(other, 100, b"\x00" * 1000)))


async def block_of_the_wrong_length(conn: PeerConn) -> None:
    req = await _until_requested(conn)
    await conn.send(wire.encode(wire.Piece(req.index, req.begin, conn.block(req.index, req.begin, req.length)[:-1])))


async def garbage_after_handshake(conn: PeerConn) -> None:
    await conn.handshake()
    await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)


async def block_past_the_piece(conn: PeerConn) -> None:
    await _until_requested(conn)
    await conn.send(wire.encode(wire.Piece(0, conn.torrent.piece_length - 8 * KiB, b"\x00" * 16 * KiB)))


VIOLATIONS: dict[str, Callable[[PeerConn], Awaitable[None]]] = {
    "4GiB-length": huge_length,
    "bitfield-wrong-size": wrong_size_bitfield,
    "have-out-of-range": have_out_of_range,
    "block-never-requested": block_never_requested,
    "block-wrong-length": block_of_the_wrong_length,
    "block-past-piece-end": block_past_the_piece,
    "garbage-after-handshake": garbage_after_handshake,
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
async def test_protocol_violation_drops_only_that_connection(tmp_path: Path, name: str) -> None:
    swarm = make_swarm(tmp_path)
    violated = 0
    hung_up = 0

    async def script(conn: PeerConn) -> None:
        nonlocal violated, hung_up
        await VIOLATIONS[name](conn)
        violated += 1
        if await conn.wait_closed():
            hung_up += 1

    hostile = ScriptedPeer(HOSTILE_HOST, swarm.torrent, swarm.payload, script)
    display = RecordingDisplay()
    # Rate-limited so the hostile peer is connected and heard while the download still runs.
    with trio.fail_after(DEADLINE):
        result = await download_beside(hostile, swarm, tmp_path, upload_rate=1_500_000, display=display)
    assert violated >= 1, "the hostile peer never got to misbehave"
    assert hung_up == violated, f"{violated} violations, only {hung_up} connections dropped by us"
    assert HONEST_HOST not in display.banned
    assert result.hash_failures == 0  # nothing the hostile peer sent reached the disk
