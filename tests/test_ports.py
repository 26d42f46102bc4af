"""sift.net.ports.free_port: a bindable loopback port the kernel never gives to an outgoing
connection (below the ephemeral range)."""

from __future__ import annotations

import socket

import pytest

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


def test_a_port_is_not_handed_out_twice_before_its_daemon_binds_it():
    """Picks are random, so 500 of them from the ~22,000 ports below the range would repeat
    one with a probability of 99.6% if nothing remembered them."""
    low, _ = _ephemeral_range()
    if low <= 10_500:
        pytest.skip("no room below the ephemeral range: the fallback is the kernel's choice")
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
