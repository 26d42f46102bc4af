"""A scripted daemon behind the same interface as sift.control.client.ControlClient, so the
console's views can be drawn from fixed data: fixed snapshots, a fixed event script, a fixed
clock. (The config-editing and version-bump tests run against a real master instead.)"""

from __future__ import annotations

import asyncio
import copy
import math
from pathlib import Path
from typing import Any

from sift.control.client import ControlClosed, ControlError

NOW = 1795680000.0  # 2026-11-26 08:00:00Z: the injected clock of every deterministic test
SOCKET = Path("/run/sift/master/control.sock")
PEER_SOCKET = Path("/run/sift/peer/control.sock")
MiB = 1024 * 1024
FIRST_EVENT = 1795680000000000


def frozen_clock() -> float:
    return NOW


async def never(_seconds: float) -> None:
    """A countdown tick that never ends: the offline screen keeps its first 'retrying in N s'."""
    await asyncio.Event().wait()


class FakeDaemon:
    """One scripted daemon. ``down`` makes connects fail like a missing socket."""

    def __init__(
        self,
        status: dict[str, Any] | None,
        events: list[dict[str, Any]] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.events = list(events or [])
        self.config = config
        self.down = status is None
        self.clients: list[FakeClient] = []
        self.calls: list[tuple[str, dict[str, Any] | None]] = []
        self.subscribed_since: list[int | None] = []

    async def connect(self, path: Path) -> FakeClient:
        if self.down:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        client = FakeClient(self)
        self.clients.append(client)
        return client

    def push(self, event: dict[str, Any]) -> None:
        """Deliver a live event to every subscribed client."""
        self.events.append(event)
        for client in self.clients:
            if client.subscribed and not client.closed:
                client.queue.put_nowait(event)

    def drop_clients(self) -> None:
        """The daemon goes away: every connection ends."""
        for client in self.clients:
            client.hang_up()

    @property
    def drained(self) -> bool:
        return all(c.queue.empty() for c in self.clients if not c.closed)


class FakeClient:
    def __init__(self, daemon: FakeDaemon) -> None:
        self.daemon = daemon
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.subscribed = False
        self.closed = False

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        if self.closed:
            raise ControlClosed("connection closed by the daemon")
        self.daemon.calls.append((method, params))
        if method == "status":
            status = copy.deepcopy(self.daemon.status)
            if (params or {}).get("file_list") is False:  # as the real daemon does
                status.pop("file_list", None)
            return status
        if method == "config.get":
            if self.daemon.config is None:
                raise ControlError("unavailable", "this daemon runs without a config file")
            return copy.deepcopy(self.daemon.config)
        if method == "config.set":
            return self._config_set(params or {})
        if method == "rescan":
            return {"version": self.daemon.status["manifest_version"], "changed": False}
        raise ControlError("unknown_method", f"no method {method!r}")

    def _config_set(self, params: dict[str, Any]) -> dict[str, Any]:
        keys = {k["name"]: k for k in (self.daemon.config or {}).get("keys", [])}
        name, value = params.get("key"), params.get("value")
        key = keys.get(name)
        if key is None:
            raise ControlError("invalid", f"unknown key {name!r}")
        if key["type"] == "integer" and value is not None:
            try:
                value = int(value)
            except ValueError:
                raise ControlError(
                    "invalid", f"{name}: expected an integer, got {value!r}"
                ) from None
        key["value"], key["set"] = value, value is not None
        return {"key": name, "value": value, "applied": "live" if key["live"] else "restart"}

    async def subscribe(self, since: int | None = None, types: list[str] | None = None) -> int:
        self.daemon.calls.append(("subscribe", {"since": since}))
        self.daemon.subscribed_since.append(since)
        self.subscribed = True
        for event in self.daemon.events:
            if since is None or event["id"] > since:
                self.queue.put_nowait(event)
        return self.daemon.events[-1]["id"] if self.daemon.events else 0

    async def next_event(self) -> dict[str, Any]:
        event = await self.queue.get()
        if event is None:
            raise ControlClosed("connection closed by the daemon")
        return event

    def hang_up(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)

    async def close(self) -> None:
        self.closed = True


# --------------------------------------------------------------------------------------------------
# The scripted data


def event(n: int, kind: str, **data: Any) -> dict[str, Any]:
    return {"id": FIRST_EVENT + n, "type": kind, "time": NOW - 60 + n, "data": data}


def _wave(i: int, peak: float, centre: float, width: float) -> float:
    return peak * math.exp(-(((i - centre) / width) ** 2))


PEERS = [
    ("peer-a1f3", "10.0.0.11:7778", 7, 412, 412, True),
    ("peer-b7c2", "10.0.0.12:7778", 7, 371, 412, False),
    ("peer-c044", "10.0.0.13:7778", 6, 96, 412, False),
]


def master_status() -> dict[str, Any]:
    files = [
        {"path": "calibration/dark-frame.h5", "size": 8 * MiB + 4096, "chunks": 9},
        {"path": "detector-frames.h5", "size": 32 * MiB, "chunks": 33},
        {"path": "metadata.json", "size": 1843, "chunks": 1},
    ] + [
        {"path": f"runs/run-001/spectra/spectrum-{i:04d}.csv", "size": 2600 + 37 * i, "chunks": 1}
        for i in range(12)
    ]
    versions = [
        {
            "version": v,
            "published_at": NOW - 3600 * (7 - v) - 90,
            "files": 15 - (7 - v),
            "bytes": 41 * MiB - (7 - v) * MiB,
            "added_count": 1 if v > 1 else 14,
            "changed_count": (v % 3),
            "removed_count": 1 if v == 4 else 0,
            "bytes_changed": (v * 311 + 17) * 1024,
        }
        for v in range(7, 1, -1)
    ]
    return {
        "role": "master",
        "node_id": "master-5e1d",
        "software": "sift 0.1.0",
        "watched_dir": "/data/beamline-7",
        "manifest_version": 7,
        "files": len(files),
        "chunks": 56,
        "distinct_chunks": 54,
        "bytes": sum(f["size"] for f in files),
        "bytes_sent": 46 * MiB,
        "chunks_sent": 61,
        "connected_peers": len(PEERS),
        "file_list": files,
        "peers": [
            {
                "node_id": node,
                "addr": addr,
                "version": version,
                "chunks_held": held,
                "chunks_total": total,
                "complete": complete,
                "bytes_from_master": 14 * MiB,
                "bytes_from_peers": 20 * MiB,
                "bytes_to_peers": 18 * MiB,
                "rate_in": 0.0,
                "rate_out": 0.0,
                "rate_from_master": 0.0,
            }
            for node, addr, version, held, total, complete in PEERS
        ],
        "versions": versions,
        "rates": {"master_out": 0.0, "p2p": 0.0},
        "events_last_id": FIRST_EVENT,
        "config_path": "/etc/sift/master.toml",
    }


def master_events() -> list[dict[str, Any]]:
    """Forty seconds of a sync: the master's egress rises and falls, then peer-to-peer takes
    over; holdings climb; one more peer joins and one leaves."""
    events = []
    n = 1
    for i in range(40):
        out = _wave(i, 48 * MiB, 10, 6)
        p2p = _wave(i, 95 * MiB, 24, 8)
        events.append(
            event(
                n,
                "rates",
                total={"in": 0.0, "out": out},
                p2p=p2p,
                peers={
                    "peer-a1f3": {"in": p2p / 3, "out": p2p / 2, "from_master": out / 3},
                    "peer-b7c2": {"in": p2p / 2, "out": p2p / 3, "from_master": out / 3},
                    "peer-c044": {"in": p2p / 6, "out": p2p / 6, "from_master": out / 3},
                },
            )
        )
        n += 1
    events.append(event(n, "peer.connected", node_id="peer-d9e8", addr="10.0.0.14:7778", version=0))
    events.append(
        event(
            n + 1,
            "peer.holdings",
            node_id="peer-d9e8",
            version=7,
            chunks_held=12,
            chunks_total=412,
            complete=False,
        )
    )
    events.append(
        event(n + 2, "peer.disconnected", node_id="peer-c044", addr="10.0.0.13:7778", reason="bye")
    )
    return events


def master_config() -> dict[str, Any]:
    def key(name, type_, value, default, live, description):  # noqa: PLR0917
        return {
            "name": name,
            "type": type_,
            "value": value,
            "default": default,
            "set": value is not None,
            "live": live,
            "description": description,
        }

    return {
        "path": "/etc/sift/master.toml",
        "role": "master",
        "keys": [
            key(
                "watched_dir", "path", "/data/beamline-7", None, False, "The directory to publish."
            ),
            key(
                "bind_addr",
                "address",
                "0.0.0.0:7777",
                "0.0.0.0:7777",
                False,
                "Where peers connect.",
            ),
            key("psk", "string", "<hidden>", None, False, "Pre-shared key."),
            key("state_dir", "path", None, "~/.local/state/sift/master", False, "State."),
            key("rescan_interval", "integer", 300, 300, True, "Seconds between full rescans."),
            key("debounce_ms", "integer", None, 200, True, "Quiet time before a rescan."),
            key("log_level", "string", None, "info", True, "Log level."),
        ],
    }


def peer_status(*, syncing: bool = True) -> dict[str, Any]:
    return {
        "role": "peer",
        "node_id": "peer-b7c2",
        "software": "sift 0.1.0",
        "local_dir": "/srv/mirror/beamline-7",
        "master_addr": "10.0.0.2:7777",
        "master_connected": True,
        "master_version": 7,
        "synced_version": 6,
        "syncing": syncing,
        "files": 14,
        "chunks": 52,
        "bytes": 39 * MiB,
        "chunks_held": 371,
        "last_sync": {
            "version": 6,
            "files_written": 2,
            "files_deleted": 0,
            "bytes_copied_locally": 3 * MiB,
            "bytes_from_master": 1 * MiB,
            "bytes_from_peers": 5 * MiB,
            "seconds": 1.8,
            "finished_at": NOW - 3700,
        },
        "progress": {
            "version": 7,
            "bytes_done": 22 * MiB,
            "bytes_total": 32 * MiB,
            "files_to_write": 2,
            "files_to_delete": 1,
            "current": ["detector-frames.h5", "runs/run-004/spectra/spectrum-0001.csv"],
            "sources": {"10.0.0.11:7778": 15 * MiB, "10.0.0.13:7778": 5 * MiB, "master": 2 * MiB},
        }
        if syncing
        else None,
        "rates": {
            "total": {"in": 0.0, "out": 0.0},
            "peers": {},
        },
        "banned_sources": [
            {
                "addr": "10.0.0.19:7778",
                "reason": "served a chunk with a wrong hash",
                "until": NOW + 60,
            }
        ],
        "events_last_id": FIRST_EVENT,
        "config_path": "/etc/sift/peer.toml",
    }


def peer_events() -> list[dict[str, Any]]:
    events = []
    for i in range(30):
        rate_in = _wave(i, 60 * MiB, 18, 9)
        events.append(
            event(
                i + 1,
                "rates",
                total={"in": rate_in, "out": rate_in / 4},
                peers={
                    "10.0.0.11:7778": {"in": rate_in * 0.6, "out": 0.0},
                    "10.0.0.13:7778": {"in": rate_in * 0.3, "out": rate_in / 4},
                    "master": {"in": rate_in * 0.1, "out": 0.0},
                },
            )
        )
    return events
