"""The three tools under test, each deployed as real processes on 127.0.0.1 behind one interface:

    deployment.start_source()   # the source is up and has read its data (scan time excluded)
    deployment.start_dests()    # every destination starts at once; the clock starts here
    deployment.wait_synced(t)   # the tool itself says every destination is complete
    deployment.propagate()      # after an edit: whatever the tool needs to pick it up
    deployment.source_sent()    # bytes the source has sent so far
    deployment.close()

sift: one master and N peers (`python -m sift`). rsync: an rsync daemon, pulled by N clients at
once. Syncthing: one send-only device and N receive-only devices, each in its own --home, all
sharing one folder (so receivers may also fetch blocks from each other), discovery, relays, NAT,
usage and crash reporting off, static 127.0.0.1 addresses, caseSensitiveFS on.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from xml.sax.saxutils import escape

from bench.common import POLL, BenchError, Proc, RssSampler, sent_from, wait_until
from sift.config import control_socket_of
from sift.control.client import ControlClient, ControlClosed
from sift.net.ports import free_port
from sift.status import fetch_status

PSK = "bench-" + "k" * 26


class ShapingProxy:
    """bench.proxy as a child process in front of `target_port`."""

    def __init__(self, base: Path, target_port: int, rate: float):
        self.port = free_port()
        self.stats_path = base / "proxy-stats.json"
        self.proc = Proc.start(
            "proxy",
            [
                sys.executable,
                "-m",
                "bench.proxy",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--target",
                f"127.0.0.1:{target_port}",
                "--rate",
                str(rate),
                "--stats",
                str(self.stats_path),
            ],
            base / "proxy.log",
        )
        wait_until(self.stats_path.exists, 30, "the shaping proxy to listen")

    def sent(self) -> int:
        try:
            return json.loads(self.stats_path.read_text())["down"]
        except (OSError, ValueError, KeyError):
            return 0

    def close(self) -> int:
        if self.proc.running:
            self.proc.stop()
        return self.sent()


class Deployment:
    name = "?"

    def __init__(self, base: Path, source: Path, dests: int, rate: float | None = None):
        self.base = base
        self.source = source
        self.dest_dirs = [base / f"dest{i + 1}" / "data" for i in range(dests)]
        self.rate = rate
        self.proxy: ShapingProxy | None = None
        self.procs: list[Proc] = []
        self.rss = RssSampler()
        self.source_port = free_port()

    # Where destinations connect: the proxy when the uplink is shaped, else the source.
    def source_addr_for_dests(self) -> int:
        if self.rate:
            self.proxy = ShapingProxy(self.base, self.source_port, self.rate)
            return self.proxy.port
        return self.source_port

    def data_ports(self) -> list[int]:
        """Ports whose connections carry this tool's data (for counting bytes moved)."""
        return [self.source_port]

    def source_sent(self) -> int:
        """At the end of a run: the proxy's exact count (it is stopped to flush it), else what
        the kernel counted on the source's sockets."""
        if self.proxy is not None:
            return self.proxy.close()
        return sent_from([self.source_port])

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in self.procs)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self.proxy is not None:
            self.proxy.close()
        self.rss.__exit__()

    def __enter__(self):
        self.rss.__enter__()
        return self

    def __exit__(self, *exc):
        self.close()


# -- sift --------------------------------------------------------------------------------------


def _toml(values: dict) -> str:
    return "".join(
        f"{k} = {json.dumps(v) if isinstance(v, str | bool) else v}\n" for k, v in values.items()
    )


_PUBLISHED = re.compile(r"published manifest version (\d+)")
_PUBLISHED_AT = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*published manifest version (\d+)", re.M
)
_SCANNED = re.compile(r"scan: hashed \d+ file\(s\), ([\d.]+) MB in ([\d.]+)s")


class SiftDeployment(Deployment):
    name = "sift"
    peer_options: dict = {}  # extra keys for every peer's config

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.peer_ports: list[int] = []
        self.configs: dict[str, Path] = {}  # daemon name -> its config file
        self.master: Proc | None = None
        self.version = 0

    def _daemon(self, name: str, role: str, config: dict) -> Proc:
        cfg = self.configs[name] = self.base / name / f"{role}.toml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(_toml(config))
        argv = [
            sys.executable,
            "-m",
            "sift",
            "--log-level",
            os.environ.get("BENCH_SIFT_LOG", "info"),
            role,
            "start",
        ]
        proc = Proc.start(name, [*argv, "--config", str(cfg)], self.base / f"{name}.log")
        self.procs.append(proc)
        return proc

    def status(self, port: int | None = None) -> dict | None:
        try:
            return asyncio.run(
                fetch_status("127.0.0.1", port or self.source_port, PSK.encode(), 10.0)
            )
        except Exception:
            return None

    def start_source(self, timeout: float = 600) -> None:
        self.master = self._daemon(
            "master",
            "master",
            {
                "watched_dir": str(self.source),
                "bind_addr": f"127.0.0.1:{self.source_port}",
                "psk": PSK,
                "state_dir": str(self.base / "master" / "state"),
            },
        )
        self.rss.watch("source", self.master.pid)
        # Read readiness from the log, not from status: a status answer lists every file, and
        # polling it would cost the master the very memory and CPU being measured.
        found = wait_until(
            lambda: self._alive() and _PUBLISHED.findall(self.master.tail(1 << 16)),
            timeout,
            "the sift master's first manifest",
            poll=0.05,
        )
        self.version = int(found[-1])
        scan = _SCANNED.findall(self.master.tail(1 << 16))
        self.scan_mb, self.scan_seconds = (
            (float(scan[-1][0]), float(scan[-1][1])) if scan else (0, 0)
        )

    def _alive(self) -> bool:
        dead = [p.name for p in self.procs if not p.running]
        if dead:
            raise BenchError(f"sift {', '.join(dead)} exited early:\n{self.logs()}")
        return True

    def start_dests(self) -> None:
        master_port = self.source_addr_for_dests()
        for i, local in enumerate(self.dest_dirs):
            port = free_port()
            self.peer_ports.append(port)
            proc = self._daemon(
                f"dest{i + 1}",
                "peer",
                {
                    "master_addr": f"127.0.0.1:{master_port}",
                    "psk": PSK,
                    "local_dir": str(local),
                    "bind_addr": f"127.0.0.1:{port}",
                    "state_dir": str(self.base / f"dest{i + 1}" / "state"),
                    **self.peer_options,
                },
            )
            self.rss.watch(f"dest{i + 1}", proc.pid)

    def data_ports(self) -> list[int]:
        return [self.source_port, *self.peer_ports]

    def wait_synced(self, timeout: float, version: int | None = None) -> None:
        """Until every peer says it is at `version` (default: the master's current one).

        Each peer's control socket is asked once, then its `sync.finished` events are awaited:
        the wait costs the machine nothing while the peers work. (A status request over TCP
        every 20 ms, with its handshake, cost ~2 ms of CPU a time between the runner and the
        peer: a few percent of the two cores being measured.)"""
        want = version or self.version
        try:
            asyncio.run(asyncio.wait_for(self._until_synced(want), timeout))
        except TimeoutError:
            raise BenchError(
                f"timed out after {timeout:.0f}s waiting for sift peers at version {want}"
            ) from None

    async def _until_synced(self, want: int) -> None:
        for i in range(len(self.peer_ports)):
            await self._peer_synced(control_socket_of(self.configs[f"dest{i + 1}"]), want)

    async def _peer_synced(self, socket: Path, want: int) -> None:
        while True:  # the peer creates its socket a moment after it starts
            try:
                client = await ControlClient.connect(socket)
                break
            except OSError:
                self._alive()
                await asyncio.sleep(POLL)
        async with client:
            await client.subscribe(types=["sync.finished"])  # before the status: none missed
            status = await client.call("status")
            if status["synced_version"] >= want:
                return
            while True:
                try:
                    event = await asyncio.wait_for(client.next_event(), 0.5)
                except TimeoutError:
                    self._alive()
                    continue
                except ControlClosed:
                    self._alive()  # names the dead daemon and shows its log
                    raise BenchError(f"{socket}: the peer closed its control socket") from None
                if event["type"] == "sync.finished" and event["data"]["version"] >= want:
                    return

    def published(self) -> list[tuple[int, float]]:
        """(version, wall-clock time) of every manifest the master logged publishing."""
        out = []
        for stamp, version in _PUBLISHED_AT.findall(self.master.tail(1 << 16)):
            when = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S"))
            out.append((int(version), when + int(stamp[20:23]) / 1000))
        return out

    def propagate(self) -> None:
        """Nothing: the master's watcher sees the edit."""

    def peer_reports(self) -> list[dict]:
        return [(self.status(p) or {}).get("last_sync") or {} for p in self.peer_ports]

    def master_payload_sent(self) -> int:
        return (self.status() or {}).get("bytes_sent", 0)


# -- rsync -------------------------------------------------------------------------------------

_RSYNC_RECEIVED = re.compile(r"Total bytes received: ([\d,]+)")


class RsyncDeployment(Deployment):
    name = "rsync"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clients: list[Proc] = []
        self.received = 0  # what the clients reported receiving, summed over all runs

    def start_source(self, timeout: float = 60) -> None:
        conf = self.base / "rsyncd.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            f"pid file = {self.base / 'rsyncd.pid'}\n"
            "use chroot = no\n"
            "max connections = 0\n"
            f"uid = {os.getuid()}\n"
            f"gid = {os.getgid()}\n"
            "[data]\n"
            f"path = {self.source}\n"
            "read only = yes\n"
            "exclude = /.stfolder\n"
        )
        argv = ["rsync", "--daemon", "--no-detach", f"--config={conf}"]
        argv += ["--address=127.0.0.1", f"--port={self.source_port}"]
        proc = Proc.start("rsyncd", argv, self.base / "rsyncd.log")
        self.procs.append(proc)
        self.rss.watch("source", proc.pid)
        import socket

        def listening() -> bool:
            if not proc.running:
                raise BenchError(f"rsync daemon exited:\n{proc.tail()}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.source_port)) == 0

        wait_until(listening, timeout, "the rsync daemon to listen")

    def start_dests(self) -> None:
        port = self.source_addr_for_dests()
        self._run_clients(port)

    def _run_clients(self, port: int, extra: list[str] | None = None) -> None:
        self.clients = []
        for i, dest in enumerate(self.dest_dirs):
            dest.mkdir(parents=True, exist_ok=True)
            argv = ["rsync", "-a", "--delete", "--stats", *(extra or [])]
            argv += [f"rsync://127.0.0.1:{port}/data/", f"{dest}/"]
            log = self.base / f"client{i + 1}.log"
            log.unlink(missing_ok=True)
            proc = Proc.start(f"client{i + 1}", argv, log)
            self.rss.watch(f"dest{i + 1}", proc.pid)
            self.clients.append(proc)

    def wait_synced(self, timeout: float, version: int | None = None) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.clients:
            try:
                code = proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as exc:
                raise BenchError(f"rsync {proc.name} did not finish in {timeout:.0f}s") from exc
            if code != 0:
                raise BenchError(f"rsync {proc.name} failed ({code}):\n{proc.tail()}")
            m = _RSYNC_RECEIVED.search(proc.tail(20000))
            if m is None:
                raise BenchError(f"rsync {proc.name} printed no --stats:\n{proc.tail()}")
            self.received += int(m.group(1).replace(",", ""))

    def propagate(self) -> None:
        """rsync has no watcher: an edit is propagated by running every client again, with
        --ignore-times: a same-size edit within the second of the previous sync passes rsync's
        size+mtime quick check (the edited dataset is one file, so this costs nothing else)."""
        self._run_clients(self.proxy.port if self.proxy else self.source_port, ["--ignore-times"])

    def source_sent(self) -> int:
        if self.proxy is not None:
            return self.proxy.close()
        return self.received

    def moved(self) -> int:
        return self.received

    def close(self) -> None:
        for proc in self.clients:
            proc.stop()
        super().close()


# -- Syncthing ---------------------------------------------------------------------------------

FOLDER = "bench"
MARKER = ".stfolder"

_OPTIONS = {
    "globalAnnounceEnabled": "false",
    "localAnnounceEnabled": "false",
    "relaysEnabled": "false",
    "natEnabled": "false",
    "urAccepted": "-1",
    "urSeen": "3",
    "crashReportingEnabled": "false",
    "startBrowser": "false",
    "autoUpgradeIntervalH": "0",
    "reconnectionIntervalS": "1",
    "setLowPriority": "false",
}


class SyncthingNode:
    def __init__(self, home: Path, folder: Path, role: str):
        self.home = home
        self.folder = folder
        self.role = role  # "sendonly" or "receiveonly"
        self.port = free_port()
        self.gui_port = free_port()
        self.apikey = secrets.token_hex(16)
        self.proc: Proc | None = None
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["syncthing", "generate", f"--home={home}", "--no-default-folder"],
            check=True,
            capture_output=True,
        )
        self.device_id = subprocess.run(
            ["syncthing", "serve", f"--home={home}", "--device-id"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def write_config(self, devices: list[tuple[str, str]]) -> None:
        """`devices`: (device id, address) for every device sharing the folder, this one too."""
        dev_xml = "".join(
            f'<device id="{d}" name="{d[:7]}" compression="metadata" introducer="false">'
            f"<address>{escape(a)}</address></device>"
            for d, a in devices
        )
        folder_devs = "".join(f'<device id="{d}"></device>' for d, _ in devices)
        options = "".join(f"<{k}>{v}</{k}>" for k, v in _OPTIONS.items())
        (self.home / "config.xml").write_text(
            '<configuration version="36">'
            f'<folder id="{FOLDER}" label="{FOLDER}" path="{escape(str(self.folder))}" '
            f'type="{self.role}" rescanIntervalS="3600" fsWatcherEnabled="false" '
            'fsWatcherDelayS="1" ignorePerms="false" autoNormalize="true">'
            f"<filesystemType>basic</filesystemType>{folder_devs}"
            "<caseSensitiveFS>true</caseSensitiveFS><markerName>.stfolder</markerName>"
            "</folder>"
            f"{dev_xml}"
            f'<gui enabled="true" tls="false"><address>127.0.0.1:{self.gui_port}</address>'
            f"<apikey>{self.apikey}</apikey></gui>"
            f"<options><listenAddress>tcp://127.0.0.1:{self.port}</listenAddress>{options}"
            "</options></configuration>"
        )

    def start(self, name: str, log: Path) -> Proc:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / MARKER).mkdir(exist_ok=True)
        argv = ["syncthing", "serve", f"--home={self.home}", "--no-browser", "--no-restart"]
        argv += ["--no-upgrade", "--no-default-folder"]
        env = {"STNORESTART": "1", "STNOUPGRADE": "1", "STNODEFAULTFOLDER": "1"}
        self.proc = Proc.start(name, argv, log, env=env)
        return self.proc

    def get(self, path: str) -> dict | None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.gui_port}{path}", headers={"X-API-Key": self.apikey}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return None

    def post(self, path: str) -> None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.gui_port}{path}",
            method="POST",
            headers={"X-API-Key": self.apikey},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()


class SyncthingDeployment(Deployment):
    name = "syncthing"
    POLL = 0.1  # REST calls cost Syncthing CPU: poll a little less often than the others

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.src = SyncthingNode(self.base / "src-home", self.source, "sendonly")
        self.src.port = self.source_port
        self.dests = [
            SyncthingNode(self.base / f"dest{i + 1}-home", d, "receiveonly")
            for i, d in enumerate(self.dest_dirs)
        ]
        self.expect_files = 0
        self.expect_bytes = 0
        self.scan_seconds = 0.0

    def data_ports(self) -> list[int]:
        return [self.source_port, *(d.port for d in self.dests)]

    def start_source(self, timeout: float = 600) -> None:
        self.source_addr = self.source_addr_for_dests()
        # The source never dials (receivers are "dynamic" and discovery is off): every source
        # connection is one a receiver opened to its listen port, so its egress is countable.
        devices = [(self.src.device_id, "dynamic")]
        devices += [(d.device_id, "dynamic") for d in self.dests]
        self.src.write_config(devices)
        started = time.monotonic()
        proc = self.src.start("st-source", self.base / "st-source.log")
        self.procs.append(proc)
        self.rss.watch("source", proc.pid)

        def scanned():
            if not proc.running:
                raise BenchError(f"syncthing source exited:\n{proc.tail()}")
            st = self.src.get(f"/rest/db/status?folder={FOLDER}")
            if not st or st.get("state") != "idle" or st.get("localFiles", 0) == 0:
                return None
            return st

        st = wait_until(scanned, timeout, "the Syncthing source's scan", poll=self.POLL)
        self.scan_seconds = time.monotonic() - started
        self.expect_files = st["localFiles"]
        self.expect_bytes = st["localBytes"]

    def start_dests(self) -> None:
        for node in self.dests:
            devices = [(self.src.device_id, f"tcp://127.0.0.1:{self.source_addr}")]
            devices += [
                (d.device_id, "dynamic" if d is node else f"tcp://127.0.0.1:{d.port}")
                for d in self.dests
            ]
            node.write_config(devices)
        for i, node in enumerate(self.dests):
            proc = node.start(f"st-dest{i + 1}", self.base / f"st-dest{i + 1}.log")
            self.procs.append(proc)
            self.rss.watch(f"dest{i + 1}", proc.pid)

    def _complete(self) -> bool:
        for proc in self.procs:
            if not proc.running:
                raise BenchError(f"syncthing {proc.name} exited:\n{proc.tail()}")
        for node in self.dests:
            st = node.get(f"/rest/db/status?folder={FOLDER}")
            if not st or st.get("state") != "idle":
                return False
            if st.get("needTotalItems", 1) != 0 or st.get("needBytes", 1) != 0:
                return False
            if (st.get("globalFiles"), st.get("globalBytes")) != (
                self.expect_files,
                self.expect_bytes,
            ) or st.get("localBytes") != self.expect_bytes:
                return False
        for node in self.dests:
            done = self.src.get(f"/rest/db/completion?folder={FOLDER}&device={node.device_id}")
            if not done or done.get("completion") != 100 or done.get("needBytes", 1) != 0:
                return False
        return True

    def wait_synced(self, timeout: float, version: int | None = None) -> None:
        wait_until(self._complete, timeout, "Syncthing receivers to complete", poll=self.POLL)

    def propagate(self) -> None:
        """Syncthing's watcher waits fsWatcherDelayS; ask for the rescan at once instead (the
        fastest Syncthing can notice a change)."""
        self.src.post(f"/rest/db/scan?folder={FOLDER}")
        st = self.src.get(f"/rest/db/status?folder={FOLDER}") or {}
        self.expect_files = st.get("localFiles", self.expect_files)
        self.expect_bytes = st.get("localBytes", self.expect_bytes)


class SiftInPlaceDeployment(SiftDeployment):
    """sift with `update_in_place = true` on the peers: scenario (c) runs it next to the default
    (atomic replace), so the trade-off shows in one table."""

    name = "sift-inplace"
    peer_options = {"update_in_place": True}


TOOLS = {
    "sift": SiftDeployment,
    "sift-inplace": SiftInPlaceDeployment,
    "rsync": RsyncDeployment,
    "syncthing": SyncthingDeployment,
}
