"""The views: what each one prints for known statuses, the piece map, the refresh loops, the cost."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.live import Live

from jstorrent_cli.config import DEFAULT_CONFIG, Config, KiB, MiB
from jstorrent_cli.core.scheduler import IDLE_CHOKED, PeerSnapshot, SchedulerSnapshot
from jstorrent_cli.errors import StorageError
from jstorrent_cli.tasks.session import SessionResult, SessionState, SessionStatus
from jstorrent_cli.tasks.tracker import TrackerStatus
from jstorrent_cli.ui import piecemap
from jstorrent_cli.ui.display import (
    ENDGAME_MARKER,
    GAUGE_FREE,
    GAUGE_IN_FLIGHT,
    GAUGE_TO_DISK,
    JsonDisplay,
    PlainDisplay,
    QuietDisplay,
    ResultLike,
    RichDisplay,
    StatusLike,
    gauge_cells,
    make_display,
    plain_line,
    progress_record,
    render_status,
    result_record,
    summary_lines,
)
from jstorrent_cli.ui.piecemap import IN_FLIGHT, MISSING, UNWANTED, VERIFIED

DEADLINE = 10
ROOT = Path(__file__).resolve().parent.parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
INFO_HASH = bytes.fromhex("1a2b3c4d5e6f708192a3b4c5d6e7f80912a3b4c5")


# --- fakes -----------------------------------------------------------------------------------------


def peer(n: int, **changes: object) -> PeerSnapshot:
    base = PeerSnapshot(
        peer=n, ip=f"127.0.0.{n + 2}", outstanding=4, limit=16,
        rate=float(n * 10 * KiB), peer_choking=False, am_interested=True, peer_interested=False,
        snubbed=False, slow_start=False, request_timeout=4.0, oldest_request_age=1.5, idle_reason=None,
        bytes_received=n * MiB, wasted_bytes=0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def snapshot(**changes: object) -> SchedulerSnapshot:
    base = SchedulerSnapshot(
        peers=(), bytes_in_flight=12 * MiB, bytes_waiting_for_disk=3 * MiB, budget=64 * MiB,
        pieces_missing=590, pieces_partial=7, pieces_fully_requested=2, pieces_awaiting_hash=1,
        pieces_verified=400, pieces_wanted=1000, free_blocks=5000, endgame=False, wasted_bytes=0,
        hash_failures=0, banned_ips=frozenset(), done_bytes=400 * MiB, total_bytes=1000 * MiB,
        finished=False,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def make_status(**changes: object) -> SessionStatus:
    """The session's own status type, with numbers the tests reason about: a 1 GiB torrent, 400 MiB done."""
    base = SessionStatus(
        name="ubuntu.iso", info_hash=INFO_HASH, total_bytes=1024 * MiB, verified_bytes=400 * MiB,
        download_rate=12.3 * MiB, upload_rate=0.0, downloaded_bytes=410 * MiB, uploaded_bytes=0,
        scheduler=snapshot(), piece_states=b"", peer_clients={}, peers_connected=8, trackers=(),
        elapsed=65.0, state=SessionState.DOWNLOADING, listen_port=6881,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def make_result(**changes: object) -> SessionResult:
    """A completed 1 GiB download: 128 s at 8 MiB/s, 12 peers, 3 MiB wasted, 2 hash failures."""
    base = SessionResult(
        status="ok", error=None, exception=None, name="ubuntu.iso", info_hash=INFO_HASH,
        state=SessionState.DONE, total_bytes=1024 * MiB, verified_bytes=1024 * MiB,
        downloaded_bytes=1024 * MiB, uploaded_bytes=5 * MiB, elapsed=130.0, download_time=128.0,
        average_rate=8.0 * MiB, peers_used=12, wasted_bytes=3 * MiB, hash_failures=2,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def failed(error: str) -> SessionResult:
    return make_result(status="error", error=error, exception=StorageError(error), state=SessionState.FAILED,
                      verified_bytes=400 * MiB, downloaded_bytes=410 * MiB, download_time=50.0,
                      average_rate=410 * MiB / 50.0)


def _typed(s: SessionStatus, r: SessionResult) -> tuple[StatusLike, ResultLike]:  # checked by mypy
    return s, r


def render_text(status: StatusLike, *, verbose: bool = False, width: int = 100,
                config: Config = DEFAULT_CONFIG) -> tuple[str, str]:
    """(plain text, raw output with escape codes) as a 100-column terminal shows it."""
    console = Console(file=io.StringIO(), width=width, force_terminal=True)
    console.print(render_status(status, config, console.width, verbose=verbose))
    raw = console.file.getvalue()  # type: ignore[attr-defined]
    return ANSI.sub("", raw), raw


def line_starting(text: str, prefix: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, text
    return lines[0]


# --- piece map --------------------------------------------------------------------------------------


def test_piece_map_known_columns() -> None:
    V, M, I, U = VERIFIED, MISSING, IN_FLIGHT, UNWANTED  # noqa: E741
    states = bytes([V, V,  V, M,  M, I,  M, M,  U, U,  U, V,  V, I])
    assert piecemap.piece_map(states, 7) == "█▄▒· █▒"
    # one character per piece when the terminal is wider than the torrent
    assert piecemap.piece_map(bytes([V, I, M, U]), 80) == "█▒· "
    assert piecemap.piece_map_runs(states, 7) == [("█", 1), ("▄", 1), ("▒", 1), ("·", 1), (" ", 1),
                                                 ("█", 1), ("▒", 1)]


def _reference_column(column: bytes) -> str:
    if IN_FLIGHT in column:
        return piecemap.COLUMN_ACTIVE
    wanted = [s for s in column if s != UNWANTED]
    if not wanted:
        return piecemap.COLUMN_UNWANTED
    if all(s == VERIFIED for s in wanted):
        return piecemap.COLUMN_DONE
    if any(s == VERIFIED for s in wanted):
        return piecemap.COLUMN_SOME
    return piecemap.COLUMN_MISSING


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([MISSING, IN_FLIGHT, VERIFIED, UNWANTED]), min_size=1, max_size=400),
       st.integers(min_value=1, max_value=120))
def test_piece_map_matches_a_per_piece_reference(states_list: list[int], width: int) -> None:
    states = bytes(states_list)
    bounds = piecemap.column_bounds(len(states), width)
    # columns tile the torrent exactly, sizes differ by at most one
    assert bounds[0][0] == 0 and bounds[-1][1] == len(states)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = {end - start for start, end in bounds}
    assert max(sizes) - min(sizes) <= 1
    expected = "".join(_reference_column(states[a:b]) for a, b in bounds)
    assert piecemap.piece_map(states, width) == expected
    assert len(expected) == min(width, len(states))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=300))
def test_build_piece_states_matches_a_per_piece_reference(flags: list[tuple[bool, bool, bool]]) -> None:
    verified = bytes(int(v) for v, _, _ in flags)
    wanted = bytes(int(w) for _, w, _ in flags)
    active = [i for i, (v, w, a) in enumerate(flags) if a and w and not v]
    expected = []
    for v, w, a in flags:
        if v:
            expected.append(VERIFIED)
        elif not w:
            expected.append(UNWANTED)
        elif a:
            expected.append(IN_FLIGHT)
        else:
            expected.append(MISSING)
    states = piecemap.build_piece_states(verified, wanted, active)
    assert list(states) == expected
    counts = piecemap.count_states(states)
    assert sum(counts.values()) == len(flags)


def test_build_piece_states_everything_wanted() -> None:
    verified = bytes([1, 0, 0, 1, 0])
    states = piecemap.build_piece_states(verified, bytes([1]) * 5, [1, 3])  # 3 is verified: stays verified
    assert list(states) == [VERIFIED, IN_FLIGHT, MISSING, VERIFIED, MISSING]
    assert piecemap.build_piece_states(b"", b"", []) == b""


def test_build_piece_states_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        piecemap.build_piece_states(b"\x00\x01", b"\x01", [])


# --- the live view -----------------------------------------------------------------------------------


def test_live_view_numbers() -> None:
    status = make_status(
        scheduler=snapshot(peers=(peer(1), peer(2, peer_choking=True), peer(3, snubbed=True))),
    )
    text, raw = render_text(status)
    assert "ubuntu.iso" in text and "downloading" in text and "1m05s" in text
    bar = line_starting(text, "█")
    assert " 39.1%" in bar  # 400 / 1024
    assert "400.0MiB/1.0GiB" in bar
    assert "↓12.3MiB/s" in bar and "↑0B/s" in bar
    assert "ETA 51s" in bar  # 624 MiB left at 12.3 MiB/s = 50.7 s
    width = DEFAULT_CONFIG.display_bar_width
    filled = int(400 / 1024 * width)
    assert bar.startswith("█" * filled + "░" * (width - filled) + " ")
    assert "8 connected · 2 unchoking us · 1 snubbed" in text
    pieces = line_starting(text, "pieces")
    assert "7 partial · 2 fully requested · 1 awaiting hash · 400/1000 verified" in pieces
    assert ENDGAME_MARKER not in text
    assert "\x1b[" in raw  # styled for a terminal


def test_live_view_buffer_gauge() -> None:
    status = make_status(scheduler=snapshot(bytes_in_flight=16 * MiB, bytes_waiting_for_disk=8 * MiB,
                                           budget=64 * MiB))
    text, _ = render_text(status)
    gauge = line_starting(text, "buffer")
    assert "16.0MiB in flight + 8.0MiB to disk / 64.0MiB (38%)" in gauge
    width = DEFAULT_CONFIG.display_bar_width
    cells = gauge[len("buffer  "):len("buffer  ") + width]
    # 16/64 and 24/64 of the gauge
    a, b, c = gauge_cells(16 * MiB, 8 * MiB, 64 * MiB, width)
    assert (a, b, c) == (round(width / 4), round(width * 3 / 8) - round(width / 4), width - round(width * 3 / 8))
    assert cells == GAUGE_IN_FLIGHT * a + GAUGE_TO_DISK * b + GAUGE_FREE * c


def test_gauge_never_overflows() -> None:
    assert gauge_cells(100, 100, 100, 10) == (10, 0, 0)
    assert gauge_cells(0, 0, 0, 10) == (0, 0, 10)
    assert gauge_cells(0, 50, 100, 10) == (0, 5, 5)


def test_live_view_endgame_marker_and_waste() -> None:
    status = make_status(scheduler=snapshot(endgame=True, wasted_bytes=1536 * KiB, hash_failures=2))
    text, _ = render_text(status)
    header = line_starting(text, "ubuntu.iso")
    assert header.endswith(f"{ENDGAME_MARKER} wasted 1.5MiB  2 hash failures")
    # a long name gives way to the marker on a 100-column terminal
    text, _ = render_text(dataclasses.replace(status, name="x" * 300))
    header = line_starting(text, "xxx")
    assert len(header) <= 100 and "…" in header
    assert header.endswith(f"{ENDGAME_MARKER} wasted 1.5MiB  2 hash failures")
    # no endgame: no marker, but waste still shows
    text, _ = render_text(make_status(scheduler=snapshot(endgame=False, wasted_bytes=2 * MiB)))
    assert ENDGAME_MARKER not in text and "wasted 2.0MiB" in text


def test_live_view_piece_map_line() -> None:
    V, M, I = VERIFIED, MISSING, IN_FLIGHT  # noqa: E741
    # 200 pieces on a 100-column terminal with an 8-column label: 92 columns.
    states = bytes([V] * 100 + [I] * 4 + [M] * 96)
    text, _ = render_text(make_status(piece_states=states))
    line = line_starting(text, "map")
    cells = line[len("map     "):]
    assert cells == piecemap.piece_map(states, 92)
    assert cells.startswith("█" * 45) and "▒" in cells and cells.endswith("·" * 40)
    # without per-piece states (while checking, say) there is no map line
    text, _ = render_text(make_status())
    assert not any(line.startswith("map") for line in text.splitlines())


def test_live_view_tracker_line() -> None:
    trackers = (TrackerStatus(peers_received=57, seeders=3, leechers=9),
                TrackerStatus(last_error="connection refused"))
    text, _ = render_text(make_status(trackers=trackers))
    lines = [line for line in text.splitlines() if line.startswith("tracker")]
    assert lines == ["tracker ok, 57 peers received (3 seeders, 9 leechers)", "tracker error: connection refused"]


@dataclasses.dataclass(frozen=True)
class Detail:
    port: int
    incoming: bool
    am_choking: bool


@dataclasses.dataclass(frozen=True)
class StatusWithDetails:
    """A SessionStatus plus the optional `peer_details` the views read when present."""

    base: SessionStatus
    peer_details: dict[int, Detail]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


def test_verbose_peer_table() -> None:
    peers = (
        peer(1, rate=100.0 * KiB),
        peer(2, rate=2.0 * MiB, outstanding=64, limit=64, slow_start=True),
        peer(3, rate=0.0, outstanding=0, peer_choking=True, idle_reason=IDLE_CHOKED, oldest_request_age=None,
             peer_interested=True),
        peer(4, snubbed=True, outstanding=1, limit=1, rate=0.0),
    )
    status = make_status(scheduler=snapshot(peers=peers), peer_clients={2: "libtorrent/2.0.9"})
    text, _ = render_text(status, verbose=True)
    rows = [line for line in text.splitlines() if line.startswith("127.0.0.")]
    assert [row.split()[0] for row in rows] == ["127.0.0.4", "127.0.0.3", "127.0.0.5", "127.0.0.6"]  # fastest first
    fast = rows[0]
    assert "libtorrent/2.0.9" in fast and " I....W. " in fast and "64/64" in fast and "2.0MiB/s" in fast
    assert "oldest request 1.5s of 4.0s" in fast
    choked = rows[2]
    assert " ICi.... " in choked and "0/16" in choked and IDLE_CHOKED in choked
    assert " I...S.. " in rows[3] and "1/1" in rows[3]
    assert "flags: I=we-interested" in text
    # with the session's per-connection details: ports, our choking, who connected
    detailed = StatusWithDetails(status, {2: Detail(6883, incoming=True, am_choking=False),
                                          3: Detail(51413, incoming=False, am_choking=True)})
    text, _ = render_text(detailed, verbose=True)  # type: ignore[arg-type]
    rows = [line for line in text.splitlines() if line.startswith("127.0.0.")]
    assert [row.split()[0] for row in rows] == ["127.0.0.4:6883", "127.0.0.3", "127.0.0.5:51413", "127.0.0.6"]
    assert " I....Wr " in rows[0] and " ICic... " in rows[2]
    # not verbose: no table
    plain, _ = render_text(status)
    assert not any(line.startswith("127.0.0.") for line in plain.splitlines())


def test_verbose_table_is_capped() -> None:
    peers = tuple(peer(i) for i in range(10))
    config = dataclasses.replace(DEFAULT_CONFIG, peer_table_rows=3)
    text, _ = render_text(make_status(scheduler=snapshot(peers=peers)), verbose=True, config=config)
    rows = [line for line in text.splitlines() if line.startswith("127.0.0.")]
    assert len(rows) == 3
    assert "... 7 more peers" in text


def test_progress_is_complete_for_an_empty_download_and_eta_unknown_without_rate() -> None:
    text, _ = render_text(make_status(total_bytes=0, verified_bytes=0, download_rate=0.0))
    assert "100.0%" in text
    text, _ = render_text(make_status(download_rate=0.0))
    assert "ETA -" in text


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_a_bad_rate_or_time_never_makes_a_view_raise(bad: float) -> None:
    status = make_status(download_rate=bad, upload_rate=bad, elapsed=bad,
                         scheduler=snapshot(peers=(peer(1, rate=bad, oldest_request_age=bad),)))
    text, _ = render_text(status, verbose=True)
    assert "ETA -" in text and "↓0B/s" in text
    assert "DL:0B/s" in plain_line(status)
    record = json.loads(json.dumps(progress_record(status), allow_nan=False))
    assert record["download_rate"] == 0 and record["eta"] is None
    result = make_result(average_rate=bad, download_time=bad, elapsed=bad)
    assert "average 0B/s" in summary_lines(result)[1]
    assert json.loads(json.dumps(result_record(result), allow_nan=False))["average_rate"] == 0


# --- plain lines -------------------------------------------------------------------------------------


def test_plain_line_exact() -> None:
    status = make_status(total_bytes=1024 * MiB, verified_bytes=400 * MiB, download_rate=12.3 * MiB,
                        upload_rate=0.0, peers_connected=8,
                        scheduler=snapshot(bytes_in_flight=10 * MiB, bytes_waiting_for_disk=2 * MiB))
    assert plain_line(status) == (
        "[#1a2b3c 400.0MiB/1.0GiB(39%) CN:8 DL:12.3MiB/s UL:0B/s ETA:51s BUF:12.0MiB/64.0MiB]"
    )


def test_plain_line_shape_without_rate() -> None:
    line = plain_line(make_status(download_rate=0.0, upload_rate=2048.0))
    assert re.fullmatch(
        r"\[#[0-9a-f]{6} \S+/\S+\(\d+%\) CN:\d+ DL:\S+ UL:\S+ BUF:\S+/\S+\]", line
    ), line
    assert "UL:2.0KiB/s" in line and "ETA" not in line


def test_percent_is_floored_never_100_before_done() -> None:
    line = plain_line(make_status(total_bytes=1000, verified_bytes=999))
    assert "(99%)" in line


# --- summaries ------------------------------------------------------------------------------------


def test_summary_lines() -> None:
    head, stats = summary_lines(make_result())
    assert head == "Download complete: ubuntu.iso"
    assert stats == ("size 1.0GiB · time 2m08s · average 8.0MiB/s · 12 peers used · "
                     "wasted 3.0MiB · 2 hash failures")
    _, stats = summary_lines(make_result(peers_used=1, hash_failures=1))
    assert "1 peer used" in stats and stats.endswith("1 hash failure")
    head, stats = summary_lines(failed("disk full"))
    assert head == "Download failed: ubuntu.iso"  # the command line prints the error itself
    assert stats.startswith("got 400.0MiB of 1.0GiB · time 50s · average 8.2MiB/s ·")
    head, _ = summary_lines(make_result(status="interrupted", error="interrupted"))
    assert head == "Download interrupted: ubuntu.iso"


def test_rich_and_plain_finish_print_the_summary() -> None:
    console = Console(file=io.StringIO(), width=100, force_terminal=True)
    RichDisplay(DEFAULT_CONFIG, console=console).finish(make_result())
    out = ANSI.sub("", console.file.getvalue())  # type: ignore[attr-defined]
    assert "Download complete: ubuntu.iso" in out and "average 8.0MiB/s" in out
    buf = io.StringIO()
    PlainDisplay(DEFAULT_CONFIG, file=buf).finish(make_result())
    assert buf.getvalue().splitlines() == summary_lines(make_result())


def test_quiet_prints_only_errors() -> None:
    buf = io.StringIO()
    QuietDisplay(file=buf).finish(make_result())
    QuietDisplay(file=buf).finish(make_result(status="interrupted", error="interrupted"))
    assert buf.getvalue() == ""
    QuietDisplay(file=buf).finish(failed("disk full"))
    assert buf.getvalue() == "jstorrent: disk full\n"


# --- JSON lines ----------------------------------------------------------------------------------------

PROGRESS_FIELDS = {
    "event", "schema", "info_hash", "name", "state", "elapsed", "total_bytes", "verified_bytes",
    "downloaded_bytes", "uploaded_bytes", "progress",
    "download_rate", "upload_rate", "eta", "peers_connected", "peers_unchoking", "peers_snubbed",
    "bytes_in_flight", "bytes_waiting_for_disk", "buffer_budget", "pieces_partial", "pieces_fully_requested",
    "pieces_awaiting_hash", "pieces_verified", "pieces_wanted", "endgame", "wasted_bytes", "hash_failures",
}
RESULT_FIELDS = {
    "event", "schema", "info_hash", "name", "status", "ok", "error", "total_bytes", "verified_bytes",
    "downloaded_bytes", "uploaded_bytes", "elapsed", "download_time", "average_rate", "peers_used",
    "wasted_bytes", "hash_failures",
}


def test_progress_record_fields_and_values() -> None:
    status = make_status(scheduler=snapshot(peers=(peer(1), peer(2, peer_choking=True, snubbed=True)),
                                           endgame=True, wasted_bytes=5))
    record = json.loads(json.dumps(progress_record(status)))
    assert set(record) == PROGRESS_FIELDS
    assert record["event"] == "progress" and record["schema"] == 1
    assert record["info_hash"] == INFO_HASH.hex()
    assert record["verified_bytes"] == 400 * MiB and record["total_bytes"] == 1024 * MiB
    assert (record["downloaded_bytes"], record["uploaded_bytes"]) == (410 * MiB, 0)
    assert record["state"] == "downloading"
    assert record["progress"] == 0.390625  # 400 / 1024, exact
    assert record["eta"] == 50.7  # 624 MiB at 12.3 MiB/s, to a tenth of a second
    assert record["download_rate"] == round(12.3 * MiB) and record["upload_rate"] == 0
    assert (record["peers_connected"], record["peers_unchoking"], record["peers_snubbed"]) == (8, 1, 1)
    assert (record["bytes_in_flight"], record["bytes_waiting_for_disk"], record["buffer_budget"]) == (
        12 * MiB, 3 * MiB, 64 * MiB)
    assert record["endgame"] is True and record["wasted_bytes"] == 5
    assert json.loads(json.dumps(progress_record(make_status(download_rate=0.0))))["eta"] is None


def test_result_record_fields_and_values() -> None:
    record = json.loads(json.dumps(result_record(make_result())))
    assert set(record) == RESULT_FIELDS
    assert record["status"] == "ok" and record["ok"] is True and record["error"] is None
    assert record["info_hash"] == INFO_HASH.hex()
    assert (record["elapsed"], record["download_time"], record["average_rate"]) == (130.0, 128.0, 8 * MiB)
    assert (record["peers_used"], record["wasted_bytes"], record["hash_failures"]) == (12, 3 * MiB, 2)
    bad = json.loads(json.dumps(result_record(failed("disk full"))))
    assert bad["status"] == "error" and bad["ok"] is False and bad["error"] == "disk full"
    assert bad["verified_bytes"] == 400 * MiB
    stopped = json.loads(json.dumps(result_record(make_result(status="interrupted", error="interrupted"))))
    assert stopped["status"] == "interrupted" and stopped["ok"] is False


def test_json_fields_are_documented() -> None:
    doc = (ROOT / "docs" / "json.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", doc, re.MULTILINE))
    assert documented >= PROGRESS_FIELDS | RESULT_FIELDS
    # every example in the document parses and has exactly the fields of its kind
    examples = [json.loads(line) for line in re.findall(r"^(\{.*\})$", doc, re.MULTILINE)]
    kinds = {e["event"]: set(e) for e in examples}
    assert kinds == {"progress": PROGRESS_FIELDS, "result": RESULT_FIELDS}


# --- choosing a view ---------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_make_display_choices() -> None:
    out, err, tty = io.StringIO(), io.StringIO(), FakeTerminal()
    assert isinstance(make_display(DEFAULT_CONFIG, stdout=out, stderr=err), PlainDisplay)
    rich_view = make_display(DEFAULT_CONFIG, stdout=out, stderr=tty)
    assert isinstance(rich_view, RichDisplay) and rich_view.console.file is tty
    assert isinstance(make_display(DEFAULT_CONFIG, quiet=True, stdout=out, stderr=tty), QuietDisplay)
    assert isinstance(make_display(DEFAULT_CONFIG, json_output=True, quiet=True, stdout=out, stderr=tty),
                      JsonDisplay)


def test_rich_display_defaults_to_stderr() -> None:
    import sys

    assert RichDisplay(DEFAULT_CONFIG).console.file is sys.stderr


# --- the refresh loops under Trio ----------------------------------------------------------------------


def counting_poll(statuses: Callable[[int], SessionStatus]) -> tuple[Callable[[], SessionStatus], list[int]]:
    calls: list[int] = []

    def poll() -> SessionStatus:
        calls.append(len(calls))
        return statuses(len(calls) - 1)

    return poll, calls


async def test_live_loop_refreshes_at_the_configured_rate(autojump_clock: trio.testing.MockClock) -> None:
    console = Console(file=io.StringIO(), width=100, force_terminal=True)
    display = RichDisplay(DEFAULT_CONFIG, console=console)
    poll, calls = counting_poll(lambda i: make_status(verified_bytes=(i + 1) * MiB))
    period = 1.0 / DEFAULT_CONFIG.refresh_hz
    with trio.fail_after(2.0 + DEADLINE):  # virtual seconds under autojump_clock
        with trio.move_on_after(2.0 + period / 2):  # 2 s and a half period of virtual time
            await display.run(poll)
    expected = int(2 * DEFAULT_CONFIG.refresh_hz) + 1  # t = 0, 0.25, ..., 2.0
    assert display.refreshes == expected
    assert len(calls) == expected + 1  # and one more poll on cancellation, for the final frame
    out = ANSI.sub("", console.file.getvalue())  # type: ignore[attr-defined]
    # every refresh drew a frame, plus the final frame Live leaves on screen when it stops
    assert out.count("ubuntu.iso") == expected + 1
    # frames show successive polls; the one left on screen is the poll made at cancellation
    shown = re.findall(r"(\d+)\.0MiB/1\.0GiB", out)
    assert [int(x) for x in shown] == [*range(1, expected + 2)]


async def test_live_loop_keeps_the_old_frame_when_the_final_poll_fails(
        autojump_clock: trio.testing.MockClock) -> None:
    console = Console(file=io.StringIO(), width=100, force_terminal=True)
    display = RichDisplay(DEFAULT_CONFIG, console=console)
    calls: list[None] = []

    def poll() -> SessionStatus:
        if trio.current_effective_deadline() <= trio.current_time():  # being cancelled: session torn down
            raise RuntimeError("status read after shutdown")
        calls.append(None)
        return make_status(verified_bytes=len(calls) * MiB)

    with trio.fail_after(1.0 + DEADLINE):  # virtual seconds under autojump_clock
        with trio.move_on_after(1.0 + 0.1):
            await display.run(poll)  # the cancellation, not the RuntimeError, ends it
    out = ANSI.sub("", console.file.getvalue())  # type: ignore[attr-defined]
    assert re.findall(r"(\d+)\.0MiB/1\.0GiB", out)[-1] == str(len(calls))


async def test_plain_loop_writes_one_line_per_interval(autojump_clock: trio.testing.MockClock) -> None:
    buf = io.StringIO()
    display = PlainDisplay(DEFAULT_CONFIG, file=buf)
    poll, calls = counting_poll(lambda i: make_status(peers_connected=i))
    interval = DEFAULT_CONFIG.plain_interval
    with trio.fail_after(3 * interval + DEADLINE):  # virtual seconds under autojump_clock
        with trio.move_on_after(3 * interval + interval / 2):
            await display.run(poll)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3 == len(calls) == display.lines
    assert [re.search(r"CN:(\d+)", line).group(1) for line in lines] == ["0", "1", "2"]  # type: ignore[union-attr]


async def test_json_loop_writes_records_at_the_interval(autojump_clock: trio.testing.MockClock) -> None:
    buf = io.StringIO()
    display = JsonDisplay(DEFAULT_CONFIG, file=buf)
    poll, _ = counting_poll(lambda i: make_status(elapsed=float(i)))
    interval = DEFAULT_CONFIG.json_interval
    with trio.fail_after(3 * interval + DEADLINE):  # virtual seconds under autojump_clock
        start = trio.current_time()
        with trio.move_on_after(3 * interval + interval / 2):
            await display.run(poll)
        assert trio.current_time() - start == pytest.approx(3.5 * interval)
    display.finish(make_result())
    records = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["progress"] * 4 + ["result"]
    assert [r["elapsed"] for r in records[:4]] == [0.0, 1.0, 2.0, 3.0]


async def test_quiet_loop_prints_nothing(autojump_clock: trio.testing.MockClock) -> None:
    buf = io.StringIO()
    poll, calls = counting_poll(lambda i: make_status())
    with trio.fail_after(100.0 + DEADLINE):  # virtual seconds under autojump_clock
        with trio.move_on_after(100.0):
            await QuietDisplay(file=buf).run(poll)
    assert buf.getvalue() == "" and calls == []


# --- cost ----------------------------------------------------------------------------------------------


def test_render_cost_verbose_50_peers_80000_pieces() -> None:
    """Prints the cost of one refresh (render + draw); the figure goes in the report, not an assertion."""
    n = 80_000
    verified = bytes([1]) * (n // 2) + bytes(n - n // 2)
    wanted = bytes([1]) * n
    active = range(n // 2, n // 2 + 64)
    peers = tuple(peer(i % 250, peer=i, ip=f"10.0.{i // 250}.{i % 250}",
                       idle_reason=IDLE_CHOKED if i % 5 == 0 else None) for i in range(50))
    status = make_status(scheduler=snapshot(peers=peers, endgame=True, wasted_bytes=MiB),
                        peer_clients={p.peer: "qBittorrent/4.6.2" for p in peers})
    console = Console(file=io.StringIO(), width=120, force_terminal=True)
    config = DEFAULT_CONFIG
    rounds = 50

    t0 = time.perf_counter()
    for _ in range(rounds):
        states = piecemap.build_piece_states(verified, wanted, active)
    t_states = (time.perf_counter() - t0) / rounds
    status = dataclasses.replace(status, piece_states=states)

    t0 = time.perf_counter()
    for _ in range(rounds):
        text = render_status(status, config, console.width, verbose=True)
    t_build = (time.perf_counter() - t0) / rounds

    def draw(verbose: bool) -> float:
        t0 = time.perf_counter()
        with Live(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as live:
            for _ in range(rounds):  # what RichDisplay.run does per refresh
                live.update(render_status(status, config, console.width, verbose=verbose), refresh=True)
        return (time.perf_counter() - t0) / rounds

    t_draw = draw(True)
    t_short = draw(False)
    per_second = t_draw * config.refresh_hz
    print(f"\nrender cost, 50 peers verbose, {n} pieces, width 120: build_piece_states {t_states * 1e3:.2f} ms, "
          f"build Text {t_build * 1e3:.2f} ms, build+draw {t_draw * 1e3:.2f} ms per refresh "
          f"= {per_second * 100:.1f} % of a core at {config.refresh_hz:g} Hz; without -v {t_short * 1e3:.2f} ms "
          f"= {t_short * config.refresh_hz * 100:.1f} %")
    assert len(text.plain.splitlines()) > 50  # the table really was rendered
