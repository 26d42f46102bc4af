"""The fetch scheduler: get every missing chunk, from peers first and from the master last.

The peer asks the master for its missing chunks in random order (so peers that need the same new
data at once ask for different chunks first). The master answers each batch with the chunks it
sends itself plus "fetch these from peer P" for the rest; those go to per-peer queues. The master
also tells peers, unasked, which chunks it is sending to whom (ChunkHints, see
:meth:`Fetcher.hint`): a hinted chunk still waiting for its turn goes to that peer's queue, so
peers trade what the master sent others as soon as it is sent. A source
that fails or serves bad bytes is avoided for that chunk, and the chunk goes back to the master
with the avoid list, so the master points elsewhere or sends it itself. Every loop is bounded.

A source that serves bytes that fail verification (wrong, truncated, or not what it claimed to
hold) or breaks the protocol is remembered across syncs in :class:`SourceHealth`: after one bad
chunk it is demoted (one request in flight at a time, so it cannot waste much), after three it is
banned for a while (named in every `avoid` list; its queued work goes to the master). Bans
expire, so a peer whose disk was repaired is used again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from sift.protocol.messages import ChunkResponse

log = logging.getLogger("sift.peer.fetch")

BATCH_BYTES = 1024 * 1024  # a transfer unit: large enough to amortize a round trip
BATCH_CHUNKS = 256  # many small chunks travel together
MASTER_PARALLEL = 4  # requests in flight to the master
PEER_PARALLEL = 4  # requests in flight to each peer
MAX_STALE_ROUNDS = 20  # the master said "stale" this many times: give up this sync
# A peer answers "stale" for chunks it is still fetching itself ("not yet, ask me again"); a
# chunk is asked again from that peer this many times before it goes to the master instead.
MAX_NOT_YET = 20
BAD_CHUNKS_BEFORE_BAN = 3
BAN_SECONDS = 300.0  # how long a lying source is not asked (then it gets a fresh start)
DEMOTED_PARALLEL = 1  # requests in flight to a source that served one bad chunk


class ManifestOutdated(Exception):
    """The master no longer has a chunk we were told to fetch: the manifest moved on."""


class FetchFailed(Exception):
    pass


@dataclass(frozen=True)
class Ban:
    addr: str
    reason: str
    until: float  # wall-clock time (time.time()) the ban ends
    bad_chunks: int

    def as_dict(self) -> dict:
        return {
            "addr": self.addr,
            "reason": self.reason,
            "until": round(self.until, 3),
            "bad_chunks": self.bad_chunks,
        }


class SourceHealth:
    """Strikes against peer sources, kept across syncs: demoted after one, banned after
    `BAD_CHUNKS_BEFORE_BAN` for `ban_seconds`. `on_ban` is called with each new Ban."""

    def __init__(
        self,
        *,
        ban_seconds: float = BAN_SECONDS,
        clock: Callable[[], float] = time.time,
        on_ban: Callable[[Ban], None] | None = None,
    ):
        self.ban_seconds = ban_seconds
        self.clock = clock
        self.on_ban = on_ban
        self._strikes: dict[str, int] = {}
        self._bans: dict[str, Ban] = {}

    def strike(self, addr: str, reason: str) -> Ban | None:
        """Count one bad chunk (or protocol error) against `addr`; returns the Ban if this
        strike banned it."""
        if self.is_banned(addr):
            return None
        count = self._strikes.get(addr, 0) + 1
        self._strikes[addr] = count
        if count < BAD_CHUNKS_BEFORE_BAN:
            log.warning("demoting source %s: %s (%d bad so far)", addr, reason, count)
            return None
        ban = Ban(addr, reason, self.clock() + self.ban_seconds, count)
        self._bans[addr] = ban
        self._strikes.pop(addr, None)
        log.warning(
            "banning source %s for %.0fs after %d bad chunk(s): %s",
            addr,
            self.ban_seconds,
            count,
            reason,
        )
        if self.on_ban is not None:
            self.on_ban(ban)
        return ban

    def is_banned(self, addr: str) -> bool:
        ban = self._bans.get(addr)
        if ban is None:
            return False
        if self.clock() >= ban.until:
            del self._bans[addr]  # served its time: a fresh start
            log.info("ban on source %s expired", addr)
            return False
        return True

    def is_demoted(self, addr: str) -> bool:
        return addr in self._strikes

    def banned(self) -> list[str]:
        return sorted(a for a in list(self._bans) if self.is_banned(a))

    def snapshot(self) -> list[dict]:
        """Current bans, for status: address, reason, until (epoch seconds), bad chunks."""
        return [self._bans[a].as_dict() for a in self.banned()]


class ChunkSource(Protocol):
    async def ask_master(self, hashes: list[bytes], avoid: list[str]) -> ChunkResponse: ...

    async def ask_peer(self, addr: str, hashes: list[bytes]) -> ChunkResponse: ...


# Called with a batch of (hash, data) and the source's name; verifies and stores them, and returns
# the hashes whose bytes did not match.
ChunkSink = Callable[[list[tuple[bytes, bytes]], str], Awaitable[list[bytes]]]


@dataclass
class FetchStats:
    from_master: int = 0
    from_peers: int = 0
    bytes_from_master: int = 0
    bytes_from_peers: int = 0
    bad_chunks: int = 0
    by_source: dict[str, int] = field(default_factory=dict)


@dataclass
class _Work:
    pending: set[bytes]
    avoid: dict[bytes, set[str]] = field(default_factory=dict)
    master_queue: deque[bytes] = field(default_factory=deque)
    peer_queues: dict[str, deque[bytes]] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)  # source -> requests in flight
    bad: dict[str, int] = field(default_factory=dict)
    not_yet: dict[bytes, int] = field(default_factory=dict)  # chunk -> "ask again" answers
    # chunk -> peer address whose queue it is in (by a hint or the master's answer): the master
    # queue skips these until that peer gives them back.
    routed: dict[bytes, str] = field(default_factory=dict)
    asked: set[bytes] = field(default_factory=set)  # chunks in a request in flight
    banned: set[str] = field(default_factory=set)
    stale_rounds: int = 0


class Fetcher:
    MASTER = "master"

    def __init__(
        self,
        source: ChunkSource,
        sink: ChunkSink,
        lengths: Mapping[bytes, int],
        *,
        rng: random.Random | None = None,
        health: SourceHealth | None = None,
    ):
        self.source = source
        self.sink = sink
        self.lengths = lengths
        self.rng = rng or random.Random()
        # Strikes outlive one sync: the daemon (our ChunkSource) keeps them as source_health.
        if health is None:
            health = getattr(source, "source_health", None)
        self.health: SourceHealth = health if health is not None else SourceHealth()
        self.stats = FetchStats()
        self._work: _Work | None = None
        self._hinted = asyncio.Event()  # a hint queued work for a peer: start requests now

    async def fetch(self, hashes: Iterable[bytes]) -> FetchStats:
        order = list(dict.fromkeys(hashes))
        self.rng.shuffle(order)
        work = _Work(pending=set(order), master_queue=deque(order))
        work.banned.update(self.health.banned())
        tasks: dict[asyncio.Task, str] = {}
        hinted = None
        self._work = work
        try:
            while work.pending:
                self._start_requests(work, tasks)
                if not tasks:
                    # Nothing in flight and nothing queued, yet chunks are pending: requeue them
                    # to the master rather than wait forever.
                    work.routed.clear()
                    work.master_queue.extend(work.pending)
                    self._start_requests(work, tasks)
                if hinted is None:
                    self._hinted.clear()
                    hinted = asyncio.ensure_future(self._hinted.wait())
                done, _ = await asyncio.wait([*tasks, hinted], return_when=asyncio.FIRST_COMPLETED)
                if hinted in done:
                    hinted = None
                for task in done:
                    source = tasks.pop(task, None)
                    if source is None:
                        continue
                    work.active[source] -= 1
                    task.result()  # propagates ManifestOutdated / FetchFailed
        finally:
            self._work = None
            if hinted is not None:
                hinted.cancel()
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        return self.stats

    def hint(self, addr: str, hashes: Iterable[bytes]) -> int:
        """The master says the peer at `addr` is being sent these chunks. Each one we still
        need and have not asked anyone for yet goes to that peer's queue instead of waiting for
        its turn at the master. Returns how many were rerouted (0 when not fetching)."""
        work = self._work
        if work is None or addr in work.banned or self.health.is_banned(addr):
            return 0
        rerouted = [
            chunk
            for chunk in hashes
            if chunk in work.pending
            and chunk not in work.asked
            and chunk not in work.routed
            and addr not in work.avoid.get(chunk, ())
        ]
        if not rerouted:
            return 0
        work.peer_queues.setdefault(addr, deque()).extend(rerouted)
        work.routed.update(dict.fromkeys(rerouted, addr))
        self._hinted.set()
        return len(rerouted)

    # -- scheduling -------------------------------------------------------------------------

    def _take_batch(self, queue: deque[bytes], work: _Work, *, master: bool) -> list[bytes]:
        batch: list[bytes] = []
        size = 0
        while queue and len(batch) < BATCH_CHUNKS and size < BATCH_BYTES:
            chunk = queue.popleft()
            if chunk not in work.pending or chunk in work.asked:
                continue
            if master and chunk in work.routed:
                continue  # a peer's queue has it; it comes back here if that peer fails
            batch.append(chunk)
            size += self.lengths.get(chunk, 0)
        return batch

    def _start_requests(self, work: _Work, tasks: dict[asyncio.Task, str]) -> None:
        while work.master_queue and work.active.get(self.MASTER, 0) < MASTER_PARALLEL:
            batch = self._take_batch(work.master_queue, work, master=True)
            if not batch:
                break
            self._launch(self._from_master(batch, work), self.MASTER, batch, work, tasks)
        for addr, queue in list(work.peer_queues.items()):
            if addr in work.banned or self.health.is_banned(addr):
                self._give_up_on(addr, [], work, ban=True)  # its queue goes to the master
                continue
            parallel = DEMOTED_PARALLEL if self.health.is_demoted(addr) else PEER_PARALLEL
            while queue and work.active.get(addr, 0) < parallel:
                batch = self._take_batch(queue, work, master=False)
                if not batch:
                    break
                self._launch(self._from_peer(addr, batch, work), addr, batch, work, tasks)

    @staticmethod
    def _launch(
        coro, source: str, batch: list[bytes], work: _Work, tasks: dict[asyncio.Task, str]
    ) -> None:
        work.active[source] = work.active.get(source, 0) + 1
        work.asked.update(batch)  # each request takes them out again once it is answered

        async def run() -> None:
            try:
                await coro
            finally:
                work.asked.difference_update(batch)  # (failed or cancelled before its answer)

        tasks[asyncio.ensure_future(run())] = source

    # -- one request each -------------------------------------------------------------------

    async def _from_master(self, batch: list[bytes], work: _Work) -> None:
        avoid = sorted({a for h in batch for a in work.avoid.get(h, ())} | work.banned)
        response = await self.source.ask_master(batch, avoid)
        work.asked.difference_update(batch)  # answered: from here on they may be queued again
        if response.missing:
            raise ManifestOutdated(f"the master no longer has {len(response.missing)} chunk(s)")
        await self._accept(response.chunks, batch, self.MASTER, work)
        for chunk, addr in response.elsewhere:
            if chunk not in work.pending:
                continue
            if addr in work.banned:  # a master ignoring `avoid`: never from a banned source
                work.avoid.setdefault(chunk, set()).add(addr)
                work.master_queue.append(chunk)
            elif chunk not in work.routed:  # (a hint may have queued it already)
                work.peer_queues.setdefault(addr, deque()).append(chunk)
                work.routed[chunk] = addr
        if response.stale:
            work.stale_rounds += 1
            if work.stale_rounds > MAX_STALE_ROUNDS:
                raise FetchFailed("the master keeps answering 'stale': its files keep changing")
            # The master rescans the changed file; ask again shortly.
            await asyncio.sleep(min(0.05 * work.stale_rounds, 1.0))
            work.master_queue.extend(response.stale)
        answered = {c for c, _ in response.chunks} | {c for c, _ in response.elsewhere}
        answered |= set(response.stale)
        unanswered = [c for c in batch if c not in answered and c in work.pending]
        work.master_queue.extend(unanswered)

    async def _from_peer(self, addr: str, batch: list[bytes], work: _Work) -> None:
        try:
            response = await self.source.ask_peer(addr, batch)
        except (TimeoutError, OSError, ConnectionError) as exc:
            work.asked.difference_update(batch)
            log.info("peer %s unavailable (%s); asking the master for its share", addr, exc)
            self._give_up_on(addr, batch, work, ban=True)
            return
        except Exception as exc:  # a protocol error from a misbehaving peer
            work.asked.difference_update(batch)
            log.warning("peer %s failed: %s; asking the master for its share", addr, exc)
            self.health.strike(addr, f"protocol error: {exc}"[:200])
            self._give_up_on(addr, batch, work, ban=True)
            return
        work.asked.difference_update(batch)
        await self._accept(response.chunks, batch, addr, work)
        got = {c for c, _ in response.chunks}
        # "Not yet": the peer is still fetching these. It answered with what it had instead of
        # holding the whole batch for its slowest chunk, so ask it again (bounded); an answer
        # with nothing in it came after the peer's own wait ran out: go to the master.
        asked = set(batch)
        again = []
        if got:
            for c in response.stale:
                if c in asked and c not in got and c in work.pending:
                    work.not_yet[c] = work.not_yet.get(c, 0) + 1
                    if work.not_yet[c] <= MAX_NOT_YET:
                        again.append(c)
        if again:
            work.peer_queues.setdefault(addr, deque()).extend(again)
        again_set = set(again)
        self._give_up_on(
            addr,
            [c for c in batch if c not in got and c not in again_set and c in work.pending],
            work,
        )

    def _give_up_on(self, addr: str, chunks: list[bytes], work: _Work, ban: bool = False) -> None:
        if ban:
            work.banned.add(addr)
            chunks = chunks + list(work.peer_queues.pop(addr, ()))
        for chunk in chunks:
            if work.routed.get(chunk) == addr:
                del work.routed[chunk]
            if chunk in work.pending:
                work.avoid.setdefault(chunk, set()).add(addr)
                work.master_queue.append(chunk)

    async def _accept(
        self,
        chunks: tuple[tuple[bytes, bytes], ...],
        asked: list[bytes],
        source: str,
        work: _Work,
    ):
        # Only chunks this request asked for, each once: a peer that repeats a chunk or pushes
        # one in flight elsewhere must not get it stored or counted twice.
        asked_set = set(asked)
        wanted_by_hash: dict[bytes, bytes] = {}
        for h, d in chunks:
            if h in asked_set and h in work.pending:
                wanted_by_hash.setdefault(h, d)
        wanted = list(wanted_by_hash.items())
        if not wanted:
            return
        bad = set(await self.sink(wanted, source))
        for chunk, data in wanted:
            if chunk in bad:
                self.stats.bad_chunks += 1
                log.warning("chunk %s from %s does not match its hash", chunk.hex()[:16], source)
                if source == self.MASTER:
                    # The master verifies before sending, so this is corruption in transit.
                    work.stale_rounds += 1
                    if work.stale_rounds > MAX_STALE_ROUNDS:
                        raise FetchFailed("chunks from the master keep failing verification")
                else:
                    work.bad[source] = work.bad.get(source, 0) + 1
                    self.health.strike(source, "served bytes that fail verification")
                    if work.bad[source] >= BAD_CHUNKS_BEFORE_BAN or self.health.is_banned(source):
                        self._give_up_on(source, [], work, ban=True)
                    work.avoid.setdefault(chunk, set()).add(source)
                    if work.routed.get(chunk) == source:
                        del work.routed[chunk]
                work.master_queue.append(chunk)
                continue
            work.pending.discard(chunk)
            self.stats.by_source[source] = self.stats.by_source.get(source, 0) + len(data)
            if source == self.MASTER:
                self.stats.from_master += 1
                self.stats.bytes_from_master += len(data)
            else:
                self.stats.from_peers += 1
                self.stats.bytes_from_peers += len(data)
