"""Loopback swarm benchmark (not a test): jstorrent against aria2c and a libtorrent client, same swarm, same run.

One process builds a payload in a temporary folder on the real disk, starts opentracker on 127.0.0.1 and
libtorrent seeders (each on its own 127.0.0.x address, optionally upload-limited), then downloads the same
torrent with every client, `--runs` times each, interleaved (js, aria2c, lt, js, aria2c, lt, ...). Every
client is a child process: its wall time is measured from spawn to exit, its CPU time comes from os.wait4
(its own rusage, not ours, not the seeders'), its peak RSS from its own VmHWM. Every output is compared
file by file (SHA-1) with the payload, then deleted.
A client that passes its deadline is killed and counted as a failure.

Run: .venv/bin/python tests/perf/bench_swarm.py [--scenario N ...] [--size 1G] [--runs 3]
     [--clients jstorrent,aria2c,libtorrent] [--timeout S] [--tmp DIR] [--markdown FILE]

Sizes are binary (1G = 1 GiB); rates in the table are MB/s = 10**6 bytes per second.
The same file also holds the small libtorrent download client (`--lt-client`) and the disk hog used in
scenario 6 (`--disk-hog`); the benchmark runs them as children of itself.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jstorrent_cli.config import KiB, MiB  # noqa: E402
from jstorrent_cli.core import bencode  # noqa: E402
from tests.conftest import free_port, stop_process  # noqa: E402
from tests.interop.opentracker_fixture import require_opentracker, running_opentracker  # noqa: E402
from tests.interop.test_aria2_download import ARIA_HOST, aria2c_command  # noqa: E402

GiB = 1024 * MiB
MB = 1_000_000
JSTORRENT = ROOT / ".venv" / "bin" / "jstorrent"
PYTHON = ROOT / ".venv" / "bin" / "python"
TRACKER_HOST = "127.0.0.1"
# Clients and seeders each on their own loopback address (aria2c's comes from the interop helper).
CLIENT_HOSTS = {"jstorrent": "127.0.0.3", "aria2c": ARIA_HOST, "libtorrent": "127.0.0.7", "jstorrent-alt": "127.0.0.8"}
# --alt-jstorrent: a second jstorrent command (another checkout, a patched build) run as client "jstorrent-alt",
# to put a change's before/after figures side by side in one run.
ALT_JSTORRENT: list[str] = []
SEEDER_HOSTS = [f"127.0.0.{10 + i}" for i in range(8)]
# How often the benchmark looks at a child or at the seeders; sleeps in between (never spins).
POLL = 0.05
# Segment size for writing and hashing payload files.
SEGMENT = 4 * MiB
# How long the seeders may take to check the payload and announce before the benchmark gives up.
SEED_READY_DEADLINE = 600.0
# A run is "quiet" when other processes used less than this share of the machine's CPUs meanwhile.
QUIET_SHARE = 0.1
# The endgame tail is measured from this fraction verified (jstorrent's --json progress, one record a second).
TAIL_FROM = 0.99


# ---------------------------------------------------------------- scenarios

@dataclasses.dataclass(frozen=True)
class Scenario:
    number: int
    title: str
    piece_length: int
    sizes: tuple[int, ...]  # file sizes; one entry and single=True makes a single-file torrent
    single: bool
    seeder_limits: tuple[int, ...]  # upload limit per seeder in bytes/s, 0 = none
    jstorrent_args: tuple[str, ...] = ()
    disk_hog: bool = False
    note: str = ""

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def ideal_seconds(self) -> float | None:
        """Transfer time if every seeder sent at its limit (None when some seeder is unlimited)."""
        if not self.seeder_limits or 0 in self.seeder_limits:
            return None
        return self.total / sum(self.seeder_limits)


def multi_file_sizes(total: int, small: int, rng: random.Random) -> tuple[int, ...]:
    """`small` files of 1 B-64 KiB (a few empty ones) plus three large files sharing the rest."""
    smalls = [0 if i % 500 == 0 else rng.randint(1, 64 * KiB) for i in range(small)]
    rest = max(total - sum(smalls), 3)
    large = [rest // 2, rest // 3, rest - rest // 2 - rest // 3]
    # Interleave: the large files sit between runs of small ones, so pieces straddle many boundaries.
    return tuple(smalls[:700] + large[:1] + smalls[700:1400] + large[1:2] + smalls[1400:] + large[2:])


def scenarios(size: int, small_size: int) -> dict[int, Scenario]:
    rng = random.Random(5)
    return {
        1: Scenario(1, "one seeder, single file, 1 MiB pieces", MiB, (size,), True, (0,)),
        2: Scenario(2, "one seeder, single file, 16 KiB pieces", 16 * KiB, (small_size,), True, (0,),
                    note=f"{small_size // MiB} MiB, not the full size: 16 KiB pieces mean one piece per block"),
        3: Scenario(3, "eight seeders limited to 8 MB/s each (ideal 64 MB/s)", MiB, (size,), True,
                    (8 * MB,) * 8),
        4: Scenario(4, "seven fast seeders and one at 50 KB/s (endgame tail)", MiB, (size,), True,
                    (0,) * 7 + (50_000,)),
        5: Scenario(5, "2,000 small files (0-64 KiB) and three large ones, 256 KiB pieces", 256 * KiB,
                    multi_file_sizes(size, 2000, rng), False, (0,)),
        6: Scenario(6, "one seeder, jstorrent with --max-buffer 2M, a disk hog fsyncing beside it", MiB,
                    (size,), True, (0,), jstorrent_args=("--max-buffer", "2M"), disk_hog=True,
                    note="the slow writer is a competing process writing+fsyncing 8 MiB blocks to the same disk"),
    }


# ---------------------------------------------------------------- payload and torrent

@dataclasses.dataclass(frozen=True)
class Payload:
    name: str
    single: bool
    files: tuple[tuple[tuple[str, ...], int, bytes], ...]  # (path parts, size, sha1 of content)
    torrent: bytes
    info_hash: bytes
    torrent_path: Path
    seed_dir: Path

    def file_path(self, root: Path, parts: tuple[str, ...]) -> Path:
        return root / self.name if self.single else root.joinpath(self.name, *parts)


def make_payload(scenario: Scenario, tmp: Path, tracker_url: str | None) -> Payload:
    """Write random files into tmp/seed and build the .torrent, hashing pieces as the bytes go by."""
    name = "payload.bin" if scenario.single else "payload"
    seed_dir = tmp / "seed"
    piece_hashes: list[bytes] = []
    piece = hashlib.sha1()
    in_piece = 0
    files: list[tuple[tuple[str, ...], int, bytes]] = []
    for index, size in enumerate(scenario.sizes):
        parts = (name,) if scenario.single else (f"dir{index % 7}", f"file{index:04d}.bin")
        path = seed_dir / name if scenario.single else seed_dir.joinpath(name, *parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        whole = hashlib.sha1()
        with path.open("wb") as out:
            left = size
            while left:
                data = os.urandom(min(SEGMENT, left))
                left -= len(data)
                out.write(data)
                whole.update(data)
                view = memoryview(data)
                while view:
                    take = min(len(view), scenario.piece_length - in_piece)
                    piece.update(view[:take])
                    in_piece += take
                    view = view[take:]
                    if in_piece == scenario.piece_length:
                        piece_hashes.append(piece.digest())
                        piece, in_piece = hashlib.sha1(), 0
        files.append((parts, size, whole.digest()))
    if in_piece:
        piece_hashes.append(piece.digest())
    info: dict[bytes, bencode.Value] = {
        b"name": name.encode(), b"piece length": scenario.piece_length, b"pieces": b"".join(piece_hashes)}
    if scenario.single:
        info[b"length"] = scenario.sizes[0]
    else:
        info[b"files"] = [{b"length": size, b"path": [p.encode() for p in parts]} for parts, size, _ in files]
    meta: dict[bytes, bencode.Value] = {b"info": info}
    if tracker_url is not None:
        meta[b"announce"] = tracker_url.encode()
    torrent = bencode.encode(meta)
    torrent_path = tmp / "bench.torrent"
    torrent_path.write_bytes(torrent)
    return Payload(name, scenario.single, tuple(files), torrent, hashlib.sha1(bencode.encode(info)).digest(),
                   torrent_path, seed_dir)


def verify(payload: Payload, out_dir: Path) -> str | None:
    """None when every file is there with the right content, else what is wrong (first problem)."""
    for parts, size, digest in payload.files:
        path = payload.file_path(out_dir, parts)
        try:
            got = path.stat().st_size
        except FileNotFoundError:
            return f"{path.relative_to(out_dir)}: missing"
        if got != size:
            return f"{path.relative_to(out_dir)}: {got} bytes, want {size}"
        sha = hashlib.sha1()
        with path.open("rb") as f:
            while data := f.read(SEGMENT):
                sha.update(data)
        if sha.digest() != digest:
            return f"{path.relative_to(out_dir)}: content differs"
    return None


# ---------------------------------------------------------------- seeders

def libtorrent_module() -> Any:
    import libtorrent

    return libtorrent


def tuned_settings(lt: Any) -> dict[str, Any]:
    """libtorrent's own high_performance_seed preset, only the entries that differ from its defaults (so the
    fixture's listen/outgoing interfaces and DHT/LSD switches stay as they are)."""
    defaults = lt.default_settings()
    preset = lt.high_performance_seed()
    keep = {"listen_interfaces", "outgoing_interfaces", "enable_dht", "enable_lsd", "enable_upnp", "enable_natpmp"}
    return {k: v for k, v in preset.items() if k not in keep and defaults.get(k) != v}


def limit_upload(lt: Any, session: Any, rate: int) -> None:
    """Upload limit in bytes/s. Loopback peers fall in libtorrent's local peer class, which ignores the global
    limit; a peer-class filter puts all of 127.0.0.0/8 in the global class so the limit holds."""
    if rate <= 0:
        return
    session.apply_settings({"upload_rate_limit": rate})
    classes = lt.ip_filter()
    classes.add_rule("127.0.0.0", "127.255.255.255", 1 << lt.session.global_peer_class_id)
    session.set_peer_class_filter(classes)


@contextlib.contextmanager
def running_seeders(payload: Payload, limits: Sequence[int], tracker_url: str) -> Iterator[list[Any]]:
    from tests.interop.libtorrent_fixture import libtorrent_peer

    lt = libtorrent_module()
    with contextlib.ExitStack() as stack:
        handles = []
        for host, rate in zip(SEEDER_HOSTS, limits, strict=False):
            peer = stack.enter_context(libtorrent_peer(host))
            peer.session.apply_settings(tuned_settings(lt))
            limit_upload(lt, peer.session, rate)
            # Not seed_mode: a full check at start, so no client pays for lazy first-request hashing.
            handles.append(peer.add(payload.torrent, payload.seed_dir, seed=False, tracker=tracker_url))
        deadline = time.monotonic() + SEED_READY_DEADLINE
        while not all(h.status().is_seeding and announced(h) for h in handles):
            if time.monotonic() > deadline:
                raise RuntimeError("seeders did not check their data and announce in time")
            time.sleep(POLL)
        yield handles


def announced(handle: Any) -> bool:
    return any(t.get("updating") is False and t.get("fails") == 0 and t.get("verified") for t in handle.trackers())


# ---------------------------------------------------------------- clients

@dataclasses.dataclass(frozen=True)
class RunResult:
    client: str
    ok: bool
    wall: float
    cpu: float
    max_rss: int  # bytes
    problem: str = ""
    seeders_cpu: float = 0.0  # CPU seconds of this process (the libtorrent seeders) during the run
    others_cpu: float = 0.0  # CPU seconds of everything else on the machine during the run (noise)
    session_time: float | None = None  # jstorrent only: its own download_time (start to last piece verified)
    tail: float | None = None  # jstorrent only: upper bound on the time from 99 % verified to done


def jstorrent_timing(log: Path) -> tuple[float | None, float | None]:
    """From `get --json` output: (download_time, time after the last progress record below 99 %)."""
    download_time: float | None = None
    last_below = 0.0
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "progress" and record.get("progress", 1) < TAIL_FROM:
            last_below = float(record["elapsed"])
        elif record.get("event") == "result":
            download_time = record.get("download_time")
    if download_time is None:
        return None, None
    return download_time, max(0.0, download_time - last_below)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat, all CPUs)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def client_command(client: str, payload: Payload, out_dir: Path, scenario: Scenario) -> list[str]:
    host = CLIENT_HOSTS[client]
    port = free_port(host)
    if client in ("jstorrent", "jstorrent-alt"):
        program = [str(JSTORRENT)] if client == "jstorrent" else ALT_JSTORRENT
        return [*program, "get", "--json", "-d", str(out_dir), "--listen", host, "--port", str(port),
                *scenario.jstorrent_args, str(payload.torrent_path)]
    if client == "aria2c":
        return aria2c_command(payload.torrent_path, out_dir, port, "--seed-time=0")
    if client == "libtorrent":
        return [str(PYTHON), str(Path(__file__).resolve()), "--lt-client", str(payload.torrent_path), str(out_dir),
                host]
    raise ValueError(client)


def high_water_rss(pid: int) -> int:
    """VmHWM of a live process in bytes (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_child(command: list[str], log: Path, deadline: float
              ) -> tuple[int | None, float, resource.struct_rusage, int]:
    """Spawn, wait (polling, with a deadline), reap with wait4. Returns (exit status or None if killed at the
    deadline, wall seconds, the child's rusage, its peak RSS in bytes).

    The peak RSS is the child's own VmHWM, read at every poll: wait4's ru_maxrss is useless here, because
    Linux carries the parent's high-water mark over fork/vfork and exec into the child's, and the parent
    (which runs the seeders, whose libtorrent maps the payload) is far bigger than the clients."""
    with log.open("wb") as out:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
    timed_out = False
    peak = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, high_water_rss(process.pid))
        if time.monotonic() - started > deadline:
            timed_out = True
            os.kill(process.pid, signal.SIGKILL)  # this PID only
            pid, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(POLL)
    wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, tell Popen
    return (None if timed_out else process.returncode), wall, usage, peak


def run_client(client: str, payload: Payload, scenario: Scenario, work: Path, run: int,
               deadline: float) -> RunResult:
    out_dir = work / f"{client}-{run}"
    out_dir.mkdir(parents=True)
    log = work / f"{client}-{run}.log"
    hog = start_disk_hog(work / "hog.bin") if scenario.disk_hog else None
    busy_before, own_before = machine_busy_seconds(), own_cpu_seconds()
    try:
        code, wall, usage, rss = run_child(client_command(client, payload, out_dir, scenario), log, deadline)
    finally:
        if hog is not None:
            stop_process(hog)
    cpu = usage.ru_utime + usage.ru_stime
    seeders = own_cpu_seconds() - own_before
    others = max(0.0, machine_busy_seconds() - busy_before - cpu - seeders)
    if code is None:
        problem = f"killed after {deadline:.0f} s"
    elif code != 0:
        last_words = log.read_text(errors="replace")[-300:].strip().replace("\n", " | ")
        problem = f"exit {code}: {last_words}"
    else:
        problem = verify(payload, out_dir) or ""
    session_time, tail = jstorrent_timing(log) if client.startswith("jstorrent") and not problem else (None, None)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.sync()  # the next client does not pay for this one's write-back
    return RunResult(client, not problem, wall, cpu, rss, problem, seeders, others, session_time, tail)


# ---------------------------------------------------------------- scenario 6's slow writer

def start_disk_hog(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(PYTHON), str(Path(__file__).resolve()), "--disk-hog", str(path)])




def disk_hog(path: Path) -> None:
    """Write and fsync 8 MiB at a time to the same disk until killed, over a 256 MiB file."""
    block = os.urandom(8 * MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        offset = 0
        while True:
            os.pwrite(fd, block, offset)
            os.fsync(fd)
            offset = (offset + len(block)) % (256 * MiB)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- the libtorrent download client

def lt_client(torrent_path: Path, out_dir: Path, host: str) -> int:
    """A plain libtorrent leecher (the interop fixture's settings): add, poll until finished, exit."""
    from tests.interop.libtorrent_fixture import libtorrent_peer

    with libtorrent_peer(host) as peer:
        handle = peer.add(torrent_path.read_bytes(), out_dir, seed=False)
        while True:
            status = handle.status()
            if status.is_finished or status.is_seeding:
                return 0
            if status.errc.value() != 0:
                print(f"libtorrent: {status.errc.message()}", file=sys.stderr)
                return 1
            time.sleep(POLL)


# ---------------------------------------------------------------- report

@dataclasses.dataclass(frozen=True)
class Row:
    client: str
    runs: int
    ok: int
    wall: float  # medians over the successful runs
    rate: float  # MB/s
    cpu_per_gib: float
    rss: float  # MiB
    problems: tuple[str, ...]
    others: float  # median CPU seconds used by unrelated processes during a run (noise)
    quiet_runs: int  # successful runs during which other processes used under QUIET_SHARE of the machine
    quiet_rate: float  # median MB/s of those (nan if none)


def quiet(run: RunResult) -> bool:
    return run.others_cpu < QUIET_SHARE * run.wall * (os.cpu_count() or 1)


def summarise(scenario: Scenario, results: list[RunResult], clients: Sequence[str]) -> list[Row]:
    rows = []
    for client in clients:
        mine = [r for r in results if r.client == client]
        good = [r for r in mine if r.ok]
        if good:
            wall = statistics.median(r.wall for r in good)
            cpu = statistics.median(r.cpu for r in good) / (scenario.total / GiB)
            rss = statistics.median(r.max_rss for r in good) / MiB
            calm = [r for r in good if quiet(r)]
            calm_rate = scenario.total / statistics.median(r.wall for r in calm) / MB if calm else float("nan")
            rows.append(Row(client, len(mine), len(good), wall, scenario.total / wall / MB, cpu, rss,
                            tuple(r.problem for r in mine if not r.ok), statistics.median(r.others_cpu for r in good),
                            len(calm), calm_rate))
        else:
            rows.append(Row(client, len(mine), 0, float("nan"), float("nan"), float("nan"), float("nan"),
                            tuple(r.problem for r in mine), float("nan"), 0, float("nan")))
    return rows


def table(scenario: Scenario, rows: list[Row], results: list[RunResult]) -> str:
    js = next((r for r in rows if r.client == "jstorrent" and r.ok), None)
    lines = [f"### Scenario {scenario.number}: {scenario.title}", "",
             f"{scenario.total / MiB:.0f} MiB in {len(scenario.sizes)} file(s), {scenario.piece_length // KiB} KiB "
             f"pieces, {len(scenario.seeder_limits)} seeder(s)"
             + (f", ideal {scenario.ideal_seconds:.1f} s" if scenario.ideal_seconds else "")
             + (f". {scenario.note}" if scenario.note else ""), "",
             "| client | ok/runs | median wall s | MB/s | CPU s/GiB | peak RSS MiB | wall / jstorrent "
             "| other load CPU s | MB/s in quiet runs (n) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r.wall / js.wall:.2f}" if js and r.ok else "-"
        lines.append(f"| {r.client} | {r.ok}/{r.runs} | {r.wall:.2f} | {r.rate:.1f} | {r.cpu_per_gib:.2f} | "
                     f"{r.rss:.0f} | {ratio} | {r.others:.1f} | "
                     + (f"{r.quiet_rate:.1f} ({r.quiet_runs}) |" if r.quiet_runs else "- (0) |"))
    for name in ("jstorrent", "jstorrent-alt"):
        js_runs = [r for r in results if r.client == name and r.session_time is not None]
        if js_runs:
            lines.append(f"\n{name}'s own figures (`--json`): median download_time "
                         f"{statistics.median(r.session_time or 0.0 for r in js_runs):.2f} s (wall minus start-up, "
                         f"announce and exit); 99 % -> done took at most "
                         f"{', '.join(f'{r.tail:.1f}' for r in js_runs if r.tail is not None)} s "
                         "(bound from the 1 s progress records)")
    for r in rows:
        for p in r.problems:
            lines.append(f"\nfailure ({r.client}): {p}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

def run_scenario(scenario: Scenario, clients: Sequence[str], runs: int, tmp_root: Path, timeout: float | None,
                 log: Callable[[str], None]) -> tuple[list[Row], list[RunResult]]:
    deadline = timeout if timeout is not None else 60 + scenario.total / (10 * MB)  # at least 10 MB/s
    with tempfile.TemporaryDirectory(prefix=f"bench-s{scenario.number}-", dir=tmp_root) as tmp_name:
        tmp = Path(tmp_name)
        log(f"scenario {scenario.number}: writing {scenario.total / MiB:.0f} MiB of payload")
        # Written once without a tracker (the info hash is the same), the tracker's URL added once it runs.
        payload = make_payload(scenario, tmp, None)
        with running_opentracker(tmp / "tracker", [payload.info_hash], TRACKER_HOST) as tracker:
            payload = dataclasses.replace(payload, torrent=with_tracker(payload.torrent, tracker.http_url))
            payload.torrent_path.write_bytes(payload.torrent)
            log(f"scenario {scenario.number}: {len(scenario.seeder_limits)} seeder(s) checking and announcing")
            results: list[RunResult] = []
            with running_seeders(payload, scenario.seeder_limits, tracker.http_url):
                for run in range(runs):
                    order = list(clients[run % len(clients):]) + list(clients[:run % len(clients)])
                    for client in order:
                        result = run_client(client, payload, scenario, tmp / "runs", run, deadline)
                        results.append(result)
                        log(f"scenario {scenario.number} run {run + 1} {client}: "
                            + (f"{result.wall:.2f} s, {scenario.total / result.wall / MB:.1f} MB/s, cpu "
                               f"{result.cpu:.2f} s, rss {result.max_rss / MiB:.0f} MiB" if result.ok
                               else f"FAILED ({result.problem})")
                            + f"; seeders cpu {result.seeders_cpu:.2f} s, other load {result.others_cpu:.2f} s"
                            + (f"; session {result.session_time:.2f} s, 99 %->done <= {result.tail:.1f} s"
                               if result.session_time is not None and result.tail is not None else ""))
    return summarise(scenario, results, clients), results


def with_tracker(torrent: bytes, url: str) -> bytes:
    """The same torrent (same info bytes, same info hash) with an announce URL."""
    meta = bencode.decode(torrent, max_depth=64, max_size=len(torrent))
    assert isinstance(meta, dict)
    meta[b"announce"] = url.encode()
    return bencode.encode(meta)


def parse_size(text: str) -> int:
    units = {"K": KiB, "M": MiB, "G": GiB}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    aria = subprocess.run(["aria2c", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return (f"{os.cpu_count()} CPUs ({model}), Python {sys.version.split()[0]}, libtorrent "
            f"{libtorrent_module().__version__}, {aria}")


def compile_bytecode(command: Sequence[str], log: Callable[[str], None]) -> None:
    """Write the jstorrent package's bytecode (__pycache__) for the venv that runs `command`, as an
    installed copy has it (pip compiles at install time). Without it, and with PYTHONDONTWRITEBYTECODE
    set (as in the sessions that ran this benchmark), every run compiled the whole package again:
    about 90 ms of start-up that no installed jstorrent pays."""
    python = Path(command[0]).parent / "python"
    if not python.exists():
        log(f"{command[0]}: no python beside it, its bytecode is left as it is")
        return
    subprocess.run([str(python), "-c", "import compileall, os, jstorrent_cli; "
                    "compileall.compile_dir(os.path.dirname(jstorrent_cli.__file__), quiet=1)"],
                   check=True, cwd="/")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scenario", type=int, action="append", choices=range(1, 7),
                        help="scenario number; repeatable (default: all six)")
    parser.add_argument("--size", default="1G", help="payload size for scenarios 1, 3-6 (default 1G)")
    parser.add_argument("--small-size", default="256M", help="payload size for scenario 2 (default 256M)")
    parser.add_argument("--runs", type=int, default=3, help="downloads per client (default 3)")
    parser.add_argument("--clients", default="jstorrent,aria2c,libtorrent")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per download before it is killed (default 60 + size / 10 MB/s)")
    parser.add_argument("--tmp", default=None, help="folder for payloads and downloads (default: system tmp)")
    parser.add_argument("--markdown", default=None, help="also append the tables to this file")
    parser.add_argument("--json-out", default=None, help="write every run's figures to this JSON file")
    parser.add_argument("--alt-jstorrent", metavar="COMMAND",
                        help="also run this jstorrent command (split on spaces) as client jstorrent-alt")
    parser.add_argument("--report", metavar="FILE.json",
                        help="only print the tables of a --json-out file again (same --size/--small-size)")
    parser.add_argument("--lt-client", nargs=3, metavar=("TORRENT", "DIR", "HOST"), help=argparse.SUPPRESS)
    parser.add_argument("--disk-hog", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.lt_client:
        return lt_client(Path(args.lt_client[0]), Path(args.lt_client[1]), args.lt_client[2])
    if args.disk_hog:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        disk_hog(Path(args.disk_hog))
        return 0
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if args.alt_jstorrent:
        ALT_JSTORRENT[:] = args.alt_jstorrent.split()
        if "jstorrent-alt" not in clients:
            clients.append("jstorrent-alt")
    all_scenarios = scenarios(parse_size(args.size), parse_size(args.small_size))
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        print(saved["header"])
        runs = [(r.pop("scenario"), RunResult(**r)) for r in saved["runs"]]
        for number in sorted({n for n, _ in runs}):
            results = [r for n, r in runs if n == number]
            print(table(all_scenarios[number], summarise(all_scenarios[number], results, clients), results))
        return 0
    require_opentracker()
    for c in clients:
        if c not in CLIENT_HOSTS:
            parser.error(f"unknown client {c!r}")
    chosen = args.scenario or sorted(all_scenarios)
    tmp_root = Path(args.tmp) if args.tmp else Path(tempfile.gettempdir())

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    for client, command in (("jstorrent", [str(JSTORRENT)]), ("jstorrent-alt", ALT_JSTORRENT)):
        if client in clients and command:
            compile_bytecode(command, log)
    header = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}\n"
              f"command: .venv/bin/python tests/perf/bench_swarm.py {' '.join(sys.argv[1:] if argv is None else argv)}"
              "\n")
    print(header)
    everything: list[dict[str, Any]] = []
    for number in chosen:
        scenario = all_scenarios[number]
        rows, results = run_scenario(scenario, clients, args.runs, tmp_root, args.timeout, log)
        text = table(scenario, rows, results)
        print(text, flush=True)
        if args.markdown:
            with open(args.markdown, "a") as f:
                f.write(text + "\n")
        everything += [{"scenario": number, **dataclasses.asdict(r)} for r in results]
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({"header": header, "runs": everything}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
