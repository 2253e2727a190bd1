"""The scheduler actor: receive a fact, `Scheduler.handle(fact, now)`, route the commands.

Only the edges *into* the scheduler wait (its inbox is bounded, Config.inbox_capacity): peers,
the writer and the hasher await `inbox.send`, which is what pushes back on sockets. Every edge out
of it is `send_nowait`:

* SendRequests / SendCancels / SendInterested / SendNotInterested -> that peer's outbox;
  SendHave -> the outbox of every peer the scheduler does not know to have the piece (or one peer's);
* WriteBlocks -> the storage writer channel; HashPiece -> the hasher channel (with the expected SHA-1);
* DropPeer -> that connection's cancel scope; BanPeer -> the session (no reconnects from that IP)
  and every connection from that IP; Finished -> the session.

A full outbox closes that peer (it stopped reading); the writer and hasher channels are sized by
the session from the scheduler's own limits (the budget, the piece count), so they never fill.

The actor also owns the choker: on every tick and whenever a peer's interest changes or it leaves,
the choker's decision is turned into CHOKE / UNCHOKE in the outboxes. Rates are sampled on ticks.
A piece that hashed ok is told to the session (`on_verified`: the resume state is due for a save).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from jstorrent_cli.core.choker import Candidate, Choker
from jstorrent_cli.core.messages import (
    BanPeer,
    Command,
    DropPeer,
    Fact,
    Finished,
    HashPiece,
    PeerGone,
    PeerId,
    PeerInterested,
    PeerJoined,
    PeerNotInterested,
    PieceHashed,
    ReceivedBlock,
    SendCancels,
    SendHave,
    SendInterested,
    SendNotInterested,
    SendRequests,
    Tick,
    WriteBlocks,
)
from jstorrent_cli.core.scheduler import Scheduler
from jstorrent_cli.tasks.peer import PeerLink, SetChoking

log = logging.getLogger("jstorrent.scheduler")

# Why a connection to a peer with every piece was closed while we seed (the connection manager waits
# longest before calling such an address again).
BOTH_SEEDERS = "both sides are seeders"


class SessionHooks(Protocol):
    """What the actor tells the session (none of these may block)."""

    def on_finished(self) -> None: ...
    def on_ban(self, ip: str, reason: str) -> None: ...
    def seeding(self) -> bool: ...
    def on_verified(self, piece: int) -> None:
        """A piece passed its hash check (the resume state is due for a save)."""


class SchedulerActor:
    """Routes one torrent's scheduler commands; `run()` is the actor loop."""

    def __init__(
        self,
        scheduler: Scheduler,
        links: dict[PeerId, PeerLink],
        write_send: trio.MemorySendChannel[Sequence[ReceivedBlock]],
        hash_send: trio.MemorySendChannel[tuple[int, bytes, bool]],
        piece_hash: Callable[[int], bytes],
        have: bytearray,
        hooks: SessionHooks,
        choker: Choker,
    ) -> None:
        self.scheduler = scheduler
        self.links = links
        self.write_send = write_send
        self.hash_send = hash_send
        self.piece_hash = piece_hash
        self.have = have
        self.hooks = hooks
        self.choker = choker
        self.facts_handled = 0
        self.num_pieces = scheduler.picker.num_pieces
        self.seeds: set[PeerId] = set()  # peers that joined with every piece

    async def run(self, inbox: trio.MemoryReceiveChannel[Fact]) -> None:
        """Handle facts until cancelled or every sender has closed the inbox."""
        async with inbox:
            async for fact in inbox:
                self.handle(fact, trio.current_time())

    def handle(self, fact: Fact, now: float) -> None:
        if isinstance(fact, PieceHashed) and fact.ok:
            self.have[fact.piece >> 3] |= 0x80 >> (fact.piece & 7)
            self.hooks.on_verified(fact.piece)
        if isinstance(fact, PeerJoined) and self._complete(fact):
            self.seeds.add(fact.peer)
        elif isinstance(fact, PeerGone):
            self.seeds.discard(fact.peer)
        self.route(self.scheduler.handle(fact, now))
        self.facts_handled += 1
        if isinstance(fact, PeerJoined) and fact.peer in self.seeds and self.hooks.seeding():
            self._close_seed(fact.peer)
        if isinstance(fact, Tick):
            for link in list(self.links.values()):
                link.down.sample(now)
                link.up.sample(now)
            self.rechoke(now)
        elif isinstance(fact, PeerInterested | PeerNotInterested | PeerGone | PeerJoined):
            self.rechoke(now)

    def route(self, commands: list[Command]) -> None:
        links = self.links
        for cmd in commands:
            if isinstance(cmd, WriteBlocks):
                self.write_send.send_nowait(cmd.blocks)
            elif isinstance(cmd, SendRequests | SendCancels | SendInterested | SendNotInterested):
                link = links.get(cmd.peer)
                if link is not None:
                    link.send_nowait(cmd)
            elif isinstance(cmd, SendHave):
                if cmd.peer is None:
                    peer_has = self.scheduler.peer_has
                    for peer, link in list(links.items()):
                        if not peer_has(peer, cmd.piece):  # it told us it has it: the HAVE says nothing
                            link.send_nowait(cmd)
                else:
                    target = links.get(cmd.peer)
                    if target is not None:
                        target.send_nowait(cmd)
            elif isinstance(cmd, HashPiece):
                self.hash_send.send_nowait((cmd.piece, self.piece_hash(cmd.piece), cmd.want_block_digests))
            elif isinstance(cmd, DropPeer):
                link = links.get(cmd.peer)
                if link is not None:
                    log.info("dropping %s:%s: %s", link.ip, link.port, cmd.reason)
                    link.close(cmd.reason)
            elif isinstance(cmd, BanPeer):
                log.warning("banning %s: %s", cmd.ip, cmd.reason)
                self.hooks.on_ban(cmd.ip, cmd.reason)
                for link in list(links.values()):
                    if link.ip == cmd.ip:
                        link.close(f"banned: {cmd.reason}")
            elif isinstance(cmd, Finished):
                self.hooks.on_finished()
                for peer in list(self.seeds):
                    self._close_seed(peer)

    def _complete(self, fact: PeerJoined) -> bool:
        if fact.have_all:
            return True
        return bool(fact.bitfield) and int.from_bytes(fact.bitfield, "big").bit_count() == self.num_pieces

    def _close_seed(self, peer: PeerId) -> None:
        """Two seeders have nothing to say to each other: free the connection slot."""
        link = self.links.get(peer)
        if link is not None:
            link.close(BOTH_SEEDERS)

    def rechoke(self, now: float) -> None:
        links = self.links
        candidates = [
            Candidate(peer, link.peer_interested, link.down.rate, link.up.rate)
            for peer, link in links.items()
            if link.joined
        ]
        unchoked = self.choker.decide(candidates, now, seeding=self.hooks.seeding())
        for peer, link in links.items():
            if not link.joined:
                continue
            choke = peer not in unchoked
            if choke != link.am_choking:
                link.am_choking = choke
                link.send_nowait(SetChoking(choke))


async def ticker(inbox: trio.MemorySendChannel[Fact], interval: float) -> None:
    """Send a Tick every `interval` seconds (awaiting the bounded inbox like any other producer)."""
    while True:
        await trio.sleep(interval)
        await inbox.send(Tick())
