"""sift.peer.fetch: the fetch scheduler against an in-memory master and fake peers."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from sift.core.chunk import hash_chunk
from sift.peer import fetch as fetch_mod
from sift.peer.fetch import (
    BAD_CHUNKS_BEFORE_BAN,
    MAX_STALE_ROUNDS,
    Fetcher,
    FetchFailed,
    ManifestOutdated,
    SourceHealth,
)
from sift.protocol.errors import ProtocolError
from sift.protocol.messages import ChunkResponse

_real_sleep = asyncio.sleep


def make_chunks(n: int, seed: int = 0) -> dict[bytes, bytes]:
    rng = random.Random(seed)
    out: dict[bytes, bytes] = {}
    for _ in range(n):
        data = rng.randbytes(rng.randint(1, 300))
        out[hash_chunk(data)] = data
    return out


class FakePeer:
    """mode: good | liar (wrong bytes) | dead (OSError) | broken (protocol error) | empty."""

    def __init__(self, data: dict[bytes, bytes], mode: str = "good", lie_first: int | None = None):
        self.data = data
        self.mode = mode
        self.lie_first = lie_first  # liar: lie only on this many chunks, then serve honestly
        self.calls: list[list[bytes]] = []
        self.lies = 0
        self.extra: list[tuple[bytes, bytes]] = []  # appended to every answer (hostile peers)
        self.duplicate = False

    async def serve(self, hashes: list[bytes]) -> ChunkResponse:
        self.calls.append(list(hashes))
        await _real_sleep(0)
        if self.mode == "dead":
            raise ConnectionRefusedError(111, "Connection refused")
        if self.mode == "broken":
            raise ProtocolError("garbage frame")
        chunks: list[tuple[bytes, bytes]] = []
        for h in hashes:
            if self.mode == "empty" or h not in self.data:
                continue
            data = self.data[h]
            if self.mode == "liar" and (self.lie_first is None or self.lies < self.lie_first):
                self.lies += 1
                data = b"not it" + data
            chunks.append((h, data))
            if self.duplicate:
                chunks.append((h, data))
        chunks.extend(self.extra)
        if self.mode == "trickle":  # still fetching: half now, the rest "not yet" (stale)
            keep = chunks[: max(1, len(chunks) // 2)] if len(self.calls) <= 3 else chunks
            later = tuple(h for h, _ in chunks if (h, self.data[h]) not in keep)
            return ChunkResponse(0, tuple(keep), (), later, ())
        if self.mode == "stuck":  # its own wait ran out: nothing, everything "not yet"
            return ChunkResponse(0, (), (), tuple(hashes), ())
        return ChunkResponse(0, tuple(chunks), (), (), ())


class FakeNet:
    """The master plus peers. The master redirects chunks listed in `redirect` to that peer
    unless the requester avoids it, answers `stale` while a chunk's stale budget lasts, `missing`
    for chunks it does not know, and can corrupt a chunk a number of times in transit."""

    def __init__(self, data: dict[bytes, bytes]):
        self.data = data
        self.redirect: dict[bytes, str] = {}
        self.peers: dict[str, FakePeer] = {}
        self.stale: Counter[bytes] = Counter()
        self.corrupt: Counter[bytes] = Counter()
        self.missing: set[bytes] = set()
        self.master_calls: list[tuple[list[bytes], list[str]]] = []
        self.redirected: dict[bytes, list[str]] = {}  # chunk -> peers it was sent to
        self.asked_after_redirect: list[tuple[bytes, list[str]]] = []

    async def ask_master(self, hashes: list[bytes], avoid: list[str]) -> ChunkResponse:
        self.master_calls.append((list(hashes), list(avoid)))
        await _real_sleep(0)
        chunks, missing, stale, elsewhere = [], [], [], []
        for h in hashes:
            if h in self.redirected:
                self.asked_after_redirect.append((h, list(avoid)))
            if h in self.missing or h not in self.data:
                missing.append(h)
            elif self.stale[h] > 0:
                self.stale[h] -= 1
                stale.append(h)
            elif h in self.redirect and self.redirect[h] not in avoid:
                elsewhere.append((h, self.redirect[h]))
                self.redirected.setdefault(h, []).append(self.redirect[h])
            elif self.corrupt[h] > 0:
                self.corrupt[h] -= 1
                chunks.append((h, b"flipped" + self.data[h]))
            else:
                chunks.append((h, self.data[h]))
        return ChunkResponse(0, tuple(chunks), tuple(missing), tuple(stale), tuple(elsewhere))

    async def ask_peer(self, addr: str, hashes: list[bytes]) -> ChunkResponse:
        return await self.peers[addr].serve(hashes)

    def add_peer(self, addr: str, chunks, mode: str = "good", **kw) -> FakePeer:
        peer = FakePeer({h: self.data[h] for h in chunks}, mode, **kw)
        self.peers[addr] = peer
        for h in chunks:
            self.redirect[h] = addr
        return peer


class Sink:
    """Verifies like the real sink and counts what it accepted, per chunk and per source."""

    def __init__(self):
        self.delivered: Counter[bytes] = Counter()
        self.sources: dict[bytes, list[str]] = {}
        self.rejected: list[tuple[bytes, str]] = []

    async def __call__(self, batch: list[tuple[bytes, bytes]], source: str) -> list[bytes]:
        await _real_sleep(0)
        bad = []
        for h, data in batch:
            if hash_chunk(data) == h:
                self.delivered[h] += 1
                self.sources.setdefault(h, []).append(source)
            else:
                bad.append(h)
                self.rejected.append((h, source))
        return bad


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Backoff sleeps are recorded, not slept (the real ones add up to seconds)."""
    recorded: list[float] = []

    async def fake_sleep(delay, result=None):
        recorded.append(delay)
        await _real_sleep(0)
        return result

    monkeypatch.setattr(fetch_mod.asyncio, "sleep", fake_sleep)
    return recorded


def fetcher_for(net: FakeNet, sink: Sink, seed: int = 1, lengths=None, health=None) -> Fetcher:
    lengths = lengths if lengths is not None else {h: len(d) for h, d in net.data.items()}
    return Fetcher(net, sink, lengths, rng=random.Random(seed), health=health)


def assert_exactly_once(sink: Sink, wanted) -> None:
    assert set(sink.delivered) == set(wanted)
    assert all(n == 1 for n in sink.delivered.values()), sink.delivered.most_common(3)


def assert_stats_add_up(stats, data: dict[bytes, bytes], sink: Sink) -> None:
    assert stats.from_master + stats.from_peers == len(data)
    assert stats.bytes_from_master + stats.bytes_from_peers == sum(map(len, data.values()))
    assert sum(stats.by_source.values()) == sum(map(len, data.values()))
    assert stats.bad_chunks == len(sink.rejected)
    per_source: Counter[str] = Counter()
    for h, (source,) in sink.sources.items():
        per_source[source] += len(data[h])
    assert dict(per_source) == stats.by_source
    assert stats.from_master == sum(1 for s in sink.sources.values() if s == ["master"])
    assert stats.bytes_from_master == per_source.get("master", 0)


# -- the plain paths -----------------------------------------------------------------------------


async def test_everything_from_the_master():
    data = make_chunks(300)
    net, sink = FakeNet(data), Sink()
    stats = await fetcher_for(net, sink).fetch(list(data))
    assert_exactly_once(sink, data)
    assert_stats_add_up(stats, data, sink)
    assert stats.from_master == 300
    assert stats.from_peers == 0
    assert set(stats.by_source) == {"master"}
    asked = [h for hashes, _ in net.master_calls for h in hashes]
    assert sorted(asked) == sorted(data)  # each asked once
    assert max(len(hashes) for hashes, _ in net.master_calls) <= fetch_mod.BATCH_CHUNKS
    assert all(avoid == [] for _, avoid in net.master_calls)


async def test_order_is_shuffled_and_duplicates_dropped():
    data = make_chunks(100)
    order = list(data)
    net, sink = FakeNet(data), Sink()
    await fetcher_for(net, sink, seed=7).fetch(order + order[:10])
    assert_exactly_once(sink, data)
    asked = [h for hashes, _ in net.master_calls for h in hashes]
    assert len(asked) == 100
    assert asked != order  # peers ask in random order so they take different shares first


async def test_batches_respect_the_byte_budget():
    data = make_chunks(20)
    net, sink = FakeNet(data), Sink()
    lengths = dict.fromkeys(data, 1024 * 1024)  # as if every chunk were 1 MiB
    await fetcher_for(net, sink, lengths=lengths).fetch(list(data))
    assert_exactly_once(sink, data)
    sizes = [len(hashes) for hashes, _ in net.master_calls]
    assert max(sizes) * 1024 * 1024 <= fetch_mod.BATCH_BYTES
    assert sum(sizes) == 20


async def test_nothing_to_fetch():
    net, sink = FakeNet({}), Sink()
    stats = await fetcher_for(net, sink).fetch([])
    assert net.master_calls == []
    assert stats.from_master == stats.from_peers == 0


async def test_redirects_go_to_the_named_peers():
    data = make_chunks(120)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    p1 = net.add_peer("p1:9000", hashes[:40])
    p2 = net.add_peer("p2:9000", hashes[40:70])
    stats = await fetcher_for(net, sink).fetch(hashes)
    assert_exactly_once(sink, data)
    assert_stats_add_up(stats, data, sink)
    assert stats.from_peers == 70
    assert stats.from_master == 50
    assert sorted(h for call in p1.calls for h in call) == sorted(hashes[:40])
    assert sorted(h for call in p2.calls for h in call) == sorted(hashes[40:70])
    assert stats.by_source["p1:9000"] == sum(len(data[h]) for h in hashes[:40])


async def test_peer_without_the_chunk_sends_it_back_to_the_master_with_avoid():
    data = make_chunks(30)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    peer = net.add_peer("p:1", hashes[:10])
    for h in hashes[:4]:
        del peer.data[h]  # the master thinks p holds these, but p does not (yet)
    stats = await fetcher_for(net, sink).fetch(hashes)
    assert_exactly_once(sink, data)
    assert_stats_add_up(stats, data, sink)
    assert stats.from_peers == 6
    assert {h for h, _ in net.asked_after_redirect} == set(hashes[:4])
    assert all("p:1" in avoid for _, avoid in net.asked_after_redirect)
    assert stats.bad_chunks == 0


# -- failing peers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dead", "broken"])
async def test_unreachable_peer_its_chunks_come_from_the_master(mode):
    data = make_chunks(60)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    bad = net.add_peer("gone:1", hashes[:25], mode=mode)
    good = net.add_peer("ok:1", hashes[25:40])
    stats = await fetcher_for(net, sink).fetch(hashes)
    assert_exactly_once(sink, data)
    assert_stats_add_up(stats, data, sink)
    assert bad.calls  # it was tried
    assert stats.from_peers == 15
    assert "gone:1" not in stats.by_source
    reasks = [(h, avoid) for h, avoid in net.asked_after_redirect if h in set(hashes[:25])]
    assert {h for h, _ in reasks} == set(hashes[:25])
    assert all("gone:1" in avoid for _, avoid in reasks)
    assert good.calls


async def test_lying_peer_is_banned_after_three_bad_chunks(monkeypatch):
    # One chunk per request and one request at a time, so the ban point is observable.
    monkeypatch.setattr(fetch_mod, "BATCH_CHUNKS", 1)
    monkeypatch.setattr(fetch_mod, "PEER_PARALLEL", 1)
    data = make_chunks(20)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    liar = net.add_peer("liar:1", hashes[:10], mode="liar")
    stats = await fetcher_for(net, sink).fetch(hashes)
    assert_exactly_once(sink, data)
    assert_stats_add_up(stats, data, sink)
    assert stats.bad_chunks == BAD_CHUNKS_BEFORE_BAN
    assert stats.from_peers == 0
    assert stats.from_master == 20
    assert all(source == "liar:1" for _, source in sink.rejected)
    # Every chunk the liar was named for came from the master, asked with the liar avoided.
    reasks = {h for h, avoid in net.asked_after_redirect if "liar:1" in avoid}
    assert reasks == set(net.redirected)
    assert len(liar.calls) == BAD_CHUNKS_BEFORE_BAN
    # Three calls only: once banned, the master is told to avoid it for every chunk (else it
    # would keep naming it for chunks not yet asked, and they would be queued for it).


async def test_peer_with_fewer_bad_chunks_is_not_banned(monkeypatch):
    monkeypatch.setattr(fetch_mod, "BATCH_CHUNKS", 1)
    monkeypatch.setattr(fetch_mod, "PEER_PARALLEL", 1)
    data = make_chunks(20)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    flaky = net.add_peer("flaky:1", hashes[:10], mode="liar", lie_first=BAD_CHUNKS_BEFORE_BAN - 1)
    stats = await fetcher_for(net, sink).fetch(hashes)
    assert_exactly_once(sink, data)
    assert_stats_add_up(stats, data, sink)
    assert stats.bad_chunks == BAD_CHUNKS_BEFORE_BAN - 1
    assert len(flaky.calls) == 10
    assert stats.from_peers == 10 - (BAD_CHUNKS_BEFORE_BAN - 1)


async def test_liar_in_big_batches_all_its_chunks_refetched():
    data = make_chunks(50)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    net.add_peer("liar:1", hashes[:20], mode="liar")
    net.add_peer("ok:1", hashes[20:30])
    stats = await fetcher_for(net, sink).fetch(hashes)
    assert_exactly_once(sink, data)
    assert_stats_add_up(stats, data, sink)
    assert stats.bad_chunks >= BAD_CHUNKS_BEFORE_BAN
    assert stats.from_peers == 10
    assert all(sink.sources[h] == ["master"] for h in hashes[:20])
    assert all("liar:1" in avoid for h, avoid in net.asked_after_redirect if h in hashes[:20])


async def test_hostile_peer_duplicates_and_unasked_chunks_are_not_double_counted():
    data = make_chunks(40)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    peer = net.add_peer("dup:1", hashes[:10])
    peer.duplicate = True
    # It also pushes chunks nobody asked it for (the master is sending those).
    peer.extra = [(h, data[h]) for h in hashes[30:]]
    stats = await fetcher_for(net, sink).fetch(hashes)
    assert_exactly_once(sink, data)
    assert_stats_add_up(stats, data, sink)


# -- the master's answers ----------------------------------------------------------------------


async def test_master_missing_means_manifest_outdated():
    data = make_chunks(30)
    net, sink = FakeNet(data), Sink()
    net.missing.add(next(iter(data)))
    with pytest.raises(ManifestOutdated):
        await fetcher_for(net, sink).fetch(list(data))


async def test_stale_answers_are_retried(sleeps):
    data = make_chunks(10)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    net.stale[hashes[0]] = 3
    net.stale[hashes[1]] = 1
    stats = await fetcher_for(net, sink).fetch(hashes)
    assert_exactly_once(sink, data)
    assert_stats_add_up(stats, data, sink)
    assert stats.from_master == 10
    assert len(sleeps) == 3  # one backoff per stale answer, growing
    assert sleeps == sorted(sleeps)
    assert sleeps[0] > 0


async def test_stale_forever_gives_up(sleeps):
    data = make_chunks(5)
    net, sink = FakeNet(data), Sink()
    net.stale.update(dict.fromkeys(data, 10_000))
    with pytest.raises(FetchFailed):
        await fetcher_for(net, sink).fetch(list(data))
    assert len(net.master_calls) == MAX_STALE_ROUNDS + 1
    assert len(sleeps) == MAX_STALE_ROUNDS
    assert max(sleeps) <= 1.0  # bounded backoff
    assert sink.delivered == Counter()


async def test_corrupt_bytes_from_the_master_are_asked_again(sleeps):
    data = make_chunks(10)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    net.corrupt[hashes[2]] = 2
    stats = await fetcher_for(net, sink).fetch(hashes)
    assert_exactly_once(sink, data)
    assert_stats_add_up(stats, data, sink)
    assert stats.bad_chunks == 2
    assert sink.rejected == [(hashes[2], "master")] * 2


async def test_corrupt_master_forever_gives_up(sleeps):
    data = make_chunks(3)
    net, sink = FakeNet(data), Sink()
    net.corrupt.update(dict.fromkeys(data, 10_000))
    with pytest.raises(FetchFailed):
        await fetcher_for(net, sink).fetch(list(data))


# -- everything at once, many seeds -------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
async def test_chaos_every_chunk_exactly_once(seed, sleeps):
    rng = random.Random(seed)
    data = make_chunks(rng.randint(20, 150), seed=seed)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    modes = ["good", "good", "liar", "dead", "broken", "empty"]
    for i in range(rng.randint(0, 5)):
        share = rng.sample(hashes, rng.randint(0, len(hashes) // 2))
        peer = net.add_peer(f"peer{i}:1", share, mode=rng.choice(modes))
        if rng.random() < 0.3:
            peer.duplicate = True
    # Few enough stale and corrupt answers to stay under the give-up limit.
    for h in rng.sample(hashes, 3):
        net.stale[h] = rng.randint(1, 2)
    for h in rng.sample(hashes, 2):
        net.corrupt[h] = 1
    stats = await fetcher_for(net, sink, seed=seed).fetch(hashes + rng.sample(hashes, 5))
    assert_exactly_once(sink, data)
    assert_stats_add_up(stats, data, sink)
    for peer_addr, peer in net.peers.items():
        if peer.mode in ("dead", "broken", "empty", "liar") and peer.lie_first is None:
            assert peer_addr not in stats.by_source


# -- source health across syncs: demote, ban, expire -------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_health_demotes_then_bans_then_expires():
    clock = FakeClock()
    bans = []
    health = SourceHealth(ban_seconds=60, clock=clock, on_ban=bans.append)
    assert health.strike("p:1", "bad bytes") is None
    assert health.is_demoted("p:1")
    assert not health.is_banned("p:1")
    for _ in range(BAD_CHUNKS_BEFORE_BAN - 2):
        assert health.strike("p:1", "bad bytes") is None
    ban = health.strike("p:1", "bad bytes")
    assert ban is not None
    assert bans == [ban]
    assert health.is_banned("p:1")
    assert health.banned() == ["p:1"]
    assert health.snapshot() == [
        {"addr": "p:1", "reason": "bad bytes", "until": clock.now + 60, "bad_chunks": 3}
    ]
    assert health.strike("p:1", "more") is None  # no double counting while banned
    clock.now += 59.9
    assert health.is_banned("p:1")
    clock.now += 0.2
    assert not health.is_banned("p:1")
    assert not health.is_demoted("p:1")  # a fresh start
    assert health.snapshot() == []


async def test_ban_outlives_the_sync_and_expires(monkeypatch):
    monkeypatch.setattr(fetch_mod, "BATCH_CHUNKS", 1)
    monkeypatch.setattr(fetch_mod, "PEER_PARALLEL", 1)
    clock = FakeClock()
    health = SourceHealth(ban_seconds=300, clock=clock)
    data = make_chunks(30)
    hashes = list(data)
    net = FakeNet(data)
    liar = net.add_peer("liar:1", hashes, mode="liar")
    first = hashes[:10]
    await fetcher_for(net, Sink(), health=health).fetch(first)
    assert health.banned() == ["liar:1"]
    assert len(liar.calls) == BAD_CHUNKS_BEFORE_BAN

    # The next sync never asks it, and tells the master to avoid it from the first request on.
    net.master_calls.clear()
    sink = Sink()
    await fetcher_for(net, sink, health=health).fetch(hashes[10:20])
    assert_exactly_once(sink, hashes[10:20])
    assert len(liar.calls) == BAD_CHUNKS_BEFORE_BAN
    assert all("liar:1" in avoid for _, avoid in net.master_calls)

    # After the ban it is tried again (and, still lying, banned again).
    clock.now += 301
    sink = Sink()
    await fetcher_for(net, sink, health=health).fetch(hashes[20:])
    assert_exactly_once(sink, hashes[20:])
    assert len(liar.calls) == 2 * BAD_CHUNKS_BEFORE_BAN
    assert health.banned() == ["liar:1"]


async def test_demoted_source_gets_one_request_at_a_time(monkeypatch):
    monkeypatch.setattr(fetch_mod, "BATCH_CHUNKS", 1)
    data = make_chunks(40)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    peer = net.add_peer("shaky:1", hashes, mode="liar", lie_first=1)
    health = SourceHealth()
    late = [0, 0]  # requests started after the demotion: in flight now, most at once
    real_serve = peer.serve

    async def counting_serve(batch):
        demoted = health.is_demoted("shaky:1")
        late[0] += demoted
        late[1] = max(late[1], late[0])
        try:
            await _real_sleep(0.002)
            return await real_serve(batch)
        finally:
            late[0] -= demoted

    peer.serve = counting_serve
    stats = await fetcher_for(net, sink, health=health).fetch(hashes)
    assert_exactly_once(sink, data)
    assert health.is_demoted("shaky:1")
    assert not health.is_banned("shaky:1")
    assert stats.from_peers == 39  # still used: demoted, not banned
    assert late[1] == 1


async def test_protocol_errors_count_against_a_source():
    data = make_chunks(10)
    hashes = list(data)
    net = FakeNet(data)
    net.add_peer("broken:1", hashes, mode="broken")
    health = SourceHealth()
    for _ in range(BAD_CHUNKS_BEFORE_BAN):
        await fetcher_for(net, Sink(), health=health).fetch(hashes)
    assert health.banned() == ["broken:1"]
    assert health.snapshot()[0]["reason"].startswith("protocol error: garbage frame")


async def test_master_naming_a_banned_source_is_not_followed():
    """Even if the master ignores `avoid` and names a banned peer, it is not asked."""
    data = make_chunks(10)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    liar = net.add_peer("liar:1", hashes, mode="liar")
    health = SourceHealth()
    for _ in range(BAD_CHUNKS_BEFORE_BAN):
        health.strike("liar:1", "earlier sync")
    real_ask = net.ask_master

    async def ignoring_avoid(batch, avoid):
        return await real_ask(batch, [])

    net.ask_master = ignoring_avoid
    with pytest.raises(TimeoutError):
        # The master keeps redirecting to the liar forever; we keep refusing it, never asking.
        await asyncio.wait_for(fetcher_for(net, sink, health=health).fetch(hashes), 0.3)
    assert liar.calls == []


# -- peers that are still fetching ---------------------------------------------------------------


async def test_not_yet_chunks_are_asked_again_from_the_same_peer():
    """A peer answers with what it has and "stale" for what it is still fetching; those are
    asked from it again, not from the master (which would send them a second time)."""
    data = make_chunks(80)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    peer = net.add_peer("p:1", hashes[:60], mode="trickle")
    stats = await fetcher_for(net, sink).fetch(hashes)
    assert_exactly_once(sink, data)
    assert_stats_add_up(stats, data, sink)
    assert stats.from_peers == 60
    assert stats.from_master == 20
    assert net.asked_after_redirect == []  # nothing went back to the master
    assert len(peer.calls) > 1


async def test_a_peer_that_never_delivers_not_yet_chunks_sends_them_to_the_master():
    data = make_chunks(40)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    net.add_peer("p:1", hashes[:10], mode="stuck")
    stats = await fetcher_for(net, sink).fetch(hashes)
    assert_exactly_once(sink, data)
    assert stats.from_master == 40
    assert {h for h, _ in net.asked_after_redirect} == set(hashes[:10])
    assert all("p:1" in avoid for _, avoid in net.asked_after_redirect)


async def test_not_yet_is_bounded(monkeypatch):
    """A peer that keeps trickling one chunk per answer cannot hold the rest forever."""
    monkeypatch.setattr(fetch_mod, "MAX_NOT_YET", 2)
    data = make_chunks(30)
    hashes = list(data)
    net, sink = FakeNet(data), Sink()
    peer = net.add_peer("p:1", hashes[:20])

    async def one_at_a_time(asked):
        peer.calls.append(list(asked))
        await _real_sleep(0)
        first = asked[0]
        return ChunkResponse(0, ((first, peer.data[first]),), (), tuple(asked[1:]), ())

    peer.serve = one_at_a_time
    stats = await fetcher_for(net, sink).fetch(hashes)
    assert_exactly_once(sink, data)
    assert_stats_add_up(stats, data, sink)
    assert stats.from_master > 10  # most of the trickled batch went to the master


# -- hints: the master says who it is sending which chunks to -----------------------------------


class GatedNet(FakeNet):
    """A master whose answers wait for `gate`: its link is busy with other peers' bytes."""

    def __init__(self, data: dict[bytes, bytes]):
        super().__init__(data)
        self.gate = asyncio.Event()

    async def ask_master(self, hashes: list[bytes], avoid: list[str]) -> ChunkResponse:
        self.master_calls.append((list(hashes), list(avoid)))
        await self.gate.wait()
        self.master_calls.pop()  # recorded again by the real answer
        return await super().ask_master(hashes, avoid)


async def _until(predicate, what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await _real_sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


def _big_lengths(data: dict[bytes, bytes]) -> dict[bytes, int]:
    return dict.fromkeys(data, 64 * 1024)  # 16 chunks a batch: most wait in the master queue


async def test_hinted_chunks_go_to_that_peer_while_the_master_is_busy():
    data = make_chunks(200)
    net, sink = GatedNet(data), Sink()
    peer = FakePeer(dict(data))
    net.peers["p1:1"] = peer
    fetcher = fetcher_for(net, sink, lengths=_big_lengths(data))
    task = asyncio.ensure_future(fetcher.fetch(list(data)))
    await _until(lambda: len(net.master_calls) == fetch_mod.MASTER_PARALLEL, "master requests")
    in_flight = {h for hashes, _ in net.master_calls for h in hashes}
    rerouted = fetcher.hint("p1:1", list(data))
    assert rerouted == len(data) - len(in_flight)  # not the ones already asked of the master
    # The hint alone gets them fetched: the master has not answered anything yet.
    await _until(lambda: len(sink.delivered) == rerouted, "hinted chunks from the peer")
    assert {h for call in peer.calls for h in call} == set(data) - in_flight
    net.gate.set()
    stats = await asyncio.wait_for(task, 10)
    assert_exactly_once(sink, data)
    assert_stats_add_up(stats, data, sink)
    assert stats.from_peers == rerouted
    assert {h for hashes, _ in net.master_calls for h in hashes} == in_flight
    assert fetcher.hint("p1:1", list(data)) == 0  # the fetch is over


async def test_a_hint_names_only_chunks_still_needed_and_not_a_banned_peer():
    data = make_chunks(120)
    hashes = list(data)
    net, sink = GatedNet(data), Sink()
    net.peers["p1:1"] = FakePeer(dict(data))
    health = SourceHealth()
    for _ in range(BAD_CHUNKS_BEFORE_BAN):
        health.strike("banned:1", "test")
    fetcher = fetcher_for(net, sink, lengths=_big_lengths(data), health=health)
    assert fetcher.hint("p1:1", hashes) == 0  # not fetching yet
    task = asyncio.ensure_future(fetcher.fetch(hashes[:100]))
    await _until(lambda: len(net.master_calls) == fetch_mod.MASTER_PARALLEL, "master requests")
    assert fetcher.hint("banned:1", hashes) == 0
    waiting = 100 - fetch_mod.MASTER_PARALLEL * 16  # not hashes[100:]: not needed
    first = fetcher.hint("p1:1", hashes[:80])
    assert 0 < first < waiting
    assert fetcher.hint("p1:1", hashes) == waiting - first  # only the ones not yet rerouted
    assert fetcher.hint("p1:1", hashes) == 0  # all in that peer's queue already
    net.gate.set()
    await asyncio.wait_for(task, 10)
    assert_exactly_once(sink, hashes[:100])


async def test_chunks_hinted_to_a_dead_peer_come_from_the_master_avoiding_it():
    data = make_chunks(100)
    net, sink = GatedNet(data), Sink()
    dead = FakePeer(dict(data), mode="dead")
    net.peers["dead:1"] = dead
    fetcher = fetcher_for(net, sink, lengths=_big_lengths(data))
    task = asyncio.ensure_future(fetcher.fetch(list(data)))
    await _until(lambda: len(net.master_calls) == fetch_mod.MASTER_PARALLEL, "master requests")
    rerouted = fetcher.hint("dead:1", list(data))
    assert rerouted > 0
    await _until(lambda: dead.calls, "a request to the dead peer")
    net.gate.set()
    stats = await asyncio.wait_for(task, 10)
    assert_exactly_once(sink, data)
    assert stats.from_master == len(data)
    tried = {h for call in dead.calls for h in call}
    assert all("dead:1" in avoid for hashes, avoid in net.master_calls if set(hashes) & tried)
