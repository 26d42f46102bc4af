"""Hostile nodes for integration tests: a peer that lies about chunks, a master that serves a
poisoned manifest. They speak the real protocol (sift.net.channel, real handshake) from a loop
thread inside the test process, so the real daemons under test cannot tell them from the real
thing until the bytes are checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

import msgpack

from sift.core.manifest import decode_manifest
from sift.net.channel import Channel, accept, connect
from sift.protocol.messages import (
    ChunkHints,
    ChunkRequest,
    ChunkResponse,
    Error,
    HoldingsReport,
    ManifestPush,
    ManifestRequest,
    ManifestResponse,
    Message,
    StatusRequest,
    StatusResponse,
)


class LoopThread:
    """An asyncio loop in a daemon thread; `run()` schedules a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hostile", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return self.run(coro).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(cancel_all(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class LyingPeer:
    """Joins the master as a peer, claims to hold every chunk of the current manifest, and
    answers chunk requests with bad bytes.

    mode: "wrong" (same length, other bytes), "truncated" (one byte short), "foreign" (someone
    else's chunk bytes under the requested hash).
    """

    def __init__(self, master_port: int, psk: bytes, mode: str = "wrong") -> None:
        self.master_port = master_port
        self.psk = psk
        self.mode = mode
        self.port = 0
        self.requests = 0
        self.chunks_lied = 0
        self.master: Channel | None = None
        self.server: asyncio.Server | None = None
        self.claimed: tuple[bytes, ...] = ()
        self._serving: asyncio.Future | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> LyingPeer:
        self.server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.master = await connect(
            "127.0.0.1",
            self.master_port,
            self.psk,
            "liar-" + self.mode,
            node_role="peer",
            listen_port=self.port,
        )
        self._serving = asyncio.ensure_future(self.master.serve(self._from_master))
        response = await self.master.request(ManifestRequest(0, None))
        assert isinstance(response, ManifestResponse)
        manifest = decode_manifest(response.data)
        self.claimed = tuple(manifest.chunk_hashes())
        await self.master.send(HoldingsReport(manifest.version, True, self.claimed, ()))
        return self

    async def _from_master(self, channel: Channel, msg: Message) -> Message | None:
        if isinstance(msg, StatusRequest):
            return StatusResponse(msg.req_id, "{}")
        return None

    async def _on_connect(self, reader, writer) -> None:
        try:
            channel = await accept(reader, writer, self.psk, "liar-" + self.mode, lambda: 1)
        except Exception:
            writer.close()
            return
        await channel.serve(self._serve)

    async def _serve(self, channel: Channel, msg: Message) -> Message | None:
        if not isinstance(msg, ChunkRequest):
            return Error(getattr(msg, "req_id", None), "unexpected", "liar")
        self.requests += 1
        chunks = []
        for i, digest in enumerate(msg.hashes):
            filler = bytes([i % 251]) * 70_000
            if self.mode == "truncated":
                data = filler[:69_999]
            elif self.mode == "foreign":
                data = digest * 100  # plausible bytes, but they hash to something else
            else:
                data = filler
            chunks.append((digest, data))
            self.chunks_lied += 1
        return ChunkResponse(msg.req_id, tuple(chunks), (), (), ())

    async def stop(self) -> None:
        if self.master is not None:
            await self.master.close("liar leaving")
        if self.server is not None:
            self.server.close()


class PoisonMaster:
    """Accepts peers with the real handshake and serves them `manifest_bytes` as the whole
    manifest (version 1); any chunk request gets filler bytes. Counts manifest requests."""

    def __init__(self, psk: bytes, manifest_bytes: bytes) -> None:
        self.psk = psk
        self.manifest_bytes = manifest_bytes
        self.port = 0
        self.manifest_requests = 0
        self.chunk_requests = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> PoisonMaster:
        self.server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _on_connect(self, reader, writer) -> None:
        try:
            channel = await accept(reader, writer, self.psk, "poison-master", lambda: 1)
        except Exception:
            writer.close()
            return
        await channel.serve(self._serve)

    async def _serve(self, channel: Channel, msg: Message) -> Message | None:
        if isinstance(msg, ManifestRequest):
            self.manifest_requests += 1
            return ManifestResponse(msg.req_id, 1, None, self.manifest_bytes)
        if isinstance(msg, ChunkRequest):
            self.chunk_requests += 1
            return ChunkResponse(msg.req_id, tuple((h, b"x" * 100) for h in msg.hashes), (), (), ())
        if isinstance(msg, HoldingsReport):
            return None
        return Error(getattr(msg, "req_id", None), "unexpected", "poison master")

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


class ScriptedMaster:
    """A master with a script: whole manifests by version, a delta it answers with for a peer
    that asks since `delta_from`, and real chunk bytes. `publish(v)` pushes version v."""

    def __init__(self, psk: bytes, manifests: dict[int, bytes], chunks: dict[bytes, bytes]):
        self.psk = psk
        self.manifests = manifests
        self.chunks = chunks
        self.version = min(manifests)
        self.delta: tuple[int, bytes] | None = None  # (base version, encoded delta)
        self.requests: list[int | None] = []  # since_version of every ManifestRequest
        self.channels: list[Channel] = []
        self.port = 0
        self.server: asyncio.Server | None = None
        # With `hint_to` set, a peer's first chunk request gets ChunkHints naming that address
        # for every chunk, and every chunk answer waits `answer_delay` (a busy master link).
        self.hint_to: str | None = None
        self.answer_delay = 0.0
        self.hinted: set[Channel] = set()
        self.chunks_served = 0

    async def start(self) -> ScriptedMaster:
        self.server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _on_connect(self, reader, writer) -> None:
        try:
            channel = await accept(reader, writer, self.psk, "scripted", lambda: self.version)
        except Exception:
            writer.close()
            return
        self.channels.append(channel)
        await channel.serve(self._serve)

    async def publish(self, version: int) -> None:
        self.version = version
        for channel in self.channels:
            if not channel.closed:
                await channel.send(ManifestPush(version))

    async def _serve(self, channel: Channel, msg: Message) -> Message | None:
        if isinstance(msg, ManifestRequest):
            self.requests.append(msg.since_version)
            if self.delta is not None and msg.since_version == self.delta[0]:
                return ManifestResponse(msg.req_id, self.version, self.delta[0], self.delta[1])
            return ManifestResponse(msg.req_id, self.version, None, self.manifests[self.version])
        if isinstance(msg, ChunkRequest):
            if self.hint_to is not None and channel not in self.hinted:
                self.hinted.add(channel)
                channel.send_nowait(ChunkHints(self.hint_to, tuple(self.chunks)))
            await asyncio.sleep(self.answer_delay)
            found = tuple((h, self.chunks[h]) for h in msg.hashes if h in self.chunks)
            missing = tuple(h for h in msg.hashes if h not in self.chunks)
            self.chunks_served += len(found)
            return ChunkResponse(msg.req_id, found, missing, (), ())
        if isinstance(msg, HoldingsReport):
            return None
        return Error(getattr(msg, "req_id", None), "unexpected", "scripted master")

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for channel in self.channels:
            await channel.close()


class ListeningPeer:
    """Joins the master as a peer that holds nothing and never fetches, and keeps every
    ChunkHints the master sends it."""

    def __init__(self, master_port: int, psk: bytes, name: str = "listener") -> None:
        self.master_port = master_port
        self.psk = psk
        self.name = name  # the node id: the master keeps one connection per node id
        self.hints: list[ChunkHints] = []
        self.master: Channel | None = None
        self._serving: asyncio.Future | None = None

    async def start(self) -> ListeningPeer:
        self.master = await connect(
            "127.0.0.1", self.master_port, self.psk, self.name, node_role="peer", listen_port=9
        )
        self._serving = asyncio.ensure_future(self.master.serve(self._from_master))
        return self

    async def _from_master(self, channel: Channel, msg: Message) -> Message | None:
        if isinstance(msg, ChunkHints):
            self.hints.append(msg)
        elif isinstance(msg, StatusRequest):
            return StatusResponse(msg.req_id, "{}")
        return None

    async def stop(self) -> None:
        if self.master is not None:
            await self.master.close("listener leaving")


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)
