"""The list of downloads for `jstorrent get -i FILE` (sans-IO: bytes in, items out).

The format follows aria2c's input file, as far as jstorrent needs it:

    # a comment (a line whose first non-blank character is '#')
    ubuntu.iso.torrent
    magnet:?xt=urn:btih:...
      dir=/srv/downloads/other

* One source per line: a .torrent path or a magnet link. Surrounding blanks are dropped.
* Blank lines and comment lines are ignored anywhere.
* A line that starts with a space or a tab is an option of the source above it, `NAME=VALUE`.
  Known options: `dir` (the folder this item downloads into, instead of `-d`). An unknown option,
  an option with no source above it, an empty value or a repeated option is an error naming the line.
* The input is UTF-8 (a byte order mark is ignored); line ends are LF or CRLF.

Every problem raises BatchListError (a UsageError: exit status 28) with the 1-based line number.
Sizes are capped by Config.batch_list_max_bytes / batch_list_max_line / batch_list_max_items.
"""

from __future__ import annotations

import dataclasses

from jstorrent_cli.config import DEFAULT_CONFIG, Config
from jstorrent_cli.errors import ExitStatus, UsageError

# The options an item line may carry (aria2c spells them the same way).
OPTION_DIR = "dir"
KNOWN_OPTIONS = frozenset({OPTION_DIR})
_BOM = "\ufeff"
_COMMENT = "#"
_INDENT = (" ", "\t")


class BatchListError(UsageError):
    """A download list that cannot be used; the message names the line."""


@dataclasses.dataclass(frozen=True, slots=True)
class BatchItem:
    source: str  # a .torrent path or a magnet link, as written
    line: int  # 1-based line of the source (0: given on the command line)
    dir: str | None = None  # the `dir=` option, when given

    @property
    def is_magnet(self) -> bool:
        return self.source[:7].lower() == "magnet:"


def parse_batch_list(data: bytes, *, name: str = "input list", config: Config = DEFAULT_CONFIG) -> list[BatchItem]:
    """The items of a download list; `name` (the file, or "stdin") prefixes every error message."""
    if len(data) > config.batch_list_max_bytes:
        raise BatchListError(f"{name}: {len(data)} bytes is more than a download list may hold "
                             f"({config.batch_list_max_bytes} bytes)")
    items: list[BatchItem] = []
    source: str | None = None
    source_line = 0
    options: dict[str, str] = {}

    def close_item() -> None:
        if source is not None:
            items.append(BatchItem(source, source_line, options.get(OPTION_DIR)))

    for number, raw in enumerate(data.split(b"\n"), start=1):
        if len(raw) > config.batch_list_max_line:
            raise BatchListError(f"{name} line {number}: longer than {config.batch_list_max_line} bytes")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BatchListError(f"{name} line {number}: not UTF-8 text") from None
        if number == 1 and line.startswith(_BOM):
            line = line[len(_BOM):]
        line = line.removesuffix("\r")
        if "\x00" in line:
            raise BatchListError(f"{name} line {number}: contains a NUL character")
        stripped = line.strip()
        if not stripped or stripped.startswith(_COMMENT):
            continue
        if line.startswith(_INDENT):
            if source is None:
                raise BatchListError(f"{name} line {number}: option {stripped!r} has no download above it")
            key, sep, value = stripped.partition("=")
            key, value = key.strip(), value.strip()
            if not sep:
                raise BatchListError(f"{name} line {number}: {stripped!r} is not an option (use NAME=VALUE, "
                                     f"e.g. dir=/downloads)")
            if key not in KNOWN_OPTIONS:
                known = ", ".join(sorted(KNOWN_OPTIONS))
                raise BatchListError(f"{name} line {number}: unknown option {key!r} (known: {known})")
            if not value:
                raise BatchListError(f"{name} line {number}: option {key!r} has an empty value")
            if key in options:
                raise BatchListError(f"{name} line {number}: option {key!r} given twice for one download")
            options[key] = value
            continue
        close_item()
        if len(items) >= config.batch_list_max_items:
            raise BatchListError(f"{name} line {number}: more than {config.batch_list_max_items} downloads")
        source, source_line, options = stripped, number, {}
    close_item()
    return items




# --- results (one row per item; the views and the exit status read them) -------------------------

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_INTERRUPTED = "interrupted"
STATUS_DUPLICATE = "duplicate"


@dataclasses.dataclass(frozen=True, slots=True)
class ItemResult:
    """How one item of a batch ended."""

    id: int  # 1-based position in the list (aria2c's gid column)
    source: str  # the .torrent path or magnet link as given
    status: str  # STATUS_OK, STATUS_ERROR, STATUS_INTERRUPTED or STATUS_DUPLICATE
    exit_status: int  # what `get` with this item alone would have exited with (0 for ok and duplicate)
    error: str | None  # the one line explaining an error or an interruption
    name: str | None  # the torrent's name, once it was read
    info_hash: bytes | None
    path: str  # the item's output (absolute), or its source when it never started
    average_rate: float  # bytes/s over its download time
    bytes: int  # payload bytes received
    total_bytes: int  # wanted bytes (0 when unknown)
    verified_bytes: int
    duplicate_of: int | None = None  # the id of the earlier item with the same info hash


def batch_exit_status(results: list[ItemResult], *, interrupted: bool = False) -> int:
    """aria2c's rule: 0 when every item succeeded, else the exit status of the last failed item (in list
    order); a duplicate counts as its original. Ctrl-C: the interrupted status (130)."""
    if interrupted:
        return int(ExitStatus.INTERRUPTED)
    status = int(ExitStatus.OK)
    for result in sorted(results, key=lambda r: r.id):
        if result.status in (STATUS_ERROR, STATUS_INTERRUPTED):
            status = result.exit_status
    return status


__all__ = [
    "KNOWN_OPTIONS",
    "OPTION_DIR",
    "STATUS_DUPLICATE",
    "STATUS_ERROR",
    "STATUS_INTERRUPTED",
    "STATUS_OK",
    "BatchItem",
    "BatchListError",
    "ItemResult",
    "batch_exit_status",
    "parse_batch_list",
]
