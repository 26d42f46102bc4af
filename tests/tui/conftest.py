from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from textual.pilot import Pilot

from tests.tui.fake import FakeDaemon

# Bounded in time, not in pauses: on a loaded machine a pause can take much longer.
SETTLE_SECONDS = 20.0


async def wait_until(
    pilot: Pilot, predicate: Callable[[], object], what: str, timeout: float = SETTLE_SECONDS
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause()


async def settle(pilot: Pilot, daemon: FakeDaemon | None = None) -> None:
    """Let the app take in every scripted event and finish its short workers (not the
    connection worker, which runs for the app's lifetime)."""
    app = pilot.app

    def quiet() -> bool:
        busy = [w for w in app.workers if w.group != "connection" and w.is_running]
        return (daemon is None or daemon.drained) and not busy

    await wait_until(pilot, quiet, "the console to settle")
    await pilot.pause()


@pytest.fixture
def settled():
    return settle
