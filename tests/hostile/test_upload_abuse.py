"""Peers that abuse us as a seeder: request floods, 1 MiB requests, requests for pieces we lack.

The seeder is a jstorrent session; the connection-level facts (queue high-water mark, why a link
closed) are read from the PeerLinks, recorded by wrapping connections.run_peer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from jstorrent_cli.config import KiB, MiB
from jstorrent_cli.core import wire
from jstorrent_cli.tasks import connections, session
from jstorrent_cli.tasks import peer as peer_task
from jstorrent_cli.tasks.peer import PeerLink, TorrentContext
from tests.conftest import assert_payload
from tests.hostile.peers import (
    FAST_CONFIG,
    HOSTILE_HOST,
    OUR_HOST,
    PeerConn,
    Swarm,
    make_swarm,
)
from tests.interop.libtorrent_fixture import libtorrent_peer

DEADLINE = 30
LEECHER_HOST = "127.0.0.6"
SEED_CONFIG = dataclasses.replace(FAST_CONFIG, choke_interval=0.2, upload_queue_per_peer=64)


@pytest.fixture
def links(monkeypatch: pytest.MonkeyPatch) -> list[PeerLink]:
    seen: list[PeerLink] = []
    real = peer_task.run_peer

    async def recording(stream: trio.abc.Stream, link: PeerLink, ctx: TorrentContext) -> None:
        seen.append(link)
        await real(stream, link, ctx)

    monkeypatch.setattr(connections, "run_peer", recording)
    return seen


async def _connect(swarm: Swarm, port: int, *, fast: bool) -> PeerConn:
    stream = await trio.open_tcp_stream(OUR_HOST, port, local_address=HOSTILE_HOST)
    conn = PeerConn(stream, swarm.torrent, swarm.payload)
    await conn.handshake(fast=fast)
    await conn.send(wire.encode(wire.INTERESTED))
    await conn.next_of(wire.Unchoke)
    return conn


async def _against_seeder(tmp_path: Path, swarm: Swarm, attack: Callable[[int], Awaitable[None]],
                          *, with_leecher: bool) -> None:
    """Run `attack(port)` against a jstorrent seeder; with a libtorrent leecher downloading meanwhile."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(
            session.run, SEED_CONFIG, swarm.torrent, tmp_path / "seed", listen_host=OUR_HOST, port=0,
            seed_time=math.inf))
        if with_leecher:
            with libtorrent_peer(LEECHER_HOST) as lt:
                handle = lt.add(swarm.data, tmp_path / "lt", seed=False)
                handle.connect_peer((OUR_HOST, port))
                await attack(port)
                await lt.wait_until(lambda: bool(handle.status().is_seeding), what="libtorrent download")
        else:
            await attack(port)
        nursery.cancel_scope.cancel()
    if with_leecher:
        assert_payload(tmp_path / "lt", swarm.name, swarm.files, single=True)


@pytest.mark.parametrize("fast", [False, True], ids=["ignored", "rejected"])
async def test_request_flood_keeps_our_upload_queue_bounded(tmp_path: Path, links: list[PeerLink],
                                                            fast: bool) -> None:
    swarm = make_swarm(tmp_path)
    flood = 20_000
    sent = 0

    async def attack(port: int) -> None:
        nonlocal sent
        conn = await _connect(swarm, port, fast=fast)
        blocks = [(p, b) for p in range(swarm.torrent.piece_count)
                  for b in range(0, swarm.torrent.piece_length, 16 * KiB)][:-2]
        # Never read: our socket buffer fills, the uploader blocks, requests pile up at our side.
        batch = 500
        with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError):  # we may hang up on it
            for start in range(0, flood, batch):
                await conn.send(b"".join(wire.encode(wire.Request(*blocks[i % len(blocks)], 16 * KiB))
                                         for i in range(start, start + batch)))
                sent += batch
        await trio.aclose_forcefully(conn.stream)

    with trio.fail_after(DEADLINE):
        await _against_seeder(tmp_path, swarm, attack, with_leecher=True)
    hostile = [link for link in links if link.ip == HOSTILE_HOST]
    assert len(hostile) == 1 and sent > SEED_CONFIG.upload_queue_per_peer * 4
    assert 0 < hostile[0].upload_queue_peak <= SEED_CONFIG.upload_queue_per_peer
    if fast:
        # Rejects it never reads pile up too: past the same bound the connection is dropped.
        assert hostile[0].close_reason is not None and "faster than it reads" in hostile[0].close_reason


async def test_request_for_a_1mib_block_drops_the_connection(tmp_path: Path, links: list[PeerLink]) -> None:
    """Decision (docs/reliability.md): a request over Config.block_size is a protocol error; no
    client sends one, and serving it would let one message take 1 MiB of our memory and bandwidth."""
    swarm = make_swarm(tmp_path)
    got_piece = False

    async def attack(port: int) -> None:
        nonlocal got_piece
        conn = await _connect(swarm, port, fast=True)
        await conn.send(wire.encode(wire.Request(0, 0, 1 * MiB)))
        with pytest.raises(EOFError):
            while True:
                msg = await conn.next_message()
                got_piece = got_piece or isinstance(msg, wire.Piece)
        await trio.aclose_forcefully(conn.stream)

    with trio.fail_after(DEADLINE):
        await _against_seeder(tmp_path, swarm, attack, with_leecher=True)
    assert not got_piece
    hostile = [link for link in links if link.ip == HOSTILE_HOST]
    assert hostile[0].close_reason is not None and "RemoteProtocolError" in hostile[0].close_reason


@pytest.mark.parametrize("fast", [False, True], ids=["ignored", "rejected"])
async def test_requests_for_pieces_we_do_not_have(tmp_path: Path, links: list[PeerLink], fast: bool) -> None:
    """A partial seeder (pieces 0-4 damaged on disk) is asked for pieces it lacks: it answers REJECT
    (fast) or nothing, keeps the connection, and still serves a piece it has, byte-exact."""
    swarm = make_swarm(tmp_path, size=1 * MiB)
    path = tmp_path / "seed" / swarm.name
    damaged = bytearray(path.read_bytes())
    missing = range(5)
    for piece in missing:
        damaged[piece * swarm.torrent.piece_length] ^= 0xFF
    path.write_bytes(bytes(damaged))
    answers: list[wire.Message] = []

    async def attack(port: int) -> None:
        conn = await _connect(swarm, port, fast=fast)
        asked = [wire.Request(p, 0, 16 * KiB) for p in missing]
        good = wire.Request(7, 16 * KiB, 16 * KiB)
        await conn.send(b"".join(wire.encode(r) for r in [*asked, good]))
        while True:
            msg = await conn.next_message()
            if isinstance(msg, wire.Piece | wire.RejectRequest):
                answers.append(msg)
            if isinstance(msg, wire.Piece):
                assert bytes(msg.block) == conn.block(good.index, good.begin, good.length)
                break
        await trio.aclose_forcefully(conn.stream)

    with trio.fail_after(DEADLINE):
        await _against_seeder(tmp_path, swarm, attack, with_leecher=False)
    pieces = [m for m in answers if isinstance(m, wire.Piece)]
    rejects = [m for m in answers if isinstance(m, wire.RejectRequest)]
    assert [(m.index, m.begin) for m in pieces] == [(7, 16 * KiB)]
    assert sorted(m.index for m in rejects) == (list(missing) if fast else [])
    hostile = [link for link in links if link.ip == HOSTILE_HOST]
    assert hostile[0].close_reason is None or "RemoteProtocolError" not in hostile[0].close_reason
