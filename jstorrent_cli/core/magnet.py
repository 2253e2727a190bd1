"""Magnet URIs (BEP 9, BEP 53 `so`): parsing only. Bad links raise MagnetError, nothing else."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import urllib.parse

from jstorrent_cli.errors import MagnetError

__all__ = ["Magnet", "parse_magnet"]

_SCHEME = "magnet:"
_BTIH = "urn:btih:"
_BTMH = "urn:btmh:"
_INFO_HASH_BYTES = 20
_HEX_LENGTH = 2 * _INFO_HASH_BYTES  # 40 hex digits
_BASE32_LENGTH = 32  # 20 bytes in base32, no padding
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_MAX_PORT = 65535
# "tr.1", "x.pe.2": BEP 9 allows a numeric suffix to tell repeated parameters apart.
_INDEXED_KEY = re.compile(r"^(.+)\.(\d+)$")
_PEER = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d+)$")
_SELECTION = re.compile(r"^(\d+)(?:-(\d+))?$")


@dataclasses.dataclass(frozen=True, slots=True)
class Magnet:
    info_hash: bytes  # the v1 infohash, 20 bytes
    display_name: str | None = None  # dn
    trackers: tuple[str, ...] = ()  # tr, in link order, duplicates removed
    peers: tuple[tuple[str, int], ...] = ()  # x.pe as (host, port); IPv6 hosts without brackets
    web_seeds: tuple[str, ...] = ()  # ws
    exact_sources: tuple[str, ...] = ()  # xs
    acceptable_sources: tuple[str, ...] = ()  # as
    # BEP 53 select-only: inclusive (first, last) file index ranges; None means every file.
    select_only: tuple[tuple[int, int], ...] | None = None

    @property
    def info_hash_hex(self) -> str:
        return self.info_hash.hex()

    def selects(self, file_index: int) -> bool:
        """Whether the link asks for file `file_index` (always True without `so`)."""
        if self.select_only is None:
            return True
        return any(first <= file_index <= last for first, last in self.select_only)


def _decode_info_hash(text: str) -> bytes:
    if len(text) == _HEX_LENGTH:
        if not all(c in _HEX_DIGITS for c in text):
            raise MagnetError(f"bad info hash {text!r}: not hexadecimal")
        return bytes.fromhex(text)
    if len(text) == _BASE32_LENGTH:
        try:
            return base64.b32decode(text.upper())
        except (binascii.Error, ValueError) as err:
            raise MagnetError(f"bad info hash {text!r}: not base32") from err
    raise MagnetError(
        f"bad info hash {text!r}: {len(text)} characters, expected {_HEX_LENGTH} (hex) or {_BASE32_LENGTH} (base32)"
    )


def _peer(text: str) -> tuple[str, int]:
    match = _PEER.match(text)
    if match is None:
        raise MagnetError(f"bad peer address {text!r} in x.pe (expected host:port or [ipv6]:port)")
    port = int(match["port"])
    if not 0 < port <= _MAX_PORT:
        raise MagnetError(f"bad peer port {port} in x.pe")
    host = match["v6"] if match["v6"] is not None else match["host"]
    return host, port


def _selection(text: str) -> tuple[tuple[int, int], ...]:
    ranges: list[tuple[int, int]] = []
    for item in text.split(","):
        match = _SELECTION.match(item.strip())
        if match is None:
            raise MagnetError(f"bad file selection {item!r} in so (expected indexes and ranges like 0,2,4-6)")
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        if last < first:
            raise MagnetError(f"bad file range {item!r} in so: the end is before the start")
        ranges.append((first, last))
    return tuple(ranges)


def _add_unique(items: list[str], value: str) -> None:
    value = value.strip()
    if value and value not in items:
        items.append(value)


def parse_magnet(uri: str) -> Magnet:
    """Parse `magnet:?xt=urn:btih:...&dn=...&tr=...&x.pe=...&ws=...&so=...`."""
    if not isinstance(uri, str):
        raise MagnetError("a magnet URI must be text")
    text = uri.strip()
    if not text[: len(_SCHEME)].lower() == _SCHEME:
        raise MagnetError("not a magnet URI (it must start with 'magnet:?')")
    rest = text[len(_SCHEME) :]
    if not rest.startswith("?"):
        raise MagnetError("not a magnet URI (no '?' after 'magnet:')")
    v1_hashes: list[bytes] = []
    has_v2 = False
    display_name: str | None = None
    trackers: list[str] = []
    peers: list[tuple[str, int]] = []
    web_seeds: list[str] = []
    exact: list[str] = []
    acceptable: list[str] = []
    selection: list[tuple[int, int]] | None = None
    for pair in rest[1:].split("&"):
        if not pair:
            continue
        raw_key, _, raw_value = pair.partition("=")
        key = urllib.parse.unquote(raw_key).lower()
        indexed = _INDEXED_KEY.match(key)
        if indexed is not None:
            key = indexed[1]
        value = urllib.parse.unquote(raw_value)
        if key == "xt":
            lowered = value.lower()
            if lowered.startswith(_BTIH):
                info_hash = _decode_info_hash(value[len(_BTIH) :])
                if info_hash not in v1_hashes:
                    v1_hashes.append(info_hash)
            elif lowered.startswith(_BTMH):
                has_v2 = True
        elif key == "dn":
            display_name = urllib.parse.unquote_plus(raw_value)
        elif key == "tr":
            _add_unique(trackers, value)
        elif key == "x.pe":
            peer = _peer(value.strip())
            if peer not in peers:
                peers.append(peer)
        elif key == "ws":
            _add_unique(web_seeds, value)
        elif key == "xs":
            _add_unique(exact, value)
        elif key == "as":
            _add_unique(acceptable, value)
        elif key == "so":
            selection = [*(selection or []), *_selection(value)]
    if not v1_hashes:
        if has_v2:
            raise MagnetError("v2-only magnet links are not supported yet")
        raise MagnetError("magnet URI has no 'xt=urn:btih:' info hash")
    if len(v1_hashes) > 1:
        raise MagnetError("magnet URI names several different info hashes")
    return Magnet(
        info_hash=v1_hashes[0],
        display_name=display_name,
        trackers=tuple(trackers),
        peers=tuple(peers),
        web_seeds=tuple(web_seeds),
        exact_sources=tuple(exact),
        acceptable_sources=tuple(acceptable),
        select_only=None if selection is None else tuple(selection),
    )
