"""Peers that waste our time: slowloris on our listener, a silent unchoker, a 1 byte/s trickler, a
peer that hangs up in the middle of every block. Small Config timeouts keep each test short."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import trio

from jstorrent_cli.core import wire
from jstorrent_cli.tasks import session
from tests.conftest import assert_payload
from tests.hostile.peers import (
    FAST_CONFIG,
    HONEST_HOST,
    HOSTILE_HOST,
    OUR_HOST,
    PeerConn,
    RecordingDisplay,
    ScriptedPeer,
    attacker,
    download_beside,
    honest_libtorrent_seeder,
    make_swarm,
)

DEADLINE = 30
SLOW_RATE = 1_000_000  # the honest seeder's upload limit: the download lasts ~2 s, long enough to be attacked


async def _download_beside(tmp_path: Path, script: object) -> tuple[session.SessionResult, ScriptedPeer,
                                                                      RecordingDisplay]:
    swarm = make_swarm(tmp_path)
    assert callable(script)
    hostile = ScriptedPeer(HOSTILE_HOST, swarm.torrent, swarm.payload, script)
    display = RecordingDisplay()
    result = await download_beside(hostile, swarm, tmp_path, upload_rate=SLOW_RATE, display=display)
    return result, hostile, display


async def test_slowloris_on_our_listener_is_cut_at_the_handshake_timeout(tmp_path: Path) -> None:
    """Connections to our listener that send part of a handshake, or nothing, are closed after
    Config.handshake_timeout; meanwhile the download goes on."""
    swarm = make_swarm(tmp_path)
    closed_after: list[float] = []

    async def slowloris(port: int, source: str, start: int) -> None:
        """Send `start` bytes of a handshake, then one more every 0.3 s, never the 68th."""
        stream = await attacker(OUR_HOST, port, source)
        started = trio.current_time()
        sent = start

        async def drip() -> None:
            nonlocal sent
            await stream.send_all(handshake[:start])
            while sent < len(handshake) - 1:
                await trio.sleep(0.3)
                await stream.send_all(handshake[sent : sent + 1])
                sent += 1

        with trio.move_on_after(FAST_CONFIG.handshake_timeout * 5):
            async with trio.open_nursery() as inner:
                inner.start_soon(drip)
                while True:
                    try:
                        if not await stream.receive_some(4096):
                            break
                    except trio.BrokenResourceError:
                        break
                inner.cancel_scope.cancel()
        closed_after.append(trio.current_time() - started)
        await trio.aclose_forcefully(stream)

    handshake = wire.encode_handshake(wire.Handshake(swarm.torrent.info_hash, b"-SL0001-" + b"s" * 12))
    with trio.fail_after(DEADLINE), honest_libtorrent_seeder(swarm, tmp_path, upload_rate=SLOW_RATE) as lt:
        async with trio.open_nursery() as nursery:
            done = trio.Event()
            display = RecordingDisplay()
            display.on_poll = lambda s: done.set() if s.verified_bytes == s.total_bytes else None
            port = await nursery.start(functools.partial(
                session.run, FAST_CONFIG, swarm.torrent, tmp_path / "ours", peers=[(HONEST_HOST, lt.port)],
                listen_host=OUR_HOST, port=0, seed_time=math.inf, display=display))
            async with trio.open_nursery() as attackers:
                for i in range(10):
                    attackers.start_soon(slowloris, port, f"127.0.1.{i + 1}", [0, 1, 30, 60][i % 4])
            await done.wait()
            nursery.cancel_scope.cancel()
    assert len(closed_after) == 10
    slack = 1.0
    assert max(closed_after) <= FAST_CONFIG.handshake_timeout + slack, closed_after
    assert min(closed_after) >= FAST_CONFIG.handshake_timeout - slack / 2, closed_after  # cut by that timeout
    assert_payload(tmp_path / "ours", swarm.name, swarm.files, single=True)


async def test_peer_that_unchokes_and_never_sends_a_block(tmp_path: Path) -> None:
    requested = 0

    async def silent(conn: PeerConn) -> None:
        nonlocal requested
        await conn.handshake()
        await conn.announce_all_and_unchoke()
        while True:
            msg = await conn.next_message()
            if isinstance(msg, wire.Request):
                requested += 1

    with trio.fail_after(DEADLINE):
        result, _, display = await _download_beside(tmp_path, silent)
    assert requested >= 1, "the silent peer was never asked: it tested nothing"
    assert result.hash_failures == 0
    assert HOSTILE_HOST not in display.banned  # silence is not a lie


async def test_peer_that_trickles_one_byte_a_second(tmp_path: Path) -> None:
    trickled = 0

    async def trickler(conn: PeerConn) -> None:
        nonlocal trickled
        await conn.handshake()
        await conn.announce_all_and_unchoke()
        req = await conn.next_of(wire.Request)
        assert isinstance(req, wire.Request)
        message = wire.encode(wire.Piece(req.index, req.begin, conn.block(req.index, req.begin, req.length)))
        for byte in message:
            await conn.send(bytes([byte]))
            trickled += 1
            await trio.sleep(1.0)

    with trio.fail_after(DEADLINE):
        result, _, _ = await _download_beside(tmp_path, trickler)
    assert trickled >= 1
    assert result.hash_failures == 0
    # The download did not wait for the trickler: its one block would take ~4.5 hours.
    assert result.download_time < DEADLINE


async def test_peer_that_hangs_up_in_the_middle_of_every_block(tmp_path: Path) -> None:
    half_sent = 0

    async def hang_up_mid_block(conn: PeerConn) -> None:
        nonlocal half_sent
        await conn.handshake()
        await conn.announce_all_and_unchoke()
        req = await conn.next_of(wire.Request)
        assert isinstance(req, wire.Request)
        message = wire.encode(wire.Piece(req.index, req.begin, conn.block(req.index, req.begin, req.length)))
        await conn.send(message[: len(message) // 2])
        half_sent += 1

    with trio.fail_after(DEADLINE):
        result, hostile, display = await _download_beside(tmp_path, hang_up_mid_block)
    assert hostile.connections >= 2, "we never called it back: not the repeated case"
    assert half_sent >= 2
    assert result.hash_failures == 0
    assert HOSTILE_HOST not in display.banned
