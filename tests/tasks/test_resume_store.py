"""The resume state file: atomic replacement, tolerant loading, the saver's pace, trust after a touch."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from jstorrent_cli.config import DEFAULT_CONFIG
from jstorrent_cli.core import resume
from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.core.resume import FileStat, ResumeState, trusted_pieces
from jstorrent_cli.errors import DiskFullError, StorageError
from jstorrent_cli.tasks.parts import PartsGeometry, layout_for_selection
from jstorrent_cli.tasks.resume_store import ResumeSaver, StateStore, recover, stat_files, stat_files_sync
from jstorrent_cli.tasks.storage import Storage, StorageFile

DEADLINE = 10
NAME = "movie"
HASH = bytes(range(20))
OTHER_HASH = bytes(20)


def _state(pieces: range | set[int], count: int = 10) -> ResumeState:
    return ResumeState.make(HASH, count, pieces, [FileStat(100, 5), None])


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_the_state_lives_hidden_inside_the_output_folder(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "out", NAME)
    store.write_sync(resume.encode(_state(range(3))))
    assert store.path == str((tmp_path / "out" / ".movie.jstorrent").resolve())
    assert _listing(tmp_path / "out") == [".movie.jstorrent"]  # no temporary left behind
    loaded = store.load_sync(info_hash=HASH, piece_count=10, file_count=2)
    assert loaded.problem is None and loaded.state == _state(range(3))


class Boom(Exception):
    pass


def _failing_rename(err: BaseException) -> Callable[..., None]:
    def rename(*args: object, **kwargs: object) -> None:
        raise err

    return rename


@pytest.mark.parametrize("failure", [OSError(errno.EIO, "I/O error"), OSError(errno.ENOSPC, "full"), Boom()])
def test_a_failure_between_write_and_rename_keeps_the_old_state_whole(tmp_path: Path, failure: BaseException) -> None:
    StateStore(tmp_path, NAME).write_sync(resume.encode(_state(range(3))))
    before = (tmp_path / ".movie.jstorrent").read_bytes()
    broken = StateStore(tmp_path, NAME, rename=_failing_rename(failure))
    expected: type[BaseException] = DiskFullError if getattr(failure, "errno", None) == errno.ENOSPC else (
        StorageError if isinstance(failure, OSError) else Boom)
    with pytest.raises(expected):
        broken.write_sync(resume.encode(_state(range(10))))
    assert (tmp_path / ".movie.jstorrent").read_bytes() == before
    assert _listing(tmp_path) == [".movie.jstorrent"]
    assert StateStore(tmp_path, NAME).load_sync(info_hash=HASH, piece_count=10, file_count=2).state == _state(range(3))


def test_a_failing_fsync_never_replaces_the_state(tmp_path: Path) -> None:
    StateStore(tmp_path, NAME).write_sync(resume.encode(_state(range(2))))
    before = (tmp_path / ".movie.jstorrent").read_bytes()
    renamed: list[object] = []

    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    def rename(*args: object, **kwargs: object) -> None:
        renamed.append(args)

    with pytest.raises(StorageError):
        StateStore(tmp_path, NAME, rename=rename, fsync=fsync).write_sync(resume.encode(_state(range(9))))
    assert renamed == []  # the rename comes only after the data is durable
    assert (tmp_path / ".movie.jstorrent").read_bytes() == before
    assert _listing(tmp_path) == [".movie.jstorrent"]


def test_a_stale_temporary_from_a_crash_is_ignored_and_overwritten(tmp_path: Path) -> None:
    store = StateStore(tmp_path, NAME)
    store.write_sync(resume.encode(_state(range(4))))
    (tmp_path / ".movie.jstorrent.tmp").write_bytes(b"half a sta")  # killed mid-write
    assert store.load_sync(info_hash=HASH, piece_count=10, file_count=2).state == _state(range(4))
    store.write_sync(resume.encode(_state(range(5))))
    assert _listing(tmp_path) == [".movie.jstorrent"]
    assert store.load_sync(info_hash=HASH, piece_count=10, file_count=2).state == _state(range(5))


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, None),  # absent: no state, nothing to report
        (b"", "not bencode"),
        (b"d6:format16:jstorrent resume7:versi", "not bencode"),  # truncated
        (b"\x00\xffgarbage" * 10, "not bencode"),
        (b"i5e", "not a dictionary"),
    ],
)
def test_bad_state_files_are_no_state(tmp_path: Path, content: bytes | None, needle: str | None) -> None:
    if content is not None:
        (tmp_path / ".movie.jstorrent").write_bytes(content)
    result = StateStore(tmp_path, NAME).load_sync(info_hash=HASH, piece_count=10, file_count=2)
    assert result.state is None
    assert (result.problem is None) if needle is None else (needle in (result.problem or ""))


def test_every_truncation_of_a_real_state_is_no_state(tmp_path: Path) -> None:
    data = resume.encode(_state({1, 5, 9}))
    store = StateStore(tmp_path, NAME)
    for cut in range(len(data)):
        (tmp_path / ".movie.jstorrent").write_bytes(data[:cut])
        result = store.load_sync(info_hash=HASH, piece_count=10, file_count=2)
        assert result.state is None and result.problem


def test_odd_things_at_the_state_path_are_no_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path, NAME)
    target = tmp_path / "elsewhere"
    target.write_bytes(resume.encode(_state(range(3))))
    (tmp_path / ".movie.jstorrent").symlink_to(target)
    result = store.load_sync(info_hash=HASH, piece_count=10, file_count=2)
    assert result.state is None and result.problem  # a symlink is refused, never followed
    (tmp_path / ".movie.jstorrent").unlink()
    (tmp_path / ".movie.jstorrent").mkdir()
    assert store.load_sync(info_hash=HASH, piece_count=10, file_count=2).state is None
    small = StateStore(tmp_path / "small", NAME, dataclasses.replace(DEFAULT_CONFIG, resume_max_state_bytes=10))
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / ".movie.jstorrent").write_bytes(resume.encode(_state(range(3))))
    result = small.load_sync(info_hash=HASH, piece_count=10, file_count=2)
    assert result.state is None and "limit" in (result.problem or "")
    assert StateStore(tmp_path / "missing", NAME).load_sync(info_hash=HASH, piece_count=10, file_count=2).state is None


def test_a_state_of_another_torrent_is_no_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path, NAME)
    store.write_sync(resume.encode(_state(range(3))))
    assert "another torrent" in (store.load_sync(info_hash=OTHER_HASH, piece_count=10, file_count=2).problem or "")
    assert "another file layout" in (store.load_sync(info_hash=HASH, piece_count=11, file_count=2).problem or "")
    assert "another file layout" in (store.load_sync(info_hash=HASH, piece_count=10, file_count=3).problem or "")


def test_stat_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"12345")
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    os.utime(tmp_path / "a", ns=(1, 123_456_789_012))
    got = stat_files_sync(tmp_path, [("a",), ("missing",), ("d",), ("link",), None])
    assert got == [FileStat(5, 123_456_789_012), None, None, None, None]


# --- the saver ---------------------------------------------------------------------------------

def _geometry() -> Geometry:
    # Two files of 300 and 500 bytes, pieces of 200: file a in pieces 0-1, file b in pieces 1-3.
    return Geometry.from_files([(300, False), (500, False)], 200, 100)


def _make_files(root: Path) -> list[tuple[str, ...] | None]:
    (root / "t").mkdir(parents=True, exist_ok=True)
    (root / "t" / "a").write_bytes(b"a" * 300)
    (root / "t" / "b").write_bytes(b"b" * 500)
    return [("t", "a"), ("t", "b")]


async def test_saver_writes_at_most_once_per_interval_and_at_exit(tmp_path: Path) -> None:
    # The real clock (the saver hops to threads, which a mock clock would jump over), a short interval.
    interval = 0.05
    config = dataclasses.replace(DEFAULT_CONFIG, resume_save_interval=interval)
    paths = _make_files(tmp_path)
    verified: set[int] = set()
    syncs: list[float] = []

    async def sync() -> None:
        syncs.append(trio.current_time())

    store = StateStore(tmp_path, NAME)
    saver = ResumeSaver(store, info_hash=HASH, geometry=_geometry(), root=tmp_path, paths=paths,
                        verified=lambda: verified, sync=sync, config=config)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(saver.run)
            start = trio.current_time()
            for step in range(100):  # a change every interval / 10
                verified.add(step % 4)
                saver.note_change()
                await trio.sleep(interval / 10)
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
    # One save per interval while changes keep coming, plus the final one at exit.
    assert 2 <= saver.saves <= elapsed / interval + 2
    # Saves while running are an interval apart at least (the final one at exit may come sooner).
    assert all(b - a >= interval for a, b in itertools.pairwise(syncs[:-1]))
    loaded = store.load_sync(info_hash=HASH, piece_count=4, file_count=2)
    assert loaded.state is not None and loaded.state.verified_pieces() == {0, 1, 2, 3}
    assert loaded.state.files == tuple(stat_files_sync(tmp_path, paths))


async def test_save_soon_saves_at_once_and_an_unchanged_state_is_not_rewritten(tmp_path: Path) -> None:
    # The real clock (the saver hops to threads). A long interval: only save_soon can make the second
    # save come early. The final save at exit finds the state unchanged and writes nothing, but it
    # still flushes the data (a block written since could be on disk only in the page cache).
    interval = 30.0
    config = dataclasses.replace(DEFAULT_CONFIG, resume_save_interval=interval)
    paths = _make_files(tmp_path)
    verified: set[int] = {0}
    syncs: list[float] = []

    async def sync() -> None:
        syncs.append(trio.current_time())

    store = StateStore(tmp_path, NAME)
    state_file = tmp_path / f".{NAME}.jstorrent"
    saver = ResumeSaver(store, info_hash=HASH, geometry=_geometry(), root=tmp_path, paths=paths,
                        verified=lambda: verified, sync=sync, config=config)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(saver.run)
            saver.note_change()
            while saver.saves < 1:
                await trio.sleep(0.01)
            verified.update({1, 2, 3})  # the last pieces verified: the download finished
            saver.save_soon()
            while saver.saves < 2:
                await trio.sleep(0.01)
            took = syncs[1] - syncs[0]
            inode = state_file.stat().st_ino
            nursery.cancel_scope.cancel()
    assert took < interval / 2  # at once, not after the interval
    assert (saver.saves, saver.writes, len(syncs)) == (3, 2, 3)  # the final save synced and wrote nothing
    assert state_file.stat().st_ino == inode  # not replaced (every write is a new file renamed over it)
    loaded = store.load_sync(info_hash=HASH, piece_count=4, file_count=2)
    assert loaded.state is not None and loaded.state.verified_pieces() == {0, 1, 2, 3}


async def test_saver_without_changes_writes_nothing(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    paths = _make_files(tmp_path)
    saver = ResumeSaver(StateStore(tmp_path, NAME), info_hash=HASH, geometry=_geometry(), root=tmp_path,
                        paths=paths, verified=set)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(saver.run)
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
    assert saver.saves == 0
    assert not (tmp_path / ".movie.jstorrent").exists()


async def test_a_touched_file_is_no_longer_trusted_after_a_restart(tmp_path: Path) -> None:
    paths = _make_files(tmp_path)
    geometry = _geometry()
    store = StateStore(tmp_path, NAME)
    saver = ResumeSaver(store, info_hash=HASH, geometry=geometry, root=tmp_path, paths=paths,
                        verified=lambda: range(4))
    with trio.fail_after(DEADLINE):
        await saver.save()
        loaded = await store.load(info_hash=HASH, piece_count=4, file_count=2)
        assert loaded.state is not None
        assert trusted_pieces(loaded.state, await stat_files(tmp_path, paths), geometry) == {0, 1, 2, 3}
        # Touch file a: same size, mtime moved by a second.
        info = os.stat(tmp_path / "t" / "a")
        os.utime(tmp_path / "t" / "a", ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
        assert trusted_pieces(loaded.state, await stat_files(tmp_path, paths), geometry) == {2, 3}
        # Grow file b: its pieces go too.
        with open(tmp_path / "t" / "b", "ab") as f:
            f.write(b"x")
        assert trusted_pieces(loaded.state, await stat_files(tmp_path, paths), geometry) == set()


# --- recover: what a download starts from --------------------------------------------------------

def _payload(root: Path) -> tuple[Geometry, list[tuple[str, ...] | None], bytes, bytes]:
    """Files a (300 bytes) and b (500 bytes) on disk, pieces of 200; returns hashes and payload too."""
    payload = bytes((i * 7 + 3) % 251 for i in range(800))
    (root / "t").mkdir(parents=True, exist_ok=True)
    (root / "t" / "a").write_bytes(payload[:300])
    (root / "t" / "b").write_bytes(payload[300:])
    hashes = b"".join(hashlib.sha1(payload[p * 200 : p * 200 + 200]).digest() for p in range(4))
    return _geometry(), [("t", "a"), ("t", "b")], hashes, payload


async def test_recover_without_state_hashes_existing_data(tmp_path: Path) -> None:
    geometry, paths, hashes, _ = _payload(tmp_path)
    (tmp_path / "t" / "b").unlink()  # b missing: pieces 1-3 cannot be complete and are not read
    with trio.fail_after(DEADLINE):
        got = await recover(StateStore(tmp_path, NAME), info_hash=HASH, geometry=geometry, root=tmp_path,
                            paths=paths, piece_hashes=hashes)
    assert got.verified == {0} and got.trusted == frozenset() and got.problem is None
    assert got.checked.ok | got.checked.bad | got.checked.missing == {0}


async def test_recover_trusts_an_unchanged_state_and_rehashes_only_touched_files(tmp_path: Path) -> None:
    geometry, paths, hashes, _ = _payload(tmp_path)
    store = StateStore(tmp_path, NAME)
    saver = ResumeSaver(store, info_hash=HASH, geometry=geometry, root=tmp_path, paths=paths,
                        verified=lambda: {0, 1, 2})  # piece 3 complete on disk but not recorded
    with trio.fail_after(DEADLINE):
        await saver.save()
        got = await recover(store, info_hash=HASH, geometry=geometry, root=tmp_path, paths=paths, piece_hashes=hashes)
        assert got.verified == got.trusted == {0, 1, 2}
        assert not got.checked.ok | got.checked.bad | got.checked.missing  # nothing read at all
        # Corrupt a byte of b inside piece 2 and keep its mtime moving: b's recorded pieces are re-hashed.
        raw = bytearray((tmp_path / "t" / "b").read_bytes())
        raw[150] ^= 1  # torrent byte 450: piece 2
        (tmp_path / "t" / "b").write_bytes(bytes(raw))
        info = os.stat(tmp_path / "t" / "b")
        os.utime(tmp_path / "t" / "b", ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
        got = await recover(store, info_hash=HASH, geometry=geometry, root=tmp_path, paths=paths, piece_hashes=hashes)
    assert got.trusted == {0}  # piece 1 shares bytes with b
    assert got.checked.ok == {1} and got.checked.bad == {2}
    assert got.verified == {0, 1}


async def test_recover_with_a_garbage_state_is_a_full_check(tmp_path: Path) -> None:
    geometry, paths, hashes, _ = _payload(tmp_path)
    (tmp_path / ".movie.jstorrent").write_bytes(b"d6:format")
    with trio.fail_after(DEADLINE):
        got = await recover(StateStore(tmp_path, NAME), info_hash=HASH, geometry=geometry, root=tmp_path,
                            paths=paths, piece_hashes=hashes)
    assert got.verified == {0, 1, 2, 3} and got.trusted == frozenset()
    assert got.problem and "not bencode" in got.problem


async def test_recover_with_another_selection_rechecks_the_parts_pieces(tmp_path: Path) -> None:
    _, _, hashes, payload = _payload(tmp_path / "unused")
    files = [StorageFile(("t", "a"), 300), StorageFile(("t", "b"), 500)]
    first, disk_files = layout_for_selection(_geometry(), files, {0}, NAME)  # a: pieces 0-1, b's head in parts
    assert isinstance(first, PartsGeometry)
    paths = [f.path for f in disk_files]
    store = StateStore(tmp_path, NAME)
    with trio.fail_after(DEADLINE):
        with Storage(tmp_path, disk_files, first) as storage:
            await storage.write_blocks([(0, 0, payload[:100]), (0, 100, payload[100:200]),
                                        (1, 0, payload[200:300]), (1, 100, payload[300:400])])
            saver = ResumeSaver(store, info_hash=HASH, geometry=first, root=tmp_path, paths=paths,
                                verified=lambda: {0, 1}, sync=storage.sync)
            await saver.save()
        same = await recover(store, info_hash=HASH, geometry=first, root=tmp_path, paths=paths, piece_hashes=hashes)
        assert same.trusted == same.verified == {0, 1}
        # Same files on disk, but the state was recorded under another selection: piece 1 (which
        # uses the parts file) must be re-checked, piece 0 (file a alone) is still trusted.
        state = (await store.load(info_hash=HASH, piece_count=4, file_count=3)).state
        assert state is not None
        forged = dataclasses.replace(state, layout=b"another selection")
        await store.write(resume.encode(forged))
        changed = await recover(store, info_hash=HASH, geometry=first, root=tmp_path, paths=paths,
                                piece_hashes=hashes)
    assert changed.trusted == {0} and changed.checked.ok == {1} and changed.verified == {0, 1}


async def test_a_save_cancelled_half_way_is_made_at_exit(tmp_path: Path) -> None:
    paths = _make_files(tmp_path)
    entered = trio.Event()
    calls = 0

    async def sync() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first save hangs in its flush until the download is cancelled
            entered.set()
            await trio.sleep_forever()

    store = StateStore(tmp_path, NAME)
    saver = ResumeSaver(store, info_hash=HASH, geometry=_geometry(), root=tmp_path, paths=paths,
                        verified=lambda: {3}, sync=sync)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(saver.run)
            saver.note_change()
            await entered.wait()
            nursery.cancel_scope.cancel()
    assert calls == 2 and saver.saves == 1
    loaded = store.load_sync(info_hash=HASH, piece_count=4, file_count=2)
    assert loaded.state is not None and loaded.state.verified_pieces() == {3}
