"""The daemon side of the control socket.

The daemon passes in its event bus and a handler per method; the server owns the socket file, the
per-user check, the line framing and ``subscribe``. A subscribed client that reads slowly only
loses events from its own bounded queue (and gets a ``gap``); the daemon never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sift.control.sockpath import reachable_path
from sift.control.wire import (
    MAX_LINE,
    ControlError,
    decode_line,
    encode_line,
    error_reply,
    ok_reply,
)
from sift.events import EventBus, Subscription

__all__ = ["ControlServer", "Handler", "SocketInUse"]

log = logging.getLogger("sift.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_CLIENTS = 32


class SocketInUse(OSError):
    """Another live process already answers on the control socket path."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python has no constant
MAX_GROUPS = 256  # getsockopt buffers are capped at 1024 bytes; more groups fall back


def client_groups(sock: socket.socket, pid: int, uid: int, gid: int) -> set[int]:
    """Every group id the client process has, supplementary ones included. SO_PEERGROUPS asks
    the kernel directly and works even when /proc hides other users' processes (systemd's
    ProtectProc=invisible); /proc and then the user database are fallbacks."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * MAX_GROUPS)
        count = len(raw) // 4
        return {gid, *struct.unpack(f"{count}I", raw[: 4 * count])}
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {gid, *(int(g) for g in line.split()[1:])}
    except (OSError, ValueError):
        pass
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return {gid}
    return {gid, *(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)}


class ControlServer:
    def __init__(
        self,
        path: Path,
        bus: EventBus,
        handlers: dict[str, Handler],
        group: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.bus = bus
        self.handlers = handlers
        self.allowed_uids = {0, os.getuid()}
        # Members of this group may connect too (socket mode 0660 instead of 0600).
        self.group_id = grp.getgrnam(group).gr_gid if group else None
        self.server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self._clear_stale_socket()
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, mode=0o700)
            if self.group_id is not None:  # the group must be able to reach the socket
                os.chown(self.path.parent, -1, self.group_id)
                os.chmod(self.path.parent, 0o750)
        old_umask = os.umask(0o177)  # the socket file is born 0600: no window where others connect
        try:
            with reachable_path(self.path) as where:
                self.server = await asyncio.start_unix_server(
                    self._on_connect, path=where, limit=MAX_LINE
                )
        finally:
            os.umask(old_umask)
        if self.group_id is not None:
            os.chown(self.path, -1, self.group_id)
            os.chmod(self.path, 0o660)
        else:
            os.chmod(self.path, 0o600)
        log.info("control socket at %s", self.path)

    async def _clear_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketInUse(f"control socket {self.path} exists and is not a socket")
        try:
            with reachable_path(self.path) as where:
                _reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(where), 2.0)
        except (OSError, TimeoutError):
            os.unlink(self.path)  # left behind by a daemon that died
            return
        writer.close()
        raise SocketInUse(f"control socket {self.path} is in use by another running daemon")

    def allowed(self, sock: socket.socket, creds: tuple[int, int, int] | None) -> bool:
        if creds is None:
            return False
        pid, uid, gid = creds
        if uid in self.allowed_uids:
            return True
        return self.group_id is not None and self.group_id in client_groups(sock, pid, uid, gid)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        sock = writer.get_extra_info("socket")
        creds = peer_credentials(sock) if sock is not None else None
        try:
            if not self.allowed(sock, creds):
                uid = creds[1] if creds else "?"
                log.warning("control socket: refused a client running as uid %s", uid)
                await self._send(writer, error_reply(None, "forbidden", "not allowed: wrong user"))
                return
            if len(self._clients) >= MAX_CLIENTS:
                await self._send(writer, error_reply(None, "unavailable", "too many clients"))
                return
            self._clients.add(task)
            await _Session(self, reader, writer).run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # close() ends the session; this task is the top of its own stack
        finally:
            self._clients.discard(task)
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, obj: Any) -> None:
        writer.write(encode_line(obj))
        await writer.drain()


class _Session:
    """One client connection: answers requests in order and forwards its subscription."""

    def __init__(self, server: ControlServer, reader, writer) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.subscription: Subscription | None = None
        self.forwarder: asyncio.Task | None = None
        self.write_lock = asyncio.Lock()

    async def run(self) -> None:
        try:
            while True:
                try:
                    line = await self.reader.readuntil(b"\n")
                except asyncio.LimitOverrunError:
                    await self.send(error_reply(None, "bad_request", "request line too long"))
                    await self.skip_line()
                    continue
                except asyncio.IncompleteReadError:
                    return
                if line.strip():
                    await self.send(await self.answer(line))
        finally:
            if self.subscription is not None:
                self.subscription.close()
            if self.forwarder is not None:
                self.forwarder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self.forwarder

    async def skip_line(self) -> None:
        """Drop the rest of an overlong line, so the next request is read cleanly."""
        while True:
            try:
                await self.reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await self.reader.readexactly(exc.consumed)

    async def answer(self, line: bytes) -> dict[str, Any]:
        req_id = None
        try:
            request = decode_line(line)
            req_id = request.get("id")
            method = request.get("method")
            params = request.get("params") or {}
            if not isinstance(method, str):
                raise ControlError("bad_request", 'missing "method"')
            if not isinstance(params, dict):
                raise ControlError("bad_request", '"params" must be an object')
            if method == "subscribe":
                return ok_reply(req_id, self.subscribe(params))
            handler = self.server.handlers.get(method)
            if handler is None:
                raise ControlError("unknown_method", f"unknown method {method!r}")
            return ok_reply(req_id, await handler(params))
        except ControlError as exc:
            return error_reply(req_id, exc.code, exc.message)
        except Exception as exc:
            log.exception("control request failed")
            return error_reply(req_id, "unavailable", f"internal error: {exc}")

    def subscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        since = params.get("since")
        types = params.get("types")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool)):
            raise ControlError("bad_request", '"since" must be an integer')
        if types is not None and (
            not isinstance(types, list) or not all(isinstance(t, str) for t in types)
        ):
            raise ControlError("bad_request", '"types" must be a list of strings')
        if self.subscription is not None:
            raise ControlError("bad_request", "already subscribed on this connection")
        bus = self.server.bus
        self.subscription = bus.subscribe(since, types)
        self.forwarder = asyncio.create_task(self.forward(self.subscription))
        return {"last_id": bus.last_id}

    async def forward(self, sub: Subscription) -> None:
        async for event in sub:
            await self.send({"event": event.to_dict()})

    async def send(self, obj: Any) -> None:
        data = encode_line(obj)
        async with self.write_lock:
            self.writer.write(data)
            await self.writer.drain()
