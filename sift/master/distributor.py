"""Who should send which chunk: the master's plan for sparing its own uplink.

Each chunk a peer asks the master for goes, in order of preference, to
  1. a connected peer that reported holding it (the least-busy one),
  2. a peer the master already sent it to recently (it is fetching it and will hold it soon),
  3. the master itself, which then records the requester as that chunk's fetcher.
Peers ask for their missing chunks in a random order, so when N peers need the same new data at
once each ends up fetching a roughly disjoint share from the master and the rest from each other:
every chunk leaves the master about once, whatever N is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class _PeerRecord:
    addr: str
    held: set[bytes] = field(default_factory=set)
    # Redirects handed out recently, to spread requests across holders; halves every few seconds.
    load: float = 0.0
    load_stamp: float = 0.0


@dataclass(frozen=True)
class Assignment:
    """The answer for one batch: chunks the master sends itself, and chunks to fetch elsewhere."""

    from_master: tuple[bytes, ...]
    elsewhere: tuple[tuple[bytes, str], ...]


class Distributor:
    """Tracks which peer holds or is fetching which chunk, and assigns sources for requests."""

    LOAD_HALF_LIFE = 5.0

    def __init__(self, fetch_ttl: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self._fetch_ttl = fetch_ttl
        self._clock = clock
        self._peers: dict[str, _PeerRecord] = {}
        self._holders: dict[bytes, set[str]] = {}
        # chunk -> (peer id, deadline): the master sent it to that peer, who will hold it soon.
        self._fetching: dict[bytes, tuple[str, float]] = {}

    # -- membership and holdings ------------------------------------------------------------

    def peer_joined(self, peer_id: str, addr: str) -> None:
        self.peer_left(peer_id)
        self._peers[peer_id] = _PeerRecord(addr=addr)

    def peer_left(self, peer_id: str) -> None:
        record = self._peers.pop(peer_id, None)
        if record is None:
            return
        for chunk in record.held:
            holders = self._holders.get(chunk)
            if holders is not None:
                holders.discard(peer_id)
                if not holders:
                    del self._holders[chunk]
        for chunk in [c for c, (pid, _) in self._fetching.items() if pid == peer_id]:
            del self._fetching[chunk]

    def update_holdings(
        self, peer_id: str, added: Iterable[bytes], removed: Iterable[bytes], *, full: bool = False
    ) -> None:
        record = self._peers.get(peer_id)
        if record is None:
            return
        if full:
            removed = set(record.held)
            added = set(added)
            removed -= added
            added -= record.held
        for chunk in removed:
            if chunk in record.held:
                record.held.discard(chunk)
                holders = self._holders.get(chunk)
                if holders is not None:
                    holders.discard(peer_id)
                    if not holders:
                        del self._holders[chunk]
        for chunk in added:
            if chunk not in record.held:
                record.held.add(chunk)
                self._holders.setdefault(chunk, set()).add(peer_id)
                fetch = self._fetching.get(chunk)
                if fetch is not None and fetch[0] == peer_id:
                    del self._fetching[chunk]

    def forget_chunks_not_in(self, live: set[bytes]) -> None:
        """Drop holdings of chunks no longer in the manifest, so memory follows the dataset."""
        for chunk in [c for c in self._holders if c not in live]:
            for peer_id in self._holders.pop(chunk):
                self._peers[peer_id].held.discard(chunk)
        for chunk in [c for c in self._fetching if c not in live]:
            del self._fetching[chunk]

    def held_count(self, peer_id: str) -> int:
        record = self._peers.get(peer_id)
        return len(record.held) if record else 0

    def holds(self, peer_id: str, chunk: bytes) -> bool:
        record = self._peers.get(peer_id)
        return record is not None and chunk in record.held

    # -- assignment -------------------------------------------------------------------------

    def assign(
        self, requester: str, chunks: Sequence[bytes], avoid: Iterable[str] = ()
    ) -> Assignment:
        """Choose a source for each chunk `requester` asks the master for.

        `avoid` lists peer addresses that already failed the requester for these chunks, so a
        dead or lying peer is not handed out again."""
        now = self._clock()
        avoid_addrs = set(avoid)
        from_master: list[bytes] = []
        elsewhere: list[tuple[bytes, str]] = []
        for chunk in chunks:
            source = self._best_holder(chunk, requester, avoid_addrs, now)
            if source is None:
                source = self._live_fetcher(chunk, requester, avoid_addrs, now)
            if source is None:
                from_master.append(chunk)
                self._fetching[chunk] = (requester, now + self._fetch_ttl)
            else:
                record = self._peers[source]
                self._add_load(record, now)
                elsewhere.append((chunk, record.addr))
        return Assignment(tuple(from_master), tuple(elsewhere))

    def _best_holder(self, chunk: bytes, requester: str, avoid: set[str], now: float) -> str | None:
        best: str | None = None
        best_load = 0.0
        for peer_id in self._holders.get(chunk, ()):
            record = self._peers[peer_id]
            if peer_id == requester or record.addr in avoid:
                continue
            load = self._current_load(record, now)
            if best is None or load < best_load:
                best, best_load = peer_id, load
        return best

    def _live_fetcher(
        self, chunk: bytes, requester: str, avoid: set[str], now: float
    ) -> str | None:
        fetch = self._fetching.get(chunk)
        if fetch is None:
            return None
        peer_id, deadline = fetch
        if deadline < now or peer_id not in self._peers:
            del self._fetching[chunk]
            return None
        if peer_id == requester or self._peers[peer_id].addr in avoid:
            return None
        return peer_id

    def _current_load(self, record: _PeerRecord, now: float) -> float:
        elapsed = now - record.load_stamp
        if elapsed > 0:
            record.load *= 0.5 ** (elapsed / self.LOAD_HALF_LIFE)
            record.load_stamp = now
        return record.load

    def _add_load(self, record: _PeerRecord, now: float) -> None:
        record.load = self._current_load(record, now) + 1.0
