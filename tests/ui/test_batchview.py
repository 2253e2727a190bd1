"""The batch views (ui/batchview.py): a few lines however long the list, the results table, the records."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import trio
import trio.testing
from rich.console import Console

from jstorrent_cli.config import DEFAULT_CONFIG, MiB
from jstorrent_cli.core.batchlist import STATUS_DUPLICATE, STATUS_ERROR, STATUS_OK, ItemResult
from jstorrent_cli.ui.batchview import (
    PHASE_ACTIVE,
    PHASE_DONE,
    PHASE_FAILED,
    PHASE_INTERRUPTED,
    PHASE_WAITING,
    BatchJsonDisplay,
    BatchPlainDisplay,
    BatchQuietDisplay,
    BatchRichDisplay,
    BatchStatus,
    ItemView,
    busiest,
    make_batch_display,
    result_record,
    results_table,
    totals_line,
)
from tests.ui.test_display import make_status


def batch_status(active: int) -> BatchStatus:
    """12 items: 3 done, `active` running (item k at k MiB/s), 1 failed, the rest waiting."""
    items = [ItemView(n, f"{n}.torrent", PHASE_DONE, None) for n in (1, 2, 3)]
    items.append(ItemView(4, "4.torrent", PHASE_FAILED, None))
    for n in range(5, 5 + active):
        items.append(ItemView(n, f"{n}.torrent", PHASE_ACTIVE,
                              make_status(name=f"item{n}", download_rate=float(n * MiB), upload_rate=float(MiB))))
    for n in range(5 + active, 13):
        items.append(ItemView(n, f"{n}.torrent", PHASE_WAITING, None))
    return BatchStatus(items=tuple(items), buffer_used=16 * MiB, buffer_total=64 * MiB, peers_connected=9,
                       max_peers=50, elapsed=3.0)


def test_totals_then_the_busiest_items_then_the_rest_counted() -> None:
    status = batch_status(active=7)
    line = totals_line(status)
    assert line.startswith("12 items: 3 done · 7 active · 1 waiting · 1 failed")
    total_rate = sum(range(5, 12))
    assert f"↓{total_rate}.0MiB/s ↑7.0MiB/s" in line
    assert "buffer 16.0MiB/64.0MiB (25%)" in line and "peers 9/50" in line
    shown, more = busiest(status, 5)
    assert [i.id for i in shown] == [11, 10, 9, 8, 7] and more == 2
    display = BatchRichDisplay(DEFAULT_CONFIG, console=Console(file=io.StringIO(), width=200), out=io.StringIO())
    lines = display.render(status).plain.splitlines()
    assert len(lines) == 2 + DEFAULT_CONFIG.batch_view_rows + 1  # a few lines, whatever the list's length
    assert lines[1].startswith("buffer 16.0MiB/64.0MiB") and lines[2].startswith("#11 item11") and lines[-1] == "(+2)"


def test_an_item_line_carries_its_note_a_stall_or_the_check() -> None:
    """The live view showed a stalled item as "↓0B/s ETA - downloading" and nothing else (the plain view's line
    has the note): its line ends with the session's note, the stall's cause or the start-up check's progress."""
    stalled = "stalled 31s: No peer is connected and there is no tracker to ask"
    checking = "checking existing data: 1.0GiB of 4.0GiB"
    items = (ItemView(1, "1.torrent", PHASE_ACTIVE, make_status(name="one", download_rate=0.0, note=stalled)),
             ItemView(2, "2.torrent", PHASE_ACTIVE, make_status(name="two", download_rate=0.0, note=checking)),
             ItemView(3, "3.torrent", PHASE_ACTIVE, make_status(name="three", download_rate=float(MiB))))
    status = BatchStatus(items=items, buffer_used=0, buffer_total=64 * MiB, peers_connected=0, max_peers=50,
                         elapsed=31.0)
    display = BatchRichDisplay(DEFAULT_CONFIG, console=Console(file=io.StringIO(), width=300), out=io.StringIO())
    lines = display.render(status).plain.splitlines()
    by_name = {line.split()[1]: line for line in lines[2:]}
    assert by_name["one"].endswith(f"downloading  {stalled}")
    assert by_name["two"].endswith(f"downloading  {checking}")
    assert by_name["three"].endswith("downloading")
    # The plain view (a pipe) gives an item the same note after its aria2c-style status line.
    from jstorrent_cli.ui.display import plain_line

    assert plain_line(items[0].status).endswith(f"] {stalled}")  # type: ignore[arg-type]
    assert plain_line(items[2].status).endswith("]")  # type: ignore[arg-type]


def test_interrupted_items_are_counted_as_interrupted_not_failed() -> None:
    """After Ctrl-C the totals said "0 active · 2 failed" for downloads that had only been stopped."""
    items = (ItemView(1, "1.torrent", PHASE_DONE, None), ItemView(2, "2.torrent", PHASE_FAILED, None),
             ItemView(3, "3.torrent", PHASE_INTERRUPTED, None), ItemView(4, "4.torrent", PHASE_INTERRUPTED, None))
    status = BatchStatus(items=items, buffer_used=0, buffer_total=64 * MiB, peers_connected=0, max_peers=50,
                         elapsed=9.0)
    assert totals_line(status).startswith("4 items: 1 done · 0 active · 0 waiting · 1 failed · 2 interrupted  ")
    assert "interrupted" not in totals_line(batch_status(active=2))  # only when there are some


def _result(n: int, status: str, **kw: object) -> ItemResult:
    fields: dict[str, object] = dict(
        id=n, source=f"/t/{n}.torrent", status=status, exit_status=0, error=None, name=f"name{n}",
        info_hash=bytes([n]) * 20, path=f"/out/name{n}", average_rate=2.5 * MiB, bytes=MiB, total_bytes=MiB,
        verified_bytes=MiB, duplicate_of=None)
    fields.update(kw)
    return ItemResult(**fields)  # type: ignore[arg-type]


RESULTS = [
    _result(1, STATUS_OK),
    _result(2, STATUS_ERROR, exit_status=25, error="/t/2.torrent: not bencode", name=None, info_hash=None,
            path="/t/2.torrent", average_rate=0.0, bytes=0),
    _result(3, STATUS_DUPLICATE, duplicate_of=1, path="/out/name1", average_rate=0.0, bytes=0),
]


def test_results_table_is_aria2s() -> None:
    # As `aria2c -i list` prints it (aria2 1.37), so scripts that grep `|OK  |` or `|ERR |` keep working.
    assert results_table(RESULTS) == [
        "",
        "Download Results:",
        "gid   |stat|avg speed  |path/URI",
        "======+====+===========+" + "=" * 55,  # aria2c's rule and its left-aligned status words
        "1     |OK  |   2.5MiB/s|/out/name1",
        "2     |ERR |       0B/s|/t/2.torrent",
        "3     |DUP |       0B/s|/out/name1",
        "",
        "Status Legend:",
        "(OK):download completed.(ERR):error occurred.(DUP):duplicate of an earlier item (downloaded once).",
        "#3 (/t/3.torrent) duplicates #1: same info hash, downloaded once",
    ]


async def test_plain_json_and_quiet_views() -> None:
    err, out = io.StringIO(), io.StringIO()
    plain = BatchPlainDisplay(DEFAULT_CONFIG, file=err, out=out)
    for r in RESULTS:
        plain.item_done(r)
    plain.finish(RESULTS)
    assert err.getvalue().splitlines() == [
        "#1 OK name1: 1.0MiB at 2.5MiB/s",
        "#2 ERR /t/2.torrent: not bencode",
        "#3 DUP /t/3.torrent: same info hash as #1, downloaded once",
    ]
    assert out.getvalue().splitlines() == results_table(RESULTS)

    records = io.StringIO()
    view = BatchJsonDisplay(DEFAULT_CONFIG, file=records)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(view.run, lambda: batch_status(active=2))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    view.finish(RESULTS)
    lines = [json.loads(line) for line in records.getvalue().splitlines()]
    assert [(r["event"], r["id"]) for r in lines] == [("progress", 5), ("progress", 6), ("result", 1),
                                                      ("result", 2), ("result", 3)]
    assert lines[3]["exit_status"] == 25 and lines[3]["info_hash"] is None and lines[4]["duplicate_of"] == 1
    assert lines[2]["info_hash"] == "01" * 20 and lines[2]["ok"] and not lines[3]["ok"]

    quiet_err = io.StringIO()
    quiet = BatchQuietDisplay(file=quiet_err)
    for r in RESULTS:
        quiet.item_done(r)
    quiet.finish(RESULTS)
    assert quiet_err.getvalue() == "jstorrent: #2 /t/2.torrent: not bencode\n"
    assert isinstance(make_batch_display(DEFAULT_CONFIG, stdout=io.StringIO(), stderr=io.StringIO()),
                      BatchPlainDisplay)


class GoneReader(io.StringIO):
    """A pipe whose reader went away (`jstorrent get ... 2>&1 | head -2`): every write fails."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")


async def test_a_reader_that_went_away_does_not_end_the_batch(autojump_clock: trio.testing.MockClock) -> None:
    """The plain view's status lines to a closed pipe raised inside the batch's nursery: every item was cancelled
    and the batch ended as an internal error (exit 1). Each view stops writing to a reader that left; the
    downloads go on and the exit status stays theirs."""
    readers = [GoneReader() for _ in range(4)]
    plain = BatchPlainDisplay(DEFAULT_CONFIG, file=readers[0], out=readers[1])
    json_view = BatchJsonDisplay(DEFAULT_CONFIG, file=readers[2])
    quiet = BatchQuietDisplay(file=readers[3])
    with trio.fail_after(DEFAULT_CONFIG.plain_interval * 10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(plain.run, lambda: batch_status(active=2))
            nursery.start_soon(json_view.run, lambda: batch_status(active=2))
            await trio.sleep(DEFAULT_CONFIG.plain_interval * 3)  # three rounds of status lines, all refused
            nursery.cancel_scope.cancel()
    for view in (plain, json_view, quiet):
        for r in RESULTS:
            view.item_done(r)
        view.finish(RESULTS)
    # Each view tried once and then left that reader alone (a closed pipe is not retried a line at a time).
    assert [r.writes for r in readers] == [1, 1, 1, 1]


def test_batch_result_fields_are_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent.parent / "docs" / "json.md").read_text()
    section = doc[doc.index("## Several torrents"):]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))
    fields = set(result_record(RESULTS[0]))
    assert documented == fields
    block = section[section.index("```json\n") + len("```json\n"):]
    block = block[: block.index("```")]
    decoder, examples, at = json.JSONDecoder(), [], 0
    while block[at:].strip():
        at += len(block[at:]) - len(block[at:].lstrip())
        value, at = decoder.raw_decode(block, at)
        examples.append(value)
    assert len(examples) == 2 and all(set(e) == fields for e in examples)
