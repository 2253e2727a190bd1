"""`get --log-json FILE` and `jstorrent replay FILE`: a real download recorded, replayed without divergence;
a log with one command changed diverges (exit 1, one line); garbage or a truncated log is one line, exit 28."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from pathlib import Path

import pytest
import trio

from jstorrent_cli.config import DEFAULT_CONFIG, KiB
from jstorrent_cli.core import messages as m
from jstorrent_cli.core.recorder import LOG_NAME, LogError, LogHeader, RecordingScheduler, read_log
from jstorrent_cli.core.replay import Replay
from jstorrent_cli.errors import ExitStatus
from jstorrent_cli.replay import run_replay
from jstorrent_cli.tasks import session
from tests.conftest import assert_payload, build_torrent, random_files, write_payload

DEADLINE = 30


async def jstorrent(*args: str) -> tuple[int, str, str]:
    done = await trio.run_process([sys.executable, "-m", "jstorrent_cli", *args], capture_stdout=True,
                                  capture_stderr=True, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real download (a jstorrent seeder on 127.0.0.2, `jstorrent get --log-json` on 127.0.0.3), logged."""
    tmp_path = tmp_path_factory.mktemp("recorded")
    files = random_files(91, [900 * KiB + 5, 300 * KiB])
    name = "logged"
    data, torrent = build_torrent(name, files, 32 * KiB)
    (tmp_path / "t.torrent").write_bytes(data)
    write_payload(tmp_path / "seed", name, files)
    log = tmp_path / "run.log"

    async def main() -> tuple[int, str, str]:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(functools.partial(
                    session.run, DEFAULT_CONFIG, torrent, tmp_path / "seed", listen_host="127.0.0.2", port=0,
                    seed_time=math.inf))
                done = await jstorrent("get", str(tmp_path / "t.torrent"), "-d", str(tmp_path / "out"),
                                       "--peer", f"127.0.0.2:{port}", "--listen", "127.0.0.3", "--port", "0",
                                       "--max-buffer", "256K", "-q", "--log-json", str(log))
                nursery.cancel_scope.cancel()
        return done

    status, _, err = trio.run(main)
    assert status == 0, err
    assert_payload(tmp_path / "out", name, files)
    return log


def test_the_log_has_a_header_facts_and_commands_and_no_block_data(recorded: Path) -> None:
    lines = recorded.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["log"] == LOG_NAME and header["num_pieces"] == 38 and header["piece_length"] == 32 * KiB
    assert header["config"]["max_unflushed_bytes"] == 256 * KiB  # --max-buffer reached the log
    records = [json.loads(line) for line in lines[1:]]
    facts = [r for r in records if "fact" in r]
    received = [r for r in facts if r["fact"] == "BlocksReceived"]
    # Every block arrived once, named by (piece, begin, length): the lengths add up to the payload.
    assert sum(length for r in received for _, _, length in r["blocks"]) >= 1200 * KiB + 5
    assert sum(1 for r in facts if r["fact"] == "PieceHashed" and r["ok"]) == 38
    assert any(r.get("cmd") == "Finished" for r in records)
    times = [r["t"] for r in records]
    assert times == sorted(times)  # the monotonic clock
    assert max(len(line) for line in lines[1:]) < 4096  # no block data anywhere


async def test_replaying_a_real_download_issues_the_same_commands(recorded: Path) -> None:
    with trio.fail_after(DEADLINE):
        status, out, err = await jstorrent("replay", str(recorded))
    assert status == 0, err
    assert "the scheduler issued the same" in out.splitlines()[-1]
    assert "every wanted piece verified" in out  # the timeline shows the finish
    with trio.fail_after(DEADLINE):
        status, out, err = await jstorrent("replay", "--json", str(recorded))
    assert status == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    seconds = [r for r in records if r["event"] == "second"]
    assert sum(s["received"] for s in seconds) == 1200 * KiB // (16 * KiB) + 1  # every block, counted once
    assert sum(s["verified"] for s in seconds) == 38
    assert records[-1]["event"] == "replay" and records[-1]["divergence"] is None


def test_the_replay_does_not_take_a_full_snapshot_per_fact(recorded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot counts the started pieces (O(pieces)): taken after every fact it made the replay of a 1 GiB,
    16 KiB-piece log (78,731 facts) take 84 s, 3 x the download it replays. The per-second timeline reads the
    scheduler's counters; only a stall report takes a snapshot."""
    from jstorrent_cli.core.scheduler import Scheduler

    calls = 0
    real = Scheduler.snapshot

    def counting(self: Scheduler) -> object:
        nonlocal calls
        calls += 1
        return real(self)

    monkeypatch.setattr(Scheduler, "snapshot", counting)
    header, entries = read_log(recorded.read_text().splitlines(keepends=True))
    replay = Replay(header)
    assert all(replay.feed(entry) for entry in entries)
    stalls = sum(1 for e in replay.events if e.kind == "stall")
    assert replay.facts > 50 and calls <= stalls, (calls, replay.facts)
    # ...and the timeline still counts every block and piece, and sees the finish.
    assert sum(s.received for s in replay.seconds) == 1200 * KiB // (16 * KiB) + 1
    assert sum(s.verified for s in replay.seconds) == 38
    assert [e.kind for e in replay.events if e.kind == "finished"] == ["finished"]
    assert all(s.bytes_in_flight == 0 and s.bytes_waiting_for_disk == 0 and not s.outstanding
               for s in replay.seconds[-1:])


async def test_one_changed_command_is_reported_as_the_first_divergence(recorded: Path, tmp_path: Path) -> None:
    lines = recorded.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if '"cmd":"SendRequests"' in line)
    record = json.loads(lines[index])
    record["requests"][0][0] += 1  # the first request named another piece
    lines[index] = json.dumps(record) + "\n"
    bad = tmp_path / "bad.log"
    bad.write_text("".join(lines))
    with trio.fail_after(DEADLINE):
        status, _, err = await jstorrent("replay", str(bad))
    assert status == 1
    [line] = err.splitlines()
    assert f"line {index + 1}:" in line and "SendRequests" in line and "diverged" in line


@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage\n", b'{"log": "jstorrent-scheduler", "version": 1}\n',
                                     "cut line in the middle", "huge block"])
async def test_garbage_or_truncated_logs_are_one_line_and_status_28(
        recorded: Path, tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "x.log"
    if content == "huge block":  # a block of 1 TiB would be allocated by a trusting reader
        lines = recorded.read_text().splitlines(keepends=True)
        index = next(i for i, line in enumerate(lines) if '"fact":"BlocksReceived"' in line)
        record = json.loads(lines[index])
        record["blocks"][0][2] = 1 << 40
        path.write_text("".join(lines[:index]) + json.dumps(record) + "\n" + "".join(lines[index + 1:]))
    elif content == "cut line in the middle":  # a line cut short *followed by more lines* is damage, not an end
        lines = recorded.read_text().splitlines(keepends=True)
        middle = len(lines) // 2
        path.write_text("".join(lines[:middle]) + lines[middle][: len(lines[middle]) // 2] + "\n"
                        + "".join(lines[middle + 1:]))
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    with trio.fail_after(DEADLINE):
        status, _, err = await jstorrent("replay", str(path))
    assert status == int(ExitStatus.BAD_OPTION) == 28, err
    [line] = err.splitlines()
    assert str(path) in line and "line " in line


@pytest.mark.parametrize("where", ["inside a line", "after a fact's first command"])
async def test_a_log_cut_short_by_a_killed_run_replays_up_to_the_cut(recorded: Path, tmp_path: Path,
                                                                     where: str) -> None:
    """kill -9 (or a crash, a full disk) leaves the log's end half written: its last line cut, or the last fact
    without all its commands. That was exit 28 ("not a readable log") or exit 1 (a false "diverged" on the
    commands the log never got): the replay goes up to the cut, says where the log ends, and exits 0."""
    data = recorded.read_bytes()
    lines = data.decode().splitlines(keepends=True)
    path = tmp_path / "killed.log"
    if where == "inside a line":
        cut = len(data) // 2
        path.write_bytes(data[: cut - 1 if data[cut - 1] == ord("\n") else cut])  # never at a line's end
        cut_line = data[:cut].count(b"\n") + 1
    else:  # a fact with at least two commands, cut after the first of them: a clean line end
        index = next(i for i in range(len(lines) // 2, len(lines) - 2)
                     if '"fact"' in lines[i] and '"cmd"' in lines[i + 1] and '"cmd"' in lines[i + 2])
        path.write_text("".join(lines[: index + 2]))
        cut_line = index + 3
    with trio.fail_after(DEADLINE):
        status, out, err = await jstorrent("replay", str(path))
    assert status == 0, err
    [note] = err.splitlines()
    assert str(path) in note and f"line {cut_line}" in note and "ends" in note
    assert "facts replayed" in out.splitlines()[-1]
    with trio.fail_after(DEADLINE):
        status, out, err = await jstorrent("replay", "--json", str(path))
    summary = json.loads(out.splitlines()[-1])
    assert status == 0 and summary["divergence"] is None and summary["cut_at_line"] == cut_line
    assert 0 < summary["facts"] < sum(1 for line in lines if '"fact"' in line)
    # A complete log says it was not cut.
    with trio.fail_after(DEADLINE):
        status, out, _ = await jstorrent("replay", "--json", str(recorded))
    assert status == 0 and json.loads(out.splitlines()[-1])["cut_at_line"] is None


async def test_a_missing_log_is_status_3(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        status, _, err = await jstorrent("replay", str(tmp_path / "none.log"))
    assert status == int(ExitStatus.NOT_FOUND) and len(err.splitlines()) == 1


def test_a_recorded_stall_is_classified_in_the_replay(tmp_path: Path) -> None:
    """A peer that takes requests and never answers: the replay's timeline has the stall and its cause."""
    lines: list[str] = []
    header = LogHeader(DEFAULT_CONFIG, 4, 32 * KiB, 128 * KiB, wanted=None, have=None, sequential=False, seed=5)
    s = RecordingScheduler(header, lines.append)
    s.handle(m.PeerJoined(0, "127.0.0.2", have_all=True), 0.0)
    s.handle(m.Unchoked(0), 0.0)
    t = 0.0
    while t < DEFAULT_CONFIG.stall_report_after + 1:
        t += DEFAULT_CONFIG.tick_interval
        s.handle(m.Tick(), t)
    header2, entries = read_log(lines)
    replay = Replay(header2)
    assert all(replay.feed(e) for e in entries)
    [stall] = [e for e in replay.events if e.kind == "stall"]
    assert stall.stall is not None and stall.at >= DEFAULT_CONFIG.stall_report_after
    assert "127.0.0.2 (#0)" in stall.text  # the replay names peers as the log introduced them
    assert replay.seconds[0].requested == DEFAULT_CONFIG.peer_limit_initial
    assert replay.seconds[0].outstanding == {"127.0.0.2 (#0)": DEFAULT_CONFIG.peer_limit_initial}
    # The text timeline: quiet seconds as one line per run, the stall with its cause.
    log = tmp_path / "stall.log"
    log.write_text("".join(lines))
    out: list[str] = []
    assert run_replay(str(log), as_json=False, echo=out.append) == 0
    assert "  1-9s  nothing moved, nothing changed" in out  # the first timeout comes at 10 s
    assert any(line.lstrip().startswith(f"{stall.at:.3f}s  stall: no block for") for line in out)
    assert len(out) < 40  # not one line per second of a 31 s log


def test_every_fact_kind_reads_back_as_it_was_recorded() -> None:
    facts: list[m.Fact] = [
        m.PeerJoined(0, "127.0.0.2", bitfield=b"\xf0", reqq=250, fast=True),
        m.PeerJoined(1, "127.0.0.4", have_all=True),
        m.Have(0, 5), m.Unchoked(0), m.Choked(1), m.PeerInterested(0), m.PeerNotInterested(0), m.AllowedFast(1, 2),
        m.RequestRejected(0, 1, 16 * KiB, 16 * KiB), m.BlocksWritten(((0, 0, 16 * KiB),)),
        m.PieceHashed(3, False, (b"\x01" * 20, b"\x02" * 20)), m.PieceHashed(2, True), m.Tick(), m.PeerGone(1),
        # three digests (a failed 3-block piece) look like one (int, int, bytes) block unless told apart
        m.PieceHashed(4, False, (b"\x03" * 20, b"\x04" * 20, b"\x05" * 20)),
        m.BlocksReceived(0, ((0, 0, b"x" * (16 * KiB)), (0, 16 * KiB, b"y" * (16 * KiB)))),
    ]
    lines: list[str] = []
    header = LogHeader(DEFAULT_CONFIG, 8, 32 * KiB, 8 * 32 * KiB - 7, wanted=(True,) * 7 + (False,),
                       have=(False,) * 8, sequential=True, seed=9, name="n")
    s = RecordingScheduler(header, lines.append)
    for i, fact in enumerate(facts):
        s.handle(fact, 0.5 * i)
    assert "xxxx" not in "".join(lines)  # blocks' data are not in the log
    read_header, entries = read_log(lines)
    assert read_header == header
    back = list(entries)
    # Data comes back as zeros of the recorded length: all the scheduler looks at.
    expected = [dataclasses.replace(f, blocks=tuple((p, b, bytes(len(d))) for p, b, d in f.blocks))
                if isinstance(f, m.BlocksReceived) else f for f in facts]
    assert [e.fact for e in back] == expected
    assert [e.now for e in back] == [0.5 * i for i in range(len(facts))]


def test_the_fast_lines_are_the_generic_json() -> None:
    from jstorrent_cli.core.recorder import _dumps, _line, record_of

    data = b"z" * (16 * KiB)
    items: list[tuple[str, object]] = [
        ("fact", m.BlocksReceived(3, ((1, 0, data), (1, 16 * KiB, memoryview(data))))), ("fact", m.Tick()),
        ("fact", m.BlocksWritten(((1, 0, 16 * KiB),))), ("cmd", m.WriteBlocks(((2, 16 * KiB, bytearray(data)),))),
        ("cmd", m.SendRequests((7, 8), ((4, 0, 16 * KiB), (4, 16 * KiB, 100)))), ("cmd", m.SendCancels(0, ())),
        ("cmd", m.HashPiece(5)), ("cmd", m.HashPiece(5, True)), ("fact", m.PieceHashed(5, True)),
        ("fact", m.PieceHashed(5, False, (b"\x01" * 20,))), ("cmd", m.SendHave(9)), ("cmd", m.SendHave(9, 2)),
    ]
    for kind, item in items:
        assert json.loads(_line(kind, item, 12.25)) == json.loads(_dumps(record_of(kind, item, 12.25)))


async def test_a_log_that_cannot_be_created_fails_the_download_in_one_line(tmp_path: Path) -> None:
    _, torrent = build_torrent("x", random_files(93, [64 * KiB]), 16 * KiB)
    with trio.fail_after(DEADLINE):
        result = await session.run(DEFAULT_CONFIG, torrent, tmp_path / "out", listen_host="127.0.0.3", port=0,
                                   log_json=tmp_path / "no" / "such" / "dir.log")
    assert result.status == "error" and result.exit_status == int(ExitStatus.FILE_OPEN)
    assert result.error is not None and "--log-json" in result.error and "\n" not in result.error


@pytest.mark.parametrize(("bad", "join_first"), [
    ('{"t":1.0,"fact":"Have","peer":0,"piece":"five"}', True),  # a field of the wrong type
    ('{"t":1.0,"fact":"PeerJoined","peer":0,"ip":"127.0.0.2","have_all":true}', True),  # the same peer joins twice
    ('{"t":1.0,"fact":"Sneezed","peer":0}', True),  # not a fact
    ('{"t":1.0,"cmd":"SendHave","piece":0,"peer":null}', False),  # a command before any fact
])
def test_a_hand_edited_log_is_a_log_error_naming_the_line(bad: str, join_first: bool) -> None:
    lines: list[str] = []
    header = LogHeader(DEFAULT_CONFIG, 4, 32 * KiB, 128 * KiB, wanted=None, have=None, sequential=False, seed=5)
    s = RecordingScheduler(header, lines.append)
    if join_first:
        s.handle(m.PeerJoined(0, "127.0.0.2", have_all=True), 0.0)
    lines.append(bad + "\n")
    read_header, entries = read_log(lines)
    replay = Replay(read_header)
    with pytest.raises(LogError, match=f"line {len(lines)}:"):
        for entry in entries:
            replay.feed(entry)
