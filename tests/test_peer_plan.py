"""sift.peer.plan: what a sync must do to turn the local tree into the target manifest."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sift.core.chunk import DEFAULT_PARAMS
from sift.core.chunker import chunk_bytes
from sift.core.manifest import DirEntry, Entry, FileEntry, Manifest, SymlinkEntry
from sift.peer.plan import make_plan


def f(path: str, data: bytes = b"x", mode: int = 0o644, mtime_ns: int = 1_000) -> FileEntry:
    return FileEntry.build(path, len(data), mode, mtime_ns, chunk_bytes(data))


def d(path: str, mode: int = 0o755) -> DirEntry:
    return DirEntry(path, mode)


def ln(path: str, target: str) -> SymlinkEntry:
    return SymlinkEntry(path, target)


def manifest(*entries: Entry) -> Manifest:
    return Manifest.build(7, DEFAULT_PARAMS, entries)


def local(*entries: Entry) -> dict[str, Entry]:
    return {e.path: e for e in entries}


def paths(entries) -> list[str]:
    return [e.path for e in entries]


def test_identical_trees_give_an_empty_plan():
    entries = (d("a"), f("a/x", b"hello"), ln("a/l", "x"), f("top", b""))
    plan = make_plan(local(*entries), manifest(*entries))
    assert plan.is_empty
    assert plan.bytes_to_write == 0
    assert plan.target.version == 7


def test_empty_target_and_empty_local():
    assert make_plan({}, manifest()).is_empty


def test_new_files_dirs_and_links_from_nothing():
    target = manifest(d("a"), d("a/b"), f("a/b/x", b"12345"), f("y", b"abc"), ln("l", "y"))
    plan = make_plan({}, target)
    assert not plan.is_empty
    assert paths(plan.write) == ["a/b/x", "y"]
    assert paths(plan.make_dirs) == ["a", "a/b"]  # parents first
    assert paths(plan.links) == ["l"]
    assert plan.touch == plan.chmod_dirs == plan.delete == ()
    assert plan.bytes_to_write == 8


def test_content_change_is_a_write_metadata_change_a_touch():
    target = manifest(
        f("content", b"new"),
        f("size", b"same-ish!"),
        f("mode", b"m", mode=0o600),
        f("mtime", b"t", mtime_ns=5),
        f("same", b"s"),
    )
    here = local(
        f("content", b"old"),
        f("size", b"same-ish"),
        f("mode", b"m", mode=0o644),
        f("mtime", b"t", mtime_ns=4),
        f("same", b"s"),
    )
    plan = make_plan(here, target)
    assert paths(plan.write) == ["content", "size"]
    assert paths(plan.touch) == ["mode", "mtime"]
    assert plan.touch[0].mode == 0o600  # the target's entry, not the local one
    assert plan.delete == ()


def test_directory_mode_change_is_chmod_only():
    plan = make_plan(local(d("a", 0o700), d("b")), manifest(d("a", 0o750), d("b")))
    assert paths(plan.chmod_dirs) == ["a"]
    assert plan.chmod_dirs[0].mode == 0o750
    assert plan.make_dirs == plan.delete == ()


def test_symlink_retarget():
    plan = make_plan(local(ln("l", "a"), ln("k", "a")), manifest(ln("l", "b"), ln("k", "a")))
    assert paths(plan.links) == ["l"]
    assert plan.links[0].target == "b"
    assert plan.delete == ()


def test_removed_entries_are_deleted_deepest_first():
    here = local(
        d("a"),
        d("a/b"),
        f("a/b/c"),
        f("a/b.txt"),
        f("a/z"),
        d("a/b/d"),
        f("a/b/d/e"),
        f("keep"),
    )
    plan = make_plan(here, manifest(f("keep")))
    assert set(plan.delete) == set(here) - {"keep"}
    position = {p: i for i, p in enumerate(plan.delete)}
    for p in plan.delete:
        parent = p.rsplit("/", 1)[0] if "/" in p else None
        if parent is not None:
            assert position[p] < position[parent], (p, plan.delete)
    assert plan.write == plan.make_dirs == ()


def test_file_becomes_directory():
    here = local(f("x", b"was a file"))
    target = manifest(d("x"), f("x/inner", b"now a dir"))
    plan = make_plan(here, target)
    assert plan.delete == ("x",)
    assert paths(plan.make_dirs) == ["x"]
    assert paths(plan.write) == ["x/inner"]


def test_directory_becomes_file():
    here = local(d("x"), f("x/inner"), d("x/sub"), f("x/sub/deep"))
    plan = make_plan(here, manifest(f("x", b"now a file")))
    assert plan.delete == ("x/sub/deep", "x/sub", "x/inner", "x")
    assert paths(plan.write) == ["x"]
    assert plan.make_dirs == ()


def test_file_becomes_symlink_and_symlink_becomes_file():
    here = local(f("a", b"file"), ln("b", "a"))
    target = manifest(ln("a", "b"), f("b", b"file"))
    plan = make_plan(here, target)
    assert set(plan.delete) == {"a", "b"}
    assert paths(plan.links) == ["a"]
    assert paths(plan.write) == ["b"]  # same bytes as before, but it was a symlink
    assert plan.touch == ()


def test_symlink_becomes_directory_and_directory_becomes_symlink():
    here = local(ln("a", "t"), d("b"), d("t"))
    target = manifest(d("a"), ln("b", "t"), d("t"))
    plan = make_plan(here, target)
    assert set(plan.delete) == {"a", "b"}
    assert paths(plan.make_dirs) == ["a"]
    assert paths(plan.links) == ["b"]
    assert plan.chmod_dirs == ()


# -- property: applying the plan to the local mapping yields the target ----------------------------

_names = st.sampled_from(["a", "b", "c"])
_rel = st.lists(_names, min_size=1, max_size=3).map("/".join)


@st.composite
def _trees(draw) -> dict[str, Entry]:
    """A consistent tree: every ancestor of an entry is a directory entry."""
    out: dict[str, Entry] = {}
    for path in draw(st.lists(_rel, max_size=8)):
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in out and not isinstance(out[parent], DirEntry):
                break
            out[parent] = d(parent, draw(st.sampled_from([0o755, 0o700])))
        else:
            if path in out:
                continue
            kind = draw(st.sampled_from(["f", "d", "l"]))
            if kind == "f":
                data = draw(st.sampled_from([b"1", b"22", b""]))
                out[path] = f(path, data, draw(st.sampled_from([0o644, 0o600])))
            elif kind == "d":
                out[path] = d(path)
            else:
                out[path] = ln(path, draw(st.sampled_from(["x", "y"])))
    # Drop entries that ended up under a non-directory (a later path may have been a file).
    return {
        p: e
        for p, e in out.items()
        if all(
            isinstance(out.get("/".join(p.split("/")[:i])), DirEntry)
            for i in range(1, p.count("/") + 1)
        )
    }


@settings(max_examples=150, deadline=None)
@given(_trees(), _trees())
def test_plan_applied_to_local_gives_target(here, there):
    target = manifest(*there.values())
    plan = make_plan(here, target)
    state = dict(here)
    for p in plan.delete:
        # Deleting a directory before its contents would fail on disk.
        assert not any(q.startswith(p + "/") for q in state), (p, plan.delete)
        del state[p]
    for e in plan.make_dirs:
        assert e.path not in state
        state[e.path] = e
    for e in (*plan.write, *plan.links):
        # Replaced in place only over the same kind; anything else was deleted first.
        assert e.path not in state or type(state[e.path]) is type(e)
        state[e.path] = e
    for e in (*plan.chmod_dirs, *plan.touch):
        assert type(state[e.path]) is type(e)
        state[e.path] = e
    assert state == dict(target.entries)
    assert plan.is_empty == (here == dict(target.entries))


@pytest.mark.parametrize("n", [0, 3])
def test_bytes_to_write_sums_written_sizes(n):
    target = manifest(*(f(f"f{i}", b"z" * (i + 1)) for i in range(n)))
    assert make_plan({}, target).bytes_to_write == sum(range(1, n + 1))
