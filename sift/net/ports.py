"""Loopback ports for the demo, the benchmarks and the tests."""

from __future__ import annotations

import random
import socket

_LOWEST = 10_000  # below this, well-known services live


def free_port() -> int:
    """A free TCP port on 127.0.0.1 outside the kernel's ephemeral range: a port taken from that
    range (bind to 0) can be handed to some process's outgoing connection before the daemon we
    give it binds it (seen with 16 peers connecting at once: "address already in use")."""
    low, _high = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200 if low > _LOWEST + 1 else 0):
        port = rng.randrange(_LOWEST, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no free port below the range (or no room there): fall back
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = f.read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999
