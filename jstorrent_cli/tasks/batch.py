"""Several torrents in one process: `jstorrent get a.torrent b.torrent ...` and `get -i LIST`.

`run_batch(config, items, options, display, load)` runs at most Config.max_concurrent_downloads (-j)
items at a time, in list order, each as a tasks/session.py session, inside one `trio.run`. What the
items share (session.Shared):

* one listening port: the batch opens it and serves it with a listener.Router, to which each running
  session registers its info hash, so an incoming connection reaches the torrent it asks for;
* one connection limit: the sessions' ConnectionManagers share one PeerSlots, so Config.max_peers
  counts the connections of all items together;
* one unflushed-data budget: the schedulers draw on one core/budget.py BudgetPool of
  Config.max_unflushed_bytes, so the bytes in flight plus the bytes waiting for disk of all items
  together never exceed it.

Each item fails alone: a torrent that cannot be read, a magnet link (not downloadable yet: no metadata
exchange), a stall past --stall-timeout, a disk error in its folder end that item with its error and
exit status; the others go on. An info hash seen earlier in the list is not downloaded again: the item
is reported as a duplicate of the first one; a different torrent whose output path (folder and name) an
earlier item has already is not started (OutputExistsError, exit 13): both would write the same files.
Items go into `options.out_dir` (or their own `dir=`), each under its torrent's name as `get` does for one
torrent.

Ctrl-C / SIGTERM (with `handle_signals`): every running item stops as a single `get` does (status
interrupted), items not started yet are reported interrupted too, and the batch exits 130; a second
signal exits at once. SIGUSR1 writes the batch's live summary to stderr.

`load(source)` reads and parses a .torrent file (cli.read_torrent_file); it raises JsTorrentError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

import trio

from jstorrent_cli.config import Config
from jstorrent_cli.core.batchlist import (
    STATUS_DUPLICATE,
    STATUS_ERROR,
    STATUS_INTERRUPTED,
    STATUS_OK,
    BatchItem,
    ItemResult,
    batch_exit_status,
)
from jstorrent_cli.core.budget import BudgetPool
from jstorrent_cli.core.diagnose import StallReport
from jstorrent_cli.core.magnet import parse_magnet
from jstorrent_cli.core.metainfo import Torrent
from jstorrent_cli.errors import ExitStatus, JsTorrentError, OutputExistsError
from jstorrent_cli.tasks import listener as listener_mod
from jstorrent_cli.tasks import session
from jstorrent_cli.tasks.connections import Address, PeerSlots
from jstorrent_cli.ui.batchview import (
    PHASE_ACTIVE,
    PHASE_DONE,
    PHASE_FAILED,
    PHASE_INTERRUPTED,
    PHASE_WAITING,
    BatchPoll,
    BatchStatus,
    ItemView,
    busiest,
    item_line,
    totals_line,
)

log = logging.getLogger("jstorrent.batch")

Loader = Callable[[str], Torrent]


class MagnetNotSupportedError(JsTorrentError):
    """A magnet link in a batch: jstorrent cannot fetch a torrent's metadata from peers yet."""

    exit_status = ExitStatus.UNKNOWN


class BatchDisplay(Protocol):
    """What the batch shows through (ui/batchview.py's views)."""

    async def run(self, poll: BatchPoll) -> None: ...
    def item_done(self, result: ItemResult) -> None: ...
    def stall(self, item_id: int, report: StallReport) -> None: ...
    def finish(self, results: Sequence[ItemResult]) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class BatchOptions:
    out_dir: str = "."
    peers: Sequence[Address] = ()  # --peer: given to every item
    listen_host: str | None = None
    port: int | None = None  # None: the first free port of Config.listen_port_min..max
    seed_time: float | None = None  # seconds, per item
    seed_ratio: float | None = None
    live_diagnosis: bool = False
    handle_signals: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class BatchResult:
    results: tuple[ItemResult, ...]  # one per item, in list order
    interrupted: bool
    port: int  # the shared listening port

    @property
    def exit_status(self) -> int:
        return batch_exit_status(list(self.results), interrupted=self.interrupted)


@dataclasses.dataclass(slots=True)
class _Entry:
    id: int
    item: BatchItem
    phase: str = PHASE_WAITING
    poll: Callable[[], session.SessionStatus] | None = None
    result: ItemResult | None = None


class _ItemDisplay:
    """The display a session of the batch gets: it only hands its status poll and stalls to the batch."""

    def __init__(self, entry: _Entry, display: BatchDisplay) -> None:
        self._entry = entry
        self._display = display

    async def run(self, poll: Callable[[], session.SessionStatus]) -> None:
        self._entry.poll = poll
        await trio.sleep_forever()

    def stall(self, report: StallReport) -> None:
        self._display.stall(self._entry.id, report)

    def finish(self, result: session.SessionResult) -> None:
        pass  # the batch reports every item itself


def _phase(result: ItemResult | None) -> str:
    """How an ended item counts in the live totals."""
    if result is not None and result.status in (STATUS_OK, STATUS_DUPLICATE):
        return PHASE_DONE
    if result is not None and result.status == STATUS_INTERRUPTED:
        return PHASE_INTERRUPTED
    return PHASE_FAILED


def _failed(entry: _Entry, error: JsTorrentError, torrent: Torrent | None = None) -> ItemResult:
    return ItemResult(
        id=entry.id, source=entry.item.source, status=STATUS_ERROR, exit_status=int(error.exit_status),
        error=str(error), name=torrent.name if torrent is not None else None,
        info_hash=torrent.info_hash if torrent is not None else None, path=entry.item.source,
        average_rate=0.0, bytes=0, total_bytes=0, verified_bytes=0,
    )


class _Batch:
    def __init__(self, config: Config, items: Sequence[BatchItem], options: BatchOptions, display: BatchDisplay,
                 load: Loader, shared: session.Shared) -> None:
        self.config = config
        self.entries = [_Entry(n, item) for n, item in enumerate(items, start=1)]
        self.options = options
        self.display = display
        self.load = load
        self.shared = shared
        self.by_hash: dict[bytes, int] = {}  # info hash -> id of the first item that has it
        self.by_path: dict[str, int] = {}  # output path (real, case-normalised) -> id of the item that writes it
        self.outputs: dict[int, str] = {}  # id -> output path of every item that started (a duplicate's data is there)
        self.interrupt = trio.Event()
        self.started_at = 0.0

    # -- what the views poll --

    def status(self) -> BatchStatus:
        views = []
        for entry in self.entries:
            status = entry.poll() if entry.phase == PHASE_ACTIVE and entry.poll is not None else None
            views.append(ItemView(entry.id, entry.item.source, entry.phase, status))
        slots = self.shared.slots
        return BatchStatus(
            items=tuple(views), buffer_used=self.shared.pool.granted, buffer_total=self.shared.pool.total,
            peers_connected=sum(len(m.links) for m in slots.managers), max_peers=self.config.max_peers,
            elapsed=trio.current_time() - self.started_at,
        )

    # -- items --

    async def run_item(self, entry: _Entry, slots: trio.Semaphore) -> None:
        try:
            entry.result = await self._run_item(entry)
        except Exception as exc:  # a bug in one item must not end the others: one line, logged in full
            log.exception("item %d (%s) failed", entry.id, entry.item.source)
            error = JsTorrentError(f"internal error: {type(exc).__name__}: {exc}")
            entry.result = _failed(entry, error)
        finally:
            slots.release()
            result = entry.result
            entry.phase = _phase(result)
            if result is not None:
                self.display.item_done(result)

    async def _run_item(self, entry: _Entry) -> ItemResult:
        item = entry.item
        try:
            if item.is_magnet:
                magnet = parse_magnet(item.source)
                raise MagnetNotSupportedError(
                    f"magnet link {magnet.info_hash.hex()}: downloading from magnet links is not supported yet "
                    "(use the .torrent file)")
            torrent = self.load(item.source)
        except JsTorrentError as err:
            return _failed(entry, err)
        first = self.by_hash.get(torrent.info_hash)
        out_dir = item.dir if item.dir is not None else self.options.out_dir
        path = os.path.abspath(os.path.join(out_dir, torrent.name))
        if first is not None:
            log.info("item %d duplicates item %d (%s)", entry.id, first, torrent.info_hash.hex())
            return ItemResult(
                id=entry.id, source=item.source, status=STATUS_DUPLICATE, exit_status=int(ExitStatus.OK),
                error=None, name=torrent.name, info_hash=torrent.info_hash, path=self.outputs[first],
                average_rate=0.0, bytes=0, total_bytes=torrent.total_length, verified_bytes=0, duplicate_of=first,
            )
        key = os.path.normcase(os.path.realpath(path))
        owner = self.by_path.get(key)
        if owner is not None:  # another torrent with the same name into the same folder: same files, same resume state
            return _failed(entry, OutputExistsError(
                f"{path} is the output of #{owner} already (another torrent with the same name): not downloaded, "
                "so that neither overwrites the other; give this item its own dir="), torrent)
        self.by_hash[torrent.info_hash] = entry.id
        self.by_path[key] = entry.id
        self.outputs[entry.id] = path
        options = self.options
        result = await session.run(
            self.config, torrent, out_dir, peers=options.peers, display=_ItemDisplay(entry, self.display),
            listen_host=options.listen_host, seed_time=options.seed_time, seed_ratio=options.seed_ratio,
            live_diagnosis=options.live_diagnosis, shared=self.shared, interrupt=self.interrupt,
        )
        status = {"ok": STATUS_OK, "interrupted": STATUS_INTERRUPTED}.get(result.status, STATUS_ERROR)
        exit_status, error = result.exit_status, result.error
        if status == STATUS_INTERRUPTED and result.verified_bytes >= result.total_bytes:
            # Ctrl-C while it seeded (or checked data already complete): the download itself is done.
            status, exit_status, error = STATUS_OK, int(ExitStatus.OK), None
        return ItemResult(
            id=entry.id, source=item.source, status=status, exit_status=exit_status, error=error,
            name=result.name, info_hash=result.info_hash, path=path, average_rate=result.average_rate,
            bytes=result.downloaded_bytes, total_bytes=result.total_bytes, verified_bytes=result.verified_bytes,
        )

    # -- signals --

    async def watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGUSR1:
                status = self.status()
                shown, _ = busiest(status, len(status.items))
                lines = [totals_line(status), *(item_line(i) for i in shown)]
                with contextlib.suppress(OSError):
                    sys.stderr.write("\n".join(lines) + "\n")
                    sys.stderr.flush()
                continue
            if self.interrupt.is_set():
                log.warning("second signal %s: exiting at once", signum)
                sys.stderr.flush()
                sys.stdout.flush()
                os._exit(int(ExitStatus.INTERRUPTED))
            self.interrupt.set()

    # -- the run --

    async def run(self, listeners: list[trio.SocketListener], task_status: trio.TaskStatus[int]) -> BatchResult:
        self.started_at = trio.current_time()
        with contextlib.ExitStack() as stack:
            signals = (stack.enter_context(trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1))
                       if self.options.handle_signals else None)
            async with trio.open_nursery() as outer:
                if signals is not None:
                    outer.start_soon(self.watch_signals, signals)
                outer.start_soon(listener_mod.serve, listeners, self.shared.router.handle)
                outer.start_soon(self.display.run, self.status)
                task_status.started(self.shared.port)
                slots = trio.Semaphore(self.config.max_concurrent_downloads)
                async with trio.open_nursery() as items:
                    for entry in self.entries:
                        await slots.acquire()
                        if self.interrupt.is_set():
                            slots.release()
                            break
                        entry.phase = PHASE_ACTIVE
                        items.start_soon(self.run_item, entry, slots)
                outer.cancel_scope.cancel()
        results = []
        for entry in self.entries:
            if entry.result is None:  # never started (Ctrl-C came first)
                entry.phase = PHASE_INTERRUPTED
                entry.result = ItemResult(
                    id=entry.id, source=entry.item.source, status=STATUS_INTERRUPTED,
                    exit_status=int(ExitStatus.INTERRUPTED), error="interrupted before it started", name=None,
                    info_hash=None, path=entry.item.source, average_rate=0.0, bytes=0, total_bytes=0,
                    verified_bytes=0,
                )
            results.append(entry.result)
        batch = BatchResult(tuple(results), self.interrupt.is_set(), self.shared.port)
        self.display.finish(batch.results)
        return batch


async def run_batch(
    config: Config,
    items: Sequence[BatchItem],
    options: BatchOptions,
    display: BatchDisplay,
    load: Loader,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> BatchResult:
    """Download every item (see the module docstring); with `nursery.start`, reports the shared port.
    Raises only when the listening port cannot be opened (before any item starts)."""
    listeners = await listener_mod.open_listeners(config, options.listen_host, options.port)
    shared = session.Shared(
        router=listener_mod.Router(config), port=listener_mod.listening_port(listeners), slots=PeerSlots(),
        pool=BudgetPool(config.max_unflushed_bytes,
                        min_share=max(config.budget_min_share, config.block_size)),
    )
    batch = _Batch(config, items, options, display, load, shared)
    return await batch.run(listeners, task_status)


__all__ = ["BatchOptions", "BatchResult", "MagnetNotSupportedError", "run_batch"]
