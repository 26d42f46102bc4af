"""What the console knows about the daemon it watches: a status snapshot with the events since
folded in. Pure Python (no textual), so the folding rules are tested without a terminal.

A snapshot replaces everything it covers; events then update it in place. Each ``apply_*``
returns the names of the parts that changed, so the views redraw only those.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

__all__ = ["HISTORY_SAMPLES", "MASTER", "MasterState", "PeerState", "RateHistory", "state_for"]

MASTER = "master"
PEER = "peer"
HISTORY_SAMPLES = 120  # rate samples kept per series: two minutes at the daemon's 1/s cadence
MAX_VERSIONS = 20  # as many as the daemon's snapshot carries


class RateHistory:
    """Recent samples of several named rate series, all the same length so they line up."""

    def __init__(self, names: Iterable[str], samples: int = HISTORY_SAMPLES) -> None:
        # Start full of zeros: the right edge is always "now", and the chart scrolls leftwards.
        self.series: dict[str, deque[float]] = {
            n: deque([0.0] * samples, maxlen=samples) for n in names
        }
        self.last_sample: float | None = None  # when the newest sample arrived (console clock)

    def add(self, now: float | None = None, **values: float) -> None:
        for name, series in self.series.items():
            series.append(float(values.get(name) or 0.0))
        self.last_sample = now

    def idle_tick(self, now: float, interval: float) -> bool:
        """The daemon stops sending rates once everything is idle; keep the time axis moving by
        adding a zero sample for each ``interval`` without news. Returns whether one was added."""
        if self.last_sample is None or now - self.last_sample < interval * 1.5:
            return False
        if any(series[-1] for series in self.series.values()):
            return False  # the last word was "moving": wait for the daemon's own idle sample
        for series in self.series.values():
            series.append(0.0)
        self.last_sample = now - interval * 0.5
        return True

    def values(self, name: str) -> list[float]:
        return list(self.series[name])

    def latest(self, name: str) -> float:
        series = self.series[name]
        return series[-1] if series else 0.0

    def peak(self, name: str) -> float:
        return max(self.series[name], default=0.0)


def _rate(pair: Any, key: str) -> float:
    return float(pair.get(key) or 0.0) if isinstance(pair, dict) else 0.0


class MasterState:
    role = MASTER

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.versions: list[dict[str, Any]] = []
        self.files: list[dict[str, Any]] = []
        self.files_of: tuple[Any, Any] | None = None  # (node id, version) the file list is of
        self.peers: dict[str, dict[str, Any]] = {}
        self.history = RateHistory(("master_out", "p2p"))

    # -- snapshot --------------------------------------------------------------------------------
    def apply_status(self, status: dict[str, Any]) -> set[str]:
        parts = {"summary", "versions", "peers", "rates"}
        # A version's file list never changes, and diffing a big one costs the UI: only take it
        # in when the version moved (or the daemon is a new one).
        files_of = (status.get("node_id"), status.get("manifest_version"))
        listed = "file_list" in status  # periodic refreshes leave it out
        if listed and (
            files_of != self.files_of or len(self.files) != len(status.get("file_list") or [])
        ):
            self.files = list(status.get("file_list") or [])
            self.files_of = files_of
            parts.add("files")
        self.status = dict(status)
        self.versions = list(status.get("versions") or [])[:MAX_VERSIONS]
        self.peers = {}
        for peer in status.get("peers") or []:
            self.peers[str(peer.get("node_id"))] = dict(peer)
        return parts

    # -- events ----------------------------------------------------------------------------------
    def apply_event(
        self, kind: str, data: dict[str, Any], time: float | None, now: float | None = None
    ) -> set[str]:
        if kind == "manifest.published":
            return self._published(data, time)
        if kind == "peer.connected":
            node = str(data.get("node_id"))
            row = self.peers.setdefault(node, {"node_id": node})
            row.update(addr=data.get("addr"), version=data.get("version"))
            self.status["connected_peers"] = len(self.peers)
            return {"peers", "summary"}
        if kind == "peer.disconnected":
            self.peers.pop(str(data.get("node_id")), None)
            self.status["connected_peers"] = len(self.peers)
            return {"peers", "summary"}
        if kind == "peer.holdings":
            row = self.peers.get(str(data.get("node_id")))
            if row is None:
                return set()
            for key in ("version", "chunks_held", "chunks_total", "complete"):
                if key in data:
                    row[key] = data[key]
            return {"peers"}
        if kind == "rates":
            return self._rates(data, now)
        return set()

    def _published(self, data: dict[str, Any], time: float | None) -> set[str]:
        version = data.get("version")
        for key in ("files", "chunks", "bytes"):
            if key in data:
                self.status[key] = data[key]
        self.status["manifest_version"] = version
        entry = {
            "version": version,
            "published_at": time,
            "files": data.get("files"),
            "bytes": data.get("bytes"),
            "added_count": data.get("added_count", len(data.get("added") or [])),
            "changed_count": data.get("changed_count", len(data.get("changed") or [])),
            "removed_count": data.get("removed_count", len(data.get("removed") or [])),
            "bytes_changed": data.get("bytes_changed"),
        }
        self.versions = [v for v in self.versions if v.get("version") != version]
        self.versions.insert(0, entry)
        self.versions.sort(key=lambda v: v.get("version") or 0, reverse=True)
        del self.versions[MAX_VERSIONS:]
        return {"summary", "versions"}

    def _rates(self, data: dict[str, Any], now: float | None) -> set[str]:
        total = data.get("total") or {}
        self.history.add(
            now,
            master_out=_rate(total, "out"),
            p2p=float(data.get("p2p") or 0.0),
        )
        self.status["rates"] = {"master_out": _rate(total, "out"), "p2p": data.get("p2p") or 0.0}
        for node, pair in (data.get("peers") or {}).items():
            row = self.peers.get(str(node))
            if row is not None:
                row["rate_in"] = _rate(pair, "in")
                row["rate_out"] = _rate(pair, "out")
                row["rate_from_master"] = _rate(pair, "from_master")
        return {"rates", "peers"}


class PeerState:
    role = PEER

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.progress: dict[str, Any] | None = None
        self.source_rates: dict[str, dict[str, float]] = {}
        self.history = RateHistory(("in", "out"))

    def apply_status(self, status: dict[str, Any]) -> set[str]:
        self.status = dict(status)
        progress = status.get("progress")
        self.progress = dict(progress) if progress else None
        rates = status.get("rates") or {}
        self.source_rates = {
            str(addr): {"in": _rate(pair, "in"), "out": _rate(pair, "out")}
            for addr, pair in (rates.get("peers") or {}).items()
        }
        return {"summary", "progress", "sources", "rates"}

    def apply_event(
        self, kind: str, data: dict[str, Any], time: float | None, now: float | None = None
    ) -> set[str]:
        s = self.status
        if kind == "manifest.received":
            s["master_version"] = data.get("version")
            return {"summary"}
        if kind in ("master.connected", "master.disconnected"):
            s["master_connected"] = kind == "master.connected"
            if data.get("addr"):
                s["master_addr"] = data["addr"]
            return {"summary"}
        if kind == "sync.started":
            s["syncing"] = True
            # A resumed sync starts with bytes_done > 0; a missing total reads as unknown.
            self.progress = {"bytes_done": 0, "bytes_total": None, "current": [], "sources": {}}
            self.progress.update(data)
            return {"summary", "progress", "sources"}
        if kind == "sync.progress":
            self.progress = {**(self.progress or {}), **data}
            s["syncing"] = True
            return {"progress", "sources"}
        if kind == "sync.finished":
            s["syncing"] = False
            s["synced_version"] = data.get("version")
            s["last_sync"] = {**data, "finished_at": time}
            self.progress = None
            return {"summary", "progress", "sources"}
        if kind == "rates":
            total = data.get("total") or {}
            self.history.add(now, **{"in": _rate(total, "in"), "out": _rate(total, "out")})
            self.source_rates = {
                str(addr): {"in": _rate(pair, "in"), "out": _rate(pair, "out")}
                for addr, pair in (data.get("peers") or {}).items()
            }
            s["rates"] = {"total": total, "peers": self.source_rates}
            return {"rates", "sources"}
        return set()

    def sources(self) -> dict[str, dict[str, float]]:
        """Every source of this sync or current traffic: bytes received this sync and rates."""
        received = (self.progress or {}).get("sources") or {}
        names = list(received) + [a for a in self.source_rates if a not in received]
        return {
            name: {
                "bytes": float(received.get(name) or 0),
                "in": self.source_rates.get(name, {}).get("in", 0.0),
                "out": self.source_rates.get(name, {}).get("out", 0.0),
            }
            for name in names
        }


def state_for(role: str) -> MasterState | PeerState:
    return MasterState() if role == MASTER else PeerState()
