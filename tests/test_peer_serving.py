"""How a peer answers for the chunks of a request it did not serve (sift.peer.daemon.unserved)."""

from __future__ import annotations

from sift.peer.daemon import unserved


def h(i: int) -> bytes:
    return bytes([i]) * 32


def test_each_unserved_chunk_is_not_yet_or_missing():
    wanted = [h(i) for i in range(6)]
    got = {h(0)}  # served
    read = {h(0), h(1)}  # locations read: h(1)'s read failed (its file changed, say)
    pending = {h(2)}  # the running sync is still fetching it
    held = {h(0), h(1), h(3)}  # h(3) arrived while the others were read
    later, missing = unserved(wanted, got, read, pending, held)
    assert later == (h(2), h(3))
    assert missing == (h(1), h(4), h(5))  # a failed read, and two never held


def test_a_chunk_that_arrived_during_the_read_is_asked_again_not_refetched():
    """Answered missing, the asker went to the master for it, which sent it a second time."""
    chunk = h(7)
    later, missing = unserved([chunk], got=set(), read=set(), pending=set(), held={chunk})
    assert (later, missing) == ((chunk,), ())
