"""Human text for sizes, rates, counts and times. Pure functions; no clock is read here."""

from __future__ import annotations

import datetime as dt

__all__ = [
    "human_age",
    "human_duration",
    "human_percent",
    "human_rate",
    "human_size",
    "plural",
    "utc_time",
]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(n: float | None) -> str:
    """``1536`` -> ``1.5 KiB``; whole bytes below 1 KiB; ``-`` when unknown."""
    if n is None:
        return "-"
    value = float(n)
    if abs(value) < 1024:
        return f"{int(value)} B"
    for unit in _UNITS[1:]:
        value /= 1024
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def human_rate(bytes_per_second: float | None) -> str:
    """A rate in bytes per second; idle (under 1 B/s) reads ``0 B/s``."""
    if bytes_per_second is None:
        return "-"
    if bytes_per_second < 1:
        return "0 B/s"
    return human_size(bytes_per_second) + "/s"


def human_percent(done: float | None, total: float | None) -> str:
    if done is None or not total:
        return "-"
    share = max(0.0, min(1.0, done / total))
    if 0.999 < share < 1.0:  # never print 100% for something unfinished
        return "99.9%"
    return f"{share * 100:.1f}%"


def human_duration(seconds: float | None) -> str:
    """``0.4`` -> ``0.4 s``, ``75`` -> ``1 min 15 s``, ``7260`` -> ``2 h 1 min``."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f} s"
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d {hours % 24} h"


def human_age(then: float | None, now: float) -> str:
    """How long ago ``then`` was, measured against an injected ``now`` (both Unix seconds)."""
    if then is None:
        return "-"
    ago = now - then
    if ago < 1:
        return "just now"
    if ago < 60:
        return f"{int(ago)} s ago"
    return human_duration(ago) + " ago"


def utc_time(timestamp: float | None) -> str:
    """A Unix time as ``2026-11-26 08:00:00Z``: UTC, so the text does not depend on the host."""
    if timestamp is None:
        return "-"
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def plural(n: object, word: str) -> str:
    """``1 file``, ``2 files``; an unknown count reads ``- files``."""
    if n is None:
        return f"- {word}s"
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
