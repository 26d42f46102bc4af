"""The client side of the control socket, for ``sift status --control``, ``sift-tui`` and scripts.

One connection carries both request/answer pairs and, once subscribed, the event stream; a
reader task sorts the lines into answers (matched by id) and events (an asyncio queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from pathlib import Path
from typing import Any

from sift.control.sockpath import reachable_path
from sift.control.wire import MAX_LINE, ControlError, decode_line, encode_line

__all__ = ["ControlClient", "ControlClosed", "ControlError", "control_call"]

CONNECT_TIMEOUT = 5.0
CALL_TIMEOUT = 30.0  # a rescan of a big tree can take a while


class ControlClosed(ConnectionError):
    """The daemon closed the control connection (or went away)."""


class ControlClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._closed: Exception | None = None
        self._task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(cls, path: str | Path, timeout: float = CONNECT_TIMEOUT) -> ControlClient:
        """Connect to a daemon's control socket. Raises OSError (FileNotFoundError,
        ConnectionRefusedError, PermissionError) when no daemon answers there."""
        with reachable_path(path) as where:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(where, limit=MAX_LINE * 64), timeout
            )
        return cls(reader, writer)

    async def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = CALL_TIMEOUT
    ) -> Any:
        """Send one request and wait for its answer; raises ControlError on an error answer."""
        if self._closed is not None:
            raise ControlClosed(str(self._closed))
        req_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        request: dict[str, Any] = {"id": req_id, "method": method}
        if params:
            request["params"] = params
        try:
            self._writer.write(encode_line(request))
            await self._writer.drain()
            reply = await asyncio.wait_for(future, timeout)
        except (ConnectionError, OSError) as exc:
            raise ControlClosed(str(exc)) from None
        finally:
            self._pending.pop(req_id, None)
        if "error" in reply:
            err = reply["error"] or {}
            raise ControlError(str(err.get("code", "error")), str(err.get("message", "")))
        return reply.get("result")

    async def subscribe(self, since: int | None = None, types: list[str] | None = None) -> int:
        """Start the event stream; events then arrive in :attr:`events`. Returns the newest id
        the daemon had when it answered."""
        params: dict[str, Any] = {}
        if since is not None:
            params["since"] = since
        if types is not None:
            params["types"] = types
        result = await self.call("subscribe", params)
        return int(result["last_id"])

    async def next_event(self) -> dict[str, Any]:
        """The next event; raises ControlClosed once the connection is gone and drained."""
        if self._closed is not None and self.events.empty():
            raise ControlClosed(str(self._closed))
        event = await self.events.get()
        if event is _CLOSED:
            raise ControlClosed(str(self._closed))
        return event

    async def close(self) -> None:
        self._writer.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        reason: Exception = ControlClosed("connection closed by the daemon")
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                obj = decode_line(line)
                if "event" in obj:
                    self.events.put_nowait(obj["event"])
                    continue
                future = self._pending.get(obj.get("id"))
                if future is not None and not future.done():
                    future.set_result(obj)
                elif "error" in obj:  # unsolicited: e.g. "forbidden" before closing
                    err = obj["error"] or {}
                    reason = ControlError(str(err.get("code")), str(err.get("message")))
        except (ConnectionError, OSError, ValueError, ControlError) as exc:
            reason = exc
        finally:
            self._closed = reason
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(
                        reason if isinstance(reason, ControlError) else ControlClosed(str(reason))
                    )
            self.events.put_nowait(_CLOSED)


_CLOSED: dict[str, Any] = {"type": "__closed__"}


async def control_call(path: str | Path, method: str, params: dict[str, Any] | None = None) -> Any:
    """Connect, make one call, disconnect."""
    client = await ControlClient.connect(path)
    async with client:
        return await client.call(method, params)
