"""Chunk many files on two cores: the calling thread and one helper process share the work.

Why a process and not a thread: fastcdc's compiled cut holds the GIL (it is ~60% of the work),
and blake3 releases it for every chunk, so two chunking threads hand the GIL over twice per
chunk. Measured on the 2-core bench machine over the 1 GiB mixed tree: two threads were
~25% *slower* than one, while one helper process made the scan 1.5-1.75x faster when the second
core was free (docs/performance.md, (e)). The helper is a plain ``python -m sift.chunk_helper``
that imports only the chunker (~26 MB resident), lives for one scan, and is started only when
there is enough to hash to repay its start-up (~50 ms of CPU).

The helper takes units of paths on its stdin and answers on its stdout (``sift.chunk_helper``
has the protocol). The scan kills it when done (it holds nothing); if the master dies first, it
exits as its stdin closes. If it cannot start or dies, its units go back to the queue and the
caller's thread finishes them: the scan never depends on the helper.

Units are queued largest first (a big file picked up last would leave one core idle at the end),
small files grouped so a unit is worth a round trip. The caller hashes the largest unit first (a
lone big file must not wait for the helper to start), then takes units from the small end of the
queue while the helper takes them from the large end: the helper's results are then few objects
(one per big file) rather than tens of thousands of small files' results waiting while the
caller is inside a big file (at 8 GiB that was ~6 MB of the master's peak). Results come back in
completion order; the caller puts them in place by key, so the scan result does not depend on
who hashed what.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from sift.chunk_helper import Outcome, chunk_one, encode_frame, read_frame, write_all
from sift.core.chunk import ChunkParams
from sift.core.chunker import FileChunks, chunk_file

__all__ = ["Helper", "Job", "chunk_jobs", "helper_cpus", "start_helper"]

log = logging.getLogger("sift.scan")

K = TypeVar("K")
Job = tuple[K, str, int]  # (caller's key, path under the `root` given, expected size)

UNIT_BYTES = 4 << 20  # small files are grouped into units of about this many bytes...
UNIT_FILES = 256  # ...or this many files
PREFETCH_BYTES = 16 << 20  # queue a second unit at the helper while its first is smaller
HELPER_ARGV = (sys.executable, "-m", "sift.chunk_helper")


def helper_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def start_helper() -> Helper | None:
    """Start a helper process now (it imports the chunker while the caller finishes its walk);
    None, after a warning, if it cannot be started."""
    helper: Helper = Helper()
    return helper if helper.start() else None


def chunk_jobs(
    jobs: Sequence[Job[K]],
    params: ChunkParams,
    *,
    chunk: Callable[[str, ChunkParams], FileChunks] = chunk_file,
    helper: Helper | None = None,
    root: str = "",
) -> Iterator[tuple[K, Outcome]]:
    """Chunk every job's file, yielding ``(key, outcome)`` as each finishes, on the calling thread.

    ``chunk`` chunks a file on this thread (``chunk_file`` or a wrapper of it). A ``helper``
    (from :func:`start_helper`, which always uses ``chunk_file``) takes units from the same queue
    meanwhile; it is stopped when the iteration ends. Job paths are joined to ``root`` only as
    each file is chunked: a scan of 30,000 files does not hold 30,000 absolute paths.
    """
    units = _units(jobs)
    if helper is None:
        for unit in units:
            for key, path, _size in unit:
                yield key, chunk_one(os.path.join(root, path), params, chunk)
        return
    try:
        if not units:
            return
        helper.feed(units[1:], params, root)
        # The largest unit is ours: a lone big file must not wait for the helper to be ready.
        unit: list[Job[K]] | None = units[0]
        while True:
            if unit is not None:
                for key, path, _size in unit:
                    yield key, chunk_one(os.path.join(root, path), params, chunk)
                yield from helper.finished(block=False)
            elif helper.feeding():
                yield from helper.finished(block=True)
            else:
                yield from helper.finished(block=False)
                if not helper.pending():  # the helper may have handed units back as it died
                    return
            unit = helper.take(smallest=True)
    finally:
        helper.stop()


def _units(jobs: Sequence[Job[K]]) -> list[list[Job[K]]]:
    """Jobs grouped into units, largest first; each file larger than a unit is a unit of its own."""
    ordered = sorted(jobs, key=lambda job: job[2], reverse=True)
    units: list[list[Job[K]]] = []
    current: list[Job[K]] = []
    current_bytes = 0
    for job in ordered:
        if job[2] >= UNIT_BYTES:
            units.append([job])
            continue
        current.append(job)
        current_bytes += job[2]
        if current_bytes >= UNIT_BYTES or len(current) >= UNIT_FILES:
            units.append(current)
            current, current_bytes = [], 0
    if current:
        units.append(current)
    return units


def _pipe_capacity(fd: int) -> int:
    """Bytes the pipe holds; asks Linux for 1 MiB first (it may refuse: then its default)."""
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except (AttributeError, OSError):
        return 4096  # one page: the least any Unix pipe holds


def _unit_bytes(unit: list[Job[K]]) -> int:
    return sum(job[2] for job in unit)


class Helper(Generic[K]):
    """The helper process, the queue of units it shares with the caller, and its feeder thread."""

    _DONE = object()  # the feeder thread's last message

    def __init__(self) -> None:
        self._units: deque[list[Job[K]]] = deque()
        self._params: ChunkParams | None = None
        self._root = ""
        self._lock = threading.Lock()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._proc: subprocess.Popen | None = None
        self._send = -1  # pipe to the helper's stdin
        self._room = 0  # bytes a prefetched unit's frame may take in that pipe
        self._recv = -1  # pipe from its stdout
        self._thread: threading.Thread | None = None
        self._feeding = False
        self._stopping = False
        self._started = 0.0  # time.monotonic() at start
        self._done_files = 0  # files the helper answered
        self._done_bytes = 0

    def start(self) -> bool:
        """Start the process; False (after a warning) if it cannot be."""
        self._started = time.monotonic()
        try:
            self._spawn()
        except (OSError, ValueError, TypeError) as exc:  # e.g. no usable sys.executable
            log.warning("cannot start the hashing helper (%s); hashing on one core", exc)
            return False
        return True

    def feed(self, units: list[list[Job[K]]], params: ChunkParams, root: str = "") -> None:
        """Queue the units (paths under ``root``) and start handing them to the process."""
        with self._lock:
            self._units.extend(units)
        self._params = params
        self._root = root
        self._feeding = True
        self._thread = threading.Thread(target=self._feed, name="sift-chunk-feeder", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            env = dict(os.environ)
            env.pop("SIFT_PSK", None)  # it reads files, it needs no key
            # The helper must import this very sift, however this interpreter found it.
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            self._proc = subprocess.Popen(
                HELPER_ARGV,
                stdin=req_r,
                stdout=rep_w,
                env=env,
                close_fds=True,
            )
        except BaseException:
            for fd in (req_w, rep_r):
                os.close(fd)
            raise
        finally:
            os.close(req_r)
            os.close(rep_w)
        self._send, self._recv = req_w, rep_r
        self._room = _pipe_capacity(req_w) // 2

    def take(self, *, smallest: bool = False) -> list[Job[K]] | None:
        """The next unit: the largest left (the helper's end of the queue), or with
        ``smallest`` the smallest (the caller's end)."""
        with self._lock:
            if not self._units:
                return None
            return self._units.pop() if smallest else self._units.popleft()

    def pending(self) -> bool:
        with self._lock:
            return bool(self._units)

    def feeding(self) -> bool:
        return self._feeding

    def finished(self, *, block: bool) -> Iterator[tuple[K, Outcome]]:
        """Outcomes the helper returned; with ``block``, wait for the next batch (or its end)."""
        while True:
            try:
                item = self._results.get(block=block)
            except queue.Empty:
                return
            if item is self._DONE:
                self._feeding = False
                return
            unit, outcomes = item
            for (key, _path, _size), outcome in zip(unit, outcomes, strict=True):
                yield key, outcome
            if block:
                return

    def _feed(self) -> None:
        """Keep the helper busy: one unit in flight, two while the first is small.

        A second unit is sent only if its frame fits in half the request pipe: the helper reads
        a unit only after answering the previous one, so a write that filled the pipe while the
        helper waits for us to read its answer would deadlock both.
        """
        sent: deque[list[Job[K]]] = deque()
        try:
            while True:
                while not sent or (len(sent) < 2 and _unit_bytes(sent[0]) < PREFETCH_BYTES):
                    unit = self.take()
                    if unit is None:
                        break
                    paths = [os.path.join(self._root, path) for _key, path, _size in unit]
                    frame = encode_frame((self._params, paths))
                    if sent and len(frame) > self._room:
                        self._give_back([unit])
                        break
                    write_all(self._send, frame)
                    sent.append(unit)
                if not sent:
                    return
                outcomes = read_frame(self._recv)
                if not isinstance(outcomes, list) or len(outcomes) != len(sent[0]):
                    raise ValueError(f"helper answered {outcomes!r:.80} to {len(sent[0])} files")
                unit = sent.popleft()
                self._done_files += len(unit)
                self._done_bytes += _unit_bytes(unit)
                self._results.put((unit, outcomes))
        except Exception as exc:  # EOF, a broken pipe, a garbled frame: the helper is lost
            self._give_back(sent)  # for the caller's thread
            if not self._stopping:  # not when stop() killed it (the caller gave up)
                log.warning("the hashing helper stopped (%s); hashing on one core", exc)
        finally:
            self._results.put(self._DONE)

    def _give_back(self, units: deque[list[Job[K]]] | list[list[Job[K]]]) -> None:
        with self._lock:
            self._units.extendleft(reversed(units))

    def stop(self) -> None:
        """Kill the helper, join the feeder, reap the helper. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._stopping = True
        # It holds nothing: every unit it answered is in, the others were given back (a feeder
        # still waiting on it fails at once). Not stdin EOF: it may still be importing.
        proc.kill()
        if self._thread is not None:
            self._thread.join()
        os.close(self._send)  # only now: the feeder may not write to a closed (reused) fd
        os.close(self._recv)
        proc.wait()
        log.debug(
            "hashing helper: %d file(s), %.1f MB in %.2fs",
            self._done_files,
            self._done_bytes / 1e6,
            time.monotonic() - self._started,
        )
