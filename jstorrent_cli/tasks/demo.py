"""`jstorrent demo`: a whole swarm on this machine, downloaded with the normal `get` path.

It makes a payload (random bytes from a seeded generator), a torrent of it, starts seeders that are
jstorrent sessions themselves (each on its own loopback address, some of them rate-limited to show
the endgame and the diagnostics), downloads with a session that has the live view, checks the result
byte for byte against the payload, and removes everything it made. Nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import trio

from jstorrent_cli.config import Config
from jstorrent_cli.core import metainfo, resume
from jstorrent_cli.core.create import build_metainfo, choose_piece_length
from jstorrent_cli.errors import ChecksumError
from jstorrent_cli.tasks import session
from jstorrent_cli.tasks.create import hash_pieces
from jstorrent_cli.tasks.resume_store import StateStore, stat_files_sync

# Payload generation writes this much per thread hop.
_WRITE_STEP = 16 * 1024 * 1024
# Seeders listen on 127.0.0.2, 127.0.0.3, ... and the downloader on 127.0.0.1.
_FIRST_SEEDER_HOST = 2
_DOWNLOADER_HOST = "127.0.0.1"
_PAYLOAD_NAME = "jstorrent-demo.bin"


@dataclasses.dataclass(frozen=True, slots=True)
class DemoOptions:
    size: int  # payload bytes
    seeders: int  # full-speed seeders
    slow_seeders: int  # seeders limited to slow_rate
    slow_rate: int  # bytes/s for each slow seeder
    piece_length: int | None  # None: chosen as `jstorrent create` would
    workdir: Path | None  # None: a fresh temporary folder, removed at the end
    keep: bool  # keep the folder (payload, torrent, download) afterwards
    seed: int  # seeds the payload generator, so a run can be repeated


def _write_payload(path: Path, size: int, seed: int) -> bytes:
    """Write the payload; its SHA-1 (what the download is checked against at the end)."""
    rng = random.Random(seed)
    h = hashlib.sha1()
    with open(path, "wb") as f:
        left = size
        while left:
            step = min(_WRITE_STEP, left)
            data = rng.randbytes(step)
            h.update(data)
            f.write(data)
            left -= step
    return h.digest()


def _sha1_file(path: Path) -> bytes:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(_WRITE_STEP):
            h.update(chunk)
    return h.digest()


async def run_demo(
    config: Config,
    options: DemoOptions,
    display: session.Display,
    say: Callable[[str], None],
) -> session.SessionResult:
    """Run the demo; returns the downloader's result (status "ok" only if the bytes matched)."""
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="jstorrent-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        seed_dir = workdir / "seed"
        leech_dir = workdir / "download"
        seed_dir.mkdir(exist_ok=True)
        leech_dir.mkdir(exist_ok=True)
        payload = seed_dir / _PAYLOAD_NAME
        say(f"demo: making a {options.size:,}-byte payload in {workdir}")
        want = await trio.to_thread.run_sync(_write_payload, payload, options.size, options.seed)
        piece_length = options.piece_length or choose_piece_length(options.size, config)
        hashes = await hash_pieces([payload], [options.size], piece_length, lambda _n: None, config)
        data = build_metainfo(name=_PAYLOAD_NAME, files=None, single_length=options.size,
                              piece_length=piece_length, piece_hashes=hashes)
        (workdir / "demo.torrent").write_bytes(data)
        torrent = metainfo.parse(data)
        count = options.seeders + options.slow_seeders
        say(f"demo: {count} seeder(s) ({options.slow_seeders} slow) on 127.0.0.{_FIRST_SEEDER_HOST}"
            f"..127.0.0.{_FIRST_SEEDER_HOST + count - 1}; downloading into {leech_dir}")
        async with trio.open_nursery() as nursery:
            peers: list[tuple[str, int]] = []
            for i in range(count):
                host = f"127.0.0.{_FIRST_SEEDER_HOST + i}"
                seeder_config = config
                if i >= options.seeders:
                    seeder_config = dataclasses.replace(config, max_upload_rate=options.slow_rate)
                # Each seeder has a folder (and so a resume state file) of its own; the payload is
                # hard-linked into it, not copied.
                own_dir = workdir / f"seeder-{i + 1}"
                own_dir.mkdir(exist_ok=True)
                if not (own_dir / _PAYLOAD_NAME).exists():
                    (own_dir / _PAYLOAD_NAME).hardlink_to(payload)
                # The payload was just hashed to make the torrent: a resume state saying so spares each
                # seeder hashing it all again before it serves (size and mtime are checked as usual).
                await trio.to_thread.run_sync(_write_seeder_state, torrent, own_dir, config)
                port = await nursery.start(_seeder, seeder_config, torrent, own_dir, host)
                peers.append((host, port))
            result = await session.run(config, torrent, leech_dir, peers=peers, display=display,
                                       listen_host=_DOWNLOADER_HOST, handle_signals=True)
            nursery.cancel_scope.cancel()
        if result.status == "ok":
            got = await trio.to_thread.run_sync(_sha1_file, leech_dir / _PAYLOAD_NAME)
            if got != want:
                error = ChecksumError("demo: the downloaded file differs from the payload")
                return dataclasses.replace(result, status="error", error=str(error), exception=error)
            say(f"demo: verified: the download equals the payload byte for byte (sha1 {got.hex()})")
        return result
    finally:
        if options.workdir is None and not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _write_seeder_state(torrent: metainfo.Torrent, own_dir: Path, config: Config) -> None:
    state = resume.ResumeState.make(torrent.info_hash, torrent.piece_count, range(torrent.piece_count),
                                    stat_files_sync(own_dir, [(_PAYLOAD_NAME,)]))
    StateStore(own_dir, _PAYLOAD_NAME, config).write_sync(resume.encode(state))


async def _seeder(
    config: Config, torrent: metainfo.Torrent, seed_dir: Path, host: str,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    result = await session.run(config, torrent, seed_dir, listen_host=host, seed_time=math.inf,
                               display=session.NullDisplay(), task_status=task_status)
    if result.exception is not None:
        raise result.exception
