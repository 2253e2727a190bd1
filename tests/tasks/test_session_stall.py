"""Stalls in a real session: a scripted peer that chokes us forever, a dead tracker, --stall-timeout, SIGUSR1."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from jstorrent_cli.config import DEFAULT_CONFIG, KiB
from jstorrent_cli.core import wire
from jstorrent_cli.core.diagnose import Reason, StallReport
from jstorrent_cli.errors import ExitStatus, StallTimeoutError
from jstorrent_cli.tasks import session
from tests.conftest import build_torrent, free_port, random_files, reaped

DEADLINE = 30
# Small delays so a stall shows within a second or two (the defaults are 30 s and 1 s).
FAST = dataclasses.replace(DEFAULT_CONFIG, stall_report_after=0.6, stall_check_interval=0.1)


class Recorder:
    """A display that keeps the stall reports and the live notes it was shown."""

    def __init__(self) -> None:
        self.reports: list[StallReport] = []
        self.notes: list[str] = []
        self.stalled = trio.Event()
        self.result: session.SessionResult | None = None

    async def run(self, poll: Callable[[], session.SessionStatus]) -> None:
        while True:
            note = poll().note
            if note and (not self.notes or self.notes[-1] != note):
                self.notes.append(note)
            await trio.sleep(FAST.stall_check_interval)

    def stall(self, report: StallReport) -> None:
        self.reports.append(report)
        self.stalled.set()

    def finish(self, result: session.SessionResult) -> None:
        self.result = result


def _choker(
    info_hash: bytes, piece_count: int, piece_length: int, total: int
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A peer that has every piece, says so, and never unchokes us (it answers nothing else)."""

    async def serve(stream: trio.SocketStream) -> None:
        proto = wire.PeerProtocol(info_hash, b"-XX0000-chokechoke12", piece_count, piece_length, total)
        await stream.send_all(proto.send_handshake())
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                for msg in proto.receive_data(data):
                    if isinstance(msg, wire.Handshake):
                        await stream.send_all(proto.send(wire.HAVE_ALL))
        except trio.BrokenResourceError:
            return

    return serve


async def test_a_seeder_that_chokes_us_forever_is_named_in_the_stall_report(tmp_path: Path) -> None:
    files = random_files(51, [256 * KiB])
    _, torrent = build_torrent("choked", files, 32 * KiB)
    display = Recorder()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.6")
            peer_port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, _choker(
                torrent.info_hash, torrent.piece_count, torrent.piece_length, torrent.total_length), listeners)
            nursery.start_soon(lambda: session.run(
                FAST, torrent, tmp_path, peers=[("127.0.0.6", peer_port)], listen_host="127.0.0.3", port=0,
                display=display, live_diagnosis=True))
            await display.stalled.wait()
            # -v's live line follows the stall: give it one more check.
            while not any(n.startswith("stalled") for n in display.notes):
                await trio.sleep(FAST.stall_check_interval)
            nursery.cancel_scope.cancel()
    assert len(display.reports) == 1  # once per stall, not once per check
    report = display.reports[0]
    assert report.cause is Reason.HOLDERS_CHOKE_US
    assert report.precise and report.peers_connected == 1
    assert report.count(Reason.HOLDERS_CHOKE_US) == torrent.piece_count
    entry = report.entry(Reason.HOLDERS_CHOKE_US)
    # The report names the peer by the address we connected to (its client's name would follow).
    assert entry is not None and [p.name for p in entry.peers] == [f"127.0.0.6:{peer_port}"]
    assert report.stalled_for is not None and report.stalled_for >= FAST.stall_report_after
    assert "choking us" in report.most_likely_cause
    # Before the stall, -v showed the live classification; then the stall's cause.
    assert any(n.startswith("missing:") and Reason.HOLDERS_CHOKE_US.value in n for n in display.notes)
    assert any(n.startswith("stalled") and "choking us" in n for n in display.notes)


async def test_no_peers_and_a_dead_tracker_is_reported_with_the_tracker_error(tmp_path: Path) -> None:
    dead = free_port("127.0.0.5")  # nothing listens there: connection refused
    files = random_files(53, [64 * KiB])
    _, torrent = build_torrent("alone", files, 16 * KiB, trackers=[f"http://127.0.0.5:{dead}/announce"])
    display = Recorder()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: session.run(FAST, torrent, tmp_path, listen_host="127.0.0.3", port=0,
                                                   display=display))
            await display.stalled.wait()
            nursery.cancel_scope.cancel()
    report = display.reports[0]
    assert report.cause is Reason.NO_PEERS
    assert report.peers_connected == 0
    assert report.count(Reason.NO_PEERS) == torrent.piece_count
    [tracker] = report.trackers
    # No tracker ever answered (so none is "the last tracker"); the error names the dead one.
    assert tracker.last_error is not None and f"127.0.0.5:{dead}" in tracker.last_error
    assert tracker.peers_received == 0 and tracker.next_announce_in is not None
    assert "tracker failed" in report.most_likely_cause  # ...and in the sentence


async def test_stall_timeout_ends_the_session_with_status_2(tmp_path: Path) -> None:
    files = random_files(55, [64 * KiB])
    _, torrent = build_torrent("never", files, 16 * KiB)
    config = dataclasses.replace(FAST, stall_timeout=1.0)
    display = Recorder()
    with trio.fail_after(DEADLINE):
        start = trio.current_time()
        result = await session.run(config, torrent, tmp_path, peers=[("127.0.0.9", 9)], listen_host="127.0.0.3",
                                   port=0, display=display)
        took = trio.current_time() - start
    assert result.status == "error"
    assert isinstance(result.exception, StallTimeoutError)
    assert result.exit_status == int(ExitStatus.TIMEOUT) == 2
    assert "--stall-timeout" in (result.error or "")
    assert display.reports  # the stall was reported before it timed out
    assert config.stall_timeout is not None and config.stall_timeout <= took < config.stall_timeout + 2


async def test_cli_stall_timeout_exits_2_and_prints_the_stall_record(tmp_path: Path) -> None:
    files = random_files(57, [64 * KiB])
    data, _ = build_torrent("never", files, 16 * KiB)
    (tmp_path / "t.torrent").write_bytes(data)
    with trio.fail_after(DEADLINE):
        done = await trio.run_process(
            [sys.executable, "-m", "jstorrent_cli", "get", str(tmp_path / "t.torrent"), "-d", str(tmp_path),
             "--peer", "127.0.0.9:9", "--listen", "127.0.0.3", "--port", "0", "--json",
             "--stall-report-after", "0.5", "--stall-timeout", "2"],
            capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 2, done.stderr
    records = [json.loads(line) for line in done.stdout.decode().splitlines()]
    stalls = [r for r in records if r["event"] == "stall"]
    assert len(stalls) == 1 and stalls[0]["cause"] == Reason.NO_PEERS.value
    assert records[-1]["event"] == "result" and records[-1]["status"] == "error"


async def test_sigusr1_dumps_the_state_and_the_download_goes_on(tmp_path: Path) -> None:
    import signal

    files = random_files(59, [64 * KiB])
    data, _ = build_torrent("dump", files, 16 * KiB)
    (tmp_path / "t.torrent").write_bytes(data)
    with trio.fail_after(DEADLINE):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "jstorrent_cli", "get", str(tmp_path / "t.torrent"), "-d", str(tmp_path),
             "--peer", "127.0.0.9:9", "--listen", "127.0.0.3", "--port", "0", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        async with reaped(process):
            assert process.stdout is not None and process.stderr is not None
            out = b""
            while b'"downloading"' not in out:  # the transfer runs (the dump needs its scheduler)
                chunk = await process.stdout.receive_some(65536)
                assert chunk
                out += chunk
            process.send_signal(signal.SIGUSR1)
            err = b""
            while b"Pieces:" not in err:
                chunk = await process.stderr.receive_some(65536)
                assert chunk, err
                err += chunk
            seen = len(out)
            while len(out) == seen or not out.endswith(b"\n"):  # still running: more progress records
                chunk = await process.stdout.receive_some(65536)
                assert chunk
                out += chunk
            assert process.returncode is None
            process.send_signal(signal.SIGINT)
            status = await process.wait()
    assert status == 130
    text = err.decode()
    assert "--- jstorrent state of dump" in text
    assert "Stall report" in text and "Peers (0):" in text
    assert "Pieces: 0 of 4 wanted verified, 4 missing" in text


async def test_ctrl_c_stops_within_the_grace_when_the_tracker_never_answers_stopped(tmp_path: Path) -> None:
    import signal

    from jstorrent_cli.core import bencode

    files = random_files(61, [64 * KiB])
    answered = trio.Event()
    stopped_seen = trio.Event()
    requests: list[bytes] = []

    async def tracker(stream: trio.SocketStream) -> None:
        """Answers the first announce (no peers), then never answers again."""
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            request += chunk
        requests.append(request)
        if b"event=stopped" in request:
            stopped_seen.set()
        if answered.is_set():
            await trio.sleep_forever()
        body = bencode.encode({b"interval": 1800, b"peers": b""})
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                              b"Connection: close\r\n\r\n%s" % (len(body), body))
        answered.set()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.4")
            port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, tracker, listeners)
            data, _ = build_torrent("mute", files, 16 * KiB, trackers=[f"http://127.0.0.4:{port}/announce"])
            (tmp_path / "t.torrent").write_bytes(data)
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "jstorrent_cli", "get", str(tmp_path / "t.torrent"), "-d", str(tmp_path),
                 "--listen", "127.0.0.3", "--port", "0", "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            async with reaped(process):
                assert process.stdout is not None
                await answered.wait()
                # One more progress record: the client has read the answer (the tracker is "the last one").
                out = b""
                while out.count(b"\n") < 2:
                    chunk = await process.stdout.receive_some(65536)
                    assert chunk
                    out += chunk
                process.send_signal(signal.SIGINT)
                sent = trio.current_time()
                with trio.fail_after(DEFAULT_CONFIG.interrupt_grace):
                    status = await process.wait()
                took = trio.current_time() - sent
            nursery.cancel_scope.cancel()
    assert status == 130
    assert stopped_seen.is_set()  # the stopped announce was tried (and got no answer)...
    assert took < DEFAULT_CONFIG.interrupt_grace  # ...yet the process stopped within the grace
