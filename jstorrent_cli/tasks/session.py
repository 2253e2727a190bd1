"""One download (and upload) of one torrent, start to finish, in one nursery.

`run(config, torrent, out_dir, peers=..., display=...) -> SessionResult` wires the pieces of
DESIGN.md's data flow together:

    storage (files under out_dir: DIR/<name> for one file, DIR/<name>/... for several)
      -> hash check of whatever is already on disk (pieces that pass are ours: we seed them)
    scheduler actor (tasks/scheduler_task.py) <- facts from peers, writer, hasher, ticker
    writer and hasher loops (tasks/storage.py)
    connection manager (tasks/connections.py) <- addresses from `peers` and the trackers
    listener (tasks/listener.py) for incoming connections
    Announcer (tasks/tracker.py) when the torrent has trackers: `started`, `completed`, `stopped`
    the display, polling `status()` a few times a second

When every piece is verified the session announces `completed` and, by default, ends. `seed_time`
(seconds; math.inf for ever) and `seed_ratio` keep it seeding first. With `handle_signals`, the first
SIGINT or SIGTERM stops it (status "interrupted", exit 130), a second one exits at once.

Errors: a peer's misbehaviour costs only its connection; a disk error (StorageError) ends the session
with that error in the result. `run` itself never raises a JsTorrentError: it returns it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import random
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol, TextIO

import trio

from jstorrent_cli.config import Config
from jstorrent_cli.core.announce import AnnounceRequest, make_key, make_peer_id
from jstorrent_cli.core.choker import Choker
from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.core.messages import BlocksWritten, Fact, PeerId, PieceHashed, ReceivedBlock
from jstorrent_cli.core.metainfo import Torrent
from jstorrent_cli.core.scheduler import Scheduler, SchedulerSnapshot
from jstorrent_cli.errors import ExitStatus, FileCreateError, JsTorrentError
from jstorrent_cli.tasks import listener as listener_mod
from jstorrent_cli.tasks.connections import Address, ConnectionManager
from jstorrent_cli.tasks.peer import TokenBucket, TorrentContext
from jstorrent_cli.tasks.scheduler_task import SchedulerActor, ticker
from jstorrent_cli.tasks.storage import Storage, storage_files
from jstorrent_cli.tasks.tracker import (
    Announcer,
    TrackerClient,
    TrackerStatus,
    TrackerTiers,
    open_http_client,
)
from jstorrent_cli.ui import piecemap
from jstorrent_cli.ui.format import format_rate, format_size

log = logging.getLogger("jstorrent.session")


class SessionState(enum.Enum):
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    SEEDING = "seeding"
    DONE = "done"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True, slots=True)
class SessionStatus:
    """What a display polls: one consistent picture of the session (ui/display.py's StatusLike)."""

    name: str
    info_hash: bytes
    total_bytes: int
    verified_bytes: int
    download_rate: float  # bytes/s, smoothed, all peers, measured at the sockets
    upload_rate: float
    downloaded_bytes: int  # payload received so far
    uploaded_bytes: int
    scheduler: SchedulerSnapshot  # an empty one while checking
    piece_states: bytes  # one byte per piece, ui/piecemap.py's MISSING / IN_FLIGHT / VERIFIED / UNWANTED
    peer_clients: dict[PeerId, str]  # client names from extended handshakes
    peers_connected: int
    trackers: tuple[TrackerStatus, ...]
    elapsed: float
    state: SessionState
    listen_port: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class SessionResult:
    status: str  # "ok", "error" or "interrupted"
    error: str | None  # the one line shown; None when the download completed
    exception: JsTorrentError | None  # the error itself (its exit status), when status is "error"
    name: str
    info_hash: bytes
    state: SessionState
    total_bytes: int
    verified_bytes: int
    downloaded_bytes: int
    uploaded_bytes: int
    elapsed: float  # seconds, whole session
    download_time: float  # seconds from start to the last piece verified (or to the end)
    average_rate: float  # downloaded bytes / download_time
    peers_used: int  # peers that sent or took at least one block
    wasted_bytes: int
    hash_failures: int

    @property
    def exit_status(self) -> int:
        if self.status == "ok":
            return int(ExitStatus.OK)
        if self.status == "interrupted":
            return int(ExitStatus.INTERRUPTED)
        return int(self.exception.exit_status if self.exception is not None else ExitStatus.UNKNOWN)


class Display(Protocol):
    async def run(self, poll: Callable[[], SessionStatus]) -> None:
        """Show the session until cancelled, polling `poll()` a few times a second."""

    def finish(self, result: SessionResult) -> None:
        """Show the final result (called once, after `run` was cancelled)."""


class NullDisplay:
    """Shows nothing (--quiet, tests)."""

    async def run(self, poll: Callable[[], SessionStatus]) -> None:
        await trio.sleep_forever()

    def finish(self, result: SessionResult) -> None:
        pass


class PlainDisplay:
    """One status line every `interval` seconds and a summary at the end (aria2c's shape)."""

    def __init__(self, interval: float, stream: TextIO | None = None) -> None:
        self.interval = interval
        self.stream = stream

    def _write(self, line: str) -> None:
        out = self.stream if self.stream is not None else sys.stderr
        out.write(line + "\n")
        out.flush()

    async def run(self, poll: Callable[[], SessionStatus]) -> None:
        while True:
            await trio.sleep(self.interval)
            s = poll()
            pct = 100.0 * s.verified_bytes / s.total_bytes if s.total_bytes else 100.0
            self._write(
                f"[{s.state.value} {format_size(s.verified_bytes)}/{format_size(s.total_bytes)}({pct:.0f}%) "
                f"CN:{s.peers_connected} DL:{format_rate(s.download_rate)} UL:{format_rate(s.upload_rate)}]"
            )

    def finish(self, result: SessionResult) -> None:
        if result.status == "ok":
            self._write(
                f"{result.name}: {format_size(result.verified_bytes)} in {result.download_time:.1f} s "
                f"({format_rate(result.average_rate)}), {result.peers_used} peers, "
                f"{format_size(result.wasted_bytes)} wasted, {result.hash_failures} hash failures"
            )
        elif result.status == "interrupted":
            self._write(f"{result.name}: interrupted at {format_size(result.verified_bytes)}")
        else:
            self._write(f"{result.name}: failed: {result.error}")


def _first_error(exc: BaseException) -> JsTorrentError | None:
    if isinstance(exc, JsTorrentError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_error(inner)
            if found is not None:
                return found
    return None


def _geometry(torrent: Torrent, config: Config) -> Geometry:
    return Geometry.from_files(((f.length, f.pad) for f in torrent.files), torrent.piece_length, config.block_size)


class _Session:
    def __init__(
        self,
        config: Config,
        torrent: Torrent,
        out_dir: str | os.PathLike[str],
        *,
        peers: Sequence[Address],
        display: Display,
        listen_host: str | None,
        port: int | None,
        seed_time: float | None,
        seed_ratio: float | None,
        handle_signals: bool,
        peer_id: bytes | None,
        rng: random.Random,
    ) -> None:
        self.config = config
        self.torrent = torrent
        self.out_dir = os.fspath(out_dir)
        self.initial_peers = list(peers)
        self.display = display
        self.listen_host = listen_host
        self.port = port
        self.seed_time = seed_time
        self.seed_ratio = seed_ratio
        self.handle_signals = handle_signals
        self.peer_id = peer_id if peer_id is not None else make_peer_id(secrets.token_bytes)
        self.rng = rng
        self.geometry = _geometry(torrent, config)
        self.state = SessionState.CHECKING
        self.started_at = 0.0
        self.finished_at: float | None = None
        self.interrupted = False
        self.stop = trio.Event()
        self.scheduler: Scheduler | None = None
        self.manager: ConnectionManager | None = None
        self.announcer: Announcer | None = None
        self.listen_port: int | None = None
        self.have = bytearray((torrent.piece_count + 7) // 8)
        self.initial_verified_bytes = 0
        self.key = make_key(secrets.token_bytes)
        self.empty_snapshot = SchedulerSnapshot(
            peers=(), bytes_in_flight=0, bytes_waiting_for_disk=0, budget=config.max_unflushed_bytes,
            pieces_missing=torrent.piece_count, pieces_partial=0, pieces_fully_requested=0, pieces_awaiting_hash=0,
            pieces_verified=0, pieces_wanted=torrent.piece_count, free_blocks=0, endgame=False, wasted_bytes=0,
            hash_failures=0, banned_ips=frozenset(), done_bytes=0, total_bytes=torrent.total_length, finished=False,
        )

    # -- hooks for the scheduler actor --

    def on_finished(self) -> None:
        if self.finished_at is not None:
            return
        self.finished_at = trio.current_time()
        log.info("download complete: %s", self.torrent.name)
        if self.announcer is not None:
            self.announcer.download_completed()
        if self.wants_seeding():
            self.state = SessionState.SEEDING
        else:
            self.state = SessionState.DONE
            self.stop.set()

    def on_ban(self, ip: str, reason: str) -> None:
        if self.manager is not None:
            self.manager.ban(ip)

    def seeding(self) -> bool:
        return self.finished_at is not None

    def wants_seeding(self) -> bool:
        return self.seed_time is not None or self.seed_ratio is not None

    # -- status --

    def verified_bytes(self) -> int:
        if self.scheduler is None:
            return self.initial_verified_bytes
        return self.scheduler.picker.verified_wanted_bytes

    def status(self) -> SessionStatus:
        manager = self.manager
        links = list(manager.links.values()) if manager is not None else []
        scheduler = self.scheduler
        if scheduler is not None:
            picker = scheduler.picker
            snapshot = scheduler.snapshot()
            states = piecemap.build_piece_states(picker.verified, picker.wanted, picker.active)
        else:
            snapshot = self.empty_snapshot
            states = bytes(self.torrent.piece_count)
        return SessionStatus(
            name=self.torrent.name,
            info_hash=self.torrent.info_hash,
            total_bytes=self.torrent.total_length,
            verified_bytes=self.verified_bytes(),
            download_rate=sum(link.down.rate for link in links),
            upload_rate=sum(link.up.rate for link in links),
            downloaded_bytes=manager.downloaded if manager is not None else 0,
            uploaded_bytes=manager.uploaded if manager is not None else 0,
            scheduler=snapshot,
            piece_states=states,
            peer_clients={link.peer: link.client for link in links if link.client},
            peers_connected=sum(1 for link in links if link.handshaken),
            trackers=(self.announcer.status,) if self.announcer is not None else (),
            elapsed=trio.current_time() - self.started_at,
            state=self.state,
            listen_port=self.listen_port,
        )

    def announce_request(self) -> AnnounceRequest:
        manager = self.manager
        assert manager is not None and self.listen_port is not None
        return AnnounceRequest(
            info_hash=self.torrent.info_hash,
            peer_id=self.peer_id,
            port=self.listen_port,
            uploaded=manager.uploaded,
            downloaded=manager.downloaded,
            left=self.torrent.total_length - self.verified_bytes(),
            numwant=self.config.numwant,
            key=self.key,
        )

    # -- the hash check of existing data --

    def _present_pieces(self, storage: Storage) -> list[int]:
        sizes: list[int] = []
        for index, entry in enumerate(self.torrent.files):
            if entry.pad or entry.length == 0:
                sizes.append(entry.length)
                continue
            try:
                st = os.lstat(storage.path_of(index))
            except OSError:
                sizes.append(-1)
                continue
            sizes.append(st.st_size if os.path.isfile(storage.path_of(index)) and not os.path.islink(
                storage.path_of(index)) else -1)
        present = []
        for piece in range(self.geometry.piece_count):
            spans = self.geometry.piece_spans(piece)
            if all(s.pad or sizes[s.file_index] >= s.file_offset + s.length for s in spans):
                present.append(piece)
        return present

    async def check_existing(self, storage: Storage) -> list[bool]:
        have = [False] * self.torrent.piece_count
        present = await trio.to_thread.run_sync(self._present_pieces, storage)
        if not present:
            return have
        send, receive = trio.open_memory_channel[int](len(present))
        for piece in present:
            send.send_nowait(piece)
        send.close()

        async def worker() -> None:
            async for piece in receive:
                if await storage.hash_piece(piece, self.torrent.piece_hash(piece)):
                    have[piece] = True
                    self.initial_verified_bytes += self.geometry.piece_size(piece)

        async with trio.open_nursery() as nursery:
            for _ in range(self.config.hash_threads):
                nursery.start_soon(worker)
        return have

    # -- the run --

    async def watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if self.interrupted:
                log.warning("second signal %s: exiting at once", signum)
                sys.stderr.flush()
                sys.stdout.flush()
                os._exit(int(ExitStatus.INTERRUPTED))
            self.interrupted = True
            self.stop.set()

    async def watch_seeding(self) -> None:
        config = self.config
        while True:
            await trio.sleep(config.tick_interval)
            if self.finished_at is None or self.manager is None:
                continue
            seeded_for = trio.current_time() - self.finished_at
            total = self.torrent.total_length
            if self.seed_time is not None and seeded_for >= self.seed_time:
                break
            if self.seed_ratio is not None and self.manager.uploaded >= self.seed_ratio * total:
                break
        self.state = SessionState.DONE
        self.stop.set()

    async def run(self, task_status: trio.TaskStatus[int]) -> SessionResult:
        self.started_at = trio.current_time()
        error: JsTorrentError | None = None
        try:
            await self._run(task_status)
        except BaseException as exc:
            error = _first_error(exc)
            if error is None:
                raise
        return self._result(error)

    async def _run(self, task_status: trio.TaskStatus[int]) -> None:
        config = self.config
        torrent = self.torrent
        files = storage_files(torrent.files)
        try:
            os.makedirs(self.out_dir, exist_ok=True)
        except OSError as err:
            raise FileCreateError(f"cannot create the download folder {self.out_dir}: {err.strerror}") from None
        with contextlib.ExitStack() as stack:
            # Signals are caught before anything shows that the session runs.
            signals = (stack.enter_context(trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM))
                       if self.handle_signals else None)
            storage = stack.enter_context(Storage(self.out_dir, files, self.geometry, config))
            async with trio.open_nursery() as outer:
                if signals is not None:
                    outer.start_soon(self.watch_signals, signals)
                outer.start_soon(self.display.run, self.status)
                with trio.CancelScope() as check_scope:
                    outer.start_soon(self._cancel_on_stop, check_scope)
                    have = await self.check_existing(storage)
                    await storage.prepare()
                if not check_scope.cancelled_caught:
                    await self._transfer(storage, have, task_status)
                outer.cancel_scope.cancel()

    async def _cancel_on_stop(self, scope: trio.CancelScope) -> None:
        await self.stop.wait()
        scope.cancel()

    async def _let_completed_through(self) -> None:
        """A download that just finished gives its `completed` announce a moment to go out (bounded
        by Config.stopped_announce_deadline) before `stopped` ends the tracker loop."""
        announcer, finished_at = self.announcer, self.finished_at
        if announcer is None or finished_at is None or self.interrupted or announcer.status.last_tracker is None:
            return
        with trio.move_on_after(self.config.stopped_announce_deadline):
            while (announcer.status.last_success_at or 0.0) < finished_at and not announcer.status.consecutive_failures:
                await trio.sleep(self.config.completed_poll_interval)

    def _bucket(self, rate: int) -> TokenBucket | None:
        if rate <= 0:
            return None
        return TokenBucket(rate, self.config.rate_limit_burst, trio.current_time())

    async def _transfer(self, storage: Storage, have: list[bool], task_status: trio.TaskStatus[int]) -> None:
        config = self.config
        torrent = self.torrent
        n = torrent.piece_count
        for piece, ok in enumerate(have):
            if ok:
                self.have[piece >> 3] |= 0x80 >> (piece & 7)
        scheduler = Scheduler(n, torrent.piece_length, torrent.total_length, config, self.rng, have=have)
        self.scheduler = scheduler
        inbox_send, inbox_receive = trio.open_memory_channel[Fact](config.inbox_capacity)
        # Out of the scheduler: never waits. The writer holds at most the budget's blocks, the hasher
        # at most every piece once.
        write_send, write_receive = trio.open_memory_channel[Sequence[ReceivedBlock]](
            config.max_unflushed_bytes // config.block_size + 1
        )
        hash_send, hash_receive = trio.open_memory_channel[tuple[int, bytes]](n)
        ctx = TorrentContext(
            info_hash=torrent.info_hash, our_peer_id=self.peer_id, num_pieces=n,
            piece_length=torrent.piece_length, total_length=torrent.total_length, config=config,
            have=self.have, inbox=inbox_send, read_block=storage.read_block,
            upload_limit=self._bucket(config.max_upload_rate), download_limit=self._bucket(config.max_download_rate),
        )
        listeners = await listener_mod.open_listeners(config, self.listen_host, self.port)
        self.listen_port = listener_mod.listening_port(listeners)
        local = self.listen_host if self.listen_host not in (None, "", "0.0.0.0", "::") else None
        own = {(self.listen_host or "0.0.0.0", self.listen_port)}
        manager = ConnectionManager(ctx, config, local_address=local, own_addresses=own)
        self.manager = manager
        actor = SchedulerActor(scheduler, manager.links, write_send, hash_send, torrent.piece_hash, self.have,
                               self, Choker(config, self.rng))

        async def send_written(written: list[tuple[int, int, int]]) -> None:
            await inbox_send.send(BlocksWritten(tuple(written)))

        async def send_hashed(piece: int, ok: bool, digests: tuple[bytes, ...]) -> None:
            await inbox_send.send(PieceHashed(piece, ok, digests or None))

        self.state = SessionState.DOWNLOADING
        already_done = scheduler.snapshot().finished
        async with trio.open_nursery() as nursery:
            nursery.start_soon(actor.run, inbox_receive)
            nursery.start_soon(ticker, inbox_send, config.tick_interval)
            nursery.start_soon(storage.writer_loop, write_receive, send_written)
            nursery.start_soon(storage.hasher_loop, hash_receive, send_hashed)
            nursery.start_soon(listener_mod.serve, listeners, manager.accept)
            nursery.start_soon(manager.run)
            nursery.start_soon(self.watch_seeding)
            manager.add_addresses(self.initial_peers)
            http = None
            if torrent.trackers:
                http = open_http_client(config, local_address=local)
                client = TrackerClient(http, config, udp_local_host=local)
                self.announcer = Announcer(TrackerTiers(torrent.trackers, self.rng), client.announce,
                                           self.announce_request, manager.add_addresses, config)
                manager.on_empty = self.announcer.swarm_ran_dry
                nursery.start_soon(self.announcer.run)
            task_status.started(self.listen_port)
            if already_done:
                self.on_finished()
            await self.stop.wait()
            manager.accepting = False
            await self._let_completed_through()
            nursery.cancel_scope.cancel()
        if http is not None:
            with trio.CancelScope(shield=True):
                await http.aclose()

    def _result(self, error: JsTorrentError | None) -> SessionResult:
        now = trio.current_time()
        snap = self.scheduler.snapshot() if self.scheduler is not None else None
        manager = self.manager
        downloaded = manager.downloaded if manager is not None else 0
        end = self.finished_at if self.finished_at is not None else now
        download_time = max(end - self.started_at, 0.0)
        if error is not None:
            status = "error"
            self.state = SessionState.FAILED
        elif self.interrupted or self.finished_at is None:
            status = "interrupted"
        else:
            status = "ok"
        return SessionResult(
            status=status,
            error=str(error) if error is not None else ("interrupted" if status == "interrupted" else None),
            exception=error,
            name=self.torrent.name,
            info_hash=self.torrent.info_hash,
            state=self.state,
            total_bytes=self.torrent.total_length,
            verified_bytes=self.verified_bytes(),
            downloaded_bytes=downloaded,
            uploaded_bytes=manager.uploaded if manager is not None else 0,
            elapsed=now - self.started_at,
            download_time=download_time,
            average_rate=downloaded / download_time if download_time > 0 else 0.0,
            peers_used=len(manager.peers_used) if manager is not None else 0,
            wasted_bytes=snap.wasted_bytes if snap is not None else 0,
            hash_failures=snap.hash_failures if snap is not None else 0,
        )


async def run(
    config: Config,
    torrent: Torrent,
    out_dir: str | os.PathLike[str],
    *,
    peers: Sequence[Address] = (),
    display: Display | None = None,
    listen_host: str | None = None,
    port: int | None = None,
    seed_time: float | None = None,
    seed_ratio: float | None = None,
    handle_signals: bool = False,
    peer_id: bytes | None = None,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> SessionResult:
    """Download (and seed) one torrent into `out_dir`; see the module docstring.

    `seed_time` is in seconds (math.inf: seed until cancelled). With `nursery.start(...)`, the
    listening port is reported once the session accepts connections.
    """
    session = _Session(
        config, torrent, out_dir, peers=peers, display=display if display is not None else NullDisplay(),
        listen_host=listen_host, port=port, seed_time=seed_time, seed_ratio=seed_ratio,
        handle_signals=handle_signals, peer_id=peer_id, rng=rng if rng is not None else random.Random(),
    )
    result = await session.run(task_status)
    session.display.finish(result)
    return result
