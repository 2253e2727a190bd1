"""Profile `jstorrent get` on the swarm benchmark's scenario 1 (not a test): where does the time go?

Builds scenario 1 of bench_swarm.py (one libtorrent seeder on loopback, found through opentracker, a
single file with 1 MiB pieces), runs one `jstorrent get --quiet` under py-spy (sampling every thread of
the process, idle time left out) and prints the hot spots: per function, the share of samples spent in
it (self) and under it (total), and the share of the trio thread against the worker threads. The output
is checked against the payload like every benchmark run.

py-spy is not a project dependency: `.venv/bin/pip install py-spy` (or pyinstrument for --tool
pyinstrument, which only sees the trio thread).

Run: .venv/bin/python tests/perf/profile_get.py [--size 1G] [--rate 250] [--top 25] [--out DIR] [--gil]
     [--tool py-spy|pyinstrument] [--scenario N]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_swarm as bench

from jstorrent_cli.config import MiB
from tests.conftest import free_port
from tests.interop.opentracker_fixture import require_opentracker, running_opentracker

VENV_BIN = bench.ROOT / ".venv" / "bin"
# py-spy writes frames as "function (file:line)"; the line is dropped to add up a function's samples.
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
# The leaf of an idle trio worker thread: its loop waiting for the next job.
_IDLE_LEAF = "_thread_cache.py:WorkerThread._work"


def short(frame: str) -> str:
    """`func (path/to/pkg/mod.py:12)` -> `pkg/mod.py:func`."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    parts = path.split("/")
    where = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{where}:{match.group('func')}"


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) format: `frame;frame;...;leaf count` per line, root first."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        head, _, count = line.rpartition(" ")
        if head and count.isdigit():
            stacks.append((head.split(";"), int(count)))
    return stacks


def thread_kind(frames: list[str]) -> str:
    """Which thread a py-spy stack (recorded with --threads) belongs to."""
    if not any(f.startswith("Thread._bootstrap (") for f in frames):
        return "trio thread"  # the main thread: start-up, then trio.run
    if frames and short(frames[-1]).endswith(_IDLE_LEAF):
        return "idle"
    return "worker threads"


def table(counts: collections.Counter[str], total: int, top: int, what: str) -> list[str]:
    lines = ["", f"| {what} | function |", "|---|---|"]
    return lines + [f"| {n / total:.1%} | `{name}` |" for name, n in counts.most_common(top)]


def report(stacks: Iterable[tuple[list[str], int]], top: int) -> str:
    """Hot spots over busy samples: idle worker threads (waiting for a job) are left out; py-spy's own idle
    filter does not see them, they wait on a lock with a timeout."""
    self_count: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total_count: collections.Counter[str] = collections.Counter()
    main_total: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        kind = thread_kind(frames)
        threads[kind] += count
        if kind == "idle":
            continue
        names = [short(f) for f in frames if not f.startswith(("thread (", "process "))]
        if not names:
            continue
        self_count["all"][names[-1]] += count
        self_count[kind][names[-1]] += count
        for name in set(names):
            total_count[name] += count
            if kind == "trio thread":
                main_total[name] += count
    busy = threads["trio thread"] + threads["worker threads"]
    if not busy:
        return "no samples\n"
    lines = [f"{busy} busy samples ({threads['idle']} more of worker threads waiting for a job left out)", ""]
    lines += [f"- {kind}: {threads[kind] / busy:.1%}" for kind in ("trio thread", "worker threads")]
    lines += table(self_count["all"], busy, top, "self % of busy")
    lines += table(total_count, busy, top, "total % of busy")
    for kind in ("trio thread", "worker threads"):
        if threads[kind]:
            lines += table(self_count[kind], threads[kind], top, f"self % of the {kind}")
    if threads["trio thread"]:
        lines += table(main_total, threads["trio thread"], top * 2, "total % of the trio thread")
    return "\n".join(lines) + "\n"


def timeline(trace: Path, log: Path) -> str:
    """Seconds from exec to each connect / fsync / exit (strace -ttt lines), and the session's own times."""
    lines = []
    start: float | None = None
    for line in trace.read_text(errors="replace").splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or "resumed" in parts[2] or "+++" in parts[2]:
            continue
        try:
            stamp = float(parts[1])
        except ValueError:
            continue
        if start is None:
            start = stamp
        call = parts[2]
        if call.startswith("connect(") and "AF_UNIX" in call:
            continue
        lines.append(f"{stamp - start:7.3f} s  {call[:110]}")
    for record in log.read_text(errors="replace").splitlines():
        if '"event": "result"' in record:
            result = json.loads(record)
            lines.append(f"session: elapsed {result['elapsed']:.3f} s, download_time {result['download_time']:.3f} s")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scenario", type=int, default=1, choices=range(1, 7))
    parser.add_argument("--size", default="1G")
    parser.add_argument("--small-size", default="256M")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--gil", action="store_true", help="py-spy --gil: only the thread holding the GIL")
    parser.add_argument("--tool", choices=("py-spy", "pyinstrument", "strace", "timeline"), default="py-spy",
                        help="strace: count system calls of every thread instead (strace -f -c); timeline: "
                             "when the process connects, fsyncs and exits (strace -f -ttt), against its "
                             "download_time")
    parser.add_argument("--out", default=None, help="folder for the profile files (default: a new one in tmp)")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    require_opentracker()
    scenario = bench.scenarios(bench.parse_size(args.size), bench.parse_size(args.small_size))[args.scenario]
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="jstorrent-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="profile-get-") as tmp_name:
        tmp = Path(tmp_name)
        payload = bench.make_payload(scenario, tmp, None)
        with running_opentracker(tmp / "tracker", [payload.info_hash], bench.TRACKER_HOST) as tracker:
            torrent = bench.with_tracker(payload.torrent, tracker.http_url)
            payload.torrent_path.write_bytes(torrent)
            with bench.running_seeders(payload, scenario.seeder_limits, tracker.http_url):
                download = tmp / "download"
                download.mkdir()
                get = [str(VENV_BIN / "jstorrent"), "get", "--quiet", "-d", str(download), "--listen",
                       bench.CLIENT_HOSTS["jstorrent"], "--port", str(free_port(bench.CLIENT_HOSTS["jstorrent"])),
                       *scenario.jstorrent_args, str(payload.torrent_path)]
                if args.tool == "py-spy":
                    profile = out / "py-spy.raw"
                    command = [str(VENV_BIN / "py-spy"), "record", "--format", "raw", "--rate", str(args.rate),
                               "--threads", "-o", str(profile), *(["--gil"] if args.gil else []), "--", *get]
                elif args.tool == "strace":
                    profile = out / "strace.txt"
                    command = ["strace", "-f", "-c", "-o", str(profile), "--", *get]
                elif args.tool == "timeline":
                    profile = out / "timeline.txt"
                    get[get.index("--quiet")] = "--json"
                    command = ["strace", "-f", "-ttt", "-e", "trace=execve,connect,fsync,exit_group", "-o",
                               str(profile), "--", *get]
                else:
                    profile = out / "pyinstrument.txt"
                    command = [str(VENV_BIN / "python"), "-m", "pyinstrument", "-r", "text", "-o", str(profile),
                               "-m", "jstorrent_cli", *get[1:]]
                code, wall, usage, _ = bench.run_child(command, out / "profiler.log", args.timeout)
                problem = bench.verify(payload, download) if code == 0 else f"exit {code}"
                shutil.rmtree(download, ignore_errors=True)
    cpu = usage.ru_utime + usage.ru_stime
    print(f"scenario {scenario.number}, {scenario.total / MiB:.0f} MiB under {args.tool}: {wall:.2f} s "
          f"({scenario.total / wall / bench.MB:.1f} MB/s, slowed by the profiler), CPU {cpu:.2f} s; "
          f"output {'verified' if not problem else 'WRONG: ' + problem}")
    if args.tool == "py-spy":
        text = report(read_raw(profile), args.top)
        (out / "hotspots.md").write_text(text)
        print(text)
    elif args.tool == "timeline":
        print(timeline(profile, out / "profiler.log"))
    else:
        print(profile.read_text())
    print(f"profile files in {out}")
    return 0 if not problem else 1


if __name__ == "__main__":
    sys.exit(main())
