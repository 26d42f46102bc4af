"""Rate meters: exponentially weighted moving averages of bytes per second.

A meter only counts (:meth:`RateMeter.add` is one addition); :meth:`RateMeter.tick`, called about
once a second by the daemon, folds the bytes since the last tick into the average. The weight of
each tick depends on the time since the previous one, so irregular ticks still give a rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["RateMeter", "RateTable"]

TIME_CONSTANT = 2.0  # seconds; short enough to follow a transfer, long enough not to flicker
IDLE_BELOW = 1.0  # bytes/s under which a meter counts as idle


class RateMeter:
    def __init__(self, now: float, tau: float = TIME_CONSTANT) -> None:
        self.tau = tau
        self.total = 0
        self.rate = 0.0
        self._pending = 0
        self._last = now

    def add(self, n: int) -> None:
        self.total += n
        self._pending += n

    def tick(self, now: float) -> float:
        dt = now - self._last
        if dt <= 0:
            return self.rate
        alpha = 1.0 - math.exp(-dt / self.tau)
        self.rate += alpha * (self._pending / dt - self.rate)
        if self.rate < IDLE_BELOW and self._pending == 0:
            self.rate = 0.0
        self._pending = 0
        self._last = now
        return self.rate


class RateTable:
    """Named in/out meter pairs (one per peer, say), plus totals per direction."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.meters: dict[tuple[str, str], RateMeter] = {}
        self.totals = {"in": RateMeter(clock()), "out": RateMeter(clock())}

    def add(self, name: str, direction: str, n: int) -> None:
        meter = self.meters.get((name, direction))
        if meter is None:
            meter = self.meters[(name, direction)] = RateMeter(self.clock())
        meter.add(n)
        self.totals[direction].add(n)

    def forget(self, name: str) -> None:
        for direction in ("in", "out"):
            self.meters.pop((name, direction), None)

    def tick(self) -> dict:
        """Advance every meter; returns ``{"total": {...}, "peers": {name: {"in", "out"}}}``."""
        now = self.clock()
        peers: dict[str, dict[str, float]] = {}
        for (name, direction), meter in self.meters.items():
            peers.setdefault(name, {"in": 0.0, "out": 0.0})[direction] = round(meter.tick(now), 1)
        total = {d: round(m.tick(now), 1) for d, m in self.totals.items()}
        return {"total": total, "peers": peers}

    @property
    def idle(self) -> bool:
        return all(m.rate == 0.0 and m._pending == 0 for m in self.totals.values())
