"""SQLite persistence (stdlib sqlite3): the master's scan cache and manifest history, the peer's
local index. Open one connection per daemon with :func:`open_db` and hand it to the stores."""

from .db import DB_NAME, SCHEMA_VERSION, StateError, db_path, open_db, transaction
from .local_index import LocalFile, LocalIndex
from .manifest_store import DEFAULT_KEEP, ManifestStore, ManifestVersionError
from .scan_cache import CachedFile, FileChunksLike, ScanCache

__all__ = [
    "DB_NAME",
    "DEFAULT_KEEP",
    "SCHEMA_VERSION",
    "CachedFile",
    "FileChunksLike",
    "LocalFile",
    "LocalIndex",
    "ManifestStore",
    "ManifestVersionError",
    "ScanCache",
    "StateError",
    "db_path",
    "open_db",
    "transaction",
]
