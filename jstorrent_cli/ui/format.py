"""Sizes, rates and durations, for people and from people."""

from __future__ import annotations

import re

from jstorrent_cli.core.units import format_duration, format_rate, format_size
from jstorrent_cli.errors import UsageError

__all__ = ["format_duration", "format_rate", "format_size", "parse_size"]

_SUFFIX = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str, *, what: str = "size") -> int:
    """'16K', '1M', '1.5MiB', '4096' -> bytes (binary multiples, as aria2c reads them)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise UsageError(f"invalid {what} {text!r}: use a number with an optional K, M, G or T suffix")
    number, suffix = match.groups()
    value = float(number) * _SUFFIX[suffix.upper()]
    if value != int(value):
        raise UsageError(f"invalid {what} {text!r}: not a whole number of bytes")
    return int(value)
