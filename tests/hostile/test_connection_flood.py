"""Hundreds of connections to our listener: the connection limit holds, descriptors and memory stay
bounded, and the download from the honest seeder completes byte-exact."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path

import trio

from jstorrent_cli.core import wire
from jstorrent_cli.tasks import session
from tests.conftest import assert_payload
from tests.hostile.peers import (
    FAST_CONFIG,
    HONEST_HOST,
    OUR_HOST,
    RecordingDisplay,
    attacker,
    honest_libtorrent_seeder,
    make_swarm,
)

DEADLINE = 40
ATTACKERS = 300
MAX_PEERS = 20
# Descriptors of ours besides one per kept connection: listener, epoll, wakeup pipes, open files,
# worker threads' handles, libtorrent's own. Measured ~10; generous so the test is not flaky.
FD_ALLOWANCE = 40
RSS_ALLOWANCE_KIB = 64 * 1024


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_hundreds_of_connections_to_our_listener(tmp_path: Path) -> None:
    swarm = make_swarm(tmp_path)
    # A long silence timeout: idle attackers keep their slots for the whole test, so the honest
    # seeder gets connected only if the slots we call out on are protected from them.
    config = dataclasses.replace(FAST_CONFIG, max_peers=MAX_PEERS, silence_timeout=DEADLINE * 2)
    incoming_limit = int(MAX_PEERS * config.max_incoming_share)
    handshake = wire.encode_handshake(wire.Handshake(swarm.torrent.info_hash, b"-FL0001-" + b"f" * 12))
    open_now = 0
    connected = 0
    all_in = trio.Event()
    samples: list[tuple[int, int, int]] = []  # (attacker sockets we did not hang up on, fds, rss)

    async def one(port: int, source: str) -> None:
        nonlocal open_now, connected
        try:
            stream = await attacker(OUR_HOST, port, source)
        except OSError:
            connected += 1
            return
        open_now += 1
        connected += 1
        if connected == ATTACKERS:
            all_in.set()
        try:
            await stream.send_all(handshake)
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass
        finally:
            open_now -= 1
            await trio.aclose_forcefully(stream)

    fds_before, rss_before = _fds(), _rss_kib()
    with trio.fail_after(DEADLINE), honest_libtorrent_seeder(swarm, tmp_path, upload_rate=1_000_000) as lt:
        done = trio.Event()
        display = RecordingDisplay()
        display.on_poll = lambda s: done.set() if s.verified_bytes == s.total_bytes else None
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(
                session.run, config, swarm.torrent, tmp_path / "ours", peers=[(HONEST_HOST, lt.port)],
                listen_host=OUR_HOST, port=0, seed_time=math.inf, display=display))
            async with trio.open_nursery() as attackers:
                for i in range(ATTACKERS):
                    attackers.start_soon(one, port, f"127.0.{2 + i // 250}.{1 + i % 250}")
                await all_in.wait()
                await trio.sleep(0.5)  # our accept loop drains the kernel's backlog (~0.2 s for 300)
                for _ in range(5):  # the limit holds while they sit there
                    await trio.sleep(0.1)
                    samples.append((open_now, _fds(), _rss_kib()))
                await done.wait()  # the download finishes while every attacker still holds on
                samples.append((open_now, _fds(), _rss_kib()))
                attackers.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    assert_payload(tmp_path / "ours", swarm.name, swarm.files, single=True)
    assert connected == ATTACKERS
    kept = max(s[0] for s in samples)
    assert kept <= incoming_limit, f"{kept} of {ATTACKERS} hostile connections kept (limit {incoming_limit})"
    # Each kept connection costs two descriptors in this process (ours and the attacker's end).
    fds = max(s[1] for s in samples) - fds_before
    assert fds <= 2 * MAX_PEERS + FD_ALLOWANCE, fds
    rss = max(s[2] for s in samples) - rss_before
    assert rss <= RSS_ALLOWANCE_KIB, f"RSS grew by {rss} KiB"
    print(f"\nconnection flood: kept {kept}/{ATTACKERS}, +{fds} fds, +{rss} KiB RSS")
