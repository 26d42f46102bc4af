"""Opening sift's SQLite state database: pragmas, schema migrations, role check, transactions.

One database file per state directory (:data:`DB_NAME`) whatever the role, so a peer pointed at a
master's state directory opens the master's database and is refused, instead of quietly creating a
second one next to it.

Connections are opened in autocommit mode (``isolation_level=None``): a lone ``put`` is its own
small transaction, and :func:`transaction` groups many writes into one commit explicitly. That
keeps the commit points visible in the code rather than left to the sqlite3 module's implicit
``BEGIN``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

__all__ = [
    "APP_ID",
    "DB_NAME",
    "SCHEMA_VERSION",
    "Role",
    "StateError",
    "db_path",
    "get_meta",
    "open_db",
    "set_meta",
    "transaction",
]

Role = Literal["master", "peer"]

DB_NAME = "sift.db"
APP_ID = "sift"
BUSY_TIMEOUT_MS = 5000
_savepoint_ids = itertools.count(1)

# Each step takes the schema from version i to i + 1. Append only: a released step never changes,
# because databases out there already ran it.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # Small settings, plus the peer's last applied manifest (a large blob: hence a rowid table).
        """CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value
        )""",
        # Master: per-file chunk lists keyed by path (os.fsencode'd, so any file name fits).
        # hashes = concatenated 32-byte digests, lengths = big-endian u32 per chunk.
        """CREATE TABLE scan_cache (
            path     BLOB PRIMARY KEY,
            size     INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            inode    INTEGER NOT NULL,
            mode     INTEGER NOT NULL,
            min_size INTEGER NOT NULL,
            avg_size INTEGER NOT NULL,
            max_size INTEGER NOT NULL,
            hashes   BLOB NOT NULL,
            lengths  BLOB NOT NULL
        )""",
        # Master: encoded manifests, newest `keep` of them.
        """CREATE TABLE manifests (
            version INTEGER PRIMARY KEY,
            data    BLOB NOT NULL
        )""",
        # Peer: files sift placed and verified in local_dir.
        """CREATE TABLE local_files (
            path     BLOB PRIMARY KEY,
            size     INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            inode    INTEGER NOT NULL,
            mode     INTEGER NOT NULL,
            digest   BLOB NOT NULL,
            hashes   BLOB NOT NULL,
            lengths  BLOB NOT NULL
        )""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


class StateError(RuntimeError):
    """The state database cannot be used: not a database, corrupt, from a newer sift, or owned by
    the other role. The message is one line naming the file."""


def db_path(state_dir: str | os.PathLike[str]) -> Path:
    """The database file inside a state directory."""
    return Path(state_dir) / DB_NAME


def open_db(path: str | os.PathLike[str], *, role: Role) -> sqlite3.Connection:
    """Open (creating if needed) the state database at ``path`` for ``role``.

    Creates the state directory with mode 0700 (missing ancestors get the umask default, so a
    peer's ``local_dir`` above ``.sift/state`` stays readable) and the file with mode 0600;
    switches to WAL with ``synchronous=NORMAL`` (a crash may lose the last commits, never corrupt
    the database); runs pending schema migrations; records ``role`` on first use. Raises
    :class:`StateError` for a file that is not a sift database, a schema newer than this sift,
    or a database that belongs to the other role.
    """
    if role not in ("master", "peer"):
        raise ValueError(f"role must be 'master' or 'peer', got {role!r}")
    path = Path(path)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Create the file ourselves so it is 0600 from the start; SQLite gives the -wal and -shm
        # files the same permissions as the database.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    except OSError as e:
        raise StateError(f"{path}: cannot create state database: {e.strerror}") from None

    conn = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,  # one user at a time: the event loop or a worker thread
    )
    try:
        _configure(conn, path)
        _migrate(conn, path)
        _check_role(conn, path, role)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StateError(f"{path}: not a usable sift state database ({e})") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # The first statement that reads the header: a non-database fails here with DatabaseError.
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StateError(f"{path}: cannot switch the state database to WAL (got {mode!r})")
    conn.execute("PRAGMA synchronous = NORMAL")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    # BEGIN IMMEDIATE takes the write lock before reading user_version, so two processes opening
    # a fresh database cannot both run the same migration.
    with transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{path}: state database schema {version} is newer than this sift supports "
                f"({SCHEMA_VERSION}); upgrade sift or use another state_dir"
            )
        if version == 0:
            has_tables = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            ).fetchone()[0]
            if has_tables:
                raise StateError(f"{path}: is an SQLite database but not a sift state database")
        for step in range(version, SCHEMA_VERSION):
            for statement in _MIGRATIONS[step]:
                conn.execute(statement)
            # user_version lives in the database header and is part of the transaction.
            conn.execute(f"PRAGMA user_version = {step + 1}")
        if version == 0:
            set_meta(conn, "app", APP_ID)
        elif get_meta(conn, "app") != APP_ID:
            raise StateError(f"{path}: is an SQLite database but not a sift state database")


def _check_role(conn: sqlite3.Connection, path: Path, role: Role) -> None:
    with transaction(conn):
        stored = get_meta(conn, "role")
        if stored is None:
            set_meta(conn, "role", role)
        elif stored != role:
            raise StateError(
                f"{path}: this state database belongs to a {stored}, not a {role} "
                "(give each daemon its own state_dir)"
            )


def get_meta(conn: sqlite3.Connection, key: str, default: object = None) -> object:
    """A value from the meta table, or ``default``."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else row[0]


def set_meta(conn: sqlite3.Connection, key: str, value: object) -> None:
    """Set a meta value (str, int, float, bytes or None)."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One atomic unit of writes: committed when the block ends, rolled back if it raises.

    Nests: inside an open transaction it becomes a savepoint, so an inner block that fails and
    is caught undoes only its own writes, and the outer block decides the commit.
    """
    if conn.in_transaction:
        name = f"sift_sp_{next(_savepoint_ids)}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield conn
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        conn.execute(f"RELEASE {name}")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
