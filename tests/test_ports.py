"""sift.net.ports.free_port: a bindable loopback port the kernel never gives to an outgoing
connection (below the ephemeral range)."""

from __future__ import annotations

import socket

from sift.net.ports import _ephemeral_range, free_port


def test_free_ports_are_bindable_and_below_the_ephemeral_range():
    low, high = _ephemeral_range()
    assert low < high
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1  # chosen at random, not the same one each time
    for port in ports:
        assert port < low or low <= 10_001  # (no room below the range: any free port)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
