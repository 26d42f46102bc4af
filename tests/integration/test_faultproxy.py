"""The fault-injection proxy itself: it forwards faithfully, and each fault does what it says."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.faultproxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with self.request, contextlib.suppress(ConnectionError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def proxy(echo) -> Iterator[FaultProxy]:
    with FaultProxy(echo) as p:
        yield p


def _connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            break
        out += data
    return bytes(out)


def _poke_until_reset(sock: socket.socket) -> bytes:
    """Send and receive until the connection fails; returns what arrived. Raises
    ConnectionResetError (or BrokenPipeError) from the step that hit the reset, and
    ConnectionResetError too if the proxy closed politely instead."""
    got = bytearray()
    for _ in range(100):
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("closed without a reset")
        got += data
        sock.sendall(b"x")
    return bytes(got)


def _expect_reset(proxy: FaultProxy) -> None:
    """Connecting, sending or receiving fails with a reset (whichever step it reaches first)."""

    def attempt() -> None:
        with _connect(proxy) as sock:
            sock.sendall(b"x")
            _poke_until_reset(sock)

    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        attempt()


def _round_trip(sock: socket.socket, payload: bytes) -> bytes:
    sender = threading.Thread(target=sock.sendall, args=(payload,))
    sender.start()
    try:
        return _recv_exactly(sock, len(payload))
    finally:
        sender.join(10)


def test_forwards_bytes_unchanged_both_ways(proxy):
    payload = bytes(range(256)) * 4000  # 1 MB
    with _connect(proxy) as sock:
        assert _round_trip(sock, payload) == payload
    assert proxy.stats.accepted == 1
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(payload)


def test_throttle_caps_the_rate(proxy):
    proxy.throttle(1_000_000)
    payload = b"x" * 300_000
    with _connect(proxy) as sock:
        started = time.monotonic()
        assert _round_trip(sock, payload) == payload
        elapsed = time.monotonic() - started
    # 300 kB each way at 1 MB/s (directions paced separately, in parallel): at least ~0.3 s.
    assert elapsed >= 0.25


def test_delay_adds_latency(proxy):
    proxy.delay(0.2)
    with _connect(proxy) as sock:
        started = time.monotonic()
        assert _round_trip(sock, b"ping") == b"ping"
        assert time.monotonic() - started >= 0.4  # held once on the way up, once down


def test_drop_black_holes_until_healed(proxy):
    with _connect(proxy) as sock:
        proxy.drop(True)
        sock.sendall(b"lost")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(10)
        proxy.heal()
        sock.settimeout(5)
        assert _round_trip(sock, b"found") == b"found"
    assert proxy.stats.dropped == 4


def test_cut_resets_open_connections(proxy):
    with _connect(proxy) as sock:
        assert _round_trip(sock, b"hello") == b"hello"
        assert proxy.cut() == 2  # the client side and the target side
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            _poke_until_reset(sock)
    assert proxy.stats.cuts == 0  # cut() is counted by the caller, not as a fault trip


def test_cut_after_forwards_exactly_that_many_bytes(proxy):
    proxy.cut_after(10_000)
    got = bytearray()

    def read_all(sock: socket.socket) -> None:
        while data := sock.recv(65536):
            got.extend(data)
        raise ConnectionResetError("closed without a reset")

    with _connect(proxy) as sock:
        sock.sendall(b"a" * 6_000)  # 6 kB up, and its echo down, would make 12 kB in all
        with pytest.raises(ConnectionResetError):
            read_all(sock)
    assert len(got) <= 4_000  # what was written before the reset, unless the reset overtook it
    assert proxy.stats.bytes_up == 6_000
    assert proxy.stats.cuts == 1


def test_refuse_resets_new_connections_and_heal_restores(proxy):
    proxy.refuse(True)
    _expect_reset(proxy)
    assert proxy.stats.cuts == 1
    proxy.heal()
    with _connect(proxy) as sock:
        assert _round_trip(sock, b"ok") == b"ok"


def test_unreachable_target_resets_the_client():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # bound, never listening
    with FaultProxy(("127.0.0.1", dead_port)) as proxy:
        _expect_reset(proxy)


def test_close_stops_the_thread_and_the_listener(echo):
    proxy = FaultProxy(echo).start()
    port = proxy.port
    proxy.close()
    assert not any(t.name == "faultproxy" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
