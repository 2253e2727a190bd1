"""Why a download is not moving: every missing wanted piece gets one reason. Sans-IO, time is an argument.

`diagnose(snapshot, now=..., detail=scheduler.piece_detail())` reads a `SchedulerSnapshot` and the
scheduler's `PieceDetail` (what each peer has, its bars and allowed-fast pieces, the block states of the
started pieces) and classifies every wanted piece that is not
verified yet into one `Reason`. The result is a frozen `StallReport`: counts and bytes per reason, the
pieces as compact ranges, the peers behind each reason, the idle peers and why, the buffer and the
trackers, and one plain-English sentence naming the most likely cause and what the user can do.
`report_lines` renders it as plain text (pipes, the stall report; the UI may wrap it in a panel) and
`report_record` as the `--json` record. `StallDetector` decides when a stall starts.

How one piece is classified (the first rule that applies wins)::

    every block written, hash pending               -> WAITING_FOR_HASH
    no block FREE or REQUESTED (received, unwritten) -> WAITING_FOR_BUDGET   (the writer is behind)
    no block FREE, some REQUESTED                    -> RATE_LIMITED when the limiter holds reads back,
                                                        else REQUESTED_SLOW (holders named, with ages)
    some block FREE (or not started):
        no peer connected at all                     -> NO_PEERS
        no connected peer has it                     -> NOBODY_HAS_IT
        every peer that has it chokes us             -> HOLDERS_CHOKE_US     (allowed-fast counts as open)
        budget full, mostly bytes waiting for disk   -> WAITING_FOR_BUDGET
        the download rate limit is active            -> RATE_LIMITED
        budget has room and an unchoking holder has
        a spare slot and may ask for this piece now  -> NOT_YET_REQUESTED    (the scheduler's fault)
        some of its blocks are requested             -> REQUESTED_SLOW       (its own requests are late)
        an unchoking holder timed out on it or
        rejected it, so it is not asked again yet    -> REQUESTED_SLOW
        otherwise (unchoking holders all busy, or
        the budget is full of requests in flight)    -> QUEUED

QUEUED is not in the issue's list: without it, every not-yet-started piece of a healthy download would
have to be called "slow" or "not requested". In a stall its peers are the ones whose requests are not
coming back, and the sentence says so.

The most likely cause: NO_PEERS when no peer is connected; else WAITING_FOR_BUDGET when bytes waiting for
the disk fill the budget; else the reason covering the most missing bytes (ties: the order of `Reason`).

Cost: the per-piece work runs in C over one byte per piece (peer bitfields as big integers, OR/AND per
peer, `bytes.find` for ranges); only started pieces (a few dozen) are looked at one by one in Python, so
an 80,000-piece torrent with 50 peers costs about 10 ms per report.

Without a `PieceDetail` (a caller that only has a snapshot) the classification is estimated from the
snapshot's totals: the report says so (`precise` is False) and lists no piece numbers.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from jstorrent_cli.config import DEFAULT_CONFIG, Config
from jstorrent_cli.core.messages import PeerId
from jstorrent_cli.core.scheduler import ActivePieceDetail, PeerSnapshot, PieceDetail, SchedulerSnapshot
from jstorrent_cli.core.units import format_size

RECORD_SCHEMA = 1  # version of the --json "stall" record (docs/stalls.md); raise it when a field changes meaning


class Reason(enum.Enum):
    """Why one missing wanted piece is not arriving. The order is the tie-break of the most likely cause."""

    NO_PEERS = "no_peers"
    WAITING_FOR_BUDGET = "waiting_for_budget"
    NOBODY_HAS_IT = "nobody_has_it"
    HOLDERS_CHOKE_US = "holders_choke_us"
    REQUESTED_SLOW = "requested_slow"
    RATE_LIMITED = "rate_limited"
    WAITING_FOR_HASH = "waiting_for_hash"
    NOT_YET_REQUESTED = "not_yet_requested"
    QUEUED = "queued"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Reason.NO_PEERS: "no peers at all",
    Reason.WAITING_FOR_BUDGET: "waiting for the disk writer (buffer)",
    Reason.NOBODY_HAS_IT: "no connected peer has it",
    Reason.HOLDERS_CHOKE_US: "every peer that has it chokes us",
    Reason.REQUESTED_SLOW: "requested, not delivered yet (slow or snubbed peer)",
    Reason.RATE_LIMITED: "held back by the download rate limit",
    Reason.WAITING_FOR_HASH: "on disk, waiting for the hash check",
    Reason.NOT_YET_REQUESTED: "not requested although a peer could take it (scheduler bug)",
    Reason.QUEUED: "queued: the peers that have it are busy with other requests",
}
_ORDER = {reason: i for i, reason in enumerate(Reason)}


# --- inputs ----------------------------------------------------------------------------------------


class TrackerLike(Protocol):
    """What the report reads of a tracker status (tasks/tracker.py TrackerStatus has these; times: `now`'s clock)."""

    @property
    def last_error(self) -> str | None: ...
    @property
    def last_error_at(self) -> float | None: ...
    @property
    def last_success_at(self) -> float | None: ...
    @property
    def next_announce_at(self) -> float | None: ...
    @property
    def peers_received(self) -> int: ...
    @property
    def last_tracker(self) -> str | None: ...
    @property
    def seeders(self) -> int | None: ...
    @property
    def leechers(self) -> int | None: ...


# --- the report --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class PeerEntry:
    name: str  # "ip:port" (or the ip and the caller's peer id)
    peer_choking: bool
    snubbed: bool
    outstanding: int
    limit: int
    rate: float  # bytes/s, last window
    request_age: float | None  # s since its oldest request that matters here was sent


@dataclasses.dataclass(frozen=True, slots=True)
class ReasonEntry:
    reason: Reason
    pieces: int
    bytes: int | None  # None when only totals were known (no PieceDetail)
    piece_ranges: tuple[tuple[int, int], ...]  # inclusive ranges, lowest first, capped
    more_ranges: int  # ranges left off
    peers: tuple[PeerEntry, ...]  # capped, most relevant first
    more_peers: int


@dataclasses.dataclass(frozen=True, slots=True)
class IdlePeer:
    name: str
    reason: str  # PeerSnapshot.idle_reason


@dataclasses.dataclass(frozen=True, slots=True)
class TrackerEntry:
    tracker: str | None
    last_error: str | None  # only when the last announce failed
    last_error_age: float | None
    next_announce_in: float | None
    peers_received: int
    seeders: int | None
    leechers: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class StallReport:
    now: float
    stalled_for: float | None  # s without a block, when the caller knows
    precise: bool  # False: estimated from the snapshot's totals (no PieceDetail)
    missing_pieces: int
    missing_bytes: int
    peers_connected: int
    reasons: tuple[ReasonEntry, ...]  # most bytes (pieces) first
    idle_peers: tuple[IdlePeer, ...]
    more_idle_peers: int
    bytes_in_flight: int
    bytes_waiting_for_disk: int
    budget: int
    trackers: tuple[TrackerEntry, ...]
    cause: Reason | None  # None when nothing is missing
    most_likely_cause: str
    # Known peer addresses (--peer, trackers) whose last connection attempt failed: refused, timed out, or
    # closed before the handshake ("ip:port"; at most Config.stall_report_max_peers, then a count).
    unreachable_peers: tuple[str, ...] = ()
    more_unreachable_peers: int = 0

    def count(self, reason: Reason) -> int:
        entry = self.entry(reason)
        return 0 if entry is None else entry.pieces

    def entry(self, reason: Reason) -> ReasonEntry | None:
        for entry in self.reasons:
            if entry.reason is reason:
                return entry
        return None

    def lines(self) -> list[str]:
        return report_lines(self)


# --- classification ------------------------------------------------------------------------------------


def diagnose(
    snapshot: SchedulerSnapshot,
    *,
    now: float,
    trackers: Iterable[TrackerLike] = (),
    rate_limited: bool = False,
    detail: PieceDetail | None = None,
    stalled_for: float | None = None,
    config: Config = DEFAULT_CONFIG,
    names: Mapping[PeerId, str] | None = None,
    unreachable: Sequence[str] = (),
) -> StallReport:
    """Classify every missing wanted piece. `rate_limited`: the download limiter is holding reads back now.
    `detail`: `Scheduler.piece_detail()` (without it the report is estimated from the snapshot's totals).
    `names`: how to call each peer ("ip:port" and its client when known); unnamed ones are "ip (#id)".
    `unreachable`: the known addresses ("ip:port") whose last connection attempt failed."""
    names = names if names is not None else {}
    # The limiter only ever holds requests back: with none out, it holds nothing (its balance is refilled only
    # when a request takes from it, so it can look in debt long after the last one).
    rate_limited = rate_limited and snapshot.bytes_in_flight > 0
    peers = {ps.peer: ps for ps in snapshot.peers}
    budget_full = snapshot.budget_used + config.block_size > snapshot.budget
    disk_full = budget_full and snapshot.bytes_waiting_for_disk >= snapshot.bytes_in_flight
    if detail is None:
        entries, missing_bytes = _estimate(snapshot, peers, rate_limited, budget_full, disk_full, config, names)
    else:
        entries, missing_bytes = _classify(detail, peers, now, rate_limited, budget_full, disk_full, config, names)
    entries.sort(key=lambda e: (-(e.bytes if e.bytes is not None else e.pieces), -e.pieces, _ORDER[e.reason]))
    cause = _pick_cause(entries, peers, disk_full)
    tracker_entries = tuple(_tracker_entry(t, now) for t in trackers)
    idle = [IdlePeer(_peer_name(ps, names), ps.idle_reason) for ps in snapshot.peers if ps.idle_reason is not None]
    cap = config.stall_report_max_peers
    missing = sum(e.pieces for e in entries)
    report = StallReport(
        now=now, stalled_for=stalled_for, precise=detail is not None, missing_pieces=missing,
        missing_bytes=missing_bytes, peers_connected=len(peers), reasons=tuple(entries),
        idle_peers=tuple(idle[:cap]), more_idle_peers=max(0, len(idle) - cap),
        bytes_in_flight=snapshot.bytes_in_flight, bytes_waiting_for_disk=snapshot.bytes_waiting_for_disk,
        budget=snapshot.budget, trackers=tracker_entries, cause=cause, most_likely_cause="",
        unreachable_peers=tuple(unreachable[:cap]), more_unreachable_peers=max(0, len(unreachable) - cap))
    return dataclasses.replace(report, most_likely_cause=_sentence(report))


def _classify(
    detail: PieceDetail,
    peers: Mapping[PeerId, PeerSnapshot],
    now: float,
    rate_limited: bool,
    budget_full: bool,
    disk_full: bool,
    config: Config,
    names: Mapping[PeerId, str],
) -> tuple[list[ReasonEntry], int]:
    n = detail.num_pieces
    ones = int.from_bytes(b"\x01" * n, "big")  # one 0/1 byte per piece as a big integer: OR/AND run in C

    def as_int(data: bytes | bytearray) -> int:
        return int.from_bytes(data, "big")

    def of_pieces(pieces: Iterable[int]) -> int:
        sel = bytearray(n)
        for piece in pieces:
            if 0 <= piece < n:
                sel[piece] = 1
        return as_int(sel)

    has: dict[PeerId, int] = {}
    for pid in peers:
        bitmap = detail.peer_has.get(pid, b"")
        has[pid] = ones if bitmap is None else (as_int(bitmap) if len(bitmap) == n else 0)
    unchoked = [pid for pid, ps in peers.items() if not ps.peer_choking]
    spare_set = {pid for pid in unchoked if peers[pid].outstanding < peers[pid].limit}
    any_has = 0
    for mask in has.values():
        any_has |= mask
    open_has = 0  # pieces some peer lets us request now
    for pid in unchoked:
        open_has |= has[pid]
    for pid, pieces in detail.allowed_fast.items():
        if pid in peers and peers[pid].peer_choking:
            open_has |= has[pid] & of_pieces(pieces)
    spare_has: dict[PeerId, int] = {}
    spare_any = 0
    barred_has: dict[PeerId, int] = {}  # pieces an open peer has but may not be asked for yet (reject, timeout)
    barred_any = 0
    for pid in unchoked:
        bars = detail.barred.get(pid)
        bars_mask = of_pieces(bars) if bars else 0
        if bars_mask:
            barred_has[pid] = has[pid] & bars_mask
            barred_any |= barred_has[pid]
        if pid in spare_set:
            mask = has[pid] & (ones ^ bars_mask) if bars_mask else has[pid]
            spare_has[pid] = mask
            spare_any |= mask

    active = [ap for ap in detail.active if 0 <= ap.piece < n and detail.needed[ap.piece]]
    unstarted = as_int(detail.needed) & (ones ^ of_pieces(ap.piece for ap in active))
    no_peers = not peers

    # Not-started pieces, whole sets at once (free-block rules of the module docstring).
    sets: dict[Reason, int] = {}
    nobody = unstarted & (ones ^ any_has)
    sets[Reason.NO_PEERS if no_peers else Reason.NOBODY_HAS_IT] = nobody
    sets[Reason.HOLDERS_CHOKE_US] = unstarted & any_has & (ones ^ open_has)
    movable = unstarted & open_has
    movable_reason = _movable_reason(rate_limited, budget_full, disk_full)
    if movable_reason is not None and movable_reason is not Reason.QUEUED:
        sets[movable_reason] = movable
    else:
        # With budget room, a spare slot that may ask for the piece means the scheduler forgot it.
        forgotten = movable & spare_any if movable_reason is None else 0
        sets[Reason.NOT_YET_REQUESTED] = forgotten
        waiting = movable & (ones ^ forgotten)
        sets[Reason.REQUESTED_SLOW] = waiting & barred_any  # timed out or rejected: not asked again yet
        sets[Reason.QUEUED] = waiting & (ones ^ barred_any)

    # Started pieces, one by one (few: the scheduler caps new piece starts).
    chosen: dict[Reason, list[int]] = {}
    slow_ages: dict[PeerId, float] = {}
    if active:
        any_b = any_has.to_bytes(n, "big")
        open_b = open_has.to_bytes(n, "big")
        spare_b = spare_any.to_bytes(n, "big")
        barred_b = barred_any.to_bytes(n, "big")
        for ap in active:
            piece = ap.piece
            if ap.free == 0 and ap.requested == 0:
                reason = Reason.WAITING_FOR_HASH if ap.received == 0 else Reason.WAITING_FOR_BUDGET
            elif ap.free == 0:
                reason = Reason.RATE_LIMITED if rate_limited else Reason.REQUESTED_SLOW
                if not rate_limited:
                    for pid, sent in ap.requested_from:
                        slow_ages[pid] = max(slow_ages.get(pid, 0.0), now - sent)
            elif no_peers:
                reason = Reason.NO_PEERS
            elif not any_b[piece]:
                reason = Reason.NOBODY_HAS_IT
            elif not open_b[piece]:
                reason = Reason.HOLDERS_CHOKE_US
            elif movable_reason is not None and movable_reason is not Reason.QUEUED:
                reason = movable_reason
            elif movable_reason is None and spare_b[piece]:
                reason = Reason.NOT_YET_REQUESTED
            elif ap.requested:
                # Its other blocks wait behind busy peers, but its own requests are out: those are late.
                reason = Reason.REQUESTED_SLOW
                for pid, sent in ap.requested_from:
                    slow_ages[pid] = max(slow_ages.get(pid, 0.0), now - sent)
            else:
                reason = Reason.REQUESTED_SLOW if barred_b[piece] else Reason.QUEUED
            chosen.setdefault(reason, []).append(piece)

    # Each peer's oldest outstanding request, in the caller's clock (the snapshot's ages are the scheduler's).
    oldest_sent: dict[PeerId, float] = {}
    for ap in active:
        for pid, sent in ap.requested_from:
            if pid not in oldest_sent or sent < oldest_sent[pid]:
                oldest_sent[pid] = sent
    ages = {pid: now - sent for pid, sent in oldest_sent.items()}

    max_ranges = config.stall_report_max_ranges
    entries: list[ReasonEntry] = []
    last_size = detail.piece_size(n - 1)
    missing_bytes = 0
    for reason in Reason:
        mask = sets.get(reason, 0)
        extra = chosen.get(reason)
        if extra:
            mask |= of_pieces(extra)
        if not mask:
            continue
        sel = mask.to_bytes(n, "big")
        count = sel.count(1)
        size = count * detail.piece_length - (detail.piece_length - last_size if sel[n - 1] else 0)
        missing_bytes += size
        ranges, more = _ranges(sel, max_ranges)
        named = _peers_for(reason, mask, peers, has, spare_has, barred_has, slow_ages, unchoked, ages, names)
        entries.append(ReasonEntry(
            reason=reason, pieces=count, bytes=size, piece_ranges=ranges, more_ranges=more,
            peers=tuple(named[:config.stall_report_max_peers]),
            more_peers=max(0, len(named) - config.stall_report_max_peers)))
    return entries, missing_bytes


def _movable_reason(rate_limited: bool, budget_full: bool, disk_full: bool) -> Reason | None:
    """The reason for a piece some peer would let us request, when it does not depend on that peer."""
    if disk_full:
        return Reason.WAITING_FOR_BUDGET
    if rate_limited:
        return Reason.RATE_LIMITED
    if budget_full:
        return Reason.QUEUED  # the budget is full of requests out: new ones wait for those to come back
    return None


def _peers_for(
    reason: Reason,
    mask: int,
    peers: Mapping[PeerId, PeerSnapshot],
    has: Mapping[PeerId, int],
    spare_has: Mapping[PeerId, int],
    barred_has: Mapping[PeerId, int],
    slow_ages: Mapping[PeerId, float],
    unchoked: list[PeerId],
    ages: Mapping[PeerId, float],
    names: Mapping[PeerId, str],
) -> list[PeerEntry]:
    """The peers behind one reason, most relevant first."""
    if reason is Reason.REQUESTED_SLOW:
        order = sorted(slow_ages, key=lambda pid: -slow_ages[pid])
        named = [_peer_entry(peers[pid], slow_ages[pid], names) for pid in order if pid in peers]
        # then the peers that timed out on (or rejected) these pieces and may not be asked again yet
        named += [_peer_entry(peers[pid], ages.get(pid), names) for pid, m in barred_has.items()
                  if m & mask and pid not in slow_ages]
        return named
    if reason is Reason.HOLDERS_CHOKE_US:
        chosen = [pid for pid, ps in peers.items() if ps.peer_choking and has[pid] & mask]
    elif reason is Reason.NOT_YET_REQUESTED:
        chosen = [pid for pid, m in spare_has.items() if m & mask]
    elif reason is Reason.QUEUED:
        chosen = [pid for pid in unchoked if peers[pid].outstanding and has[pid] & mask]
    elif reason is Reason.RATE_LIMITED:
        chosen = [pid for pid in unchoked if has[pid] & mask]
    else:
        return []
    entries = [_peer_entry(peers[pid], ages.get(pid), names) for pid in chosen]
    entries.sort(key=lambda e: -(e.request_age or 0.0))
    return entries


def _estimate(
    snapshot: SchedulerSnapshot,
    peers: Mapping[PeerId, PeerSnapshot],
    rate_limited: bool,
    budget_full: bool,
    disk_full: bool,
    config: Config,
    names: Mapping[PeerId, str],
) -> tuple[list[ReasonEntry], int]:
    """Without per-piece facts: classify the snapshot's piece counts as whole groups (no piece numbers)."""
    missing = max(0, snapshot.pieces_wanted - snapshot.pieces_verified)
    hashing = min(snapshot.pieces_awaiting_hash, missing)
    requested = min(snapshot.pieces_fully_requested, missing - hashing)
    rest = missing - hashing - requested
    counts: dict[Reason, int] = {Reason.WAITING_FOR_HASH: hashing}
    if requested:
        counts[Reason.RATE_LIMITED if rate_limited else Reason.REQUESTED_SLOW] = requested
    interested = [ps for ps in peers.values() if ps.am_interested]
    if not peers:
        reason = Reason.NO_PEERS
    elif not interested:
        reason = Reason.NOBODY_HAS_IT  # we are interested in every peer that has a piece we need
    elif all(ps.peer_choking for ps in interested):
        reason = Reason.HOLDERS_CHOKE_US
    else:
        reason = _movable_reason(rate_limited, budget_full, disk_full) or Reason.QUEUED
    counts[reason] = counts.get(reason, 0) + rest
    cap = config.stall_report_max_peers
    entries: list[ReasonEntry] = []
    for group, count in counts.items():
        if not count:
            continue
        if group is Reason.HOLDERS_CHOKE_US:
            chosen = interested
        elif group in (Reason.REQUESTED_SLOW, Reason.QUEUED, Reason.RATE_LIMITED):
            chosen = [ps for ps in interested if not ps.peer_choking and ps.outstanding]
        else:
            chosen = []
        named = sorted((_peer_entry(ps, ps.oldest_request_age, names) for ps in chosen),
                       key=lambda e: -(e.request_age or 0.0))
        entries.append(ReasonEntry(reason=group, pieces=count, bytes=None, piece_ranges=(), more_ranges=0,
                                   peers=tuple(named[:cap]), more_peers=max(0, len(named) - cap)))
    return entries, max(0, snapshot.total_bytes - snapshot.done_bytes)


def _pick_cause(entries: list[ReasonEntry], peers: Mapping[PeerId, PeerSnapshot], disk_full: bool) -> Reason | None:
    present = {e.reason for e in entries}
    if not present:
        return None
    if not peers and Reason.NO_PEERS in present:
        return Reason.NO_PEERS
    if disk_full and Reason.WAITING_FOR_BUDGET in present:
        return Reason.WAITING_FOR_BUDGET
    return entries[0].reason  # entries are sorted by bytes, then pieces, then Reason order


# --- small pieces of text -----------------------------------------------------------------------------


def _ranges(sel: bytes, cap: int) -> tuple[tuple[tuple[int, int], ...], int]:
    """Runs of 1 bytes as inclusive (first, last) ranges: at most `cap`, and how many were left off."""
    out: list[tuple[int, int]] = []
    more = 0
    n = len(sel)
    start = sel.find(1)
    while start != -1:
        end = sel.find(0, start)
        if end == -1:
            end = n
        if len(out) < cap:
            out.append((start, end - 1))
        else:
            more += 1
        start = sel.find(1, end)
    return tuple(out), more


def format_ranges(ranges: Iterable[tuple[int, int]], more: int = 0) -> str:
    """((0, 11), (40, 40)) -> '0-11, 40'; '(+N more ranges)' when some were left off."""
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
    if more:
        text += f" (+{more} more range{'s' if more != 1 else ''})"
    return text


def _peer_name(ps: PeerSnapshot, names: Mapping[PeerId, str]) -> str:
    """The caller's name for the peer ("ip:port client"), else its address (and our number for it)."""
    given = names.get(ps.peer)
    if given:
        return given
    peer: Any = ps.peer
    if isinstance(peer, tuple) and len(peer) == 2 and peer[0] == ps.ip:
        return f"{ps.ip}:{peer[1]}"
    if str(peer) == ps.ip:
        return ps.ip
    return f"{ps.ip} (#{peer})"


def _peer_entry(ps: PeerSnapshot, age: float | None, names: Mapping[PeerId, str]) -> PeerEntry:
    return PeerEntry(name=_peer_name(ps, names), peer_choking=ps.peer_choking, snubbed=ps.snubbed,
                     outstanding=ps.outstanding, limit=ps.limit, rate=ps.rate, request_age=age)


def _tracker_entry(status: TrackerLike, now: float) -> TrackerEntry:
    failing = status.last_error is not None and (
        status.last_success_at is None or (status.last_error_at or 0.0) >= status.last_success_at)
    return TrackerEntry(
        tracker=status.last_tracker,
        last_error=status.last_error if failing else None,
        last_error_age=(now - status.last_error_at) if failing and status.last_error_at is not None else None,
        next_announce_in=(max(0.0, status.next_announce_at - now) if status.next_announce_at is not None else None),
        peers_received=status.peers_received, seeders=status.seeders, leechers=status.leechers)


_MINUTE = 60
_HOUR = 3600


def _secs(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    if s < _MINUTE:
        return f"{s}s"
    if s < _HOUR:
        return f"{s // _MINUTE}m{s % _MINUTE:02d}s"
    return f"{s // _HOUR}h{(s % _HOUR) // _MINUTE:02d}m"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _who(entry: ReasonEntry) -> str:
    names = [p.name for p in entry.peers[:2]]
    others = len(entry.peers) - len(names) + entry.more_peers
    text = " and ".join(names) if len(names) < 2 or not others else ", ".join(names)
    if others:
        text += f" and {_plural(others, 'other')}"
    return text


def _tracker_clause(report: StallReport) -> str:
    if not report.trackers:
        if report.unreachable_peers:  # peers were given: asking for them would be wrong
            return "there is no tracker to ask for others"
        return "there is no tracker to ask (give peers with --peer, or use a torrent with trackers)"
    failing = [t for t in report.trackers if t.last_error is not None]
    waits = [t.next_announce_in for t in report.trackers if t.next_announce_in is not None]
    nxt = f"; next announce in {_secs(min(waits))}" if waits else ""
    if len(failing) == len(report.trackers):
        t = failing[0]
        ago = f" {_secs(t.last_error_age)} ago" if t.last_error_age is not None else ""
        return f"the tracker failed{ago}: {t.last_error}{nxt}"
    received = sum(t.peers_received for t in report.trackers)
    seeds = [t.seeders for t in report.trackers if t.seeders is not None]
    seed_text = f", {_plural(max(seeds), 'seed')}" if seeds else ""
    return f"the trackers gave {_plural(received, 'peer')} so far{seed_text}{nxt}"


def _sentence(report: StallReport) -> str:
    cause = report.cause
    if cause is None:
        return "Nothing is missing: every wanted piece is verified."
    entry = report.entry(cause)
    assert entry is not None
    one = entry.pieces == 1
    pieces = "the missing piece" if one else f"the {entry.pieces} missing pieces"
    are = "is" if one else "are"
    them = "it" if one else "them"
    holders = len(entry.peers) + entry.more_peers
    if cause is Reason.NO_PEERS:
        if report.unreachable_peers:
            count = len(report.unreachable_peers) + report.more_unreachable_peers
            names = ", ".join(report.unreachable_peers) + (
                f" and {report.more_unreachable_peers} more" if report.more_unreachable_peers else "")
            who = f"the known peer {names}" if count == 1 else f"none of the {count} known peers ({names})"
            check = ("it runs, is reachable and serves" if count == 1
                     else "they run, are reachable and serve")
            return (f"No peer is connected: {who} could not be reached (connection refused or timed out, or closed "
                    f"before the handshake), and {_tracker_clause(report)}. Check that {check} this torrent; "
                    "jstorrent keeps trying.")
        return (f"No peer is connected and {_tracker_clause(report)}. Check the network and the trackers; "
                "jstorrent keeps announcing and connects as soon as peers are known.")
    if cause is Reason.WAITING_FOR_BUDGET:
        return (f"The disk is behind: {format_size(report.bytes_waiting_for_disk)} received wait to be written and the "
                f"{format_size(report.budget)} buffer is full, so no new requests go out for {pieces}. A faster disk "
                "(or fewer downloads at once) helps; a larger --max-buffer only hides it.")
    if cause is Reason.NOBODY_HAS_IT:
        who = ("The only connected peer does not have" if report.peers_connected == 1
               else f"None of the {report.peers_connected} connected peers has")
        return (f"{who} {pieces}; only a peer that has {them} (a seed) can finish this. Keep it running so new "
                "peers arrive, or find another source for this torrent.")
    if cause is Reason.HOLDERS_CHOKE_US:
        who = "The only peer that has" if holders == 1 else f"All {holders} peers that have"
        verb, they = ("is", "it") if holders == 1 else ("are", "they")
        return (f"{who} {pieces} {verb} choking us; {they} may be busy uploading to others. Waiting usually "
                "helps; more peers (a tracker with more seeds) would too.")
    if cause is Reason.REQUESTED_SLOW:
        first = entry.peers[0] if entry.peers else None
        source = _who(entry) or "peers"
        if report.stalled_for is None:
            return f"{pieces.capitalize()} {are} requested from {source} and on {'its' if one else 'their'} way."
        age = f" for {_secs(first.request_age)}" if first is not None and first.request_age is not None else ""
        snub = " (snubbed)" if first is not None and first.snubbed else ""
        return (f"{pieces.capitalize()} {are} requested from {source}{snub}, which has sent nothing{age}: slow "
                "or stalled. jstorrent asks other peers once a request times out; more peers would help.")
    if cause is Reason.RATE_LIMITED:
        return f"The download rate limit holds back {pieces}; raise or remove --max-download-limit."
    if cause is Reason.WAITING_FOR_HASH:
        return (f"{pieces.capitalize()} {are} on disk waiting for the hash check: the hasher is behind (slow "
                "disk reads or a busy CPU). Waiting helps.")
    if cause is Reason.NOT_YET_REQUESTED:
        who = _who(entry) if entry.peers else "A peer"
        return (f"{who} could send {pieces} but nothing was asked: this is a jstorrent scheduler bug. "
                "Please report it with a --log-json log of this run.")
    # QUEUED
    who = "the peer" if holders == 1 else "the peers"
    if report.stalled_for is None or not entry.peers:
        return f"{pieces.capitalize()} {are} next in line: {who} that {'has' if one else 'have'} {them} " \
               f"{'is' if holders == 1 else 'are'} busy with other requests."
    busy = entry.peers[0]
    oldest = f", the oldest out for {_secs(busy.request_age)}" if busy.request_age is not None else ""
    return (f"{pieces.capitalize()} wait behind requests to {_who(entry)} that do not come back{oldest}: "
            f"{'it is' if holders == 1 else 'they are'} slow. Requests that time out move to other peers; more "
            "peers would help.")


# --- renderers ------------------------------------------------------------------------------------------


def report_lines(report: StallReport) -> list[str]:
    """The report as plain text lines (no trailing newlines): for pipes, logs and a rich panel's body."""
    head = "Stall report"
    if report.stalled_for is not None:
        head += f": no block for {_secs(report.stalled_for)}"
    size = f" ({format_size(report.missing_bytes)})"
    head += f"{':' if report.stalled_for is None else ';'} {_plural(report.missing_pieces, 'wanted piece')} missing"
    head += f"{size}, {_plural(report.peers_connected, 'peer')} connected."
    lines = [head, f"Most likely cause: {report.most_likely_cause}"]
    if not report.precise:
        lines.append("(estimated from totals: per-piece detail was not available)")
    if report.reasons:
        lines.append("Why the missing pieces are not arriving:")
    width = max((len(e.reason.label) for e in report.reasons), default=0)
    for e in report.reasons:
        amount = f"{_plural(e.pieces, 'piece')}"
        if e.bytes is not None:
            amount += f", {format_size(e.bytes)}"
        lines.append(f"  {e.reason.label:<{width}}  {amount}")
        if e.piece_ranges:
            lines.append(f"      pieces: {format_ranges(e.piece_ranges, e.more_ranges)}")
        if e.peers:
            text = ", ".join(_peer_text(p) for p in e.peers)
            if e.more_peers:
                text += f" (+{e.more_peers} more)"
            lines.append(f"      peers: {text}")
    if report.idle_peers:
        lines.append("Idle peers:")
        lines.extend(f"  {p.name}: {p.reason}" for p in report.idle_peers)
        if report.more_idle_peers:
            lines.append(f"  (+{report.more_idle_peers} more)")
    if report.unreachable_peers:
        more = f" (+{report.more_unreachable_peers} more)" if report.more_unreachable_peers else ""
        lines.append(f"Unreachable peers: {', '.join(report.unreachable_peers)}{more}")
    used = report.bytes_in_flight + report.bytes_waiting_for_disk
    lines.append(f"Buffer: {format_size(used)} of {format_size(report.budget)} used "
                 f"({format_size(report.bytes_in_flight)} requested, "
                 f"{format_size(report.bytes_waiting_for_disk)} waiting for disk).")
    for t in report.trackers:
        name = t.tracker or "tracker"
        if t.last_error is not None:
            ago = f" {_secs(t.last_error_age)} ago" if t.last_error_age is not None else ""
            state = f"last announce failed{ago}: {t.last_error}"
        else:
            swarm = ""
            if t.seeders is not None or t.leechers is not None:
                seeds = "? seeds" if t.seeders is None else _plural(t.seeders, "seed")
                leechers = "? leechers" if t.leechers is None else _plural(t.leechers, "leecher")
                swarm = f" ({seeds}, {leechers})"
            state = f"{_plural(t.peers_received, 'peer')} received{swarm}"
        nxt = f"; next announce in {_secs(t.next_announce_in)}" if t.next_announce_in is not None else ""
        lines.append(f"Tracker {name}: {state}{nxt}.")
    return lines


def _peer_text(p: PeerEntry) -> str:
    notes = []
    if p.peer_choking:
        notes.append("choking us")
    if p.snubbed:
        notes.append("snubbed")
    if p.request_age is not None:
        notes.append(f"request out {_secs(p.request_age)}")
    notes.append(f"{p.outstanding}/{p.limit} requests")
    return f"{p.name} ({', '.join(notes)})"


def _round(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 3)


def report_record(report: StallReport) -> dict[str, object]:
    """The `--json` record (docs/stalls.md): stable field names; `event` is "stall"."""
    return {
        "event": "stall",
        "schema": RECORD_SCHEMA,
        "stalled_for": _round(report.stalled_for),
        "precise": report.precise,
        "missing_pieces": report.missing_pieces,
        "missing_bytes": report.missing_bytes,
        "peers_connected": report.peers_connected,
        "cause": report.cause.value if report.cause is not None else None,
        "most_likely_cause": report.most_likely_cause,
        "reasons": [
            {
                "reason": e.reason.value,
                "pieces": e.pieces,
                "bytes": e.bytes,
                "piece_ranges": [[a, b] for a, b in e.piece_ranges],
                "more_ranges": e.more_ranges,
                "peers": [
                    {"peer": p.name, "peer_choking": p.peer_choking, "snubbed": p.snubbed,
                     "outstanding": p.outstanding, "limit": p.limit,
                     "rate": int(p.rate) if math.isfinite(p.rate) else 0, "request_age": _round(p.request_age)}
                    for p in e.peers
                ],
                "more_peers": e.more_peers,
            }
            for e in report.reasons
        ],
        "idle_peers": [{"peer": p.name, "reason": p.reason} for p in report.idle_peers],
        "more_idle_peers": report.more_idle_peers,
        "unreachable_peers": list(report.unreachable_peers),
        "more_unreachable_peers": report.more_unreachable_peers,
        "bytes_in_flight": report.bytes_in_flight,
        "bytes_waiting_for_disk": report.bytes_waiting_for_disk,
        "buffer_budget": report.budget,
        "trackers": [
            {"tracker": t.tracker, "last_error": t.last_error, "last_error_age": _round(t.last_error_age),
             "next_announce_in": _round(t.next_announce_in), "peers_received": t.peers_received,
             "seeders": t.seeders, "leechers": t.leechers}
            for t in report.trackers
        ],
    }


# --- when is it a stall ------------------------------------------------------------------------------------


class StallDetector:
    """A stall: wanted data missing and no block received for `after_seconds` (--stall-report-after).

    Feed it `observe(now, bytes_received_total, wanted_missing)` from a periodic task. It returns True once
    per stall, on the observation where the stall begins; any new byte ends the stall (and re-arms it).
    `stalled_for(now)` is the time without a byte while wanted data is missing (for --stall-timeout).
    """

    def __init__(self, after_seconds: float) -> None:
        if not math.isfinite(after_seconds) or after_seconds < 0:
            raise ValueError(f"stall report delay must be a finite number of seconds >= 0, not {after_seconds}")
        self.after_seconds = after_seconds
        self._last_total: int | None = None
        self._since: float | None = None  # when the current wait for a block began
        self._reported = False

    def observe(self, now: float, bytes_received_total: int, wanted_missing: bool) -> bool:
        progressed = self._last_total is None or bytes_received_total > self._last_total
        self._last_total = bytes_received_total
        if not wanted_missing:
            self._since = None
            self._reported = False
            return False
        if progressed or self._since is None:
            self._since = now
            self._reported = False
        if not self._reported and now - self._since >= self.after_seconds:
            self._reported = True
            return True
        return False

    @property
    def stalled(self) -> bool:
        """True from the observation that reported a stall until the next byte (or nothing missing)."""
        return self._reported

    def stalled_for(self, now: float) -> float:
        return 0.0 if self._since is None else max(0.0, now - self._since)

    def timed_out(self, now: float, timeout: float | None) -> bool:
        """True when `timeout` (--stall-timeout; None: never) has passed without a block."""
        return timeout is not None and self._since is not None and now - self._since >= timeout


__all__ = [
    "ActivePieceDetail",
    "IdlePeer",
    "PeerEntry",
    "PieceDetail",
    "Reason",
    "ReasonEntry",
    "StallDetector",
    "StallReport",
    "TrackerEntry",
    "TrackerLike",
    "diagnose",
    "format_ranges",
    "report_lines",
    "report_record",
]
