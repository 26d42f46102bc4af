"""sift.state: SQLite persistence for the master's scan cache and manifests and the peer's index."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sift.core.chunk import DEFAULT_PARAMS, HASH_SIZE, Chunk, ChunkParams, hash_chunk
from sift.core.chunker import FileChunks
from sift.core.manifest import DirEntry, FileEntry, Manifest, ManifestError, encode_manifest
from sift.state import (
    DB_NAME,
    SCHEMA_VERSION,
    CachedFile,
    LocalFile,
    LocalIndex,
    ManifestStore,
    ManifestVersionError,
    ScanCache,
    StateError,
    db_path,
    open_db,
    transaction,
)


def chunks_of(*parts: bytes) -> tuple[Chunk, ...]:
    return tuple(Chunk(hash_chunk(p), len(p)) for p in parts)


def file_chunks(*parts: bytes, mtime_ns: int = 1, inode: int = 42) -> FileChunks:
    chunks = chunks_of(*parts)
    return FileChunks.from_chunks(
        chunks,
        size=sum(c.length for c in chunks),
        mtime_ns=mtime_ns,
        inode=inode,
        mode=0o100644,
        params=DEFAULT_PARAMS,
    )


def manifest(version: int, *names: str) -> Manifest:
    entries: list[FileEntry | DirEntry] = [DirEntry("d", 0o755)]
    for name in names:
        data = name.encode() * 3
        entries.append(FileEntry.build(f"d/{name}", len(data), 0o644, 7, chunks_of(data)))
    return Manifest.build(version, DEFAULT_PARAMS, entries)


@pytest.fixture
def master_db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = open_db(db_path(tmp_path / "state"), role="master")
    yield conn
    conn.close()


@pytest.fixture
def peer_db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = open_db(db_path(tmp_path / "local" / ".sift" / "state"), role="peer")
    yield conn
    conn.close()


# ---------------------------------------------------------------------------------- open_db


def test_open_db_creates_private_dirs_wal_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / DB_NAME
    conn = open_db(path, role="master")
    try:
        # The state dir itself is private. Intermediate dirs keep the umask default on purpose:
        # for a peer the chain is local_dir/.sift/state, and local_dir must stay readable.
        assert stat.S_IMODE(os.stat(tmp_path / "a" / "b").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert not conn.in_transaction
    finally:
        conn.close()
    # Reopening an up-to-date database is a no-op.
    open_db(path, role="master").close()


def test_role_mismatch_is_refused(tmp_path: Path) -> None:
    path = db_path(tmp_path / "state")
    open_db(path, role="master").close()
    with pytest.raises(StateError, match="belongs to a master, not a peer") as info:
        open_db(path, role="peer")
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    open_db(path, role="master").close()  # the master still can


@pytest.mark.parametrize(
    "content",
    [b"this is not a database" * 200, b"SQLite format 3\x00" + b"\xff" * 4080],
)
def test_garbage_file_gives_state_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / DB_NAME
    path.write_bytes(content)
    with pytest.raises(StateError, match="not a usable sift state database") as info:
        open_db(path, role="master")
    assert str(path) in str(info.value)
    assert path.read_bytes() == content  # left untouched for the operator to inspect


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE songs (title TEXT)")
    other.commit()
    other.close()
    with pytest.raises(StateError, match="not a sift state database"):
        open_db(path, role="peer")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    open_db(path, role="peer").close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StateError, match="newer than this sift supports"):
        open_db(path, role="peer")


def test_db_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).mkdir()
    with pytest.raises(StateError, match="cannot create state database"):
        open_db(tmp_path / DB_NAME, role="master")


def test_nested_transaction_rolls_back_only_the_inner_block(
    master_db: sqlite3.Connection,
) -> None:
    cache = ScanCache(master_db)

    def failing_inner() -> None:
        with transaction(master_db):
            cache.put("inner", file_chunks(b"i"))
            raise RuntimeError("boom")

    with transaction(master_db):
        cache.put("outer", file_chunks(b"o"))
        with pytest.raises(RuntimeError):
            failing_inner()
    assert cache.paths() == {"outer"}


# ---------------------------------------------------------------------------------- scan cache


def test_scan_cache_round_trip(master_db: sqlite3.Connection) -> None:
    cache = ScanCache(master_db)
    assert cache.get("a.h5") is None
    fc = file_chunks(b"x" * 1000, b"y" * 70000, b"z")
    cache.put("a.h5", fc)
    got = cache.get("a.h5")
    entry = FileEntry.build("a.h5", fc.size, fc.mode, fc.mtime_ns, fc.chunks)
    assert got == CachedFile(
        fc.size, fc.mtime_ns, fc.inode, fc.mode, fc.params, entry.hashes, entry.lengths
    )
    assert got.chunks == fc.chunks
    assert all(type(c) is Chunk and len(c.hash) == HASH_SIZE for c in got.chunks)
    assert cache.paths() == {"a.h5"}
    assert len(cache) == 1


def test_scan_cache_empty_file_and_odd_names(master_db: sqlite3.Connection) -> None:
    cache = ScanCache(master_db)
    empty = file_chunks()
    assert empty.chunks == ()
    names = ["empty", "dir/ünïcødé file.txt", "bad-\udcff-bytes"]  # last: non-UTF-8 on disk
    for name in names:
        cache.put(name, empty)
    for name in names:
        got = cache.get(name)
        assert got is not None
        assert got.chunks == ()
        assert got.size == 0
    assert cache.paths() == set(names)


def test_scan_cache_replace_remove_and_persist(tmp_path: Path) -> None:
    path = db_path(tmp_path / "state")
    conn = open_db(path, role="master")
    cache = ScanCache(conn)
    cache.put("f", file_chunks(b"old"))
    cache.put("f", file_chunks(b"new", mtime_ns=2))
    cache.put("g", file_chunks(b"g"))
    assert cache.remove("g") is True
    assert cache.remove("g") is False
    conn.close()

    conn = open_db(path, role="master")
    cache = ScanCache(conn)
    assert cache.paths() == {"f"}
    got = cache.get("f")
    assert got is not None
    assert got.chunks == chunks_of(b"new")
    assert got.mtime_ns == 2
    conn.close()


def test_scan_cache_is_fresh(master_db: sqlite3.Connection) -> None:
    cache = ScanCache(master_db)
    fc = file_chunks(b"abc", mtime_ns=10, inode=5)
    cache.put("f", fc)
    assert cache.is_fresh("f", 3, 10, 5, DEFAULT_PARAMS) == cache.get("f")
    assert cache.is_fresh("f", 4, 10, 5, DEFAULT_PARAMS) is None  # size
    assert cache.is_fresh("f", 3, 11, 5, DEFAULT_PARAMS) is None  # mtime
    assert cache.is_fresh("f", 3, 10, 6, DEFAULT_PARAMS) is None  # inode (replaced file)
    other = ChunkParams(4096, 16384, 65536)
    assert cache.is_fresh("f", 3, 10, 5, other) is None  # chunked with other parameters
    assert cache.is_fresh("missing", 3, 10, 5, DEFAULT_PARAMS) is None


def test_scan_cache_batch_commits_once(master_db: sqlite3.Connection) -> None:
    cache = ScanCache(master_db)
    commits = 0

    def count(statement: str) -> None:
        nonlocal commits
        commits += statement.strip().upper().startswith("COMMIT")

    master_db.set_trace_callback(count)
    try:
        with cache.batch():
            for i in range(500):
                cache.put(f"f{i}", file_chunks(str(i).encode()))
            cache.remove("f0")
    finally:
        master_db.set_trace_callback(None)
    assert commits == 1
    assert len(cache) == 499


def test_scan_cache_batch_rolls_back_on_error(master_db: sqlite3.Connection) -> None:
    cache = ScanCache(master_db)
    cache.put("keep", file_chunks(b"k"))

    def interrupted_scan() -> None:
        with cache.batch():
            for i in range(10):
                cache.put(f"f{i}", file_chunks(b"x"))
            cache.remove("keep")
            raise RuntimeError("scan interrupted")

    with pytest.raises(RuntimeError):
        interrupted_scan()
    assert cache.paths() == {"keep"}
    assert not master_db.in_transaction


def test_scan_cache_damaged_row_gives_state_error(master_db: sqlite3.Connection) -> None:
    cache = ScanCache(master_db)
    cache.put("f", file_chunks(b"a", b"b"))
    master_db.execute("UPDATE scan_cache SET lengths = x'000001'")
    with pytest.raises(StateError, match="damaged chunk list"):
        cache.get("f")


# ---------------------------------------------------------------------------------- manifests


def test_manifest_store_round_trip(master_db: sqlite3.Connection) -> None:
    store = ManifestStore(master_db)
    assert store.latest() is None
    assert store.highest_version() == 0
    m1, m2 = manifest(1, "a"), manifest(2, "a", "b")
    store.save(m1)
    store.save(m2)
    assert store.latest() == m2
    assert store.load(1) == m1
    assert store.load(3) is None
    assert store.load_encoded(2) is not None
    assert store.versions() == [1, 2]
    assert store.highest_version() == 2


def test_manifest_store_streams_a_large_manifest(master_db: sqlite3.Connection) -> None:
    # Several 64 KiB parts' worth: written through the blob handle part by part.
    store = ManifestStore(master_db)
    big = manifest(3, *(f"file{i:05d}" for i in range(3000)))
    data = encode_manifest(big)
    assert len(data) > 4 * 65536
    store.save(big)
    assert store.load_encoded(3) == data
    assert store.load(3) == big
    store.save(manifest(4, "x"), encoded=encode_manifest(manifest(4, "x")))
    assert store.load(4) == manifest(4, "x")
    # ...and read back in parts, for streaming to a peer.
    assert store.encoded_size(3) == len(data)
    parts = list(store.iter_encoded(3, part_size=100_000))
    assert b"".join(parts) == data
    assert max(map(len, parts)) == 100_000
    assert store.encoded_size(99) is None
    assert list(store.iter_encoded(99)) == []


def test_manifest_store_refuses_an_invalid_manifest(master_db: sqlite3.Connection) -> None:
    store = ManifestStore(master_db)
    bad = Manifest.build(1, DEFAULT_PARAMS, [FileEntry.build("f", 2, 0o644, 0, chunks_of(b"x"))])
    with pytest.raises(ManifestError, match="sum to 1 but size is 2"):
        store.save(bad)
    assert store.versions() == []
    assert store.highest_version() == 0


def test_manifest_store_non_blob_data_is_damage(master_db: sqlite3.Connection) -> None:
    store = ManifestStore(master_db)
    store.save(manifest(1, "a"))
    master_db.execute("UPDATE manifests SET data = 5")
    with pytest.raises(StateError, match="stored manifest 1 is damaged"):
        store.load_encoded(1)


def test_manifest_versions_only_go_up(master_db: sqlite3.Connection) -> None:
    store = ManifestStore(master_db)
    store.save(manifest(5, "a"))
    for version in (5, 4, 0):
        with pytest.raises(ManifestVersionError, match="versions only go up"):
            store.save(manifest(version, "b"))
    assert store.versions() == [5]
    store.save(manifest(9, "c"))  # gaps are fine
    assert store.highest_version() == 9


def test_manifest_versions_only_go_up_across_reopen_and_pruning(tmp_path: Path) -> None:
    path = db_path(tmp_path / "state")
    conn = open_db(path, role="master")
    store = ManifestStore(conn, keep=3)
    for version in range(1, 8):
        store.save(manifest(version, f"f{version}"))
    assert store.versions() == [5, 6, 7]
    assert store.load(1) is None
    conn.close()

    conn = open_db(path, role="master")
    store = ManifestStore(conn, keep=3)
    assert store.highest_version() == 7
    latest = store.latest()
    assert latest is not None
    assert latest.version == 7
    with pytest.raises(ManifestVersionError):
        store.save(manifest(7, "again"))
    # Even with every stored manifest gone, the high-water mark holds.
    conn.execute("DELETE FROM manifests")
    assert store.latest() is None
    assert store.highest_version() == 7
    with pytest.raises(ManifestVersionError):
        store.save(manifest(3, "old"))
    store.save(manifest(8, "next"))
    conn.close()


def test_manifest_store_prunes_by_count_with_gaps(master_db: sqlite3.Connection) -> None:
    store = ManifestStore(master_db, keep=2)
    for version in (10, 20, 30, 31):
        store.save(manifest(version, "x"))
    assert store.versions() == [30, 31]


def test_manifest_store_keep_must_be_positive(master_db: sqlite3.Connection) -> None:
    with pytest.raises(ValueError, match="keep"):
        ManifestStore(master_db, keep=0)


def test_manifest_store_damaged_blob(master_db: sqlite3.Connection) -> None:
    store = ManifestStore(master_db)
    store.save(manifest(1, "a"))
    master_db.execute("UPDATE manifests SET data = x'c0ffee'")
    with pytest.raises(StateError, match="stored manifest 1 is damaged"):
        store.latest()


# ---------------------------------------------------------------------------------- local index


def local_file(path: str, *parts: bytes, inode: int = 3) -> LocalFile:
    entry = FileEntry.build(path, sum(len(p) for p in parts), 0o644, 9, chunks_of(*parts))
    return LocalFile(path, entry.size, 9, inode, 0o100644, entry.digest, entry.chunks)


def test_local_index_round_trip(tmp_path: Path) -> None:
    path = db_path(tmp_path / "state")
    conn = open_db(path, role="peer")
    index = LocalIndex(conn)
    assert index.get("a") is None
    a, b, empty = local_file("a", b"1", b"2"), local_file("dir/b", b"3"), local_file("e")
    with index.batch():
        for entry in (a, b, empty):
            index.put(entry)
    conn.close()

    conn = open_db(path, role="peer")
    index = LocalIndex(conn)
    assert index.get("a") == a
    assert index.get("e") == empty
    assert dict(index.items()) == {"a": a, "dir/b": b, "e": empty}
    assert index.paths() == {"a", "dir/b", "e"}
    assert len(index) == 3
    assert index.matches("a", a.size, a.mtime_ns, a.inode) == a
    assert index.matches("a", a.size, a.mtime_ns + 1, a.inode) is None
    assert index.remove("a") is True
    assert index.remove("a") is False
    assert index.paths() == {"dir/b", "e"}
    conn.close()


def test_local_index_items_tolerates_removal_while_iterating(peer_db: sqlite3.Connection) -> None:
    index = LocalIndex(peer_db)
    for i in range(20):
        index.put(local_file(f"f{i:02}", b"x"))
    seen = []
    for path, _ in index.items():
        seen.append(path)
        index.remove(path)
    assert len(seen) == 20
    assert len(index) == 0


def test_local_index_batch_rolls_back(peer_db: sqlite3.Connection) -> None:
    index = LocalIndex(peer_db)

    def failing_batch() -> None:
        with index.batch():
            index.put(local_file("a", b"1"))
            raise KeyError("x")

    with pytest.raises(KeyError):
        failing_batch()
    assert len(index) == 0


def test_local_index_synced_version_and_manifest(tmp_path: Path) -> None:
    path = db_path(tmp_path / "state")
    conn = open_db(path, role="peer")
    index = LocalIndex(conn)
    assert index.synced_version() == 0
    assert index.load_manifest() is None
    index.set_synced_version(3)
    assert index.synced_version() == 3
    m = manifest(4, "a", "b")
    index.save_manifest(m)
    conn.close()

    conn = open_db(path, role="peer")
    index = LocalIndex(conn)
    assert index.synced_version() == 4
    assert index.load_manifest() == m
    with pytest.raises(ValueError, match="non-negative"):
        index.set_synced_version(-1)
    conn.close()


def test_synced_version_is_kept_in_memory_and_follows_rollbacks(tmp_path: Path) -> None:
    conn = open_db(db_path(tmp_path / "state"), role="peer")
    index = LocalIndex(conn)
    index.set_synced_version(5)

    def failing_batch() -> None:
        with index.batch():
            index.set_synced_version(9)
            raise KeyError("x")

    with pytest.raises(KeyError):
        failing_batch()
    assert index.synced_version() == 5  # the rolled-back 9 is not believed
    conn.close()
    # A handshake finishing during shutdown may still ask: no closed-database error.
    assert index.synced_version() == 5


def test_local_index_ownership_flags(peer_db: sqlite3.Connection, tmp_path: Path) -> None:
    index = LocalIndex(peer_db)
    local_dir = tmp_path / "local"
    assert not index.is_initialized()
    assert not index.is_initialized(local_dir)
    assert index.initialized_dir() is None
    index.mark_initialized(local_dir, adopted=False)
    assert index.is_initialized()
    assert index.is_initialized(local_dir)
    assert not index.is_initialized(tmp_path / "other")
    assert index.initialized_dir() == local_dir
    assert index.was_adopted() is False
    index.mark_initialized(local_dir, adopted=True)
    assert index.was_adopted() is True


def test_master_and_peer_tables_do_not_mix(tmp_path: Path) -> None:
    """A peer state dir opened as master (and vice versa) is refused before any store sees it."""
    peer_path = db_path(tmp_path / "p")
    conn = open_db(peer_path, role="peer")
    LocalIndex(conn).set_synced_version(2)
    conn.close()
    with pytest.raises(StateError, match="belongs to a peer, not a master"):
        open_db(peer_path, role="master")
