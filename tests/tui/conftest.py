from __future__ import annotations

import pytest
from textual.pilot import Pilot

from tests.tui.fake import FakeDaemon

MAX_PAUSES = 400


async def settle(pilot: Pilot, daemon: FakeDaemon | None = None) -> None:
    """Let the app take in every scripted event and finish its short workers (not the
    connection worker, which runs for the app's lifetime)."""
    app = pilot.app
    for _ in range(MAX_PAUSES):
        await pilot.pause()
        busy = [w for w in app.workers if w.group != "connection" and w.is_running]
        if (daemon is None or daemon.drained) and not busy:
            break
    else:
        raise AssertionError("the console did not settle")
    await pilot.pause()


@pytest.fixture
def settled():
    return settle
