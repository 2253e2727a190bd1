"""Micro-benchmark (not a test): Scheduler.handle() cost per received block.

10,000 pieces of 256 KiB (16 blocks each), 50 unchoking peers that have everything, default Config.
Blocks arrive one per BlocksReceived fact (the worst case: readers may batch several), round robin over
the peers; the writer confirms every block at once and the hasher passes every piece. Reported:
microseconds per block for the BlocksReceived facts alone, and for everything (writes, hashes, ticks)
divided by the number of blocks.

Run: .venv/bin/python tests/perf/bench_scheduler.py [--pieces N] [--peers N] [--blocks N] [--batch N]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque

from jstorrent_cli.config import DEFAULT_CONFIG, KiB
from jstorrent_cli.core import messages as m
from jstorrent_cli.core.scheduler import Scheduler

SEGMENT = 5000  # blocks per timing segment


def calibrate() -> float:
    """Nanoseconds per iteration of a bare `x += i` loop: shows how fast (or loaded) this machine is."""
    start = time.perf_counter()
    x = 0
    for i in range(1_000_000):
        x += i
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pieces", type=int, default=10_000)
    parser.add_argument("--piece-length", type=int, default=256 * KiB)
    parser.add_argument("--peers", type=int, default=50)
    parser.add_argument("--blocks", type=int, default=100_000, help="blocks to receive (at most the torrent)")
    parser.add_argument("--batch", type=int, default=1, help="blocks per BlocksReceived fact")
    args = parser.parse_args()

    config = DEFAULT_CONFIG
    total = args.pieces * args.piece_length
    sched = Scheduler(args.pieces, args.piece_length, total, config, random.Random(1))
    queues: dict[int, deque[m.BlockRef]] = {}
    writes: list[m.BlockRef] = []
    hashes: list[int] = []
    now = 0.0
    payload = memoryview(bytes(config.block_size))

    def route(commands: list[m.Command]) -> None:
        for cmd in commands:
            if isinstance(cmd, m.SendRequests):
                queues.setdefault(cmd.peer, deque()).extend(cmd.requests)  # type: ignore[arg-type]
            elif isinstance(cmd, m.SendCancels):
                queue = queues[cmd.peer]  # type: ignore[index]
                for ref in cmd.cancels:
                    if ref in queue:
                        queue.remove(ref)
            elif isinstance(cmd, m.WriteBlocks):
                writes.extend((p, b, len(d)) for p, b, d in cmd.blocks)
            elif isinstance(cmd, m.HashPiece):
                hashes.append(cmd.piece)

    for peer in range(args.peers):
        route(sched.handle(m.PeerJoined(peer, f"127.0.{peer // 250}.{peer % 250 + 2}", have_all=True), now))
        route(sched.handle(m.Unchoked(peer), now))

    received = 0
    segment: list[float] = []
    segments: list[float] = []  # mean us/block over each run of SEGMENT blocks
    t_blocks = 0.0
    t_all_start = time.perf_counter()
    peers = list(range(args.peers))
    limit = min(args.blocks, total // config.block_size)
    handle = sched.handle
    while received < limit:
        progressed = False
        for peer in peers:
            queue = queues.get(peer)
            if not queue:
                continue
            batch: list[m.ReceivedBlock] = []
            while queue and len(batch) < args.batch:
                piece, begin, length = queue.popleft()
                batch.append((piece, begin, payload[:length]))
            now += 0.0001
            fact = m.BlocksReceived(peer, tuple(batch))
            t0 = time.perf_counter()
            out = handle(fact, now)
            spent = time.perf_counter() - t0
            t_blocks += spent
            segment.append(spent / len(batch))
            route(out)
            received += len(batch)
            progressed = True
            if len(segment) * args.batch >= SEGMENT:
                segments.append(sum(segment) / len(segment) * 1e6)
                segment.clear()
        if writes:
            route(handle(m.BlocksWritten(tuple(writes)), now))
            writes.clear()
        while hashes:
            route(handle(m.PieceHashed(hashes.pop(), True), now))
        route(handle(m.Tick(), now))
        if not progressed:
            break
    t_all = time.perf_counter() - t_all_start
    snap = sched.snapshot()
    print(f"pieces={args.pieces} peers={args.peers} batch={args.batch} blocks={received}")
    print(f"machine: {calibrate():.0f} ns per bare loop iteration (an idle CPython 3.11 core: about 30-40)")
    print(f"BlocksReceived handle(): {t_blocks / received * 1e6:.2f} us/block on average")
    if segments:
        ordered = sorted(segments)
        print(f"  over runs of {SEGMENT} blocks: best {ordered[0]:.2f} us/block, "
              f"median {ordered[len(ordered) // 2]:.2f} us/block (best is the least disturbed by load)")
    print(f"everything (incl. writes, hashes, ticks, driver): {t_all / received * 1e6:.2f} us/block")
    print(f"verified {snap.pieces_verified}/{snap.pieces_wanted}, in flight {snap.bytes_in_flight}")


if __name__ == "__main__":
    main()
