"""The master's manifest history: the newest ``keep`` encoded manifests, and a high-water mark.

Old manifests are kept so the master can answer "what changed since version N" with a delta. The
high-water mark lives in the meta table, not in ``max(version)``, so it survives pruning and a
version number is never reused, even after every stored manifest was deleted.
"""

from __future__ import annotations

import sqlite3

from sift.core.manifest import Manifest, ManifestError, decode_manifest, encode_manifest

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
        has them (to send to peers), saving a second encoding of a large manifest. Raises
        :class:`ManifestVersionError` unless the version is above the highest ever saved.
        """
        data = encode_manifest(manifest) if encoded is None else encoded
        with transaction(self._conn):
            high = self.highest_version()
            if manifest.version <= high:
                raise ManifestVersionError(
                    f"manifest version {manifest.version} is not above the highest saved "
                    f"version {high} (versions only go up)"
                )
            self._conn.execute(
                "INSERT INTO manifests (version, data) VALUES (?, ?)", (manifest.version, data)
            )
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
            "SELECT version, data FROM manifests ORDER BY version DESC LIMIT 1"
        ).fetchone()
        return None if row is None else _decode(row[0], row[1])

    def load(self, version: int) -> Manifest | None:
        """Manifest ``version`` if it is still stored, else None (never saved, or pruned)."""
        row = self._conn.execute(
            "SELECT data FROM manifests WHERE version = ?", (version,)
        ).fetchone()
        return None if row is None else _decode(version, row[0])

    def load_encoded(self, version: int) -> bytes | None:
        """The stored bytes of manifest ``version`` (to send as is), or None."""
        row = self._conn.execute(
            "SELECT data FROM manifests WHERE version = ?", (version,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def versions(self) -> list[int]:
        """Stored versions, oldest first."""
        return [v for (v,) in self._conn.execute("SELECT version FROM manifests ORDER BY version")]


def _decode(version: int, data: bytes) -> Manifest:
    try:
        manifest = decode_manifest(bytes(data))
    except ManifestError as e:
        raise StateError(f"stored manifest {version} is damaged: {e}") from None
    if manifest.version != version:
        raise StateError(
            f"stored manifest {version} is damaged: it says version {manifest.version}"
        )
    return manifest
