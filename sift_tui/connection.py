"""The one owner of the console's ControlClient: connects, takes a status snapshot, subscribes,
and turns the event stream into messages for the app. When the daemon goes away it retries with
backoff and, once back, resumes the stream from the last event it saw (``since``).

Everything the console asks a daemon goes through :meth:`Connection.call` on this same client.
The client factory and the countdown's sleep are injectable, so tests script a daemon and
freeze time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from textual.message import Message

from sift.control.client import ControlClient, ControlClosed, ControlError
from sift_tui.messages import (
    Connected,
    Connecting,
    Disconnected,
    StatusRefreshed,
    message_for_event,
)

__all__ = ["BACKOFF", "ClientLike", "Connection", "NotConnected"]

BACKOFF = (1, 2, 4, 8, 10)  # seconds before each retry; the last repeats
# Events that change what a snapshot holds but carry only part of it: fetch a new snapshot.
REFRESH_ON = frozenset({"manifest.published", "sync.finished", "gap"})
# Replayed events already reflected in a snapshot are dropped, except these, which the
# snapshot does not hold.
ALWAYS_DELIVER = frozenset({"log", "config.changed"})


class ClientLike(Protocol):
    """What the console needs of :class:`sift.control.client.ControlClient`."""

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any: ...
    async def subscribe(self, since: int | None = None, types: list[str] | None = None) -> int: ...
    async def next_event(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...


class NotConnected(ControlClosed):
    """A request while no daemon is connected."""


Connector = Callable[[Path], Awaitable[ClientLike]]
Sleep = Callable[[float], Awaitable[None]]


class Connection:
    def __init__(
        self,
        socket_path: Path,
        post: Callable[[Message], Any],
        *,
        connect: Connector = ControlClient.connect,
        sleep: Sleep = asyncio.sleep,
        refresh_interval: float | None = 5.0,
        backoff: tuple[int, ...] = BACKOFF,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.post = post
        self._connect = connect
        self._sleep = sleep
        self.refresh_interval = refresh_interval
        self.backoff = backoff
        self.client: ClientLike | None = None
        self.last_event_id: int | None = None  # the newest event seen, for `since` on resume
        self.snapshot_event_id = 0  # events up to this id are already in the last snapshot
        self.attempt = 0
        self._retry_now = asyncio.Event()

    # -- the worker ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, stream, reconnect; forever (until the worker is cancelled)."""
        failures = 0
        while True:
            self.attempt += 1
            self.post(Connecting(self.socket_path, self.attempt))
            try:
                client = await self._connect(self.socket_path)
            except (TimeoutError, OSError, ControlError) as exc:
                await self._wait_retry(describe_error(exc), failures)
                failures += 1
                continue
            self.client = client
            try:
                await self._stream(client)
                error = "the daemon closed the connection"
            except (TimeoutError, ControlClosed, OSError) as exc:
                error = describe_error(exc)
            except ControlError as exc:
                error = f"{exc.code}: {exc.message}"
            finally:
                self.client = None
                with contextlib.suppress(Exception):
                    await client.close()
            failures = 0
            await self._wait_retry(error, failures)
            failures += 1

    async def _stream(self, client: ClientLike) -> None:
        status = await client.call("status")
        self._note_snapshot(status)
        since = self.last_event_id
        if since is None:  # first contact: everything after the snapshot
            since = status.get("events_last_id")
        await client.subscribe(since=since)
        self.post(Connected(self.socket_path, status))
        loop = asyncio.get_running_loop()
        interval = self.refresh_interval
        next_refresh = loop.time() + interval if interval is not None else None
        while True:
            # Counters such as bytes sent only travel in snapshots: refresh on a fixed beat,
            # however busy the event stream is.
            if next_refresh is not None and loop.time() >= next_refresh:
                await self._refresh(client, file_list=False)
                next_refresh = loop.time() + interval  # type: ignore[operator]
            try:
                if next_refresh is None:
                    event = await client.next_event()
                else:
                    wait = max(0.0, next_refresh - loop.time())
                    event = await asyncio.wait_for(client.next_event(), wait)
            except TimeoutError:
                continue
            event_id = int(event.get("id") or 0)
            self.last_event_id = max(self.last_event_id or 0, event_id)
            kind = str(event.get("type"))
            if event_id <= self.snapshot_event_id and kind not in ALWAYS_DELIVER:
                continue
            self.post(message_for_event(event))
            if kind in REFRESH_ON:
                await self._refresh(client)

    async def _refresh(self, client: ClientLike, *, file_list: bool = True) -> None:
        status = await client.call("status", None if file_list else {"file_list": False})
        self._note_snapshot(status)
        self.post(StatusRefreshed(status))

    def _note_snapshot(self, status: dict[str, Any]) -> None:
        last = status.get("events_last_id")
        if isinstance(last, int):
            self.snapshot_event_id = last

    async def _wait_retry(self, error: str, failures: int) -> None:
        """Count down to the next attempt, telling the app each second; ``retry_now`` cuts it
        short."""
        delay = self.backoff[min(failures, len(self.backoff) - 1)]
        self._retry_now.clear()
        for remaining in range(delay, 0, -1):
            self.post(Disconnected(self.socket_path, error, remaining, self.attempt))
            tick = asyncio.ensure_future(self._sleep(1.0))
            woken = asyncio.ensure_future(self._retry_now.wait())
            try:
                await asyncio.wait({tick, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                tick.cancel()
                woken.cancel()
            if self._retry_now.is_set():
                return

    def retry_now(self) -> None:
        self._retry_now.set()

    # -- requests from the views -----------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.client is not None

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        client = self.client
        if client is None:
            raise NotConnected("not connected to a daemon")
        return await client.call(method, params)


def describe_error(exc: BaseException) -> str:
    """One line for the offline screen: what went wrong, without a traceback."""
    if isinstance(exc, FileNotFoundError):
        return "no such socket (is the daemon running?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (stale socket: the daemon is not running)"
    if isinstance(exc, PermissionError):
        return "permission denied (run as the daemon's user, or join its control group)"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, ControlError):
        return f"{exc.code}: {exc.message}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
