"""A loopback TCP proxy that injects network faults, for tests: delay, throttle, drop, cut.

Put it between two daemons (point a peer's `master_addr`, or a peer's `advertise_addr`, at the
proxy) and switch faults on and off while they run, instead of sprinkling sleeps through tests:

    with FaultProxy(("127.0.0.1", master_port)) as proxy:
        proxy.throttle(2_000_000)      # 2 MB/s in each direction, shared by all connections
        proxy.delay(0.05)              # 50 ms added to every piece forwarded
        proxy.drop(True)               # black hole: bytes are read and discarded
        proxy.cut()                    # reset every open connection now
        proxy.cut_after(100_000)       # reset each new connection after 100 kB forwarded
        proxy.refuse(True)             # accept, then reset at once
        proxy.heal()                   # everything back to normal

It runs its own asyncio loop in a daemon thread; the methods above are safe to call from the
test's thread. Cuts use RST (SO_LINGER 0), like a crashed host or a dropped NAT entry, not a
polite FIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass

PIECE = 64 * 1024  # largest piece forwarded at once
THROTTLE_STEP = 0.02  # seconds of throttled bandwidth moved per piece (keeps rates smooth)


@dataclass
class ProxyStats:
    accepted: int = 0
    open: int = 0
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client
    dropped: int = 0  # bytes discarded by drop()
    cuts: int = 0  # connections reset by a fault


class _Pacer:
    """A shared token bucket for one direction: at most `rate` bytes per second in total."""

    def __init__(self) -> None:
        self.next_free = 0.0

    async def wait(self, n: int, rate: float) -> None:
        now = time.monotonic()
        start = max(now, self.next_free)
        self.next_free = start + n / rate
        if self.next_free > now:
            await asyncio.sleep(self.next_free - now)


class FaultProxy:
    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.port = 0
        self.stats = ProxyStats()
        self._delay = 0.0
        self._rate: float | None = None
        self._drop = False
        self._refuse = False
        self._cut_after: int | None = None
        self._pacers = {"up": _Pacer(), "down": _Pacer()}
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start within 10 s")
        if self._error is not None:
            raise RuntimeError(f"fault proxy failed to start: {self._error}")
        return self

    def close(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults (callable from any thread) -----------------------------------------------------

    def delay(self, seconds: float) -> None:
        """Hold every forwarded piece this long (latency; pieces keep their order)."""
        self._delay = max(0.0, seconds)

    def throttle(self, bytes_per_second: float | None) -> None:
        """Cap each direction at this many bytes per second, all connections together."""
        self._rate = bytes_per_second if bytes_per_second and bytes_per_second > 0 else None

    def drop(self, on: bool = True) -> None:
        """Black hole: connections stay open, but nothing gets through in either direction."""
        self._drop = on

    def refuse(self, on: bool = True) -> None:
        """New connections are accepted and reset at once (a port that is there but broken)."""
        self._refuse = on

    def cut_after(self, nbytes: int | None) -> None:
        """Reset each connection once it has forwarded this many bytes (both directions)."""
        self._cut_after = nbytes

    def cut(self) -> int:
        """Reset every open connection now; returns how many were open."""
        loop = self._loop
        if loop is None:
            return 0
        done = threading.Event()
        count = [0]

        def cut_all() -> None:
            count[0] = len(self._writers)
            for writer in list(self._writers):
                self._reset(writer)
            done.set()

        loop.call_soon_threadsafe(cut_all)
        done.wait(10)
        return count[0]

    def heal(self) -> None:
        self._delay = 0.0
        self._rate = None
        self._drop = False
        self._refuse = False
        self._cut_after = None

    # -- the proxy ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start() if it happens before _ready
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._server = await asyncio.start_server(self._on_client, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        self._server.close()
        for writer in list(self._writers):
            self._reset(writer)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _on_client(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter):
        self.stats.accepted += 1
        if self._refuse:
            self.stats.cuts += 1
            self._reset(c_writer)
            return
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._reset(c_writer)
            return
        self._writers.update((c_writer, t_writer))
        self.stats.open += 1
        forwarded = [0]
        both = (c_writer, t_writer)
        try:
            up = asyncio.ensure_future(self._pump(c_reader, t_writer, "up", forwarded, both))
            down = asyncio.ensure_future(self._pump(t_reader, c_writer, "down", forwarded, both))
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            # One side ended: give the other side's last bytes a moment, then end both.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(up, down, return_exceptions=True), 1.0)
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self.stats.open -= 1
            for writer in (c_writer, t_writer):
                self._writers.discard(writer)
                with contextlib.suppress(Exception):
                    writer.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
        forwarded: list[int],
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while True:
                size = PIECE
                if self._rate:
                    size = max(1, min(PIECE, int(self._rate * THROTTLE_STEP)))
                data = await reader.read(size)
                if not data:
                    with contextlib.suppress(Exception):
                        writer.write_eof()
                    return
                if self._drop:
                    self.stats.dropped += len(data)
                    continue
                if self._delay:
                    await asyncio.sleep(self._delay)
                if self._rate:
                    await self._pacers[direction].wait(len(data), self._rate)
                limit = self._cut_after
                if limit is not None and forwarded[0] + len(data) > limit:
                    allowed = max(0, limit - forwarded[0])
                    if allowed:
                        writer.write(data[:allowed])
                        with contextlib.suppress(Exception):
                            await writer.drain()
                    self.stats.cuts += 1
                    for w in both:
                        self._reset(w)
                    raise ConnectionResetError("cut by the fault proxy")
                # Counted before the write: once the far end has the bytes, the stats say so.
                forwarded[0] += len(data)
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        """Close with RST, not FIN: the other side sees 'connection reset', as after a crash."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(Exception):
            writer.transport.abort()
