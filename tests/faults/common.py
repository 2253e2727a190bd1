"""Helpers of the fault tests: a jstorrent seeder in this process, `jstorrent get` as a child process.

Every fault test drives the real entry point (`python -m jstorrent_cli get ...`) or a real session, on
loopback addresses of its own: seeders on 127.0.0.2 (and .4, .6...), the downloader on 127.0.0.3.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core import resume
from jstorrent_cli.core.metainfo import Torrent
from jstorrent_cli.errors import ExitStatus
from jstorrent_cli.tasks import session
from jstorrent_cli.tasks.resume_store import state_file_name

SEEDER_HOST = "127.0.0.2"
OUR_HOST = "127.0.0.3"


async def start_seeder(nursery: trio.Nursery, torrent: Torrent, folder: Path, *, rate: int,
                       host: str = SEEDER_HOST, port: int = 0) -> int:
    """A jstorrent session seeding `torrent` from `folder` for ever, `rate` bytes/s up (0: unlimited).
    Returns its listening port."""
    config = dataclasses.replace(DEFAULT_CONFIG, max_upload_rate=rate)
    started: int = await nursery.start(functools.partial(
        session.run, config, torrent, folder, listen_host=host, port=port, seed_time=math.inf))
    return started


def get_args(torrent_file: Path, out: Path, peers: Sequence[tuple[str, int]], *extra: str) -> list[str]:
    """The arguments of `jstorrent get`: our own address, an ephemeral port, the given peers."""
    args = ["get", str(torrent_file), "-d", str(out), "--listen", OUR_HOST, "--port", "0"]
    for host, port in peers:
        args += ["--peer", f"{host}:{port}"]
    return args + list(extra)


def get_command(torrent_file: Path, out: Path, peers: Sequence[tuple[str, int]], *extra: str) -> list[str]:
    """`jstorrent get` as a child process (see get_args)."""
    return [sys.executable, "-m", "jstorrent_cli", *get_args(torrent_file, out, peers, *extra)]


async def get_many(argvs: Sequence[list[str]], processes: int) -> list[Finished]:
    """Run `jstorrent get` once per argument list through tests/faults/get_many.py: `processes` child
    interpreters, each running its share one after another. Results in the order given."""
    results: list[Finished | None] = [None] * len(argvs)

    async def worker(indexes: list[int]) -> None:
        lines = "".join(json.dumps(argvs[i]) + "\n" for i in indexes).encode()
        done = await trio.run_process([sys.executable, "-m", "tests.faults.get_many"], stdin=lines,
                                      capture_stdout=True, capture_stderr=True, check=False)
        answers = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
        assert done.returncode == 0 and len(answers) == len(indexes), done.stderr.decode()[-2000:]
        for i, answer in zip(indexes, answers, strict=True):
            results[i] = Finished(answer["status"], "", answer["stderr"])

    async with trio.open_nursery() as nursery:
        for k in range(processes):
            nursery.start_soon(worker, list(range(k, len(argvs), processes)))
    return [r for r in results if r is not None]


@dataclasses.dataclass(frozen=True)
class Finished:
    status: int
    stdout: str
    stderr: str

    def records(self) -> list[dict[str, Any]]:
        """The --json records."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def one_error_line(self) -> str:
        """The one line a failure prints on stderr (asserted to be exactly one, no traceback)."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("jstorrent: "), self.stderr
        assert "Traceback" not in self.stderr
        return lines[0]


async def run_get(cmd: list[str]) -> Finished:
    done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    return Finished(done.returncode, done.stdout.decode(), done.stderr.decode())


def verified_pieces(folder: Path, torrent: Torrent) -> frozenset[int]:
    """The pieces the state file in `folder` records as verified (none without one)."""
    path = folder / state_file_name(torrent.name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return frozenset()
    state = resume.decode(data)
    assert state.info_hash == torrent.info_hash
    return state.verified_pieces()


__all__ = ["OUR_HOST", "SEEDER_HOST", "ExitStatus", "Finished", "get_args", "get_command", "get_many",
           "run_get", "start_seeder", "verified_pieces"]
