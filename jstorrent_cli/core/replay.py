"""Replay a scheduler log (`jstorrent replay FILE`): same facts, fresh Scheduler, same commands? Sans-IO.

`Replay(header)` builds the Scheduler the log's header describes; `feed(entry)` hands it one recorded fact
at the recorded time and compares the commands it issues with the recorded ones. The first difference is a
`Divergence` (the replay stops there: past it the two schedulers no longer see the same world). Meanwhile
it keeps the timeline people read:

* per second of the log: blocks requested, received, cancelled, pieces verified and failed, bytes in flight
  and waiting for disk, and each peer's outstanding requests at the end of that second;
* events: peers joining and leaving, endgame beginning (no FREE block left) and ending, the download
  finishing, and a stall: when no block has arrived for the header's `stall_report_after` seconds while
  wanted data is missing, the stall report (core/diagnose.py) of the replayed scheduler at that moment.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jstorrent_cli.core import messages as m
from jstorrent_cli.core.diagnose import StallDetector, StallReport, diagnose
from jstorrent_cli.core.recorder import Entry, LogError, LogHeader, command_record
from jstorrent_cli.errors import JsTorrentError


class ReplayDivergence(JsTorrentError):
    """The replayed scheduler issued other commands than the recorded one (exit status 1)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Divergence:
    line: int  # the log line of the recorded command (or of the fact, when a command is missing)
    fact: str
    index: int  # which command after that fact (0-based)
    recorded: dict[str, object] | None  # None: the replay issued a command the log does not have
    replayed: dict[str, object] | None  # None: the log has a command the replay did not issue

    def describe(self) -> str:
        what = f"line {self.line}: after {self.fact}, command {self.index + 1}"
        if self.replayed is None:
            return f"{what}: recorded {_short(self.recorded)}, the replay issued nothing more"
        if self.recorded is None:
            return f"{what}: the replay issued {_short(self.replayed)}, the log has nothing more"
        return f"{what}: recorded {_short(self.recorded)}, replayed {_short(self.replayed)}"


_SHORT = 160  # characters of a command shown in a divergence line


def _short(record: dict[str, object] | None) -> str:
    text = str(record)
    return text if len(text) <= _SHORT else text[:_SHORT - 3] + "..."


@dataclasses.dataclass(slots=True)
class Second:
    """What happened in one second of the log (`start`: seconds since its first fact)."""

    start: int
    requested: int = 0  # blocks
    received: int = 0  # blocks accepted (handed to the writer)
    cancelled: int = 0
    verified: int = 0  # pieces
    failed: int = 0  # pieces that failed their hash
    bytes_in_flight: int = 0  # at the end of the second
    bytes_waiting_for_disk: int = 0
    outstanding: dict[str, int] = dataclasses.field(default_factory=dict)  # peer -> requests out, at the end

    def record(self) -> dict[str, object]:
        return {"event": "second", **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    at: float  # seconds since the first fact
    kind: str  # "joined", "gone", "endgame", "endgame_over", "finished", "stall"
    text: str
    stall: StallReport | None = None


class Replay:
    """Feed it the log's entries in order; read `seconds`, `events` and `divergence`."""

    def __init__(self, header: LogHeader) -> None:
        self.header = header
        self.scheduler = header.scheduler()
        self.detector = StallDetector(header.config.stall_report_after)
        self.seconds: list[Second] = []
        self.events: list[Event] = []
        self.divergence: Divergence | None = None
        self.cut_at_line: int | None = None  # the first line a log cut short lacks (its last fact's commands)
        self.facts = 0
        self.commands = 0
        self._start: float | None = None
        self._received_bytes = 0
        self._endgame = False
        self._names: dict[m.PeerId, str] = {}

    def name(self, peer: m.PeerId) -> str:
        return self._names.get(peer, f"#{peer}")

    def feed(self, entry: Entry) -> bool:
        """Replay one fact; False (and `divergence` set) when the commands differ."""
        now = entry.now
        if self._start is None:
            self._start = now
        second = self._second(now)
        fact = entry.fact
        if isinstance(fact, m.PeerJoined):
            self._names[fact.peer] = f"{fact.ip} (#{fact.peer})"
            self._event(now, "joined", f"{self.name(fact.peer)} joined"
                        + (" with every piece" if fact.have_all else ""))
        elif isinstance(fact, m.PeerGone):
            self._event(now, "gone", f"{self.name(fact.peer)} left")
        elif isinstance(fact, m.BlocksReceived):
            self._received_bytes += sum(len(data) for _, _, data in fact.blocks)
        elif isinstance(fact, m.PieceHashed):
            if fact.ok:
                second.verified += 1
            else:
                second.failed += 1
        try:
            out = self.scheduler.handle(fact, now)
        except (ValueError, TypeError, KeyError, IndexError) as err:  # only a log edited by hand gets here
            raise LogError(f"line {entry.line}: the scheduler cannot take this {type(fact).__name__}: {err}") from None
        self.facts += 1
        replayed = [command_record(cmd) for cmd in out]
        for i in range(max(len(replayed), len(entry.commands))):
            got = replayed[i] if i < len(replayed) else None
            want = entry.commands[i] if i < len(entry.commands) else None
            if want is None and entry.final:
                # The log ends here with fewer commands than the replay issued: the recorder never wrote the
                # rest (a run killed mid-write), a complete log always has them all. Not a divergence.
                self.cut_at_line = (entry.command_lines[-1] if entry.command_lines else entry.line) + 1
                out = out[:i]
                break
            if got != want:
                line = entry.command_lines[i] if i < len(entry.command_lines) else entry.line
                self.divergence = Divergence(line, type(fact).__name__, i, want, got)
                return False
        self.commands += len(out)
        for cmd in out:
            if isinstance(cmd, m.SendRequests):
                second.requested += len(cmd.requests)
            elif isinstance(cmd, m.SendCancels):
                second.cancelled += len(cmd.cancels)
            elif isinstance(cmd, m.WriteBlocks):
                second.received += len(cmd.blocks)
            elif isinstance(cmd, m.Finished):
                self._event(now, "finished", "every wanted piece verified")
        self._after(now, second)
        return True

    def _second(self, now: float) -> Second:
        assert self._start is not None
        index = int(now - self._start)
        if not self.seconds or self.seconds[-1].start != index:
            self.seconds.append(Second(index))
        return self.seconds[-1]

    def _event(self, now: float, kind: str, text: str, stall: StallReport | None = None) -> None:
        assert self._start is not None
        self.events.append(Event(now - self._start, kind, text, stall))

    def _after(self, now: float, second: Second) -> None:
        # After every fact: the scheduler's counters only (a snapshot counts the started pieces: with small
        # pieces that made the replay several times slower than the download it replays).
        scheduler = self.scheduler
        second.bytes_in_flight = scheduler.bytes_in_flight
        second.bytes_waiting_for_disk = scheduler.bytes_waiting_for_disk
        second.outstanding = {self.name(peer): n for peer, n in scheduler.outstanding_counts().items()}
        endgame = scheduler.endgame
        missing_pieces = scheduler.picker.needed_count
        if endgame != self._endgame:
            self._endgame = endgame
            if endgame:
                self._event(now, "endgame", f"endgame began: {scheduler.bytes_in_flight} bytes in flight, "
                            f"{missing_pieces} pieces missing")
            elif missing_pieces:
                self._event(now, "endgame_over", "endgame over: blocks are FREE again (released or failed)")
        if self.detector.observe(now, self._received_bytes, missing_pieces > 0):
            stalled_for = self.detector.stalled_for(now)
            report = diagnose(scheduler.snapshot(), now=now, detail=scheduler.piece_detail(), stalled_for=stalled_for,
                              config=self.header.config, names=self._names)
            self._event(now, "stall", f"stall: no block for {stalled_for:.1f}s: {report.most_likely_cause}",
                        report)

    def summary(self) -> dict[str, Any]:
        return {"event": "replay", "facts": self.facts, "commands": self.commands,
                "divergence": None if self.divergence is None else self.divergence.describe()}


__all__ = ["Divergence", "Event", "Replay", "ReplayDivergence", "Second"]
