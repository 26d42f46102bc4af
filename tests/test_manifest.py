"""Manifest model, diff, delta and the validating msgpack encoding."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sift.core.chunk import DEFAULT_PARAMS, HASH_SIZE, Chunk, ChunkParams, hash_chunk
from sift.core.manifest import (
    DELTA_TAG,
    FORMAT_VERSION,
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    MANIFEST_TAG,
    MAX_FILE_SIZE,
    MTIME_RANGE,
    ChunkLocation,
    DirEntry,
    FileEdit,
    FileEntry,
    Manifest,
    ManifestDelta,
    ManifestDiff,
    ManifestError,
    SymlinkEntry,
    apply_delta,
    chunk_list_digest,
    decode_delta,
    decode_manifest,
    diff,
    encode_delta,
    encode_manifest,
    make_delta,
    needed_chunks,
    validate_manifest,
)

SMALL = ChunkParams(64, 256, 1024)
H = [hash_chunk(bytes([i])) for i in range(8)]


def fe(path: str, *lengths: int, hashes: list[bytes] | None = None, mtime: int = 0) -> FileEntry:
    """A file entry with the given chunk lengths (hashes default to H[0], H[1], ...)."""
    hs = hashes if hashes is not None else H[: len(lengths)]
    chunks = [Chunk(h, n) for h, n in zip(hs, lengths, strict=True)]
    return FileEntry.build(path, sum(lengths), 0o644, mtime, chunks)


# --------------------------------------------------------------------------- strategies

NAMES = st.sampled_from(
    ["a", "b", "c", "données", "日本", "...", "a..b", ".hidden", "x y", ".sift"]
)
HASHES = st.one_of(st.sampled_from(H), st.binary(min_size=HASH_SIZE, max_size=HASH_SIZE))
PARAMS = st.sampled_from([SMALL, DEFAULT_PARAMS])


@st.composite
def entries_for(draw: st.DrawFn, params: ChunkParams) -> list[Any]:
    """A valid entry set: nothing under a file or symlink, symlinks pointing inside."""
    tuples = draw(st.sets(st.lists(NAMES, min_size=1, max_size=3).map(tuple), max_size=10))
    tuples = {t for t in tuples if t[0] != ".sift"}
    ancestors = {t[:i] for t in tuples for i in range(1, len(t))}
    out: list[Any] = []
    for t in sorted(tuples):
        path = "/".join(t)
        kind = "dir" if t in ancestors else draw(st.sampled_from(["file", "dir", "symlink"]))
        if kind == "dir":
            out.append(DirEntry(path, draw(st.integers(0, 0o7777))))
        elif kind == "symlink":
            ups = draw(st.integers(0, len(t) - 1))
            rest = draw(st.lists(NAMES.filter(lambda n: n != ".sift"), max_size=2))
            out.append(SymlinkEntry(path, "/".join([".."] * ups + rest) or "."))
        else:
            chunks = draw(
                st.lists(st.builds(Chunk, HASHES, st.integers(1, params.max_size)), max_size=4)
            )
            out.append(
                FileEntry.build(
                    path,
                    sum(c.length for c in chunks),
                    draw(st.integers(0, 0o7777)),
                    draw(st.integers(-(2**63), 2**63 - 1)),
                    chunks,
                )
            )
    return out


@st.composite
def manifests(draw: st.DrawFn, params: ChunkParams | None = None, min_version: int = 0) -> Manifest:
    p = params if params is not None else draw(PARAMS)
    version = draw(st.integers(min_version, min_version + 2**62))
    return Manifest.build(version, p, draw(entries_for(p)))


@st.composite
def manifest_pairs(draw: st.DrawFn) -> tuple[Manifest, Manifest]:
    """(old, new) with equal params and new.version > old.version; new is either independent
    (lots of adds/removes/kind changes) or old with some files touched (lots of changes)."""
    old = draw(manifests())
    if draw(st.booleans()):
        new = draw(manifests(params=old.params, min_version=old.version + 1))
    else:
        touched = []
        for e in old.entries.values():
            if isinstance(e, FileEntry) and draw(st.booleans()):
                mtime = e.mtime_ns + 1 if e.mtime_ns < MTIME_RANGE[1] else e.mtime_ns - 1
                touched.append(FileEntry.build(e.path, e.size, e.mode, mtime, e.chunks))
            else:
                touched.append(e)
        new = Manifest.build(old.version + draw(st.integers(1, 5)), old.params, touched)
    return old, new


# --------------------------------------------------------------------------- model


def test_file_entry_build() -> None:
    chunks = [Chunk(H[0], 10), Chunk(H[1], 5)]
    e = FileEntry.build("f", 15, 0o100755, 7, chunks)
    assert e.mode == 0o755  # file-type bits dropped
    assert e.chunks == tuple(chunks)
    assert e.digest == chunk_list_digest(chunks)
    assert len(e.digest) == HASH_SIZE
    with pytest.raises(AttributeError):
        e.size = 3  # type: ignore[misc]


def test_chunk_list_digest_depends_on_order_and_lengths() -> None:
    a = chunk_list_digest([Chunk(H[0], 1), Chunk(H[1], 2)])
    assert a != chunk_list_digest([Chunk(H[1], 2), Chunk(H[0], 1)])
    assert a != chunk_list_digest([Chunk(H[0], 2), Chunk(H[1], 1)])
    assert chunk_list_digest([]) != chunk_list_digest([Chunk(H[0], 1)])


def test_manifest_build_sorts_and_counts() -> None:
    m = Manifest.build(
        3,
        SMALL,
        [fe("b/y", 10, 20), DirEntry("b", 0o755), fe("a", 5), SymlinkEntry("c", "a")],
    )
    assert list(m.entries) == ["a", "b", "b/y", "c"]
    assert [f.path for f in m.files()] == ["a", "b/y"]
    assert (m.file_count, m.total_bytes, m.chunk_count) == (2, 35, 3)
    assert m.chunk_hashes() == {H[0], H[1]}
    with pytest.raises(TypeError):
        m.entries["z"] = DirEntry("z", 0)  # type: ignore[index]


def test_manifest_normalizes_plain_mapping() -> None:
    m = Manifest(1, SMALL, {"b": DirEntry("b", 0), "a": DirEntry("a", 0)})
    assert list(m.entries) == ["a", "b"]
    assert m == Manifest.build(1, SMALL, [DirEntry("a", 0), DirEntry("b", 0)])
    with pytest.raises(ManifestError, match="does not match"):
        Manifest(1, SMALL, {"a": DirEntry("b", 0)})


def test_manifest_build_rejects_duplicates() -> None:
    with pytest.raises(ManifestError, match="duplicate"):
        Manifest.build(1, SMALL, [DirEntry("a", 0), fe("a", 1)])


def test_chunk_locations_first_occurrence_with_offsets() -> None:
    m = Manifest.build(
        1,
        SMALL,
        [
            fe("b", 10, 20, 30, hashes=[H[0], H[1], H[2]]),
            fe("a", 7, 10, hashes=[H[3], H[0]]),
            fe("c", 20, 5, hashes=[H[1], H[4]]),
        ],
    )
    locs = m.chunk_locations()
    assert locs == {
        H[3]: ChunkLocation("a", 0, 7),
        H[0]: ChunkLocation("a", 7, 10),  # "a" sorts before "b"
        H[1]: ChunkLocation("b", 10, 20),
        H[2]: ChunkLocation("b", 30, 30),
        H[4]: ChunkLocation("c", 20, 5),
    }
    assert m.chunk_locations() is locs  # computed once


# --------------------------------------------------------------------------- diff, needed


def test_diff_cases() -> None:
    old = Manifest.build(
        1,
        SMALL,
        [fe("same", 1), fe("edit", 1), fe("gone", 1), fe("kind", 1), DirEntry("d", 0o755)],
    )
    new = Manifest.build(
        2,
        SMALL,
        [
            fe("same", 1),
            fe("edit", 1, mtime=5),
            DirEntry("kind", 0o755),  # file -> dir
            DirEntry("d", 0o700),  # mode change
            SymlinkEntry("new", "same"),
        ],
    )
    d = diff(old, new)
    assert d == ManifestDiff(added=("new",), changed=("d", "edit", "kind"), removed=("gone",))
    assert d
    assert not diff(new, new)
    assert diff(None, new) == ManifestDiff(tuple(new.entries), (), ())


@given(manifest_pairs())
def test_diff_matches_set_algebra(pair: tuple[Manifest, Manifest]) -> None:
    old, new = pair
    d = diff(old, new)
    o, n = set(old.entries), set(new.entries)
    assert d.added == tuple(sorted(n - o))
    assert d.removed == tuple(sorted(o - n))
    assert d.changed == tuple(sorted(p for p in o & n if old.entries[p] != new.entries[p]))


def test_needed_chunks() -> None:
    m = Manifest.build(
        1,
        SMALL,
        [
            fe("a", 1, 1, 1, hashes=[H[2], H[1], H[2]]),
            fe("b", 1, 1, hashes=[H[3], H[1]]),
            fe("c", 1, hashes=[H[4]]),
            DirEntry("d", 0),
        ],
    )
    assert needed_chunks(m, set()) == [H[2], H[1], H[3], H[4]]
    assert needed_chunks(m, {H[1], H[4]}) == [H[2], H[3]]
    assert needed_chunks(m, {H[1], H[2], H[3], H[4]}) == []
    # Restricted to some paths; unknown (e.g. removed) paths and dirs contribute nothing.
    assert needed_chunks(m, {H[1]}, paths=["c", "b", "removed", "d"]) == [H[3], H[4]]
    assert needed_chunks(m, set(), paths=[]) == []


# --------------------------------------------------------------------------- round trips


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_manifest_round_trip(m: Manifest) -> None:
    data = encode_manifest(m)
    back = decode_manifest(data)
    assert back == m
    assert list(back.entries) == list(m.entries)
    assert encode_manifest(back) == data  # canonical


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(manifest_pairs())
def test_delta_round_trip(pair: tuple[Manifest, Manifest]) -> None:
    old, new = pair
    delta = make_delta(old, new)
    wire = decode_delta(encode_delta(delta))
    assert wire == delta
    assert apply_delta(old, wire) == new
    d = diff(old, new)
    assert [e.path for e in delta.upserts] == sorted(d.added + d.changed)
    assert delta.removed == d.removed


def test_delta_size_scales_with_change() -> None:
    files = [fe(f"f{i:04d}", 100, 100) for i in range(1000)]
    old = Manifest.build(1, SMALL, files)
    new = Manifest.build(2, SMALL, [*files[:-1], fe("f0999", 100, 100, mtime=1), fe("z", 3)])
    delta = make_delta(old, new)
    assert [e.path for e in delta.upserts] == ["f0999", "z"]
    assert len(encode_delta(delta)) < 400 < len(encode_manifest(new)) // 100


def test_make_delta_refuses() -> None:
    old = Manifest.build(2, SMALL, [])
    with pytest.raises(ManifestError, match="chunk parameters"):
        make_delta(old, Manifest.build(3, DEFAULT_PARAMS, []))
    with pytest.raises(ManifestError, match="forward"):
        make_delta(old, Manifest.build(2, SMALL, []))


def test_apply_delta_refuses() -> None:
    base = Manifest.build(5, SMALL, [fe("f", 1), DirEntry("d", 0), fe("d/x", 1)])
    with pytest.raises(ManifestError, match="version 4, not 5"):
        apply_delta(base, ManifestDelta(4, 6, SMALL, (), ()))
    with pytest.raises(ManifestError, match="parameters"):
        apply_delta(base, ManifestDelta(5, 6, DEFAULT_PARAMS, (), ()))
    with pytest.raises(ManifestError, match="removes 'nope'"):
        apply_delta(base, ManifestDelta(5, 6, SMALL, (), ("nope",)))
    with pytest.raises(ManifestError, match="under 'f'"):
        apply_delta(base, ManifestDelta(5, 6, SMALL, (fe("f/y", 1),), ()))
    with pytest.raises(ManifestError, match="under 'd'"):  # dir d replaced by a file, d/x kept
        apply_delta(base, ManifestDelta(5, 6, SMALL, (fe("d", 1),), ()))
    with pytest.raises(ManifestError, match="twice"):
        apply_delta(base, ManifestDelta(5, 6, SMALL, (fe("g", 1), fe("g", 2)), ()))
    # ...but replacing the dir together with its children is fine.
    after = apply_delta(base, ManifestDelta(5, 6, SMALL, (fe("d", 1),), ("d/x",)))
    assert list(after.entries) == ["d", "f"]
    assert after.version == 6


def test_encode_refuses_invalid_manifest() -> None:
    bad = FileEntry.build("f", 2, 0o644, 0, [Chunk(H[0], 1)])
    with pytest.raises(ManifestError, match="sum to 1 but size is 2"):
        encode_manifest(Manifest.build(1, SMALL, [bad]))
    with pytest.raises(ManifestError, match="unsafe path"):
        encode_manifest(Manifest.build(1, SMALL, [DirEntry("../x", 0)]))
    with pytest.raises(ManifestError, match="not a directory"):
        validate_manifest(Manifest.build(1, SMALL, [fe("a", 1), DirEntry("a/b", 0)]))
    with pytest.raises(ManifestError, match="both removes and upserts"):
        encode_delta(ManifestDelta(1, 2, SMALL, (fe("a", 1),), ("a",)))


# --------------------------------------------------------------------------- size


def test_encoded_size_per_chunk_ref() -> None:
    """1,000 files x 10 chunks with default parameters stays under 45 bytes per chunk ref:
    32-byte hash + 3-5 byte length, plus per-file path, size, mode, mtime and digest."""
    rng = random.Random(0)
    entries: list[Any] = [DirEntry(f"run{d:02d}", 0o755) for d in range(10)]
    for i in range(1000):
        # Chunk lengths spread around the 64 KiB average, within [min, max] like FastCDC's.
        lengths = [
            rng.randint(DEFAULT_PARAMS.min_size, 2 * DEFAULT_PARAMS.avg_size) for _ in range(10)
        ]
        chunks = [Chunk(rng.randbytes(HASH_SIZE), n) for n in lengths]
        entries.append(
            FileEntry.build(
                f"run{i // 100:02d}/sample_{i:05d}.h5",
                sum(lengths),
                0o644,
                1_700_000_000_000_000_000 + rng.randrange(10**15),
                chunks,
            )
        )
    m = Manifest.build(1, DEFAULT_PARAMS, entries)
    data = encode_manifest(m)
    assert m.chunk_count == 10_000
    assert len(data) / m.chunk_count < 45
    assert decode_manifest(data) == m


# --------------------------------------------------------------------------- decode refusals


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def raw_file(
    path: Any = "f",
    lengths: Any = (10, 20),
    *,
    size: Any = None,
    mode: Any = 0o644,
    mtime: Any = 0,
    hashes: Any = None,
    digest: Any = None,
) -> list[Any]:
    """A wire file entry, valid unless a field is overridden."""
    lengths = list(lengths)
    hs = H[: len(lengths)]
    if hashes is None:
        hashes = b"".join(hs)
    if digest is None:
        digest = chunk_list_digest(Chunk(h, n) for h, n in zip(hs, lengths, strict=False))
    if size is None:
        size = sum(lengths)
    return [KIND_FILE, path, size, mode, mtime, hashes, lengths, digest]


def raw_manifest(entries: Any, *, version: Any = 1, params: Any = (64, 256, 1024)) -> list[Any]:
    return [MANIFEST_TAG, FORMAT_VERSION, version, list(params), entries]


def test_raw_helpers_are_valid() -> None:
    m = decode_manifest(
        pack(
            raw_manifest(
                [
                    [KIND_DIR, "d", 0o755],
                    raw_file("d/f", mtime=-5),  # negative mtime is fine (pre-1970)
                    raw_file("e", [], size=0),  # empty file
                    [KIND_SYMLINK, "l", "d/f"],
                ]
            )
        )
    )
    assert m.file_count == 2
    assert m.entries["d/f"] == fe("d/f", 10, 20, mtime=-5)


VALID = pack(raw_manifest([raw_file()]))

BAD_DOCUMENTS: list[tuple[str, bytes, str]] = [
    ("empty input", b"", "not valid msgpack"),
    ("reserved byte", b"\xc1", "not valid msgpack"),
    ("truncated", VALID[:-1], "not valid msgpack"),
    ("trailing garbage", VALID + b"\x00", "trailing bytes"),
    ("two documents", VALID + VALID, "trailing bytes"),
    ("top-level map", pack({"a": 1}), "manifest"),
    ("top-level str", pack("sift-manifest"), "must be an array"),
    ("top-level int", pack(1), "must be an array"),
    ("empty array", pack([]), "not a manifest"),
    ("wrong tag", pack(["sift-delta", 1, 1, [64, 256, 1024], []]), "not a manifest"),
    ("tag as bytes", pack([b"sift-manifest", 1, 1, [64, 256, 1024], []]), "not a manifest"),
    ("future format", pack([MANIFEST_TAG, 2, 1, [64, 256, 1024], []]), "unsupported"),
    ("format as bool", pack([MANIFEST_TAG, True, 1, [64, 256, 1024], []]), "unsupported"),
    ("extra item", pack([*raw_manifest([]), 0]), "5 top-level items"),
    ("missing item", pack(raw_manifest([])[:4]), "5 top-level items"),
    ("negative version", pack(raw_manifest([], version=-1)), "version"),
    ("bool version", pack(raw_manifest([], version=True)), "version"),
    ("str version", pack(raw_manifest([], version="1")), "version"),
    ("float version", pack(raw_manifest([], version=1.0)), "version"),
    ("params not array", pack([MANIFEST_TAG, 1, 1, 64, []]), "chunk params"),
    ("params short", pack(raw_manifest([], params=(64, 256))), "3 items"),
    ("params bool", pack(raw_manifest([], params=(64, 256, True))), "three integers"),
    ("params float", pack(raw_manifest([], params=(64.0, 256, 1024))), "three integers"),
    ("params unordered", pack(raw_manifest([], params=(1024, 256, 64))), "invalid chunk params"),
    ("params too small", pack(raw_manifest([], params=(1, 2, 3))), "invalid chunk params"),
    ("entries not array", pack([MANIFEST_TAG, 1, 1, [64, 256, 1024], "x"]), "must be an array"),
    ("ext type", pack(raw_manifest([msgpack.ExtType(1, b"x")])), "msgpack"),
]


def entry_case(name: str, entries: list[Any], match: str, **kw: Any) -> tuple[str, bytes, str]:
    return (name, pack(raw_manifest(entries, **kw)), match)


BAD_ENTRIES: list[tuple[str, bytes, str]] = [
    entry_case("entry not array", ["f"], "non-empty array"),
    entry_case("empty entry", [[]], "non-empty array"),
    entry_case("unknown kind", [[7, "f", 0]], "unknown kind 7"),
    entry_case("kind as bool", [[True, "d", 0]], "unknown kind True"),
    entry_case("dir with extra item", [[KIND_DIR, "d", 0, 0]], "3 items"),
    entry_case("symlink missing target", [[KIND_SYMLINK, "l"]], "3 items"),
    entry_case("file missing digest", [raw_file()[:-1]], "8 items"),
    entry_case("path as bytes", [[KIND_DIR, b"d", 0]], "path must be a string"),
    entry_case("path as int", [[KIND_DIR, 5, 0]], "path must be a string"),
    entry_case("traversal", [[KIND_DIR, "../../etc", 0]], "'..' component"),
    entry_case("absolute", [raw_file("/etc/passwd")], "absolute"),
    entry_case("reserved", [raw_file(".sift/state")], "reserved"),
    entry_case("double slash", [raw_file("a//b")], "empty component"),
    entry_case("bidi", [raw_file("\u202etxt.exe")], r"U\+202E"),
    entry_case("lookalike dots", [[KIND_DIR, "\uff0e\uff0e", 0]], "look-alike"),
    entry_case("duplicate path", [[KIND_DIR, "d", 0], [KIND_DIR, "d", 0]], "duplicate"),
    entry_case("dup kinds", [raw_file("d"), [KIND_DIR, "d", 0]], "duplicate"),
    entry_case("out of order", [[KIND_DIR, "b", 0], [KIND_DIR, "a", 0]], "out of order"),
    entry_case("under a file", [raw_file("a"), [KIND_DIR, "a/b", 0]], "under 'a'"),
    entry_case("deep under a file", [raw_file("a"), raw_file("a/b/c")], "under 'a'"),
    entry_case("under a symlink", [[KIND_SYMLINK, "a", "b"], raw_file("a/x")], "under 'a'"),
    entry_case("symlink escapes", [[KIND_SYMLINK, "l", "../x"]], "leaves the tree"),
    entry_case("symlink absolute", [[KIND_SYMLINK, "l", "/etc"]], "leaves the tree"),
    entry_case("symlink to .sift", [[KIND_SYMLINK, "l", ".sift"]], "leaves the tree"),
    entry_case("symlink hop", [[KIND_SYMLINK, "l", "a/a/../.."]], "leaves the tree"),
    entry_case("symlink empty", [[KIND_SYMLINK, "l", ""]], "leaves the tree"),
    entry_case("symlink NUL", [[KIND_SYMLINK, "l", "a\x00"]], "leaves the tree"),
    entry_case("symlink bytes", [[KIND_SYMLINK, "l", b"a"]], "target must be a string"),
    entry_case("negative size", [raw_file(lengths=[], size=-1)], "size must be"),
    entry_case("huge size", [raw_file(lengths=[], size=MAX_FILE_SIZE + 1)], "size must be"),
    entry_case("bool size", [raw_file(lengths=[1], size=True)], "size must be"),
    entry_case("float size", [raw_file(lengths=[1], size=1.0)], "size must be"),
    entry_case("zero chunk", [raw_file(lengths=[0, 5])], "chunk 0 length"),
    entry_case("chunk > max", [raw_file(lengths=[1025])], r"\[1, 1024\], got 1025"),
    entry_case("bool chunk length", [raw_file(lengths=[True])], "chunk 0 length"),
    entry_case(
        "str chunk length", [raw_file(lengths=["1"], size=1, digest=bytes(32))], "chunk 0 length"
    ),
    entry_case("size mismatch", [raw_file("a/b", [4, 6], size=12)], "sum to 10 but size is 12"),
    entry_case("lengths not array", [[*raw_file(lengths=[1])[:6], 1, b""]], "lengths"),
    entry_case("hash blob short", [raw_file(hashes=b"\x00" * 63)], "63 bytes of chunk hashes"),
    entry_case("hash blob long", [raw_file(hashes=b"\x00" * 65)], "65 bytes of chunk hashes"),
    entry_case("hash blob str", [raw_file(hashes="x" * 64)], "hashes must be bytes"),
    entry_case("digest mismatch", [raw_file(digest=b"\x00" * 32)], "digest does not match"),
    entry_case("digest short", [raw_file(digest=b"\x00")], "digest does not match"),
    entry_case("digest str", [raw_file(digest="d" * 32)], "digest must be bytes"),
    entry_case("wrong hashes", [raw_file(hashes=b"".join(H[2:4]))], "digest does not match"),
    entry_case("mode too big", [raw_file(mode=0o10000)], "mode"),
    entry_case("mode with type bits", [raw_file(mode=0o100644)], "mode"),
    entry_case("negative mode", [[KIND_DIR, "d", -1]], "mode"),
    entry_case("bool mode", [[KIND_DIR, "d", False]], "mode"),
    entry_case("mtime float", [raw_file(mtime=1.5)], "mtime_ns"),
    entry_case("mtime bool", [raw_file(mtime=False)], "mtime_ns"),
    entry_case("mtime str", [raw_file(mtime="0")], "mtime_ns"),
    entry_case("mtime nil", [raw_file(mtime=None)], "mtime_ns"),
    entry_case("mtime beyond 64 bits", [raw_file(mtime=2**63)], "mtime_ns"),
]


@pytest.mark.parametrize(
    ("data", "match"),
    [pytest.param(d, m, id=name) for name, d, m in BAD_DOCUMENTS + BAD_ENTRIES],
)
def test_decode_refuses(data: bytes, match: str) -> None:
    with pytest.raises(ManifestError, match=match) as info:
        decode_manifest(data)
    assert "\n" not in str(info.value)


def test_decode_message_is_readable() -> None:
    data = pack(raw_manifest([raw_file("a/b", [4, 6], size=12)]))
    with pytest.raises(ManifestError) as info:
        decode_manifest(data)
    assert str(info.value) == "manifest entry 'a/b': chunk lengths sum to 10 but size is 12"


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(ManifestError, match="must be bytes"):
        decode_manifest("not bytes")  # type: ignore[arg-type]


def test_decode_refuses_forged_lengths() -> None:
    # An array header claiming 2**32-1 items with nothing behind it must not allocate.
    with pytest.raises(ManifestError):
        decode_manifest(b"\xdd\xff\xff\xff\xff")
    with pytest.raises(ManifestError):
        decode_manifest(b"\xc6\xff\xff\xff\xff")  # bin32 of 4 GiB


def raw_delta(upserts: Any, removed: Any, base: Any = 1, version: Any = 2) -> bytes:
    return pack([DELTA_TAG, FORMAT_VERSION, base, version, [64, 256, 1024], upserts, removed])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(VALID, "not a delta", id="manifest-as-delta"),
        pytest.param(raw_delta([], [], base=2, version=2), "forward", id="not-forward"),
        pytest.param(raw_delta([], [], base=-1), "base version", id="negative-base"),
        pytest.param(raw_delta([], [], version=True), "delta version", id="bool-version"),
        pytest.param(raw_delta([], "a"), "removed list", id="removed-not-array"),
        pytest.param(raw_delta([], [b"a"]), "must be a string", id="removed-bytes"),
        pytest.param(raw_delta([], ["../a"]), "unsafe path", id="removed-unsafe"),
        pytest.param(raw_delta([], [".sift"]), "reserved", id="removed-reserved"),
        pytest.param(raw_delta([], ["b", "a"]), "out of order", id="removed-unsorted"),
        pytest.param(raw_delta([], ["a", "a"]), "duplicate", id="removed-duplicate"),
        pytest.param(raw_delta([raw_file("a")], ["a"]), "both", id="removed-and-upserted"),
        pytest.param(raw_delta([raw_file("a"), raw_file("a/b")], []), "under", id="under-file"),
        pytest.param(raw_delta([raw_file(size=1)], []), "sum to 30", id="bad-entry"),
        pytest.param(raw_delta([], []) + b"\x90", "trailing", id="trailing"),
        pytest.param(raw_delta([], [])[:-1], "msgpack", id="truncated"),
    ],
)
def test_decode_delta_refuses(data: bytes, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        decode_delta(data)


# --------------------------------------------------------------------------- fuzz


@given(st.binary(max_size=512))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    for decode in (decode_manifest, decode_delta):
        with contextlib.suppress(ManifestError):
            decode(data)


MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=8),
    max_leaves=20,
)


@given(MSGPACK_VALUES, st.sampled_from([0, 1, 2, 3, 4]))
def test_decode_arbitrary_structures(value: Any, where: int) -> None:
    """Well-formed msgpack with junk in one slot of an otherwise plausible manifest."""
    doc: list[Any] = raw_manifest([raw_file()])
    doc[where] = value
    with contextlib.suppress(ManifestError):
        decode_manifest(pack(doc))
    entry = raw_file()
    entry[where + 2] = value
    with contextlib.suppress(ManifestError):
        decode_manifest(pack(raw_manifest([entry])))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(manifests(), st.data())
def test_decode_corrupted_encoding(m: Manifest, data: st.DataObject) -> None:
    """Any single-byte corruption of a real encoding is refused or yields a valid manifest."""
    encoded = bytearray(encode_manifest(m))
    i = data.draw(st.integers(0, len(encoded) - 1))
    encoded[i] = data.draw(st.integers(0, 255))
    try:
        back = decode_manifest(bytes(encoded))
    except ManifestError:
        return
    validate_manifest(back)


# --------------------------------------------------------------------------- file edits in deltas


def big_file(path: str, n: int, changed: dict[int, bytes] | None = None, mtime: int = 0):
    """A file of `n` 256-byte chunks (SMALL params); `changed` replaces some chunk hashes."""
    hashes = [hash_chunk(i.to_bytes(4, "big")) for i in range(n)]
    for i, h in (changed or {}).items():
        hashes[i] = h
    return FileEntry.build(path, 256 * n, 0o644, mtime, [Chunk(h, 256) for h in hashes])


def test_a_small_change_to_a_big_file_travels_as_edits() -> None:
    old = Manifest.build(1, SMALL, [big_file("big", 5000)])
    new = Manifest.build(2, SMALL, [big_file("big", 5000, {2500: H[7]}, mtime=5)])
    delta = make_delta(old, new)
    (edit,) = delta.upserts
    assert isinstance(edit, FileEdit)
    wire = encode_delta(delta)
    assert len(wire) < 300  # against ~175 KB for the whole chunk list
    assert len(encode_manifest(new)) > 170_000
    back = decode_delta(wire)
    assert back == delta
    assert apply_delta(old, back) == new


def test_small_or_rewritten_files_travel_whole() -> None:
    old = Manifest.build(1, SMALL, [fe("small", 100, 100), big_file("big", 100)])
    rewritten = FileEntry.build(
        "big", 25600, 0o644, 1, [Chunk(hash_chunk(b"x%d" % i), 256) for i in range(100)]
    )
    new = Manifest.build(2, SMALL, [fe("small", 100, 50, 50), rewritten])
    delta = make_delta(old, new)
    assert all(isinstance(e, FileEntry) for e in delta.upserts)
    assert apply_delta(old, decode_delta(encode_delta(delta))) == new


def _edit_delta(edit: FileEdit) -> bytes:
    return encode_delta(ManifestDelta(1, 2, SMALL, (edit,), ()))


def test_an_edit_of_another_base_version_is_refused() -> None:
    old = Manifest.build(1, SMALL, [big_file("big", 200)])
    new = Manifest.build(2, SMALL, [big_file("big", 200, {5: H[1]})])
    delta = make_delta(old, new)
    other_base = Manifest.build(1, SMALL, [big_file("big", 200, {9: H[2]})])
    with pytest.raises(ManifestError, match="another version of it"):
        apply_delta(other_base, decode_delta(encode_delta(delta)))
    gone = Manifest.build(1, SMALL, [])
    with pytest.raises(ManifestError, match="another version of it"):
        apply_delta(gone, decode_delta(encode_delta(delta)))


def test_a_lying_edit_is_refused() -> None:
    base_entry = big_file("big", 200)
    base = Manifest.build(1, SMALL, [base_entry])
    target = big_file("big", 200, {5: H[1]})
    good = FileEdit(
        "big",
        target.size,
        0o644,
        0,
        base_entry.digest,
        ((0, 5), (H[1], (256,)), (6, 194)),
        target.digest,
    )
    assert apply_delta(base, decode_delta(_edit_delta(good))).entries["big"] == target
    cases = [
        (((0, 5), (H[2], (256,)), (6, 194)), "digest does not match"),  # another chunk
        (((0, 200), (0, 200)), "lengths sum to"),  # twice the file
        (((150, 100),), "outside the old list"),
        (((0, 200),) * 1000, "more than"),  # far more chunks than the size allows
    ]
    for ops, match in cases:
        bad = FileEdit("big", target.size, 0o644, 0, base_entry.digest, ops, target.digest)
        with pytest.raises(ManifestError, match=match):
            apply_delta(base, decode_delta(_edit_delta(bad)))


def test_edits_are_not_allowed_in_a_full_manifest() -> None:
    raw = ["sift-manifest", 1, 1, list(SMALL.as_tuple()), [[3, "f", 1, 0, 0, H[0], [[0, 1]], H[1]]]]
    with pytest.raises(ManifestError, match="unknown kind 3"):
        decode_manifest(msgpack.packb(raw, use_bin_type=True))


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ([3, "../x", 256, 0o644, 0, H[0], [[0, 1]], H[1]], "'..'|parent"),
        ([3, "f", 256, 0o644, 0, b"short", [[0, 1]], H[1]], "base_digest"),
        ([3, "f", 256, 0o644, 0, H[0], [], H[1]], "non-empty array"),
        ([3, "f", 256, 0o644, 0, H[0], [[H[0], [5000]]], H[1]], "not in \\[1, 1024\\]"),
        ([3, "f", 256, 0o644, 0, H[0], [[0, 1]]], "must have 8 items"),
    ],
)
def test_malformed_edits_in_a_delta_are_refused(entry: list[Any], match: str) -> None:
    raw = ["sift-delta", 1, 1, 2, list(SMALL.as_tuple()), [entry], []]
    with pytest.raises(ManifestError, match=match):
        decode_delta(msgpack.packb(raw, use_bin_type=True))
