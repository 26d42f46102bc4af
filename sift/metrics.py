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
# Seconds without a byte after which the meter reads zero: the average's tail would otherwise
# show traffic for half a minute after a burst stopped.
IDLE_AFTER = 3.0


class RateMeter:
    def __init__(self, now: float, tau: float = TIME_CONSTANT) -> None:
        self.tau = tau
        self.total = 0
        self.rate = 0.0
        self._pending = 0
        self._last = now
        self._last_activity = now

    def add(self, n: int) -> None:
        self.total += n
        self._pending += n

    def tick(self, now: float) -> float:
        dt = now - self._last
        if dt <= 0:
            return self.rate
        alpha = 1.0 - math.exp(-dt / self.tau)
        self.rate += alpha * (self._pending / dt - self.rate)
        if self._pending:
            self._last_activity = now
        elif self.rate < IDLE_BELOW or now - self._last_activity >= IDLE_AFTER:
            self.rate = 0.0
        self._pending = 0
        self._last = now
        return self.rate


class RateTable:
    """Meters by (name, direction), e.g. ("10.0.0.2:7778", "in"), plus a total per direction."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.meters: dict[tuple[str, str], RateMeter] = {}
        self.totals: dict[str, RateMeter] = {}
        self.rates: dict[str, dict[str, float]] = {}  # as of the last tick
        self.total_rates: dict[str, float] = {}

    def add(self, name: str, direction: str, n: int) -> None:
        meter = self.meters.get((name, direction))
        if meter is None:
            meter = self.meters[(name, direction)] = RateMeter(self.clock())
        meter.add(n)
        total = self.totals.get(direction)
        if total is None:
            total = self.totals[direction] = RateMeter(self.clock())
        total.add(n)

    def forget(self, name: str) -> None:
        for key in [k for k in self.meters if k[0] == name]:
            del self.meters[key]
        self.rates.pop(name, None)

    def tick(self) -> None:
        """Advance every meter; the results land in :attr:`rates` and :attr:`total_rates`."""
        now = self.clock()
        rates: dict[str, dict[str, float]] = {}
        for (name, direction), meter in self.meters.items():
            rates.setdefault(name, {})[direction] = round(meter.tick(now), 1)
        self.rates = rates
        self.total_rates = {d: round(m.tick(now), 1) for d, m in self.totals.items()}

    def rate(self, name: str, direction: str) -> float:
        return self.rates.get(name, {}).get(direction, 0.0)

    def total(self, direction: str) -> float:
        return self.total_rates.get(direction, 0.0)

    @property
    def idle(self) -> bool:
        return all(rate == 0.0 for rate in self.total_rates.values())
