"""A block from a peer that was never asked for it, while another peer holds that block requested.

Decision (docs/reliability.md): outside endgame such a block is unsolicited, whoever else asked for
it. It is dropped and counted as waste; it is never written over the requested copy's turn, so a
garbage block cannot fail a piece and cast suspicion on the honest peer that was asked. A block that
*was* asked of the sender and released (choke, timeout) is still taken if useful: it was on the wire.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core import messages as m
from jstorrent_cli.core import wire
from tests.core.test_scheduler import BS, deliver, join, make, requests
from tests.hostile.peers import (
    HONEST_HOST,
    HOSTILE_HOST,
    PeerConn,
    RecordingDisplay,
    ScriptedPeer,
    download_beside,
    make_swarm,
)

DEADLINE = 40


def test_block_requested_of_another_peer_is_waste_when_an_unasked_peer_sends_it() -> None:
    s = make(num_pieces=8, blocks=4)
    asked = requests(join(s, 0, have_all=True), 0)
    assert asked and not s.endgame
    join(s, 1, have_all=True, reqq=1)  # peer 1 asks for its own block, not peer 0's
    stolen = asked[0]
    out = deliver(s, 1, [stolen], 0.1, fill=0xEE)
    assert not [c for c in out if isinstance(c, m.WriteBlocks)], "an unsolicited block was written"
    assert s.snapshot().wasted_bytes == BS
    assert s.snapshot().peers[1].wasted_bytes == BS
    # Peer 0 still holds its request, no CANCEL went to it, and its copy is the one written.
    assert stolen in s.outstanding(0)
    out = deliver(s, 0, [stolen], 0.2)
    assert [c for c in out if isinstance(c, m.WriteBlocks)]
    s.check_invariants()


def test_block_released_by_a_timeout_is_still_taken_from_its_peer() -> None:
    """The other side of the rule: the peer *was* asked; its copy arriving after the release, while
    another peer now holds the block, is written (and that peer is cancelled)."""
    s = make(num_pieces=1, blocks=2, config=dataclasses.replace(DEFAULT_CONFIG, endgame_max_dups=1))
    held = requests(join(s, 0, have_all=True), 0)
    join(s, 1, have_all=True, now=1.0)  # idle: everything is requested and there is no endgame
    again = requests(s.handle(m.Tick(), 30.0), 1)  # past request_timeout_initial: released, CANCEL sent
    assert not s.outstanding(0)
    assert held[0] in again
    out = deliver(s, 0, held[:1], 30.1)
    assert [c for c in out if isinstance(c, m.WriteBlocks)]
    assert s.snapshot().wasted_bytes == 0
    s.check_invariants()


async def test_blocks_pushed_for_requests_held_by_the_honest_seeder_are_waste_not_hash_failures(
    tmp_path: Path,
) -> None:
    """The hostile peer has nothing (no request ever goes to it) and keeps pushing zeroed copies of
    every block while the rate-limited honest seeder holds requests for them. Written, one of them
    would fail its piece (and charge the honest seeder): there must be no hash failure at all."""
    swarm = make_swarm(tmp_path)
    pushed = 0

    async def pusher(conn: PeerConn) -> None:
        nonlocal pushed
        await conn.handshake()
        await conn.send(wire.encode(wire.UNCHOKE))  # no bitfield, no HAVE: it is never asked for anything
        torrent = conn.torrent
        while True:
            for start in range(0, torrent.total_length, BS):
                index, begin = divmod(start, torrent.piece_length)
                length = len(conn.block(index, begin, BS))
                await conn.send(wire.encode(wire.Piece(index, begin, bytes(length))))
                pushed += 1
            await trio.sleep(0.05)  # a round of the whole torrent, then again (pacing, not a race)

    hostile = ScriptedPeer(HOSTILE_HOST, swarm.torrent, swarm.payload, pusher)
    display = RecordingDisplay()
    with trio.fail_after(DEADLINE):
        result = await download_beside(hostile, swarm, tmp_path, upload_rate=1_000_000, display=display)
    assert pushed > swarm.torrent.total_length // BS, pushed  # it pushed while the download ran
    assert result.hash_failures == 0, result
    assert result.wasted_bytes > 0
    assert HONEST_HOST not in display.banned


def test_released_requests_are_remembered_only_up_to_the_bound() -> None:
    """Config.released_requests_kept bounds the memory per peer: past it, the oldest released request
    is forgotten and its late copy counts as never asked for."""
    config = dataclasses.replace(DEFAULT_CONFIG, released_requests_kept=1, endgame_max_dups=1)
    s = make(num_pieces=1, blocks=2, config=config)
    held = requests(join(s, 0, have_all=True), 0)
    assert len(held) == 2
    s.handle(m.Choked(0), 0.1)  # both released: only the newer one is remembered
    again = requests(join(s, 1, have_all=True, now=0.1), 1)
    assert sorted(again) == sorted(held)
    oldest, newest = held  # released in the order they were sent
    out = deliver(s, 0, [oldest], 0.2)
    assert not [c for c in out if isinstance(c, m.WriteBlocks)] and s.snapshot().wasted_bytes == BS
    out = deliver(s, 0, [newest], 0.3)
    assert [c for c in out if isinstance(c, m.WriteBlocks)]
    s.check_invariants()
