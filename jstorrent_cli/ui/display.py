"""Views of a running download: a rich live view, plain status lines, JSON lines, or nothing.

Every view pulls: the session hands `run` a `poll()` that returns a frozen status, and the view calls
it a few times a second from its own Trio task (never pushed, never on the hot path). `finish(result)`
prints the end summary. The views read statuses through the small structural protocols below
(`StatusLike`, `SnapshotLike`, `PeerLike`, `ResultLike`), so this module does not import the session.

Cost (DESIGN.md, known traps): rich's `Live` draws nothing on a pipe until exit, so the live view is
only used when stderr is a terminal; it refreshes from a Trio task with `auto_refresh=False` and draws
pre-formatted `Text` lines (no `Table`) on stderr, leaving stdout clean for `--json`.

tasks/session.py's SessionStatus and SessionResult provide every field of those protocols; mypy checks
that where the session hands them to the views. One extra is optional and read when present:
``status.peer_details`` (peer id -> `PeerDetailLike`: port, incoming, am_choking) puts ports and the
"we choke it" / "it connected to us" flags in the -v peer table. ``status.note`` (a string or None)
is shown as one line under the trackers: the hash check's progress, a stall's cause, the -v live
classification. Each view has `stall(report)` (a core/diagnose.py StallReport): a panel on a terminal,
plain lines on a pipe, a `stall` record with --json, nothing with --quiet.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TextIO, cast

import trio

from jstorrent_cli.config import Config
from jstorrent_cli.core.diagnose import StallReport, report_lines, report_record
from jstorrent_cli.ui import piecemap
from jstorrent_cli.ui.format import format_duration, format_rate, format_size

if TYPE_CHECKING:
    # rich is imported where a rich view is drawn, not here: --json, --quiet and plain lines never
    # load it (about 40 ms of start-up on the benchmark machine).
    from rich.console import Console
    from rich.text import Text

    from jstorrent_cli.core.scheduler import PeerSnapshot, SchedulerSnapshot

# Text formats, not limits: aria2c shows the first 6 hex digits of a download's id.
PLAIN_ID_HEX_DIGITS = 6
PERCENT = 100
# Peer table column widths: "255.255.255.255:65535" is 21 characters; the rest fit their contents.
_ADDR_WIDTH = 21
_CLIENT_WIDTH = 16
_FLAGS_WIDTH = 7  # one column per flag of peer_flags
_COUNT_WIDTH = 3
_RATE_WIDTH = 11

# Bar characters.
BAR_DONE = "█"
BAR_TODO = "░"
GAUGE_IN_FLIGHT = "█"
GAUGE_TO_DISK = "▒"
GAUGE_FREE = "░"
ENDGAME_MARKER = "ENDGAME"

# Peer flags, one fixed column each ('.' when unset), in the manner of libtorrent's client_test:
# I we are interested, C the peer chokes us, i the peer is interested in us, c we choke the peer,
# S snubbed (limit 1), W warming up (slow start), r the peer connected to us.
FLAG_UNSET = "."
PEER_FLAGS_LEGEND = ("I=we-interested C=peer-chokes-us i=peer-interested c=we-choke-peer S=snubbed "
                     "W=slow-start r=incoming")


# --- what the views read ---------------------------------------------------------------------------


class PeerLike(Protocol):
    """One connected peer, as core/scheduler.py's PeerSnapshot describes it."""

    @property
    def peer(self) -> Hashable: ...
    @property
    def ip(self) -> str: ...
    @property
    def outstanding(self) -> int: ...
    @property
    def limit(self) -> int: ...
    @property
    def rate(self) -> float: ...
    @property
    def peer_choking(self) -> bool: ...
    @property
    def am_interested(self) -> bool: ...
    @property
    def peer_interested(self) -> bool: ...
    @property
    def snubbed(self) -> bool: ...
    @property
    def slow_start(self) -> bool: ...
    @property
    def request_timeout(self) -> float: ...
    @property
    def oldest_request_age(self) -> float | None: ...
    @property
    def idle_reason(self) -> str | None: ...


class SnapshotLike(Protocol):
    """The scheduler's snapshot fields the views read (core/scheduler.py SchedulerSnapshot)."""

    @property
    def peers(self) -> Sequence[PeerLike]: ...
    @property
    def bytes_in_flight(self) -> int: ...
    @property
    def bytes_waiting_for_disk(self) -> int: ...
    @property
    def budget(self) -> int: ...
    @property
    def pieces_partial(self) -> int: ...
    @property
    def pieces_fully_requested(self) -> int: ...
    @property
    def pieces_awaiting_hash(self) -> int: ...
    @property
    def pieces_verified(self) -> int: ...
    @property
    def pieces_wanted(self) -> int: ...
    @property
    def endgame(self) -> bool: ...
    @property
    def wasted_bytes(self) -> int: ...
    @property
    def hash_failures(self) -> int: ...


class StatusLike(Protocol):
    """What a view needs from the session's SessionStatus (tasks/session.py)."""

    @property
    def name(self) -> str: ...
    @property
    def info_hash(self) -> bytes: ...
    @property
    def total_bytes(self) -> int: ...
    @property
    def verified_bytes(self) -> int: ...
    @property
    def download_rate(self) -> float: ...  # bytes/s
    @property
    def upload_rate(self) -> float: ...  # bytes/s
    @property
    def downloaded_bytes(self) -> int: ...  # payload received so far
    @property
    def uploaded_bytes(self) -> int: ...
    @property
    def scheduler(self) -> SnapshotLike: ...
    @property
    def piece_states(self) -> bytes: ...  # one byte per piece, ui/piecemap.py's states; b"" for no map
    @property
    def peer_clients(self) -> Mapping[Hashable, str]: ...  # peer id -> client name, when known
    @property
    def peers_connected(self) -> int: ...
    @property
    def trackers(self) -> Sequence[TrackerLike]: ...
    @property
    def elapsed(self) -> float: ...  # seconds since the download started
    @property
    def state(self) -> object: ...  # a string or an enum with a string value ("downloading", "seeding"...)


class ResultLike(Protocol):
    """What the end summary needs from the session's result of one torrent (SessionResult)."""

    @property
    def status(self) -> str: ...  # "ok", "error" or "interrupted"
    @property
    def error(self) -> str | None: ...  # the one line shown; None when the download completed
    @property
    def name(self) -> str: ...
    @property
    def info_hash(self) -> bytes: ...
    @property
    def total_bytes(self) -> int: ...  # size of what was wanted
    @property
    def verified_bytes(self) -> int: ...
    @property
    def downloaded_bytes(self) -> int: ...  # payload bytes received this run
    @property
    def uploaded_bytes(self) -> int: ...
    @property
    def elapsed(self) -> float: ...  # seconds, whole session (seeding included)
    @property
    def download_time(self) -> float: ...  # seconds from start to the last piece verified (or to the end)
    @property
    def average_rate(self) -> float: ...  # downloaded_bytes / download_time
    @property
    def peers_used(self) -> int: ...  # distinct peers that sent or took at least one block
    @property
    def wasted_bytes(self) -> int: ...
    @property
    def hash_failures(self) -> int: ...


class PeerDetailLike(Protocol):
    """What the session knows of one connection beyond the scheduler's view (optional: read from
    ``status.peer_details``, a mapping peer id -> detail, when the session provides it)."""

    @property
    def port(self) -> int: ...
    @property
    def incoming(self) -> bool: ...
    @property
    def am_choking(self) -> bool: ...


_DETAIL_FIELDS = ("port", "incoming", "am_choking")


class TrackerLike(Protocol):
    """tasks/tracker.py TrackerStatus, as far as the live view reads it."""

    @property
    def last_error(self) -> str | None: ...
    @property
    def peers_received(self) -> int: ...
    @property
    def seeders(self) -> int | None: ...
    @property
    def leechers(self) -> int | None: ...


Poll = Callable[[], StatusLike]


if TYPE_CHECKING:  # mypy checks that the scheduler's snapshot keeps the fields the views read

    def _snapshot_conforms(s: SchedulerSnapshot) -> SnapshotLike:
        return s

    def _peer_conforms(p: PeerSnapshot) -> PeerLike:
        return p


# --- numbers shared by the views ------------------------------------------------------------------


def sane(x: float) -> float:
    """A rate or a time as shown: a NaN, an infinity or a negative (a session bug) shows as 0, so a bad
    number can never make a view raise inside the session's nursery."""
    return x if math.isfinite(x) and x >= 0 else 0.0


def fraction(done: int, total: int) -> float:
    """done / total in [0, 1]; an empty download counts as complete."""
    if total <= 0:
        return 1.0
    return min(max(done / total, 0.0), 1.0)


def eta_seconds(status: StatusLike) -> float | None:
    """Seconds left at the current download rate; None when unknown (no rate) and 0 when done."""
    remaining = status.total_bytes - status.verified_bytes
    if remaining <= 0:
        return 0.0
    rate = sane(status.download_rate)
    if rate <= 0:
        return None
    return remaining / rate


def state_text(state: object) -> str:
    value = getattr(state, "value", state)
    return str(value)


def short_id(info_hash: bytes) -> str:
    return info_hash.hex()[:PLAIN_ID_HEX_DIGITS]


def peer_counts(snapshot: SnapshotLike) -> tuple[int, int]:
    """(peers unchoking us, peers snubbed) among the scheduler's peers."""
    unchoking = 0
    snubbed = 0
    for p in snapshot.peers:
        if not p.peer_choking:
            unchoking += 1
        if p.snubbed:
            snubbed += 1
    return unchoking, snubbed


def peer_detail(status: StatusLike, peer: PeerLike) -> PeerDetailLike | None:
    """The session's per-connection facts about a peer, when the status carries `peer_details`."""
    details = getattr(status, "peer_details", None)
    if not isinstance(details, Mapping):
        return None
    detail = details.get(peer.peer)
    if detail is None or not all(hasattr(detail, name) for name in _DETAIL_FIELDS):
        return None
    return cast(PeerDetailLike, detail)


def peer_address(peer: PeerLike, detail: PeerDetailLike | None = None) -> str:
    """'ip:port' when the port is known (IPv6 in brackets), else the IP."""
    if detail is None:
        return peer.ip
    return f"[{peer.ip}]:{detail.port}" if ":" in peer.ip else f"{peer.ip}:{detail.port}"


def peer_client(status: StatusLike, peer: PeerLike) -> str:
    return status.peer_clients.get(peer.peer, "")


def peer_flags(peer: PeerLike, detail: PeerDetailLike | None = None) -> str:
    """One fixed column per flag, '.' when unset (or unknown); see PEER_FLAGS_LEGEND."""
    return "".join((
        "I" if peer.am_interested else FLAG_UNSET,
        "C" if peer.peer_choking else FLAG_UNSET,
        "i" if peer.peer_interested else FLAG_UNSET,
        "c" if detail is not None and detail.am_choking else FLAG_UNSET,
        "S" if peer.snubbed else FLAG_UNSET,
        "W" if peer.slow_start else FLAG_UNSET,
        "r" if detail is not None and detail.incoming else FLAG_UNSET,
    ))


# --- the live view -------------------------------------------------------------------------------


def gauge_cells(in_flight: int, to_disk: int, budget: int, width: int) -> tuple[int, int, int]:
    """How many cells of a `width`-cell gauge show in-flight, to-disk and free budget."""
    if budget <= 0:
        return 0, 0, width
    first = min(round(in_flight * width / budget), width)
    both = min(round((in_flight + to_disk) * width / budget), width)
    second = max(both - first, 0)
    return first, second, width - first - second


def render_status(status: StatusLike, config: Config, width: int, *, verbose: bool = False) -> Text:
    """The live view as one pre-formatted Text (cheap to draw: no Table, no wrapping)."""
    from rich.text import Text  # only a rich view renders (see the imports at the top)

    snap = status.scheduler
    bar_width = config.display_bar_width
    text = Text(no_wrap=True, overflow="crop", end="")

    # Header: name, state, time, then the endgame marker, waste and hash failures (the name gives way).
    tail = f"  {state_text(status.state)}  {format_duration(sane(status.elapsed))}"
    marks: list[tuple[str, str]] = []
    if snap.endgame:
        marks.append((f"  {ENDGAME_MARKER}", "bold red"))
        marks.append((f" wasted {format_size(snap.wasted_bytes)}", ""))
    elif snap.wasted_bytes:
        marks.append((f"  wasted {format_size(snap.wasted_bytes)}", "dim"))
    if snap.hash_failures:
        marks.append((f"  {_plural(snap.hash_failures, 'hash failure')}", "red"))
    room = width - len(tail) - sum(len(m) for m, _ in marks)
    text.append(_fit(status.name, room), style="bold")
    text.append(tail, style="dim")
    for mark, style in marks:
        text.append(mark, style=style)
    text.append("\n")

    frac = fraction(status.verified_bytes, status.total_bytes)
    filled = min(int(frac * bar_width), bar_width)
    text.append(BAR_DONE * filled, style="green")
    text.append(BAR_TODO * (bar_width - filled), style="bright_black")
    text.append(f" {frac * PERCENT:5.1f}%", style="bold")
    text.append(f"  {format_size(status.verified_bytes)}/{format_size(status.total_bytes)}")
    text.append(f"  ↓{format_rate(sane(status.download_rate))}", style="green")
    text.append(f" ↑{format_rate(sane(status.upload_rate))}", style="cyan")
    text.append(f"  ETA {format_duration(eta_seconds(status))}\n")

    unchoking, snubbed = peer_counts(snap)
    text.append("peers   ", style="dim")
    text.append(f"{status.peers_connected} connected · {unchoking} unchoking us · {snubbed} snubbed\n")

    in_flight, to_disk, budget = snap.bytes_in_flight, snap.bytes_waiting_for_disk, snap.budget
    a, b, c = gauge_cells(in_flight, to_disk, budget, bar_width)
    text.append("buffer  ", style="dim")
    text.append(GAUGE_IN_FLIGHT * a, style="yellow")
    text.append(GAUGE_TO_DISK * b, style="magenta")
    text.append(GAUGE_FREE * c, style="bright_black")
    used_pct = fraction(in_flight + to_disk, budget) * PERCENT
    text.append(f" {format_size(in_flight)} in flight + {format_size(to_disk)} to disk"
                f" / {format_size(budget)} ({used_pct:.0f}%)\n")

    text.append("pieces  ", style="dim")
    text.append(f"{snap.pieces_partial} partial · {snap.pieces_fully_requested} fully requested · "
                f"{snap.pieces_awaiting_hash} awaiting hash · {snap.pieces_verified}/{snap.pieces_wanted} verified\n")

    states = status.piece_states
    if states:
        label = "map     "
        text.append(label, style="dim")
        for char, run in piecemap.piece_map_runs(states, max(width - len(label), 1)):
            text.append(char * run, style=_MAP_STYLES[char])
        text.append("\n")

    for tracker in status.trackers:
        text.append("tracker ", style="dim")
        if tracker.last_error:
            text.append(f"error: {tracker.last_error}", style="red")
        else:
            text.append(f"ok, {tracker.peers_received} peers received")
        if tracker.seeders is not None or tracker.leechers is not None:
            text.append(f" ({_count(tracker.seeders)} seeders, {_count(tracker.leechers)} leechers)")
        text.append("\n")

    note = getattr(status, "note", None)
    if note:
        text.append("note    ", style="dim")
        text.append(f"{note}\n", style="yellow")

    if verbose:
        _render_peers(text, status, config)
    text.rstrip()
    return text


_MAP_STYLES = {
    piecemap.COLUMN_DONE: "green",
    piecemap.COLUMN_SOME: "green",
    piecemap.COLUMN_ACTIVE: "yellow",
    piecemap.COLUMN_MISSING: "bright_black",
    piecemap.COLUMN_UNWANTED: "",
}


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fit(name: str, room: int) -> str:
    """`name` cut to `room` characters with an ellipsis (at least one character stays)."""
    if len(name) <= room:
        return name
    return name[: max(room - 1, 1)] + "…"


def _count(n: int | None) -> str:
    return "?" if n is None else str(n)


def _render_peers(text: Text, status: StatusLike, config: Config) -> None:
    peers = sorted(status.scheduler.peers, key=lambda p: sane(p.rate), reverse=True)
    shown = peers[: config.peer_table_rows]
    text.append(f"\n{'address':<{_ADDR_WIDTH}} {'client':<{_CLIENT_WIDTH}} {'flags':<{_FLAGS_WIDTH}} "
                f"{'out/lim':>{2 * _COUNT_WIDTH + 1}} {'down':>{_RATE_WIDTH}}  why idle / oldest request\n",
                style="bold")
    rows: list[str] = []
    for p in shown:
        if p.idle_reason:
            note = p.idle_reason
        elif p.oldest_request_age is not None:
            note = f"oldest request {sane(p.oldest_request_age):.1f}s of {sane(p.request_timeout):.1f}s"
        else:
            note = ""
        detail = peer_detail(status, p)
        rows.append(f"{peer_address(p, detail):<{_ADDR_WIDTH}.{_ADDR_WIDTH}} "
                    f"{peer_client(status, p):<{_CLIENT_WIDTH}.{_CLIENT_WIDTH}} {peer_flags(p, detail)} "
                    f"{p.outstanding:>{_COUNT_WIDTH}}/{p.limit:<{_COUNT_WIDTH}} "
                    f"{format_rate(sane(p.rate)):>{_RATE_WIDTH}}  {note}\n")
    text.append("".join(rows))  # one unstyled run: spans are what rich's drawing pays for
    hidden = len(peers) - len(shown)
    if hidden > 0:
        text.append(f"... {hidden} more peers\n", style="dim")
    text.append(f"flags: {PEER_FLAGS_LEGEND}\n", style="dim")


async def redraw_live(console: Console, config: Config, frame: Callable[[], Text], drew: Callable[[], None]) -> None:
    """Draw `frame()` on `console` Config.refresh_hz times a second until cancelled (the rich views of one
    download and of a batch); `drew()` after each frame. On cancellation the last frame stays on screen."""
    from rich.live import Live

    period = 1.0 / config.refresh_hz
    with Live(console=console, auto_refresh=False, transient=False,
              redirect_stdout=False, redirect_stderr=True) as live:
        try:
            while True:
                live.update(frame(), refresh=True)
                drew()
                await trio.sleep(period)
        except trio.Cancelled:
            # Leave the final state on screen, not the one from up to a period ago (Live draws it
            # on exit). Cosmetic only: a status that cannot be read at shutdown keeps the old frame
            # rather than replace the cancellation with an error of its own.
            with contextlib.suppress(Exception):
                live.update(frame())
            raise


class RichDisplay:
    """The live view on a terminal: redrawn about `Config.refresh_hz` times a second on stderr."""

    def __init__(self, config: Config, *, verbose: bool = False, console: Console | None = None) -> None:
        self._config = config
        self._verbose = verbose
        if console is None:
            from rich.console import Console  # only a rich view loads rich (see the imports at the top)

            console = Console(stderr=True)
        self.console = console
        self.refreshes = 0  # frames drawn by `run` (tests and diagnostics read it)

    def render(self, status: StatusLike) -> Text:
        return render_status(status, self._config, self.console.width, verbose=self._verbose)

    async def run(self, poll: Poll) -> None:
        """Redraw until cancelled; on cancellation the last frame stays on screen."""
        await redraw_live(self.console, self._config, lambda: self.render(poll()), self._drew)

    def _drew(self) -> None:
        self.refreshes += 1

    def stall(self, report: StallReport) -> None:
        from rich.panel import Panel
        from rich.text import Text

        self.console.print(Panel(Text("\n".join(report_lines(report))), title="stall report", border_style="yellow"))

    def finish(self, result: ResultLike) -> None:
        from rich.text import Text

        lines = summary_lines(result)
        style = "bold green" if result.error is None else "bold red"
        self.console.print(Text(lines[0], style=style))
        for line in lines[1:]:
            self.console.print(Text(line))


# --- plain lines ---------------------------------------------------------------------------------


def plain_line(status: StatusLike) -> str:
    """aria2c's status line shape: [#id done/total(pct%) CN:n DL:rate UL:rate ETA:t BUF:used/budget].

    ETA is left out while it is unknown (no download rate), as aria2c does. The session's note (a stall's
    cause, the start-up check's progress) follows the brackets.
    """
    snap = status.scheduler
    total = status.total_bytes
    done = status.verified_bytes
    pct = done * PERCENT // total if total > 0 else PERCENT
    parts = [
        f"#{short_id(status.info_hash)}",
        f"{format_size(done)}/{format_size(total)}({pct}%)",
        f"CN:{status.peers_connected}",
        f"DL:{format_rate(sane(status.download_rate))}",
        f"UL:{format_rate(sane(status.upload_rate))}",
    ]
    eta = eta_seconds(status)
    if eta is not None:
        parts.append(f"ETA:{format_duration(eta)}")
    parts.append(f"BUF:{format_size(snap.bytes_in_flight + snap.bytes_waiting_for_disk)}/{format_size(snap.budget)}")
    note = getattr(status, "note", None)
    return "[" + " ".join(parts) + "]" + (f" {note}" if note else "")


RESULT_OK = "ok"
RESULT_ERROR = "error"
RESULT_INTERRUPTED = "interrupted"


def summary_lines(result: ResultLike) -> list[str]:
    """The end summary: a headline, then size, time, average rate, peers used, waste, hash failures.

    A failed download's headline does not repeat the error: the command line prints it as its own
    `jstorrent: ...` line (QuietDisplay prints it when nothing else would).
    """
    if result.status == RESULT_OK:
        head = f"Download complete: {result.name}"
        size = f"size {format_size(result.total_bytes)}"
    else:
        word = "interrupted" if result.status == RESULT_INTERRUPTED else "failed"
        head = f"Download {word}: {result.name}"
        size = f"got {format_size(result.verified_bytes)} of {format_size(result.total_bytes)}"
    stats = (f"{size} · time {format_duration(sane(result.download_time))} · "
             f"average {format_rate(sane(result.average_rate))} · {_plural(result.peers_used, 'peer')} used · "
             f"wasted {format_size(result.wasted_bytes)} · {_plural(result.hash_failures, 'hash failure')}")
    return [head, stats]


class PlainDisplay:
    """Not a terminal: one status line on stderr every `Config.plain_interval` seconds."""

    def __init__(self, config: Config, *, file: TextIO | None = None) -> None:
        self._config = config
        self._file = file if file is not None else sys.stderr
        self.lines = 0  # status lines written

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()

    async def run(self, poll: Poll) -> None:
        while True:
            await trio.sleep(self._config.plain_interval)
            status = poll()
            self._write(plain_line(status))
            self.lines += 1

    def stall(self, report: StallReport) -> None:
        for line in report_lines(report):
            self._write(line)

    def finish(self, result: ResultLike) -> None:
        for line in summary_lines(result):
            self._write(line)


# --- JSON lines ------------------------------------------------------------------------------------

JSON_SCHEMA_VERSION = 1
# Decimal places kept in JSON numbers: milliseconds for times, a millionth for progress, a tenth of a
# second for the ETA (rates are whole bytes per second). Formats, not limits.
_TIME_DIGITS = 3
_PROGRESS_DIGITS = 6
_ETA_DIGITS = 1


def _eta_json(eta: float | None) -> float | None:
    return None if eta is None else round(eta, _ETA_DIGITS)


def progress_record(status: StatusLike) -> dict[str, object]:
    """One `progress` record (docs/json.md lists and explains every field)."""
    snap = status.scheduler
    unchoking, snubbed = peer_counts(snap)
    total, done = status.total_bytes, status.verified_bytes
    return {
        "event": "progress",
        "schema": JSON_SCHEMA_VERSION,
        "info_hash": status.info_hash.hex(),
        "name": status.name,
        "state": state_text(status.state),
        "elapsed": round(sane(status.elapsed), _TIME_DIGITS),
        "total_bytes": total,
        "verified_bytes": done,
        "downloaded_bytes": status.downloaded_bytes,
        "uploaded_bytes": status.uploaded_bytes,
        "progress": round(fraction(done, total), _PROGRESS_DIGITS),
        "download_rate": round(sane(status.download_rate)),
        "upload_rate": round(sane(status.upload_rate)),
        "eta": _eta_json(eta_seconds(status)),
        "peers_connected": status.peers_connected,
        "peers_unchoking": unchoking,
        "peers_snubbed": snubbed,
        "bytes_in_flight": snap.bytes_in_flight,
        "bytes_waiting_for_disk": snap.bytes_waiting_for_disk,
        "buffer_budget": snap.budget,
        "pieces_partial": snap.pieces_partial,
        "pieces_fully_requested": snap.pieces_fully_requested,
        "pieces_awaiting_hash": snap.pieces_awaiting_hash,
        "pieces_verified": snap.pieces_verified,
        "pieces_wanted": snap.pieces_wanted,
        "endgame": snap.endgame,
        "wasted_bytes": snap.wasted_bytes,
        "hash_failures": snap.hash_failures,
    }


def result_record(result: ResultLike) -> dict[str, object]:
    """The final `result` record (docs/json.md)."""
    return {
        "event": "result",
        "schema": JSON_SCHEMA_VERSION,
        "info_hash": result.info_hash.hex(),
        "name": result.name,
        "status": result.status,
        "ok": result.status == RESULT_OK,
        "error": result.error,
        "total_bytes": result.total_bytes,
        "verified_bytes": result.verified_bytes,
        "downloaded_bytes": result.downloaded_bytes,
        "uploaded_bytes": result.uploaded_bytes,
        "elapsed": round(sane(result.elapsed), _TIME_DIGITS),
        "download_time": round(sane(result.download_time), _TIME_DIGITS),
        "average_rate": round(sane(result.average_rate)),
        "peers_used": result.peers_used,
        "wasted_bytes": result.wasted_bytes,
        "hash_failures": result.hash_failures,
    }


class JsonDisplay:
    """--json: a `progress` record on stdout at once and every `Config.json_interval` seconds; one
    `result` record at the end. One JSON object per line, flushed; nothing else goes to stdout."""

    def __init__(self, config: Config, *, file: TextIO | None = None) -> None:
        self._config = config
        self._file = file if file is not None else sys.stdout
        self.records = 0

    def _write(self, record: dict[str, object]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        self._file.flush()
        self.records += 1

    async def run(self, poll: Poll) -> None:
        while True:
            self._write(progress_record(poll()))
            await trio.sleep(self._config.json_interval)

    def stall(self, report: StallReport) -> None:
        self._write(report_record(report))

    def finish(self, result: ResultLike) -> None:
        self._write(result_record(result))


# --- quiet -----------------------------------------------------------------------------------------


class QuietDisplay:
    """--quiet: no progress and no summary; a failed download still gets its one error line (the command
    line stays silent under --quiet, so this is the only place it is printed)."""

    def __init__(self, *, file: TextIO | None = None) -> None:
        self._file = file if file is not None else sys.stderr

    async def run(self, poll: Poll) -> None:
        await trio.sleep_forever()

    def stall(self, report: StallReport) -> None:
        pass  # --quiet: nothing but errors

    def finish(self, result: ResultLike) -> None:
        if result.status == RESULT_ERROR:
            self._file.write(f"jstorrent: {result.error}\n")
            self._file.flush()


# --- choosing --------------------------------------------------------------------------------------

AnyDisplay = RichDisplay | PlainDisplay | JsonDisplay | QuietDisplay


def make_display(
    config: Config,
    *,
    json_output: bool = False,
    quiet: bool = False,
    verbose: bool = False,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> AnyDisplay:
    """--json wins (stdout is for the records, stderr stays silent); then --quiet; then the live view
    when stderr is a terminal, else plain lines."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    if json_output:
        return JsonDisplay(config, file=out)
    if quiet:
        return QuietDisplay(file=err)
    if is_terminal(err):
        from rich.console import Console  # the only view that needs rich (see the imports at the top)

        return RichDisplay(config, verbose=verbose, console=Console(file=err))
    return PlainDisplay(config, file=err)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream is not a terminal
        return False
