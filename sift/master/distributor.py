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
from collections.abc import Callable, Iterable, Sequence, Set
from dataclasses import dataclass, field


@dataclass
class _PeerRecord:
    addr: str
    held: set[bytes] = field(default_factory=set)
    # A peer that reported holding every chunk of a manifest shares that manifest's own hash
    # set here instead of keeping a copy: a complete peer costs no memory per chunk.
    whole: Set[bytes] | None = None

    def holds(self, chunk: bytes) -> bool:
        return chunk in self.held or (self.whole is not None and chunk in self.whole)

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
        # The current manifest's chunk set (the manifest's own set-like view, not a copy).
        self._live: Set[bytes] | None = None
        # chunk -> (peer id, deadline): the master sent it to that peer, who will hold it soon.
        self._fetching: dict[bytes, tuple[str, float]] = {}

    # -- membership and holdings ------------------------------------------------------------
    # Who holds a chunk is found by asking each peer's record (a few set lookups per chunk for
    # tens of peers) rather than kept in a chunk -> holders map, which cost ~300 bytes per chunk.

    def peer_joined(self, peer_id: str, addr: str) -> None:
        self.peer_left(peer_id)
        self._peers[peer_id] = _PeerRecord(addr=addr)

    def peer_left(self, peer_id: str) -> None:
        if self._peers.pop(peer_id, None) is None:
            return
        for chunk in [c for c, (pid, _) in self._fetching.items() if pid == peer_id]:
            del self._fetching[chunk]

    def update_holdings(
        self, peer_id: str, added: Iterable[bytes], removed: Iterable[bytes], *, full: bool = False
    ) -> None:
        record = self._peers.get(peer_id)
        if record is None:
            return
        if full:
            reported = added if isinstance(added, set | frozenset) else set(added)
            live = self._live
            if live and len(reported) >= len(live) and all(c in reported for c in live):
                record.whole, record.held = live, set()
            else:
                record.whole, record.held = None, set(reported)
            added = reported
        else:
            for chunk in removed:
                record.held.discard(chunk)
                if record.whole is not None and chunk in record.whole:
                    # Rare (a peer lost a chunk of a complete set): fall back to a real set.
                    record.held = set(record.whole) - {chunk} | record.held
                    record.whole = None
            record.held.update(added)
            live = self._live
            if (
                record.whole is None
                and live
                and len(record.held) >= len(live)
                and all(c in record.held for c in live)
            ):
                record.whole, record.held = live, set()  # now complete: share the live set
        for chunk in added:
            fetch = self._fetching.get(chunk)
            if fetch is not None and fetch[0] == peer_id:
                del self._fetching[chunk]

    def forget_chunks_not_in(self, live: Set[bytes]) -> None:
        """A new manifest: drop holdings of chunks no longer in it, so memory follows the
        dataset. Complete peers keep their (older) set until they report again."""
        self._live = live
        for record in self._peers.values():
            # Filter the peer's set by lookups in `live`: intersection_update would iterate
            # all of `live` (a compact index, not a set) to build a temporary set.
            record.held = {c for c in record.held if c in live}
        for chunk in [c for c in self._fetching if c not in live]:
            del self._fetching[chunk]

    def held_count(self, peer_id: str) -> int:
        record = self._peers.get(peer_id)
        if record is None:
            return 0
        if record.whole is None:
            return len(record.held)
        if record.whole is self._live:
            return len(record.whole) + len(record.held)
        live = self._live or ()
        count = sum(1 for c in live if record.holds(c))
        if live and count == len(live):
            # A complete peer that reported only what changed since an older version: from
            # now on it shares the current set (and is_complete() says so).
            record.whole, record.held = live, set()
        return count

    def is_complete(self, peer_id: str) -> bool:
        """The peer holds every chunk of the current manifest, as of its last report (the
        master counts each report with held_count)."""
        record = self._peers.get(peer_id)
        return record is not None and record.whole is not None and record.whole is self._live

    def holds(self, peer_id: str, chunk: bytes) -> bool:
        record = self._peers.get(peer_id)
        return record is not None and record.holds(chunk)

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
        for peer_id, record in self._peers.items():
            if peer_id == requester or record.addr in avoid or not record.holds(chunk):
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
