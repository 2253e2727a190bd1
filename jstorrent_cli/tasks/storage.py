"""The write path: blocks to their place in the files, pieces read back and hashed.

Every received block goes to the writer at once (DESIGN.md, "The write path"). A batch of blocks
becomes a list of runs, one per stretch of contiguous bytes in one file; each run is one
`os.pwritev`, and a whole batch is one hop into a worker thread. Pad files (BEP 47) are never
written; zero-length files are created empty by `prepare`. A piece whose blocks are all on disk is
read back with `os.pread` and SHA-1 hashed in a worker thread, pad bytes fed as zeros.

Files are opened lazily, once, and kept in a bounded LRU cache of descriptors shared by the worker
threads. Every path is opened one component at a time from a descriptor of the root folder, with
O_NOFOLLOW: a symlink planted anywhere inside the output folder is refused, never followed, so
nothing is ever created outside it.

Every OSError becomes one StorageError subclass naming the file: disk full (exit 9), a file that
cannot be opened (16) or created (17), any other I/O error (18).

The API is plain tuples and callables so the session can glue it to the scheduler:
`write_blocks`, `hash_piece`, `read_block`, and the two loops `writer_loop` / `hasher_loop`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import functools
import hashlib
import itertools
import os
import stat
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, TypeAlias, TypeVar, cast

import trio

from jstorrent_cli.config import DEFAULT_CONFIG, Config
from jstorrent_cli.core.geometry import Geometry
from jstorrent_cli.errors import DiskFullError, FileCreateError, FileOpenError, StorageError, UsageError

BlockData: TypeAlias = bytes | bytearray | memoryview
# (piece, begin, data): a block to write.
Block: TypeAlias = tuple[int, int, BlockData]
# (piece, begin, length): a block that is on disk now.
Written: TypeAlias = tuple[int, int, int]
# os.pwritev / os.pread shapes; injectable so tests can count calls and simulate failing disks.
PWritev: TypeAlias = Callable[[int, Sequence[memoryview], int], int]
PRead: TypeAlias = Callable[[int, int, int], bytes]
FSync: TypeAlias = Callable[[int], None]

ALLOCATION_MODES = ("none", "sparse", "full")

# Permissions for what we create; the user's umask narrows them, as for any command-line tool.
_DIR_MODE = 0o777
_FILE_MODE = 0o666
# POSIX's guaranteed minimum of iovecs per pwritev (_XOPEN_IOV_MAX), if the system will not say.
_XOPEN_IOV_MAX = 16

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.EEXIST})
# posix_fallocate on a filesystem that cannot preallocate: fall back to a sparse file.
_NO_FALLOCATE = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})
# What a symlink met on the way is reported as, whatever errno the refused open gave.
_SYMLINK = OSError(errno.ELOOP, os.strerror(errno.ELOOP))


if TYPE_CHECKING:
    import outcome  # trio's own dependency: the type of what a worker thread delivers

_T = TypeVar("_T")


async def _in_thread(fn: Callable[[], _T], limiter: trio.CapacityLimiter) -> _T:
    """`fn()` in one of trio's cached worker threads; its result or its exception.

    `trio.to_thread.run_sync` without what this module never uses, because the write and hash
    hops run thousands of times per GiB: it names the worker thread on every job (two
    pthread_setname_np calls and a string), copies the context and sets up `trio.from_thread`.
    As with to_thread's default, a cancellation waits for `fn` to return.
    """
    async with limiter:
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def deliver(result: outcome.Outcome[_T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # the run ended under a daemon thread
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        trio.lowlevel.start_thread_soon(fn, deliver)
        return cast(_T, await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED))


def _iov_max() -> int:
    try:
        value = os.sysconf("SC_IOV_MAX")
    except (ValueError, OSError):
        value = -1
    return value if value > 0 else _XOPEN_IOV_MAX


_IOV_MAX = _iov_max()


@dataclasses.dataclass(frozen=True, slots=True)
class StorageFile:
    """One file of the torrent: relative path parts (already sanitised), length, BEP 47 flags.

    Pad files are never written; symlink entries (length 0) are never created.
    """

    path: tuple[str, ...]
    length: int
    pad: bool = False
    symlink: bool = False


class _FileEntryLike(Protocol):
    @property
    def path(self) -> tuple[str, ...]: ...
    @property
    def length(self) -> int: ...
    @property
    def pad(self) -> bool: ...
    @property
    def symlink(self) -> bool: ...


def storage_files(entries: Iterable[_FileEntryLike]) -> list[StorageFile]:
    """StorageFiles from the metainfo's FileEntry list (anything with path, length, pad, symlink)."""
    return [StorageFile(e.path, e.length, e.pad, e.symlink) for e in entries]


@dataclasses.dataclass(slots=True)
class _Run:
    """Contiguous bytes for one file: one pwritev."""

    file_index: int
    offset: int
    end: int
    buffers: list[memoryview]


def _nbytes(data: BlockData) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)


def _reason(err: OSError) -> str:
    return os.strerror(err.errno) if err.errno else str(err)


def _map_error(err: OSError, action: str, path: str, *, creating: bool) -> StorageError:
    """The one StorageError a user sees for `err` while doing `action` on `path`."""
    if err.errno in _DISK_FULL:
        return DiskFullError(f"disk full: cannot {action} {path}: {_reason(err)}")
    if err.errno == errno.ELOOP:
        return StorageError(f"refusing to {action} {path}: the path goes through a symbolic link")
    if err.errno in _DENIED:
        cls = FileCreateError if creating else FileOpenError
        return cls(f"cannot {action} {path}: {_reason(err)}")
    return StorageError(f"cannot {action} {path}: {_reason(err)}")


class _Handles:
    """A bounded LRU cache of open descriptors, shared by worker threads.

    A descriptor in use by a thread (pinned by `acquire` until `release`) is never closed under
    it: eviction skips it (the cache may exceed its bound for as long as every entry is in use) and
    `close` defers it to the release. A descriptor evicted with writes not yet flushed is fsynced
    before it is closed (outside the lock, by the thread that evicted it), and `sync_all` waits for
    such flushes, so a resume state saved after `sync_all` never lists data that is not durable.
    """

    def __init__(
        self,
        capacity: int,
        opener: Callable[[int], int],
        names: Sequence[str],
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        self._capacity = max(1, capacity)
        self._opener = opener
        self._names = names
        self._fsync = fsync
        self._lock = threading.Lock()
        self._retired = threading.Condition(self._lock)
        self._fds: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._users: dict[int, int] = {}
        self._dirty: set[int] = set()  # indexes written since their last fsync
        self._tickets = itertools.count()
        self._retiring: set[int] = set()  # tickets of evicted descriptors being flushed and closed
        self._closed = False

    def acquire(self, index: int) -> int:
        """The descriptor of file `index`, opened if needed and pinned until `release(index)`."""
        with self._lock:
            if self._closed:
                raise StorageError("storage is closed")
            fd = self._fds.get(index)
            if fd is None:
                # Opening under the lock: opens are rare (once per file) and never race each other.
                fd = self._opener(index)
                self._fds[index] = fd
            else:
                self._fds.move_to_end(index)
            self._users[index] = self._users.get(index, 0) + 1
            evicted = self._evict()
        try:
            self._retire(evicted)
        except BaseException:
            self.release(index)
            raise
        return fd

    def release(self, index: int, *, wrote: bool = False) -> None:
        """Unpin file `index`; `wrote` records that the holder wrote to it (an fsync is owed)."""
        with self._lock:
            if wrote:
                self._dirty.add(index)
            left = self._users[index] - 1
            if left:
                self._users[index] = left
            else:
                del self._users[index]
            if self._closed and not left:
                self._close(index)
            evicted = self._evict()
        self._retire(evicted)

    def sync_all(self) -> None:
        """fsync every file written since its last fsync, each pinned while it is flushed."""
        with self._lock:
            # Evicted descriptors still being flushed hold writes made before this sync.
            pending = set(self._retiring)
            self._retired.wait_for(lambda: not pending & self._retiring)
            pinned = [(index, self._fds[index]) for index in self._dirty if index in self._fds]
            for index, _ in pinned:
                self._users[index] = self._users.get(index, 0) + 1
            # Cleared before the fsync: a write finishing during it marks its file again.
            self._dirty.clear()
        failure: StorageError | None = None
        try:
            for index, fd in pinned:
                try:
                    self._fsync(fd)
                except OSError as err:
                    with self._lock:
                        self._dirty.add(index)
                    if failure is None:
                        failure = _map_error(err, "flush", self._names[index], creating=False)
        finally:
            for index, _ in pinned:
                self.release(index)
        if failure is not None:
            raise failure

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._fds)

    def _evict(self) -> list[tuple[int, int, bool, int]]:
        """Take least recently used unpinned descriptors out of the cache while it is over its
        bound: `(index, fd, dirty, ticket)` for `_retire` to flush and close outside the lock."""
        evicted: list[tuple[int, int, bool, int]] = []
        if len(self._fds) <= self._capacity:
            return evicted
        for index in [i for i in self._fds if i not in self._users]:
            if len(self._fds) <= self._capacity:
                break
            dirty = index in self._dirty
            self._dirty.discard(index)
            ticket = next(self._tickets)
            self._retiring.add(ticket)
            evicted.append((index, self._fds.pop(index), dirty, ticket))
        return evicted

    def _retire(self, evicted: list[tuple[int, int, bool, int]]) -> None:
        """fsync (if written since the last fsync) and close evicted descriptors; raise the first
        failure once all of them are closed."""
        failure: StorageError | None = None
        for index, fd, dirty, ticket in evicted:
            try:
                if dirty:
                    try:
                        self._fsync(fd)
                    except OSError as err:
                        failure = failure or _map_error(err, "flush", self._names[index], creating=False)
                try:
                    os.close(fd)
                except OSError as err:  # a write the OS had deferred failed (NFS does this)
                    failure = failure or _map_error(err, "close", self._names[index], creating=False)
            finally:
                with self._lock:
                    self._retiring.discard(ticket)
                    self._retired.notify_all()
        if failure is not None:
            raise failure

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for index in [i for i in self._fds if i not in self._users]:
                self._close(index)

    def _close(self, index: int) -> None:
        try:
            os.close(self._fds.pop(index))
        except OSError as err:  # a write the OS had deferred failed (NFS does this)
            raise _map_error(err, "close", self._names[index], creating=False) from None


class Storage:
    """The files of one download under `root`: writes blocks, hashes pieces, reads blocks back.

    `files` and `geometry` describe the same torrent (same order, same lengths). Worker threads:
    `config.disk_threads` for writes, `config.hash_threads` for read-back hashing.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        files: Sequence[StorageFile],
        geometry: Geometry,
        config: Config = DEFAULT_CONFIG,
        *,
        pwritev: PWritev = os.pwritev,
        pread: PRead = os.pread,
        fsync: FSync = os.fsync,
    ) -> None:
        if len(files) != geometry.file_count or any(
            f.length != geometry.file_length(i) or f.pad != geometry.is_pad(i) for i, f in enumerate(files)
        ):
            raise ValueError("files and geometry describe different torrents")
        if config.file_allocation not in ALLOCATION_MODES:
            raise UsageError(
                f"unknown file allocation {config.file_allocation!r} (use one of {', '.join(ALLOCATION_MODES)})"
            )
        self._root = os.path.realpath(os.fspath(root))
        self._files = tuple(files)
        self._display = tuple(self._checked_path(f) for f in self._files)
        self._geometry = geometry
        self._config = config
        self._pwritev = pwritev
        self._pread = pread
        self._handles = _Handles(config.max_open_files, self._open_file, self._display, fsync)
        # file index -> (st_dev, st_ino) of the file we created or opened first: a file deleted or
        # replaced under us is caught at its next open and by `sync` (never a success without it).
        self._identity: dict[int, tuple[int, int]] = {}
        self._write_limiter = trio.CapacityLimiter(config.disk_threads)
        self._hash_limiter = trio.CapacityLimiter(config.hash_threads)

    @property
    def root(self) -> str:
        return self._root

    def path_of(self, file_index: int) -> str:
        """The absolute path of a file (where it is or will be)."""
        return self._display[file_index]

    @property
    def open_file_count(self) -> int:
        return self._handles.count

    def _checked_path(self, f: StorageFile) -> str:
        parts = f.path
        bad = not parts or any(
            p in ("", ".", "..") or "\0" in p or os.sep in p or (os.altsep and os.altsep in p) for p in parts
        )
        full = os.path.normpath(os.path.join(self._root, *parts)) if not bad else ""
        if bad or os.path.commonpath([self._root, full]) != self._root or full == self._root:
            raise StorageError(f"refusing the unsafe path {'/'.join(parts)!r}: it would leave {self._root}")
        return full

    # --- opening -------------------------------------------------------------------------------

    def _open_root(self) -> int:
        try:
            os.makedirs(self._root, mode=_DIR_MODE, exist_ok=True)
            return os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise _map_error(err, "create the folder", self._root, creating=True) from None

    def _enter_dir(self, dir_fd: int, name: str, display: str) -> int:
        """Descend into (creating if needed) directory `name`; refuse a symlink."""
        try:
            os.mkdir(name, mode=_DIR_MODE, dir_fd=dir_fd)
        except FileExistsError:
            pass
        except OSError as err:
            raise _map_error(err, "create a folder for", display, creating=True) from None
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as err:
            cause = _SYMLINK if self._is_symlink(dir_fd, name) else err
            raise _map_error(cause, "create a folder for", display, creating=True) from None

    @staticmethod
    def _is_symlink(dir_fd: int, name: str) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    @staticmethod
    def _exists(dir_fd: int, name: str) -> bool:
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return False
        return True

    def _open_file(self, index: int) -> int:
        """Open (creating, allocating) file `index`, one path component at a time under the root."""
        f = self._files[index]
        display = self._display[index]
        dir_fd = self._open_root()
        try:
            for name in f.path[:-1]:
                inner = self._enter_dir(dir_fd, name, display)
                os.close(dir_fd)
                dir_fd = inner
            name = f.path[-1]
            # Created already: a reopen must find it (recreating it empty would lose its pieces unseen).
            known = index in self._identity
            try:
                fd = os.open(name, _OPEN_FLAGS & ~os.O_CREAT if known else _OPEN_FLAGS, _FILE_MODE, dir_fd=dir_fd)
            except OSError as err:
                if known and err.errno == errno.ENOENT:
                    raise self._lost(index) from None
                cause = _SYMLINK if self._is_symlink(dir_fd, name) else err
                existed = self._exists(dir_fd, name)
                raise _map_error(cause, "open" if existed else "create", display, creating=not existed) from None
        finally:
            os.close(dir_fd)
        try:
            self._check_identity(index, os.fstat(fd))
            self._allocate(fd, f.length, display)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _lost(self, index: int) -> StorageError:
        return StorageError(f"{self._display[index]} was deleted or replaced during the download "
                            "(run the same command again to fetch what it lost)")

    def _check_identity(self, index: int, info: os.stat_result) -> None:
        """Record the file's identity at its first open; a later open of another file is a loss."""
        identity = (info.st_dev, info.st_ino)
        known = self._identity.setdefault(index, identity)
        if known != identity:
            raise self._lost(index)

    def check_files_sync(self) -> None:
        """Raise StorageError if a file written or read so far is no longer the one at its path."""
        for index, identity in list(self._identity.items()):
            try:
                info = os.stat(self._display[index], follow_symlinks=False)
            except OSError:
                raise self._lost(index) from None
            if (info.st_dev, info.st_ino) != identity:
                raise self._lost(index)

    def _allocate(self, fd: int, length: int, display: str) -> None:
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise FileOpenError(f"cannot open {display}: not a regular file")
            mode = self._config.file_allocation
            if info.st_size > length or (mode == "sparse" and info.st_size < length):
                os.ftruncate(fd, length)
            elif mode == "full" and info.st_size < length:
                try:
                    os.posix_fallocate(fd, 0, length)
                except OSError as err:
                    if err.errno not in _NO_FALLOCATE:
                        raise
                    os.ftruncate(fd, length)
        except OSError as err:
            raise _map_error(err, "allocate", display, creating=False) from None

    # --- writing -------------------------------------------------------------------------------

    def _plan(self, blocks: Iterable[Block]) -> list[_Run]:
        """Cut blocks at file boundaries, drop pad bytes, merge contiguous (and duplicate) bytes."""
        pieces: list[tuple[int, int, memoryview]] = []
        for piece, begin, data in blocks:
            view = memoryview(data).cast("B")
            position = 0
            for span in self._geometry.block_spans(piece, begin, view.nbytes):
                if not span.pad:
                    pieces.append((span.file_index, span.file_offset, view[position : position + span.length]))
                position += span.length
        pieces.sort(key=lambda item: (item[0], item[1]))
        runs: list[_Run] = []
        for index, offset, view in pieces:
            last = runs[-1] if runs else None
            if last is not None and last.file_index == index and offset <= last.end:
                skip = last.end - offset  # bytes already in the run (a duplicate or an overlap)
                if skip < view.nbytes:
                    last.buffers.append(view[skip:])
                    last.end = offset + view.nbytes
            else:
                runs.append(_Run(index, offset, offset + view.nbytes, [view]))
        return runs

    def _write_run(self, fd: int, run: _Run) -> None:
        buffers = run.buffers
        offset = run.offset
        first = 0
        while first < len(buffers):
            wrote = self._pwritev(fd, buffers[first : first + _IOV_MAX], offset)
            if wrote <= 0:
                raise OSError(errno.EIO, "the disk accepted no bytes")
            offset += wrote
            while wrote:
                size = buffers[first].nbytes
                if wrote >= size:
                    wrote -= size
                    first += 1
                else:
                    buffers[first] = buffers[first][wrote:]
                    wrote = 0

    def _write_sync(self, blocks: Sequence[Block]) -> None:
        for run in self._plan(blocks):
            fd = self._handles.acquire(run.file_index)
            try:
                self._write_run(fd, run)
            except OSError as err:
                raise _map_error(err, "write", self._display[run.file_index], creating=False) from None
            finally:
                # Marked even after a partial write: whatever reached the file is owed an fsync.
                self._handles.release(run.file_index, wrote=True)

    async def write_blocks(self, blocks: Sequence[Block]) -> list[Written]:
        """Write the blocks (any order, duplicates harmless) in one worker-thread hop.

        Returns `(piece, begin, length)` for every block given, in the order given, once all of
        them are on disk (in the OS's cache: `sync` makes them durable).
        """
        # Blocks from the decoder are bytes: len() without a call; anything else through _nbytes.
        written = [(piece, begin, len(data) if type(data) is bytes else _nbytes(data)) for piece, begin, data in blocks]
        if written:
            await _in_thread(functools.partial(self._write_sync, blocks), self._write_limiter)
        return written

    # --- reading and hashing -------------------------------------------------------------------

    def _read_range(self, piece: int, begin: int, length: int) -> Iterator[bytes]:
        """The bytes of a piece range in slices; a short file ends the iteration early."""
        read_size = self._config.hash_read_size
        for span in self._geometry.block_spans(piece, begin, length):
            if span.pad:
                left = span.length
                while left:
                    take = min(left, read_size)
                    yield bytes(take)
                    left -= take
                continue
            fd = self._handles.acquire(span.file_index)
            try:
                position, end = span.file_offset, span.file_offset + span.length
                while position < end:
                    try:
                        data = self._pread(fd, min(read_size, end - position), position)
                    except OSError as err:
                        raise _map_error(err, "read", self._display[span.file_index], creating=False) from None
                    if not data:
                        return
                    yield data
                    position += len(data)
            finally:
                self._handles.release(span.file_index)

    def _hash_sync(self, piece: int, expected: bytes, per_block: bool) -> tuple[bool, tuple[bytes, ...]]:
        size = self._geometry.piece_size(piece)
        block_size = self._geometry.block_size
        digest = hashlib.sha1()
        digests: list[bytes] = []
        block = hashlib.sha1()
        block_left = min(block_size, size)
        seen = 0
        for data in self._read_range(piece, 0, size):
            digest.update(data)
            seen += len(data)
            view = memoryview(data)
            while per_block and view.nbytes:
                take = min(block_left, view.nbytes)
                block.update(view[:take])
                view = view[take:]
                block_left -= take
                if not block_left:
                    digests.append(block.digest())
                    block = hashlib.sha1()
                    block_left = min(block_size, size - block_size * len(digests))
        complete = seen == size
        return complete and digest.digest() == expected, tuple(digests) if complete else ()

    async def hash_piece(self, piece: int, expected_sha1: bytes) -> bool:
        """Read the piece back from disk and compare its SHA-1 (pad bytes hashed as zeros)."""
        ok, _ = await _in_thread(functools.partial(self._hash_sync, piece, expected_sha1, False), self._hash_limiter)
        return ok

    def _hash_wanted_sync(self, piece: int, expected: bytes, want: bool) -> tuple[bool, tuple[bytes, ...]]:
        ok, digests = self._hash_sync(piece, expected, want)
        if not ok and not want:
            # Rare: read the failed piece again for its block digests (one SHA-1 pass for the rest).
            _, digests = self._hash_sync(piece, expected, True)
        return ok, digests

    def _read_sync(self, piece: int, begin: int, length: int) -> bytes:
        data = b"".join(self._read_range(piece, begin, length))
        if len(data) != length:
            raise StorageError(f"piece {piece} is not all on disk: the file is shorter than the torrent says")
        return data

    async def read_block(self, piece: int, begin: int, length: int) -> bytes:
        """The bytes of a block as on disk (for uploading), pad bytes as zeros."""
        return await _in_thread(functools.partial(self._read_sync, piece, begin, length), self._hash_limiter)

    # --- whole files ---------------------------------------------------------------------------

    def _prepare_sync(self, wanted: Iterable[int] | None) -> None:
        indexes = range(len(self._files)) if wanted is None else wanted
        for index in indexes:
            f = self._files[index]
            if f.length == 0 and not f.pad and not f.symlink:
                # Zero-length files are in no piece: create them now, and do not keep them open.
                os.close(self._open_file(index))

    async def prepare(self, wanted: Iterable[int] | None = None) -> None:
        """Create the zero-length files (of `wanted` file indexes, default all); never pad files.

        Other files are created on their first write.
        """
        await trio.to_thread.run_sync(self._prepare_sync, wanted, limiter=self._write_limiter)

    async def sync(self) -> None:
        """Make every write done so far durable (before recording pieces as verified in a resume
        state): fsync each file written since its last fsync, pinned so no thread closes it meanwhile.
        Then check every file opened so far is still the one at its path (StorageError if deleted or
        replaced: its verified pieces are gone, so the state must not record them)."""
        await trio.to_thread.run_sync(self._sync_and_check, limiter=self._write_limiter)

    def _sync_and_check(self) -> None:
        self._handles.sync_all()
        self.check_files_sync()

    def close(self) -> None:
        """Close every cached descriptor (those in use by a thread close when it is done)."""
        self._handles.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- loops for the session -----------------------------------------------------------------

    async def writer_loop(
        self,
        receive_blocks: trio.MemoryReceiveChannel[Sequence[Block]],
        send_written: Callable[[list[Written]], Awaitable[None]],
    ) -> None:
        """Write every batch of blocks received, answering `send_written(written)` per hop.

        `config.disk_threads` long-lived tasks (no task spawned per hop) each take a batch, then
        everything already queued (up to `config.write_batch_max_bytes`, each block counted as a
        full one) into one hop, so a writer
        that falls behind coalesces more. Returns when the channel is closed and drained; the first
        StorageError stops the loop and is raised.
        """
        max_bytes = self._config.write_batch_max_bytes
        block_size = self._geometry.block_size
        failures: list[StorageError] = []
        taking = trio.Lock()  # one task at a time takes a batch: it gets all that is queued

        async def worker(cancel_scope: trio.CancelScope) -> None:
            while True:
                async with taking:
                    try:
                        first = await receive_blocks.receive()
                    except trio.EndOfChannel:
                        return
                    batch = list(first)
                    # Counted as whole blocks (no block is longer): no per-block work in the trio thread.
                    size = len(batch) * block_size
                    while size < max_bytes:
                        try:
                            more = receive_blocks.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        batch.extend(more)
                        size += len(more) * block_size
                try:
                    written = await self.write_blocks(batch)
                except StorageError as err:
                    failures.append(err)
                    cancel_scope.cancel()
                    return
                await send_written(written)

        async with trio.open_nursery() as nursery:
            for _ in range(max(1, self._config.disk_threads)):
                nursery.start_soon(worker, nursery.cancel_scope)
        if failures:
            raise failures[0]

    async def hasher_loop(
        self,
        receive_pieces: trio.MemoryReceiveChannel[tuple[int, bytes, bool]],
        send_hashed: Callable[[int, bool, tuple[bytes, ...]], Awaitable[None]],
    ) -> None:
        """Hash every `(piece, expected_sha1, want_block_digests)` received (see `hash_pieces`);
        answer `send_hashed(piece, ok, block_digests)`.

        `config.hash_threads` long-lived tasks; each takes a piece, then the pieces already queued
        (up to `config.hash_batch_bytes`) into one thread hop: small pieces do not pay a hop each.
        Returns when the channel is closed and drained; the first StorageError stops the loop and is
        raised.
        """
        max_bytes = self._config.hash_batch_bytes
        piece_size = self._geometry.piece_size
        failures: list[StorageError] = []
        taking = trio.Lock()  # one task at a time takes a batch: it gets all that is queued

        async def worker(cancel_scope: trio.CancelScope) -> None:
            while True:
                async with taking:
                    try:
                        jobs = [await receive_pieces.receive()]
                    except trio.EndOfChannel:
                        return
                    size = piece_size(jobs[0][0])
                    while size < max_bytes:
                        try:
                            job = receive_pieces.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        jobs.append(job)
                        size += piece_size(job[0])
                try:
                    results = await self.hash_pieces(jobs)
                except StorageError as err:
                    failures.append(err)
                    cancel_scope.cancel()
                    return
                for (piece, _, _), (ok, digests) in zip(jobs, results, strict=True):
                    await send_hashed(piece, ok, digests)

        async with trio.open_nursery() as nursery:
            for _ in range(max(1, self._config.hash_threads)):
                nursery.start_soon(worker, nursery.cancel_scope)
        if failures:
            raise failures[0]

    async def hash_pieces(self, jobs: Sequence[tuple[int, bytes, bool]]) -> list[tuple[bool, tuple[bytes, ...]]]:
        """Hash several `(piece, expected_sha1, want_block_digests)` in one thread hop; one
        `(ok, block_digests)` per job, in order. The SHA-1 of each block (which the scheduler keeps to
        find the liar behind a failed piece) comes only when `want_block_digests` is set or the piece
        fails its hash (then it is read a second time); the digests are empty if not computed or the
        piece is not all on disk."""
        return await _in_thread(functools.partial(self._hash_many_sync, jobs), self._hash_limiter)

    def _hash_many_sync(self, jobs: Sequence[tuple[int, bytes, bool]]) -> list[tuple[bool, tuple[bytes, ...]]]:
        return [self._hash_wanted_sync(piece, expected, want) for piece, expected, want in jobs]
