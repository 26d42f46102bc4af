"""The master daemon: scan, publish manifest versions, serve manifests and chunks, spare itself.

One asyncio loop (uvloop) runs the listener, the watcher and the scan loop; scanning and chunk
reads run in worker threads because they block on disk and hashing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import secrets
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import watchfiles

from sift import __version__
from sift.chunk_reader import ChunkReader
from sift.config import MasterConfig
from sift.control.config_edit import ConfigChange
from sift.control.service import ControlService
from sift.core.manifest import (
    ChunkLocation,
    DirEntry,
    Manifest,
    diff,
    encode_delta,
    encode_manifest,
    make_delta,
)
from sift.core.paths import RESERVED_DIR
from sift.master.distributor import Distributor
from sift.metrics import RateTable
from sift.net.channel import Channel, HandshakeLimit, accept, listen
from sift.net.tasks import run_until_stopped
from sift.net.tls import node_tls
from sift.protocol import ProtocolError
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
    PeerInfo,
    PeerListRequest,
    PeerListResponse,
    StatusRequest,
    StatusResponse,
)
from sift.scanner import Scanner
from sift.state import ManifestStore, ScanCache, db_path, open_db
from sift.state.db import get_meta, set_meta

log = logging.getLogger("sift.master")

UNSTABLE_RETRY = 0.5  # seconds before rescanning a file that changed while it was hashed
HOLDINGS_EVENT_INTERVAL = 0.5  # seconds between peer.holdings events for one peer
RECENT_VERSIONS = 20  # version summaries kept for status and the console
EVENT_PATHS = 50  # paths listed per kind in a manifest.published event
HINTS_PER_MESSAGE = 4096  # chunk hashes per ChunkHints message (~140 KB)
# Peers told about each batch the master sends: hints then cost the master at most 16 x 34
# bytes a chunk (0.2% of a default 256 KiB chunk), whatever the number of peers; the
# others learn of the fetcher from the master's answers, as before.
HINT_FANOUT = 16


def _bytes_not_in(manifest: Manifest, previous: Manifest) -> int:
    """Bytes of the distinct chunks of ``manifest`` that ``previous`` does not have."""
    old = previous.chunk_hashes()
    return sum(loc.length for h, loc in manifest.chunk_locations().items() if h not in old)


def _load_versions(db) -> list[dict]:
    """The recent version summaries a previous run stored (newest first)."""
    try:
        versions = json.loads(get_meta(db, "recent_versions") or "[]")
    except (TypeError, ValueError):
        return []
    return [v for v in versions if isinstance(v, dict)] if isinstance(versions, list) else []


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
    bytes_from_peers: int = 0  # as the peer reports: chunk bytes it got from other peers
    bytes_to_peers: int = 0  # ... and served to other peers
    holdings_event_at: float = 0.0
    holdings_state: tuple[int, bool] = (0, False)  # (version, complete) last published


class MasterDaemon:
    def __init__(self, config: MasterConfig):
        self.config = config
        self.tls = node_tls(config)  # None: plain TCP
        self.root = config.watched_dir
        self.db = open_db(db_path(config.state_dir), role="master")
        # Kept across restarts, like the version numbers: consoles and logs name one master.
        node_id = get_meta(self.db, "node_id")
        if not isinstance(node_id, str):
            node_id = "master-" + secrets.token_hex(4)
            set_meta(self.db, "node_id", node_id)
        self.node_id = node_id
        self.started_at = time.time()
        self.cache = ScanCache(self.db)
        self.store = ManifestStore(self.db)
        self.scanner = Scanner(self.root, self.cache, config.params)
        self.reader = ChunkReader(self.root)
        # One thread for chunk reads keeps the reader's fd cache single-threaded.
        self.read_pool = ThreadPoolExecutor(1, thread_name_prefix="sift-read")
        self.distributor = Distributor()
        self.sessions: dict[str, PeerSession] = {}
        self.stopping = False  # set by shutdown(): late handshakes are closed, not served
        self.current: Manifest = self.store.latest() or Manifest.build(0, config.params, [])
        self._deltas: dict[tuple[int, int], bytes] = {}
        self._rescan = asyncio.Event()
        self._scan_lock = asyncio.Lock()
        self._watch_restart = asyncio.Event()
        self._interval_changed = asyncio.Event()
        self.versions: deque[dict] = deque(_load_versions(self.db), maxlen=RECENT_VERSIONS)
        self.control = ControlService(
            "master",
            config,
            status=self.status,
            rates_event=self._rates_event,
            apply_change=self._apply_config,
            handlers={"rescan": self._handle_rescan},
        )
        self.bus = self.control.bus
        self.rates: RateTable = self.control.rates
        self._handshakes = HandshakeLimit()
        self._serving = asyncio.Semaphore(SERVE_SLOTS)
        self.bytes_sent = 0
        self.chunks_sent = 0
        self.hints_sent = 0  # chunk hashes told to other peers in ChunkHints
        self.server: asyncio.Server | None = None
        self.bound_port = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.control.start()
        host, _port = self.config.bind_addr
        tls = self.tls.server if self.tls else None
        self.server = await listen(self._on_connect, self.config.bind_addr, tls)
        self.bound_port = self.server.sockets[0].getsockname()[1]
        log.info(
            "master listening on %s:%d%s, watching %s (manifest version %d)",
            host,
            self.bound_port,
            " (TLS)" if tls else "",
            self.root,
            self.current.version,
        )
        await self.scan_and_publish()
        await run_until_stopped(
            stop,
            [self._scan_loop(), self._watch(), self._periodic_rescan(), self.control.run_rates()],
            self.shutdown,
        )

    async def shutdown(self) -> None:
        self.stopping = True
        if self.server is not None:
            self.server.close()
        await asyncio.gather(
            *(s.channel.close("master shutting down") for s in list(self.sessions.values())),
            return_exceptions=True,
        )
        self.read_pool.submit(self.reader.close).result()
        self.read_pool.shutdown()
        self.db.close()
        await self.control.close()
        log.info("master stopped")

    # -- scanning and publishing ------------------------------------------------------------

    async def scan_and_publish(self) -> None:
        async with self._scan_lock:  # the scan loop and a `rescan` request must not interleave
            await self._scan_and_publish()

    async def _scan_and_publish(self) -> None:
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
        if entries == self.current.entries and self.current.version > 0:
            return
        version = max(self.store.highest_version(), self.current.version) + 1
        manifest = Manifest.build(version, self.config.params, entries.values())
        del result, entries  # the manifest holds the entries now
        # Building the chunk index and summing the new chunks walk every chunk: off the loop.
        new_bytes = await asyncio.to_thread(_bytes_not_in, manifest, self.current)
        # Encoded straight into the store in small parts, and streamed from there to peers: a
        # large manifest is never whole in memory (see docs/performance.md (f)).
        self.store.save(manifest)
        previous, self.current = self.current, manifest
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
        self._announce(previous, manifest, new_bytes)
        await self._push(ManifestPush(version))

    def _announce(self, previous: Manifest, manifest: Manifest, new_bytes: int) -> None:
        """Publish the manifest.published event and remember the version's summary."""
        changes = diff(previous if previous.version > 0 else None, manifest)

        def not_dirs(paths: tuple[str, ...], entries) -> list[str]:
            # Directories come and go with their files; counting them too would make "+3"
            # of one new file in a new two-level directory.
            return [p for p in paths if not isinstance(entries.get(p), DirEntry)]

        added = not_dirs(changes.added, manifest.entries)
        changed = not_dirs(changes.changed, manifest.entries)
        removed = not_dirs(changes.removed, previous.entries)
        summary = {
            "version": manifest.version,
            "published_at": time.time(),
            "files": manifest.file_count,
            "chunks": manifest.chunk_count,
            "bytes": manifest.total_bytes,
            "added_count": len(added),
            "changed_count": len(changed),
            "removed_count": len(removed),
            "bytes_changed": new_bytes,
        }
        self.versions.appendleft(summary)
        set_meta(self.db, "recent_versions", json.dumps(list(self.versions)))
        self.bus.publish(
            "manifest.published",
            **summary,
            added=added[:EVENT_PATHS],
            changed=changed[:EVENT_PATHS],
            removed=removed[:EVENT_PATHS],
        )

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
            while True:  # one pass per debounce setting; config.set restarts it
                self._watch_restart.clear()
                async for _changes in watchfiles.awatch(
                    self.root,
                    debounce=self.config.debounce_ms,
                    step=50,
                    watch_filter=interesting,
                    recursive=True,
                    yield_on_timeout=False,
                    stop_event=self._watch_restart,
                ):
                    self._rescan.set()
                if not self._watch_restart.is_set():
                    return
        except Exception as exc:  # e.g. inotify limits: the periodic rescan still covers us
            log.warning("file watching stopped (%s); relying on the periodic rescan", exc)

    async def _periodic_rescan(self) -> None:
        while True:
            self._interval_changed.clear()
            interval = self.config.rescan_interval
            timeout = interval if interval > 0 else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._interval_changed.wait(), timeout)
                continue  # the interval changed: start a fresh wait with the new one
            self._rescan.set()

    # -- control ----------------------------------------------------------------------------

    def _apply_config(self, change: ConfigChange) -> None:
        self.config = dataclasses.replace(
            self.config, **{change.key: getattr(change.config, change.key)}
        )
        if change.key == "debounce_ms":
            self._watch_restart.set()
        elif change.key == "rescan_interval":
            self._interval_changed.set()

    async def _handle_rescan(self, _params: dict) -> dict:
        before = self.current.version
        await self.scan_and_publish()
        return {"version": self.current.version, "changed": self.current.version != before}

    def _rates_event(self, rates: RateTable) -> dict:
        peers = {}
        for node_id, r in rates.rates.items():
            from_master = r.get("from_master", 0.0)
            peers[node_id] = {
                "in": round(from_master + r.get("from_peers", 0.0), 1),
                "out": r.get("to_peers", 0.0),
                "from_master": from_master,
            }
        return {
            "total": {"in": 0.0, "out": rates.total("from_master")},
            "p2p": rates.total("from_peers"),
            "peers": peers,
        }

    # -- connections ------------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            channel = await accept(
                reader,
                writer,
                self.config.psk,
                self.node_id,
                lambda: self.current.version,
                max_frame_size=self.config.max_frame_size,
                tls=self.tls.server if self.tls else None,
                limit=self._handshakes,
            )
        except (ProtocolError, TimeoutError, ConnectionError, OSError) as exc:
            log.warning("connection from %s:%s refused: %s", peer[0], peer[1], exc)
            writer.close()
            return
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
        if self.stopping:  # shut down while this one authenticated: it was not closed with the rest
            await channel.close("master shutting down")
            return
        self.sessions[hello.node_id] = session
        if hello.role == "peer":
            self.distributor.peer_joined(hello.node_id, addr)
            self.bus.publish("peer.connected", node_id=hello.node_id, addr=addr)
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
                    self.rates.forget(hello.node_id)
                    self.bus.publish(
                        "peer.disconnected",
                        node_id=hello.node_id,
                        addr=addr,
                        reason=channel.close_reason or "connection closed",
                    )

    async def _handle(self, session: PeerSession, msg: Message) -> Message | None:
        if isinstance(msg, ChunkRequest):
            return await self._serve_chunks(session, msg)
        if isinstance(msg, ManifestRequest):
            return await self._serve_manifest(session, msg)
        if isinstance(msg, HoldingsReport):
            self._holdings(session, msg)
            return None
        if isinstance(msg, PeerListRequest):
            return PeerListResponse(msg.req_id, tuple(self._peer_infos()))
        if isinstance(msg, StatusRequest):
            return StatusResponse(msg.req_id, json.dumps(self.status()))
        req_id = getattr(msg, "req_id", None)
        return Error(req_id, "unexpected", f"the master does not handle {type(msg).__name__}")

    def _holdings(self, session: PeerSession, msg: HoldingsReport) -> None:
        session.version = msg.version
        self.distributor.update_holdings(session.node_id, msg.added, msg.removed, full=msg.full)
        # The counters are cumulative since the peer started; a restart makes them smaller.
        for field, direction in (
            ("bytes_from_peers", "from_peers"),
            ("bytes_to_peers", "to_peers"),
        ):
            reported = getattr(msg, field)
            delta = reported - getattr(session, field)
            if delta > 0:
                self.rates.add(session.node_id, direction, delta)
            setattr(session, field, reported)
        held = self.distributor.held_count(session.node_id)
        total = len(self.current.chunk_locations())
        state = (msg.version, msg.version == self.current.version and held >= total)
        now = time.monotonic()
        # Throttled, but a new version or a peer becoming complete is always told: that last
        # report may be the only one for a while.
        if state != session.holdings_state or now - session.holdings_event_at >= (
            HOLDINGS_EVENT_INTERVAL
        ):
            session.holdings_event_at = now
            session.holdings_state = state
            self.bus.publish(
                "peer.holdings",
                node_id=session.node_id,
                version=msg.version,
                chunks_held=held,
                chunks_total=total,
                complete=state[1],
            )

    async def _serve_manifest(
        self, session: PeerSession, msg: ManifestRequest
    ) -> ManifestResponse | None:
        """A delta from the peer's version when the store still has that version (kept in a
        small cache: several peers usually ask for the same one), else the whole manifest,
        streamed from the store."""
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
        # A peer already at the current version gets the whole manifest too: there is no empty
        # delta (a delta must move forward; encoding one failed, and the peer retried forever).
        size = self.store.encoded_size(current.version)
        if size is None:  # version 0, before the first scan: nothing stored, nothing to stream
            return ManifestResponse(msg.req_id, current.version, None, encode_manifest(current))
        head = ManifestResponse(msg.req_id, current.version, None, b"")
        await session.channel.send_streamed(head, size, self.store.iter_encoded(current.version))
        return None

    async def _serve_chunks(self, session: PeerSession, msg: ChunkRequest) -> ChunkResponse | None:
        """Answer a chunk request. A response that only points elsewhere goes out at once; one
        that carries chunk bytes is read and sent inside a serving slot, held until its bytes
        are handed to the socket."""
        manifest = self.current
        # One index lookup per hash (the reading thread gets the locations found here): with
        # thousands of small files a request is many chunks, and each lookup is a search.
        where: dict[bytes, ChunkLocation] = {}
        missing_list: list[bytes] = []
        index = manifest.chunk_locations()
        for h in msg.hashes:
            loc = index.get(h)
            if loc is None:
                missing_list.append(h)
            else:
                where[h] = loc
        known, missing = list(where), tuple(missing_list)
        if session.role == "peer":
            plan = self.distributor.assign(session.node_id, known, msg.avoid)
            serve, elsewhere = list(plan.from_master), plan.elsewhere
            if serve and session.addr:
                self._hint_others(session, serve)
        else:
            serve, elsewhere = known, ()
        if not serve:
            return ChunkResponse(msg.req_id, (), missing, (), tuple(elsewhere))
        async with self._serving:
            found, stale = await asyncio.get_running_loop().run_in_executor(
                self.read_pool, self.reader.read_many, serve, where
            )
            if stale:
                log.info("%d chunk(s) changed on disk since the scan; rescanning", len(stale))
                self._rescan.set()
            sent = sum(len(d) for _, d in found)
            if session.role == "peer":
                self.rates.add(session.node_id, "from_master", sent)
            session.bytes_sent += sent
            self.bytes_sent += sent
            self.chunks_sent += len(found)
            response = ChunkResponse(
                msg.req_id, tuple(found), missing, tuple(stale), tuple(elsewhere)
            )
            del found  # the response holds the only reference: freed as soon as it is sent
            await session.channel.send(response)
        return None

    def _hint_others(self, fetcher: PeerSession, chunks: list[bytes]) -> None:
        """Tell other peers still syncing (up to HINT_FANOUT of them, picked at random) that
        `fetcher` is about to hold `chunks`. Sent before the chunk bytes, and never waited on:
        on a slow master link the answers to the other peers' own requests queue behind chunk
        bytes, and without this they would learn who holds what only from those answers
        (docs/performance.md, scenario (b))."""
        told = [
            s
            for s in self.sessions.values()
            if s is not fetcher and s.role == "peer" and not self.distributor.is_complete(s.node_id)
        ]
        if len(told) > HINT_FANOUT:
            told = random.sample(told, HINT_FANOUT)
        hints = [
            ChunkHints(fetcher.addr, tuple(chunks[i : i + HINTS_PER_MESSAGE]))
            for i in range(0, len(chunks), HINTS_PER_MESSAGE)
        ]
        for session in told:
            for hint in hints:
                if session.channel.send_nowait(hint):
                    self.hints_sent += len(hint.hashes)

    # -- status -----------------------------------------------------------------------------

    def _peer_infos(self) -> list[PeerInfo]:
        total = len(self.current.chunk_locations())
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

    def status(self, file_list: bool = True) -> dict:
        m = self.current
        total = len(m.chunk_locations())
        return {
            "role": "master",
            "node_id": self.node_id,
            "software": f"sift {__version__}",
            "watched_dir": str(self.root),
            "started_at": self.started_at,
            "manifest_version": m.version,
            "files": m.file_count,
            "chunks": m.chunk_count,
            "distinct_chunks": len(m.chunk_locations()),
            "bytes": m.total_bytes,
            "bytes_sent": self.bytes_sent,
            "chunks_sent": self.chunks_sent,
            "hints_sent": self.hints_sent,
            "connected_peers": sum(1 for s in self.sessions.values() if s.role == "peer"),
            "versions": list(self.versions),
            "rates": {
                "master_out": self.rates.total("from_master"),
                "p2p": self.rates.total("from_peers"),
            },
            **self.control.status_fields(),
            **(
                {
                    "file_list": [
                        {"path": f.path, "size": f.size, "chunks": f.chunk_count} for f in m.files()
                    ]
                }
                if file_list
                else {}
            ),
            "peers": [
                {
                    "node_id": p.node_id,
                    "addr": p.addr,
                    "version": p.version,
                    "chunks_held": p.chunks_held,
                    "complete": p.complete,
                    "chunks_total": total,
                    "bytes_from_master": self.sessions[p.node_id].bytes_sent,
                    "bytes_from_peers": self.sessions[p.node_id].bytes_from_peers,
                    "bytes_to_peers": self.sessions[p.node_id].bytes_to_peers,
                    "rate_from_master": self.rates.rate(p.node_id, "from_master"),
                    "rate_in": round(
                        self.rates.rate(p.node_id, "from_master")
                        + self.rates.rate(p.node_id, "from_peers"),
                        1,
                    ),
                    "rate_out": self.rates.rate(p.node_id, "to_peers"),
                }
                for p in self._peer_infos()
            ],
        }
