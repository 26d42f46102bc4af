"""sift.master.distributor: who sends which chunk, so each chunk leaves the master about once."""

from __future__ import annotations

import random

import pytest

from sift.core.chunk import hash_chunk
from sift.master.distributor import Assignment, Distributor


def h(i: int) -> bytes:
    return hash_chunk(i.to_bytes(4, "big"))


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(*peers: str, ttl: float = 30.0) -> tuple[Distributor, Clock]:
    clock = Clock()
    d = Distributor(fetch_ttl=ttl, clock=clock)
    for p in peers:
        d.peer_joined(p, f"{p}-addr")
    return d, clock


# -- holdings -----------------------------------------------------------------------------------


def test_update_holdings_delta_and_full_replace():
    d, _ = make("a")
    d.update_holdings("a", [h(1), h(2), h(3)], [])
    assert d.held_count("a") == 3
    d.update_holdings("a", [h(4)], [h(1), h(99)])  # removing what was never held is a no-op
    assert d.held_count("a") == 3
    assert not d.holds("a", h(1))
    assert d.holds("a", h(4))
    d.update_holdings("a", [h(2), h(5)], [], full=True)
    assert d.held_count("a") == 2
    assert {c for c in map(h, range(10)) if d.holds("a", c)} == {h(2), h(5)}
    # The holder index follows: a chunk a no longer holds is no longer redirected to a.
    assert d.assign("b", [h(3)]) == Assignment((h(3),), ())
    assert d.assign("b", [h(5)]) == Assignment((), ((h(5), "a-addr"),))


def test_unknown_peer_holdings_are_ignored():
    d, _ = make()
    d.update_holdings("ghost", [h(1)], [])
    assert d.held_count("ghost") == 0
    assert not d.holds("ghost", h(1))
    assert d.assign("x", [h(1)]).from_master == (h(1),)


def test_rejoin_starts_with_empty_holdings():
    d, _ = make("a")
    d.update_holdings("a", [h(1)], [])
    d.peer_joined("a", "a-new-addr")
    assert d.held_count("a") == 0
    assert d.assign("b", [h(1)]).from_master == (h(1),)


# -- ranking ------------------------------------------------------------------------------------


def test_nobody_has_it_master_sends_it():
    d, _ = make("a", "b")
    a = d.assign("a", [h(1), h(2)])
    assert a.from_master == (h(1), h(2))
    assert a.elsewhere == ()


def test_holder_preferred_over_fetcher_and_master():
    d, _ = make("a", "b", "c")
    d.assign("a", [h(1)])  # a now fetches h1 from the master
    d.update_holdings("b", [h(1)], [])
    assert d.assign("c", [h(1)]).elsewhere == ((h(1), "b-addr"),)


def test_live_fetcher_gets_redirect_when_no_holder():
    d, _ = make("a", "b")
    assert d.assign("a", [h(1)]).from_master == (h(1),)
    assert d.assign("b", [h(1)]) == Assignment((), ((h(1), "a-addr"),))


def test_requester_is_never_sent_to_itself():
    d, _ = make("a", "b")
    d.update_holdings("a", [h(1)], [])
    # a holds h1 (say it lost it locally and asks again): the master sends it rather than loop.
    assert d.assign("a", [h(1)]).from_master == (h(1),)
    # a is the fetcher of h2 and asks again (its fetch failed): the master sends it again.
    d.assign("b", [h(2)])
    assert d.assign("b", [h(2)]).from_master == (h(2),)


def test_least_loaded_holder_wins():
    d, _ = make("a", "b", "c", "r")
    chunks = [h(i) for i in range(30)]
    for p in ("a", "b", "c"):
        d.update_holdings(p, chunks, [])
    result = d.assign("r", chunks)
    assert result.from_master == ()
    counts: dict[str, int] = {}
    for _, addr in result.elsewhere:
        counts[addr] = counts.get(addr, 0) + 1
    # Each redirect adds load to the chosen holder, so they take turns: an even split.
    assert counts == {"a-addr": 10, "b-addr": 10, "c-addr": 10}


def test_load_decays_with_the_clock():
    d, clock = make("a", "b", "r")
    d.update_holdings("a", [h(i) for i in range(4)], [])
    d.update_holdings("b", [h(100)], [])
    d.assign("r", [h(i) for i in range(4)])  # a is now busy (load 4), b idle
    d.update_holdings("b", [h(200)], [])
    d.update_holdings("a", [h(200)], [])
    assert d.assign("r", [h(200)]).elsewhere == ((h(200), "b-addr"),)  # b: load 0 < 4
    # Much later both loads have decayed to ~0; b then takes one more (its only holder) ...
    clock.now += 1000
    d.assign("r", [h(100)])
    # ... so a (load ~0) now beats b (load ~1).
    assert d.assign("r", [h(200)]).elsewhere == ((h(200), "a-addr"),)


def test_avoid_skips_holders_and_fetchers_by_address():
    d, _ = make("a", "b", "c")
    d.update_holdings("a", [h(1)], [])
    d.update_holdings("b", [h(1)], [])
    got = d.assign("c", [h(1)], avoid=["a-addr"])
    assert got.elsewhere == ((h(1), "b-addr"),)
    got = d.assign("c", [h(1)], avoid=["a-addr", "b-addr"])
    assert got.from_master == (h(1),)
    # c is now h1's fetcher; a requester avoiding c (and the holders) gets it from the master.
    d.peer_joined("e", "e-addr")
    assert d.assign("e", [h(1)], avoid=["a-addr", "b-addr"]).elsewhere == ((h(1), "c-addr"),)
    got = d.assign("e", [h(1)], avoid=["a-addr", "b-addr", "c-addr"])
    assert got.from_master == (h(1),)


def test_fetch_record_expires_after_ttl():
    d, clock = make("a", "b", ttl=10.0)
    d.assign("a", [h(1)])
    clock.now += 9.5
    assert d.assign("b", [h(1)]).elsewhere == ((h(1), "a-addr"),)
    clock.now += 1.0  # 10.5 s after a was sent it: a never reported holding it
    assert d.assign("b", [h(1)]).from_master == (h(1),)
    # b is the new fetcher: a third peer is pointed at b.
    d.peer_joined("c", "c-addr")
    assert d.assign("c", [h(1)]).elsewhere == ((h(1), "b-addr"),)


def test_reporting_the_chunk_turns_fetcher_into_holder():
    d, clock = make("a", "b", ttl=10.0)
    d.assign("a", [h(1)])
    d.update_holdings("a", [h(1)], [])
    clock.now += 100  # long past the fetch TTL: a is a holder now, not a fetcher
    assert d.assign("b", [h(1)]).elsewhere == ((h(1), "a-addr"),)


def test_peer_left_drops_holdings_and_fetches():
    d, _ = make("a", "b", "c")
    d.update_holdings("a", [h(1)], [])
    d.assign("a", [h(2)])  # a fetching h2
    d.peer_left("a")
    assert d.held_count("a") == 0
    got = d.assign("b", [h(1), h(2)])
    assert got.from_master == (h(1), h(2))
    assert got.elsewhere == ()
    d.peer_left("a")  # twice is harmless
    d.peer_left("never-joined")
    # b is now the fetcher of both: c goes to b.
    assert {addr for _, addr in d.assign("c", [h(1), h(2)]).elsewhere} == {"b-addr"}


def test_forget_chunks_not_in_live_set():
    d, _ = make("a", "b", "c")
    d.update_holdings("a", [h(1), h(2)], [])
    d.assign("b", [h(3), h(4)])  # b fetching h3, h4
    d.forget_chunks_not_in({h(2), h(4)})
    # Internal maps shrink with the dataset (the point of forgetting).
    assert d._peers["a"].held == {h(2)}
    assert set(d._fetching) == {h(4)}
    assert d.held_count("a") == 1
    assert d.holds("a", h(2))
    assert not d.holds("a", h(1))
    assert d.assign("c", [h(1)]).from_master == (h(1),)
    assert d.assign("c", [h(3)]).from_master == (h(3),)
    assert d.assign("c", [h(2)]).elsewhere == ((h(2), "a-addr"),)
    assert d.assign("c", [h(4)]).elsewhere == ((h(4), "b-addr"),)


# -- simulation: each chunk leaves the master exactly once, whatever N --------------------------


def simulate(n_peers: int, n_chunks: int, seed: int, batch: int) -> tuple[int, dict[str, int]]:
    """N peers all need the same chunks, each asking the master in its own random order, one batch
    per peer per round. Assignments are honoured: a from-master chunk is held by its requester
    once the round's batches complete; a redirect is served by the peer named (which holds the
    chunk or is fetching it), and the requester holds it afterwards too."""
    rng = random.Random(seed)
    clock = Clock()
    d = Distributor(fetch_ttl=30.0, clock=clock)
    chunks = [h(i) for i in range(n_chunks)]
    names = [f"p{i}" for i in range(n_peers)]
    by_addr = {f"{p}-addr": p for p in names}
    for p in names:
        d.peer_joined(p, f"{p}-addr")
    todo = {p: rng.sample(chunks, len(chunks)) for p in names}
    held: dict[str, set[bytes]] = {p: set() for p in names}
    assigned_from_master: dict[str, set[bytes]] = {p: set() for p in names}
    from_master: dict[str, int] = dict.fromkeys(names, 0)
    while any(todo.values()):
        arrivals: dict[str, list[bytes]] = {p: [] for p in names}
        order = names[:]
        rng.shuffle(order)
        for p in order:
            ask, todo[p] = todo[p][:batch], todo[p][batch:]
            if not ask:
                continue
            got = d.assign(p, ask)
            assert sorted(got.from_master + tuple(c for c, _ in got.elsewhere)) == sorted(ask)
            from_master[p] += len(got.from_master)
            assigned_from_master[p].update(got.from_master)
            for chunk, addr in got.elsewhere:
                source = by_addr[addr]
                assert source != p
                # Only a peer that holds the chunk or was sent it by the master is named.
                assert chunk in held[source] or chunk in assigned_from_master[source]
            arrivals[p] = ask
        # Batches complete; peers report what they now hold (some rounds report late).
        for p in names:
            held[p].update(arrivals[p])
            d.update_holdings(p, arrivals[p], [])
        clock.now += rng.uniform(0.0, 0.5)
    for p in names:
        assert held[p] == set(chunks)
        assert d.held_count(p) == n_chunks
    return sum(from_master.values()), from_master


@pytest.mark.parametrize("n_peers", [4, 5, 6, 7, 8])
def test_simulation_master_sends_each_chunk_once(n_peers):
    total, per_peer = simulate(n_peers, n_chunks=500, seed=n_peers, batch=32)
    assert total == 500
    # Random orders spread the master's share: every peer takes some, none takes most of it.
    assert all(n > 0 for n in per_peer.values())
    assert max(per_peer.values()) < 500 * 0.6


def test_simulation_with_tiny_batches_and_other_seeds():
    for seed in range(3):
        total, _ = simulate(6, n_chunks=500, seed=100 + seed, batch=1)
        assert total == 500


def test_a_complete_peer_shares_the_manifest_set():
    """A peer reporting every chunk of the current manifest costs no per-chunk memory: its
    record refers to the manifest's own set. It still answers holds() and counts right, and a
    new manifest leaves it holding what it really holds until it reports again."""
    d, _ = make("a", "b")
    live = {h(i) for i in range(50)}
    d.forget_chunks_not_in(live)
    d.update_holdings("a", [h(i) for i in range(50)], [], full=True)
    assert d._peers["a"].whole is live
    assert d._peers["a"].held == set()
    assert d.held_count("a") == 50
    assert d.holds("a", h(7))
    assert d.assign("b", [h(7)]).elsewhere == ((h(7), "a-addr"),)
    # A new version: half the old chunks plus new ones; a still holds only the old half.
    new_live = {h(i) for i in range(25, 75)}
    d.forget_chunks_not_in(new_live)
    assert d.held_count("a") == 25
    assert not d.holds("a", h(60))
    assert d.assign("b", [h(60)]).from_master == (h(60),)
    # A partial report replaces the shared set with a real one.
    d.update_holdings("a", [h(i) for i in range(25, 40)], [], full=True)
    assert d._peers["a"].whole is None
    assert d.held_count("a") == 15
    # Losing a chunk of a complete set is recorded too.
    d.update_holdings("a", list(new_live), [], full=True)
    assert d._peers["a"].whole is new_live
    d.update_holdings("a", [], [h(30)])
    assert not d.holds("a", h(30))
    assert d.held_count("a") == 49


def test_a_peer_completed_by_incremental_reports_shares_the_manifest_set():
    d, _ = make("a")
    live = {h(i) for i in range(20)}
    d.forget_chunks_not_in(live)
    d.update_holdings("a", [h(i) for i in range(10)], [], full=True)
    assert d._peers["a"].whole is None
    d.update_holdings("a", [h(i) for i in range(10, 20)], [])
    assert d._peers["a"].whole is live
    assert d.held_count("a") == 20
    assert d.holds("a", h(15))


def test_is_complete_follows_the_current_manifest():
    """The master sends hints only to peers that are not complete."""
    d, _ = make("a")
    assert not d.is_complete("nobody")
    live = {h(i) for i in range(10)}
    d.forget_chunks_not_in(live)
    assert not d.is_complete("a")
    d.update_holdings("a", list(live), [], full=True)
    assert d.is_complete("a")
    d.forget_chunks_not_in({h(i) for i in range(5, 15)})  # a new version it lacks half of
    assert not d.is_complete("a")
    d.update_holdings("a", [h(i) for i in range(10, 15)], [])
    assert d.held_count("a") == 10  # (the master counts after every report)
    assert d.is_complete("a")
    assert d._peers["a"].held == set()  # the current set, shared
    d.update_holdings("a", [], [h(7)])
    assert not d.is_complete("a")
