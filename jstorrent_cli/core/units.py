"""Sizes, rates and durations for people: one spelling for the views (ui/) and the stall report (core/)."""

from __future__ import annotations

import math

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_size(n: float) -> str:
    """1536 -> '1.5KiB', as aria2c writes sizes (binary units, one decimal)."""
    if n < 1024:
        return f"{int(n)}B"
    exponent = min(int(math.log(n, 1024)), len(_UNITS) - 1)
    value = n / 1024**exponent
    if value >= 1023.95 and exponent < len(_UNITS) - 1:
        exponent += 1
        value = n / 1024**exponent
    return f"{value:.1f}{_UNITS[exponent]}"


def format_rate(bytes_per_second: float) -> str:
    return f"{format_size(bytes_per_second)}/s"


def format_duration(seconds: float | None) -> str:
    """ETA style: '45s', '3m07s', '2h05m', '3d04h'; None or infinite -> '-'."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"
