"""One download (and upload) of one torrent, start to finish, in one nursery.

`run(config, torrent, out_dir, peers=..., display=...) -> SessionResult` wires the pieces of
DESIGN.md's data flow together:

    storage (files under out_dir: DIR/<name> for one file, DIR/<name>/... for several; with
      `selected` files only those, the bytes of other files in shared pieces in the hidden parts
      file, tasks/parts.py)
      -> recover (tasks/resume_store.py): the resume state's pieces are trusted if their files kept
         size and mtime, the rest re-hashed; without a state every wanted piece on disk is hashed
    ResumeSaver: the state file `.<name>.jstorrent` in out_dir, at most once a second, at
      completion and at exit (Ctrl-C included)
    scheduler actor (tasks/scheduler_task.py) <- facts from peers, writer, hasher, ticker
    writer and hasher loops (tasks/storage.py)
    connection manager (tasks/connections.py) <- addresses from `peers` and the trackers
    listener (tasks/listener.py) for incoming connections
    Announcer (tasks/tracker.py) when the torrent has trackers: `started`, `completed`, `stopped`
    the display, polling `status()` a few times a second
    the stall watcher (core/diagnose.py): about once a second; a stall (no block for
      Config.stall_report_after s while wanted data is missing) is reported once through the
      display's optional `stall(report)`; Config.stall_timeout ends the session (StallTimeoutError,
      exit 2). With `handle_signals`, SIGUSR1 writes a state dump to stderr.

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
import functools
import itertools
import logging
import os
import random
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from typing import Protocol

import trio

from jstorrent_cli.config import Config
from jstorrent_cli.core.announce import AnnounceRequest, make_key, make_peer_id
from jstorrent_cli.core.budget import BudgetPool
from jstorrent_cli.core.choker import Choker
from jstorrent_cli.core.diagnose import (
    StallDetector,
    StallReport,
    diagnose,
    report_lines,
)
from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.core.messages import BlocksWritten, Fact, PeerId, PieceHashed, ReceivedBlock
from jstorrent_cli.core.metainfo import Torrent
from jstorrent_cli.core.recorder import LogHeader, RecordingScheduler
from jstorrent_cli.core.scheduler import Scheduler, SchedulerSnapshot
from jstorrent_cli.core.selection import wanted_pieces
from jstorrent_cli.errors import (
    ExitStatus,
    FileCreateError,
    FileOpenError,
    JsTorrentError,
    StallTimeoutError,
    StorageError,
)
from jstorrent_cli.tasks import listener as listener_mod
from jstorrent_cli.tasks.connections import Address, ConnectionManager, PeerSlots
from jstorrent_cli.tasks.parts import layout_for_selection
from jstorrent_cli.tasks.peer import TokenBucket, TorrentContext
from jstorrent_cli.tasks.resume_store import Recovered, ResumeSaver, StateStore, recover
from jstorrent_cli.tasks.scheduler_task import SchedulerActor, ticker
from jstorrent_cli.tasks.storage import Storage, storage_files
from jstorrent_cli.tasks.tracker import (
    Announcer,
    LazyHttpClient,
    TrackerClient,
    TrackerStatus,
    TrackerTiers,
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
    # One line the live view shows under the header: the hash check's progress while checking, the
    # stall's cause while stalled, and (with live diagnosis, -v) why the missing pieces are missing.
    note: str | None = None


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


@dataclasses.dataclass(frozen=True, slots=True)
class Shared:
    """What the items of a batch share (tasks/batch.py): one listening port whose connections the
    router hands out by info hash, one connection limit, one unflushed-data budget."""

    router: listener_mod.Router
    port: int
    slots: PeerSlots
    pool: BudgetPool


class Display(Protocol):
    """What the session shows through. A display may also have `stall(report: StallReport) -> None`,
    called once when a stall starts (looked up with getattr: it is optional)."""

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


def _first_error(exc: BaseException) -> JsTorrentError | None:
    if isinstance(exc, JsTorrentError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_error(inner)
            if found is not None:
                return found
    return None


def _verified_pieces(verified: bytearray) -> Iterator[int]:
    """The indexes of the 1 bytes of a picker's one-byte-per-piece array (the selection runs in C)."""
    return itertools.compress(range(len(verified)), bytes(verified))


def _live_line(report: StallReport) -> str:
    """One line for the live view: the stall's cause, or where the missing pieces stand."""
    if report.stalled_for is not None:
        return f"stalled {report.stalled_for:.0f}s: {report.most_likely_cause}"
    parts = [f"{e.pieces} {e.reason.value}" for e in report.reasons]
    return "missing: " + (", ".join(parts) if parts else "nothing")


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
        selected: Collection[int] | None = None,
        live_diagnosis: bool = False,
        log_json: str | os.PathLike[str] | None = None,
        shared: Shared | None = None,
        interrupt: trio.Event | None = None,
    ) -> None:
        self.config = config
        self.shared = shared
        self.interrupt = interrupt
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
        self.files = storage_files(torrent.files)
        self.disk_geometry, self.disk_files = layout_for_selection(self.geometry, self.files, selected, torrent.name)
        self.paths: list[tuple[str, ...] | None] = [None if f.pad or f.symlink else f.path for f in self.disk_files]
        self.selected = None if selected is None else frozenset(selected)
        wanted = None if self.selected is None else wanted_pieces(self.geometry, self.selected)
        self.wanted: list[bool] | None = (
            None if wanted is None else [piece in wanted for piece in range(torrent.piece_count)])
        self.wanted_bytes = (torrent.total_length if wanted is None
                             else sum(self.geometry.piece_size(p) for p in wanted))
        self.store = StateStore(self.out_dir, torrent.name, config)
        self.saver: ResumeSaver | None = None
        self.live_diagnosis = live_diagnosis
        self.log_json = None if log_json is None else os.fspath(log_json)
        self.log_sink: Callable[[str], None] | None = None
        self.detector = StallDetector(config.stall_report_after)
        self.note: str | None = None
        self.stall_reports = 0  # stall reports shown (tests read it)
        self.download_limit: TokenBucket | None = None
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
            pieces_verified=0, pieces_wanted=torrent.piece_count if wanted is None else len(wanted), free_blocks=0,
            endgame=False, wasted_bytes=0, hash_failures=0, banned_ips=frozenset(), done_bytes=0,
            total_bytes=self.wanted_bytes, finished=False,
        )

    # -- hooks for the scheduler actor --

    def on_finished(self) -> None:
        if self.finished_at is not None:
            return
        self.finished_at = trio.current_time()
        log.info("download complete: %s", self.torrent.name)
        if self.announcer is not None:
            self.announcer.download_completed()
        if self.saver is not None:
            self.saver.save_soon()  # "all verified", flushed while the announces and the shutdown run
        if self.wants_seeding():
            self.state = SessionState.SEEDING
        else:
            self.state = SessionState.DONE
            self.stop.set()

    def on_ban(self, ip: str, reason: str) -> None:
        if self.manager is not None:
            self.manager.ban(ip)

    def on_verified(self, piece: int) -> None:
        if self.saver is not None:
            self.saver.note_change()

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
            total_bytes=self.wanted_bytes,
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
            note=self.note,
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
            left=self.wanted_bytes - self.verified_bytes(),
            numwant=self.config.numwant,
            key=self.key,
        )

    # -- what is already on disk --

    def _check_progress(self, done: int, total: int) -> None:
        self.note = f"checking existing data: {format_size(done)} of {format_size(total)}"

    async def recover(self) -> Recovered:
        """The pieces on disk and correct: the resume state's, re-hashed where trust was lost, or
        (without a state) every wanted piece on disk hashed, with progress in `note`."""
        recovered = await recover(
            self.store, info_hash=self.torrent.info_hash, geometry=self.disk_geometry, root=self.out_dir,
            paths=self.paths, piece_hashes=self.torrent.piece_hashes,
            wanted=None if self.wanted is None else [p for p, w in enumerate(self.wanted) if w],
            progress=self._check_progress, config=self.config,
        )
        self.note = None
        if recovered.problem is not None:
            log.warning("%s", recovered.problem)
        self.initial_verified_bytes = sum(self.geometry.piece_size(p) for p in recovered.verified)
        log.info("recovered %d pieces (%d trusted from the resume state, %d hashed ok, %d bad)",
                 len(recovered.verified), len(recovered.trusted), len(recovered.checked.ok),
                 len(recovered.checked.bad))
        return recovered

    # -- stalls --

    def _diagnose(self, now: float, stalled_for: float | None) -> StallReport | None:
        scheduler = self.scheduler
        if scheduler is None:
            return None
        bucket = self.download_limit
        return diagnose(
            scheduler.snapshot(), now=now, trackers=self.status().trackers,
            rate_limited=bucket is not None and bucket.tokens < self.config.block_size,
            detail=scheduler.piece_detail(), stalled_for=stalled_for, config=self.config,
            names=self._peer_names(), unreachable=self._unreachable(),
        )

    def _unreachable(self) -> list[str]:
        """"ip:port" of the known addresses whose last connection attempt failed (for the stall report)."""
        addresses = self.manager.addresses.items() if self.manager is not None else ()
        return [f"{ip}:{port}" for (ip, port), state in sorted(addresses) if state.failures]

    def _peer_names(self) -> dict[PeerId, str]:
        """"ip:port" (and the client's name when its handshake said) of every connection, for reports."""
        links = self.manager.links.values() if self.manager is not None else ()
        return {link.peer: f"{link.ip}:{link.port}" + (f" {link.client}" if link.client else "") for link in links}

    def _show_stall(self, report: StallReport) -> None:
        self.stall_reports += 1
        for line in report_lines(report):
            log.info("%s", line)
        show = getattr(self.display, "stall", None)
        if show is not None:
            with contextlib.suppress(OSError):  # its stream went away: the download goes on
                show(report)

    async def watch_stalls(self) -> None:
        """About once a second: is this a stall (report it once), has it lasted past --stall-timeout."""
        config = self.config
        while True:
            await trio.sleep(config.stall_check_interval)
            scheduler, manager = self.scheduler, self.manager
            if scheduler is None or manager is None:
                continue
            now = trio.current_time()
            picker = scheduler.picker
            missing = picker.verified_wanted_bytes < picker.wanted_bytes
            started = self.detector.observe(now, manager.downloaded, missing)
            stalled_for = self.detector.stalled_for(now) if self.detector.stalled else None
            if started or (self.live_diagnosis and missing):
                report = self._diagnose(now, stalled_for)
                if report is not None:
                    if started:
                        self._show_stall(report)
                    self.note = _live_line(report)
            elif not self.detector.stalled:
                self.note = None
            if self.detector.timed_out(now, config.stall_timeout):
                stalled = self.detector.stalled_for(now)
                final = self._diagnose(now, stalled)  # the cause now, not the note's (its "stalled Ns" is old)
                raise StallTimeoutError(
                    f"no data for {stalled:.0f} s (--stall-timeout {config.stall_timeout:g})"
                    + (f": {final.most_likely_cause}" if final is not None else "")
                )

    def state_dump(self) -> list[str]:
        """The SIGUSR1 dump: the stall report, then one line per peer and per started piece."""
        now = trio.current_time()
        scheduler = self.scheduler
        if scheduler is None:
            return [f"{self.torrent.name}: {self.state.value}" + (f" ({self.note})" if self.note else "")]
        report = self._diagnose(now, self.detector.stalled_for(now) if self.detector.stalled else None)
        assert report is not None
        lines = [f"--- jstorrent state of {self.torrent.name} ({self.state.value}, {now - self.started_at:.1f} s) ---"]
        lines += report_lines(report)
        snap = scheduler.snapshot()
        lines.append(f"Peers ({len(snap.peers)}):")
        names = self._peer_names()
        for ps in snap.peers:
            age = "-" if ps.oldest_request_age is None else f"{ps.oldest_request_age:.1f}s"
            flags = "".join((
                "C" if ps.peer_choking else "u", "i" if ps.am_interested else "-",
                "I" if ps.peer_interested else "-", "S" if ps.snubbed else "-"))
            lines.append(
                f"  {names.get(ps.peer, ps.ip)} [{flags}] {ps.outstanding}/{ps.limit} requests, "
                f"oldest {age}, timeout {ps.request_timeout:.1f}s, {format_rate(ps.rate)}, "
                f"got {format_size(ps.bytes_received)}, wasted {format_size(ps.wasted_bytes)}"
                + (f", idle: {ps.idle_reason}" if ps.idle_reason else ""))
        detail = scheduler.piece_detail()
        cap = self.config.state_dump_max_pieces
        needed = detail.needed.count(1)
        lines.append(f"Pieces: {snap.pieces_verified} of {snap.pieces_wanted} wanted verified, {needed} missing, "
                     f"{len(detail.active)} started:")
        for piece in detail.active[:cap]:
            lines.append(f"  piece {piece.piece}: {piece.free} free, {piece.requested} requested, "
                         f"{piece.received} received, {piece.written} written")
        if len(detail.active) > cap:
            lines.append(f"  (+{len(detail.active) - cap} more started pieces)")
        return lines

    # -- the run --

    async def watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGUSR1:
                try:
                    sys.stderr.write("\n".join(self.state_dump()) + "\n")
                    sys.stderr.flush()
                except OSError:
                    pass  # nobody reads our stderr: the dump was asked for, not needed
                continue
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
        try:
            os.makedirs(self.out_dir, exist_ok=True)
        except OSError as err:
            raise FileCreateError(f"cannot create the download folder {self.out_dir}: {err.strerror}") from None
        with contextlib.ExitStack() as stack:
            # One download per folder and name: a second one fails here, before it touches anything.
            self.store.lock_sync()
            stack.callback(self.store.unlock)
            # Signals are caught before anything shows that the session runs.
            signals = (stack.enter_context(trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1))
                       if self.handle_signals else None)
            storage = stack.enter_context(Storage(self.out_dir, self.disk_files, self.disk_geometry, config))
            if self.log_json is not None:
                self.log_sink = self._open_log(stack, self.log_json)
            async with trio.open_nursery() as outer:
                if signals is not None:
                    outer.start_soon(self.watch_signals, signals)
                if self.interrupt is not None:
                    outer.start_soon(self._watch_interrupt, self.interrupt)
                outer.start_soon(self._run_display)
                with trio.CancelScope() as check_scope:
                    outer.start_soon(self._cancel_on_stop, check_scope)
                    recovered = await self.recover()
                    await storage.prepare(wanted=self._files_to_create())
                if not check_scope.cancelled_caught:
                    await self._transfer(storage, recovered, task_status)
                outer.cancel_scope.cancel()

    async def _run_display(self) -> None:
        """The display's loop. A display whose stream went away (`get ... 2>&1 | head`, a full disk) stops
        showing; the download, and its exit status, go on without it."""
        try:
            await self.display.run(self.status)
        except OSError as err:
            log.warning("the display stopped: %s", err)
            await trio.sleep_forever()

    def _open_log(self, stack: contextlib.ExitStack, path: str) -> Callable[[str], None]:
        """--log-json FILE: open it (replacing it) and return the recorder's sink; write errors end the session."""
        try:
            file = stack.enter_context(open(path, "w", encoding="utf-8", buffering=self.config.log_json_buffer))  # noqa: SIM115 (the stack closes it)
        except OSError as err:
            raise FileOpenError(f"--log-json {path}: {err.strerror}") from None

        def write(line: str) -> None:
            try:
                file.write(line)
            except OSError as err:
                raise StorageError(f"--log-json {path}: {err.strerror}") from None

        return write

    def _files_to_create(self) -> list[int] | None:
        """Zero-length files to create: all, or only the selected ones (never the unselected)."""
        if self.selected is None:
            return None
        return sorted(self.selected)

    async def _watch_interrupt(self, interrupt: trio.Event) -> None:
        """A batch's Ctrl-C: stop as the first SIGINT would."""
        await interrupt.wait()
        self.interrupted = True
        self.stop.set()

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
                await announcer.round_ended()  # woken as the round ends, not up to a poll interval later

    def _bucket(self, rate: int) -> TokenBucket | None:
        if rate <= 0:
            return None
        return TokenBucket(rate, self.config.rate_limit_burst, trio.current_time())

    async def _transfer(self, storage: Storage, recovered: Recovered, task_status: trio.TaskStatus[int]) -> None:
        config = self.config
        torrent = self.torrent
        n = torrent.piece_count
        have = [False] * n
        for piece in recovered.verified:
            have[piece] = True
            self.have[piece >> 3] |= 0x80 >> (piece & 7)
        if self.log_sink is not None:  # --log-json: the scheduler gets its own seeded rng, for replays
            header = LogHeader(config, n, torrent.piece_length, torrent.total_length,
                               wanted=None if self.wanted is None else tuple(self.wanted), have=tuple(have),
                               sequential=False, seed=self.rng.getrandbits(63), name=torrent.name)
            scheduler: Scheduler = RecordingScheduler(header, self.log_sink)
        else:
            scheduler = Scheduler(n, torrent.piece_length, torrent.total_length, config, self.rng,
                                  wanted=self.wanted, have=have,
                                  budget_pool=self.shared.pool if self.shared is not None else None)
        self.scheduler = scheduler
        picker = scheduler.picker
        self.saver = ResumeSaver(
            self.store, info_hash=torrent.info_hash, geometry=self.disk_geometry, root=self.out_dir,
            paths=self.paths, verified=functools.partial(_verified_pieces, picker.verified),
            sync=storage.sync, config=config,
        )
        # The saver outlives the transfer: it is cancelled (and writes the state a last time) only once
        # the writer and hasher have stopped, and before the storage is closed.
        async with trio.open_nursery() as saver_nursery:
            saver_nursery.start_soon(self.saver.run)
            self.saver.note_change()
            try:
                await self._transfer_with(storage, scheduler, task_status)
            finally:
                scheduler.leave_budget_pool()
                if self.manager is not None:
                    self.manager.close()
                if self.shared is not None:
                    self.shared.router.unregister(torrent.info_hash)
                saver_nursery.cancel_scope.cancel()

    async def _transfer_with(self, storage: Storage, scheduler: Scheduler, task_status: trio.TaskStatus[int]) -> None:
        config = self.config
        torrent = self.torrent
        n = torrent.piece_count
        inbox_send, inbox_receive = trio.open_memory_channel[Fact](config.inbox_capacity)
        # Out of the scheduler: never waits. The writer holds at most the budget's blocks, the hasher
        # at most every piece once.
        write_send, write_receive = trio.open_memory_channel[Sequence[ReceivedBlock]](
            config.max_unflushed_bytes // config.block_size + 1
        )
        hash_send, hash_receive = trio.open_memory_channel[tuple[int, bytes, bool]](n)
        self.download_limit = self._bucket(config.max_download_rate)
        ctx = TorrentContext(
            info_hash=torrent.info_hash, our_peer_id=self.peer_id, num_pieces=n,
            piece_length=torrent.piece_length, total_length=torrent.total_length, config=config,
            have=self.have, inbox=inbox_send, read_block=storage.read_block,
            upload_limit=self._bucket(config.max_upload_rate), download_limit=self.download_limit,
        )
        shared = self.shared
        listeners = None
        if shared is None:
            listeners = await listener_mod.open_listeners(config, self.listen_host, self.port)
            self.listen_port = listener_mod.listening_port(listeners)
        else:
            self.listen_port = shared.port
        local = self.listen_host if self.listen_host not in (None, "", "0.0.0.0", "::") else None
        own = {(self.listen_host or "0.0.0.0", self.listen_port)}
        manager = ConnectionManager(ctx, config, local_address=local, own_addresses=own,
                                    slots=shared.slots if shared is not None else None)
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
            await nursery.start(manager.run)  # before any connection is accepted: links run in its nursery
            if listeners is not None:
                nursery.start_soon(listener_mod.serve, listeners, manager.accept)
            elif self.shared is not None:
                self.shared.router.register(torrent.info_hash, manager.accept)
            nursery.start_soon(self.watch_seeding)
            nursery.start_soon(self.watch_stalls)
            manager.add_addresses(self.initial_peers)
            http = None
            if torrent.trackers:
                http = LazyHttpClient(config, local_address=local)  # httpx loads at the first HTTP announce
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
            if self.interrupted and self.announcer is not None:
                # The final `stopped` announce is shielded: after a Ctrl-C its deadline must fit in the
                # grace left. (A normal exit lets the cancelled announcer send it with its own deadline.)
                await self.announcer.stop(min(config.stopped_announce_deadline, config.stopped_announce_cap,
                                              config.interrupt_grace))
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
            total_bytes=self.wanted_bytes,
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
    selected: Collection[int] | None = None,
    live_diagnosis: bool = False,
    log_json: str | os.PathLike[str] | None = None,
    shared: Shared | None = None,
    interrupt: trio.Event | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> SessionResult:
    """Download (and seed) one torrent into `out_dir`; see the module docstring.

    `seed_time` is in seconds (math.inf: seed until cancelled). With `nursery.start(...)`, the
    listening port is reported once the session accepts connections. `selected`: 0-based file
    indexes to download (core/selection.parse_select_file; None: every file). `live_diagnosis`
    (-v): classify the missing pieces about once a second into SessionStatus.note. `log_json`: write the
    scheduler's facts and commands to this file (core/recorder.py; `jstorrent replay` reads it).
    `shared` (a batch): use its port, connection limit and budget instead of opening our own (not with
    `log_json`). `interrupt`: when set, stop as on a first Ctrl-C (result "interrupted").
    """
    session = _Session(
        config, torrent, out_dir, peers=peers, display=display if display is not None else NullDisplay(),
        listen_host=listen_host, port=port, seed_time=seed_time, seed_ratio=seed_ratio,
        handle_signals=handle_signals, peer_id=peer_id, rng=rng if rng is not None else random.Random(),
        selected=selected, live_diagnosis=live_diagnosis, log_json=log_json, shared=shared, interrupt=interrupt,
    )
    result = await session.run(task_status)
    with contextlib.suppress(OSError):  # the summary is lost with its stream, not the result
        session.display.finish(result)
    return result
