"""Storage notices a file deleted or replaced under it (the unit side of test_deleted_file.py)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import trio

from jstorrent_cli.config import BLOCK_SIZE, DEFAULT_CONFIG
from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.errors import ExitStatus, StorageError
from jstorrent_cli.tasks.storage import Storage, StorageFile

DEADLINE = 10
FILES = [StorageFile(("a.bin",), 2 * BLOCK_SIZE), StorageFile(("b.bin",), 2 * BLOCK_SIZE)]


def _storage(root: Path, max_open_files: int = 64) -> Storage:
    geometry = Geometry.from_files(((f.length, False) for f in FILES), 2 * BLOCK_SIZE, BLOCK_SIZE)
    return Storage(root, FILES, geometry, dataclasses.replace(DEFAULT_CONFIG, max_open_files=max_open_files))


async def test_sync_raises_once_a_written_file_is_deleted(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE), _storage(tmp_path) as storage:
        await storage.write_blocks([(0, 0, b"x" * BLOCK_SIZE), (1, 0, b"y" * BLOCK_SIZE)])
        await storage.sync()  # both there: fine
        (tmp_path / "a.bin").unlink()
        with pytest.raises(StorageError, match=r"a\.bin was deleted or replaced") as caught:
            await storage.sync()
        assert caught.value.exit_status == ExitStatus.FILE_IO


async def test_sync_raises_once_a_file_is_replaced_by_another(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE), _storage(tmp_path) as storage:
        await storage.write_blocks([(1, 0, b"y" * BLOCK_SIZE)])
        (tmp_path / "b.bin").unlink()
        (tmp_path / "b.bin").write_bytes(b"y" * BLOCK_SIZE)  # same bytes, another file: still a loss
        with pytest.raises(StorageError, match=r"b\.bin was deleted or replaced"):
            await storage.sync()


async def test_reopening_a_deleted_file_after_eviction_is_refused(tmp_path: Path) -> None:
    """One descriptor kept: writing b evicts a; a deleted meanwhile would be recreated empty by the
    next write (its earlier pieces silently gone) if the reopen did not compare identities."""
    with trio.fail_after(DEADLINE), _storage(tmp_path, max_open_files=1) as storage:
        await storage.write_blocks([(0, 0, b"x" * BLOCK_SIZE)])
        await storage.write_blocks([(1, 0, b"y" * BLOCK_SIZE)])
        assert storage.open_file_count == 1
        (tmp_path / "a.bin").unlink()
        with pytest.raises(StorageError, match=r"a\.bin was deleted or replaced"):
            await storage.write_blocks([(0, BLOCK_SIZE, b"z" * BLOCK_SIZE)])


async def test_files_never_opened_are_not_checked(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE), _storage(tmp_path) as storage:
        await storage.write_blocks([(0, 0, b"x" * BLOCK_SIZE)])
        assert not os.path.exists(tmp_path / "b.bin")
        await storage.sync()  # b.bin was never created: its absence is not a loss
