"""The scheduler's log (`get --log-json FILE`): every fact into and every command out of it, as JSON lines.

`RecordingScheduler` is a `Scheduler` whose `handle` also hands one JSON line per fact and per command
to a `sink` (the caller writes them: the file lives in tasks/). The first line is a header with what a
fresh Scheduler needs to make the same decisions: the whole Config, the torrent's geometry, the wanted
and already-verified pieces, sequential mode and the seed of the scheduler's own random generator.

    {"log": "jstorrent-scheduler", "version": 1, "seed": 7, "num_pieces": 4, ..., "config": {...}}
    {"t": 12.5, "fact": "PeerJoined", "peer": 0, "ip": "127.0.0.2", "bitfield": "f0", ...}
    {"t": 12.5, "cmd": "SendInterested", "peer": 0}
    {"t": 12.6, "fact": "BlocksReceived", "peer": 0, "blocks": [[0, 0, 16384]]}

`t` is the monotonic clock the session gave the scheduler (`now`), in seconds. Blocks' data are never
logged: a block is `[piece, begin, length]`; bitfields and block digests are hex. A command line follows
the fact that caused it. `read_log` parses a log back (header, then `Entry`s) and raises `LogError`
(exit status 28, like a bad argument) for anything that is not such a log, naming the line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from jstorrent_cli.config import Config
from jstorrent_cli.core import messages as m
from jstorrent_cli.core.scheduler import Scheduler
from jstorrent_cli.errors import UsageError

LOG_NAME = "jstorrent-scheduler"
LOG_VERSION = 1  # raise when a record changes meaning (docs/stalls.md)

_FACTS: dict[str, type[Any]] = {cls.__name__: cls for cls in (
    m.PeerJoined, m.Have, m.Choked, m.Unchoked, m.PeerInterested, m.PeerNotInterested, m.BlocksReceived,
    m.RequestRejected, m.AllowedFast, m.PeerGone, m.BlocksWritten, m.PieceHashed, m.Tick)}
_BYTES_FIELDS = frozenset({"bitfield"})  # hex in the log
# Fields checked for their type (the annotations are strings here), so a hand-edited log is a LogError.
_CHECKED: dict[object, type | tuple[type, ...]] = {
    "int": int, "bool": bool, "str": str, "int | None": (int, type(None))}


class LogError(UsageError):
    """The file given to `jstorrent replay` is not a readable scheduler log (exit status 28)."""


@functools.lru_cache(maxsize=4)
def _zeros(length: int) -> bytes:
    """A replayed block's stand-in data (the log has lengths only; the scheduler reads nothing else). Shared:
    bytes are immutable, and nearly every block has the one full length."""
    return bytes(length)


def _value(value: object) -> object:
    """One field of a fact or command as JSON: bytes as hex, blocks without their data, tuples as lists."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        if len(value) == 3 and isinstance(value[0], int) and isinstance(value[2], bytes | bytearray | memoryview):
            return [value[0], value[1], len(value[2])]  # a received block: its length, never its data
        return [_value(v) for v in value]
    return value


def record_of(kind: str, item: object, now: float) -> dict[str, object]:
    """`{"t": now, kind: ClassName, field: value...}` for a fact (kind "fact") or a command ("cmd")."""
    record: dict[str, object] = {"t": now, kind: type(item).__name__}
    for field in dataclasses.fields(item):  # type: ignore[arg-type]
        record[field.name] = _value(getattr(item, field.name))
    return record


def command_record(cmd: m.Command) -> dict[str, object]:
    """A command as compared by replay: its record without the time."""
    record = record_of("cmd", cmd, 0.0)
    del record["t"]
    return record


def _bitmap(flags: Sequence[bool] | None) -> str | None:
    return None if flags is None else bytes(bool(f) for f in flags).hex()


@dataclasses.dataclass(frozen=True, slots=True)
class LogHeader:
    config: Config
    num_pieces: int
    piece_length: int
    total_length: int
    wanted: tuple[bool, ...] | None
    have: tuple[bool, ...] | None
    sequential: bool
    seed: int
    name: str | None = None  # the torrent's name, for people reading the log

    def record(self) -> dict[str, object]:
        return {
            "log": LOG_NAME, "version": LOG_VERSION, "name": self.name, "seed": self.seed,
            "num_pieces": self.num_pieces, "piece_length": self.piece_length, "total_length": self.total_length,
            "sequential": self.sequential, "wanted": _bitmap(self.wanted), "have": _bitmap(self.have),
            "config": dataclasses.asdict(self.config),
        }

    def scheduler(self) -> Scheduler:
        """A fresh Scheduler that makes the decisions the recorded one made, given the same facts."""
        args, kwargs = self.scheduler_arguments()
        return Scheduler(*args, **kwargs)

    def scheduler_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The Scheduler's arguments, for the recorded run and its replays alike (one list, so they agree)."""
        return ((self.num_pieces, self.piece_length, self.total_length, self.config, random.Random(self.seed)),
                {"wanted": self.wanted, "have": self.have, "sequential": self.sequential})


def _dumps(record: dict[str, object]) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


# Hand-written lines for the records of every block and piece: the same JSON `_dumps(record_of(...))` writes,
# several times cheaper (a download logs 4-7 records per 16 KiB block).


def _peer(peer: m.PeerId) -> str:
    return str(peer) if type(peer) is int else json.dumps(_value(peer))


def _refs(refs: Iterable[tuple[int, int, int]]) -> str:
    return ",".join([f"[{p},{b},{n}]" for p, b, n in refs])


def _data_refs(blocks: Iterable[m.ReceivedBlock]) -> str:
    return ",".join([f"[{p},{b},{len(d)}]" for p, b, d in blocks])


def _fast_line(item: object, now: float, kind: str) -> str | None:
    head = f'{{"t":{now!r},"{kind}":'
    match item:
        case m.BlocksReceived(peer, blocks):
            return f'{head}"BlocksReceived","peer":{_peer(peer)},"blocks":[{_data_refs(blocks)}]}}\n'
        case m.WriteBlocks(blocks):
            return f'{head}"WriteBlocks","blocks":[{_data_refs(blocks)}]}}\n'
        case m.BlocksWritten(refs):
            return f'{head}"BlocksWritten","blocks":[{_refs(refs)}]}}\n'
        case m.SendRequests(peer, refs):
            return f'{head}"SendRequests","peer":{_peer(peer)},"requests":[{_refs(refs)}]}}\n'
        case m.SendCancels(peer, refs):
            return f'{head}"SendCancels","peer":{_peer(peer)},"cancels":[{_refs(refs)}]}}\n'
        case m.Tick():
            return f'{head}"Tick"}}\n'
        case m.HashPiece(piece, want):
            return f'{head}"HashPiece","piece":{piece},"want_block_digests":{"true" if want else "false"}}}\n'
        case m.PieceHashed(piece, ok, None):
            return f'{head}"PieceHashed","piece":{piece},"ok":{"true" if ok else "false"},"block_digests":null}}\n'
        case m.SendHave(piece, None):
            return f'{head}"SendHave","piece":{piece},"peer":null}}\n'
    return None


def _line(kind: str, item: object, now: float) -> str:
    line = _fast_line(item, now, kind)
    return line if line is not None else _dumps(record_of(kind, item, now))


class RecordingScheduler(Scheduler):
    """A Scheduler that logs: `sink(line)` gets the header at once, then one JSON line per fact handled and
    per command issued (each ends with a newline). Nothing else differs, so a replay makes the same calls."""

    def __init__(self, header: LogHeader, sink: Callable[[str], None]) -> None:
        args, kwargs = header.scheduler_arguments()
        super().__init__(*args, **kwargs)
        self._sink = sink
        sink(_dumps(header.record()))

    def handle(self, fact: m.Fact, now: float) -> list[m.Command]:
        out = super().handle(fact, now)
        sink = self._sink
        sink(_line("fact", fact, now))
        for cmd in out:
            sink(_line("cmd", cmd, now))
        return out


# --- reading a log back ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One fact of the log, the commands recorded after it, and the line it was on (1-based)."""

    line: int
    now: float
    fact: m.Fact
    commands: tuple[dict[str, object], ...]
    command_lines: tuple[int, ...]
    final: bool = False  # the log's last fact: a run killed mid-write may have left its commands unwritten


def _bool_map(text: object, n: int, what: str) -> tuple[bool, ...] | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{what} is not a hex string")
    raw = bytes.fromhex(text)
    if len(raw) != n:
        raise ValueError(f"{what} has {len(raw)} entries, not {n}")
    return tuple(bool(b) for b in raw)


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} is not an integer")
    return value


_DEFAULTS = Config()


def _config_value(name: str, value: object) -> Any:
    """A Config field from the log, of the type its default has (None where the default is None)."""
    default = getattr(_DEFAULTS, name)
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int)
    elif isinstance(default, float):
        ok = isinstance(value, int | float)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"config {name} is {value!r}")
    return value


def parse_header(line: str) -> LogHeader:
    try:
        record = json.loads(line)
    except ValueError:
        raise LogError("line 1: not JSON: this is not a jstorrent --log-json file") from None
    if not isinstance(record, dict) or record.get("log") != LOG_NAME:
        raise LogError("line 1: no jstorrent-scheduler header: this is not a jstorrent --log-json file")
    if record.get("version") != LOG_VERSION:
        raise LogError(f"line 1: log version {record.get('version')!r}; this jstorrent reads version {LOG_VERSION}")
    try:
        fields = {f.name for f in dataclasses.fields(Config)}
        raw_config = record["config"]
        if not isinstance(raw_config, dict):
            raise ValueError("config is not an object")
        config = Config(**{k: _config_value(k, v) for k, v in raw_config.items() if k in fields})
        n = _int(record["num_pieces"], "num_pieces")
        piece_length = _int(record["piece_length"], "piece_length")
        total = _int(record["total_length"], "total_length")
        if n <= 0 or piece_length <= 0 or not (n - 1) * piece_length < total <= n * piece_length:
            raise ValueError("the piece count, piece length and total length disagree")
        if n > config.max_piece_count:
            raise ValueError(f"{n} pieces is more than {config.max_piece_count}")
        name = record.get("name")
        return LogHeader(
            config=config, num_pieces=n, piece_length=piece_length, total_length=total,
            wanted=_bool_map(record.get("wanted"), n, "wanted"), have=_bool_map(record.get("have"), n, "have"),
            sequential=bool(record.get("sequential", False)), seed=_int(record["seed"], "seed"),
            name=name if isinstance(name, str) else None)
    except (KeyError, TypeError, ValueError) as err:
        raise LogError(f"line 1: bad header: {err}") from None


def _length(value: object, most: int) -> int:
    n = _int(value, "length")
    if not 0 <= n <= most:
        raise ValueError(f"a block of {n} bytes (blocks are at most {most})")
    return n


def _fact(record: dict[str, Any], block_size: int) -> m.Fact:
    cls = _FACTS.get(record.get("fact"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown fact {record.get('fact')!r}")
    args: dict[str, object] = {}
    for field in dataclasses.fields(cls):
        if field.name not in record:
            continue
        value = record[field.name]
        if field.name in _BYTES_FIELDS:
            value = bytes.fromhex(value)
        elif field.name == "blocks" and cls is m.BlocksReceived:
            value = tuple((_int(p, "piece"), _int(b, "begin"), _zeros(_length(n, block_size))) for p, b, n in value)
        elif field.name == "blocks":
            value = tuple((_int(p, "piece"), _int(b, "begin"), _int(n, "length")) for p, b, n in value)
        elif field.name == "block_digests" and value is not None:
            value = tuple(bytes.fromhex(d) for d in value)
        elif field.name == "peer" and isinstance(value, list):
            value = tuple(value)  # a tuple peer id (the session's are ints)
        elif (field.type in _CHECKED and not isinstance(value, _CHECKED[field.type])) or (
                field.type == "int" and isinstance(value, bool)):
            raise ValueError(f"{field.name} is {value!r}")
        args[field.name] = value
    fact: m.Fact = cls(**args)
    return fact


class LogEntries:
    """A log's entries, parsed as they are iterated (LogError names a bad line). A run killed mid-write leaves
    its last line half written, with no line end: that line ends the log instead of being an error, and
    `cut_at_line` (known once iterated) is its number. Any other unreadable line is a LogError."""

    def __init__(self, lines: Iterator[str], block_size: int) -> None:
        self.cut_at_line: int | None = None
        self._entries = self._parse(lines, block_size)

    def __iter__(self) -> Iterator[Entry]:
        return self._entries

    def _parse(self, lines: Iterator[str], block_size: int) -> Iterator[Entry]:
        pending: dict[str, Any] | None = None
        pending_line = 0
        commands: list[dict[str, object]] = []
        command_lines: list[int] = []
        for number, text in enumerate(lines, start=2):
            if not text.strip():
                continue
            try:
                parsed = _record(text, block_size, pending is not None)
            except (KeyError, TypeError, ValueError) as err:
                if not text.endswith("\n"):  # the last line, cut short: the log ends before it
                    self.cut_at_line = number
                    break
                raise LogError(f"line {number}: not a scheduler log record ({err})") from None
            if isinstance(parsed, dict):  # a command of the pending fact
                commands.append(parsed)
                command_lines.append(number)
                continue
            if pending is not None:
                yield Entry(pending_line, pending["t"], pending["fact"], tuple(commands), tuple(command_lines))
            pending, pending_line, commands, command_lines = {"t": parsed[0], "fact": parsed[1]}, number, [], []
        if pending is not None:
            yield Entry(pending_line, pending["t"], pending["fact"], tuple(commands), tuple(command_lines),
                        final=True)


def read_log(lines: Iterable[str]) -> tuple[LogHeader, LogEntries]:
    """The header (parsed at once) and the entries (parsed as they are iterated; LogError names the line)."""
    it = iter(lines)
    first = next(it, None)
    if first is None or not first.strip():
        raise LogError("line 1: empty: this is not a jstorrent --log-json file")
    header = parse_header(first)
    return header, LogEntries(it, header.config.block_size)


def _record(text: str, block_size: int, after_fact: bool) -> tuple[float, m.Fact] | dict[str, object]:
    """One line after the header: (time, fact), or a command's record (without its time). ValueError when it
    is neither (KeyError and TypeError from a fact's fields too)."""
    record = json.loads(text)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    now = record.get("t")
    if not isinstance(now, int | float) or isinstance(now, bool) or not math.isfinite(now):
        raise ValueError("no time")
    if "fact" in record:
        return float(now), _fact(record, block_size)
    if "cmd" in record:
        if not after_fact:
            raise ValueError("a command before any fact")
        del record["t"]
        return record
    raise ValueError("neither a fact nor a command")


__all__ = [
    "LOG_NAME",
    "LOG_VERSION",
    "Entry",
    "LogEntries",
    "LogError",
    "LogHeader",
    "RecordingScheduler",
    "command_record",
    "parse_header",
    "read_log",
    "record_of",
]
