"""The download lock of tasks/resume_store.py: one holder at a time, freed by unlock, and its name fits
a 255-byte filename even for the longest torrent name we keep."""

from __future__ import annotations

from pathlib import Path

import pytest

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.errors import ExitStatus, FileOpenError
from jstorrent_cli.tasks.resume_store import StateStore


def test_a_second_holder_is_refused_until_the_first_unlocks(tmp_path: Path) -> None:
    first, second = StateStore(tmp_path, "x"), StateStore(tmp_path, "x")
    first.lock_sync()
    with pytest.raises(FileOpenError, match="another jstorrent is already downloading") as caught:
        second.lock_sync()
    assert caught.value.exit_status == ExitStatus.FILE_OPEN
    StateStore(tmp_path, "y").lock_sync()  # another torrent in the same folder is fine
    first.unlock()
    second.lock_sync()
    second.unlock()


def test_the_lock_name_fits_for_the_longest_torrent_name(tmp_path: Path) -> None:
    name = "n" * DEFAULT_CONFIG.max_path_element_bytes  # 240 bytes: `.NAME.jstorrent.lock` would be 256
    store = StateStore(tmp_path, name)
    store.lock_sync()
    assert (tmp_path / f".{name}.lock").exists()
    store.unlock()
