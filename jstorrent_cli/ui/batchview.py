"""Views of a batch download (`jstorrent get a.torrent b.torrent`, `get -i LIST`).

Like ui/display.py, every view pulls: tasks/batch.py hands `run` a `poll()` returning a `BatchStatus`
(one `ItemView` per item, the session status of each running one) and the view reads it a few times a
second. `item_done(result)` is called as each item ends, `stall(id, report)` when one stalls, and
`finish(results)` once at the end.

* Live view (stderr is a terminal): a few lines whatever the list's length: the totals (items done,
  active, waiting, failed; total rates; the shared buffer's occupancy; connected peers of the
  shared limit), then the busiest items one line each (Config.batch_view_rows), then `(+N)` for the
  other running ones. A line per finished item is printed above it.
* Plain (stderr is not a terminal): the totals line and one aria2-style line per running item every
  Config.plain_interval seconds; a line per finished item.
* JSON (--json): `progress` records as for one torrent, each with the item's `id`, every
  Config.json_interval seconds; one `result` record per item at the end (docs/json.md).
* Quiet: only errors, one line per failed item.

The end of every view but JSON and quiet is aria2c's results table on stdout (`results_table`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

import trio

from jstorrent_cli.config import Config
from jstorrent_cli.core.batchlist import (
    STATUS_DUPLICATE,
    STATUS_ERROR,
    STATUS_INTERRUPTED,
    STATUS_OK,
    ItemResult,
)
from jstorrent_cli.core.diagnose import StallReport, report_lines, report_record
from jstorrent_cli.ui.display import (
    JSON_SCHEMA_VERSION,
    PERCENT,
    StatusLike,
    eta_seconds,
    fraction,
    is_terminal,
    plain_line,
    progress_record,
    redraw_live,
    sane,
)
from jstorrent_cli.ui.format import format_duration, format_rate, format_size

if TYPE_CHECKING:
    # rich is imported only where the live view draws (as in ui/display.py): a batch with --json,
    # --quiet or plain lines never loads it.
    from rich.console import Console
    from rich.text import Text

PHASE_WAITING = "waiting"
PHASE_ACTIVE = "active"
PHASE_DONE = "done"
PHASE_FAILED = "failed"
PHASE_INTERRUPTED = "interrupted"  # Ctrl-C came while it downloaded, or before it started

# aria2c's results table: column widths, the rule's length and status words, left-aligned as aria2c prints
# them (formats, not limits).
_GID_WIDTH = 6
_STAT_WIDTH = 4
_SPEED_WIDTH = 11
_PATH_RULE = 55
_STAT_WORDS = {STATUS_OK: "OK", STATUS_ERROR: "ERR", STATUS_INTERRUPTED: "INPR", STATUS_DUPLICATE: "DUP"}
_LEGEND = {
    "OK": "download completed.",
    "ERR": "error occurred.",
    "INPR": "download in-progress (interrupted).",
    "DUP": "duplicate of an earlier item (downloaded once).",
}


@dataclasses.dataclass(frozen=True, slots=True)
class ItemView:
    id: int
    source: str
    phase: str  # PHASE_WAITING / ACTIVE / DONE / FAILED / INTERRUPTED
    status: StatusLike | None  # the session's status while it runs


@dataclasses.dataclass(frozen=True, slots=True)
class BatchStatus:
    items: tuple[ItemView, ...]
    buffer_used: int  # bytes of the shared budget held by all items (in flight + to disk)
    buffer_total: int
    peers_connected: int  # connections of all items (counted against max_peers)
    max_peers: int
    elapsed: float


BatchPoll = Callable[[], BatchStatus]


def counts(status: BatchStatus) -> dict[str, int]:
    out = {PHASE_DONE: 0, PHASE_ACTIVE: 0, PHASE_WAITING: 0, PHASE_FAILED: 0, PHASE_INTERRUPTED: 0}
    for item in status.items:
        out[item.phase] += 1
    return out


def _rates(status: BatchStatus) -> tuple[float, float]:
    down = up = 0.0
    for item in status.items:
        if item.status is not None:
            down += sane(item.status.download_rate)
            up += sane(item.status.upload_rate)
    return down, up


def totals_parts(status: BatchStatus) -> tuple[str, str]:
    """('7 items: 2 done · 3 active · 1 waiting · 1 failed  ↓.. ↑..', 'buffer 3.0MiB/64.0MiB (5%)  peers 9/50')."""
    c = counts(status)
    down, up = _rates(status)
    used_pct = fraction(status.buffer_used, status.buffer_total) * PERCENT
    return (f"{len(status.items)} items: {c[PHASE_DONE]} done · {c[PHASE_ACTIVE]} active · "
            f"{c[PHASE_WAITING]} waiting · {c[PHASE_FAILED]} failed"
            + (f" · {c[PHASE_INTERRUPTED]} interrupted" if c[PHASE_INTERRUPTED] else "")
            + f"  ↓{format_rate(down)} ↑{format_rate(up)}",
            f"buffer {format_size(status.buffer_used)}/{format_size(status.buffer_total)} ({used_pct:.0f}%)  "
            f"peers {status.peers_connected}/{status.max_peers}")


def totals_line(status: BatchStatus) -> str:
    """The totals on one line (plain view, SIGUSR1)."""
    return "  ".join(totals_parts(status))


def busiest(status: BatchStatus, rows: int) -> tuple[list[ItemView], int]:
    """The running items with the highest download rate (at most `rows`), and how many others run."""
    running = [i for i in status.items if i.phase == PHASE_ACTIVE and i.status is not None]
    running.sort(key=lambda i: (-sane(i.status.download_rate) if i.status is not None else 0.0, i.id))
    return running[:rows], max(len(running) - rows, 0)


def item_line(item: ItemView) -> str:
    """'#2 name  45.1%  3.6MiB/8.0MiB  ↓5.0MiB/s  CN:3  ETA 1m04s  downloading', then the session's note if any."""
    s = item.status
    if s is None:
        return f"#{item.id} {item.source}  {item.phase}"
    frac = fraction(s.verified_bytes, s.total_bytes)
    state = getattr(s.state, "value", s.state)
    note = getattr(s, "note", None)  # the session's: a stall's cause, the start-up check's progress
    return (f"#{item.id} {s.name}  {frac * PERCENT:.1f}%  {format_size(s.verified_bytes)}/{format_size(s.total_bytes)}"
            f"  ↓{format_rate(sane(s.download_rate))}  CN:{s.peers_connected}"
            f"  ETA {format_duration(eta_seconds(s))}  {state}" + (f"  {note}" if note else ""))


def done_line(result: ItemResult) -> str:
    """One line as an item ends (live and plain views, on stderr)."""
    word = _STAT_WORDS[result.status]
    what = result.name or result.source
    if result.status == STATUS_OK:
        rate = format_rate(sane(result.average_rate))
        return f"#{result.id} {word} {what}: {format_size(result.total_bytes)} at {rate}"
    if result.status == STATUS_DUPLICATE:
        return f"#{result.id} {word} {result.source}: same info hash as #{result.duplicate_of}, downloaded once"
    if result.name is None:  # it never started: its error names the source already
        return f"#{result.id} {word} {result.error}"
    return f"#{result.id} {word} {what}: {result.error}"


def results_table(results: Sequence[ItemResult]) -> list[str]:
    """aria2c's 'Download Results' table, its status legend, and a line per duplicate."""
    lines = ["", "Download Results:",
             f"{'gid':<{_GID_WIDTH}}|{'stat':<{_STAT_WIDTH}}|{'avg speed':<{_SPEED_WIDTH}}|path/URI",
             f"{'=' * _GID_WIDTH}+{'=' * _STAT_WIDTH}+{'=' * _SPEED_WIDTH}+{'=' * _PATH_RULE}"]
    for r in sorted(results, key=lambda r: r.id):
        word = _STAT_WORDS[r.status]
        lines.append(f"{r.id:<{_GID_WIDTH}}|{word:<{_STAT_WIDTH}}|{format_rate(sane(r.average_rate)):>{_SPEED_WIDTH}}"
                     f"|{r.path}")
    present = [w for w in _LEGEND if any(_STAT_WORDS[r.status] == w for r in results)]
    if present:
        lines += ["", "Status Legend:", "".join(f"({w}):{_LEGEND[w]}" for w in present)]
    for r in sorted(results, key=lambda r: r.id):
        if r.status == STATUS_DUPLICATE:
            lines.append(f"#{r.id} ({r.source}) duplicates #{r.duplicate_of}: same info hash, downloaded once")
    return lines


def result_record(result: ItemResult) -> dict[str, object]:
    """One `result` record per item with --json (docs/json.md)."""
    return {
        "event": "result",
        "schema": JSON_SCHEMA_VERSION,
        "id": result.id,
        "source": result.source,
        "name": result.name,
        "info_hash": result.info_hash.hex() if result.info_hash is not None else None,
        "status": result.status,
        "ok": result.status in (STATUS_OK, STATUS_DUPLICATE),
        "exit_status": result.exit_status,
        "error": result.error,
        "average_rate": round(sane(result.average_rate)),
        "bytes": result.bytes,
        "total_bytes": result.total_bytes,
        "verified_bytes": result.verified_bytes,
        "path": result.path,
        "duplicate_of": result.duplicate_of,
    }


class _Sink:
    """Where a view writes whole lines. Once a write fails (the reader went away: `... | head`; a full disk) it is
    left alone: a view must never end the batch, whose downloads and exit status do not depend on it."""

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self.gone = False

    def write(self, lines: Sequence[str]) -> None:
        if self.gone:
            return
        try:
            self.file.write("".join(line + "\n" for line in lines))
            self.file.flush()
        except (OSError, ValueError):  # ValueError: the file was closed
            self.gone = True


class BatchRichDisplay:
    """The live batch view on a terminal (stderr), redrawn Config.refresh_hz times a second."""

    def __init__(self, config: Config, *, console: Console, out: TextIO) -> None:
        self._config = config
        self.console = console
        self._out = _Sink(out)
        self.refreshes = 0

    def render(self, status: BatchStatus) -> Text:
        from rich.text import Text

        text = Text(no_wrap=True, overflow="crop", end="")
        counted, shared = totals_parts(status)
        text.append(counted + "\n", style="bold")
        text.append(shared + "\n", style="dim")
        shown, more = busiest(status, self._config.batch_view_rows)
        for item in shown:
            text.append(item_line(item) + "\n")
        if more:
            text.append(f"(+{more})\n", style="dim")
        text.rstrip()
        return text

    async def run(self, poll: BatchPoll) -> None:
        await redraw_live(self.console, self._config, lambda: self.render(poll()), self._drew)

    def _drew(self) -> None:
        self.refreshes += 1

    def item_done(self, result: ItemResult) -> None:
        from rich.text import Text

        style = "green" if result.status in (STATUS_OK, STATUS_DUPLICATE) else "red"
        self.console.print(Text(done_line(result), style=style))

    def stall(self, item_id: int, report: StallReport) -> None:
        from rich.panel import Panel
        from rich.text import Text

        self.console.print(Panel(Text("\n".join(report_lines(report))), title=f"stall report #{item_id}",
                                 border_style="yellow"))

    def finish(self, results: Sequence[ItemResult]) -> None:
        self._out.write(results_table(results))


class BatchPlainDisplay:
    """Not a terminal: the totals and a line per running item every Config.plain_interval seconds."""

    def __init__(self, config: Config, *, file: TextIO, out: TextIO) -> None:
        self._config = config
        self._file = _Sink(file)
        self._out = _Sink(out)
        self.lines = 0

    async def run(self, poll: BatchPoll) -> None:
        while True:
            await trio.sleep(self._config.plain_interval)
            status = poll()
            lines = [f"[{totals_line(status)}]"]
            lines += [f"#{i.id} {plain_line(i.status)}" for i in status.items
                      if i.phase == PHASE_ACTIVE and i.status is not None]
            self._file.write(lines)
            self.lines += len(lines)

    def item_done(self, result: ItemResult) -> None:
        self._file.write([done_line(result)])

    def stall(self, item_id: int, report: StallReport) -> None:
        self._file.write([f"#{item_id} {line}" for line in report_lines(report)])

    def finish(self, results: Sequence[ItemResult]) -> None:
        self._out.write(results_table(results))


class BatchJsonDisplay:
    """--json: per running item a `progress` record (with its `id`); one `result` record per item."""

    def __init__(self, config: Config, *, file: TextIO) -> None:
        self._config = config
        self._file = _Sink(file)
        self.records = 0

    def _emit(self, record: dict[str, object]) -> None:
        self._file.write([json.dumps(record, ensure_ascii=False, allow_nan=False)])
        self.records += 1

    async def run(self, poll: BatchPoll) -> None:
        while True:
            for item in poll().items:
                if item.phase == PHASE_ACTIVE and item.status is not None:
                    self._emit({"id": item.id, **progress_record(item.status)})
            await trio.sleep(self._config.json_interval)

    def item_done(self, result: ItemResult) -> None:
        pass  # the result records come together at the end, in list order

    def stall(self, item_id: int, report: StallReport) -> None:
        self._emit({"id": item_id, **report_record(report)})

    def finish(self, results: Sequence[ItemResult]) -> None:
        for result in sorted(results, key=lambda r: r.id):
            self._emit(result_record(result))


class BatchQuietDisplay:
    """--quiet: one line per failed item on stderr, nothing else."""

    def __init__(self, *, file: TextIO) -> None:
        self._file = _Sink(file)

    async def run(self, poll: BatchPoll) -> None:
        await trio.sleep_forever()

    def item_done(self, result: ItemResult) -> None:
        if result.status == STATUS_ERROR:  # an error of an item that never started names its source already
            what = "" if result.name is None else f"{result.source}: "
            self._file.write([f"jstorrent: #{result.id} {what}{result.error}"])

    def stall(self, item_id: int, report: StallReport) -> None:
        pass

    def finish(self, results: Sequence[ItemResult]) -> None:
        pass


AnyBatchDisplay = BatchRichDisplay | BatchPlainDisplay | BatchJsonDisplay | BatchQuietDisplay


def make_batch_display(
    config: Config,
    *,
    json_output: bool = False,
    quiet: bool = False,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> AnyBatchDisplay:
    """As ui/display.make_display: --json, then --quiet, then live on a terminal, else plain lines."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    if json_output:
        return BatchJsonDisplay(config, file=out)
    if quiet:
        return BatchQuietDisplay(file=err)
    if is_terminal(err):
        from rich.console import Console

        return BatchRichDisplay(config, console=Console(file=err), out=out)
    return BatchPlainDisplay(config, file=err, out=out)


__all__ = [
    "PHASE_ACTIVE",
    "PHASE_DONE",
    "PHASE_FAILED",
    "PHASE_INTERRUPTED",
    "PHASE_WAITING",
    "AnyBatchDisplay",
    "BatchStatus",
    "ItemView",
    "make_batch_display",
    "result_record",
    "results_table",
    "totals_line",
]
