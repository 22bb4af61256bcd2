"""Sizes and durations as operators read them, next to the raw numbers that metadata plots use.

Sizes are binary (1 KiB = 1024 B): whole bytes below 1 KiB, one decimal from KiB up, TiB the largest unit.
Durations: tenths of a second below a minute, then whole seconds with minutes and hours.
"""

from __future__ import annotations

import math

_UNITS = ("KiB", "MiB", "GiB", "TiB")


def format_bytes(size: int) -> str:
    """`size` bytes as "0 B", "1023 B", "1.0 KiB", "1.2 GiB", "2048.0 TiB". Raises ValueError below 0."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"a size in bytes is a whole number, not {size!r}")
    if size < 0:
        raise ValueError(f"a size cannot be negative: {size}")
    if size < 1024:
        return f"{size} B"
    value, unit = size / 1024, _UNITS[0]
    for larger in _UNITS[1:]:
        # Rounded first: 1,048,575 B is "1.0 MiB", not "1024.0 KiB".
        if round(value, 1) < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"


def format_duration(seconds: float) -> str:
    """`seconds` as "0.0 s", "3.4 s", "4 min 12 s", "2 h 5 min 0 s". Raises ValueError below 0 or when
    not finite."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"a duration in seconds is a number, not {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be a finite number of seconds, at least 0: {seconds}")
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    # Half a second rounds up (59.96 s is "1 min 0 s"), not to the even neighbour as round() would.
    total = max(60, math.floor(seconds + 0.5))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min {secs} s"
    return f"{minutes} min {secs} s"
