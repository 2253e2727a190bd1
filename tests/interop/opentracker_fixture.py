"""Run Debian's opentracker on loopback for interop tests.

Import it as `tests.interop.opentracker_fixture`, or load it as a plugin
(`pytest_plugins = ["tests.interop.opentracker_fixture"]`) to get the `opentracker_factory` fixture.

    def test_x(opentracker_factory):
        tracker = opentracker_factory([info_hash])   # started, answering on HTTP and UDP
        tracker.http_url, tracker.udp_url

Debian builds opentracker in whitelist mode ("private" tracker): it answers "Requested download is
not authorized" for any info hash not in its whitelist, so the hashes a test announces are given at
start. Each tracker runs in its own directory (it tries to chroot there when it can), on a loopback
address of its own (127.0.1.N; libtorrent caches UDP connection ids per tracker address), and is
stopped by PID when the test ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

OPENTRACKER = shutil.which("opentracker") or "/usr/bin/opentracker"
# How long opentracker may take to start answering, and how long to wait for it to exit.
STARTUP_DEADLINE = 10.0
SHUTDOWN_DEADLINE = 5.0
# Pause between readiness probes while it starts (it binds within milliseconds).
PROBE_INTERVAL = 0.02
# BEP 15 connect request: protocol id, action 0, a transaction id.
_UDP_CONNECT = struct.pack(">QII", 0x41727101980, 0, 0x5EED)


# Each tracker gets a loopback address of its own, 127.0.1.1 upward (peers use 127.0.0.x). libtorrent
# caches UDP tracker connection ids per tracker IP address for the whole process (about a minute), so a
# second opentracker on the same address would be sent the first one's id and answer with an error.
_TRACKER_HOSTS = (f"127.0.1.{n}" for n in itertools.cycle(range(1, 255)))


def next_tracker_host() -> str:
    """A loopback address no other tracker in this test process used recently."""
    return next(_TRACKER_HOSTS)


def opentracker_installed() -> bool:
    return os.access(OPENTRACKER, os.X_OK)


def require_opentracker() -> None:
    """Skip the calling test when opentracker is not installed (`.ci/setup --test` installs it)."""
    if not opentracker_installed():
        pytest.skip(f"opentracker is not installed ({OPENTRACKER}); `.ci/setup --test` installs it")


def free_port(kind: socket.SocketKind, host: str = "127.0.0.1") -> int:
    """A port the kernel just gave out and took back: free now, very likely still free in a moment."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True)
class OpenTracker:
    host: str
    http_port: int
    udp_port: int
    pid: int
    workdir: Path

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}/announce"

    @property
    def udp_url(self) -> str:
        return f"udp://{self.host}:{self.udp_port}/announce"

    def log(self) -> str:
        return (self.workdir / "opentracker.log").read_text(errors="replace")


def _answers_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_INTERVAL * 10):
            return True
    except OSError:
        return False


def _answers_udp(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(PROBE_INTERVAL * 10)
        try:
            sock.sendto(_UDP_CONNECT, (host, port))
            reply, _ = sock.recvfrom(64)
        except OSError:
            return False
    return len(reply) >= 16 and struct.unpack_from(">II", reply) == (0, 0x5EED)


@contextlib.contextmanager
def running_opentracker(workdir: Path, info_hashes: Iterable[bytes], host: str | None = None,
                        ports: tuple[int, int] | None = None) -> Iterator[OpenTracker]:
    """Start opentracker on `host` with a free TCP and a free UDP port, whitelisting `info_hashes`.

    `host` defaults to a loopback address of its own (see next_tracker_host); pass "127.0.0.1" to
    share the usual one. `ports` (HTTP, UDP) restarts a tracker where a stopped one was.

    Yields once both ports answer (UDP checked with a real BEP 15 connect on `host`); stops it by
    PID on the way out, whatever happened.
    """
    host = host or next_tracker_host()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)  # it may drop to `nobody` after chrooting here and must still read the list
    whitelist = workdir / "whitelist.txt"
    whitelist.write_text("".join(f"{h.hex()}\n" for h in info_hashes))
    whitelist.chmod(0o644)
    http_port, udp_port = ports or (free_port(socket.SOCK_STREAM, host), free_port(socket.SOCK_DGRAM, host))
    command = [OPENTRACKER, "-i", host, "-p", str(http_port), "-P", str(udp_port)]
    # The whitelist path is relative: inside the chroot (when root) and in the cwd (otherwise) alike.
    command += ["-d", str(workdir), "-w", whitelist.name]
    with (workdir / "opentracker.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    tracker = OpenTracker(host, http_port, udp_port, process.pid, workdir)
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while not (_answers_tcp(host, http_port) and _answers_udp(host, udp_port)):
            if process.poll() is not None:
                raise RuntimeError(f"opentracker exited with {process.returncode}: {tracker.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"opentracker did not answer within {STARTUP_DEADLINE} s: {tracker.log()}")
            time.sleep(PROBE_INTERVAL)
        yield tracker
    finally:
        if process.poll() is None:
            os.kill(process.pid, 15)  # SIGTERM, to this PID only
            try:
                process.wait(SHUTDOWN_DEADLINE)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, 9)
                process.wait()


@pytest.fixture
def opentracker_factory(tmp_path: Path) -> Iterator[Callable[[Iterable[bytes]], OpenTracker]]:
    """Start opentrackers (whitelisting the given info hashes); all are stopped after the test."""
    require_opentracker()
    with contextlib.ExitStack() as stack:
        count = 0

        def start(info_hashes: Iterable[bytes]) -> OpenTracker:
            nonlocal count
            count += 1
            return stack.enter_context(running_opentracker(tmp_path / f"opentracker-{count}", info_hashes))

        yield start
