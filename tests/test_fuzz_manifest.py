"""Fuzzing manifests and deltas with hostile paths: whatever a master (or a lying one) sends,
either the whole document is refused with ManifestError, or every path it names, and every
symlink target, resolves inside `local_dir` and outside its reserved `.sift/`. This is the
property that keeps a peer from writing outside its tree, checked over generated input."""

from __future__ import annotations

import posixpath
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sift.core.chunk import HASH_SIZE, Chunk
from sift.core.manifest import (
    DELTA_TAG,
    FORMAT_VERSION,
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    MANIFEST_TAG,
    Manifest,
    ManifestError,
    SymlinkEntry,
    apply_delta,
    chunk_list_digest,
    decode_delta,
    decode_manifest,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROOT = "/srv/mirror"
PARAMS = [64, 256, 1024]

# Components an attacker would try, and a few harmless ones so that valid documents occur too.
COMPONENTS = st.sampled_from(["a", "b", "data"]) | st.sampled_from(
    [
        "..",
        ".",
        "",
        ".sift",
        ".SIFT",
        "...",
        "\uff0e\uff0e",  # fullwidth dots
        "\u2024\u2024",  # one-dot leaders
        "a\x00b",
        "a\\..\\b",
        " ",
        "~",
        "%2e%2e",
    ]
)
PATHS = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["", "", "", "/", "//", "./"]),
    st.lists(COMPONENTS, min_size=1, max_size=3),
)


def _file(path: str, size: int, lengths: list[int]) -> list[Any]:
    hashes = [bytes([i + 1]) * HASH_SIZE for i in range(len(lengths))]
    digest = chunk_list_digest(Chunk(h, n) for h, n in zip(hashes, lengths, strict=True))
    return [KIND_FILE, path, size, 0o644, 0, b"".join(hashes), lengths, digest]


ENTRIES = st.one_of(
    st.builds(lambda p: [KIND_DIR, p, 0o755], PATHS),
    st.builds(lambda p, t: [KIND_SYMLINK, p, t], PATHS, PATHS),
    st.builds(
        lambda p, lengths, fudge: _file(p, sum(lengths) + fudge, lengths),
        PATHS,
        st.lists(st.integers(min_value=1, max_value=1024), max_size=3),
        st.sampled_from([0, 0, 0, 1, -1, 2**60]),
    ),
)


# Entries must come sorted by path; half the time they do, so that valid documents get through
# often enough for the property to be exercised on them.
ENTRY_LISTS = st.lists(ENTRIES, max_size=6).flatmap(
    lambda es: st.sampled_from([es, sorted(es, key=lambda e: str(e[1]))])
)


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _inside(path: str, root_ok: bool = False) -> bool:
    full = posixpath.normpath(posixpath.join(ROOT, path))
    if root_ok and full == ROOT:
        return True  # a link to the top of the tree points inside it
    return full.startswith(ROOT + "/") and not (
        full == ROOT + "/.sift" or full.startswith(ROOT + "/.sift/")
    )


def _assert_contained(m: Manifest) -> None:
    for path, entry in m.entries.items():
        assert _inside(path), path
        assert posixpath.normpath(path) == path  # no '.', '..' or '//' left to reinterpret
        if isinstance(entry, SymlinkEntry):
            target = posixpath.join(posixpath.dirname(path), entry.target)
            assert _inside(target, root_ok=True), (path, entry.target)
            assert not posixpath.isabs(entry.target)
    # Nothing is placed under a file or a symlink (a write through a link could leave the tree).
    for path in m.entries:
        parent = posixpath.dirname(path)
        while parent:
            above = m.entries.get(parent)
            assert above is None or above.__class__.__name__ == "DirEntry", (path, parent)
            parent = posixpath.dirname(parent)


@FUZZ
@given(ENTRY_LISTS)
def test_a_decoded_manifest_never_points_outside_local_dir(entries: list) -> None:
    data = _pack([MANIFEST_TAG, FORMAT_VERSION, 1, PARAMS, entries])
    try:
        manifest = decode_manifest(data)
    except ManifestError:
        return
    _assert_contained(manifest)


BASE = decode_manifest(
    _pack(
        [
            MANIFEST_TAG,
            FORMAT_VERSION,
            1,
            PARAMS,
            [[KIND_DIR, "a", 0o755], _file("a/f", 10, [10]), [KIND_SYMLINK, "l", "a"]],
        ]
    )
)


@FUZZ
@given(
    upserts=ENTRY_LISTS,
    removed=st.lists(st.one_of(PATHS, st.sampled_from(["a", "a/f", "l"])), max_size=3),
)
def test_a_delta_applied_never_points_outside_local_dir(upserts: list, removed: list) -> None:
    data = _pack([DELTA_TAG, FORMAT_VERSION, 1, 2, PARAMS, upserts, removed])
    try:
        result = apply_delta(BASE, decode_delta(data))
    except ManifestError:
        return
    _assert_contained(result)
