"""The command line: a thin click group. Flags become arguments and Config; errors become exit statuses.

No logic lives here beyond reading files named on the command line and printing results. Every
JsTorrentError ends as one line on stderr and its exit status; Ctrl-C is 130; a bug prints one line
(set JSTORRENT_DEBUG=1 for the traceback) and exits 1.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import trio

from jstorrent_cli import __version__
from jstorrent_cli.config import DEFAULT_CONFIG, Config
from jstorrent_cli.core import magnet as magnet_mod
from jstorrent_cli.core import metainfo
from jstorrent_cli.core.batchlist import BatchItem, parse_batch_list
from jstorrent_cli.errors import (
    ExitStatus,
    FileOpenError,
    InputNotFoundError,
    JsTorrentError,
    MetainfoError,
    UsageError,
)
from jstorrent_cli.ui.format import format_size, parse_size


def read_torrent_file(path: str) -> metainfo.Torrent:
    """Read and parse a .torrent named by the user; every failure is a JsTorrentError."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        raise FileOpenError(f"{path}: {exc.strerror}") from None
    if p.is_dir():
        raise FileOpenError(f"{path}: is a directory, not a .torrent file")
    if size > DEFAULT_CONFIG.max_torrent_file_size:
        raise MetainfoError(
            f"{path}: {format_size(size)} is too large for a .torrent file "
            f"(limit {format_size(DEFAULT_CONFIG.max_torrent_file_size)})"
        )
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise FileOpenError(f"{path}: {exc.strerror}") from None
    try:
        return metainfo.parse(data)
    except MetainfoError as exc:
        exc.args = (f"{path}: {exc}",)
        raise


def _date(timestamp: int | None) -> str | None:
    if timestamp is None:
        return None
    try:
        moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return str(timestamp)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def torrent_record(t: metainfo.Torrent) -> dict[str, Any]:
    """The stable JSON shape of `jstorrent info --json` (documented in docs/usage.md)."""
    return {
        "name": t.name,
        "info_hash": t.info_hash_hex,
        "total_length": t.total_length,
        "piece_length": t.piece_length,
        "piece_count": t.piece_count,
        "private": t.private,
        "trackers": [list(tier) for tier in t.trackers],
        "web_seeds": list(t.web_seeds),
        "creation_date": t.creation_date,
        "created_by": t.created_by,
        "comment": t.comment,
        "files": [
            {"index": i, "path": "/".join(f.path), "length": f.length}
            for i, f in enumerate(t.files, start=1)
            if not f.pad
        ],
    }


def print_torrent(t: metainfo.Torrent) -> None:
    out = click.echo
    out(f"Name:        {t.name}")
    out(f"Info hash:   {t.info_hash_hex}")
    out(f"Total size:  {format_size(t.total_length)} ({t.total_length:,} bytes)")
    out(f"Pieces:      {t.piece_count:,} x {format_size(t.piece_length)}")
    out(f"Private:     {'yes' if t.private else 'no'}")
    if t.creation_date is not None:
        out(f"Created on:  {_date(t.creation_date)}")
    if t.created_by:
        out(f"Created by:  {t.created_by}")
    if t.comment:
        out(f"Comment:     {t.comment}")
    if t.trackers:
        out("Trackers:")
        for n, tier in enumerate(t.trackers, start=1):
            for url in tier:
                out(f"  tier {n}: {url}")
    if t.web_seeds:
        out("Web seeds:")
        for url in t.web_seeds:
            out(f"  {url}")
    out("Files:")
    out(f"  {'idx':>5} | {'size':>10} | path")
    for i, f in enumerate(t.files, start=1):
        if not f.pad:
            out(f"  {i:>5} | {format_size(f.length):>10} | {'/'.join(f.path)}")


def magnet_record(m: magnet_mod.Magnet) -> dict[str, Any]:
    return {
        "info_hash": m.info_hash.hex(),
        "name": m.display_name,
        "trackers": list(m.trackers),
        "peers": [f"{host}:{port}" for host, port in m.peers],
        "web_seeds": list(m.web_seeds),
        "select_only": list(m.select_only) if m.select_only is not None else None,
    }


def print_magnet(m: magnet_mod.Magnet) -> None:
    rec = magnet_record(m)
    click.echo(f"Info hash:   {rec['info_hash']}")
    click.echo(f"Name:        {rec['name'] if rec['name'] is not None else '(not given)'}")
    for key, title in (("trackers", "Trackers"), ("peers", "Peers"), ("web_seeds", "Web seeds")):
        if rec[key]:
            click.echo(f"{title}:")
            for item in rec[key]:
                click.echo(f"  {item}")
    if rec["select_only"] is not None:
        click.echo(f"Select only: {', '.join(map(str, rec['select_only']))}")
    click.echo("(a magnet link carries no file list: it is fetched from peers)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jstorrent")
def cli() -> None:
    """jstorrent: a BitTorrent downloader that explains itself."""


@cli.command()
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def info(source: str, as_json: bool) -> None:
    """Show what a .torrent file (or a magnet link) holds."""
    if source.startswith("magnet:"):
        m = magnet_mod.parse_magnet(source)
        if as_json:
            click.echo(json.dumps(magnet_record(m), indent=2))
        else:
            print_magnet(m)
        return
    t = read_torrent_file(source)
    if as_json:
        click.echo(json.dumps(torrent_record(t), indent=2))
    else:
        print_torrent(t)


def _piece_length_option(text: str) -> int | None:
    if text == "auto":
        return None
    value = parse_size(text, what="piece length")
    lo, hi = DEFAULT_CONFIG.min_piece_length, DEFAULT_CONFIG.create_max_auto_piece_length
    if value & (value - 1) or not lo <= value <= hi:
        raise UsageError(
            f"invalid piece length {text!r}: a power of two from {format_size(lo)} to {format_size(hi)}"
        )
    return value


def _check_url(url: str, schemes: tuple[str, ...], what: str) -> str:
    url = url.strip()
    if not url.lower().startswith(schemes):
        raise UsageError(f"invalid {what} {url!r}: must start with {' or '.join(schemes)}")
    return url


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-t", "--tracker", "trackers", multiple=True,
              help="Announce URL; repeat for more tiers, or separate URLs of one tier with commas.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Where to write the .torrent (default: NAME.torrent in the current folder).")
@click.option("--piece-length", default="auto", show_default=True,
              help="'auto' or a power of two such as 256K or 1M.")
@click.option("--private", is_flag=True, help="Set the private flag (BEP 27): no DHT, PEX or LSD.")
@click.option("--web-seed", "web_seeds", multiple=True, help="A web seed URL (BEP 19); repeatable.")
@click.option("--comment", default=None, help="A free-text comment stored in the torrent.")
@click.option("-f", "--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def create(
    path: Path,
    trackers: tuple[str, ...],
    output: Path | None,
    piece_length: str,
    private: bool,
    web_seeds: tuple[str, ...],
    comment: str | None,
    force: bool,
) -> None:
    """Make a .torrent from a file or a folder."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from jstorrent_cli.tasks.create import create_torrent

    schemes = ("http://", "https://", "udp://")
    tiers = [[_check_url(u, schemes, "tracker URL") for u in t.split(",") if u.strip()] for t in trackers]
    seeds = [_check_url(u, ("http://", "https://"), "web seed URL") for u in web_seeds]
    length = _piece_length_option(piece_length)
    if output is None:
        output = Path(path.resolve().name + ".torrent")
    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=_stderr_console(), transient=True, disable=not sys.stderr.isatty(),
    )
    task_id = progress.add_task("hashing", total=None)

    async def run() -> tuple[bytes, list[str]]:
        with progress:
            return await create_torrent(
                path, output, trackers=tiers, web_seeds=seeds, piece_length=length, private=private,
                comment=comment, force=force,
                progress_start=lambda total: progress.update(task_id, total=total),
                progress=lambda n: progress.advance(task_id, n),
            )

    data, skipped = trio.run(run)
    for note in skipped:
        click.echo(f"jstorrent: {note}", err=True)
    t = metainfo.parse(data)
    click.echo(f"{output}: {t.name}, {format_size(t.total_length)} in {t.piece_count} pieces "
               f"of {format_size(t.piece_length)}, info hash {t.info_hash_hex}")


def _peer_address(text: str) -> tuple[str, int]:
    host, sep, port_text = text.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"invalid --peer {text!r}: use HOST:PORT (e.g. 192.0.2.7:6881 or [2001:db8::1]:6881)")
    return host, int(port_text)


@cli.command()
@click.argument("torrent_files", metavar="FILE.torrent...", nargs=-1)
@click.option("-i", "--input-file", default=None,
              help="Download the .torrent files listed in this file ('-': stdin), one per line; see docs/usage.md.")
@click.option("-j", "--max-concurrent-downloads", "max_concurrent", type=click.IntRange(1),
              default=DEFAULT_CONFIG.max_concurrent_downloads, show_default=True,
              help="Downloads at a time when several are given.")
@click.option("-d", "--dir", "out_dir", default=".", show_default=True, help="Folder to download into.")
@click.option("--peer", "peers", multiple=True, help="Connect to this peer (HOST:PORT); repeatable.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Listening port (default: the first free one in 6881-6999).")
@click.option("--listen", "listen", default=None, help="Address to listen on and connect from (default: all).")
@click.option("--max-peers", type=click.IntRange(1), default=DEFAULT_CONFIG.max_peers, show_default=True,
              help="Most connected peers.")
@click.option("--max-buffer", default=None,
              help="Unflushed-data budget: requested plus not yet written bytes "
                   f"(default {format_size(DEFAULT_CONFIG.max_unflushed_bytes)}).")
@click.option("--seed-time", type=click.FloatRange(0), default=None, help="Keep seeding this many minutes.")
@click.option("--seed-ratio", type=click.FloatRange(0), default=None,
              help="Keep seeding until uploaded / size reaches this ratio.")
@click.option("--max-upload-limit", default=None, help="Upload rate limit per second, e.g. 500K (default none).")
@click.option("--max-download-limit", default=None, help="Download rate limit per second, e.g. 2M (default none).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout: progress records and a final result.")
@click.option("-v", "--verbose", is_flag=True,
              help="Show the peer table and, about once a second, why missing pieces are missing.")
@click.option("--select-file", default=None,
              help="Download only these files (indexes as 'jstorrent info' prints them, e.g. 1-3,5).")
@click.option("--file-allocation", type=click.Choice(["none", "sparse", "full"]),
              default=DEFAULT_CONFIG.file_allocation, show_default=True,
              help="How new files get their space: grow as written, sized at once (sparse), or preallocated.")
@click.option("--stall-report-after", type=click.FloatRange(0), default=DEFAULT_CONFIG.stall_report_after,
              show_default=True, help="Print a stall report after this many seconds without a block.")
@click.option("--stall-timeout", type=click.FloatRange(0, min_open=True), default=DEFAULT_CONFIG.stall_timeout,
              help="Give up (exit status 2) after this many seconds without a block (default: never).")
@click.option("--log-json", default=None, help="Write every scheduler fact and command to this file (for replay).")
def get(
    torrent_files: tuple[str, ...], input_file: str | None, max_concurrent: int,
    out_dir: str, peers: tuple[str, ...], port: int | None, listen: str | None, max_peers: int,
    max_buffer: str | None, seed_time: float | None, seed_ratio: float | None, max_upload_limit: str | None,
    max_download_limit: str | None, quiet: bool, as_json: bool, verbose: bool, select_file: str | None,
    file_allocation: str, stall_report_after: float, stall_timeout: float | None, log_json: str | None,
) -> int:
    """Download torrents (and seed them while they run): several at a time with -j, or a list with -i."""
    import dataclasses
    import functools
    import math

    from jstorrent_cli.core.selection import parse_select_file
    from jstorrent_cli.tasks import session
    from jstorrent_cli.ui.display import make_display

    batch_items = _batch_items(torrent_files, input_file)
    torrent = None
    if batch_items is None:
        torrent = read_torrent_file(torrent_files[0])
    addresses = [_peer_address(p) for p in peers]
    selected = None
    if torrent is not None:
        selected = None if select_file is None else parse_select_file(
            select_file, len(torrent.files), [f.pad for f in torrent.files])
    elif select_file is not None:
        raise UsageError("--select-file works with one torrent only, not with several or -i")
    elif log_json is not None:
        raise UsageError("--log-json works with one torrent only, not with several or -i")
    if not math.isfinite(stall_report_after):
        raise UsageError(f"--stall-report-after {stall_report_after}: give a number of seconds")
    config = dataclasses.replace(
        DEFAULT_CONFIG, max_peers=max_peers, file_allocation=file_allocation,
        stall_report_after=stall_report_after, stall_timeout=stall_timeout)
    if max_buffer is not None:
        budget = parse_size(max_buffer, what="--max-buffer")
        if budget < config.block_size:  # not even one request would fit: nothing could ever be asked for
            raise UsageError(f"--max-buffer {max_buffer!r} is below one block ({format_size(config.block_size)})")
        config = dataclasses.replace(config, max_unflushed_bytes=budget)
    if max_upload_limit is not None:
        config = dataclasses.replace(config, max_upload_rate=parse_size(max_upload_limit, what="--max-upload-limit"))
    if max_download_limit is not None:
        config = dataclasses.replace(
            config, max_download_rate=parse_size(max_download_limit, what="--max-download-limit"))
    if batch_items == []:  # a list with nothing in it: aria2c says so and exits 0
        if not quiet:
            click.echo(f"jstorrent: {'stdin' if input_file == '-' else input_file}: no downloads", err=True)
        return int(ExitStatus.OK)
    if batch_items is not None:
        return _get_batch(dataclasses.replace(config, max_concurrent_downloads=max_concurrent), batch_items,
                          out_dir=out_dir, peers=addresses, port=port, listen=listen, quiet=quiet, as_json=as_json,
                          verbose=verbose, seed_time=seed_time, seed_ratio=seed_ratio)
    assert torrent is not None
    display = make_display(config, json_output=as_json, quiet=quiet, verbose=verbose)
    result = trio.run(functools.partial(
        session.run, config, torrent, out_dir, peers=addresses, display=display, listen_host=listen, port=port,
        seed_time=seed_time * 60 if seed_time is not None else None, seed_ratio=seed_ratio, handle_signals=True,
        selected=selected, live_diagnosis=verbose, log_json=log_json,
    ))
    if result.exception is not None and not quiet and not as_json:
        click.echo(f"jstorrent: {result.error}", err=True)
    return result.exit_status


def _batch_items(torrent_files: tuple[str, ...], input_file: str | None) -> list[BatchItem] | None:
    """The items of a batch, or None for exactly one FILE.torrent and no -i (today's single download)."""
    if input_file is None:
        if not torrent_files:
            raise UsageError("give a .torrent file (or several, or -i LIST) (try 'jstorrent get --help')")
        if len(torrent_files) == 1:
            return None
    items: list[BatchItem] = [BatchItem(source, 0) for source in torrent_files]
    if input_file is not None:
        if input_file == "-":
            data = sys.stdin.buffer.read(DEFAULT_CONFIG.batch_list_max_bytes + 1)
            name = "stdin"
        else:
            name = input_file
            path = Path(input_file)
            try:
                with path.open("rb") as f:
                    data = f.read(DEFAULT_CONFIG.batch_list_max_bytes + 1)
            except FileNotFoundError:
                raise InputNotFoundError(f"{input_file}: no such file") from None
            except OSError as exc:
                raise FileOpenError(f"{input_file}: {exc.strerror}") from None
        items += parse_batch_list(data, name=name)
    return items


def _get_batch(config: Config, items: list[BatchItem], *, out_dir: str, peers: list[tuple[str, int]], port: int | None,
               listen: str | None, quiet: bool, as_json: bool, verbose: bool, seed_time: float | None,
               seed_ratio: float | None) -> int:
    from jstorrent_cli.tasks.batch import BatchOptions, run_batch
    from jstorrent_cli.ui.batchview import make_batch_display

    display = make_batch_display(config, json_output=as_json, quiet=quiet)
    options = BatchOptions(
        out_dir=out_dir, peers=peers, listen_host=listen, port=port,
        seed_time=seed_time * 60 if seed_time is not None else None, seed_ratio=seed_ratio,
        live_diagnosis=verbose, handle_signals=True,
    )
    result = trio.run(run_batch, config, items, options, display, read_torrent_file)
    return result.exit_status


@cli.command()
@click.argument("torrent_file", metavar="FILE.torrent")
@click.option("-d", "--dir", "out_dir", default=".", show_default=True, help="Folder the torrent was downloaded into.")
@click.option("--select-file", default=None,
              help="Check only these files (indexes as 'jstorrent info' prints them, e.g. 1-3,5).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def verify(torrent_file: str, out_dir: str, select_file: str | None, as_json: bool) -> int:
    """Hash the files on disk (read-only) and report per file. Exit 0 if complete, 32 if not."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from jstorrent_cli.core.geometry import Geometry
    from jstorrent_cli.core.selection import parse_select_file
    from jstorrent_cli.errors import ChecksumError
    from jstorrent_cli.tasks import verify as verifier
    from jstorrent_cli.tasks.parts import layout_for_selection
    from jstorrent_cli.tasks.storage import storage_files

    t = read_torrent_file(torrent_file)
    folder = Path(out_dir)
    if not folder.exists():
        raise InputNotFoundError(f"{out_dir}: no such folder")
    if not folder.is_dir():
        raise FileOpenError(f"{out_dir}: not a folder")
    files = storage_files(t.files)
    pads = [f.pad for f in files]
    selected = None if select_file is None else parse_select_file(select_file, len(files), pads)
    geometry, disk_files = layout_for_selection(
        Geometry([f.length for f in files], pads, t.piece_length), files, selected, t.name)
    paths = [None if f.pad or f.symlink else f.path for f in disk_files]
    shown = [i for i, f in enumerate(t.files) if f.is_created and (selected is None or i in selected)]
    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=_stderr_console(), transient=True, disable=not sys.stderr.isatty(),
    )
    task_id = progress.add_task("verifying", total=None)

    async def run() -> verifier.VerifyReport:
        with progress:
            return await verifier.verify(
                folder, paths, geometry, t.piece_hashes, report_files=shown,
                progress=lambda done, total: progress.update(task_id, completed=done, total=total),
            )

    report = trio.run(run)
    pieces = report.pieces
    checked = len(pieces.ok) + len(pieces.bad) + len(pieces.missing)
    if as_json:
        click.echo(json.dumps({
            "name": t.name, "info_hash": t.info_hash_hex, "directory": str(folder), "complete": report.complete,
            "pieces": {"checked": checked, "ok": len(pieces.ok), "bad": len(pieces.bad),
                       "missing": len(pieces.missing)},
            "files": [{"index": f.index + 1, "path": "/".join(f.path), "length": f.length, "status": f.status,
                       "size_on_disk": f.size_on_disk, "pieces": f.pieces, "bad_pieces": f.bad_pieces,
                       "missing_pieces": f.missing_pieces, "note": f.note} for f in report.files],
        }, indent=2))
    else:
        click.echo(f"{t.name} in {folder}:")
        click.echo(f"  {'idx':>5} | {'status':<8} | {'size':>10} | path")
        for f in report.files:
            detail = []
            if f.bad_pieces:
                detail.append(f"{f.bad_pieces} of {f.pieces} pieces bad")
            if f.missing_pieces and f.status != "missing":
                detail.append(f"{f.missing_pieces} of {f.pieces} pieces incomplete")
            if f.note:
                detail.append(f.note)
            extra = f"  ({'; '.join(detail)})" if detail else ""
            click.echo(f"  {f.index + 1:>5} | {f.status:<8} | {format_size(f.length):>10} | {'/'.join(f.path)}{extra}")
        click.echo(f"Pieces: {len(pieces.ok)} ok, {len(pieces.bad)} bad, {len(pieces.missing)} incomplete "
                   f"of {checked} checked")
    if not report.complete:
        wrong = [f for f in report.files if f.status != "complete"]
        names = ", ".join(f"{'/'.join(f.path)} ({f.status})" for f in wrong[:3])
        more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise ChecksumError(f"{len(wrong)} of {len(report.files)} files not complete: {names}{more}")
    return 0


@cli.command()
@click.argument("log_file", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout instead of the text timeline.")
def replay(log_file: str, as_json: bool) -> int:
    """Replay a --log-json log through a fresh scheduler: check its commands, show its decisions over time."""
    from jstorrent_cli.replay import run_replay

    return run_replay(log_file, as_json=as_json, echo=click.echo)


@cli.command()
@click.option("--size", default="256M", show_default=True, help="Payload size (e.g. 64M, 1G).")
@click.option("--seeders", default=3, show_default=True, type=click.IntRange(0, 200),
              help="Full-speed seeders (jstorrent sessions on 127.0.0.2, 127.0.0.3, ...).")
@click.option("--slow-seeders", default=0, show_default=True, type=click.IntRange(0, 200),
              help="Extra seeders limited to --slow-rate each, to show the endgame and the diagnostics.")
@click.option("--slow-rate", default="256K", show_default=True, help="Upload limit of each slow seeder, per second.")
@click.option("--piece-length", default="auto", show_default=True, help="'auto' or a power of two such as 256K.")
@click.option("--keep", type=click.Path(path_type=Path), default=None,
              help="Work in this folder and keep it (payload, torrent, download) instead of a temporary one.")
@click.option("-q", "--quiet", is_flag=True, help="No live view, only errors.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout instead of the live view.")
@click.option("-v", "--verbose", is_flag=True, help="Add the peer table to the live view.")
def demo(size: str, seeders: int, slow_seeders: int, slow_rate: str, piece_length: str, keep: Path | None,
         quiet: bool, as_json: bool, verbose: bool) -> int:
    """Seed a generated payload from local jstorrent seeders and download it with the live view."""
    from jstorrent_cli.tasks.demo import DemoOptions, run_demo
    from jstorrent_cli.ui.display import make_display

    if seeders + slow_seeders == 0:
        raise UsageError("the demo needs at least one seeder (--seeders or --slow-seeders)")
    payload_size = parse_size(size, what="--size")
    if payload_size <= 0:
        raise UsageError("--size must be more than 0 bytes")
    options = DemoOptions(
        size=payload_size, seeders=seeders, slow_seeders=slow_seeders,
        slow_rate=parse_size(slow_rate, what="--slow-rate"), piece_length=_piece_length_option(piece_length),
        workdir=keep, keep=keep is not None, seed=1,
    )
    display = make_display(DEFAULT_CONFIG, json_output=as_json, quiet=quiet, verbose=verbose)

    def say(line: str) -> None:
        if not quiet and not as_json:
            click.echo(line, err=True)

    result = trio.run(run_demo, DEFAULT_CONFIG, options, display, say)
    if result.exception is not None and not quiet and not as_json:
        click.echo(f"jstorrent: {result.error}", err=True)
    return result.exit_status


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _fail(message: str, status: int) -> NoReturn:
    try:
        click.echo(f"jstorrent: {message}", err=True)
    finally:
        sys.exit(status)


def _configure_logging() -> None:
    """The views carry what the log says (tracker errors, bans, closed peers); without a handler, Python
    would print every warning on stderr, across the live view and through --quiet. JSTORRENT_DEBUG=1
    sends the whole log, debug lines included, to stderr instead."""
    root = logging.getLogger("jstorrent")
    if root.handlers:  # main() called again in the same process (tests)
        return
    root.propagate = False
    if os.environ.get("JSTORRENT_DEBUG"):
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.setLevel(logging.DEBUG)
    else:
        handler = logging.NullHandler()
    root.addHandler(handler)


def _exit_process(status: int) -> NoReturn:
    """The end of a command run as its own process: everything is done and closed (files by their
    context managers, downloads by trio.run, whose worker threads are idle daemons), so skip the
    interpreter's teardown of every module and object (30-60 ms on the benchmark machine). Logging
    and the standard streams are flushed first; nothing else holds unwritten data."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main(argv: list[str] | None = None) -> NoReturn:
    """The console script. Maps every outcome to an exit status. Called with `argv` (in-process, as
    tests do) it raises SystemExit as usual; as the console script it ends the process at once."""
    _configure_logging()
    try:
        result = cli.main(args=argv, prog_name="jstorrent", standalone_mode=False)
        sys.stdout.flush()
        status = result if isinstance(result, int) else 0
        if argv is None:
            _exit_process(status)
        sys.exit(status)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.UsageError as exc:
        hint = f" (try 'jstorrent {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.parent else ""
        _fail(f"{exc.format_message()}{hint}", ExitStatus.BAD_OPTION)
    except click.exceptions.Abort:
        _fail("interrupted", ExitStatus.INTERRUPTED)
    except click.ClickException as exc:
        _fail(exc.format_message(), ExitStatus.UNKNOWN)
    except JsTorrentError as exc:
        _fail(str(exc), exc.exit_status)
    except KeyboardInterrupt:
        _fail("interrupted", ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        # The reader of our stdout went away (`jstorrent info x | head`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(ExitStatus.OK)
    except Exception as exc:  # a bug: one line, the traceback only on request
        if os.environ.get("JSTORRENT_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set JSTORRENT_DEBUG=1 for details)",
              ExitStatus.UNKNOWN)
