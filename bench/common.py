"""Shared plumbing for the benchmark runner: ports, waits, processes, memory and byte counters,
tree comparison and statistics. Nothing here knows about a particular tool."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from blake3 import blake3

MiB = 1 << 20
GiB = 1 << 30
POLL = 0.02  # seconds between convergence checks: fine enough for sub-second figures

# Directories and temp files the tools keep inside a synced tree; not part of the data.
TOOL_NAMES = (".sift", ".stfolder", ".stversions", ".stignore")
TOOL_PREFIXES = (".syncthing.", "~syncthing~")


class BenchError(RuntimeError):
    """A scenario did not do what it must (a tool failed to converge, bytes differ)."""


def wait_until(predicate: Callable[[], object], timeout: float, what: str, poll: float = POLL):
    """Poll `predicate` until it returns something true; BenchError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process with its log file; stop() is idempotent and always reaps it."""

    name: str
    popen: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, argv: list[str], log: Path, env: dict | None = None, cwd=None):
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # its own process group: stop() reaches its children
            )
        return cls(name, popen, log)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            with _suppress_lookup():
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with _suppress_lookup():
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        else:
            # The leader is gone; make sure nothing it forked lingers in its group.
            with _suppress_lookup():
                os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.returncode

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class _suppress_lookup:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, ProcessLookupError | PermissionError)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def process_tree(root: int, tree: dict[int, list[int]] | None = None) -> list[int]:
    tree = tree if tree is not None else _children()
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(tree.get(pid, ()))
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def status_kib(pid: int, key: str) -> int:
    """A VmRSS/VmHWM-style field of /proc/PID/status in KiB (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Peak resident memory of groups of process trees, sampled every `interval` seconds: the
    peak of the summed RSS of each group's processes (a forking daemon counts all its children),
    and the peak of each process's own high-water mark (VmHWM, exact)."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.groups: dict[str, list[int]] = {}
        self.peak_sum: dict[str, int] = {}
        self.peak_hwm: dict[str, int] = {}
        self.cpu: dict[str, dict[int, float]] = {}  # group -> pid -> last CPU seconds seen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def watch(self, group: str, pid: int) -> None:
        with self._lock:
            self.groups.setdefault(group, []).append(pid)

    def sample(self) -> None:
        tree = _children()
        with self._lock:
            groups = {g: list(p) for g, p in self.groups.items()}
        for group, roots in groups.items():
            total = 0
            for root in roots:
                for pid in process_tree(root, tree):
                    total += status_kib(pid, "VmRSS")
                    used = cpu_seconds(pid)
                    if used:
                        self.cpu.setdefault(group, {})[pid] = used
                    hwm = status_kib(pid, "VmHWM")
                    self.peak_hwm[group] = max(self.peak_hwm.get(group, 0), hwm)
            self.peak_sum[group] = max(self.peak_sum.get(group, 0), total)

    def __enter__(self) -> RssSampler:
        def loop():
            while not self._stop.wait(self.interval):
                self.sample()

        self._thread = threading.Thread(target=loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def cpu_s(self, prefix: str = "") -> float:
        """CPU seconds used by the groups whose name starts with `prefix` (all by default), as
        last sampled (a process that exits between samples loses its last interval)."""
        return sum(sum(p.values()) for g, p in self.cpu.items() if g.startswith(prefix))

    def peak_mb(self, group: str) -> float:
        """Peak of the group's summed RSS in MB (10**6 bytes)."""
        return self.peak_sum.get(group, 0) * 1024 / 1e6


# -- bytes on the wire -------------------------------------------------------------------------

_SS_LINE = re.compile(r"^\d+\s+\d+\s+(\S+)\s+(\S+)")
_SENT = re.compile(r"bytes_sent:(\d+)")


def tcp_sent_by_port(ports: Iterable[int]) -> dict[tuple[str, str], int]:
    """bytes_sent of every established loopback TCP socket with a local or remote port among
    `ports`, keyed by (local, remote) address. Each socket counts what its own end sent, so the
    sum over both ends of a connection is everything that crossed it."""
    wanted = {str(p) for p in ports}
    out = subprocess.run(
        ["ss", "-tinH", "state", "established"], capture_output=True, text=True, check=True
    ).stdout
    result: dict[tuple[str, str], int] = {}
    current: tuple[str, str] | None = None
    for line in out.splitlines():
        m = _SS_LINE.match(line)
        if m:
            local, remote = m.group(1), m.group(2)
            ports_here = {local.rsplit(":", 1)[-1], remote.rsplit(":", 1)[-1]}
            current = (local, remote) if ports_here & wanted else None
            continue
        if current is not None:
            sent = _SENT.search(line)
            result[current] = int(sent.group(1)) if sent else 0
            current = None
    return result


def sent_from(ports: Iterable[int]) -> int:
    """Bytes sent by the sockets whose *local* port is one of `ports` (a server's own egress)."""
    wanted = {str(p) for p in ports}
    return sum(
        n
        for (local, _), n in tcp_sent_by_port(wanted).items()
        if local.rsplit(":", 1)[-1] in wanted
    )


# -- trees -------------------------------------------------------------------------------------


def _is_tool_path(rel_parts: tuple[str, ...]) -> bool:
    name = rel_parts[-1]
    return rel_parts[0] in TOOL_NAMES or name.startswith(TOOL_PREFIXES)


def tree_digest(root: Path) -> dict[str, tuple[int, str]]:
    """Every regular file under `root` (tool directories excluded): size and BLAKE3 of its
    content. Directories are implied by the paths."""
    out: dict[str, tuple[int, str]] = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in TOOL_NAMES]
        for name in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if _is_tool_path(tuple(Path(rel).parts)):
                continue
            h = blake3(max_threads=blake3.AUTO)
            h.update_mmap(os.path.join(dirpath, name))
            out[rel] = (os.path.getsize(os.path.join(dirpath, name)), h.hexdigest())
    return out


def check_mirrors(source: Path, dests: Iterable[Path]) -> None:
    """BenchError unless every destination holds exactly the source's files and bytes."""
    want = tree_digest(source)
    for dest in dests:
        have = tree_digest(dest)
        if have != want:
            missing = sorted(set(want) - set(have))[:3]
            extra = sorted(set(have) - set(want))[:3]
            differ = sorted(k for k in set(want) & set(have) if want[k] != have[k])[:3]
            raise BenchError(
                f"{dest} differs from the source: missing {missing}, extra {extra}, "
                f"different {differ}"
            )


def read_byte(path: Path, offset: int) -> int | None:
    try:
        with open(path, "rb", buffering=0) as f:
            data = os.pread(f.fileno(), 1, offset)
    except OSError:
        return None
    return data[0] if data else None


# -- statistics --------------------------------------------------------------------------------


@dataclass
class Summary:
    median: float
    min: float
    max: float
    runs: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary | None:
        vals = [v for v in values if v is not None]
        if not vals:
            return None
        return cls(statistics.median(vals), min(vals), max(vals), vals)

    def as_dict(self) -> dict:
        return {"median": self.median, "min": self.min, "max": self.max, "runs": self.runs}
