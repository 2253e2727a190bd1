"""Building a .torrent (sans-IO): piece length choice and the metainfo dictionary.

The shell (tasks/create.py) walks the files and hashes them; this module only decides and encodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from jstorrent_cli.config import DEFAULT_CONFIG, Config
from jstorrent_cli.core import bencode

CREATED_BY = b"jstorrent 0.1.0"


@dataclasses.dataclass(frozen=True, slots=True)
class SourceFile:
    """One file to put in a torrent: its path inside the torrent and its size."""

    parts: tuple[str, ...]
    length: int


def choose_piece_length(total_length: int, config: Config = DEFAULT_CONFIG) -> int:
    """The smallest power of two that keeps the piece count near config.create_target_pieces."""
    length = config.create_min_auto_piece_length
    while length < config.create_max_auto_piece_length and total_length / length > config.create_target_pieces:
        length *= 2
    return length


def build_metainfo(
    *,
    name: str,
    files: Sequence[SourceFile] | None,
    single_length: int | None,
    piece_length: int,
    piece_hashes: bytes,
    trackers: Sequence[Sequence[str]] = (),
    web_seeds: Sequence[str] = (),
    private: bool = False,
    comment: str | None = None,
    creation_date: int | None = None,
) -> bytes:
    """Encode a v1 .torrent. `files` for a multi-file torrent, `single_length` for a single file."""
    info: dict[bytes, bencode.Value] = {
        b"name": name.encode(),
        b"piece length": piece_length,
        b"pieces": piece_hashes,
    }
    if files is not None:
        info[b"files"] = [
            {b"length": f.length, b"path": [part.encode() for part in f.parts]} for f in files
        ]
    else:
        assert single_length is not None
        info[b"length"] = single_length
    if private:
        info[b"private"] = 1
    top: dict[bytes, bencode.Value] = {b"info": info, b"created by": CREATED_BY}
    tiers = [[url.encode() for url in tier] for tier in trackers if tier]
    if tiers:
        top[b"announce"] = tiers[0][0]
        if len(tiers) > 1 or len(tiers[0]) > 1:
            top[b"announce-list"] = list(tiers)  # type: ignore[arg-type]
    if web_seeds:
        top[b"url-list"] = [url.encode() for url in web_seeds]
    if comment:
        top[b"comment"] = comment.encode()
    if creation_date is not None:
        top[b"creation date"] = creation_date
    return bencode.encode(top)
