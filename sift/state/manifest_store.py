"""The master's manifest history: the newest ``keep`` encoded manifests, and a high-water mark.

Old manifests are kept so the master can answer "what changed since version N" with a delta. The
high-water mark lives in the meta table, not in ``max(version)``, so it survives pruning and a
version number is never reused, even after every stored manifest was deleted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

from sift.core.manifest import (
    Manifest,
    ManifestError,
    decode_manifest,
    iter_manifest_parts,
    validate_manifest,
)

from .db import StateError, get_meta, set_meta, transaction

__all__ = ["DEFAULT_KEEP", "ManifestStore", "ManifestVersionError"]

DEFAULT_KEEP = 64
_HIGH_WATER = "manifest_high_water"


class ManifestVersionError(StateError):
    """A manifest whose version is not above every version saved before."""


class ManifestStore:
    """Saves manifests with strictly increasing versions, across restarts, and prunes history."""

    def __init__(self, conn: sqlite3.Connection, keep: int = DEFAULT_KEEP) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._conn = conn
        self.keep = keep

    def save(self, manifest: Manifest, *, encoded: bytes | None = None) -> None:
        """Store ``manifest`` as the newest version and prune to the newest ``keep``.

        ``encoded`` may pass the bytes of ``encode_manifest(manifest)`` when the caller already
        has them. Raises :class:`ManifestVersionError` unless the version is above the highest
        ever saved, and ManifestError if the manifest is invalid.

        Without ``encoded`` the manifest is encoded twice in small parts, once to learn the
        size and once into an incremental blob handle: the encoding is never whole in memory
        (nor copied by SQLite, as binding one large value would do).
        """
        parts: Iterable[bytes]
        if encoded is None:
            validate_manifest(manifest)
            size = sum(len(part) for part in iter_manifest_parts(manifest))
            parts = iter_manifest_parts(manifest)
        else:
            size, parts = len(encoded), (encoded,)
        with transaction(self._conn):
            high = self.highest_version()
            if manifest.version <= high:
                raise ManifestVersionError(
                    f"manifest version {manifest.version} is not above the highest saved "
                    f"version {high} (versions only go up)"
                )
            self._conn.execute(
                "INSERT INTO manifests (version, data) VALUES (?, zeroblob(?))",
                (manifest.version, size),
            )
            with self._conn.blobopen("manifests", "data", manifest.version) as blob:
                for part in parts:
                    blob.write(part)
                if blob.tell() != size:
                    raise StateError(f"manifest {manifest.version} encoded to a different size")
            set_meta(self._conn, _HIGH_WATER, manifest.version)
            self._conn.execute(
                "DELETE FROM manifests WHERE version <= ?", (manifest.version - self.keep,)
            )
            # Versions may skip numbers, so also bound by count, not only by distance.
            self._conn.execute(
                "DELETE FROM manifests WHERE version NOT IN "
                "(SELECT version FROM manifests ORDER BY version DESC LIMIT ?)",
                (self.keep,),
            )

    def highest_version(self) -> int:
        """The highest version ever saved (0 if none), whether or not it is still stored."""
        value = get_meta(self._conn, _HIGH_WATER, 0)
        if type(value) is not int:
            raise StateError(f"manifest store: damaged version high-water mark {value!r}")
        return value

    def latest(self) -> Manifest | None:
        """The newest stored manifest, or None."""
        row = self._conn.execute(
            "SELECT version FROM manifests ORDER BY version DESC LIMIT 1"
        ).fetchone()
        return None if row is None else self.load(row[0])

    def load(self, version: int) -> Manifest | None:
        """Manifest ``version`` if it is still stored, else None (never saved, or pruned)."""
        data = self.load_encoded(version)
        return None if data is None else _decode(version, data)

    def load_encoded(self, version: int) -> bytes | None:
        """The stored bytes of manifest ``version`` (to send as is), or None."""
        try:
            # Read straight into one bytes object: a SELECT would hold a second copy.
            with self._conn.blobopen("manifests", "data", version, readonly=True) as blob:
                return blob.read()
        except sqlite3.OperationalError:
            pass  # no such row (never saved, or pruned), or a value that is not a blob
        row = self._conn.execute(
            "SELECT typeof(data) FROM manifests WHERE version = ?", (version,)
        ).fetchone()
        if row is None:
            return None
        raise StateError(f"stored manifest {version} is damaged: its data is a {row[0]}")

    def encoded_size(self, version: int) -> int | None:
        """How many bytes manifest ``version`` encodes to, if it is stored."""
        row = self._conn.execute(
            "SELECT length(data) FROM manifests WHERE version = ? AND typeof(data) = 'blob'",
            (version,),
        ).fetchone()
        return None if row is None else row[0]

    def iter_encoded(self, version: int, part_size: int = 1 << 20) -> Iterator[bytes]:
        """The stored bytes of manifest ``version`` in parts (to stream to a peer; the whole is
        never in memory). Each part opens the blob anew, so no handle is held between parts
        while the caller waits on a socket. Stops early if the version is pruned meanwhile
        (the caller, which announced a size, then sees fewer bytes)."""
        offset = 0
        while True:
            try:
                with self._conn.blobopen("manifests", "data", version, readonly=True) as blob:
                    blob.seek(offset)
                    part = blob.read(part_size)
            except sqlite3.OperationalError:
                return
            if not part:
                return
            offset += len(part)
            yield part

    def versions(self) -> list[int]:
        """Stored versions, oldest first."""
        return [v for (v,) in self._conn.execute("SELECT version FROM manifests ORDER BY version")]


def _decode(version: int, data: bytes) -> Manifest:
    try:
        manifest = decode_manifest(data)
    except ManifestError as e:
        raise StateError(f"stored manifest {version} is damaged: {e}") from None
    if manifest.version != version:
        raise StateError(
            f"stored manifest {version} is damaged: it says version {manifest.version}"
        )
    return manifest
