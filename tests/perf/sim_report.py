"""Run every swarm scenario of tests/sim/swarm.py and print completion time / lower bound as a table.

Usage (from the repository root):

    .venv/bin/python -m tests.perf.sim_report            # every scenario, the 20 GB one included
    .venv/bin/python -m tests.perf.sim_report --quick    # leave out the 20 GB one (about a minute of CPU)
    .venv/bin/python -m tests.perf.sim_report --markdown # a Markdown table for docs/design/sim-results.md

Times are virtual seconds (deterministic for a seed); "wall" is how long the simulation took to run.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.sim.swarm import SCENARIOS, SLOW_SCENARIOS, Swarm, simulate

ROOT = Path(__file__).resolve().parent.parent.parent


def _commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "jstorrent_cli/core"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.strip()
    return result.stdout.strip() + (" (core/ modified)" if dirty else "")


def _size(swarm: Swarm) -> str:
    total = swarm.total_length
    return f"{total / 1e9:.1f} GB" if total >= 1e9 else f"{total / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="leave out the slow scenarios")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    scenarios: dict[str, Callable[[int], Swarm]] = dict(SCENARIOS)
    if not args.quick:
        scenarios.update(SLOW_SCENARIOS)
    command = "python -m tests.perf.sim_report" + (" --quick" if args.quick else "") + (
        f" --seed {args.seed}" if args.seed != 1 else "")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = ("scenario", "size", "pieces", "peers", "bound (s)", "finished (s)", "ratio", "peak budget",
              "hash fails", "banned", "wasted", "violations", "wall (s)")
    rows: list[tuple[str, ...]] = []
    failed = False
    for name, factory in scenarios.items():
        swarm = factory(args.seed)
        started = time.perf_counter()
        result = simulate(swarm)
        wall = time.perf_counter() - started
        failed |= not result.ok
        finished = f"{result.finish_time:.2f}" if result.finish_time is not None else "NOT FINISHED"
        rows.append((
            name, _size(swarm), f"{swarm.num_pieces:,}", str(len(swarm.peers)), f"{result.lower_bound:.2f}",
            finished, f"{result.ratio:.3f}",
            f"{result.peak_budget_used / 2**20:.1f} / {result.budget / 2**20:.0f} MiB",
            str(result.hash_failures), str(len(result.banned_ips)), f"{result.wasted_bytes / 2**20:.2f} MiB",
            str(result.violation_count), f"{wall:.1f}",
        ))
        if not args.markdown:
            print("  ".join(rows[-1]), file=sys.stderr, flush=True)
    if args.markdown:
        print(f"Measured {stamp} at commit {_commit()}, seed {args.seed}, with `{command}`.\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print(f"{stamp}, commit {_commit()}, seed {args.seed}: {command}")
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
