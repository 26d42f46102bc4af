"""The peer's local index: the files sift placed and verified in ``local_dir``, and how far it got.

A file whose stat still matches its row is trusted without rereading: its chunks can seed other
files and it needs no fetch. A file whose stat differs was touched by someone else and must be
rehashed or replaced.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sift.core.chunk import Chunk
from sift.core.manifest import Manifest, ManifestError, decode_manifest, encode_manifest

from ._codec import decode_path, encode_path, pack_chunks, unpack_chunks
from .db import StateError, get_meta, set_meta, transaction

__all__ = ["LocalFile", "LocalIndex"]

_SYNCED_VERSION = "synced_version"
_APPLIED_MANIFEST = "applied_manifest"
_LOCAL_DIR = "local_dir"
_ADOPTED = "adopted"

_COLUMNS = "size, mtime_ns, inode, mode, digest, hashes, lengths"


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A file sift wrote (or adopted and verified): the stat it had afterwards, its whole-file
    ``digest`` (as in the manifest's ``FileEntry``) and its chunk list."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    mode: int
    digest: bytes
    chunks: tuple[Chunk, ...]


class LocalIndex:
    """Per-file records plus sync progress for one peer's ``local_dir``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        # The synced version is asked for on every handshake, status and holdings report, and
        # only this object changes it: kept in memory (also readable after the database has
        # been closed at shutdown, while a last handshake completes).
        self._synced: int | None = None

    # -- files -------------------------------------------------------------------------------

    def get(self, path: str) -> LocalFile | None:
        """The record for ``path``, or None."""
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM local_files WHERE path = ?", (encode_path(path),)
        ).fetchone()
        return None if row is None else _row_to_file(path, row)

    def matches(self, path: str, size: int, mtime_ns: int, inode: int) -> LocalFile | None:
        """The record if the file on disk still has the stat sift recorded, else None."""
        entry = self.get(path)
        if (
            entry is not None
            and entry.size == size
            and entry.mtime_ns == mtime_ns
            and entry.inode == inode
        ):
            return entry
        return None

    def put(self, entry: LocalFile) -> None:
        """Record (or replace) a placed and verified file."""
        hashes, lengths = pack_chunks(entry.chunks)
        self._conn.execute(
            f"INSERT OR REPLACE INTO local_files (path, {_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                encode_path(entry.path),
                entry.size,
                entry.mtime_ns,
                entry.inode,
                entry.mode,
                entry.digest,
                hashes,
                lengths,
            ),
        )

    def remove(self, path: str) -> bool:
        """Forget ``path``; True if it was recorded."""
        cur = self._conn.execute("DELETE FROM local_files WHERE path = ?", (encode_path(path),))
        return cur.rowcount > 0

    def items(self) -> Iterator[tuple[str, LocalFile]]:
        """``(path, record)`` for every file, in path byte order."""
        # Fetch everything first: writing to the table while a SELECT on it is still stepping
        # (a caller removing as it iterates) has undefined results in SQLite.
        rows = self._conn.execute(
            f"SELECT path, {_COLUMNS} FROM local_files ORDER BY path"
        ).fetchall()
        for key, *row in rows:
            path = decode_path(key)
            yield path, _row_to_file(path, row)

    def paths(self) -> set[str]:
        """Every recorded path."""
        return {decode_path(r[0]) for r in self._conn.execute("SELECT path FROM local_files")}

    def clear(self) -> None:
        """Forget every file record (sync progress and ownership are kept)."""
        self._conn.execute("DELETE FROM local_files")

    def __len__(self) -> int:
        return self._conn.execute("SELECT count(*) FROM local_files").fetchone()[0]

    @contextlib.contextmanager
    def batch(self) -> Iterator[LocalIndex]:
        """Group writes into one transaction: all of them or (if the block raises) none."""
        try:
            with transaction(self._conn):
                yield self
        except BaseException:
            self._synced = None  # rolled back: read it again
            raise

    # -- sync progress -----------------------------------------------------------------------

    def synced_version(self) -> int:
        """The manifest version local_dir last fully matched (0: never synced)."""
        if self._synced is None:
            value = get_meta(self._conn, _SYNCED_VERSION, 0)
            if type(value) is not int:
                raise StateError(f"local index: damaged synced version {value!r}")
            self._synced = value
        return self._synced

    def set_synced_version(self, version: int) -> None:
        """Record that local_dir fully matches manifest ``version``."""
        if type(version) is not int or version < 0:
            raise ValueError(f"version must be a non-negative integer, got {version!r}")
        set_meta(self._conn, _SYNCED_VERSION, version)
        self._synced = version

    def save_manifest(self, manifest: Manifest) -> None:
        """Record ``manifest`` as the last one fully applied, and its version as the synced one,
        atomically (the base for the next delta). Not validated again: it passed
        decode_manifest or apply_delta on arrival, and load_manifest decodes it in full."""
        data = encode_manifest(manifest, validate=False)
        try:
            with transaction(self._conn):
                set_meta(self._conn, _APPLIED_MANIFEST, data)
                self.set_synced_version(manifest.version)
        except BaseException:
            self._synced = None
            raise

    def load_manifest(self) -> Manifest | None:
        """The last fully applied manifest, or None."""
        data = get_meta(self._conn, _APPLIED_MANIFEST)
        if data is None:
            return None
        if not isinstance(data, bytes):
            raise StateError("local index: damaged applied manifest (not a blob)")
        try:
            return decode_manifest(data)
        except ManifestError as e:
            raise StateError(f"local index: damaged applied manifest: {e}") from None

    # -- ownership of local_dir ----------------------------------------------------------------

    def mark_initialized(self, local_dir: str | os.PathLike[str], *, adopted: bool) -> None:
        """Record that this state belongs to ``local_dir``: sift created it (``adopted=False``)
        or took over an existing, non-empty directory (``adopted=True``, the ``adopt`` option)."""
        with transaction(self._conn):
            set_meta(self._conn, _LOCAL_DIR, os.fsencode(Path(local_dir).absolute()))
            set_meta(self._conn, _ADOPTED, int(adopted))

    def initialized_dir(self) -> Path | None:
        """The local_dir this state was initialized for, or None if never."""
        value = get_meta(self._conn, _LOCAL_DIR)
        if value is None:
            return None
        if not isinstance(value, bytes):
            raise StateError(f"local index: damaged local_dir record {value!r}")
        return Path(os.fsdecode(value))

    def is_initialized(self, local_dir: str | os.PathLike[str] | None = None) -> bool:
        """Whether this state was initialized, and (given ``local_dir``) for that directory: a
        state dir reused for another local_dir must not treat its files as sift's."""
        owner = self.initialized_dir()
        if owner is None:
            return False
        return local_dir is None or owner == Path(local_dir).absolute()

    def was_adopted(self) -> bool:
        """Whether local_dir was taken over with ``adopt`` rather than created by sift."""
        return bool(get_meta(self._conn, _ADOPTED, 0))


def _row_to_file(path: str, row: tuple | list) -> LocalFile:
    size, mtime_ns, inode, mode, digest, hashes, lengths = row
    chunks = unpack_chunks(hashes, lengths, f"local index entry {path!r}")
    return LocalFile(path, size, mtime_ns, inode, mode, bytes(digest), chunks)
