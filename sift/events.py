"""One event bus per daemon: typed events with increasing ids, a replay history, and subscribers
that can never slow the daemon down.

Ids start at the daemon's start time in microseconds and go up by one per event, so they keep
increasing across restarts and a client can always resume with ``since``. Each subscriber has a
bounded queue: when it is full the oldest queued events are dropped and the subscriber is handed one
``gap`` event in their place (Syncthing's ``/rest/events?since=`` with an explicit hole marker).

The bus belongs to the daemon's event loop. :meth:`EventBus.publish` must be called on that loop;
:class:`BusLogHandler` hops onto it for log records from worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GAP", "BusLogHandler", "Event", "EventBus", "Subscription"]

GAP = "gap"
HISTORY = 2000  # events kept for `since` replays
QUEUE_SIZE = 1000  # events queued per subscriber before the oldest are dropped


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str
    time: float
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "time": self.time, "data": self.data}


def _gap(first: int, last: int, clock: Callable[[], float]) -> Event:
    return Event(last, GAP, clock(), {"first": first, "last": last, "count": last - first + 1})


@dataclass(eq=False)
class Subscription:
    """One subscriber's view of the stream. Read it with :meth:`get` or ``async for``."""

    bus: EventBus
    types: tuple[str, ...] | None
    queue: deque[Event] = field(default_factory=deque)
    maxlen: int = QUEUE_SIZE
    gap_first: int | None = None
    gap_last: int = 0
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def wants(self, event: Event) -> bool:
        return self.types is None or event.type.startswith(self.types)

    def offer(self, event: Event) -> None:
        if not self.wants(event):
            return
        if len(self.queue) >= self.maxlen:
            dropped = self.queue.popleft()
            self.note_gap(dropped.id, dropped.id)
        self.queue.append(event)
        self._wakeup.set()

    def note_gap(self, first: int, last: int) -> None:
        """Record that ids ``first..last`` will not be delivered. Dropped events are always older
        than everything still queued, so one pending gap covers them all."""
        if self.gap_first is None:
            self.gap_first = first
        self.gap_last = max(self.gap_last, last)
        self._wakeup.set()

    def get_nowait(self) -> Event | None:
        if self.gap_first is not None:
            gap = _gap(self.gap_first, self.gap_last, self.bus.clock)
            self.gap_first = None
            return gap
        if self.queue:
            return self.queue.popleft()
        return None

    async def get(self) -> Event:
        while True:
            event = self.get_nowait()
            if event is not None:
                return event
            if self.closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        return await self.get()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()
        self.bus.unsubscribe(self)


class EventBus:
    def __init__(
        self,
        *,
        history: int = HISTORY,
        queue_size: int = QUEUE_SIZE,
        clock: Callable[[], float] = time.time,
        first_id: int | None = None,
    ) -> None:
        self.clock = clock
        self.queue_size = queue_size
        self.history: deque[Event] = deque(maxlen=history)
        start = first_id if first_id is not None else int(clock() * 1_000_000)
        self.last_id = start - 1
        self._subscribers: set[Subscription] = set()

    def publish(self, type: str, **data: Any) -> Event:
        self.last_id += 1
        event = Event(self.last_id, type, self.clock(), data)
        self.history.append(event)
        for sub in list(self._subscribers):
            sub.offer(event)
        return event

    def subscribe(
        self, since: int | None = None, types: Iterable[str] | None = None
    ) -> Subscription:
        """A new subscription. With ``since``, every held event after that id is queued first
        (with a gap in front when the history no longer reaches back that far)."""
        sub = Subscription(
            self, tuple(types) if types is not None else None, maxlen=self.queue_size
        )
        if since is not None and since < self.last_id:
            oldest = self.history[0].id if self.history else self.last_id + 1
            if since + 1 < oldest:
                sub.note_gap(since + 1, oldest - 1)
            for event in self.history:
                if event.id > since:
                    sub.offer(event)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        for sub in list(self._subscribers):
            sub.close()


class BusLogHandler(logging.Handler):
    """Publishes every warning and error the daemon logs as a ``log`` event."""

    def __init__(self, bus: EventBus, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.WARNING)
        self.bus = bus
        self.loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = {
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        except Exception:  # a broken format string must not break logging
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.bus.publish("log", **data)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(lambda: self.bus.publish("log", **data))
