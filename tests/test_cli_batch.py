"""`jstorrent get` with several torrents, through the real entry point: statuses, the results table, the
JSON result records, the exit status of the last failure, and byte-exact outputs."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import trio

from jstorrent_cli.cli import read_torrent_file
from jstorrent_cli.config import DEFAULT_CONFIG, KiB
from jstorrent_cli.core.batchlist import BatchItem
from jstorrent_cli.tasks.batch import BatchOptions, run_batch
from tests.conftest import FileSpec, assert_payload, build_torrent, random_files, reaped, write_payload
from tests.tasks.test_batch import Recorder

DEADLINE = 90
SEEDER = "127.0.0.2"
LEECHER = "127.0.0.3"


def _torrents(tmp_path: Path) -> dict[str, tuple[str, list[FileSpec]]]:
    """good0/good1 (seeded), lonely (nobody has it, dead tracker), broken.torrent (not bencode)."""
    made: dict[str, tuple[str, list[FileSpec]]] = {}
    for n, key in enumerate(("good0", "good1", "lonely")):
        files = random_files(200 + n, [250 * KiB + 3, 40 * KiB])
        name = f"payload-{key}"
        # Nobody seeds `lonely`, and its tracker is dead (nothing listens there).
        trackers = ["http://127.0.0.9:9/announce"] if key == "lonely" else []
        data, _ = build_torrent(name, files, 32 * KiB, trackers=trackers)
        (tmp_path / f"{key}.torrent").write_bytes(data)
        if key != "lonely":
            write_payload(tmp_path / "seed", name, files)
        made[key] = (name, files)
    (tmp_path / "broken.torrent").write_bytes(b"this is not bencode")
    return made


async def _get(tmp_path: Path, args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    sources = [str(tmp_path / "good0.torrent"), str(tmp_path / "good1.torrent")]
    options = BatchOptions(out_dir=str(tmp_path / "seed"), listen_host=SEEDER, port=0, seed_time=math.inf)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(run_batch, DEFAULT_CONFIG, [BatchItem(s, 0) for s in sources], options,
                                   Recorder(), read_torrent_file)
        done = await trio.run_process(
            [sys.executable, "-m", "jstorrent_cli", "get", *args, "--peer", f"{SEEDER}:{port}", "--listen", LEECHER,
             "--port", "0", "--stall-timeout", "2", "--stall-report-after", "1"],
            stdin=stdin, capture_stdout=True, capture_stderr=True, check=False)
        nursery.cancel_scope.cancel()
    return done


async def test_json_records_statuses_and_the_last_failure_as_exit_status(tmp_path: Path) -> None:
    made = _torrents(tmp_path)
    listing = (f"# two good ones, a broken one, a missing one and one nobody seeds\n"
               f"{tmp_path / 'good0.torrent'}\n"
               f"{tmp_path / 'broken.torrent'}\n"
               f"{tmp_path / 'good1.torrent'}\n"
               f"  dir={tmp_path / 'elsewhere'}\n"
               f"{tmp_path / 'missing.torrent'}\n"
               f"\n{tmp_path / 'lonely.torrent'}\n")
    (tmp_path / "list.txt").write_text(listing)
    with trio.fail_after(DEADLINE):
        done = await _get(tmp_path, ["-i", str(tmp_path / "list.txt"), "-d", str(tmp_path / "out"), "--json"])
    assert done.returncode == 2, done.stderr  # the last failed item (#5) ended on --stall-timeout
    records = [json.loads(line) for line in done.stdout.decode().splitlines()]
    results = [r for r in records if r["event"] == "result"]
    assert [(r["id"], r["status"], r["exit_status"]) for r in results] == [
        (1, "ok", 0), (2, "error", 25), (3, "ok", 0), (4, "error", 3), (5, "error", 2)]
    assert all(r["id"] in (1, 3, 5) for r in records if r["event"] == "progress")
    assert {r["id"] for r in records if r["event"] == "progress"} >= {5}
    assert [r["id"] for r in records if r["event"] == "stall"] == [5]  # --stall-report-after 1, then the timeout
    good0, broken, good1, missing, lonely = results
    assert good0["path"] == str(tmp_path / "out" / made["good0"][0]) and good0["bytes"] >= good0["total_bytes"] > 0
    assert good1["path"] == str(tmp_path / "elsewhere" / made["good1"][0])
    assert good0["info_hash"] == read_torrent_file(str(tmp_path / "good0.torrent")).info_hash_hex
    assert good0["duplicate_of"] is None and good0["error"] is None and good0["average_rate"] > 0
    assert broken["path"] == str(tmp_path / "broken.torrent") and broken["name"] is None and broken["error"]
    assert "no such file" in missing["error"] and "--stall-timeout" in lonely["error"]
    assert lonely["name"] == made["lonely"][0] and lonely["bytes"] == 0
    assert_payload(tmp_path / "out", *made["good0"])
    assert_payload(tmp_path / "elsewhere", *made["good1"])
    assert not (tmp_path / "out" / made["good1"][0]).exists()


async def test_results_table_from_stdin_with_a_duplicate(tmp_path: Path) -> None:
    made = _torrents(tmp_path)
    listing = "\n".join([str(tmp_path / "lonely.torrent"), str(tmp_path / "good0.torrent"),
                         str(tmp_path / "missing.torrent"), str(tmp_path / "good0.torrent"),
                         str(tmp_path / "good1.torrent")]) + "\n"
    with trio.fail_after(DEADLINE):
        done = await _get(tmp_path, ["-i", "-", "-d", str(tmp_path / "out"), "-j", "2"], stdin=listing.encode())
    assert done.returncode == 3, done.stderr  # #3, the missing file, is the last item that failed
    out = done.stdout.decode().splitlines()
    start = out.index("Download Results:")
    assert out[start + 1] == "gid   |stat|avg speed  |path/URI"
    assert out[start + 2] == "======+====+===========+" + "=" * 55
    rows = [line.split("|") for line in out[start + 3 : start + 8]]
    assert [(r[0].strip(), r[1]) for r in rows] == [("1", "ERR "), ("2", "OK  "), ("3", "ERR "), ("4", "DUP "),
                                                     ("5", "OK  ")]
    assert rows[0][3] == str(tmp_path / "out" / made["lonely"][0])  # it started: its output path
    assert rows[1][3] == str(tmp_path / "out" / made["good0"][0])
    assert rows[2][3] == str(tmp_path / "missing.torrent")  # never started: its source
    assert rows[1][2].strip().endswith("/s") and rows[1][2].strip() != "0B/s"
    assert "Status Legend:" in out
    assert "(OK):download completed.(ERR):error occurred.(DUP):duplicate of an earlier item (downloaded once)." in out
    assert any(line.startswith("#4 ") and "duplicates #2" in line for line in out)
    err = done.stderr.decode()
    assert "Traceback" not in err and "#3 ERR" in err and "no such file" in err
    assert_payload(tmp_path / "out", *made["good0"])
    assert_payload(tmp_path / "out", *made["good1"])


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jstorrent_cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def test_a_bad_list_is_one_line_naming_the_line_and_exit_28(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("a.torrent\n  dir=/x\n  split=5\n")
    result = _run("get", "-i", "list.txt", cwd=tmp_path)
    assert result.returncode == 28
    assert result.stderr.strip().splitlines() == ["jstorrent: list.txt line 3: unknown option 'split' (known: dir)"]
    result = _run("get", cwd=tmp_path)
    assert result.returncode == 28 and len(result.stderr.strip().splitlines()) == 1
    result = _run("get", "-i", "nope.txt", cwd=tmp_path)
    assert result.returncode == 3 and "nope.txt: no such file" in result.stderr
    result = _run("get", "a.torrent", "b.torrent", "--select-file", "1", cwd=tmp_path)
    assert result.returncode == 28 and "--select-file" in result.stderr
    result = _run("get", "a.torrent", "b.torrent", "--log-json", "log.jsonl", cwd=tmp_path)
    assert result.returncode == 28 and "--log-json" in result.stderr and not (tmp_path / "log.jsonl").exists()


def test_a_results_table_that_cannot_be_written_keeps_the_batchs_exit_status(tmp_path: Path) -> None:
    """stdout full (or its reader gone): the table is lost, not the exit status of the last failed item (3 here;
    it was 1, 'internal error: OSError')."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "jstorrent_cli", "get", "nope1.torrent", "nope2.torrent"],
                                cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    assert result.returncode == 3, result.stderr
    assert "internal error" not in result.stderr and "#2 ERR nope2.torrent: no such file" in result.stderr


def test_one_torrent_whose_display_cannot_write_still_downloads_and_exits_0(tmp_path: Path) -> None:
    """`get` with one torrent has the same rule: its --json records to a full stdout (or the plain view to a
    stderr whose reader left) ended a complete download as 'internal error: ExceptionGroup', exit 1."""
    files = random_files(400, [100 * KiB])
    data, _ = build_torrent("whole", files, 32 * KiB)
    (tmp_path / "t.torrent").write_bytes(data)
    write_payload(tmp_path / "dl", "whole", files)  # already complete: no peer needed
    args = [sys.executable, "-m", "jstorrent_cli", "get", "t.torrent", "-d", "dl", "--listen", LEECHER, "--port", "0"]
    with open("/dev/full", "w") as full:
        as_json = subprocess.run([*args, "--json"], cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True,
                                 timeout=60, check=False)
        plain = subprocess.run(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=full, text=True, timeout=60,
                               check=False)
    assert as_json.returncode == 0, as_json.stderr
    assert plain.returncode == 0
    assert_payload(tmp_path / "dl", "whole", files)


def test_a_list_with_no_downloads_says_so_and_exits_0_as_aria2c(tmp_path: Path) -> None:
    """aria2c -i on an empty list prints "No files to download." and exits 0; we printed an empty results table."""
    (tmp_path / "empty.txt").write_text("# nothing today\r\n\r\n")
    result = _run("get", "-i", "empty.txt", "-d", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr.strip().splitlines() == ["jstorrent: empty.txt: no downloads"]
    assert not (tmp_path / "out").exists()
    quiet = _run("get", "-i", "empty.txt", "-q", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stdout == quiet.stderr == ""
    as_json = _run("get", "-i", "empty.txt", "--json", cwd=tmp_path)
    assert as_json.returncode == 0 and as_json.stdout == "" and "no downloads" in as_json.stderr


async def test_ctrl_c_stops_every_item_reports_them_interrupted_and_exits_130(tmp_path: Path) -> None:
    for n in range(3):
        data, _ = build_torrent(f"never{n}", random_files(30 + n, [100 * KiB]), 16 * KiB)
        (tmp_path / f"t{n}.torrent").write_bytes(data)
    with trio.fail_after(DEADLINE):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "jstorrent_cli", "get", *(str(tmp_path / f"t{n}.torrent") for n in range(3)),
             "-j", "2", "-d", str(tmp_path / "out"), "--peer", "127.0.0.9:9", "--listen", LEECHER, "--port", "0",
             "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        async with reaped(process):
            assert process.stdout is not None
            out = b""
            while b"\n" not in out:  # the first progress record: the items are running
                out += await process.stdout.receive_some()
            process.send_signal(signal.SIGINT)
            sent = trio.current_time()
            while chunk := await process.stdout.receive_some():
                out += chunk
            status = await process.wait()
            assert trio.current_time() - sent < DEFAULT_CONFIG.interrupt_grace + 1
    assert status == 130
    results = [r for r in map(json.loads, out.decode().splitlines()) if r["event"] == "result"]
    assert [(r["id"], r["status"], r["exit_status"]) for r in results] == [
        (1, "interrupted", 130), (2, "interrupted", 130), (3, "interrupted", 130)]
    assert results[2]["error"] == "interrupted before it started" and results[2]["path"] == str(tmp_path / "t2.torrent")
    assert results[0]["path"] == str(tmp_path / "out" / "never0")


async def test_ctrl_c_while_an_item_seeds_reports_it_complete(tmp_path: Path) -> None:
    """Ctrl-C on a batch whose first item is downloaded and seeding (--seed-time) and whose second is not: the
    first is OK in the results (it was `INPR`, "download in-progress", so a script downloaded it again), the
    second interrupted, and the batch exits 130."""
    files = random_files(41, [100 * KiB])
    data, _ = build_torrent("complete", files, 16 * KiB)
    (tmp_path / "done.torrent").write_bytes(data)
    write_payload(tmp_path / "out", "complete", files)
    data, _ = build_torrent("lonely", random_files(42, [100 * KiB]), 16 * KiB)
    (tmp_path / "lonely.torrent").write_bytes(data)
    with trio.fail_after(DEADLINE):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "jstorrent_cli", "get", str(tmp_path / "done.torrent"),
             str(tmp_path / "lonely.torrent"), "-d", str(tmp_path / "out"), "--seed-time", "10",
             "--peer", "127.0.0.9:9", "--listen", LEECHER, "--port", "0", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        async with reaped(process):
            assert process.stdout is not None
            out = b""
            while b'"seeding"' not in out:  # the first item finished and seeds; the second runs
                out += await process.stdout.receive_some()
            process.send_signal(signal.SIGINT)
            while chunk := await process.stdout.receive_some():
                out += chunk
            status = await process.wait()
    assert status == 130
    results = [r for r in map(json.loads, out.decode().splitlines()) if r["event"] == "result"]
    assert [(r["id"], r["status"], r["exit_status"], r["ok"]) for r in results] == [
        (1, "ok", 0, True), (2, "interrupted", 130, False)]
    assert results[0]["verified_bytes"] == results[0]["total_bytes"] == 100 * KiB and results[0]["error"] is None


def test_relative_paths_in_a_list_are_taken_from_the_current_folder(tmp_path: Path) -> None:
    """As docs/usage.md says (and aria2c does): `dir=rel` is ./rel, not -d's rel, nor the list's folder's."""
    files = random_files(43, [50 * KiB])
    data, _ = build_torrent("here", files, 16 * KiB)
    (tmp_path / "t.torrent").write_bytes(data)
    write_payload(tmp_path / "rel", "here", files)  # complete already: no peer needed
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "list.txt").write_text("t.torrent\n  dir=rel\n")
    result = _run("get", "-i", "lists/list.txt", "-d", "out", "--json", "--listen", LEECHER, "--port", "0",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [record] = [r for r in map(json.loads, result.stdout.splitlines()) if r["event"] == "result"]
    assert record["status"] == "ok" and record["path"] == str(tmp_path / "rel" / "here")
    assert not (tmp_path / "out").exists() and not (tmp_path / "lists" / "rel").exists()
