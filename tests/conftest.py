"""Shared test helpers: build a torrent from in-memory files and lay its payload out on disk."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import trio

from jstorrent_cli.core import bencode, metainfo

FileSpec = tuple[tuple[str, ...], bytes]


def build_torrent(
    name: str,
    files: Sequence[FileSpec],
    piece_length: int,
    *,
    trackers: Sequence[str] = (),
    single: bool = False,
) -> tuple[bytes, metainfo.Torrent]:
    """A v1 .torrent for `files` (paths relative to the torrent's folder; one file and `single` make a
    single-file torrent named `name`), and its parsed form."""
    payload = b"".join(data for _, data in files)
    hashes = b"".join(
        hashlib.sha1(payload[i : i + piece_length]).digest() for i in range(0, len(payload), piece_length)
    )
    info: dict[bytes, bencode.Value] = {b"name": name.encode(), b"piece length": piece_length, b"pieces": hashes}
    if single:
        assert len(files) == 1
        info[b"length"] = len(files[0][1])
    else:
        info[b"files"] = [
            {b"length": len(data), b"path": [p.encode() for p in parts]} for parts, data in files
        ]
    meta: dict[bytes, bencode.Value] = {b"info": info}
    if trackers:
        meta[b"announce"] = trackers[0].encode()
        meta[b"announce-list"] = [[t.encode()] for t in trackers]
    data = bencode.encode(meta)
    return data, metainfo.parse(data)


def write_payload(root: Path, name: str, files: Sequence[FileSpec], *, single: bool = False) -> None:
    """Write the files where a client with download folder `root` keeps them."""
    for parts, data in files:
        path = root / name if single else root.joinpath(name, *parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def assert_payload(root: Path, name: str, files: Sequence[FileSpec], *, single: bool = False) -> None:
    """Every file present and byte for byte equal to what it should be."""
    for parts, data in files:
        path = root / name if single else root.joinpath(name, *parts)
        got = path.read_bytes()
        assert len(got) == len(data), f"{path}: {len(got)} bytes, want {len(data)}"
        assert got == data, f"{path}: content differs"


def random_bytes(rng: random.Random, size: int) -> bytes:
    """Deterministic pseudo-random bytes of any size (randbytes overflows past ~256 MiB at once)."""
    step = 1 << 24
    return b"".join(rng.randbytes(min(step, size - i)) for i in range(0, size, step))


def random_files(seed: int, sizes: Sequence[int]) -> list[FileSpec]:
    rng = random.Random(seed)
    return [((f"dir{i % 3}", f"file{i}.bin"), random_bytes(rng, size)) for i, size in enumerate(sizes)]


def free_port(host: str) -> int:
    """A port that is free on `host` right now (for external clients that need one up front)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


__all__ = ["assert_payload", "build_torrent", "free_port", "random_bytes", "random_files", "write_payload"]


# How long a child process gets to exit after SIGTERM before it is killed.
STOP_DEADLINE = 5.0


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a child we started, by its PID only: SIGTERM, then SIGKILL after STOP_DEADLINE."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.asynccontextmanager
async def reaped(process: trio.Process) -> AsyncIterator[trio.Process]:
    """The body drives a child process (signals, reads); however it ends, the child does not outlive it."""
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
