"""Messages from the connection worker to the app, as dataclasses (posting's messages.py).

Frequent ones (rates, sync progress, peer holdings) override ``can_replace``: when the app is
behind, a newer update replaces the one still queued instead of being drawn after it (toolong's
messages.py). Textual asks ``queued.can_replace(newer)`` before handling ``queued``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.message import Message

__all__ = [
    "Connected",
    "Connecting",
    "DaemonEvent",
    "Disconnected",
    "PeerHoldings",
    "RatesUpdated",
    "StatusRefreshed",
    "SyncProgress",
    "message_for_event",
]


@dataclass
class Connecting(Message):
    """A connection attempt is under way."""

    socket: Path
    attempt: int


@dataclass
class Connected(Message):
    """Connected and subscribed; ``status`` is the first snapshot."""

    socket: Path
    status: dict[str, Any]


@dataclass
class StatusRefreshed(Message):
    """A newer snapshot on the live connection (after a publish, a gap, a finished sync)."""

    status: dict[str, Any]

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StatusRefreshed)


@dataclass
class Disconnected(Message):
    """No daemon answers at ``socket``; the next attempt comes in ``retry_in`` seconds."""

    socket: Path
    error: str
    retry_in: int
    attempt: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, Disconnected)


@dataclass
class DaemonEvent(Message):
    """One event from the daemon's stream (``type`` and ``data`` as in docs/control.md)."""

    id: int
    type: str
    time: float | None
    data: dict[str, Any]


@dataclass
class RatesUpdated(DaemonEvent):
    """One rate sample. When a newer one replaces it in the queue, the newer one takes over its
    sample (``backlog``), so the history behind the sparklines loses nothing while the screen
    is redrawn once."""

    backlog: list[dict[str, Any]] = field(default_factory=list)

    def can_replace(self, message: Message) -> bool:
        if not isinstance(message, RatesUpdated):
            return False
        message.backlog[:0] = [*self.backlog, self.data]
        return True

    def samples(self) -> list[dict[str, Any]]:
        return [*self.backlog, self.data]


@dataclass
class SyncProgress(DaemonEvent):
    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SyncProgress)


@dataclass
class PeerHoldings(DaemonEvent):
    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PeerHoldings) and message.data.get("node_id") == self.data.get(
            "node_id"
        )


_HIGH_RATE: dict[str, type[DaemonEvent]] = {
    "rates": RatesUpdated,
    "sync.progress": SyncProgress,
    "peer.holdings": PeerHoldings,
}


def message_for_event(event: dict[str, Any]) -> DaemonEvent:
    kind = str(event.get("type"))
    cls = _HIGH_RATE.get(kind, DaemonEvent)
    return cls(
        id=int(event.get("id") or 0),
        type=kind,
        time=event.get("time"),
        data=dict(event.get("data") or {}),
    )
