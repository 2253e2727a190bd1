"""Start-up cost of `jstorrent get` (not a test): how long until the command could begin to download?

Runs `jstorrent get --quiet MISSING.torrent` and `get --json MISSING.torrent` several times: each one
imports everything a download needs (cli, the session, the display) and then exits with status 3 on
the missing file, so its wall time is the interpreter's start, the imports and the exit, without any
network or disk work. With `--alt COMMAND` (another checkout's `.venv/bin/jstorrent`) the two are run
interleaved and both medians printed. `--modules` also lists which heavy third-party packages were
imported (rich, httpx, pygments, hypothesis: none of them is needed before a download starts).

Run: .venv/bin/python tests/perf/bench_startup.py [--runs 15] [--alt /other/.venv/bin/jstorrent] [--modules]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

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
    args = parser.parse_args()
    commands = {"this tree": [str(HERE / ".venv" / "bin" / "jstorrent")]}
    if args.alt:
        commands["alt"] = args.alt.split()
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
    if args.modules:
        for name, command in commands.items():
            python = str(Path(command[0]).parent / "python")
            print(f"{name}: heavy modules after `get --quiet`: {heavy_modules(python, '--quiet') or 'none'}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
