"""Real sift daemons as subprocesses on 127.0.0.1, for integration tests.

Every daemon gets its own config file and log; `Cluster.close()` stops whatever is still running.
Waits poll real state (files on disk, status answers) with a deadline, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sift.control.client import ControlClient
from sift.net.ports import free_port
from sift.status import fetch_status

PSK = "integration-test-key"
DEFAULT_TIMEOUT = 60.0


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return str(value)


def read_or_none(path: Path) -> bytes | None:
    """The file's bytes, or None while it does not exist (or cannot be read)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def wait_for(predicate: Callable[[], object], timeout: float = DEFAULT_TIMEOUT, what: str = ""):
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def tree_state(root: Path) -> dict[str, tuple]:
    """Everything a mirror must reproduce: kind, content hash or link target, permission bits,
    and mtime for files. `.sift/` at the top is the peer's own."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != ".sift"]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
                out[rel] = ("file", digest, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


class Daemon:
    def __init__(self, name: str, role: str, config: Path, log: Path):
        self.name, self.role, self.config, self.log = name, role, config, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        log = open(self.log, "ab")  # noqa: SIM115 (the child owns it; closed on stop)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sift",
                "--log-level",
                "debug",
                self.role,
                "start",
                "--config",
                str(self.config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


async def event_history(socket: Path) -> list[dict]:
    async with await ControlClient.connect(socket) as client:
        last = await client.subscribe(since=0)
        events = []
        while not events or events[-1]["id"] < last:
            events.append(await asyncio.wait_for(client.next_event(), 5))
        return [e for e in events if e["type"] != "gap"]


class Cluster:
    def __init__(self, base: Path, psk: str = PSK):
        self.base = base
        self.psk = psk
        self.master_port = free_port()
        self.master_dir = base / "master" / "data"
        self.master_dir.mkdir(parents=True)
        self.master: Daemon | None = None
        self.peers: list[tuple[Daemon, Path, int]] = []
        self.status_tls = None  # an ssl.SSLContext for status queries when the nodes use TLS

    def write_config(self, path: Path, values: dict) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
        return path

    def start_master(self, **extra) -> Daemon:
        cfg = self.write_config(
            self.base / "master" / "master.toml",
            {
                "watched_dir": str(self.master_dir),
                "bind_addr": f"127.0.0.1:{self.master_port}",
                "psk": self.psk,
                "state_dir": str(self.base / "master" / "state"),
                "rescan_interval": 30,
                **extra,
            },
        )
        if self.master is None:
            self.master = Daemon("master", "master", cfg, self.base / "master.log")
        self.master.start()
        wait_for(
            lambda: (self.try_status() or {}).get("manifest_version", 0) >= 1,
            60,
            "the master to publish its first manifest",
        )
        return self.master

    def add_peer(self, psk: str | None = None, start: bool = True, **extra) -> Daemon:
        index = len(self.peers) + 1
        port = free_port()
        local = self.base / f"peer{index}" / "data"
        cfg = self.write_config(
            self.base / f"peer{index}" / "peer.toml",
            {
                "master_addr": f"127.0.0.1:{self.master_port}",
                "psk": psk or self.psk,
                "local_dir": str(local),
                "bind_addr": f"127.0.0.1:{port}",
                **extra,
            },
        )
        daemon = Daemon(f"peer{index}", "peer", cfg, self.base / f"peer{index}.log")
        self.peers.append((daemon, local, port))
        if start:
            daemon.start()
        return daemon

    @property
    def master_socket(self) -> Path:
        """The master's control socket (the default: <state_dir>/control.sock)."""
        return self.base / "master" / "state" / "control.sock"

    def peer_socket(self, index: int) -> Path:
        return self.peers[index][1] / ".sift" / "state" / "control.sock"

    def events(self, socket: Path) -> list[dict]:
        """Every event the daemon behind ``socket`` still holds (its replay history)."""
        return asyncio.run(event_history(socket))

    def try_status(self, port: int | None = None) -> dict | None:
        try:
            return asyncio.run(
                fetch_status(
                    "127.0.0.1",
                    port or self.master_port,
                    self.psk.encode(),
                    5.0,
                    tls=self.status_tls,
                )
            )
        except Exception:
            return None

    def status(self, port: int | None = None) -> dict:
        result = self.try_status(port)
        assert result is not None, "status did not answer"
        return result

    def peer_status(self, index: int) -> dict:
        return self.status(self.peers[index][2])

    def wait_converged(self, timeout: float = DEFAULT_TIMEOUT, peers=None) -> dict:
        """Wait until every (selected) peer's tree equals the master's and each peer reports the
        master's current version."""
        chosen = peers if peers is not None else range(len(self.peers))

        def converged():
            want = tree_state(self.master_dir)
            version = self.status()["manifest_version"]
            for i in chosen:
                _, local, port = self.peers[i]
                try:
                    if not local.exists() or tree_state(local) != want:
                        return False
                except FileNotFoundError:  # the peer removed something while we walked
                    return False
                st = self.try_status(port)
                if st is None or st["synced_version"] != version:
                    return False
            return want

        try:
            return wait_for(converged, timeout, "peers to converge")
        except AssertionError:
            for daemon, _, _ in self.peers:
                print(f"--- {daemon.name} log ---\n{daemon.log_text()[-4000:]}")
            if self.master:
                print(f"--- master log ---\n{self.master.log_text()[-4000:]}")
            raise

    def close(self) -> None:
        # Signal every peer first so they shut down in parallel, then wait for each.
        for daemon, _, _ in self.peers:
            if daemon.running:
                daemon.proc.send_signal(signal.SIGTERM)
        for daemon, _, _ in self.peers:
            daemon.stop()
        if self.master is not None:
            self.master.stop()
