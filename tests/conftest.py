"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from sift.state import ScanCache, open_db


@pytest.fixture
def peer_store(tmp_path: Path):
    """A peer's empty local_dir and its scan cache (a real SQLite state database)."""
    local = tmp_path / "local"
    local.mkdir()
    db = open_db(tmp_path / "state" / "sift.db", role="peer")
    yield local, ScanCache(db)
    db.close()
