"""Kill -9 a real `jstorrent get` many times in a loop, then let it finish: the files are exact and no
piece the resume state recorded as verified is ever downloaded again.

The seeder is a jstorrent session in this process on 127.0.0.2 with an upload limit, so a download
takes several seconds; `jstorrent get --quiet` runs as a child process on 127.0.0.3. Each kill is drawn
from a seeded RNG (JSTORRENT_KILL_SEED, default fixed, printed on failure) and lands at one of:

* startup: 0-0.5 s after the process was started (interpreter start, state load, re-hash of the
  pieces whose files changed since the last save, first connection);
* transfer: once the state records at least a drawn share (5-70 %) of the pieces, plus a random
  0-0.4 s (if the share was recorded already, that is a kill at a random moment of the startup);
* end: once the state records at least 75 % of the pieces and a piece of this run's own (85-95 %
  done: the state lags by up to a second), plus a random 0-0.2 s (near completion, where the final
  save, the `completed` bookkeeping and the exit race the kill).

What is checked, measured at the seeder (every block it reads for upload is logged with its time):
after every kill the state only grows and every piece it records is on disk and correct; no block
of a piece recorded at a run's start is served during that run; the last run completes with exit 0
and the files byte for byte. CI runs 9 kills in ~20 s. For a long run:

    JSTORRENT_KILLS=100 .venv/bin/python -m pytest tests/interop/test_kill9.py -q -s --timeout=0

(the payload grows with the number of kills so that the kills keep landing mid-transfer; -s prints the
figures recorded in docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from jstorrent_cli.config import KiB, MiB
from jstorrent_cli.core.metainfo import Torrent
from jstorrent_cli.tasks.storage import Storage
from tests.conftest import assert_payload, build_torrent, random_files, reaped, write_payload
from tests.faults.common import SEEDER_HOST, get_command, start_seeder, verified_pieces

KILLS = int(os.environ.get("JSTORRENT_KILLS", "9"))
SEED = int(os.environ.get("JSTORRENT_KILL_SEED", "20261130"))
PIECE = 32 * KiB
# A transfer kill costs about 1.5 s of transfer (it waits for its run's first recorded piece: the state is
# saved once a second): about 1 MiB per kill at RATE keeps the kills landing before the download is done.
SIZE = max(12 * MiB, KILLS * MiB)
RATE = 1 * MiB  # the seeder's upload limit: about 12 s for 12 MiB
DEADLINE = 60 + 6 * KILLS
STARTUP_WINDOW = 0.5  # a startup kill lands this long after the start at most
EXTRA_DELAY = 0.4  # a transfer or end kill lands up to this long after its threshold was recorded
# The state lags the download by up to Config.resume_save_interval (1 s, 1/12 of 12 MiB here): an end kill
# triggered at 75 % recorded lands at roughly 85-95 % done.
END_SHARE = 0.75
TRANSFER_SHARE = 0.7
END_DELAY = 0.2
POLL = 0.02  # how often the state file is read while waiting for a kill's threshold


def _draw_kills(rng: random.Random, count: int) -> list[tuple[str, float, float]]:
    """(kind, share of pieces recorded before the kill, extra delay) per kill, shares rising; at least one
    startup kill and, with three or more kills, one end kill (the last)."""
    kinds = [rng.choice(("startup", "transfer", "transfer")) for _ in range(count)]
    if count >= 2:
        kinds[0] = "startup"
    if count >= 3:
        kinds[-1] = "end"
    shares = sorted(rng.uniform(0.05, TRANSFER_SHARE) for _ in range(count))
    out = []
    for kind, share in zip(kinds, shares, strict=True):
        if kind == "startup":
            out.append((kind, 0.0, rng.uniform(0.0, STARTUP_WINDOW)))
        elif kind == "end":
            out.append((kind, END_SHARE, rng.uniform(0.0, END_DELAY)))
        else:
            out.append((kind, share, rng.uniform(0.0, EXTRA_DELAY)))
    return out


class ServedLog:
    """Every block the in-process seeder reads for upload: (trio time, piece)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[tuple[float, int, int]] = []  # (time, piece, bytes)
        real = Storage.read_block
        reads = self.reads

        async def read_block(storage: Storage, piece: int, begin: int, length: int) -> bytes:
            reads.append((trio.current_time(), piece, length))
            return await real(storage, piece, begin, length)

        monkeypatch.setattr(Storage, "read_block", read_block)

    def between(self, start: float, end: float) -> list[tuple[int, int]]:
        return [(piece, size) for t, piece, size in self.reads if start <= t < end]


def _check_recorded_on_disk(out: Path, torrent: Torrent, payload: bytes, recorded: frozenset[int]) -> None:
    """Every recorded piece is on disk and correct (the state never claims what is not there)."""
    on_disk = b"".join(out.joinpath(*f.path).read_bytes() if out.joinpath(*f.path).exists() else bytes(f.length)
                       for f in torrent.files)  # FileEntry paths start with the torrent's folder
    for piece in recorded:
        span = slice(piece * PIECE, min((piece + 1) * PIECE, len(payload)))
        assert hashlib.sha1(on_disk[span]).digest() == hashlib.sha1(payload[span]).digest(), \
            f"piece {piece} recorded as verified but wrong or missing on disk"


async def _run_and_kill(cmd: list[str], kill_when: Callable[[], Awaitable[None]] | None) -> int:
    """Run `jstorrent get`; SIGKILL it once `kill_when()` returns (None: let it finish). Its status."""
    process = await trio.lowlevel.open_process(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    async with reaped(process):
        if kill_when is not None:
            async with trio.open_nursery() as nursery:

                async def kill_later() -> None:
                    await kill_when()
                    if process.returncode is None:
                        process.send_signal(signal.SIGKILL)

                async def finished() -> None:
                    await process.wait()  # it may finish first: then there is nothing to kill
                    nursery.cancel_scope.cancel()

                nursery.start_soon(kill_later)
                nursery.start_soon(finished)
        return await process.wait()


async def test_kill9_in_a_loop_then_rerun_completes_exactly_without_fetching_recorded_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(SEED)
    files = random_files(61, [SIZE // 2 + 5, SIZE // 2 - 5])
    payload = b"".join(data for _, data in files)
    name = "k9"
    data, torrent = build_torrent(name, files, PIECE)
    (tmp_path / "t.torrent").write_bytes(data)
    write_payload(tmp_path / "seed", name, files)
    out = tmp_path / "out"
    served = ServedLog(monkeypatch)
    plan = _draw_kills(rng, KILLS)
    log: list[str] = []  # one line per run, for the failure message and -s
    n = torrent.piece_count
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_seeder(nursery, torrent, tmp_path / "seed", rate=RATE)
            cmd = get_command(tmp_path / "t.torrent", out, [(SEEDER_HOST, port)], "--quiet")
            started = trio.current_time()
            runs: list[tuple[float, frozenset[int]]] = []  # (start time, pieces recorded at the start)
            status = None
            killed: list[bool] = []  # per kill: it killed a process with part of the data recorded
            for kind, share, delay in [*plan, ("final", 0.0, 0.0)]:
                before = verified_pieces(out, torrent)
                runs.append((trio.current_time(), before))

                async def kill_when(share: float = share, delay: float = delay, kind: str = kind,
                                    start: int = len(before)) -> None:
                    # An end kill waits for this run's own progress to be recorded too.
                    least = max(share * n, start + 1) if kind == "end" else share * n
                    while len(verified_pieces(out, torrent)) < least:
                        await trio.sleep(POLL)  # polling the state file the child writes, not a race
                    await trio.sleep(delay)

                status = await _run_and_kill(cmd, None if kind == "final" else kill_when)
                after = verified_pieces(out, torrent)
                log.append(f"{kind} share={share:.2f} delay={delay:.2f}s: {len(before)} -> {len(after)} "
                           f"of {n} recorded, exit {status}")
                assert before <= after, f"a kill lost recorded pieces: {log}"
                _check_recorded_on_disk(out, torrent, payload, after)
                if kind == "final":
                    break
                assert status in (-signal.SIGKILL, 0), log
                killed.append(status == -signal.SIGKILL and 0 < len(after) < n)
            ended = trio.current_time()
            nursery.cancel_scope.cancel()
    context = f"seed {SEED}: " + "; ".join(log)
    assert status == 0, context
    assert_payload(out, name, files)
    assert verified_pieces(out, torrent) == set(range(n)), context
    # No run was served a block of a piece recorded at its start.
    bounds = [start for start, _ in runs] + [ended + 1.0]
    refetched = 0
    for i, (start, recorded) in enumerate(runs):
        again = {piece for piece, _ in served.between(start, bounds[i + 1]) if piece in recorded}
        assert not again, f"run {i} was served recorded pieces {sorted(again)[:10]}: {context}"
    total_served = sum(size for _, size in served.between(0.0, bounds[-1]))
    refetched = total_served - torrent.total_length
    # The kills landed in every phase, and some mid-transfer (neither nothing nor everything recorded).
    kinds = [kind for kind, _, _ in plan]
    if KILLS >= 3:
        assert {"startup", "end"} <= set(kinds)
    assert sum(killed) >= min(KILLS, 3), context  # the kills were real (not runs that had finished)
    print("\n" + "\n".join(log))
    print(f"\nkill -9: {KILLS} kills (seed {SEED}; {kinds.count('startup')} at startup, "
          f"{kinds.count('transfer')} mid-transfer, {kinds.count('end')} near the end), {len(runs)} runs, "
          f"{torrent.total_length} bytes, {ended - started:.1f} s; served {total_served} bytes, "
          f"{refetched} bytes ({refetched / torrent.total_length:.1%}) fetched twice, "
          "none of them recorded at the start of the run that fetched them")
