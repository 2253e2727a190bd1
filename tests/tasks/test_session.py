"""jstorrent downloads from jstorrent: a seeder session and a leecher session in one trio run."""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from pathlib import Path

import pytest
import trio

from jstorrent_cli.config import DEFAULT_CONFIG, KiB
from jstorrent_cli.tasks import session
from tests.conftest import assert_payload, build_torrent, random_files, write_payload

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
