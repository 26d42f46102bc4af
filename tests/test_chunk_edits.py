"""Chunk lists sent as edits of the previous version (sift.core.chunk_edits)."""

from __future__ import annotations

import random
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sift.core.chunk import Chunk
from sift.core.chunk_edits import (
    ChunkEditError,
    apply_packed,
    checked_ops,
    edit_ops,
    worth_sending,
)


def chunk(i: int, length: int = 65536) -> Chunk:
    return Chunk(i.to_bytes(32, "big"), length)


def chunks(n: int, base: int = 0) -> list[Chunk]:
    return [chunk(base + i, 1000 + i) for i in range(n)]


def packed(cs: list[Chunk]) -> tuple[bytes, bytes]:
    return b"".join(c.hash for c in cs), array("I", [c.length for c in cs]).tobytes()


def rebuilt(old: list[Chunk], ops) -> tuple[bytes, bytes]:
    return apply_packed(*packed(old), checked_ops(list(ops), 1 << 30), max_chunks=10**6)


def test_one_changed_chunk_in_a_long_list_is_three_small_ops():
    old = chunks(16384)
    new = list(old)
    new[8000] = chunk(10**9)
    ops = edit_ops(old, new)
    assert ops == ((0, 8000), (chunk(10**9).hash, (65536,)), (8001, 16384 - 8001))
    assert rebuilt(old, ops) == packed(new)
    assert worth_sending(ops, len(new))


def test_an_insertion_shifts_the_tail_run():
    old = chunks(100)
    new = [*old[:40], chunk(500), chunk(501), *old[40:]]
    ops = edit_ops(old, new)
    assert ops[0] == (0, 40)
    assert ops[-1] == (40, 60)
    assert rebuilt(old, ops) == packed(new)


def test_unrelated_content_is_not_worth_sending_as_edits():
    old, new = chunks(50), chunks(50, base=1000)
    ops = edit_ops(old, new)
    assert rebuilt(old, ops) == packed(new)
    assert not worth_sending(ops, len(new))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 60), st.integers(0, 12))
def test_any_edit_round_trips(seed: int, n: int, edits: int):
    rng = random.Random(seed)
    old = [chunk(rng.randrange(40), rng.choice((10, 20))) for _ in range(n)]  # duplicates too
    new = list(old)
    for _ in range(edits):
        where = rng.randrange(len(new) + 1)
        kind = rng.randrange(3)
        if kind == 0:
            new.insert(where, chunk(rng.randrange(80), rng.choice((10, 20))))
        elif new and kind == 1:
            del new[min(where, len(new) - 1)]
        elif new:
            new[min(where, len(new) - 1)] = chunk(rng.randrange(80), 30)
    ops = edit_ops(old, new)
    if new:
        assert rebuilt(old, ops) == packed(new)
    else:
        assert ops == ()


@pytest.mark.parametrize(
    ("ops", "match"),
    [
        ("nope", "non-empty array"),
        ([], "non-empty array"),
        ([[0, 5, 1]], "must be a pair"),
        ([[-1, 2]], "not a run"),
        ([[0, 0]], "not a run"),
        ([[b"x" * 31, [5]]], "do not match"),
        ([[b"x" * 32, [0]]], "not in \\[1, 100\\]"),
        ([[b"x" * 32, [101]]], "not in \\[1, 100\\]"),
        ([[b"x" * 32, []]], "do not match"),
        ([["a", "b"]], "is \\[start, count\\]"),
    ],
)
def test_malformed_edits_are_refused(ops, match):
    with pytest.raises(ChunkEditError, match=match):
        checked_ops(ops, max_length=100)


def test_runs_must_fit_the_old_list_and_the_bound():
    old = packed(chunks(10))
    with pytest.raises(ChunkEditError, match="outside the old list of 10"):
        apply_packed(*old, ((8, 5),), max_chunks=100)
    with pytest.raises(ChunkEditError, match="more than 15"):
        apply_packed(*old, ((0, 10), (0, 10)), max_chunks=15)
