"""One peer connection: handshake, a reader, a writer and an uploader, on one Trio stream.

`run_peer(stream, link, ctx)` owns the connection until it ends, for whatever reason, and always
reports `PeerGone` to the scheduler in its `finally` (bounded by Config.peer_gone_deadline, so a
shutting-down session never hangs on it).

* Handshake (bounded by Config.handshake_timeout): ours with the extension (BEP 10) and fast (BEP 6)
  bits, theirs checked by `wire.PeerProtocol`; then our extended handshake advertising
  `reqq = Config.advertised_reqq` and our bitfield (HAVE ALL / HAVE NONE when fast allows).
* Reader: a receive (from a socket: `recv_into` our own reused buffer, which grows while receives
  fill it; the decoder copies the blocks out once) -> `PeerProtocol.receive_data` -> facts, awaited
  into the scheduler's bounded inbox (the only waiting edge). Every PIECE message of one receive
  goes into one BlocksReceived.
  `PeerJoined` is sent at the first message that is not the extended handshake, carrying the
  bitfield when that message is one, and the peer's `reqq` when its extended handshake came first.
  Download bytes are counted here, where they leave the socket. No byte for
  Config.silence_timeout ends the connection.
* Writer: the outbox (commands routed by the scheduler task, plus `SetChoking` from the choker) ->
  bytes -> socket, everything queued coalesced into one send; a keep-alive after
  Config.keepalive_interval of nothing to send.
* Uploader: REQUESTs for pieces we have verified, while we do not choke the peer, go into a bounded
  queue (Config.upload_queue_per_peer) served from `ctx.read_block`; requests we cannot serve are
  rejected (fast extension) or ignored. A request over the block size is a protocol error
  (PeerProtocol drops the connection). Upload bytes are counted where they go into the socket.

A peer's RemoteProtocolError, a broken socket or a timeout cost only this connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TypeAlias

import trio

from jstorrent_cli import __version__
from jstorrent_cli.config import Config
from jstorrent_cli.core import wire
from jstorrent_cli.core.messages import (
    AllowedFast,
    BlockRef,
    BlocksReceived,
    Choked,
    Command,
    Fact,
    Have,
    PeerGone,
    PeerId,
    PeerInterested,
    PeerJoined,
    PeerNotInterested,
    ReceivedBlock,
    RequestRejected,
    SendCancels,
    SendHave,
    SendInterested,
    SendNotInterested,
    SendRequests,
    Unchoked,
)
from jstorrent_cli.errors import RemoteProtocolError, StorageError
from jstorrent_cli.tasks.listener import ReplayStream

log = logging.getLogger("jstorrent.peer")


@dataclasses.dataclass(frozen=True, slots=True)
class SetChoking:
    """From the choker: choke (True) or unchoke (False) this peer."""

    choke: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ClosePeer:
    """Close the connection after sending what is queued before this."""

    reason: str


Outgoing: TypeAlias = Command | SetChoking | ClosePeer


class RateMeter:
    """Bytes counted as they pass, and a rate smoothed over about `window` seconds (trio clock)."""

    __slots__ = ("_last_t", "_last_total", "rate", "total", "window")

    def __init__(self, window: float, now: float) -> None:
        self.window = window
        self.total = 0
        self.rate = 0.0
        self._last_total = 0
        self._last_t = now

    def add(self, n: int) -> None:
        self.total += n

    def sample(self, now: float) -> float:
        """Update and return the smoothed rate (call it now and then, e.g. on every tick)."""
        dt = now - self._last_t
        if dt <= 0:
            return self.rate
        instant = (self.total - self._last_total) / dt
        weight = 1.0 - math.exp(-dt / self.window)
        self.rate += (instant - self.rate) * weight
        self._last_total = self.total
        self._last_t = now
        return self.rate


class TokenBucket:
    """A rate limit shared by connections: `await take(n)` returns once n bytes fit the rate.

    Tokens refill at `rate` bytes/s up to `rate x burst` seconds' worth; a taker may drive the
    balance negative and then sleeps off its own debt, so concurrent takers queue fairly.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0:
            raise ValueError("a token bucket needs a positive rate")
        self.rate = rate
        self.capacity = rate * burst
        self.tokens = self.capacity
        self._last = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now

    async def take(self, n: int) -> None:
        self._refill(trio.current_time())
        self.tokens -= n
        if self.tokens < 0:
            await trio.sleep(-self.tokens / self.rate)


def upload_batch_blocks(config: Config, limit: TokenBucket | None) -> int:
    """Blocks read and sent together: Config.upload_batch_blocks, or under an upload limit at most
    Config.upload_rate_batch_window seconds of its rate (at least one block)."""
    if limit is None:
        return config.upload_batch_blocks
    return max(1, min(config.upload_batch_blocks,
                      int(limit.rate * config.upload_rate_batch_window) // config.block_size))


@dataclasses.dataclass(frozen=True, slots=True)
class TorrentContext:
    """What every connection of one torrent shares (the session owns it).

    `have` is our verified-pieces bitfield in BEP 3 order; the scheduler task updates it in place.
    `read_block(piece, begin, length)` reads verified data for uploading.
    """

    info_hash: bytes
    our_peer_id: bytes
    num_pieces: int
    piece_length: int
    total_length: int
    config: Config
    have: bytearray
    inbox: trio.MemorySendChannel[Fact]
    read_block: Callable[[int, int, int], Awaitable[bytes]]
    upload_limit: TokenBucket | None = None  # --max-upload-limit, shared by every connection
    download_limit: TokenBucket | None = None  # --max-download-limit, charged when requests go out

    def has_piece(self, index: int) -> bool:
        return bool(self.have[index >> 3] & (0x80 >> (index & 7)))

    def has_all(self) -> bool:
        return all(self.has_piece(i) for i in range(self.num_pieces))


class PeerLink:
    """The session's handle of one connection: its outbox, its cancel scope, its counters."""

    def __init__(self, peer: PeerId, ip: str, port: int, config: Config, *, incoming: bool, now: float) -> None:
        self.peer = peer
        self.ip = ip
        self.port = port
        self.incoming = incoming
        self.outbox, self.outbox_receive = trio.open_memory_channel[Outgoing](config.peer_outbox_capacity)
        self.cancel_scope = trio.CancelScope()
        self.down = RateMeter(config.rate_smoothing, now)
        self.up = RateMeter(config.rate_smoothing, now)
        self.handshaken = False
        self.joined = False
        self.client: str | None = None
        self.am_choking = True
        self.peer_interested = False
        self.close_reason: str | None = None
        # The most upload requests this peer ever had queued (bounded by Config.upload_queue_per_peer).
        self.upload_queue_peak = 0

    def send_nowait(self, item: Outgoing) -> bool:
        """Queue an item for the writer; a full or closed outbox closes the connection (False)."""
        try:
            self.outbox.send_nowait(item)
        except trio.WouldBlock:
            self.close("outbox full (the peer stopped reading)")
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def close(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self.cancel_scope.cancel()

    def __repr__(self) -> str:
        return f"PeerLink({self.peer!r}, {self.ip}:{self.port})"


class _Wake:
    """A level-triggered wakeup: `set()` never blocks; `wait()` returns once per set."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


class _Connection:
    def __init__(self, stream: trio.abc.Stream, link: PeerLink, ctx: TorrentContext) -> None:
        self.stream = stream
        self.link = link
        self.ctx = ctx
        self.config = ctx.config
        self.proto = wire.PeerProtocol(
            ctx.info_hash, ctx.our_peer_id, ctx.num_pieces, ctx.piece_length, ctx.total_length, ctx.config
        )
        self.send_lock = trio.StrictFIFOLock()
        self.pending: list[wire.Message] = []  # decoded during the handshake, not yet processed
        self.reqq: int | None = None
        self.queued: dict[BlockRef, None] = {}  # upload requests, oldest first
        self.rejects: list[BlockRef] = []
        self.upload_wake = _Wake()
        # A socket is received into a buffer of our own, reused: the decoder copies the blocks out of
        # it once (one bytes per run of blocks), so no receive buffer stays pinned by the blocks waiting
        # for the writer. It starts small and doubles while receives fill it, up to Config.peer_recv_size.
        # A connection the router read ahead on (tasks/listener.py, a batch's one port): its bytes come
        # first, then the socket itself.
        self.head = b""
        raw = stream
        if isinstance(stream, ReplayStream):
            self.head = stream.take_head()
            raw = stream.stream
        self.sock = raw.socket if isinstance(raw, trio.SocketStream) else None
        self.recv_buffer = bytearray(min(self.config.peer_recv_initial, self.config.peer_recv_size))

    # -- sending --

    async def send(self, data: bytes) -> None:
        async with self.send_lock:
            await self.stream.send_all(data)

    async def receive(self) -> bytes | bytearray | memoryview:
        """The next bytes from the peer. From a socket, a view of our receive buffer, valid until
        the next call (the decoder copies what it keeps); from any other stream, its own bytes."""
        if self.head:
            head, self.head = self.head, b""
            return head
        if self.sock is None:
            data = await self.stream.receive_some(self.config.peer_recv_size)
            if not data:
                raise trio.BrokenResourceError("the peer closed the connection")
            return data
        buffer = self.recv_buffer
        size = await self.sock.recv_into(buffer)
        if not size:
            raise trio.BrokenResourceError("the peer closed the connection")
        if size == len(buffer) and size < self.config.peer_recv_size:
            # Full: more was waiting. The next receive goes into a larger buffer (this one stays
            # valid for the caller).
            self.recv_buffer = bytearray(min(2 * size, self.config.peer_recv_size))
        return memoryview(buffer)[:size]

    # -- handshake --

    async def handshake(self) -> None:
        proto = self.proto
        with trio.fail_after(self.config.handshake_timeout):
            await self.send(proto.send_handshake())
            while not proto.handshake_received:
                messages = proto.receive_data(await self.receive())
                self.pending.extend(m for m in messages if not isinstance(m, wire.Handshake))
        self.link.handshaken = True
        out = bytearray()
        if proto.extended:
            out += proto.send(
                wire.ExtendedHandshake(v=f"jstorrent {__version__}", reqq=self.config.advertised_reqq)
            )
        ctx = self.ctx
        if proto.fast and ctx.has_all():
            out += proto.send(wire.HAVE_ALL)
        elif proto.fast and not any(ctx.have):
            out += proto.send(wire.HAVE_NONE)
        elif any(ctx.have):
            out += proto.send(wire.Bitfield(bytes(ctx.have)))
        if out:
            await self.send(bytes(out))

    # -- reader --

    async def reader(self) -> None:
        await self.process(self.pending)
        self.pending = []
        proto = self.proto
        silence = self.config.silence_timeout
        while True:
            data: bytes | bytearray | memoryview = b""
            with trio.move_on_after(silence):
                data = await self.receive()
            if not data:
                raise trio.TooSlowError(f"nothing received for {silence:.0f} s")
            await self.process(proto.receive_data(data))

    async def join(self, first: wire.Message | None) -> None:
        link = self.link
        link.joined = True
        fact = PeerJoined(
            link.peer,
            link.ip,
            bitfield=bytes(first.bits) if isinstance(first, wire.Bitfield) else b"",
            have_all=isinstance(first, wire.HaveAll),
            have_none=isinstance(first, wire.HaveNone),
            reqq=self.reqq,
            fast=self.proto.fast,
        )
        await self.ctx.inbox.send(fact)

    async def process(self, messages: list[wire.Message]) -> None:
        inbox = self.ctx.inbox
        link = self.link
        peer = link.peer
        blocks: list[ReceivedBlock] = []
        for msg in messages:
            if isinstance(msg, wire.Piece):
                blocks.append((msg.index, msg.begin, msg.block))
                link.down.add(len(msg.block))
                continue
            if isinstance(msg, wire.ExtendedHandshake):
                self.reqq = msg.reqq
                link.client = msg.v
                continue
            if isinstance(msg, wire.KeepAlive | wire.Port | wire.Extended | wire.SuggestPiece):
                continue
            if blocks:
                await inbox.send(BlocksReceived(peer, tuple(blocks)))
                blocks = []
            if not link.joined:
                if isinstance(msg, wire.Bitfield | wire.HaveAll | wire.HaveNone):
                    await self.join(msg)
                    continue
                await self.join(None)
            fact: Fact | None = None
            if isinstance(msg, wire.Have):
                fact = Have(peer, msg.index)
            elif isinstance(msg, wire.Choke):
                fact = Choked(peer)
            elif isinstance(msg, wire.Unchoke):
                fact = Unchoked(peer)
            elif isinstance(msg, wire.Interested):
                link.peer_interested = True
                fact = PeerInterested(peer)
            elif isinstance(msg, wire.NotInterested):
                link.peer_interested = False
                fact = PeerNotInterested(peer)
            elif isinstance(msg, wire.RejectRequest):
                fact = RequestRejected(peer, msg.index, msg.begin, msg.length)
            elif isinstance(msg, wire.AllowedFast):
                fact = AllowedFast(peer, msg.index)
            elif isinstance(msg, wire.Request):
                self.on_request((msg.index, msg.begin, msg.length))
            elif isinstance(msg, wire.Cancel):
                self.queued.pop((msg.index, msg.begin, msg.length), None)
            elif isinstance(msg, wire.Bitfield | wire.HaveAll | wire.HaveNone):  # pragma: no cover
                raise RemoteProtocolError("bitfield after the first message")  # PeerProtocol checks first
            if fact is not None:
                await inbox.send(fact)
        if blocks:
            await inbox.send(BlocksReceived(peer, tuple(blocks)))

    # -- uploading --

    def on_request(self, ref: BlockRef) -> None:
        if (
            self.proto.am_choking
            or not self.ctx.has_piece(ref[0])
            or len(self.queued) >= self.config.upload_queue_per_peer
        ):
            if self.proto.fast:
                if len(self.rejects) >= self.config.upload_queue_per_peer:
                    raise RemoteProtocolError("requests keep coming faster than it reads our rejects")
                self.rejects.append(ref)
                self.upload_wake.set()
            return
        self.queued[ref] = None
        if len(self.queued) > self.link.upload_queue_peak:
            self.link.upload_queue_peak = len(self.queued)
        self.upload_wake.set()

    async def uploader(self) -> None:
        proto = self.proto
        while True:
            while not self.queued and not self.rejects:
                await self.upload_wake.wait()
            if self.rejects:
                rejects, self.rejects = self.rejects, []
                await self.send(bytes(proto.send_block_refs(wire.MSG_REJECT_REQUEST, rejects)))
            if not self.queued:
                continue
            batch: list[BlockRef] = []
            most = upload_batch_blocks(self.config, self.ctx.upload_limit)
            while self.queued and len(batch) < most:
                ref = next(iter(self.queued))
                del self.queued[ref]
                batch.append(ref)
            size = sum(ref[2] for ref in batch)
            if self.ctx.upload_limit is not None:
                await self.ctx.upload_limit.take(size)
            data = await self.read_batch(batch)
            if proto.am_choking:  # choked while reading: these are dropped like the rest of the queue
                if proto.fast:
                    self.rejects.extend(batch)
                continue
            out = bytearray()
            for (piece, begin, length), block in zip(batch, data, strict=True):
                out += proto.send_piece_header(piece, begin, length)
                out += block
            async with self.send_lock:
                await self.stream.send_all(out)
            self.link.up.add(size)

    async def read_batch(self, batch: list[BlockRef]) -> list[bytes | memoryview]:
        """The blocks of a batch, in order. Contiguous requests in one piece (the usual case) are
        read as one range, one thread hop per run; the runs are read at once."""
        runs: list[list[BlockRef]] = []
        for ref in batch:
            last = runs[-1][-1] if runs else None
            if last is not None and ref[0] == last[0] and ref[1] == last[1] + last[2]:
                runs[-1].append(ref)
            else:
                runs.append([ref])
        data: list[bytes | memoryview] = [b""] * len(batch)
        starts = [0]
        for run in runs:
            starts.append(starts[-1] + len(run))

        async def read(k: int) -> None:
            run = runs[k]
            piece, begin = run[0][0], run[0][1]
            whole = memoryview(await self.ctx.read_block(piece, begin, sum(ref[2] for ref in run)))
            for i, ref in enumerate(run):
                offset = ref[1] - begin
                data[starts[k] + i] = whole[offset : offset + ref[2]]

        if len(runs) == 1:
            await read(0)
            return data
        async with trio.open_nursery() as nursery:
            for k in range(len(runs)):
                nursery.start_soon(read, k)
        return data

    def choke(self, choke: bool) -> bytes:
        proto = self.proto
        if choke == proto.am_choking:
            return b""
        self.link.am_choking = choke
        if not choke:
            return proto.send(wire.UNCHOKE)
        out = proto.send(wire.CHOKE)
        if proto.fast:  # BEP 6: choking rejects every queued request
            self.rejects.extend(self.queued)
            self.upload_wake.set()
        self.queued.clear()
        return out

    # -- writer --

    def encode(self, item: Outgoing) -> bytes | bytearray:
        proto = self.proto
        if isinstance(item, SendRequests):
            return proto.send_block_refs(wire.MSG_REQUEST, item.requests)
        if isinstance(item, SendCancels):
            return proto.send_block_refs(wire.MSG_CANCEL, item.cancels)
        if isinstance(item, SendHave):
            return proto.send(wire.Have(item.piece))
        if isinstance(item, SendInterested):
            return proto.send(wire.INTERESTED) if not proto.am_interested else b""
        if isinstance(item, SendNotInterested):
            return proto.send(wire.NOT_INTERESTED) if proto.am_interested else b""
        if isinstance(item, SetChoking):
            return self.choke(item.choke)
        return b""

    async def writer(self) -> None:
        receive = self.link.outbox_receive
        keepalive = self.config.keepalive_interval
        while True:
            items: list[Outgoing] = []
            with trio.move_on_after(keepalive):
                items.append(await receive.receive())
            if not items:
                await self.send(self.proto.send(wire.KEEP_ALIVE))
                continue
            while True:
                try:
                    items.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            limit = self.ctx.download_limit
            if limit is not None:
                requested = sum(ref[2] for item in items if isinstance(item, SendRequests) for ref in item.requests)
                if requested:
                    await limit.take(requested)
            out = bytearray()
            for item in items:
                if isinstance(item, ClosePeer):
                    if out:
                        await self.send(bytes(out))
                    self.link.close(item.reason)
                    return
                out += self.encode(item)
            if out:
                await self.send(bytes(out))


# What ends a connection without ending anything else: the peer's faults, its socket, its silence.
_CONNECTION_ERRORS = (RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                      OSError)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


async def run_peer(stream: trio.abc.Stream, link: PeerLink, ctx: TorrentContext) -> None:
    """Run one connection until it ends; never raises for the peer's faults. Sends PeerGone last."""
    conn = _Connection(stream, link, ctx)
    try:
        with link.cancel_scope:
            await conn.handshake()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.writer)
                nursery.start_soon(conn.uploader)
                await conn.reader()
    except* _CONNECTION_ERRORS as group:
        err = _first_leaf(group)
        link.close_reason = link.close_reason or f"{type(err).__name__}: {err}"
        log.debug("peer %s:%s closed: %s", link.ip, link.port, link.close_reason)
    except* StorageError as group:  # reading a block to upload failed: drop this peer, not the session
        link.close_reason = f"upload read failed: {_first_leaf(group)}"
        log.warning("peer %s:%s: %s", link.ip, link.port, link.close_reason)
    finally:
        link.outbox_receive.close()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(ctx.config.peer_gone_deadline):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await ctx.inbox.send(PeerGone(link.peer))
            await trio.aclose_forcefully(stream)
