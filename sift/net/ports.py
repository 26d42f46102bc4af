"""Loopback ports for the demo, the benchmarks and the tests."""

from __future__ import annotations

import random
import socket

_LOWEST = 10_000  # below this, well-known services live

# Ports this process handed out. A port is free when it is picked, but the daemon it is for binds
# it only once started: picking it again meanwhile gave two daemons one port (seen with 16 peers
# started one after another: "address already in use"). Forgotten when half the range is used.
_handed_out: set[int] = set()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 outside the kernel's ephemeral range, not handed out before
    by this process: a port taken from that range (bind to 0) can be handed to some process's
    outgoing connection before the daemon we give it binds it (seen with 16 peers connecting at
    once: "address already in use")."""
    low, _high = _ephemeral_range()
    if len(_handed_out) > (low - _LOWEST) // 2:
        _handed_out.clear()
    rng = random.SystemRandom()
    for _ in range(200 if low > _LOWEST + 1 else 0):
        port = rng.randrange(_LOWEST, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
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
