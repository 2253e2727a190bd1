"""Announcing to trackers on Trio: HTTP through httpx, UDP over a trio socket, tiers and the announce loop.

Packets and parsing live in core/announce.py; this module only moves bytes and keeps time. Every
exchange is bounded: HTTP by Config.tracker_timeout and Config.max_tracker_response, UDP by the
retransmission schedule of Config.udp_initial_timeout / Config.udp_max_tries, the final `stopped` by
Config.stopped_announce_deadline (or a shorter deadline given to `Announcer.stop`). A tracker's failure
is a TrackerError, logged and retried with backoff; it never ends the download.

Typical use by the session, one Announcer per torrent::

    async with open_http_client(config) as http:
        client = TrackerClient(http, config)
        announcer = Announcer(TrackerTiers(torrent.announce_tiers, random.Random()), client.announce,
                              current_request, deliver_peers, config)
        nursery.start_soon(announcer.run)     # cancelling it sends the final `stopped`
        ...
        announcer.swarm_ran_dry()             # every peer is gone: re-announce sooner
        announcer.download_completed()        # send `completed` now

`deliver_peers` must not block (wrap a bounded trio memory channel's send_nowait and drop on
WouldBlock). All times in TrackerStatus are on trio's clock (`trio.current_time()`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

import trio

from jstorrent_cli import __version__
from jstorrent_cli.config import Config
from jstorrent_cli.core.announce import (
    AnnounceEvent,
    AnnounceRequest,
    AnnounceResponse,
    Peer,
    RandBytes,
    TrackerFailure,
    TransactionMismatch,
    UdpTrackerState,
    build_http_url,
    build_udp_announce,
    build_udp_connect,
    make_transaction_id,
    parse_http_response,
    parse_udp_announce,
    parse_udp_connect,
    parse_udp_url,
    udp_retransmit_schedule,
)
from jstorrent_cli.errors import TrackerError

if TYPE_CHECKING:
    # httpx is imported when an HTTP(S) tracker is first announced to (LazyHttpClient), not here: it
    # costs about 90 ms of start-up (it loads rich, pygments and click for its own command line),
    # which a download from UDP trackers or from --peer addresses only never needs.
    import httpx

log = logging.getLogger("jstorrent.tracker")

_T = TypeVar("_T")
_HTTP_OK = 200

AnnounceFn = Callable[[str, AnnounceRequest], Awaitable[AnnounceResponse]]
PeersCallback = Callable[[tuple[Peer, ...]], None]


# --- HTTP ----------------------------------------------------------------------------------------


def _import_httpx() -> None:
    """Import httpx without its command-line module: httpx/__init__ imports `httpx._main` (which loads
    rich, pygments and click, about 35 ms here) inside `try ... except ImportError`, for the `httpx`
    command we never run. A None entry in sys.modules makes that one import fail (the import system's
    documented way to block a module); the entry is removed again afterwards."""
    if "httpx" in sys.modules:
        return
    blocked = "httpx._main" not in sys.modules
    if blocked:
        sys.modules["httpx._main"] = None  # type: ignore[assignment]
    try:
        import httpx  # noqa: F401
    finally:
        if blocked and sys.modules.get("httpx._main", False) is None:
            del sys.modules["httpx._main"]


def open_http_client(config: Config, *, local_address: str | None = None, trust_env: bool = True) -> httpx.AsyncClient:
    """An httpx client for trackers: our deadlines rule (httpx's own timeouts are off), no retries,
    a bounded redirect chain, and no compressed bodies (so the size cap counts what we keep).

    `local_address` binds outgoing connections to one of our addresses (BEP 7: announce from the
    address we listen on).
    """
    import ssl

    _import_httpx()
    import httpx  # at first use (see the imports at the top)

    class TlsOnFirstUse(httpx.AsyncBaseTransport):
        """The https:// transport, made at the first HTTPS request: making it loads the system's CA
        certificates (about 75 ms on the benchmark machine), which an http:// tracker never needs."""

        def __init__(self) -> None:
            self._inner: httpx.AsyncHTTPTransport | None = None

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if self._inner is None:
                self._inner = httpx.AsyncHTTPTransport(local_address=local_address, retries=0)
            return await self._inner.handle_async_request(request)

        async def aclose(self) -> None:
            if self._inner is not None:
                await self._inner.aclose()

    # Plain http:// goes through a transport whose TLS context trusts no certificate at all: it is
    # never asked for https:// (the mount below takes those, redirects included), and if it were,
    # verification would fail rather than pass.
    no_trust = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    transport = httpx.AsyncHTTPTransport(verify=no_trust, local_address=local_address, retries=0)
    return httpx.AsyncClient(
        transport=transport,
        mounts={"https://": TlsOnFirstUse()},
        timeout=None,
        follow_redirects=True,
        max_redirects=config.tracker_max_redirects,
        trust_env=trust_env,
        headers={"User-Agent": f"jstorrent/{__version__}", "Accept-Encoding": "identity"},
    )


async def _read_capped(client: httpx.AsyncClient, target: str, cap: int) -> tuple[int, bytes]:
    """GET `target`; returns (status, body). More than `cap` bytes is a TrackerError, found out while
    streaming, so a hostile 50 MB body costs at most cap + one network read of memory."""
    async with client.stream("GET", target) as response:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise TrackerError(f"tracker response of {declared} bytes is over the {cap}-byte limit")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise TrackerError(f"tracker sent a {encoding!r}-encoded body although we asked for none")
        body = bytearray()
        async for part in response.aiter_raw():
            body += part
            if len(body) > cap:
                raise TrackerError(f"tracker response is over the {cap}-byte limit")
        return response.status_code, bytes(body)


async def announce_http(client: httpx.AsyncClient, url: str, req: AnnounceRequest, config: Config) -> AnnounceResponse:
    """One HTTP(S) announce, bounded by Config.tracker_timeout. Raises TrackerError on any failure."""
    import httpx  # loaded already by the client's creation (open_http_client); a dictionary look-up

    target = build_http_url(url, req)
    try:
        with trio.fail_after(config.tracker_timeout):
            status, body = await _read_capped(client, target, config.max_tracker_response)
    except trio.TooSlowError:
        raise TrackerError(f"no answer within {config.tracker_timeout:g} s") from None
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as err:  # UnicodeError: a host IDNA refuses
        raise TrackerError(f"HTTP announce failed: {err or type(err).__name__}") from None
    if status != _HTTP_OK:
        try:
            parse_http_response(body, config)
        except TrackerFailure:
            raise  # a `failure reason` says more than the status code
        except TrackerError:
            pass
        raise TrackerError(f"tracker answered HTTP {status}")
    return parse_http_response(body, config)


# --- UDP -----------------------------------------------------------------------------------------


class _Tries:
    """The remaining waits of one exchange's retransmission schedule (shared by connect and announce)."""

    def __init__(self, schedule: Sequence[float]) -> None:
        self.schedule = tuple(schedule)
        self.used = 0

    def next_wait(self) -> float:
        if self.used >= len(self.schedule):
            raise TrackerError(f"no answer after {len(self.schedule)} tries ({sum(self.schedule):g} s)")
        wait = self.schedule[self.used]
        self.used += 1
        return wait


class _ConnectionExpired(Exception):
    """The connection id ran out while we were retransmitting an announce: connect again."""


async def _exchange(
    sock: trio.socket.SocketType,
    packet: bytes,
    parse: Callable[[bytes], _T],
    tries: _Tries,
    config: Config,
    still_valid: Callable[[float], bool] | None = None,
) -> _T:
    """Send `packet` and wait for a reply `parse` accepts, resending on the schedule.

    Replies for another transaction are ignored (logged), never accepted; any other bad reply raises.
    """
    while True:
        if still_valid is not None and not still_valid(trio.current_time()):
            raise _ConnectionExpired
        wait = tries.next_wait()
        await sock.send(packet)
        with trio.move_on_after(wait):
            while True:
                data = await sock.recv(config.udp_max_datagram)
                try:
                    return parse(data)
                except TransactionMismatch as err:
                    log.info("ignored a UDP tracker reply: %s", err)


async def _resolve_udp(host: str, port: int) -> tuple[int, tuple[str, int] | tuple[str, int, int, int]]:
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as err:  # UnicodeError: a host name IDNA refuses
        raise TrackerError(f"cannot resolve {host}: {err}") from None
    if not infos:
        raise TrackerError(f"cannot resolve {host}")
    family, _type, _proto, _name, sockaddr = infos[0]
    return int(family), sockaddr  # type: ignore[return-value]


async def announce_udp(
    url: str,
    req: AnnounceRequest,
    config: Config,
    state: UdpTrackerState,
    *,
    randbytes: RandBytes = secrets.token_bytes,
    local_host: str | None = None,
) -> AnnounceResponse:
    """One UDP announce (BEP 15): connect unless `state` holds a valid connection id, then announce.

    Bounded by the retransmission schedule; silence, refusal or nonsense raise TrackerError.
    `local_host` binds the socket to one of our addresses.
    """
    address = parse_udp_url(url)
    family, sockaddr = await _resolve_udp(address.host, address.port)
    ipv6 = family == trio.socket.AF_INET6
    tries = _Tries(udp_retransmit_schedule(config))
    try:
        with trio.socket.socket(family, trio.socket.SOCK_DGRAM) as sock:
            if local_host is not None:
                await sock.bind((local_host, 0))
            # A connected socket only hears the tracker's address (the kernel drops anyone else's).
            await sock.connect(sockaddr)
            while True:
                connection_id = state.connection_id(trio.current_time())
                if connection_id is None:
                    connect_tid = make_transaction_id(randbytes)
                    connection_id = await _exchange(
                        sock,
                        build_udp_connect(connect_tid),
                        functools.partial(parse_udp_connect, transaction_id=connect_tid),
                        tries,
                        config,
                    )
                    state.connected(connection_id, trio.current_time())
                announce_tid = make_transaction_id(randbytes)
                packet = build_udp_announce(connection_id, announce_tid, req, address.url_data)
                try:
                    return await _exchange(
                        sock,
                        packet,
                        functools.partial(parse_udp_announce, transaction_id=announce_tid, ipv6=ipv6, config=config),
                        tries,
                        config,
                        still_valid=lambda now: not state.needs_connect(now),
                    )
                except _ConnectionExpired:
                    continue
    except TrackerFailure:
        state.forget()  # an error packet may mean the tracker no longer knows our connection id
        raise
    except OSError as err:
        raise TrackerError(f"UDP announce failed: {err.strerror or err}") from None


class LazyHttpClient:
    """open_http_client's client, made (and httpx imported) only when an HTTP tracker is first
    announced to; `aclose` closes it if it was made."""

    def __init__(self, config: Config, *, local_address: str | None = None, trust_env: bool = True) -> None:
        self._config = config
        self._local_address = local_address
        self._trust_env = trust_env
        self._client: httpx.AsyncClient | None = None

    @property
    def opened(self) -> bool:
        return self._client is not None

    def get(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = open_http_client(self._config, local_address=self._local_address,
                                            trust_env=self._trust_env)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class TrackerClient:
    """Announces to one URL of any supported scheme; keeps each UDP tracker's connection id.
    `http` is a client, or a LazyHttpClient that makes one at the first HTTP announce."""

    def __init__(
        self,
        http: httpx.AsyncClient | LazyHttpClient,
        config: Config,
        *,
        randbytes: RandBytes = secrets.token_bytes,
        udp_local_host: str | None = None,
    ) -> None:
        self.http = http
        self.config = config
        self.randbytes = randbytes
        self.udp_local_host = udp_local_host
        self._udp_states: dict[str, UdpTrackerState] = {}

    async def announce(self, url: str, req: AnnounceRequest) -> AnnounceResponse:
        try:
            parts = urlsplit(url)
        except ValueError as err:
            raise TrackerError(f"bad tracker URL {url!r}: {err}") from None
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            http = self.http.get() if isinstance(self.http, LazyHttpClient) else self.http
            return await announce_http(http, url, req, self.config)
        if scheme == "udp":
            netloc = parts.netloc.lower()
            state = self._udp_states.setdefault(netloc, UdpTrackerState(self.config))
            return await announce_udp(
                url, req, self.config, state, randbytes=self.randbytes, local_host=self.udp_local_host
            )
        raise TrackerError(f"unsupported tracker URL scheme {scheme!r}")


# --- tiers and the announce loop (BEP 12) --------------------------------------------------------


class TrackerTiers:
    """BEP 12 order: tiers in sequence, shuffled within a tier, a tracker that answered moves to the front."""

    def __init__(self, tiers: Sequence[Sequence[str]], rng: random.Random) -> None:
        seen: set[str] = set()
        self._tiers: list[list[str]] = []
        for tier in tiers:
            urls = [url for url in dict.fromkeys(tier) if url not in seen]
            seen.update(urls)
            if urls:
                rng.shuffle(urls)
                self._tiers.append(urls)

    @property
    def tiers(self) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(tier) for tier in self._tiers)

    def order(self) -> list[str]:
        """Every URL in the order to try them for the next announce."""
        return [url for tier in self._tiers for url in tier]

    def succeeded(self, url: str) -> None:
        for tier in self._tiers:
            if url in tier:
                tier.remove(url)
                tier.insert(0, url)
                return


@dataclasses.dataclass
class TrackerStatus:
    """What the display and the stall report show about a torrent's trackers (times: trio clock)."""

    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None
    next_announce_at: float | None = None
    peers_received: int = 0  # total over all announces
    last_tracker: str | None = None  # the URL that answered last
    consecutive_failures: int = 0  # announce rounds (every tier tried) that failed in a row
    warning: str | None = None
    seeders: int | None = None
    leechers: int | None = None


class Announcer:
    """The announce loop of one torrent.

    `request()` gives the current numbers (uploaded, downloaded, left, key...); the loop fills in the
    event and the tracker id. `on_peers` gets each response's peers and must not block.
    """

    def __init__(
        self,
        tiers: TrackerTiers,
        announce: AnnounceFn,
        request: Callable[[], AnnounceRequest],
        on_peers: PeersCallback,
        config: Config,
    ) -> None:
        self.tiers = tiers
        self.status = TrackerStatus()
        self._announce = announce
        self._request = request
        self._on_peers = on_peers
        self._config = config
        self._pending_event: AnnounceEvent | None = AnnounceEvent.STARTED
        self._announce_now = True
        self._dry_since: float | None = None
        self._next_regular = 0.0
        self._min_interval = config.min_announce_interval
        self._last_success_at: float | None = None
        self._tracker_ids: dict[str, bytes] = {}
        self._wakeup = trio.Event()
        self._stopped = False
        self._completed = False
        self._round_ended = trio.Event()  # set (and replaced) at the end of every announce round

    # -- calls from the session (never block) --

    def swarm_ran_dry(self) -> None:
        """Every peer is gone: re-announce after Config.dry_swarm_reannounce, not the full interval
        (never sooner than the tracker's min interval after the last announce)."""
        if self._dry_since is None:
            self._dry_since = trio.current_time()
            self._wakeup.set()

    def download_completed(self) -> None:
        """The download finished: tell the tracker now (unless `started` never got through, in which
        case the pending `started` carries left=0 and says as much)."""
        if self._completed:
            return
        self._completed = True
        if self._pending_event is not AnnounceEvent.STARTED:
            self._pending_event = AnnounceEvent.COMPLETED
            self._announce_now = True
            self._wakeup.set()

    # -- the loop --

    def _due(self) -> float:
        if self._announce_now and self.status.consecutive_failures == 0:
            return trio.current_time()
        due = self._next_regular
        if self._dry_since is not None and self.status.consecutive_failures == 0:
            earliest = self._dry_since + self._config.dry_swarm_reannounce
            if self._last_success_at is not None:
                earliest = max(earliest, self._last_success_at + self._min_interval)
            due = min(due, earliest)
        return due

    async def _wait_until_due(self) -> None:
        while True:
            due = self._due()
            self.status.next_announce_at = due
            if trio.current_time() >= due:
                return
            with trio.move_on_at(due):
                await self._wakeup.wait()
            self._wakeup = trio.Event()

    def _request_for(self, url: str, event: AnnounceEvent | None) -> AnnounceRequest:
        return dataclasses.replace(self._request(), event=event, tracker_id=self._tracker_ids.get(url))

    async def round_ended(self) -> None:
        """Return when the announce round under way (or the next one) has ended, answered or not:
        the session waits on this for its `completed` to get through, instead of polling `status`."""
        await self._round_ended.wait()

    async def announce_once(self) -> bool:
        """One announce round: the trackers in BEP 12 order until one answers. True if one did."""
        try:
            return await self._announce_round()
        finally:
            self._round_ended.set()
            self._round_ended = trio.Event()

    async def _announce_round(self) -> bool:
        event = self._pending_event
        self._announce_now = False
        self._dry_since = None
        for url in self.tiers.order():
            sent = self._request_for(url, event)
            try:
                response = await self._announce(url, sent)
            except TrackerError as err:
                log.warning("tracker %s: %s", url, err)
                self.status.last_error = f"{url}: {err}"
                self.status.last_error_at = trio.current_time()
                continue
            self._succeeded(url, sent, response)
            return True
        self.status.consecutive_failures += 1
        backoff = self._config.tracker_retry_initial * 2 ** (self.status.consecutive_failures - 1)
        self._next_regular = trio.current_time() + min(backoff, self._config.tracker_retry_max)
        self.status.next_announce_at = self._next_regular
        if not self.tiers.order():
            self.status.last_error = "no trackers"
        return False

    def _succeeded(self, url: str, sent: AnnounceRequest, response: AnnounceResponse) -> None:
        now = trio.current_time()
        self.tiers.succeeded(url)
        if self._pending_event is sent.event:
            self._pending_event = None
            if sent.event is AnnounceEvent.STARTED and self._completed and sent.left > 0:
                # The download finished while `started` was on its way: say so now.
                self._pending_event = AnnounceEvent.COMPLETED
                self._announce_now = True
        if response.tracker_id is not None:
            self._tracker_ids[url] = response.tracker_id
        self._min_interval = response.min_interval or self._config.min_announce_interval
        self._next_regular = now + response.interval
        self._last_success_at = now
        status = self.status
        status.consecutive_failures = 0
        status.next_announce_at = self._next_regular
        status.last_success_at = now
        status.last_tracker = url
        status.peers_received += len(response.peers)
        status.warning = response.warning
        status.seeders = response.complete
        status.leechers = response.incomplete
        if response.warning:
            log.warning("tracker %s warns: %s", url, response.warning)
        if response.peers_dropped:
            log.info("tracker %s: ignored %d peer entries", url, response.peers_dropped)
        if response.peers:
            self._on_peers(response.peers)

    async def run(self) -> None:
        """Announce forever (started first, then on the interval); cancelling it sends `stopped`."""
        try:
            while True:
                await self._wait_until_due()
                await self.announce_once()
        finally:
            await self.stop()

    async def stop(self, deadline: float | None = None) -> bool:
        """The final `stopped` announce to the tracker that last answered, shielded from cancellation
        and bounded by `deadline` seconds (default Config.stopped_announce_deadline). True if it got
        through. The bound is an argument because a caller's own deadline cannot reach through the
        shield: the session passes a shorter one when a Ctrl-C leaves little time."""
        if self._stopped or self.status.last_tracker is None:
            return False
        self._stopped = True
        url = self.status.last_tracker
        bound = self._config.stopped_announce_deadline if deadline is None else deadline
        with trio.move_on_after(bound) as scope:
            scope.shield = True
            try:
                await self._announce(url, self._request_for(url, AnnounceEvent.STOPPED))
            except TrackerError as err:
                log.info("stopped announce to %s failed: %s", url, err)
                return False
            return True
        log.info("stopped announce to %s: no answer within the deadline", url)
        return False
