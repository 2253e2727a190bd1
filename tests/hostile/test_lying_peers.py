"""Peers that send corrupt data: banned by IP, never called again, and the download is byte-exact."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from jstorrent_cli.core import wire
from jstorrent_cli.tasks import session
from tests.conftest import assert_payload, free_port
from tests.hostile.peers import (
    FAST_CONFIG,
    HONEST_HOST,
    HOSTILE_HOST,
    OUR_HOST,
    BanRecorder,
    PeerConn,
    RecordingDisplay,
    ScriptedPeer,
    download_beside,
    honest_libtorrent_seeder,
    make_swarm,
)

DEADLINE = 40


async def test_sole_contributor_of_corrupt_pieces_is_banned_and_never_called_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="jstorrent")
    bans = BanRecorder().install(monkeypatch)
    swarm = make_swarm(tmp_path)
    corrupt_pieces: set[int] = set()
    enough = trio.Event()

    async def liar(conn: PeerConn) -> None:
        await conn.handshake()
        await conn.announce_all_and_unchoke()
        while True:
            req = await conn.next_of(wire.Request)
            assert isinstance(req, wire.Request)
            corrupt_pieces.add(req.index)
            await conn.send_piece(req, bytes(len(conn.block(req.index, req.begin, req.length))))
            if len(corrupt_pieces) >= 3:
                enough.set()

    hostile = ScriptedPeer(HOSTILE_HOST, swarm.torrent, swarm.payload, liar)
    display = RecordingDisplay()
    lt_port = free_port(HONEST_HOST)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(hostile.serve)

            async def honest_later() -> None:
                # The honest seeder comes up only once the liar has sent corrupt pieces, so the liar is
                # certainly the sole contributor of some of them.
                await enough.wait()
                with honest_libtorrent_seeder(swarm, tmp_path, port=lt_port):
                    await trio.sleep_forever()

            nursery.start_soon(honest_later)
            result = await session.run(FAST_CONFIG, swarm.torrent, tmp_path / "ours",
                                       peers=[(HOSTILE_HOST, port), (HONEST_HOST, lt_port)],
                                       listen_host=OUR_HOST, port=0, display=display)
            nursery.cancel_scope.cancel()
    assert result.status == "ok", result
    assert_payload(tmp_path / "ours", swarm.name, swarm.files, single=True)
    assert result.hash_failures >= 1
    assert HOSTILE_HOST in bans.bans
    assert HONEST_HOST not in bans.bans and HONEST_HOST not in display.banned
    # Banned by IP: with a 0.1 s retry, an unbanned address would have been called again many times.
    assert hostile.connections == 1
    assert any(f"banning {HOSTILE_HOST}: sole contributor" in r.getMessage() for r in caplog.records), caplog.text


async def test_liar_sharing_a_piece_is_named_by_block_digests_once_the_piece_passes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The liar sends one corrupt block of a piece and hangs up; the rest of the piece comes from the
    honest seeder, so the failed piece has two contributors. Once the piece passes from the honest
    seeder alone, comparing per-block digests names the liar: it is banned, the honest one is not."""
    swarm = make_swarm(tmp_path, piece_length=64 * 1024)  # four blocks a piece: room to share it
    lies = 0

    async def one_bad_block_then_hang_up(conn: PeerConn) -> None:
        """First connection: one corrupt block, then hang up. Later ones: announce everything and
        never send a block, so the rest of that piece (and its retry) can only come from the honest
        seeder."""
        nonlocal lies
        await conn.handshake()
        await conn.announce_all_and_unchoke()
        if lies:
            await conn.wait_closed()
            return
        # Lie in a piece of several blocks: the short last piece is one block, and a lie there would
        # make the liar its sole contributor (banned for that, not by the digests).
        last = swarm.torrent.piece_count - 1
        while True:
            req = await conn.next_of(wire.Request)
            assert isinstance(req, wire.Request)
            if req.index != last:
                break
        lies += 1
        await conn.send_piece(req, b"\xa5" * req.length)

    caplog.set_level(logging.WARNING, logger="jstorrent")
    hostile = ScriptedPeer(HOSTILE_HOST, swarm.torrent, swarm.payload, one_bad_block_then_hang_up)
    display = RecordingDisplay()
    bans = BanRecorder().install(monkeypatch)
    with trio.fail_after(DEADLINE):
        result = await download_beside(hostile, swarm, tmp_path, upload_rate=1_000_000, display=display)
    assert lies >= 1 and result.hash_failures >= 1
    assert HOSTILE_HOST in bans.bans, (lies, result)
    assert HONEST_HOST not in bans.bans and HONEST_HOST not in display.banned
    assert all(t <= bans.bans[HOSTILE_HOST] for t in hostile.connected_at), "a banned IP was called again"
    # Named by the per-block digests, not as a sole contributor, and not by suspicion alone.
    assert any(f"banning {HOSTILE_HOST}: sent a corrupt block" in r.getMessage() for r in caplog.records), caplog.text


async def test_unsolicited_whole_blocks_of_garbage_never_reach_the_output(tmp_path: Path) -> None:
    """Aligned, right-sized blocks it was never asked for (every block of the torrent, zeroed) are
    thrown away and counted as waste, even where another peer was asked for that block
    (test_unrequested_blocks.py): the output is exact, and the honest seeder is never blamed."""
    swarm = make_swarm(tmp_path)
    pushed = 0

    async def pusher(conn: PeerConn) -> None:
        nonlocal pushed
        await conn.handshake()
        await conn.announce_all_and_unchoke()
        torrent = conn.torrent
        for start in range(0, torrent.total_length, 16 * 1024):
            index, begin = divmod(start, torrent.piece_length)
            length = len(conn.block(index, begin, 16 * 1024))
            await conn.send(wire.encode(wire.Piece(index, begin, bytes(length))))
            pushed += 1
        await conn.wait_closed()

    hostile = ScriptedPeer(HOSTILE_HOST, swarm.torrent, swarm.payload, pusher)
    display = RecordingDisplay()
    with trio.fail_after(DEADLINE):
        result = await download_beside(hostile, swarm, tmp_path, upload_rate=1_000_000, display=display)
    assert pushed >= 1
    assert result.wasted_bytes > 0  # the unsolicited data was counted as waste, not written
    assert HONEST_HOST not in display.banned
