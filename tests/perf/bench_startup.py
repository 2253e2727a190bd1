"""Start-up cost of `jstorrent get` (not a test): how long until the command could begin to download?

Runs `jstorrent get --quiet MISSING.torrent` and `get --json MISSING.torrent` several times: each one
imports everything a download needs (cli, the session, the display) and then exits with status 3 on
the missing file, so its wall time is the interpreter's start, the imports and the exit, without any
network or disk work. With `--alt COMMAND` (another checkout's `.venv/bin/jstorrent`) the two are run
interleaved and both medians printed. `--modules` also lists which heavy third-party packages were
imported (rich, httpx, pygments, hypothesis: none of them is needed before a download starts).

It also times the first announce: `get --quiet` of a small torrent whose HTTP tracker is a listening
socket of this script; the figure is from spawn to the tracker's accept of the connection (imports,
session set-up, the HTTP client), then the client is killed.

Both packages' bytecode is written first (bench_swarm.compile_bytecode), as an installed copy has it;
`--no-compile` leaves it as it is (with PYTHONDONTWRITEBYTECODE set, every run then compiles the package).

Run: .venv/bin/python tests/perf/bench_startup.py [--runs 15] [--alt /other/.venv/bin/jstorrent] [--modules]
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_swarm import compile_bytecode

from jstorrent_cli.core import bencode

HERE = Path(__file__).resolve().parents[2]
HEAVY = ("rich", "httpx", "pygments", "hypothesis", "httpcore", "anyio")
MISSING = "/nonexistent/startup-probe.torrent"
EXIT_NOT_FOUND = 3


def one_run(command: list[str], flag: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([*command, "get", flag, MISSING], capture_output=True, check=False)
    took = time.perf_counter() - start
    if proc.returncode != EXIT_NOT_FOUND:
        raise SystemExit(f"{command}: exit status {proc.returncode}, expected {EXIT_NOT_FOUND}: {proc.stderr!r}")
    return took


def first_announce(command: list[str], torrent: Path, listener: socket.socket, out: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen([*command, "get", "--quiet", "-d", str(out), str(torrent)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn, _ = listener.accept()
        took = time.perf_counter() - start
        conn.close()
    finally:
        proc.kill()
        proc.wait()
    return took


def probe_torrent(folder: Path, tracker: str) -> Path:
    piece = b"x" * 16384
    info = {b"name": b"probe.bin", b"piece length": len(piece), b"length": len(piece),
            b"pieces": hashlib.sha1(piece).digest()}
    path = folder / "probe.torrent"
    path.write_bytes(bencode.encode({b"announce": tracker.encode(), b"info": info}))
    return path


def heavy_modules(python: str, flag: str) -> list[str]:
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['jstorrent', 'get', {flag!r}, {MISSING!r}]\n"
        "try:\n    runpy.run_module('jstorrent_cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n"
    )
    # cwd="/": `python -c` puts the current folder first on sys.path, which could be another checkout
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True, cwd="/").stdout
    return out.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--alt", default=None, help="another jstorrent command to compare with (interleaved)")
    parser.add_argument("--modules", action="store_true", help="also list the heavy packages each one imports")
    parser.add_argument("--no-compile", action="store_true", help="do not write the packages' bytecode first")
    args = parser.parse_args()
    commands = {"this tree": [str(HERE / ".venv" / "bin" / "jstorrent")]}
    if args.alt:
        commands["alt"] = args.alt.split()
    if not args.no_compile:
        for command in commands.values():
            compile_bytecode(command, print)
    for flag in ("--quiet", "--json"):
        times: dict[str, list[float]] = {name: [] for name in commands}
        for i in range(args.runs):
            order = list(commands.items())
            if i % 2:
                order.reverse()
            for name, command in order:
                times[name].append(one_run(command, flag))
        for name, values in times.items():
            print(f"get {flag}: {name}: median {statistics.median(values) * 1000:.0f} ms, "
                  f"min {min(values) * 1000:.0f} ms over {len(values)} runs")
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(60)
        torrent = probe_torrent(Path(tmp), f"http://127.0.0.1:{listener.getsockname()[1]}/announce")
        firsts: dict[str, list[float]] = {name: [] for name in commands}
        for i in range(args.runs):
            order = list(commands.items())
            if i % 2:
                order.reverse()
            for name, command in order:
                firsts[name].append(first_announce(command, torrent, listener, Path(tmp) / "out"))
        for name, values in firsts.items():
            print(f"first HTTP announce: {name}: median {statistics.median(values) * 1000:.0f} ms, "
                  f"min {min(values) * 1000:.0f} ms over {len(values)} runs")
    if args.modules:
        for name, command in commands.items():
            python = str(Path(command[0]).parent / "python")
            print(f"{name}: heavy modules after `get --quiet`: {heavy_modules(python, '--quiet') or 'none'}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
