"""The resume state on disk: where it lives, how it is replaced atomically, how it is loaded.

Location: one hidden file per download, directly inside the output folder (`-d DIR`), named after
the torrent:

    <out_dir>/.<name>.jstorrent        the state (core/resume.py describes its bytes)
    <out_dir>/.<name>.jstorrent.tmp    the next state while it is being written
    <out_dir>/.<name>.lock             held (flock) by the one process downloading <name> there

It sits next to the download (a single file `<out_dir>/<name>` or a folder `<out_dir>/<name>/`),
so moving the output folder moves its state along, and deleting it forgets what was verified
(the next run re-hashes what is on disk). Torrent names are at most 240 bytes (Config), so all
three names fit a 255-byte filename.

Writing is atomic: the bytes go to the .tmp name, are fsynced, renamed over the state, and the
folder is fsynced so the rename itself is durable. A crash at any moment leaves either the old
state or the new one, never a mixture; a stale .tmp left by a crash is ignored and overwritten.
Every path is opened relative to a descriptor of the output folder with O_NOFOLLOW: a symlink
planted at the state's name is refused, never followed.

One download per folder and name at a time: `lock_sync()` takes an exclusive, non-blocking flock on
the lock file for as long as the download runs (the kernel drops it when the process ends, kill -9
included); a second jstorrent on the same download fails at once with one line (FileOpenError,
exit 16) instead of racing the first one for the state file (before: one of them died mid-run with
"cannot save the resume state: No such file or directory", its .tmp renamed away by the other).
The lock file stays (empty); deleting it between runs is harmless.

Loading never fails: a missing, unreadable, truncated, oversized or garbage state, or one of
another torrent, is "no state" (with a note saying why), which costs a re-hash, never a crash.

`ResumeSaver` keeps the state current during a download: `note_change()` after a piece is
verified; `run()` writes at most once per `config.resume_save_interval` and once more when it is
cancelled (shielded), so the state at exit is the last word. Each save takes the verified set
first, then flushes the data files (`sync`), then stats them, then writes: a piece recorded as
verified is always on disk.

`recover()` is the start of a download: which pieces are on disk and correct. With a usable state,
the trusted pieces (core/resume.py's rule) are taken as they are, the recorded pieces that lost
their trust are re-hashed, and nothing else is read (a partial download of 50 GB is not re-read
on every start). Without a state, every wanted piece whose files exist is hashed and kept if
correct, like aria2's -V. Either way a piece of a missing file is never read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import stat
from collections.abc import Awaitable, Callable, Iterable, Sequence

import trio

from jstorrent_cli.config import DEFAULT_CONFIG, Config
from jstorrent_cli.core import resume
from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.core.resume import FileStat, ResumeState, ResumeStateError, trusted_pieces
from jstorrent_cli.errors import DiskFullError, FileCreateError, FileOpenError, StorageError
from jstorrent_cli.tasks.parts import PartsGeometry, layout_of
from jstorrent_cli.tasks.verify import PieceResults, Progress, check_pieces

__all__ = [
    "LoadResult",
    "Recovered",
    "ResumeSaver",
    "StateStore",
    "recover",
    "stat_files",
    "stat_files_sync",
    "state_file_name",
]

STATE_SUFFIX = ".jstorrent"
TEMP_SUFFIX = ".tmp"
LOCK_SUFFIX = ".lock"  # .<name>.lock: 246 bytes at most (.<name>.jstorrent.lock would pass 255)
_FILE_MODE = 0o666  # narrowed by the user's umask
_DIR_MODE = 0o777
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
# flock unsupported (some network filesystems): go on without the lock rather than refuse to download.
_NO_LOCKING = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def state_file_name(name: str) -> str:
    """The state file of torrent `name` (a hidden file in the output folder)."""
    return f".{name}{STATE_SUFFIX}"


@dataclasses.dataclass(frozen=True, slots=True)
class LoadResult:
    """A loaded state, or None with `problem` saying why one on disk was not usable (None: absent)."""

    state: ResumeState | None
    problem: str | None = None


def _reason(err: OSError) -> str:
    return os.strerror(err.errno) if err.errno else str(err)


class StateStore:
    """The state file of one download. `rename`, `fsync` are injectable to test failures."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        name: str,
        config: Config = DEFAULT_CONFIG,
        *,
        rename: Callable[..., None] = os.replace,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        self.folder = os.path.realpath(os.fspath(out_dir))
        self.name = state_file_name(name)
        self.temp_name = self.name + TEMP_SUFFIX
        self.lock_name = f".{name}{LOCK_SUFFIX}"
        self._lock_fd: int | None = None
        self._config = config
        self._rename = rename
        self._fsync = fsync

    @property
    def path(self) -> str:
        return os.path.join(self.folder, self.name)

    def _open_folder(self) -> int:
        """The download folder (created if missing) as a descriptor to open files relative to; the
        caller closes it. Raises StorageError."""
        try:
            os.makedirs(self.folder, mode=_DIR_MODE, exist_ok=True)
            return os.open(self.folder, _DIR_FLAGS)
        except OSError as err:
            raise self._error(err, "create the folder", self.folder) from None

    # --- the lock ------------------------------------------------------------------------------

    def lock_sync(self) -> None:
        """Take this download's lock until `unlock()` (see the module's docstring). Raises
        FileOpenError if another process (or session) holds it, a StorageError if it cannot be made."""
        if self._lock_fd is not None:
            return
        path = os.path.join(self.folder, self.lock_name)
        dir_fd = self._open_folder()
        try:
            fd = os.open(self.lock_name, _LOCK_FLAGS, _FILE_MODE, dir_fd=dir_fd)
        except OSError as err:
            raise self._error(err, "create the lock file", path) from None
        finally:
            os.close(dir_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FileOpenError(f"another jstorrent is already downloading this torrent into {self.folder} "
                                f"(it holds {path})") from None
        except OSError as err:
            if err.errno not in _NO_LOCKING:
                os.close(fd)
                raise self._error(err, "lock", path) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the lock (closing its descriptor); nothing if it is not held."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    # --- writing -------------------------------------------------------------------------------

    def write_sync(self, data: bytes) -> None:
        """Replace the state with `data` atomically (see the module's docstring). Raises StorageError."""
        dir_fd = self._open_folder()
        try:
            try:
                fd = os.open(self.temp_name, _WRITE_FLAGS, _FILE_MODE, dir_fd=dir_fd)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    self._fsync(fd)
                finally:
                    os.close(fd)
                self._rename(self.temp_name, self.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                self._fsync(dir_fd)
            except OSError as err:
                self._discard_temp(dir_fd)
                raise self._error(err, "save the resume state", self.path) from None
            except BaseException:
                self._discard_temp(dir_fd)
                raise
        finally:
            os.close(dir_fd)

    def _discard_temp(self, dir_fd: int) -> None:
        # Never created, or gone: the state itself is untouched either way.
        with contextlib.suppress(OSError):
            os.unlink(self.temp_name, dir_fd=dir_fd)

    @staticmethod
    def _error(err: OSError, action: str, path: str) -> StorageError:
        if err.errno in _DISK_FULL:
            return DiskFullError(f"disk full: cannot {action} {path}: {_reason(err)}")
        if err.errno in _DENIED:
            return FileCreateError(f"cannot {action} {path}: {_reason(err)}")
        return StorageError(f"cannot {action} {path}: {_reason(err)}")

    async def write(self, data: bytes) -> None:
        await trio.to_thread.run_sync(self.write_sync, data)

    # --- reading -------------------------------------------------------------------------------

    def read_sync(self) -> bytes | None:
        """The state's bytes, or None if there is no state file. Raises ResumeStateError when one
        is there but cannot be used (not a regular file, too big, unreadable)."""
        try:
            dir_fd = os.open(self.folder, _DIR_FLAGS)
        except OSError:
            return None  # no output folder: no state
        try:
            try:
                fd = os.open(self.name, _READ_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                return None
            except OSError as err:
                raise ResumeStateError(f"cannot open {self.path}: {_reason(err)}") from None
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise ResumeStateError(f"{self.path} is not a regular file")
                limit = self._config.resume_max_state_bytes
                if info.st_size > limit:
                    raise ResumeStateError(f"{self.path} is {info.st_size} bytes, over the {limit}-byte limit")
                chunks: list[bytes] = []
                total = 0
                while True:
                    data = os.read(fd, limit + 1 - total)
                    if not data:
                        break
                    chunks.append(data)
                    total += len(data)
                    if total > limit:
                        raise ResumeStateError(f"{self.path} grew over the {limit}-byte limit")
                return b"".join(chunks)
            except OSError as err:
                raise ResumeStateError(f"cannot read {self.path}: {_reason(err)}") from None
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)

    def load_sync(self, *, info_hash: bytes, piece_count: int, file_count: int) -> LoadResult:
        """The state if there is a usable one for this torrent; never raises for what is on disk."""
        try:
            data = self.read_sync()
            if data is None:
                return LoadResult(None)
            state = resume.decode(data, self._config)
        except ResumeStateError as err:
            return LoadResult(None, f"ignoring the resume state: {err}")
        if state.info_hash != info_hash:
            return LoadResult(None, f"ignoring the resume state {self.path}: it belongs to another torrent")
        if state.piece_count != piece_count or len(state.files) != file_count:
            return LoadResult(None, f"ignoring the resume state {self.path}: it describes another file layout")
        return LoadResult(state)

    async def load(self, *, info_hash: bytes, piece_count: int, file_count: int) -> LoadResult:
        return await trio.to_thread.run_sync(
            lambda: self.load_sync(info_hash=info_hash, piece_count=piece_count, file_count=file_count)
        )


def stat_files_sync(root: str | os.PathLike[str], paths: Sequence[tuple[str, ...] | None]) -> list[FileStat | None]:
    """Size and mtime_ns of each file (relative path parts under `root`); None for a file that is
    absent, not a regular file, or has no path (a pad file)."""
    base = os.path.realpath(os.fspath(root))
    out: list[FileStat | None] = []
    for parts in paths:
        if parts is None:
            out.append(None)
            continue
        try:
            info = os.stat(os.path.join(base, *parts), follow_symlinks=False)
        except (OSError, ValueError):
            out.append(None)
            continue
        out.append(FileStat(info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else None)
    return out


async def stat_files(root: str | os.PathLike[str], paths: Sequence[tuple[str, ...] | None]) -> list[FileStat | None]:
    return await trio.to_thread.run_sync(stat_files_sync, root, paths)


class ResumeSaver:
    """Keeps one download's state file current (see the module's docstring).

    `root` is the output folder and `paths[i]` the relative path of the geometry's file i (None
    for pad files): with a selective download, the files of `parts.layout_for_selection` and its
    geometry. `verified()` returns the pieces verified so far; `sync()` flushes the data files
    (Storage.sync). `layout` defaults to the geometry's layout token (tasks/parts.py, layout_of).
    """

    def __init__(
        self,
        store: StateStore,
        *,
        info_hash: bytes,
        geometry: Geometry,
        root: str | os.PathLike[str],
        paths: Sequence[tuple[str, ...] | None],
        verified: Callable[[], Iterable[int]],
        sync: Callable[[], Awaitable[None]] | None = None,
        layout: bytes | None = None,
        config: Config = DEFAULT_CONFIG,
    ) -> None:
        if len(paths) != geometry.file_count:
            raise ValueError("paths must have one entry per file of the geometry")
        self._store = store
        self._info_hash = info_hash
        self._geometry = geometry
        self._root = root
        self._paths = tuple(paths)
        self._verified = verified
        self._sync = sync
        self._layout = layout_of(geometry)[0] if layout is None else layout
        self._interval = config.resume_save_interval
        self._changed = trio.Event()
        self._dirty = False
        self._lock = trio.Lock()
        self._hurry = False  # save_soon(): skip the rest of the interval once
        self._pause: trio.CancelScope | None = None  # the interval's wait, while it runs
        self._written: bytes | None = None  # the state file's bytes as this saver last wrote them
        self.saves = 0  # how many states were saved (for tests and diagnostics)
        self.writes = 0  # of those, how many wrote the file (the others found it unchanged)

    def note_change(self) -> None:
        """Something worth saving happened (a piece was verified). Never blocks."""
        self._dirty = True
        self._changed.set()

    def save_soon(self) -> None:
        """As note_change, and save now rather than after the rest of the interval: the download
        finished, so the final state's flush of the data overlaps the `completed` announce and the
        shutdown instead of following them. Never blocks."""
        self.note_change()
        self._hurry = True
        if self._pause is not None:
            self._pause.cancel()

    async def save(self) -> None:
        """Write the state now: verified set, then flush, then stat, then the atomic replace (skipped
        when the bytes equal the ones this saver wrote last: that state is on disk already)."""
        async with self._lock:
            self._dirty = False
            try:
                pieces = list(self._verified())
                if self._sync is not None:
                    await self._sync()
                stats = await stat_files(self._root, self._paths)
                state = ResumeState.make(self._info_hash, self._geometry.piece_count, pieces, stats, self._layout)
                data = resume.encode(state)
                if data != self._written:
                    await self._store.write(data)
                    self._written = data
                    self.writes += 1
            except BaseException:
                self._dirty = True  # not saved (cancelled, or the disk failed): the final save still must
                raise
            self.saves += 1

    async def run(self) -> None:
        """Save after changes, at most once per interval, until cancelled; then save once more."""
        try:
            while True:
                await self._changed.wait()
                self._changed = trio.Event()
                await self.save()
                with trio.CancelScope() as self._pause:
                    if not self._hurry:
                        await trio.sleep(self._interval)
                self._pause = None
                self._hurry = False
        finally:
            if self._dirty or self.saves:
                with trio.CancelScope(shield=True):
                    await self.save()


@dataclasses.dataclass(frozen=True, slots=True)
class Recovered:
    """What a download starts from."""

    verified: frozenset[int]  # pieces on disk and correct: trusted, or hashed ok now
    trusted: frozenset[int]  # of those, taken from the state without reading
    checked: PieceResults  # the pieces hashed now and how they came out
    problem: str | None  # why a state file on disk was ignored (None: used, or there was none)


async def recover(
    store: StateStore,
    *,
    info_hash: bytes,
    geometry: Geometry,
    root: str | os.PathLike[str],
    paths: Sequence[tuple[str, ...] | None],
    piece_hashes: bytes,
    wanted: Iterable[int] | None = None,
    progress: Progress | None = None,
    config: Config = DEFAULT_CONFIG,
) -> Recovered:
    """The pieces a download can count as done, from the state file and the data on disk.

    `geometry` and `paths` are the files on disk (with a selective download, those of
    `parts.layout_for_selection`); `wanted` defaults to every piece, or to a PartsGeometry's wanted
    pieces. `progress(done, total)` reports the hashing in bytes.
    """
    if wanted is None:
        wanted_set = (
            {p for r in geometry.wanted_ranges for p in r}
            if isinstance(geometry, PartsGeometry)
            else set(range(geometry.piece_count))
        )
    else:
        wanted_set = set(wanted)
    loaded = await store.load(info_hash=info_hash, piece_count=geometry.piece_count, file_count=geometry.file_count)
    stats = await stat_files(root, paths)
    if loaded.state is not None:
        layout, layout_files = layout_of(geometry)
        trusted = trusted_pieces(loaded.state, stats, geometry, info_hash=info_hash, layout=layout,
                                 layout_files=layout_files) & wanted_set
        candidates = (loaded.state.verified_pieces() & wanted_set) - trusted
    else:
        trusted = frozenset()
        candidates = frozenset(wanted_set)
    # A piece with a byte in a file that is not there cannot be complete: do not even try to read it.
    absent: set[int] = set()
    for index, stat_now in enumerate(stats):
        if stat_now is None and not geometry.is_pad(index) and geometry.file_length(index):
            absent.update(geometry.file_pieces(index))
    checked = await check_pieces(root, paths, geometry, piece_hashes, candidates - absent, progress=progress,
                                 config=config)
    return Recovered(frozenset(trusted | checked.ok), frozenset(trusted), checked, loaded.problem)
