"""The path-safety corpus end to end through `jstorrent get` (issue [8], "hostile input").

1. Seeded: for every corpus torrent whose paths are hostile (traversal, absolute, slashes and
   backslashes, empty elements, overlong names, duplicates, symlink and pad entries) plus a few of our
   own (deep `..` chains, NUL bytes, Windows reserved names), a new torrent keeps the *same raw path
   lists* but carries a fresh random payload, so it can be seeded. A jstorrent seeder in this process
   serves it; `jstorrent get` (a child process) downloads it into a fresh folder inside a sandbox.
   Then: exit 0; every file is where docs/usage.md says (the sanitised path under the folder), byte
   for byte; symlink and pad entries are never created; nothing at all appears outside the folder.
2. As is: eight of the hostile files plus every corpus file we refuse go through `get` with no peer and
   `--stall-timeout 1`: refused files end at once with their MetainfoError's status (25 bencode, 26
   bad torrent) and one line; accepted ones stall out with status 2; nothing appears outside the folder.

The downloads run a few at a time (CORPUS_PARALLEL). JSTORRENT_CORPUS_ALL=1 runs part 2 over the whole
corpus (108 files) instead of the hostile and refused ones.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import trio

from jstorrent_cli.core import bencode
from jstorrent_cli.core.metainfo import Torrent, parse
from jstorrent_cli.errors import ExitStatus, MetainfoError
from tests.faults.common import SEEDER_HOST, get_args, get_many, start_seeder

CORPUS = Path(__file__).resolve().parent.parent / "data" / "torrents"
HOSTILE = (
    "absolute_filename", "backslash_path", "duplicate_files", "empty_path", "empty_path_multi",
    "hidden_parent_path", "invalid_directory_name", "invalid_filename", "invalid_filename2", "invalid_name2",
    "invalid_name3", "long_name", "overlapping_symlinks", "pad_file", "pad_file_no_path", "parent_path",
    "single_multi_file", "slash_path", "slash_path2", "slash_path3", "symlink1", "symlink2",
    "symlink_filtered_path", "symlink_zero_size",
)
# Our own hostile path lists (raw bytes, as a torrent would carry them), as multi-file torrents.
SYNTHETIC: dict[str, tuple[bytes, list[list[bytes]]]] = {
    "deep_traversal": (b"..", [[b"..", b"..", b"..", b"etc", b"passwd"], [b"..", b"x", b"..", b"..", b"y"]]),
    "absolute_and_nul": (b"/tmp", [[b"/etc", b"shadow"], [b"a\x00b", b"c"], [b"", b"/", b"d"]]),
    "reserved_names": (b"CON", [[b"NUL"], [b"aux.txt"], [b"COM1", b"LPT1"], [b".", b"..", b"."]]),
}
# Accepted files run as is in CI (each waits out its stall timeout, ~2 s): the most hostile paths. The
# seeded test covers all of HOSTILE; JSTORRENT_CORPUS_ALL=1 runs every corpus file as is.
AS_IS_ACCEPTED = ("absolute_filename", "hidden_parent_path", "invalid_name2", "long_name", "pad_file_no_path",
                  "parent_path", "slash_path", "symlink1")
CORPUS_PARALLEL = 4  # child processes at once (2 cores; each is mostly waiting on its startup)
PIECE = 16 * 1024
DEADLINE = 150
STALL = "1"  # --stall-timeout for the unseeded runs (s)


def _info(data: bytes) -> dict[bytes, bencode.Value]:
    top = bencode.decode(data.rstrip(b"\r\n\t "), sorted_keys=False)
    assert isinstance(top, dict)
    info = top[b"info"]
    assert isinstance(info, dict)
    return info


def _repayload(name: str, info: dict[bytes, bencode.Value], rng: random.Random) -> tuple[bytes, Torrent, bytes]:
    """A torrent with `info`'s raw name and paths and a fresh payload: (.torrent bytes, parsed, payload)."""
    files = info.get(b"files")
    entries = [f for f in files if isinstance(f, dict)] if isinstance(files, list) else [info]
    total = sum(length for f in entries if isinstance(length := f.get(b"length"), int))
    piece_length = info[b"piece length"]
    assert isinstance(piece_length, int)
    shape = parse(bencode.encode({b"info": {**info, b"pieces": b"\0" * 20 * -(-total // piece_length)}}))
    chunks = [bytes(f.length) if f.pad else rng.randbytes(f.length) for f in shape.files]
    payload = b"".join(chunks)
    piece = shape.piece_length
    hashes = b"".join(hashlib.sha1(payload[i : i + piece]).digest() for i in range(0, len(payload), piece))
    data = bencode.encode({b"info": {**info, b"pieces": hashes}})
    torrent = parse(data)
    # Same sanitised paths (a name the torrent lacks a usable form of is its info hash, which changed).
    assert [f.path[1:] for f in torrent.files] == [f.path[1:] for f in shape.files], name
    assert torrent.name == shape.name or shape.name == shape.info_hash.hex(), name
    return data, torrent, payload


def _hostile_cases(rng: random.Random) -> list[tuple[str, bytes, Torrent, bytes]]:
    cases = []
    for name in HOSTILE:
        info = _info((CORPUS / f"{name}.torrent").read_bytes())
        assert b"meta version" not in info, name  # v1 only: the payload is re-hashed with v1 pieces
        cases.append((name, *_repayload(name, info, rng)))
    for name, (raw_name, paths) in SYNTHETIC.items():
        made: dict[bytes, bencode.Value] = {
            b"name": raw_name, b"piece length": PIECE,
            b"files": [{b"length": 1000 + 7 * i, b"path": list(p)} for i, p in enumerate(paths)],
        }
        cases.append((name, *_repayload(name, made, rng)))
    return cases


def _everything(folder: Path) -> set[Path]:
    return {Path(d, n) for d, dirs, files in os.walk(folder) for n in dirs + files}


def _place(torrent: Torrent, payload: bytes, folder: Path) -> None:
    """The torrent's files at their sanitised paths under `folder` (as our own get writes them)."""
    offset = 0
    for f in torrent.files:
        if f.is_created:
            path = folder.joinpath(*f.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(payload[offset : offset + f.length])
        offset += f.length


def _check_download(name: str, torrent: Torrent, payload: bytes, box: Path) -> list[str]:
    """Every created file where docs say with its bytes, no pad or symlink entry, nothing else in `box`."""
    out = box / "out"
    problems = []
    expected = {out, out / f".{torrent.name}.jstorrent", out / f".{torrent.name}.lock"}
    offset = 0
    for f in torrent.files:
        target = out.joinpath(*f.path)
        chunk = payload[offset : offset + f.length]
        offset += f.length
        if not f.is_created:
            if os.path.lexists(target):
                problems.append(f"{name}: {'pad' if f.pad else 'symlink'} entry {f.path} was created")
            continue
        expected.add(target)
        expected.update(p for p in target.parents if out in p.parents)
        if target.is_symlink() or not target.is_file() or target.read_bytes() != chunk:
            problems.append(f"{name}: {'/'.join(f.path)} is not the file with its data")
    found = _everything(box)
    if found != expected:
        problems.append(f"{name}: unexpected {sorted(map(str, found - expected))[:5]}, "
                        f"missing {sorted(map(str, expected - found))[:5]}")
    return problems


async def test_hostile_paths_seeded_and_downloaded_through_get_land_where_docs_say(tmp_path: Path) -> None:
    cases = _hostile_cases(random.Random(4))
    sandboxes = [tmp_path / f"{i}-{name}" for i, (name, *_) in enumerate(cases)]
    argvs = []
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for sandbox, (_, data, torrent, payload) in zip(sandboxes, cases, strict=True):
                (sandbox / "box").mkdir(parents=True)
                (sandbox / "t.torrent").write_bytes(data)
                _place(torrent, payload, sandbox / "seed")
                port = await start_seeder(nursery, torrent, sandbox / "seed", rate=0)
                argvs.append(get_args(sandbox / "t.torrent", sandbox / "box" / "out", [(SEEDER_HOST, port)],
                                      "--quiet"))
            results = await get_many(argvs, CORPUS_PARALLEL)
            nursery.cancel_scope.cancel()
    problems = []
    for sandbox, (name, _, torrent, payload), done in zip(sandboxes, cases, results, strict=True):
        if done.status != 0:
            problems.append(f"{name}: exit {done.status}: {done.stderr.strip()}")
            continue
        problems += _check_download(name, torrent, payload, sandbox / "box")
    assert not problems, "\n".join(problems)
    # Only the sandboxes: nothing was written next to them (the absolute and `..` paths stayed inside).
    assert set(os.listdir(tmp_path)) == {s.name for s in sandboxes}
    for sandbox in sandboxes:
        assert set(os.listdir(sandbox)) == {"box", "seed", "t.torrent"}


def _as_is_files() -> list[Path]:
    every = sorted(CORPUS.glob("*.torrent"))
    if os.environ.get("JSTORRENT_CORPUS_ALL"):
        return every
    refused = []
    for path in every:
        try:
            parse(path.read_bytes())
        except MetainfoError:
            refused.append(path)
    return [CORPUS / f"{name}.torrent" for name in AS_IS_ACCEPTED] + refused


def _verdict(path: Path) -> tuple[Torrent | None, ExitStatus]:
    try:
        torrent = parse(path.read_bytes())
    except MetainfoError as err:
        return None, err.exit_status
    return torrent, ExitStatus.TIMEOUT if torrent.total_length else ExitStatus.OK


async def test_corpus_as_is_through_get_without_peers_ends_with_its_verdict(tmp_path: Path) -> None:
    files = _as_is_files()
    assert len(files) >= len(AS_IS_ACCEPTED) + 45  # some hostile ones and the 50 refused ones
    boxes = [tmp_path / f"{i}-{path.stem}" for i, path in enumerate(files)]
    for box in boxes:
        box.mkdir()
    with trio.fail_after(DEADLINE):
        results = await get_many([get_args(path, box / "out", [], "--quiet", "--stall-timeout", STALL)
                                  for path, box in zip(files, boxes, strict=True)], CORPUS_PARALLEL)
    problems = []
    for path, box, done in zip(files, boxes, results, strict=True):
        torrent, want = _verdict(path)
        out = box / "out"
        if done.status != int(want):
            problems.append(f"{path.name}: exit {done.status}, want {int(want)}: {done.stderr.strip()}")
        elif want != ExitStatus.OK:
            # One error line (a torrent with an unusable tracker URL also logs a warning about it).
            errors = [line for line in done.stderr.splitlines() if line.startswith("jstorrent: ")]
            if len(errors) != 1 or "Traceback" in done.stderr:
                problems.append(f"{path.name}: not one clear line: {done.stderr!r}")
        outside = {p for p in _everything(box) if p != out and out not in p.parents}
        if outside:
            problems.append(f"{path.name}: wrote outside the folder: {sorted(map(str, outside))[:5]}")
        if torrent is None and os.path.lexists(out):
            problems.append(f"{path.name}: refused, but the folder was created")
    assert not problems, "\n".join(problems)
    assert set(os.listdir(tmp_path)) == {box.name for box in boxes}
