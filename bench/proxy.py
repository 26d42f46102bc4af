"""A shaping TCP proxy: the source's uplink as a bottleneck, the same for every tool.

    python -m bench.proxy --listen 127.0.0.1:PORT --target 127.0.0.1:PORT --rate 50e6 \
        --stats stats.json

Placed in front of a tool's source (every destination connects to the proxy instead), it
forwards both directions and caps the *sum* of what the source sends to all its clients at
`--rate` bytes per second (one token bucket shared by every connection, reserved in arrival
order so connections share the link fairly). What the clients send to the source is forwarded
unshaped. It counts the bytes in each direction and writes them to `--stats` as JSON on exit
(SIGTERM/SIGINT) and every half second, so the runner reads the source's exact egress.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path

READ_SIZE = 64 * 1024  # one reservation: small enough that connections interleave finely
BURST_SECONDS = 0.005  # the bucket may run this far ahead of real time


class Bucket:
    """A token bucket as a virtual clock: each send reserves len/rate seconds after the last
    reservation and waits until its slot (minus a small burst allowance) comes up."""

    def __init__(self, rate: float):
        self.rate = rate
        self.next_free = 0.0

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        start = max(now, self.next_free)
        self.next_free = start + n / self.rate
        delay = self.next_free - BURST_SECONDS - now
        if delay > 0:
            await asyncio.sleep(delay)


class Proxy:
    def __init__(self, target: tuple[str, int], rate: float, stats: Path | None):
        self.target = target
        self.bucket = Bucket(rate)
        self.stats_path = stats
        self.down = 0  # source -> clients
        self.up = 0  # clients -> source
        self.connections = 0

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        self.connections += 1
        try:
            source_r, source_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        up = asyncio.ensure_future(self._pipe(client_r, source_w, shaped=False))
        down = asyncio.ensure_future(self._pipe(source_r, client_w, shaped=True))
        try:
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            for w in (client_w, source_w):
                w.close()

    async def _pipe(self, reader, writer, shaped: bool) -> None:
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                if shaped:
                    await self.bucket.take(len(data))
                    self.down += len(data)
                else:
                    self.up += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()

    def write_stats(self) -> None:
        if self.stats_path is None:
            return
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"down": self.down, "up": self.up, "connections": self.connections})
        )
        os.replace(tmp, self.stats_path)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def serve(listen: tuple[str, int], proxy: Proxy) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(proxy.handle, *listen, limit=1 << 20)
    proxy.write_stats()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            proxy.write_stats()
    finally:
        server.close()
        proxy.write_stats()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.proxy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--listen", required=True, type=_addr)
    parser.add_argument("--target", required=True, type=_addr)
    parser.add_argument("--rate", type=float, default=50e6, help="bytes/s from the source; 0: off")
    parser.add_argument("--stats", type=Path)
    args = parser.parse_args(argv)
    proxy = Proxy(args.target, args.rate, args.stats)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(args.listen, proxy))


if __name__ == "__main__":
    main()
