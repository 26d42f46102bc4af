"""Daemon lifecycle shared by master and peer: run background tasks until asked to stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


async def run_until_stopped(
    stop: asyncio.Event,
    workers: list[Coroutine[Any, Any, Any]],
    shutdown: Callable[[], Awaitable[None]],
) -> None:
    """Run `workers` until `stop` is set, then cancel them and await `shutdown()`."""
    tasks = [asyncio.ensure_future(w) for w in workers]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await shutdown()
