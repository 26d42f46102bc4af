"""The master daemon: scan, publish manifest versions, serve manifests and chunks, spare itself.

One asyncio loop (uvloop) runs the listener, the watcher and the scan loop; scanning and chunk
reads run in worker threads because they block on disk and hashing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import watchfiles

from sift import __version__
from sift.chunk_reader import ChunkReader
from sift.config import MasterConfig
from sift.core.manifest import (
    Manifest,
    ManifestDelta,
    encode_delta,
    encode_manifest,
    make_delta,
)
from sift.core.paths import RESERVED_DIR
from sift.master.distributor import Distributor
from sift.net.channel import Channel, accept
from sift.net.tasks import run_until_stopped
from sift.protocol import ProtocolError
from sift.protocol.messages import (
    ChunkRequest,
    ChunkResponse,
    Error,
    HoldingsReport,
    ManifestPush,
    ManifestRequest,
    ManifestResponse,
    Message,
    PeerInfo,
    PeerListRequest,
    PeerListResponse,
    StatusRequest,
    StatusResponse,
)
from sift.scanner import Scanner
from sift.state import ManifestStore, ScanCache, db_path, open_db

log = logging.getLogger("sift.master")

UNSTABLE_RETRY = 0.5  # seconds before rescanning a file that changed while it was hashed
MAX_UNAUTHENTICATED = 64  # handshakes in progress at once; more are refused at accept
# Chunk responses being read or sent at once, over all peers. Each holds a batch of up to a few
# MB (about three copies while it is encoded), so this bounds the master's memory whatever the
# number of peers; more would not send faster, the reads share one thread and one uplink.
SERVE_SLOTS = 4


@dataclass
class PeerSession:
    channel: Channel
    node_id: str
    role: str
    addr: str  # where other peers reach it ("" for status clients)
    version: int = 0
    bytes_sent: int = 0  # chunk bytes the master sent to it


class MasterDaemon:
    def __init__(self, config: MasterConfig):
        self.config = config
        self.node_id = "master-" + secrets.token_hex(4)
        self.root = config.watched_dir
        self.db = open_db(db_path(config.state_dir), role="master")
        self.cache = ScanCache(self.db)
        self.store = ManifestStore(self.db)
        self.scanner = Scanner(self.root, self.cache, config.params)
        self.reader = ChunkReader(self.root)
        # One thread for chunk reads keeps the reader's fd cache single-threaded.
        self.read_pool = ThreadPoolExecutor(1, thread_name_prefix="sift-read")
        self.distributor = Distributor()
        self.sessions: dict[str, PeerSession] = {}
        self.current: Manifest = self.store.latest() or Manifest.build(0, config.params, [])
        self._encoded: dict[int, bytes] = {}
        self._deltas: dict[tuple[int, int], bytes] = {}
        self._rescan = asyncio.Event()
        self._handshakes = 0
        self._serving = asyncio.Semaphore(SERVE_SLOTS)
        self.bytes_sent = 0
        self.chunks_sent = 0
        self.server: asyncio.Server | None = None
        self.bound_port = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        host, port = self.config.bind_addr
        self.server = await asyncio.start_server(self._on_connect, host, port, limit=1 << 20)
        self.bound_port = self.server.sockets[0].getsockname()[1]
        log.info(
            "master listening on %s:%d, watching %s (manifest version %d)",
            host,
            self.bound_port,
            self.root,
            self.current.version,
        )
        await self.scan_and_publish()
        await run_until_stopped(
            stop, [self._scan_loop(), self._watch(), self._periodic_rescan()], self.shutdown
        )

    async def shutdown(self) -> None:
        if self.server is not None:
            self.server.close()
        await asyncio.gather(
            *(s.channel.close("master shutting down") for s in list(self.sessions.values())),
            return_exceptions=True,
        )
        self.read_pool.submit(self.reader.close).result()
        self.read_pool.shutdown()
        self.db.close()
        log.info("master stopped")

    # -- scanning and publishing ------------------------------------------------------------

    async def scan_and_publish(self) -> None:
        result = await asyncio.to_thread(self.scanner.scan, dict(self.current.entries))
        if result.hashed_files:
            log.info(
                "scan: hashed %d file(s), %.1f MB in %.2fs (%d unchanged)",
                result.hashed_files,
                result.hashed_bytes / 1e6,
                result.seconds,
                result.cached_files,
            )
        if result.unstable:
            log.info("files changing while read, retrying soon: %s", ", ".join(result.unstable[:5]))
            asyncio.get_running_loop().call_later(UNSTABLE_RETRY, self._rescan.set)
        entries = {e.path: e for e in result.entries}
        if entries == dict(self.current.entries) and self.current.version > 0:
            return
        version = max(self.store.highest_version(), self.current.version) + 1
        manifest = Manifest.build(version, self.config.params, entries.values())
        encoded = encode_manifest(manifest)
        self.store.save(manifest, encoded=encoded)
        self.current = manifest
        self._encoded = {version: encoded}
        self._deltas.clear()
        # New files may sit at old paths: the reader must reopen them.
        self.read_pool.submit(self.reader.close)
        self.distributor.forget_chunks_not_in(manifest.chunk_hashes())
        log.info(
            "published manifest version %d: %d files, %d chunks, %.1f MB",
            version,
            manifest.file_count,
            manifest.chunk_count,
            manifest.total_bytes / 1e6,
        )
        await self._push(ManifestPush(version))

    async def _push(self, msg: Message) -> None:
        for session in list(self.sessions.values()):
            if session.role == "peer":
                with contextlib.suppress(Exception):
                    await session.channel.send(msg)

    async def _scan_loop(self) -> None:
        while True:
            await self._rescan.wait()
            self._rescan.clear()
            try:
                await self.scan_and_publish()
            except Exception:
                log.exception("scan failed; will retry on the next change")

    async def _watch(self) -> None:
        def interesting(_change, path: str) -> bool:
            rel = os.path.relpath(path, self.root)
            return rel != RESERVED_DIR and not rel.startswith(RESERVED_DIR + os.sep)

        try:
            async for _changes in watchfiles.awatch(
                self.root,
                debounce=self.config.debounce_ms,
                step=50,
                watch_filter=interesting,
                recursive=True,
                yield_on_timeout=False,
            ):
                self._rescan.set()
        except Exception as exc:  # e.g. inotify limits: the periodic rescan still covers us
            log.warning("file watching stopped (%s); relying on the periodic rescan", exc)

    async def _periodic_rescan(self) -> None:
        interval = self.config.rescan_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            self._rescan.set()

    # -- connections ------------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        if self._handshakes >= MAX_UNAUTHENTICATED:
            writer.close()
            return
        self._handshakes += 1
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            channel = await accept(
                reader,
                writer,
                self.config.psk,
                self.node_id,
                lambda: self.current.version,
                max_frame_size=self.config.max_frame_size,
            )
        except (ProtocolError, TimeoutError, ConnectionError, OSError) as exc:
            log.warning("connection from %s:%s refused: %s", peer[0], peer[1], exc)
            writer.close()
            return
        finally:
            self._handshakes -= 1
        hello = channel.hello
        addr = ""
        if hello.role == "peer":
            if hello.advertise_addr:
                addr = hello.advertise_addr
            elif hello.listen_port:
                addr = f"{peer[0]}:{hello.listen_port}"
        session = PeerSession(channel, hello.node_id, hello.role, addr)
        old = self.sessions.get(hello.node_id)
        if old is not None:
            await old.channel.close("replaced by a newer connection")
        self.sessions[hello.node_id] = session
        if hello.role == "peer":
            self.distributor.peer_joined(hello.node_id, addr)
            log.info(
                "peer %s connected from %s:%s (serves at %s)",
                hello.node_id,
                peer[0],
                peer[1],
                addr or "-",
            )
        try:
            await channel.serve(lambda ch, msg: self._handle(session, msg))
        finally:
            if self.sessions.get(hello.node_id) is session:
                del self.sessions[hello.node_id]
                self.distributor.peer_left(hello.node_id)
                if hello.role == "peer":
                    log.info("peer %s disconnected", hello.node_id)

    async def _handle(self, session: PeerSession, msg: Message) -> Message | None:
        if isinstance(msg, ChunkRequest):
            return await self._serve_chunks(session, msg)
        if isinstance(msg, ManifestRequest):
            return self._serve_manifest(msg)
        if isinstance(msg, HoldingsReport):
            session.version = msg.version
            self.distributor.update_holdings(session.node_id, msg.added, msg.removed, full=msg.full)
            return None
        if isinstance(msg, PeerListRequest):
            return PeerListResponse(msg.req_id, tuple(self._peer_infos()))
        if isinstance(msg, StatusRequest):
            return StatusResponse(msg.req_id, json.dumps(self.status()))
        req_id = getattr(msg, "req_id", None)
        return Error(req_id, "unexpected", f"the master does not handle {type(msg).__name__}")

    def _serve_manifest(self, msg: ManifestRequest) -> ManifestResponse:
        current = self.current
        since = msg.since_version
        if since is not None and 0 < since < current.version:
            key = (since, current.version)
            data = self._deltas.get(key)
            if data is None:
                base = self.store.load(since)
                if base is not None and base.params == current.params:
                    data = encode_delta(make_delta(base, current))
                    self._deltas[key] = data
            if data is not None:
                return ManifestResponse(msg.req_id, current.version, since, data)
        if since == current.version:
            empty = ManifestDelta(since, since, current.params, (), ())
            return ManifestResponse(msg.req_id, current.version, since, encode_delta(empty))
        data = self._encoded.get(current.version)
        if data is None:
            data = self._encoded[current.version] = encode_manifest(current)
        return ManifestResponse(msg.req_id, current.version, None, data)

    async def _serve_chunks(self, session: PeerSession, msg: ChunkRequest) -> ChunkResponse | None:
        """Answer a chunk request. A response that only points elsewhere goes out at once; one
        that carries chunk bytes is read and sent inside a serving slot, held until its bytes
        are handed to the socket."""
        manifest = self.current
        locations = manifest.chunk_locations()
        known = [h for h in msg.hashes if h in locations]
        missing = tuple(h for h in msg.hashes if h not in locations)
        if session.role == "peer":
            plan = self.distributor.assign(session.node_id, known, msg.avoid)
            serve, elsewhere = list(plan.from_master), plan.elsewhere
        else:
            serve, elsewhere = known, ()
        if not serve:
            return ChunkResponse(msg.req_id, (), missing, (), tuple(elsewhere))
        async with self._serving:
            found, stale = await asyncio.get_running_loop().run_in_executor(
                self.read_pool, self.reader.read_many, serve, locations
            )
            if stale:
                log.info("%d chunk(s) changed on disk since the scan; rescanning", len(stale))
                self._rescan.set()
            sent = sum(len(d) for _, d in found)
            session.bytes_sent += sent
            self.bytes_sent += sent
            self.chunks_sent += len(found)
            response = ChunkResponse(
                msg.req_id, tuple(found), missing, tuple(stale), tuple(elsewhere)
            )
            del found  # the response holds the only reference: freed as soon as it is sent
            await session.channel.send(response)
        return None

    # -- status -----------------------------------------------------------------------------

    def _peer_infos(self) -> list[PeerInfo]:
        total = len(self.current.chunk_hashes())
        infos = []
        for s in self.sessions.values():
            if s.role != "peer":
                continue
            held = self.distributor.held_count(s.node_id)
            infos.append(
                PeerInfo(
                    s.node_id,
                    s.addr,
                    s.version,
                    held,
                    s.version == self.current.version and held >= total,
                )
            )
        return infos

    def status(self) -> dict:
        m = self.current
        return {
            "role": "master",
            "node_id": self.node_id,
            "software": f"sift {__version__}",
            "watched_dir": str(self.root),
            "manifest_version": m.version,
            "files": m.file_count,
            "chunks": m.chunk_count,
            "distinct_chunks": len(m.chunk_hashes()),
            "bytes": m.total_bytes,
            "bytes_sent": self.bytes_sent,
            "chunks_sent": self.chunks_sent,
            "connected_peers": sum(1 for s in self.sessions.values() if s.role == "peer"),
            "file_list": [
                {"path": f.path, "size": f.size, "chunks": len(f.chunks)} for f in m.files()
            ],
            "peers": [
                {
                    "node_id": p.node_id,
                    "addr": p.addr,
                    "version": p.version,
                    "chunks_held": p.chunks_held,
                    "complete": p.complete,
                    "bytes_from_master": self.sessions[p.node_id].bytes_sent,
                }
                for p in self._peer_infos()
            ],
        }
