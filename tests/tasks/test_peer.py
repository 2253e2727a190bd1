"""One peer connection (tasks/peer.py) against a scripted remote peer over trio's in-memory streams."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from jstorrent_cli.config import DEFAULT_CONFIG, Config, KiB
from jstorrent_cli.core import wire
from jstorrent_cli.core.messages import (
    BlocksReceived,
    Fact,
    PeerGone,
    PeerInterested,
    PeerJoined,
    SendHave,
    SendRequests,
)
from jstorrent_cli.tasks.peer import PeerLink, SetChoking, TorrentContext, run_peer

DEADLINE = 10
INFO_HASH = hashlib.sha1(b"torrent").digest()
OUR_ID = b"-JS0100-" + b"o" * 12
THEIR_ID = b"-LT2110-" + b"t" * 12
PIECE_LENGTH = 32 * KiB
NUM_PIECES = 4
TOTAL = PIECE_LENGTH * NUM_PIECES - 100
CONTENT = bytes(range(256)) * (TOTAL // 256 + 1)


class Remote:
    """The other end: a PeerProtocol speaking through a memory stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.proto = wire.PeerProtocol(INFO_HASH, THEIR_ID, NUM_PIECES, PIECE_LENGTH, TOTAL)
        self.messages: list[wire.Message] = []

    async def send(self, *messages: wire.Message) -> None:
        await self.stream.send_all(b"".join(self.proto.send(m) for m in messages))

    async def next_message(self, kind: type | None = None) -> wire.Message:
        while True:
            while self.messages:
                msg = self.messages.pop(0)
                if kind is None or isinstance(msg, kind):
                    return msg
            data = await self.stream.receive_some(65536)
            assert data, "our side closed the connection"
            self.messages.extend(self.proto.receive_data(data))

    async def handshake(self, *, reqq: int | None = 7, first: wire.Message | None = None) -> wire.Handshake:
        await self.stream.send_all(self.proto.send_handshake())
        hs = await self.next_message(wire.Handshake)
        assert isinstance(hs, wire.Handshake)
        await self.send(wire.ExtendedHandshake(v="remote 1.0", reqq=reqq))
        if first is not None:
            await self.send(first)
        return hs


def have_bits(*pieces: int) -> bytearray:
    bits = bytearray((NUM_PIECES + 7) // 8)
    for p in pieces:
        bits[p >> 3] |= 0x80 >> (p & 7)
    return bits


async def read_block(piece: int, begin: int, length: int) -> bytes:
    start = piece * PIECE_LENGTH + begin
    return CONTENT[start : start + length]


@asynccontextmanager
async def connection(
    have: bytearray | None = None, inbox_size: int = 100, *, sockets: bool = False, config: Config = DEFAULT_CONFIG
) -> AsyncIterator[tuple[Remote, PeerLink, trio.MemoryReceiveChannel[Fact]]]:
    """A connection over memory streams, or with `sockets` over a real socket pair."""
    ours: trio.abc.Stream
    theirs: trio.abc.Stream
    if sockets:
        a, b = trio.socket.socketpair()
        ours, theirs = trio.SocketStream(a), trio.SocketStream(b)
    else:
        ours, theirs = trio.testing.memory_stream_pair()
    send, receive = trio.open_memory_channel[Fact](inbox_size)
    ctx = TorrentContext(INFO_HASH, OUR_ID, NUM_PIECES, PIECE_LENGTH, TOTAL, config,
                         have if have is not None else bytearray(1), send, read_block)
    link = PeerLink(1, "127.0.0.9", 6881, config, incoming=False, now=trio.current_time())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_peer, ours, link, ctx)
        yield Remote(theirs), link, receive
        nursery.cancel_scope.cancel()


async def next_fact(receive: trio.MemoryReceiveChannel[Fact], kind: type) -> Fact:
    while True:
        fact = await receive.receive()
        if isinstance(fact, kind):
            return fact


async def test_handshake_advertises_extensions_and_reqq_and_joins_with_the_peers_bitfield() -> None:
    with trio.fail_after(DEADLINE):
        async with connection(have_bits(1)) as (remote, link, facts):
            hs = await remote.handshake(reqq=7, first=wire.Bitfield(bytes(have_bits(0, 3))))
            assert hs.supports_extended and hs.supports_fast and hs.peer_id == OUR_ID
            ext = await remote.next_message(wire.ExtendedHandshake)
            assert isinstance(ext, wire.ExtendedHandshake) and ext.reqq == DEFAULT_CONFIG.advertised_reqq
            ours = await remote.next_message()
            assert ours == wire.Bitfield(bytes(have_bits(1)))  # what we have, as our first message
            joined = await next_fact(facts, PeerJoined)
            assert joined == PeerJoined(1, "127.0.0.9", bitfield=bytes(have_bits(0, 3)), reqq=7, fast=True)
            assert link.client == "remote 1.0"


async def test_blocks_of_one_receive_arrive_as_one_fact_and_rates_count_them() -> None:
    with trio.fail_after(DEADLINE):
        async with connection() as (remote, link, facts):
            await remote.handshake(first=wire.HAVE_ALL)
            assert isinstance(await next_fact(facts, PeerJoined), PeerJoined)
            blocks = [wire.Piece(0, i * 16 * KiB, bytes([i]) * (16 * KiB)) for i in range(2)]
            blocks.append(wire.Piece(3, 0, b"z" * 100))
            await remote.send(*blocks)  # one send_all: one receive on our side
            fact = await next_fact(facts, BlocksReceived)
            assert isinstance(fact, BlocksReceived)
            assert [(p, b, bytes(d)) for p, b, d in fact.blocks] == [(m.index, m.begin, bytes(m.block)) for m in blocks]
            assert link.down.total == 2 * 16 * KiB + 100


async def test_blocks_received_from_a_socket_keep_their_bytes_while_the_receive_buffer_is_reused() -> None:
    # A small first buffer that must grow, and blocks that straddle receives: every block's data must
    # be its own copy, since the buffer is overwritten by the next receive.
    config = dataclasses.replace(DEFAULT_CONFIG, peer_recv_initial=1000, peer_recv_size=40 * KiB)
    rounds = 24
    sent = [
        wire.Piece(piece, begin, bytes([(r * 8 + piece * 2 + begin // (16 * KiB)) % 256]) * (16 * KiB))
        for r in range(rounds) for piece in range(NUM_PIECES - 1) for begin in (0, 16 * KiB)
    ]
    with trio.fail_after(DEADLINE):
        async with connection(sockets=True, config=config, inbox_size=1000) as (remote, link, facts):
            await remote.handshake(first=wire.HAVE_ALL)
            await next_fact(facts, PeerJoined)
            await remote.send(*sent)
            got: list[tuple[int, int, bytes | bytearray | memoryview]] = []
            while len(got) < len(sent):
                fact = await next_fact(facts, BlocksReceived)
                assert isinstance(fact, BlocksReceived)
                got.extend(fact.blocks)
            assert [(p, b, bytes(d)) for p, b, d in got] == [(m.index, m.begin, bytes(m.block)) for m in sent]
            assert link.down.total == len(sent) * 16 * KiB


async def test_a_hostile_length_prefix_ends_the_connection_and_peer_gone_is_reported() -> None:
    with trio.fail_after(DEADLINE):
        async with connection() as (remote, link, facts):
            await remote.handshake(first=wire.HAVE_NONE)
            await remote.stream.send_all(struct.pack(">IB", 0xFFFFFFF0, wire.MSG_BITFIELD))
            assert await next_fact(facts, PeerGone) == PeerGone(1)
            assert link.close_reason is not None and "RemoteProtocolError" in link.close_reason
            while await remote.stream.receive_some(65536):  # what we sent before, then EOF: we closed
                pass


async def test_peer_gone_is_reported_when_the_remote_closes_or_never_handshakes() -> None:
    with trio.fail_after(DEADLINE):
        async with connection() as (remote, _link, facts):
            await remote.stream.aclose()
            assert await next_fact(facts, PeerGone) == PeerGone(1)


async def test_handshake_timeout_ends_a_silent_connection(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEFAULT_CONFIG.handshake_timeout * 2):
        async with connection() as (_remote, link, facts):
            assert await next_fact(facts, PeerGone) == PeerGone(1)
            assert link.close_reason is not None and "TooSlow" in link.close_reason
            assert trio.current_time() >= DEFAULT_CONFIG.handshake_timeout


async def test_peer_gone_reaches_the_inbox_even_when_the_connection_is_cancelled() -> None:
    with trio.fail_after(DEADLINE):
        async with connection() as (remote, link, facts):
            await remote.handshake(first=wire.HAVE_NONE)
            await next_fact(facts, PeerJoined)
            link.close("dropped by the scheduler")
            assert await next_fact(facts, PeerGone) == PeerGone(1)


async def test_requests_and_haves_from_the_outbox_go_out_in_order() -> None:
    with trio.fail_after(DEADLINE):
        async with connection() as (remote, link, facts):
            await remote.handshake(first=wire.HAVE_ALL)
            await next_fact(facts, PeerJoined)
            link.send_nowait(SendRequests(1, ((0, 0, 16 * KiB), (0, 16 * KiB, 16 * KiB))))
            link.send_nowait(SendHave(2))
            got = [await remote.next_message(wire.Request | wire.Have) for _ in range(3)]  # type: ignore[arg-type]
            assert got == [wire.Request(0, 0, 16 * KiB), wire.Request(0, 16 * KiB, 16 * KiB), wire.Have(2)]


async def test_upload_serves_verified_pieces_only_while_unchoked_and_rejects_the_rest() -> None:
    with trio.fail_after(DEADLINE):
        async with connection(have_bits(1)) as (remote, link, facts):
            await remote.handshake(first=wire.HAVE_NONE)
            await remote.send(wire.INTERESTED)
            assert isinstance(await next_fact(facts, PeerInterested), PeerInterested)
            await remote.send(wire.Request(1, 0, 16 * KiB))  # we choke: rejected (fast extension)
            assert await remote.next_message(wire.RejectRequest) == wire.RejectRequest(1, 0, 16 * KiB)
            link.send_nowait(SetChoking(False))
            assert isinstance(await remote.next_message(wire.Unchoke), wire.Unchoke)
            await remote.send(wire.Request(2, 0, 16 * KiB))  # a piece we lack: rejected
            assert await remote.next_message(wire.RejectRequest) == wire.RejectRequest(2, 0, 16 * KiB)
            await remote.send(wire.Request(1, 16 * KiB, 16 * KiB))
            piece = await remote.next_message(wire.Piece)
            assert isinstance(piece, wire.Piece) and (piece.index, piece.begin) == (1, 16 * KiB)
            start = PIECE_LENGTH + 16 * KiB
            assert bytes(piece.block) == CONTENT[start : start + 16 * KiB]
            assert link.up.total == 16 * KiB


async def test_keep_alive_after_the_interval(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEFAULT_CONFIG.keepalive_interval * 3):
        async with connection() as (remote, _link, facts):
            await remote.handshake(first=wire.HAVE_NONE)
            await next_fact(facts, PeerJoined)
            sent_at = trio.current_time()
            assert isinstance(await remote.next_message(wire.KeepAlive), wire.KeepAlive)
            assert trio.current_time() - sent_at >= DEFAULT_CONFIG.keepalive_interval - 1


async def test_a_peer_that_floods_requests_and_never_reads_our_rejects_is_dropped() -> None:
    ours, theirs = trio.testing.lockstep_stream_pair()  # a send waits until the other side reads it
    send, facts = trio.open_memory_channel[Fact](1000)
    ctx = TorrentContext(INFO_HASH, OUR_ID, NUM_PIECES, PIECE_LENGTH, TOTAL, DEFAULT_CONFIG, have_bits(0), send,
                         read_block)
    link = PeerLink(1, "127.0.0.9", 6881, DEFAULT_CONFIG, incoming=False, now=trio.current_time())
    remote = Remote(theirs)
    flood = DEFAULT_CONFIG.upload_queue_per_peer * 2
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_peer, ours, link, ctx)
            seen_bitfield = trio.Event()

            async def read_until_our_bitfield() -> None:
                await remote.next_message(wire.Bitfield)  # our first message; after it, we never read
                seen_bitfield.set()

            nursery.start_soon(read_until_our_bitfield)
            await theirs.send_all(remote.proto.send_handshake())
            await remote.send(wire.ExtendedHandshake(reqq=7), wire.HAVE_NONE)
            await seen_bitfield.wait()
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await remote.send(*[wire.Request(0, 0, 16 * KiB)] * flood)  # we choke them: all rejected
            assert await next_fact(facts, PeerGone) == PeerGone(1)
    assert link.close_reason is not None and "rejects" in link.close_reason


async def test_queued_requests_are_served_in_order_with_the_right_bytes() -> None:
    reads: list[tuple[int, int, int]] = []

    async def counting_read(piece: int, begin: int, length: int) -> bytes:
        reads.append((piece, begin, length))
        return await read_block(piece, begin, length)

    ours, theirs = trio.testing.memory_stream_pair()
    send, facts = trio.open_memory_channel[Fact](100)
    ctx = TorrentContext(INFO_HASH, OUR_ID, NUM_PIECES, PIECE_LENGTH, TOTAL, DEFAULT_CONFIG, have_bits(0, 1, 3), send,
                         counting_read)
    link = PeerLink(1, "127.0.0.9", 6881, DEFAULT_CONFIG, incoming=False, now=trio.current_time())
    remote = Remote(theirs)
    last_begin = (TOTAL - 3 * PIECE_LENGTH) // (16 * KiB) * 16 * KiB
    wanted = [(1, 0, 16 * KiB), (1, 16 * KiB, 16 * KiB), (0, 16 * KiB, 16 * KiB),
              (3, last_begin, TOTAL - 3 * PIECE_LENGTH - last_begin)]
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_peer, ours, link, ctx)
            await remote.handshake(first=wire.HAVE_NONE)
            await next_fact(facts, PeerJoined)
            link.send_nowait(SetChoking(False))
            await remote.next_message(wire.Unchoke)
            await remote.send(*[wire.Request(*ref) for ref in wanted])
            got = [await remote.next_message(wire.Piece) for _ in wanted]
            nursery.cancel_scope.cancel()
    for ref, msg in zip(wanted, got, strict=True):
        assert isinstance(msg, wire.Piece) and (msg.index, msg.begin, len(msg.block)) == ref
        start = ref[0] * PIECE_LENGTH + ref[1]
        assert bytes(msg.block) == CONTENT[start : start + ref[2]]
    assert link.up.total == sum(ref[2] for ref in wanted)
    assert (1, 0, 32 * KiB) in reads  # the two contiguous blocks of piece 1 were one read


async def test_a_routed_connection_gives_the_read_ahead_bytes_first_then_receives_from_its_socket() -> None:
    """The batch router reads a connection's first bytes to route it and hands it on as a ReplayStream: those
    bytes come first, then the connection receives straight from the socket into its reused buffer (not
    through the wrapper, which would allocate per receive)."""
    from jstorrent_cli.tasks.listener import ReplayStream
    from jstorrent_cli.tasks.peer import _Connection

    a, b = trio.socket.socketpair()
    with trio.fail_after(DEADLINE), a, b:
        send, _ = trio.open_memory_channel[Fact](1)
        ctx = TorrentContext(INFO_HASH, OUR_ID, NUM_PIECES, PIECE_LENGTH, TOTAL, DEFAULT_CONFIG, bytearray(1), send,
                             read_block)
        link = PeerLink(1, "127.0.0.9", 6881, DEFAULT_CONFIG, incoming=True, now=trio.current_time())
        conn = _Connection(ReplayStream(b"read ahead", trio.SocketStream(a)), link, ctx)
        assert conn.sock is a
        await trio.SocketStream(b).send_all(b"then the socket")
        assert bytes(await conn.receive()) == b"read ahead"
        assert bytes(await conn.receive()) == b"then the socket"


def test_an_upload_limit_caps_the_blocks_sent_together() -> None:
    """The limiter is charged per batch: under a limit a batch holds a fraction of a second of the rate,
    so a slow limit sends a block at a time instead of 1 MiB after a long silence."""
    from jstorrent_cli.tasks.peer import TokenBucket, upload_batch_blocks

    config = DEFAULT_CONFIG
    assert upload_batch_blocks(config, None) == config.upload_batch_blocks
    slow = TokenBucket(100 * KiB, 1.0, 0.0)
    assert upload_batch_blocks(config, slow) == 1  # 0.25 s of 100 KiB/s is 25 KiB: one block
    fast = TokenBucket(1024 * 1024 * KiB, 1.0, 0.0)
    assert upload_batch_blocks(config, fast) == config.upload_batch_blocks
    assert upload_batch_blocks(config, TokenBucket(1, 1.0, 0.0)) == 1  # never zero
