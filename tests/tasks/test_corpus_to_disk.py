"""The path-safety corpus driven all the way to disk (issue [4]).

For every torrent of libtorrent's corpus that we accept, storage creates its files under an output
folder and writes the first and the last block touching each file. Nothing may appear outside that
folder; a symlink planted inside the output folder (where the torrent's first folder would go) must
not be followed out of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.core.metainfo import Torrent, parse
from jstorrent_cli.errors import MetainfoError, StorageError
from jstorrent_cli.tasks.storage import Storage, storage_files

CORPUS = Path(__file__).resolve().parent.parent / "data" / "torrents"


def accepted() -> list[tuple[str, Torrent]]:
    out = []
    for path in sorted(CORPUS.glob("*.torrent")):
        try:
            out.append((path.name, parse(path.read_bytes())))
        except MetainfoError:
            continue
    return out


ACCEPTED = accepted()


def listing(folder: Path) -> set[str]:
    return {str(Path(d, n).relative_to(folder)) for d, dirs, files in os.walk(folder) for n in dirs + files}


def edge_blocks(torrent: Torrent, geometry: Geometry) -> list[tuple[int, int, bytes]]:
    """The first and last block touching each non-empty, non-pad file."""
    blocks: dict[tuple[int, int], bytes] = {}
    bs = DEFAULT_CONFIG.block_size
    for index, entry in enumerate(torrent.files):
        if entry.pad or not entry.is_created or entry.length == 0:
            continue
        for offset in (geometry.file_offset(index), geometry.file_offset(index) + entry.length - 1):
            piece, inside = divmod(offset, torrent.piece_length)
            begin = inside // bs * bs
            length = geometry.block_length(piece, begin // bs)
            blocks[(piece, begin)] = bytes([index % 251 + 1]) * length
    return [(p, b, d) for (p, b), d in sorted(blocks.items())]


def test_corpus_has_accepted_torrents() -> None:
    assert len(ACCEPTED) >= 55  # 65 that libtorrent accepts, less the v2-only ones


@pytest.mark.parametrize(("name", "torrent"), ACCEPTED, ids=[n for n, _ in ACCEPTED])
async def test_nothing_is_written_outside_the_output_folder(tmp_path: Path, name: str, torrent: Torrent) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "out"
    root.mkdir()
    files = storage_files(torrent.files)
    geometry = Geometry.from_files(((f.length, f.pad) for f in torrent.files), torrent.piece_length)
    with trio.fail_after(30), Storage(root, files, geometry, DEFAULT_CONFIG) as storage:
        await storage.prepare()
        await storage.write_blocks(edge_blocks(torrent, geometry))
    assert listing(outside) == set()
    assert set(os.listdir(tmp_path)) == {"outside", "out"}
    for entry in torrent.files:
        target = root.joinpath(*entry.path)
        if entry.is_created and not entry.pad:
            assert target.is_file() and not target.is_symlink(), (name, entry.path)
            assert target.stat().st_size == entry.length
            assert os.path.commonpath([os.path.realpath(target), root]) == str(root)
        elif entry.pad:
            assert not target.exists(), (name, entry.path)


@pytest.mark.parametrize(("name", "torrent"), [(n, t) for n, t in ACCEPTED if t.is_multi_file][:20],
                         ids=[n for n, t in ACCEPTED if t.is_multi_file][:20])
async def test_a_planted_symlink_is_not_followed_out(tmp_path: Path, name: str, torrent: Torrent) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "out"
    root.mkdir()
    first = next(f for f in torrent.files if f.is_created and not f.pad and f.length > 0)
    (root / first.path[0]).symlink_to(outside, target_is_directory=True)
    files = storage_files(torrent.files)
    geometry = Geometry.from_files(((f.length, f.pad) for f in torrent.files), torrent.piece_length)
    with (
        trio.fail_after(30),
        pytest.raises(StorageError, match=r"symlink|symbolic"),
        Storage(root, files, geometry, DEFAULT_CONFIG) as storage,
    ):
        await storage.prepare()
        await storage.write_blocks(edge_blocks(torrent, geometry))
    assert listing(outside) == set()
