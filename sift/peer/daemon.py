"""The peer daemon: follow the master's manifests, fetch what is missing, serve other peers.

Three things run side by side: the link to the master (reconnecting with backoff), the sync loop
(one sync at a time; a push during a sync queues one more), and the listener that serves this
peer's chunks to other peers, which keeps running while the master is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Container, Iterable

from sift import __version__
from sift.config import PeerConfig
from sift.control.config_edit import ConfigChange
from sift.control.service import ControlService
from sift.core.manifest import (
    Manifest,
    ManifestError,
    apply_delta,
    decode_delta,
    decode_manifest,
)
from sift.core.paths import RESERVED_DIR
from sift.metrics import RateTable
from sift.net.channel import (
    Channel,
    ChannelClosed,
    HandshakeLimit,
    RemoteError,
    accept,
    connect,
    listen,
)
from sift.net.tasks import run_until_stopped
from sift.net.tls import TLSError, node_tls
from sift.peer.fetch import FetchFailed, ManifestOutdated, SourceHealth
from sift.peer.sync import LocalChunks, Syncer, SyncProgress
from sift.protocol import AuthenticationError, ProtocolError
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
from sift.state import LocalIndex, ScanCache, db_path, open_db
from sift.state.db import get_meta, set_meta

log = logging.getLogger("sift.peer")

BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
SERVE_WAIT = 15.0  # how long a request for a chunk we are still fetching may wait for it
SERVE_GATHER = 0.05  # once part of a batch is here, how long to wait for more before answering
COMMIT_WAIT = 5.0  # how long a read that failed while part files were being placed may wait
PROGRESS_REPORT_INTERVAL = 0.5
PEER_REQUEST_TIMEOUT = 30.0
WRITE_RETRY_MAX = 5.0  # a full or failing disk is retried this often, so a sync resumes soon


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


def unserved(
    wanted: Iterable[bytes],
    got: Container[bytes],
    read: Container[bytes],
    pending: Container[bytes],
    held: Container[bytes],
) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """The chunks of a request not served, as (not yet, missing). "Not yet" (ask again): the
    running sync is still fetching it, or it arrived while the others were read (it is held
    now but was not among the chunks `read`). Answered "missing", such a chunk made the asker
    fetch it from the master a second time: 1-2% of the master's bytes with 8 peers. Missing:
    never had it, or its read failed."""
    later: list[bytes] = []
    missing: list[bytes] = []
    for h in wanted:
        if h in got:
            continue
        if h in pending or (h not in read and h in held):
            later.append(h)
        else:
            missing.append(h)
    return tuple(later), tuple(missing)


class PeerDaemon:
    def __init__(self, config: PeerConfig):
        check_local_dir(config)
        self.config = config
        self.tls = node_tls(config)  # None: plain TCP
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
        self.started_at = time.time()
        self.manifest: Manifest | None = self.index.load_manifest()
        self.chunks = LocalChunks(self.local_dir)
        self.source_health = SourceHealth(on_ban=self._banned)
        self._handshakes = HandshakeLimit()
        self.syncer = Syncer(
            self.local_dir,
            self.cache,
            self.chunks,
            self,
            self._progress,
            on_start=self._sync_started,
            update_in_place=config.update_in_place,
        )
        self.master: Channel | None = None
        self.stopping = False
        self.master_version = 0
        self._master_ready = asyncio.Event()
        self._sync_needed = asyncio.Event()
        self._peer_channels: dict[str, Channel] = {}
        self._inbound: set[Channel] = set()  # other peers connected to us
        self._peer_locks: dict[str, asyncio.Lock] = {}
        self._new_holdings: list[bytes] = []
        self._reported: set[bytes] = set()  # what the master was last told we hold
        self.server: asyncio.Server | None = None
        self.bound_port = 0
        self.last_sync: dict | None = None
        self.write_error: str | None = None
        self._last_failure: str | None = None  # the last sync error logged (not repeated)
        self.syncing = False
        self._sync_idle = asyncio.Event()  # set while no sync runs
        self._sync_idle.set()
        self.control = ControlService(
            "peer",
            config,
            status=self.status,
            rates_event=self._rates_event,
            apply_change=self._apply_config,
        )
        self.bus = self.control.bus
        self.rates: RateTable = self.control.rates
        self.bytes_from_peers = 0  # chunk bytes received from other peers since start
        self.bytes_to_peers = 0  # chunk bytes served to other peers since start
        self.hinted_chunks = 0  # chunks the master's hints sent to another peer's queue
        self._reported_counters = (0, 0)  # as last sent to the master
        self._sources: dict[str, int] = {}  # bytes per source node id in the running sync

    @property
    def synced_version(self) -> int:
        return self.index.synced_version()

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.control.start()
        host, _port = self.config.bind_addr
        tls = self.tls.server if self.tls else None
        self.server = await listen(self._on_connect, self.config.bind_addr, tls)
        self.bound_port = self.server.sockets[0].getsockname()[1]
        log.info(
            "peer %s serving %s on %s:%d%s (synced version %d)",
            self.node_id,
            self.local_dir,
            host,
            self.bound_port,
            " (TLS)" if tls else "",
            self.synced_version,
        )
        await run_until_stopped(
            stop,
            [
                self._master_link(stop),
                self._sync_loop(),
                self._report_progress(),
                self.control.run_rates(),
            ],
            self.shutdown,
        )

    async def shutdown(self) -> None:
        self.stopping = True
        if self.server is not None:
            self.server.close()
        channels = list(self._peer_channels.values()) + list(self._inbound)
        if self.master is not None:
            channels.append(self.master)
        await asyncio.gather(
            *(c.close("peer shutting down") for c in channels), return_exceptions=True
        )
        self.chunks.reader.close()
        self.db.close()
        await self.control.close()
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
                    tls=self.tls.client if self.tls else None,
                )
            except AuthenticationError as exc:
                log.error("master %s:%d refused us: %s", host, port, exc)
                delay = BACKOFF_MAX
            except TLSError as exc:  # a TLS mismatch, or a master going away mid-handshake
                log.warning("master %s:%d: %s; retrying in %.1fs", host, port, exc, delay)
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
                self.bus.publish("master.connected", addr=f"{host}:{port}")
                self._master_ready.set()
                self._sync_needed.set()
                serving = asyncio.ensure_future(channel.serve(self._handle_master))
                with contextlib.suppress(Exception):
                    await self._send_holdings(full=True)
                await serving
                self._master_ready.clear()
                self.master = None
                log.info("lost the master connection; reconnecting")
                self.bus.publish(
                    "master.disconnected",
                    addr=f"{host}:{port}",
                    reason=channel.close_reason or "connection closed",
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _handle_master(self, channel: Channel, msg: Message) -> Message | None:
        if isinstance(msg, ManifestPush):
            if msg.version > self.master_version:
                self.bus.publish("manifest.received", version=msg.version)
            self.master_version = max(self.master_version, msg.version)
            if msg.version != self.synced_version:
                self._sync_needed.set()
            return None
        if isinstance(msg, ChunkHints):
            fetcher = self.syncer.fetcher
            if fetcher is not None:
                self.hinted_chunks += fetcher.hint(msg.addr, msg.hashes)
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
        try:
            return apply_delta(base, decode_delta(response.data))
        except ManifestError as exc:
            # E.g. a file edit naming a version of the file we do not have (a master that lost
            # its state and reused version numbers): the whole manifest settles it.
            log.warning("cannot apply the master's delta (%s); fetching the whole manifest", exc)
            response = await channel.request(ManifestRequest(0, None))
            assert isinstance(response, ManifestResponse)
            return decode_manifest(response.data)

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
                self._last_failure = None
                if self.write_error is not None:
                    log.info("sync resumed: writing to %s works again", self.local_dir)
                    self.bus.publish("sync.resumed", after=self.write_error)
                    self.write_error = None
            except ManifestOutdated as exc:
                log.info("manifest moved on during the sync (%s); syncing again", exc)
                self._sync_needed.set()
            except (ChannelClosed, ConnectionError, TimeoutError, RemoteError) as exc:
                log.info("sync interrupted: %s", exc)
                self._sync_needed.set()
                await asyncio.sleep(BACKOFF_START)
            except (ManifestError, FetchFailed, ProtocolError) as exc:
                failures += 1
                message = f"sync failed: {exc}"
                if message != self._last_failure:  # a manifest the master keeps sending: once
                    log.error("%s", message)
                    self.bus.publish("sync.failed", error=str(exc))
                else:
                    log.debug("%s", message)
                self._last_failure = message
                self._sync_needed.set()
                await asyncio.sleep(min(BACKOFF_START * 2**failures, 30))
            except OSError as exc:
                failures += 1
                message = f"sync failed writing {self.local_dir}: {exc.strerror or exc}"
                # One line per distinct problem, not one per retry of a disk that stays full.
                if message != self.write_error:
                    log.error("%s", message)
                    self.bus.publish("sync.failed", error=message)
                else:
                    log.debug("%s", message)
                self.write_error = message
                self._sync_needed.set()
                await asyncio.sleep(min(BACKOFF_START * 2**failures, WRITE_RETRY_MAX))
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
        self._sync_idle.clear()
        self._sources = {}
        try:
            report = await self.syncer.run(target)
        finally:
            self.syncing = False
            self._sync_idle.set()
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
            "files_patched": report.files_patched,
            "bytes_from_master": report.fetch.bytes_from_master,
            "bytes_from_peers": report.fetch.bytes_from_peers,
            "seconds": round(report.seconds, 3),
            "finished_at": time.time(),
        }
        log.info(
            "synced to version %d in %.2fs: %d file(s) written, %d removed; "
            "%.1f MB from peers, %.1f MB from the master, %.1f MB copied locally%s",
            target.version,
            report.seconds,
            report.files_written,
            report.files_deleted,
            report.fetch.bytes_from_peers / 1e6,
            report.fetch.bytes_from_master / 1e6,
            report.bytes_copied_locally / 1e6,
            f"; {report.files_patched} patched in place" if report.files_patched else "",
        )
        self.bus.publish("sync.finished", **self.last_sync)
        self._new_holdings.clear()
        # Only the difference: a one-chunk edit must not resend every chunk hash we hold.
        await self._send_holdings(full=False)

    def _banned(self, ban) -> None:
        self.bus.publish("source.banned", **ban.as_dict())

    def _sync_started(self, progress: SyncProgress) -> None:
        data = progress.to_dict()
        del data["current"]
        self.bus.publish("sync.started", **data)

    def _progress(self, added: list[bytes]) -> None:
        self._new_holdings.extend(added)

    async def _report_progress(self) -> None:
        """While a sync runs, tell the master which chunks arrived, so it can point other peers
        here instead of sending them the same bytes."""
        while True:
            await asyncio.sleep(PROGRESS_REPORT_INTERVAL)
            progress = self.progress()
            if progress is not None:
                self.bus.publish("sync.progress", **progress)
            counters = (self.bytes_from_peers, self.bytes_to_peers)
            if self.master is not None and (
                self._new_holdings or counters != self._reported_counters
            ):
                added, self._new_holdings = self._new_holdings, []
                self._reported.update(added)
                with contextlib.suppress(Exception):
                    await self.master.send(self._holdings_report(False, tuple(added)))

    async def _send_holdings(self, full: bool) -> None:
        """Tell the master what we hold: everything on a new connection, else what changed
        since the last report."""
        if self.master is None:
            return
        held = set(self.chunks.locations)
        if full:
            msg = self._holdings_report(True, tuple(held))
        else:  # after a sync: only the difference, not every chunk again
            added = tuple(held - self._reported)
            removed = tuple(self._reported - held)
            msg = self._holdings_report(False, added, removed)
        self._reported = held
        await self.master.send(msg)

    def _holdings_report(
        self, full: bool, added: tuple[bytes, ...], removed: tuple[bytes, ...] = ()
    ) -> HoldingsReport:
        self._reported_counters = (self.bytes_from_peers, self.bytes_to_peers)
        return HoldingsReport(
            self.synced_version, full, added, removed, self.bytes_from_peers, self.bytes_to_peers
        )

    def progress(self) -> dict | None:
        """The running sync's progress, or None between syncs."""
        current = self.syncer.progress
        if current is None:
            return None
        return {**current.to_dict(), "sources": dict(self._sources)}

    # -- ChunkSource for the fetcher ----------------------------------------------------------

    async def ask_master(self, hashes: list[bytes], avoid: list[str]) -> ChunkResponse:
        if self.master is None:
            raise ChannelClosed("no master connection")
        response = await self.master.request(ChunkRequest(0, tuple(hashes), tuple(avoid)))
        assert isinstance(response, ChunkResponse)
        self._count_received("master", response, from_peer=False)
        return response

    async def ask_peer(self, addr: str, hashes: list[bytes]) -> ChunkResponse:
        channel = await self._peer_channel(addr)
        response = await channel.request(
            ChunkRequest(0, tuple(hashes), ()), timeout=PEER_REQUEST_TIMEOUT
        )
        assert isinstance(response, ChunkResponse)
        self._count_received(channel.peer_node_id, response, from_peer=True)
        return response

    def _count_received(self, node: str, response: ChunkResponse, *, from_peer: bool) -> None:
        """Rates and this sync's sources, both keyed by node id ("master" for the master)."""
        n = sum(len(data) for _, data in response.chunks)
        if n:
            self.rates.add(node, "in", n)
            self._sources[node] = self._sources.get(node, 0) + n
            if from_peer:
                self.bytes_from_peers += n

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
                tls=self.tls.client if self.tls else None,
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
                tls=self.tls.server if self.tls else None,
                limit=self._handshakes,
            )
        except (ProtocolError, TimeoutError, ConnectionError, OSError) as exc:
            log.warning("connection from %s:%s refused: %s", peer[0], peer[1], exc)
            writer.close()
            return
        if self.stopping:  # shut down while this one authenticated: it was not closed with the rest
            await channel.close("peer shutting down")
            return
        self._inbound.add(channel)
        try:
            await channel.serve(self._handle_peer_request)
        except asyncio.CancelledError:
            # Only at exit, for a connection still open when the loop shuts down; re-raising
            # would make asyncio log the cancelled handler as an ERROR with a traceback.
            await channel.close("peer shutting down", send_goodbye=False)
        finally:
            self._inbound.discard(channel)
            self.rates.forget(channel.peer_node_id)

    async def _handle_peer_request(self, channel: Channel, msg: Message) -> Message | None:
        if isinstance(msg, ChunkRequest):
            response = await self._serve_chunks(msg)
            served = sum(len(data) for _, data in response.chunks)
            if served:
                self.rates.add(channel.peer_node_id, "out", served)
                self.bytes_to_peers += served
            return response
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
        # Only the locations asked about go to the reading thread: copying the whole map per
        # request cost more than the reads for a peer holding a few GiB.
        where = {h: loc for h in wanted if (loc := self.chunks.locations.get(h)) is not None}
        found, failed = await asyncio.to_thread(
            self.chunks.reader.read_many, list(where), where, self.syncer.fresh_chunks()
        )
        if failed and self.syncer.committing:
            # The sync is renaming its part files into place, and some were read at their old
            # path: read those again where they are once it is done. Answered "missing", they
            # made the asker fetch them from the master a second time.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sync_idle.wait(), COMMIT_WAIT)
            moved = {h: loc for h in failed if (loc := self.chunks.locations.get(h)) is not None}
            again, _ = await asyncio.to_thread(self.chunks.reader.read_many, list(moved), moved)
            found.extend(again)
        later, missing = unserved(
            wanted, {h for h, _ in found}, where, self.chunks.pending, self.chunks.locations
        )
        return ChunkResponse(msg.req_id, tuple(found), missing, later, ())

    # -- status -----------------------------------------------------------------------------

    def status(self, file_list: bool = True) -> dict:  # the same call as the master's; no list here
        m = self.manifest
        return {
            "role": "peer",
            "node_id": self.node_id,
            "software": f"sift {__version__}",
            "local_dir": str(self.local_dir),
            "started_at": self.started_at,
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
            "banned_sources": self.source_health.snapshot(),
            "last_error": self.write_error,
            "progress": self.progress(),
            "bytes_from_peers": self.bytes_from_peers,
            "bytes_to_peers": self.bytes_to_peers,
            "hinted_chunks": self.hinted_chunks,
            "rates": self._rates_event(self.rates),
            **self.control.status_fields(),
        }

    # -- control ----------------------------------------------------------------------------

    def _rates_event(self, rates: RateTable) -> dict:
        peers = {
            name: {"in": r.get("in", 0.0), "out": r.get("out", 0.0)}
            for name, r in rates.rates.items()
        }
        return {"total": {"in": rates.total("in"), "out": rates.total("out")}, "peers": peers}

    def _apply_config(self, change: ConfigChange) -> None:
        # log_level is the peer's only live key, and the service already applied it.
        self.config = dataclasses.replace(
            self.config, **{change.key: getattr(change.config, change.key)}
        )
