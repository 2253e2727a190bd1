"""The error tree and the exit statuses.

Exit statuses follow aria2c's table wherever a meaning exists there, so that scripts written for
aria2c port unchanged. Every error a user can cause or meet is a JsTorrentError subclass that knows
its exit status; cli.py turns it into one line on stderr and that status, never a traceback.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    UNKNOWN = 1
    TIMEOUT = 2  # aria2: timeout; ours: --stall-timeout expired
    NOT_FOUND = 3  # aria2: resource not found (a missing .torrent file)
    NETWORK = 6  # aria2: network problem
    DISK_FULL = 9  # aria2: not enough disk space
    FILE_EXISTS = 13  # aria2: file already exists
    FILE_RENAME = 14  # aria2: renaming a file failed (kept for parity, unused so far)
    FILE_OPEN = 16  # aria2: could not open or create a file
    FILE_CREATE = 17  # aria2: could not create a file or directory
    FILE_IO = 18  # aria2: I/O error on a file
    BENCODE = 25  # aria2: bencode parse error
    BAD_TORRENT = 26  # aria2: corrupted or invalid .torrent file
    BAD_MAGNET = 27  # aria2: bad magnet URI
    BAD_OPTION = 28  # aria2: bad or unrecognised option
    CHECKSUM = 32  # aria2: checksum validation failed
    INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as shells expect


class JsTorrentError(Exception):
    """Base of every error jstorrent reports to a user. `str(err)` is the one line shown."""

    exit_status: ExitStatus = ExitStatus.UNKNOWN


class UsageError(JsTorrentError):
    """A bad flag or argument."""

    exit_status = ExitStatus.BAD_OPTION


class MetainfoError(JsTorrentError):
    """A .torrent file that is not a usable torrent."""

    exit_status = ExitStatus.BAD_TORRENT


class BencodeError(MetainfoError):
    """Bytes that are not canonical bencode. `offset` is where the decoder gave up."""

    exit_status = ExitStatus.BENCODE

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at byte {offset}")
        self.reason = message
        self.offset = offset


class BencodeEncodeError(JsTorrentError):
    """A value we were asked to encode that bencode cannot represent (a programming error)."""


class MagnetError(JsTorrentError):
    """A magnet URI that cannot be used."""

    exit_status = ExitStatus.BAD_MAGNET


class InputNotFoundError(JsTorrentError):
    """A file named on the command line does not exist."""

    exit_status = ExitStatus.NOT_FOUND


class RemoteProtocolError(JsTorrentError):
    """A peer broke the protocol. Costs only that peer's connection."""

    exit_status = ExitStatus.NETWORK


class TrackerError(JsTorrentError):
    """A tracker failed or answered nonsense. Logged and retried, never fatal on its own."""

    exit_status = ExitStatus.NETWORK


class StorageError(JsTorrentError):
    """A problem with the files on disk."""

    exit_status = ExitStatus.FILE_IO


class DiskFullError(StorageError):
    exit_status = ExitStatus.DISK_FULL


class OutputExistsError(StorageError):
    """An output file is there already and we were not told to overwrite it."""

    exit_status = ExitStatus.FILE_EXISTS


class FileOpenError(StorageError):
    exit_status = ExitStatus.FILE_OPEN


class FileCreateError(StorageError):
    exit_status = ExitStatus.FILE_CREATE


class ChecksumError(StorageError):
    """Data on disk does not match the torrent's hashes."""

    exit_status = ExitStatus.CHECKSUM


class StallTimeoutError(JsTorrentError):
    exit_status = ExitStatus.TIMEOUT
