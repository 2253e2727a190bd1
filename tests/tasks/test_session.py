"""jstorrent downloads from jstorrent: a seeder session and a leecher session in one trio run."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import random
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from jstorrent_cli.config import DEFAULT_CONFIG, KiB
from jstorrent_cli.core import wire
from jstorrent_cli.core.choker import Choker
from jstorrent_cli.core.messages import Have, PeerId, PeerJoined, ReceivedBlock, SendHave
from jstorrent_cli.core.scheduler import Scheduler
from jstorrent_cli.tasks import session
from jstorrent_cli.tasks.peer import PeerLink
from jstorrent_cli.tasks.scheduler_task import SchedulerActor
from tests.conftest import assert_payload, build_torrent, random_files, reaped, write_payload

DEADLINE = 60


@pytest.mark.parametrize(
    ("piece_length", "sizes", "single"),
    [
        (16 * KiB, [3 * 1024 * KiB + 5], True),  # many small pieces, odd last piece
        (256 * KiB, [700 * KiB + 3, 0, 1, 2 * 1024 * KiB, 17], False),  # files cross pieces, an empty file
    ],
)
async def test_leecher_gets_every_byte_from_a_seeder(
    tmp_path: Path, piece_length: int, sizes: list[int], single: bool
) -> None:
    files = random_files(piece_length, sizes)
    if single:
        files = [(("payload.bin",), files[0][1])]
    name = "payload.bin" if single else "set"
    _, torrent = build_torrent(name, files, piece_length, single=single)
    seed_dir, leech_dir = tmp_path / "seed", tmp_path / "leech"
    write_payload(seed_dir, name, files, single=single)
    config = DEFAULT_CONFIG
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(
                    session.run, config, torrent, seed_dir, listen_host="127.0.0.2", port=0,
                    seed_time=math.inf, rng=random.Random(1),
                )
            )
            result = await session.run(
                config, torrent, leech_dir, peers=[("127.0.0.2", port)], listen_host="127.0.0.3", port=0,
                rng=random.Random(2),
            )
            nursery.cancel_scope.cancel()
    assert result.status == "ok", result
    assert result.verified_bytes == torrent.total_length
    assert result.downloaded_bytes >= torrent.total_length
    assert result.peers_used == 1
    assert_payload(leech_dir, name, files, single=single)


async def test_complete_data_is_checked_and_the_session_ends_without_peers(tmp_path: Path) -> None:
    files = random_files(7, [100 * KiB + 1])
    _, torrent = build_torrent("x", files, 16 * KiB)
    write_payload(tmp_path, "x", files)
    with trio.fail_after(DEADLINE):
        result = await session.run(DEFAULT_CONFIG, torrent, tmp_path, listen_host="127.0.0.4", port=0)
    assert result.status == "ok"
    assert result.verified_bytes == torrent.total_length
    assert result.downloaded_bytes == 0


async def test_corrupt_existing_piece_is_downloaded_again(tmp_path: Path) -> None:
    files = random_files(9, [200 * KiB])
    name = "c"
    _, torrent = build_torrent(name, files, 16 * KiB)
    seed_dir, leech_dir = tmp_path / "seed", tmp_path / "leech"
    write_payload(seed_dir, name, files)
    # The leecher has every byte but one flipped: one piece fails the check and comes from the seeder.
    write_payload(leech_dir, name, files)
    target = leech_dir.joinpath(name, *files[0][0])
    data = bytearray(target.read_bytes())
    data[50 * KiB] ^= 0xFF
    target.write_bytes(bytes(data))
    config = dataclasses.replace(DEFAULT_CONFIG)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(session.run, config, torrent, seed_dir, listen_host="127.0.0.2", port=0,
                                  seed_time=math.inf)
            )
            result = await session.run(config, torrent, leech_dir, peers=[("127.0.0.2", port)],
                                       listen_host="127.0.0.3", port=0)
            nursery.cancel_scope.cancel()
    assert result.status == "ok"
    assert result.downloaded_bytes == 16 * KiB  # exactly the one bad piece
    assert_payload(leech_dir, name, files)


async def test_two_seeders_both_serve_and_a_seed_ratio_ends_seeding(tmp_path: Path) -> None:
    files = random_files(11, [3 * 1024 * KiB + 9, 40 * KiB])
    name = "two"
    _, torrent = build_torrent(name, files, 32 * KiB)
    for host in ("a", "b"):
        write_payload(tmp_path / host, name, files)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port_a = await nursery.start(functools.partial(
                session.run, DEFAULT_CONFIG, torrent, tmp_path / "a", listen_host="127.0.0.2", port=0,
                seed_time=math.inf))
            port_b = await nursery.start(functools.partial(
                session.run, DEFAULT_CONFIG, torrent, tmp_path / "b", listen_host="127.0.0.4", port=0,
                seed_time=math.inf))
            # The leecher seeds until it uploaded the whole torrent once, to a last peer that knows only it.
            leecher: list[session.SessionResult] = []

            async def leech(task_status: trio.TaskStatus[int]) -> None:
                leecher.append(await session.run(
                    DEFAULT_CONFIG, torrent, tmp_path / "leech", peers=[("127.0.0.2", port_a), ("127.0.0.4", port_b)],
                    listen_host="127.0.0.3", port=0, seed_ratio=1.0, task_status=task_status))

            port_leech = await nursery.start(leech)
            last = await session.run(DEFAULT_CONFIG, torrent, tmp_path / "last", peers=[("127.0.0.3", port_leech)],
                                     listen_host="127.0.0.5", port=0)
            while not leecher:
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    first = leecher[0]
    assert first.status == "ok" and last.status == "ok"
    assert first.peers_used == 3  # both seeders sent blocks, and the last peer took some
    assert first.uploaded_bytes >= torrent.total_length  # the ratio was reached before it ended
    assert_payload(tmp_path / "leech", name, files)
    assert_payload(tmp_path / "last", name, files)


async def test_cli_get_downloads_and_reports_json(tmp_path: Path) -> None:
    files = random_files(13, [600 * KiB + 1])
    name = "cli"
    data, torrent = build_torrent(name, files, 64 * KiB)
    (tmp_path / "t.torrent").write_bytes(data)
    write_payload(tmp_path / "seed", name, files)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(
                session.run, DEFAULT_CONFIG, torrent, tmp_path / "seed", listen_host="127.0.0.2", port=0,
                seed_time=math.inf))
            done = await trio.run_process(
                [sys.executable, "-m", "jstorrent_cli", "get", str(tmp_path / "t.torrent"), "-d", str(tmp_path / "out"),
                 "--peer", f"127.0.0.2:{port}", "--listen", "127.0.0.3", "--port", "0", "--json"],
                capture_stdout=True, capture_stderr=True, check=False)
            nursery.cancel_scope.cancel()
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert records[-1]["event"] == "result" and records[-1]["verified_bytes"] == torrent.total_length
    assert_payload(tmp_path / "out", name, files)


async def test_cli_get_stops_on_sigint_and_sigterm_with_status_130(tmp_path: Path) -> None:
    files = random_files(17, [100 * KiB])
    data, _ = build_torrent("never", files, 16 * KiB)
    (tmp_path / "t.torrent").write_bytes(data)
    for signum in (signal.SIGINT, signal.SIGTERM):
        with trio.fail_after(DEADLINE):
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "jstorrent_cli", "get", str(tmp_path / "t.torrent"), "-d", str(tmp_path),
                 "--peer", "127.0.0.9:9", "--listen", "127.0.0.3", "--port", "0", "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            async with reaped(process):
                assert process.stdout is not None
                await process.stdout.receive_some(1)  # the first progress record: the session is running
                process.send_signal(signum)
                sent = trio.current_time()
                with trio.fail_after(DEFAULT_CONFIG.interrupt_grace):
                    status = await process.wait()
                assert trio.current_time() - sent < DEFAULT_CONFIG.interrupt_grace
                assert status == 130


async def test_a_peer_that_sends_bad_data_is_banned_by_ip_any_port(tmp_path: Path) -> None:
    files = random_files(19, [64 * KiB])
    _, torrent = build_torrent("lie", files, 16 * KiB)
    liar_ip = "127.0.0.7"
    their_id = b"-XX0000-" + b"l" * 12
    dropped = trio.Event()

    async def liar(stream: trio.SocketStream) -> None:
        proto = wire.PeerProtocol(torrent.info_hash, their_id, torrent.piece_count, torrent.piece_length,
                                  torrent.total_length)
        await stream.send_all(proto.send_handshake())
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                out = b""
                for msg in proto.receive_data(data):
                    if isinstance(msg, wire.Handshake):
                        out += proto.send(wire.HAVE_ALL) + proto.send(wire.UNCHOKE)
                    elif isinstance(msg, wire.Request):
                        out += proto.send(wire.Piece(msg.index, msg.begin, b"\xee" * msg.length))
                if out:
                    await stream.send_all(out)
        except trio.BrokenResourceError:
            pass
        dropped.set()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host=liar_ip)
            liar_port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, liar, listeners)
            port = await nursery.start(functools.partial(
                session.run, DEFAULT_CONFIG, torrent, tmp_path, peers=[(liar_ip, liar_port)],
                listen_host="127.0.0.3", port=0))
            await dropped.wait()  # the leecher hung up on the liar after its first bad piece
            # The liar comes back from another port: refused before any handshake.
            again = await trio.open_tcp_stream("127.0.0.3", port, local_address=liar_ip)
            proto = wire.PeerProtocol(torrent.info_hash, their_id, torrent.piece_count, torrent.piece_length,
                                      torrent.total_length)
            await again.send_all(proto.send_handshake())
            try:
                answer = await again.receive_some(65536)
            except trio.BrokenResourceError:
                answer = b""
            assert answer == b""
            # An honest peer on another address is still welcome.
            honest = await trio.open_tcp_stream("127.0.0.3", port, local_address="127.0.0.8")
            await honest.send_all(wire.PeerProtocol(torrent.info_hash, their_id, torrent.piece_count,
                                                    torrent.piece_length, torrent.total_length).send_handshake())
            assert len(await honest.receive_some(68)) > 0
            nursery.cancel_scope.cancel()


async def test_max_peers_caps_the_connections(tmp_path: Path) -> None:
    files = random_files(23, [2 * 1024 * KiB])
    _, torrent = build_torrent("cap", files, 16 * KiB)
    for d in ("a", "b"):
        write_payload(tmp_path / d, "cap", files)
    capped = dataclasses.replace(DEFAULT_CONFIG, max_peers=1)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            ports = [
                await nursery.start(functools.partial(
                    session.run, DEFAULT_CONFIG, torrent, tmp_path / d, listen_host=host, port=0, seed_time=math.inf))
                for d, host in (("a", "127.0.0.2"), ("b", "127.0.0.4"))
            ]
            result = await session.run(capped, torrent, tmp_path / "leech",
                                       peers=[("127.0.0.2", ports[0]), ("127.0.0.4", ports[1])],
                                       listen_host="127.0.0.3", port=0)
            nursery.cancel_scope.cancel()
    assert result.status == "ok"
    assert result.peers_used == 1  # two seeders offered, one connection allowed
    assert_payload(tmp_path / "leech", "cap", files)


@pytest.mark.parametrize("side", ["download", "upload"])
async def test_rate_limits_hold_the_transfer_to_the_rate(tmp_path: Path, side: str) -> None:
    size = 2 * 1024 * KiB
    rate = 1024 * KiB
    files = random_files(29, [size])
    _, torrent = build_torrent("slow", files, 16 * KiB)
    write_payload(tmp_path / "seed", "slow", files)
    if side == "download":
        limited = dataclasses.replace(DEFAULT_CONFIG, max_download_rate=rate)
    else:
        limited = dataclasses.replace(DEFAULT_CONFIG, max_upload_rate=rate)
    seed_config = limited if side == "upload" else DEFAULT_CONFIG
    leech_config = limited if side == "download" else DEFAULT_CONFIG
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(
                session.run, seed_config, torrent, tmp_path / "seed", listen_host="127.0.0.2", port=0,
                seed_time=math.inf))
            started = trio.current_time()
            result = await session.run(leech_config, torrent, tmp_path / "leech", peers=[("127.0.0.2", port)],
                                       listen_host="127.0.0.3", port=0)
            took = trio.current_time() - started
            nursery.cancel_scope.cancel()
    assert result.status == "ok"
    # A full bucket lets one burst through at once; the rest cannot go faster than the rate.
    assert took >= (size - rate * DEFAULT_CONFIG.rate_limit_burst) / rate
    assert_payload(tmp_path / "leech", "slow", files)


async def test_a_seeding_session_hangs_up_on_another_seeder(tmp_path: Path) -> None:
    files = random_files(31, [40 * KiB])
    _, torrent = build_torrent("seeds", files, 16 * KiB)
    write_payload(tmp_path, "seeds", files)
    closed = trio.Event()
    their_id = b"-XX0000-" + b"s" * 12

    async def other_seeder(stream: trio.SocketStream) -> None:
        proto = wire.PeerProtocol(torrent.info_hash, their_id, torrent.piece_count, torrent.piece_length,
                                  torrent.total_length)
        await stream.send_all(proto.send_handshake())
        with contextlib.suppress(trio.BrokenResourceError):
            while data := await stream.receive_some(65536):
                for msg in proto.receive_data(data):
                    if isinstance(msg, wire.Handshake):
                        await stream.send_all(proto.send(wire.HAVE_ALL))
        closed.set()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.7")
            nursery.start_soon(trio.serve_listeners, other_seeder, listeners)
            other = ("127.0.0.7", listeners[0].socket.getsockname()[1])
            port = await nursery.start(functools.partial(
                session.run, DEFAULT_CONFIG, torrent, tmp_path, peers=[other], listen_host="127.0.0.3", port=0,
                seed_time=math.inf))
            with trio.move_on_after(DEADLINE / 4) as waited:
                await closed.wait()
            assert not waited.cancelled_caught, "the seeder kept a connection to another seeder"
            # Another seeder calls in later (the download long finished): hung up on as well.
            closed = trio.Event()
            incoming = await trio.open_tcp_stream("127.0.0.3", port, local_address="127.0.0.8")
            nursery.start_soon(other_seeder, incoming)
            with trio.move_on_after(DEADLINE / 4) as waited:
                await closed.wait()
            assert not waited.cancelled_caught, "the seeder kept an incoming connection from another seeder"
            nursery.cancel_scope.cancel()


async def test_a_budget_of_one_block_still_finishes(tmp_path: Path) -> None:
    files = random_files(37, [1024 * KiB + 3])
    _, torrent = build_torrent("tiny", files, 64 * KiB)
    write_payload(tmp_path / "seed", "tiny", files)
    tiny = dataclasses.replace(DEFAULT_CONFIG, max_unflushed_bytes=DEFAULT_CONFIG.block_size)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(
                session.run, DEFAULT_CONFIG, torrent, tmp_path / "seed", listen_host="127.0.0.2", port=0,
                seed_time=math.inf))
            result = await session.run(tiny, torrent, tmp_path / "leech", peers=[("127.0.0.2", port)],
                                       listen_host="127.0.0.3", port=0)
            nursery.cancel_scope.cancel()
    assert result.status == "ok"
    assert_payload(tmp_path / "leech", "tiny", files)


class _QuietHooks:
    def on_finished(self) -> None: ...
    def on_ban(self, ip: str, reason: str) -> None: ...
    def seeding(self) -> bool:
        return False
    def on_verified(self, piece: int) -> None: ...


async def test_have_goes_only_to_peers_not_known_to_have_the_piece() -> None:
    config = DEFAULT_CONFIG
    num_pieces, piece_length = 4, 16 * KiB
    scheduler = Scheduler(num_pieces, piece_length, num_pieces * piece_length, config, random.Random(0))
    names = {"has_1": 1, "lacks_1": 2, "seed": 3, "not_joined": 4, "gets_1_later": 5}
    links: dict[PeerId, PeerLink] = {
        peer: PeerLink(peer, f"127.0.0.{peer + 1}", 6881, config, incoming=False, now=0.0)
        for peer in names.values()
    }
    write_send, _write_receive = trio.open_memory_channel[Sequence[ReceivedBlock]](1)
    hash_send, _hash_receive = trio.open_memory_channel[tuple[int, bytes, bool]](1)
    actor = SchedulerActor(scheduler, links, write_send, hash_send, lambda _piece: bytes(20),
                           bytearray(1), _QuietHooks(), Choker(config, random.Random(0)))

    def haves(peer: int) -> list[SendHave]:
        out: list[SendHave] = []
        while True:
            try:
                item = links[peer].outbox_receive.receive_nowait()
            except trio.WouldBlock:
                return out
            if isinstance(item, SendHave):
                out.append(item)

    with trio.fail_after(DEADLINE):
        actor.handle(PeerJoined(names["has_1"], "127.0.0.2", bitfield=bytes([0b0100_0000])), 0.0)
        actor.handle(PeerJoined(names["lacks_1"], "127.0.0.3", bitfield=bytes([0b1010_0000])), 0.0)
        actor.handle(PeerJoined(names["seed"], "127.0.0.4", have_all=True), 0.0)
        actor.handle(PeerJoined(names["gets_1_later"], "127.0.0.6", have_none=True), 0.0)
        actor.handle(Have(names["gets_1_later"], 1), 0.1)  # its HAVE reached us before ours left
        # "not_joined" has a link but the scheduler knows nothing of its pieces yet: it must be told
        actor.route([SendHave(1)])
        got = {name: haves(peer) for name, peer in names.items()}
        assert got == {"has_1": [], "lacks_1": [SendHave(1)], "seed": [], "not_joined": [SendHave(1)],
                       "gets_1_later": []}
        # a piece nobody has reaches every peer but the seed; a HAVE aimed at one peer is never filtered
        actor.route([SendHave(3), SendHave(1, names["has_1"])])
        got = {name: haves(peer) for name, peer in names.items()}
        assert got == {"has_1": [SendHave(3), SendHave(1, names["has_1"])], "lacks_1": [SendHave(3)], "seed": [],
                       "not_joined": [SendHave(3)], "gets_1_later": [SendHave(3)]}
