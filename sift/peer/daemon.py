"""The peer daemon: follow the master's manifests, fetch what is missing, serve other peers.

Three things run side by side: the link to the master (reconnecting with backoff), the sync loop
(one sync at a time; a push during a sync queues one more), and the listener that serves this
peer's chunks to other peers, which keeps running while the master is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time

from sift import __version__
from sift.config import PeerConfig
from sift.core.manifest import (
    Manifest,
    ManifestError,
    apply_delta,
    decode_delta,
    decode_manifest,
)
from sift.core.paths import RESERVED_DIR
from sift.net.channel import Channel, ChannelClosed, RemoteError, accept, connect
from sift.net.tasks import run_until_stopped
from sift.peer.fetch import FetchFailed, ManifestOutdated
from sift.peer.sync import LocalChunks, Syncer
from sift.protocol import AuthenticationError, ProtocolError
from sift.protocol.messages import (
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
from sift.state import LocalIndex, ScanCache, db_path, open_db
from sift.state.db import get_meta, set_meta

log = logging.getLogger("sift.peer")

BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
SERVE_WAIT = 15.0  # how long a request for a chunk we are still fetching may wait for it
SERVE_GATHER = 0.05  # once part of a batch is here, how long to wait for more before answering
PROGRESS_REPORT_INTERVAL = 0.5
PEER_REQUEST_TIMEOUT = 30.0


class NotOurDirectory(Exception):
    pass


def check_local_dir(config: PeerConfig) -> None:
    """A peer never deletes data it did not put there: a non-empty local_dir without `.sift/`
    is refused unless the operator asked to adopt it."""
    local = config.local_dir
    local.mkdir(parents=True, exist_ok=True)
    if (local / RESERVED_DIR).is_dir() or config.adopt:
        return
    if any(item.name != RESERVED_DIR for item in local.iterdir()):
        raise NotOurDirectory(
            f"local_dir {local} is not empty and was not created by sift; set adopt = true to "
            "mirror the master into it (files the master does not have will be deleted)"
        )


class PeerDaemon:
    def __init__(self, config: PeerConfig):
        check_local_dir(config)
        self.config = config
        self.local_dir = config.local_dir
        (self.local_dir / RESERVED_DIR).mkdir(exist_ok=True)
        self.db = open_db(db_path(config.state_dir), role="peer")
        self.cache = ScanCache(self.db)
        self.index = LocalIndex(self.db)
        node_id = get_meta(self.db, "node_id")
        if not isinstance(node_id, str):
            node_id = "peer-" + secrets.token_hex(4)
            set_meta(self.db, "node_id", node_id)
        self.node_id = node_id
        self.manifest: Manifest | None = self.index.load_manifest()
        self.chunks = LocalChunks(self.local_dir)
        self.syncer = Syncer(self.local_dir, self.cache, self.chunks, self, self._progress)
        self.master: Channel | None = None
        self.master_version = 0
        self._master_ready = asyncio.Event()
        self._sync_needed = asyncio.Event()
        self._peer_channels: dict[str, Channel] = {}
        self._peer_locks: dict[str, asyncio.Lock] = {}
        self._new_holdings: list[bytes] = []
        self._reported: set[bytes] = set()  # what the master was last told we hold
        self.server: asyncio.Server | None = None
        self.bound_port = 0
        self.last_sync: dict | None = None
        self.syncing = False

    @property
    def synced_version(self) -> int:
        return self.index.synced_version()

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        host, port = self.config.bind_addr
        self.server = await asyncio.start_server(self._on_connect, host, port, limit=1 << 20)
        self.bound_port = self.server.sockets[0].getsockname()[1]
        log.info(
            "peer %s serving %s on %s:%d (synced version %d)",
            self.node_id,
            self.local_dir,
            host,
            self.bound_port,
            self.synced_version,
        )
        await run_until_stopped(
            stop,
            [self._master_link(stop), self._sync_loop(), self._report_progress()],
            self.shutdown,
        )

    async def shutdown(self) -> None:
        if self.server is not None:
            self.server.close()
        channels = list(self._peer_channels.values())
        if self.master is not None:
            channels.append(self.master)
        await asyncio.gather(
            *(c.close("peer shutting down") for c in channels), return_exceptions=True
        )
        self.chunks.reader.close()
        self.db.close()
        log.info("peer stopped")

    # -- the master link --------------------------------------------------------------------

    async def _master_link(self, stop: asyncio.Event) -> None:
        delay = BACKOFF_START
        host, port = self.config.master_addr
        while not stop.is_set():
            try:
                channel = await connect(
                    host,
                    port,
                    self.config.psk,
                    self.node_id,
                    node_role="peer",
                    listen_port=self.bound_port,
                    advertise_addr=str(self.config.advertise_addr)
                    if self.config.advertise_addr
                    else None,
                    max_frame_size=self.config.max_frame_size,
                )
            except AuthenticationError as exc:
                log.error("master %s:%d refused us: %s", host, port, exc)
                delay = BACKOFF_MAX
            except (OSError, TimeoutError, ProtocolError, ChannelClosed) as exc:
                log.info("master %s:%d unreachable (%s); retrying in %.1fs", host, port, exc, delay)
            else:
                delay = BACKOFF_START
                log.info(
                    "connected to master %s:%d (version %d)",
                    host,
                    port,
                    channel.ack.manifest_version,
                )
                self.master = channel
                self.master_version = channel.ack.manifest_version
                self._master_ready.set()
                self._sync_needed.set()
                serving = asyncio.ensure_future(channel.serve(self._handle_master))
                with contextlib.suppress(Exception):
                    await self._send_holdings(full=True)
                await serving
                self._master_ready.clear()
                self.master = None
                log.info("lost the master connection; reconnecting")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _handle_master(self, channel: Channel, msg: Message) -> Message | None:
        if isinstance(msg, ManifestPush):
            self.master_version = max(self.master_version, msg.version)
            if msg.version != self.synced_version:
                self._sync_needed.set()
            return None
        if isinstance(msg, StatusRequest):
            return StatusResponse(msg.req_id, json.dumps(self.status()))
        return Error(
            getattr(msg, "req_id", None),
            "unexpected",
            f"a peer does not handle {type(msg).__name__} from the master",
        )

    async def _fetch_manifest(self) -> Manifest:
        channel = self.master
        if channel is None:
            raise ChannelClosed("no master connection")
        base = self.manifest
        since = base.version if base is not None else None
        response = await channel.request(ManifestRequest(0, since))
        assert isinstance(response, ManifestResponse)
        if response.base_version is None:
            return decode_manifest(response.data)
        if base is None or response.base_version != base.version:
            raise ManifestError("the master sent a delta from a version we do not hold")
        return apply_delta(base, decode_delta(response.data))

    # -- syncing ----------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        failures = 0
        while True:
            await self._sync_needed.wait()
            await self._master_ready.wait()
            self._sync_needed.clear()
            try:
                await self._sync_once()
                failures = 0
            except ManifestOutdated as exc:
                log.info("manifest moved on during the sync (%s); syncing again", exc)
                self._sync_needed.set()
            except (ChannelClosed, ConnectionError, TimeoutError, RemoteError) as exc:
                log.info("sync interrupted: %s", exc)
                self._sync_needed.set()
                await asyncio.sleep(BACKOFF_START)
            except (ManifestError, FetchFailed, ProtocolError) as exc:
                failures += 1
                log.error("sync failed: %s", exc)
                self._sync_needed.set()
                await asyncio.sleep(min(BACKOFF_START * 2**failures, 30))
            except OSError as exc:
                failures += 1
                log.error("sync failed writing %s: %s", self.local_dir, exc.strerror or exc)
                self._sync_needed.set()
                await asyncio.sleep(min(BACKOFF_START * 2**failures, 30))
            except Exception:
                failures += 1
                log.exception("sync failed unexpectedly; retrying")
                self._sync_needed.set()
                await asyncio.sleep(min(BACKOFF_START * 2**failures, 30))

    async def _sync_once(self) -> None:
        target = await self._fetch_manifest()
        if target.version == 0:
            return  # the master has not finished its first scan: nothing to mirror yet
        self.syncing = True
        try:
            report = await self.syncer.run(target)
        finally:
            self.syncing = False
        with self.index.batch():
            self.index.save_manifest(target)
            self.index.set_synced_version(target.version)
            if not self.index.is_initialized(self.local_dir):
                self.index.mark_initialized(self.local_dir, adopted=self.config.adopt)
        self.manifest = target
        self.last_sync = {
            "version": target.version,
            "files_written": report.files_written,
            "files_deleted": report.files_deleted,
            "bytes_copied_locally": report.bytes_copied_locally,
            "bytes_reused": report.bytes_reused,
            "bytes_from_master": report.fetch.bytes_from_master,
            "bytes_from_peers": report.fetch.bytes_from_peers,
            "seconds": round(report.seconds, 3),
            "finished_at": time.time(),
        }
        log.info(
            "synced to version %d in %.2fs: %d file(s) written, %d removed; "
            "%.1f MB from peers, %.1f MB from the master, %.1f MB copied locally",
            target.version,
            report.seconds,
            report.files_written,
            report.files_deleted,
            report.fetch.bytes_from_peers / 1e6,
            report.fetch.bytes_from_master / 1e6,
            report.bytes_copied_locally / 1e6,
        )
        self._new_holdings.clear()
        # Only the difference: a one-chunk edit must not resend every chunk hash we hold.
        await self._send_holdings(full=False)

    def _progress(self, added: list[bytes]) -> None:
        self._new_holdings.extend(added)

    async def _report_progress(self) -> None:
        """While a sync runs, tell the master which chunks arrived, so it can point other peers
        here instead of sending them the same bytes."""
        while True:
            await asyncio.sleep(PROGRESS_REPORT_INTERVAL)
            if self._new_holdings and self.master is not None:
                added, self._new_holdings = self._new_holdings, []
                self._reported.update(added)
                with contextlib.suppress(Exception):
                    await self.master.send(
                        HoldingsReport(self.synced_version, False, tuple(added), ())
                    )

    async def _send_holdings(self, full: bool) -> None:
        """Tell the master what we hold: everything on a new connection, else what changed
        since the last report."""
        if self.master is None:
            return
        held = set(self.chunks.locations)
        if full:
            msg = HoldingsReport(self.synced_version, True, tuple(held), ())
        else:
            added = tuple(held - self._reported)
            removed = tuple(self._reported - held)
            msg = HoldingsReport(self.synced_version, False, added, removed)
        self._reported = held
        await self.master.send(msg)

    # -- ChunkSource for the fetcher ----------------------------------------------------------

    async def ask_master(self, hashes: list[bytes], avoid: list[str]) -> ChunkResponse:
        if self.master is None:
            raise ChannelClosed("no master connection")
        response = await self.master.request(ChunkRequest(0, tuple(hashes), tuple(avoid)))
        assert isinstance(response, ChunkResponse)
        return response

    async def ask_peer(self, addr: str, hashes: list[bytes]) -> ChunkResponse:
        channel = await self._peer_channel(addr)
        response = await channel.request(
            ChunkRequest(0, tuple(hashes), ()), timeout=PEER_REQUEST_TIMEOUT
        )
        assert isinstance(response, ChunkResponse)
        return response

    async def _peer_channel(self, addr: str) -> Channel:
        lock = self._peer_locks.setdefault(addr, asyncio.Lock())
        async with lock:
            channel = self._peer_channels.get(addr)
            if channel is not None and not channel.closed:
                return channel
            host, _, port = addr.rpartition(":")
            channel = await connect(
                host.strip("[]"),
                int(port),
                self.config.psk,
                self.node_id,
                node_role="peer",
                max_frame_size=self.config.max_frame_size,
            )
            self._peer_channels[addr] = channel
            task = asyncio.ensure_future(channel.serve(self._handle_peer_request))
            task.add_done_callback(lambda _t: self._peer_channels.pop(addr, None))
            return channel

    # -- serving other peers ----------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            channel = await accept(
                reader,
                writer,
                self.config.psk,
                self.node_id,
                lambda: self.synced_version,
                max_frame_size=self.config.max_frame_size,
            )
        except (ProtocolError, TimeoutError, ConnectionError, OSError) as exc:
            log.warning("connection from %s:%s refused: %s", peer[0], peer[1], exc)
            writer.close()
            return
        await channel.serve(self._handle_peer_request)

    async def _handle_peer_request(self, channel: Channel, msg: Message) -> Message | None:
        if isinstance(msg, ChunkRequest):
            return await self._serve_chunks(msg)
        if isinstance(msg, StatusRequest):
            return StatusResponse(msg.req_id, json.dumps(self.status()))
        if isinstance(msg, ManifestPush):
            return None
        return Error(
            getattr(msg, "req_id", None),
            "unexpected",
            f"a peer does not serve {type(msg).__name__}",
        )

    async def _serve_chunks(self, msg: ChunkRequest) -> ChunkResponse:
        """Serve what we hold. Chunks we are still fetching are waited for, but once some of
        the batch is here the answer goes out within SERVE_GATHER with the rest marked stale
        ("not yet, ask again"), so a batch is not held back by its slowest chunk."""
        wanted = list(dict.fromkeys(msg.hashes))
        deadline = time.monotonic() + SERVE_WAIT
        gather_until: float | None = None
        while True:
            waiting = [
                h for h in wanted if h not in self.chunks.locations and h in self.chunks.pending
            ]
            now = time.monotonic()
            if not waiting or now >= deadline:
                break
            if gather_until is None and len(waiting) < len(wanted):
                gather_until = now + SERVE_GATHER
            if gather_until is not None and now >= gather_until:
                break
            await self.chunks.wait_for_arrivals(min(deadline, gather_until or deadline) - now)
        have = [h for h in wanted if h in self.chunks.locations]
        found, _stale = await asyncio.to_thread(
            self.chunks.reader.read_many, have, dict(self.chunks.locations)
        )
        got = {h for h, _ in found}
        later = tuple(h for h in wanted if h not in got and h in self.chunks.pending)
        missing = tuple(h for h in wanted if h not in got and h not in later)
        return ChunkResponse(msg.req_id, tuple(found), missing, later, ())

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict:
        m = self.manifest
        return {
            "role": "peer",
            "node_id": self.node_id,
            "software": f"sift {__version__}",
            "local_dir": str(self.local_dir),
            "master_addr": str(self.config.master_addr),
            "master_connected": self.master is not None,
            "master_version": self.master_version,
            "synced_version": self.synced_version,
            "syncing": self.syncing,
            "files": m.file_count if m else 0,
            "chunks": m.chunk_count if m else 0,
            "bytes": m.total_bytes if m else 0,
            "chunks_held": len(self.chunks.locations),
            "last_sync": self.last_sync,
        }
