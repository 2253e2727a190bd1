"""The connection manager of one torrent: which addresses we connect to, and every live link.

Addresses come from trackers and `--peer`; `add_addresses` never blocks. The manager keeps at most
Config.max_peers connections (outgoing and incoming together; incoming ones at most
Config.max_incoming_share of them, so idle strangers cannot lock out the peers we call),
connects with Config.connect_timeout,
retries a failed address after Config.connect_retry_initial doubling to Config.connect_retry_max,
tries addresses that worked before first, and never talks to a banned IP (any port).

Every connection, ours or accepted, becomes a `PeerLink` registered in `links` (which the scheduler
actor routes into) for as long as its `run_peer` task lives.

In a batch, the managers of all items share one `PeerSlots`: Config.max_peers (and the incoming
share) then count the connections of every item together, and a connection that ends in one item
wakes the others, which may be waiting for a slot.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable

import trio

from jstorrent_cli.config import Config
from jstorrent_cli.core.messages import PeerId
from jstorrent_cli.tasks.peer import PeerLink, TorrentContext, run_peer
from jstorrent_cli.tasks.scheduler_task import BOTH_SEEDERS

log = logging.getLogger("jstorrent.connections")

Address = tuple[str, int]


@dataclasses.dataclass(slots=True)
class _AddressState:
    failures: int = 0
    next_try: float = 0.0
    worked: bool = False
    busy: bool = False


class PeerSlots:
    """One connection limit for several managers (a batch): Config.max_peers over all of them."""

    def __init__(self) -> None:
        self.managers: list[ConnectionManager] = []

    def used(self) -> int:
        return sum(len(m.links) + m.connecting for m in self.managers)

    def incoming(self) -> int:
        return sum(m.incoming for m in self.managers)

    def add(self, manager: ConnectionManager) -> None:
        self.managers.append(manager)

    def remove(self, manager: ConnectionManager) -> None:
        if manager in self.managers:
            self.managers.remove(manager)
        self.wake_all()

    def wake_all(self) -> None:
        for manager in self.managers:
            manager.wake()


class ConnectionManager:
    def __init__(
        self,
        ctx: TorrentContext,
        config: Config,
        *,
        local_address: str | None = None,
        own_addresses: Iterable[Address] = (),
        slots: PeerSlots | None = None,
    ) -> None:
        self.ctx = ctx
        self.slots = slots
        self.config = config
        self.local_address = local_address
        self.links: dict[PeerId, PeerLink] = {}
        self.banned: set[str] = set()
        self.addresses: dict[Address, _AddressState] = {}
        self.own = set(own_addresses)
        self.peers_used: set[Address] = set()
        self.downloaded_closed = 0  # payload bytes of links that ended
        self.uploaded_closed = 0
        self.connecting = 0
        self.incoming = 0  # accepted connections alive now (at most max_peers x max_incoming_share)
        self.accepting = True  # False once the session is stopping
        self.on_empty: Callable[[], None] | None = None  # every connection is gone (re-announce sooner)
        self._ids = itertools.count(1)
        self._wake = trio.Event()
        # Every link, accepted ones too, runs in `run`'s nursery: it ends with this manager's torrent, even
        # when the listener that accepted it serves a whole batch (tasks/batch.py) and goes on.
        self._nursery: trio.Nursery | None = None
        if slots is not None:
            slots.add(self)

    def wake(self) -> None:
        """Look again for addresses to connect to (a slot may have come free)."""
        self._wake.set()

    def close(self) -> None:
        """This manager's torrent is done: it no longer counts against a shared limit."""
        if self.slots is not None:
            self.slots.remove(self)
            self.slots = None

    # -- calls that never block --

    def add_addresses(self, addresses: Iterable[Address]) -> None:
        added = False
        for address in addresses:
            if address not in self.addresses and address not in self.own:
                self.addresses[address] = _AddressState()
                added = True
        if added:
            self._wake.set()

    def ban(self, ip: str) -> None:
        self.banned.add(ip)

    @property
    def downloaded(self) -> int:
        return self.downloaded_closed + sum(link.down.total for link in self.links.values())

    @property
    def uploaded(self) -> int:
        return self.uploaded_closed + sum(link.up.total for link in self.links.values())

    def _room(self) -> bool:
        if self.slots is not None:
            return self.slots.used() < self.config.max_peers
        return len(self.links) + self.connecting < self.config.max_peers

    def _incoming_room(self) -> bool:
        """Room for one more accepted connection: a share of the slots stays for the ones we make."""
        limit = max(1, int(self.config.max_peers * self.config.max_incoming_share))
        incoming = self.slots.incoming() if self.slots is not None else self.incoming
        return incoming < limit and self._room()

    # -- running connections --

    async def _run_link(self, stream: trio.abc.Stream, ip: str, port: int, *, incoming: bool) -> PeerLink:
        link = PeerLink(next(self._ids), ip, port, self.config, incoming=incoming, now=trio.current_time())
        self.links[link.peer] = link
        try:
            await run_peer(stream, link, self.ctx)
        finally:
            del self.links[link.peer]
            self.downloaded_closed += link.down.total
            self.uploaded_closed += link.up.total
            if link.down.total or link.up.total:
                self.peers_used.add((ip, port))
            if not self.links and self.on_empty is not None and self.accepting:
                self.on_empty()
            self._wake.set()
            if self.slots is not None:
                self.slots.wake_all()
        return link

    async def accept(self, stream: trio.abc.Stream, ip: str, port: int) -> None:
        """The listener's handler: take the connection if there is room and the IP is not banned. The link
        runs in this manager's own nursery (see `__init__`); this waits for it to end, since the listener
        closes the stream when its handler returns."""
        nursery = self._nursery
        if nursery is None or not self.accepting or ip in self.banned or not self._incoming_room():
            await trio.aclose_forcefully(stream)
            return
        self.incoming += 1
        ended = trio.Event()
        nursery.start_soon(self._run_accepted, stream, ip, port, ended)
        await ended.wait()

    async def _run_accepted(self, stream: trio.abc.Stream, ip: str, port: int, ended: trio.Event) -> None:
        try:
            await self._run_link(stream, ip, port, incoming=True)
        finally:
            self.incoming -= 1
            ended.set()

    async def _connect(self, address: Address, state: _AddressState) -> None:
        host, port = address
        worked = seeder = False
        try:
            stream: trio.SocketStream | None = None
            with trio.move_on_after(self.config.connect_timeout):
                try:
                    stream = await trio.open_tcp_stream(host, port, local_address=self.local_address)
                except OSError as err:
                    log.debug("connect to %s:%s failed: %s", host, port, err)
            if stream is None:
                return
            self.connecting -= 1
            try:
                link = await self._run_link(stream, host, port, incoming=False)
            finally:
                self.connecting += 1
            worked = link.handshaken
            seeder = link.close_reason == BOTH_SEEDERS
        finally:
            self.connecting -= 1
            if self.slots is not None:
                self.slots.wake_all()
            state.busy = False
            now = trio.current_time()
            if worked:
                state.worked = True
                state.failures = 0
                # A seeder we hung up on has nothing for us while we seed: call it again much later.
                delay = self.config.connect_retry_max if seeder else self.config.connect_retry_initial
                state.next_try = now + delay
            else:
                state.failures += 1
                delay = self.config.connect_retry_initial * 2 ** (state.failures - 1)
                state.next_try = now + min(delay, self.config.connect_retry_max)
            self._wake.set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect to known addresses while there is room, and run every link, forever (until cancelled).
        With `nursery.start`, it reports once it takes accepted connections."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await self._connect_loop(nursery)
            finally:
                self._nursery = None

    async def _connect_loop(self, nursery: trio.Nursery) -> None:
        while True:
            now = trio.current_time()
            ready = [
                (address, state)
                for address, state in self.addresses.items()
                if not state.busy and state.next_try <= now and address[0] not in self.banned
            ]
            ready.sort(key=lambda item: (not item[1].worked, item[1].failures))
            for address, state in ready:
                if not self.accepting or not self._room():
                    break
                state.busy = True
                self.connecting += 1
                nursery.start_soon(self._connect, address, state)
            waiting = [
                s.next_try for a, s in self.addresses.items()
                if not s.busy and s.next_try > now and a[0] not in self.banned
            ]
            with trio.move_on_at(min(waiting) if waiting else float("inf")):
                await self._wake.wait()
            self._wake = trio.Event()
