"""`jstorrent replay FILE`: re-run a `get --log-json` log through a fresh Scheduler and show its decisions.

Reads the log (core/recorder.py), feeds every recorded fact at its recorded time to a Scheduler built
from the log's header (core/replay.py) and checks that it issues the recorded commands. Prints the
timeline (one line per second of the log, the events between) on stdout, as text or, with `--json`, as
JSON lines. Exit status: 0 when the replay issued every recorded command (a log cut short by a killed run:
up to the cut, and one line on stderr says where it ends); 1 with one line naming the first difference; 28
when the file is not a readable log (garbage, a damaged line, another format).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator

from jstorrent_cli.core.diagnose import report_lines, report_record
from jstorrent_cli.core.recorder import LogError, read_log
from jstorrent_cli.core.replay import Event, Replay, ReplayDivergence, Second
from jstorrent_cli.errors import FileOpenError, InputNotFoundError
from jstorrent_cli.ui.format import format_size

_PEERS_SHOWN = 6  # peers listed per timeline line (the busiest); --json lists all


def _lines(path: str) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as file:
            number = 0
            try:
                for number, line in enumerate(file, start=1):  # noqa: B007 (read in the except)
                    yield line
            except UnicodeDecodeError:
                raise LogError(f"line {number + 1}: not text: this is not a jstorrent --log-json file") from None
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FileOpenError(f"{path}: is a directory, not a log file") from None
    except OSError as err:
        raise FileOpenError(f"{path}: {err.strerror}") from None


def _second_text(s: Second) -> str:
    busiest = sorted(s.outstanding.items(), key=lambda item: -item[1])
    peers = ", ".join(f"{name} {n}" for name, n in busiest[:_PEERS_SHOWN])
    if len(busiest) > _PEERS_SHOWN:
        peers += f" (+{len(busiest) - _PEERS_SHOWN})"
    return (f"{s.start:>5}s  {s.requested:>9} {s.received:>8} {s.cancelled:>9} {s.verified:>8} {s.failed:>6}"
            f"  {format_size(s.bytes_in_flight):>9} {format_size(s.bytes_waiting_for_disk):>9}  {peers or '-'}")


class _Quiet:
    """Text mode: seconds in which nothing moved and nothing changed are shown as one line per run
    (a 30-minute stall is one line, not 1,800)."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.last: tuple[object, ...] | None = None  # the state of the last second shown
        self.first = self.end = -1  # the run of held quiet seconds

    def second(self, s: Second) -> None:
        state = (s.bytes_in_flight, s.bytes_waiting_for_disk, tuple(sorted(s.outstanding.items())))
        quiet = not (s.requested or s.received or s.cancelled or s.verified or s.failed)
        if quiet and state == self.last and (self.first < 0 or s.start == self.end + 1):
            if self.first < 0:
                self.first = s.start
            self.end = s.start
            return
        self.flush()
        self.echo(_second_text(s))
        self.last = state

    def flush(self) -> None:
        if self.first >= 0:
            span = f"{self.first}s" if self.first == self.end else f"{self.first}-{self.end}s"
            self.echo(f"{span:>6}  nothing moved, nothing changed")
            self.first = self.end = -1


def _event_text(e: Event) -> list[str]:
    lines = [f"{e.at:>8.3f}s  {e.text}"]
    if e.stall is not None:
        lines += [f"            {line}" for line in report_lines(e.stall)[2:]]
    return lines


def run_replay(path: str, *, as_json: bool, echo: Callable[[str], None]) -> int:
    """Replay the log at `path`, printing with `echo`; raise ReplayDivergence at the first difference."""
    lines = _lines(path)
    try:
        header, entries = read_log(lines)
    except LogError as err:
        raise LogError(f"{path}: {err}") from None
    replay = Replay(header)
    if not as_json:
        echo(f"Replay of {header.name or path}: {header.num_pieces} pieces of {format_size(header.piece_length)}, "
             f"seed {header.seed}")
        echo(f"{'time':>6}  {'requested':>9} {'received':>8} {'cancelled':>9} {'verified':>8} {'failed':>6}"
             f"  {'in flight':>9} {'for disk':>9}  outstanding per peer")
    shown_events = 0
    shown_seconds = 0
    quiet = _Quiet(echo)

    def show(final: bool) -> None:
        nonlocal shown_events, shown_seconds
        # A second is shown once the replay moved past it (or at the end); events in time order with them.
        done = len(replay.seconds) if final else len(replay.seconds) - 1
        while shown_seconds < done or (shown_events < len(replay.events)
                                       and (final or replay.events[shown_events].at < replay.seconds[-1].start)):
            next_second = replay.seconds[shown_seconds] if shown_seconds < done else None
            next_event = replay.events[shown_events] if shown_events < len(replay.events) else None
            if next_event is not None and (next_second is None or next_event.at < next_second.start + 1):
                if as_json:
                    record: dict[str, object] = {"event": next_event.kind, "at": round(next_event.at, 3),
                                                 "text": next_event.text}
                    if next_event.stall is not None:
                        record["stall"] = report_record(next_event.stall)
                    echo(json.dumps(record))
                else:
                    quiet.flush()
                    for line in _event_text(next_event):
                        echo(line)
                shown_events += 1
            elif next_second is not None:
                if as_json:
                    echo(json.dumps(next_second.record()))
                else:
                    quiet.second(next_second)
                shown_seconds += 1
            else:
                break

    try:
        for entry in entries:
            if not replay.feed(entry):
                break
            show(final=False)
    except LogError as err:
        raise LogError(f"{path}: {err}") from None
    show(final=True)
    quiet.flush()
    summary = replay.summary()
    cut = entries.cut_at_line if entries.cut_at_line is not None else replay.cut_at_line
    summary["cut_at_line"] = cut
    if as_json:
        echo(json.dumps(summary))
    if replay.divergence is not None:
        raise ReplayDivergence(f"{path}: the replay diverged at {replay.divergence.describe()}")
    if cut is not None:  # a run killed mid-write: what was written replays, the rest is not there
        sys.stderr.write(f"jstorrent: {path}: the log ends at line {cut}, cut short (the run was killed while "
                         "writing it?): replayed up to there\n")
    if not as_json:
        echo(f"{replay.facts} facts replayed; the scheduler issued the same {replay.commands} commands.")
    return 0
