"""Bad bytes on the wire against a live master: every kind of garbage, a flood of Hellos, idle
and slow clients. Each bad connection gets an Error frame (where it got far enough to be
answered), is dropped with one log line, and everyone else is served on; memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from sift.net import channel as channel_mod
from sift.net.channel import Channel, accept, connect
from sift.protocol import Connection, FrameDecoder, ProtocolError, Role, decode_payload
from sift.protocol.frames import MAGIC, PROTOCOL_VERSION, encode_frame
from sift.protocol.messages import ChunkRequest, Error, Ping, StatusResponse, encode_message
from tests.integration.cluster import Cluster, wait_for

PSK = "integration-test-key"


@pytest.fixture(scope="module")
def master(tmp_path_factory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("wire"))
    for i in range(3):
        (cluster.master_dir / f"f{i}.bin").write_bytes(os.urandom(200_000))
    cluster.start_master()
    cluster.add_peer()  # its listener (serving other peers) faces the same attacks
    cluster.wait_converged()
    try:
        yield cluster
    finally:
        cluster.close()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        match = re.search(r"VmRSS:\s+(\d+) kB", f.read())
    assert match
    return int(match.group(1))


def _hello() -> bytes:
    return Connection(Role.CLIENT, b"some key", "attacker").initiate()


def _open(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _read_to_eof(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes; (data, closed_by_server)."""
    sock.settimeout(timeout)
    out = bytearray()
    try:
        while data := sock.recv(65536):
            out += data
    except TimeoutError:
        return bytes(out), False
    except ConnectionResetError:
        pass
    return bytes(out), True


def _errors(data: bytes) -> list[Error]:
    decoder = FrameDecoder()
    decoder.feed(data)
    found = []
    with_payloads = True
    while with_payloads:
        try:
            payload = decoder.next_payload()
        except ProtocolError:
            break
        if payload is None:
            break
        msg = decode_payload(payload)
        if isinstance(msg, Error):
            found.append(msg)
    return found


def _lines_about(log: str, port: int) -> list[str]:
    return [line for line in log.splitlines() if f":{port} " in line or f":{port}:" in line]


GARBAGE = {
    "random bytes": os.urandom(3000),
    "oversized length": struct.pack(">I", 0xFFFFFFFF) + MAGIC + bytes([PROTOCOL_VERSION]),
    "over the handshake limit": struct.pack(">I", 100_000) + MAGIC + bytes([PROTOCOL_VERSION]),
    "bad magic": struct.pack(">I", 10) + b"EVIL" + bytes([PROTOCOL_VERSION]) + b"12345",
    "bad version byte": struct.pack(">I", 10) + MAGIC + b"\x63" + b"12345",
    "undersized length": struct.pack(">I", 2) + b"ab",
    "payload not msgpack": encode_frame(b"\xc1\xc1\xc1"),
    "request before the handshake": encode_message(ChunkRequest(1, (), ())),
    "ping before the handshake": encode_message(Ping(1)),
    "two hellos": _hello() + _hello(),
    "http": b"GET / HTTP/1.1\r\nHost: sift\r\n\r\n",
    "tls client hello": bytes.fromhex("160301020001") + os.urandom(300),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_drops_that_connection_with_one_line(master: Cluster, name: str):
    log_before = master.master.log_text()
    with _open(master.master_port) as sock:
        port = sock.getsockname()[1]
        sock.sendall(GARBAGE[name])
        started = time.monotonic()
        data, closed = _read_to_eof(sock, 8)
    assert closed, f"{name}: the master kept a garbage connection open"
    assert time.monotonic() - started < 5, f"{name}: dropped only by the handshake timeout"
    errors = _errors(data)
    # A TLS client could not read a sift Error frame; it is told nothing and the log says why.
    expected = [] if name == "tls client hello" else ["protocol_error"]
    assert [e.code for e in errors] == expected, (name, errors)
    wait_for(
        lambda: _lines_about(master.master.log_text()[len(log_before) :], port), 5, "the log line"
    )
    lines = _lines_about(master.master.log_text()[len(log_before) :], port)
    assert len(lines) == 1, lines
    assert "refused" in lines[0]
    if name == "tls client hello":
        assert "speaks TLS but TLS is off here" in lines[0]
    assert master.status()["manifest_version"] >= 1  # everyone else is still served


def test_truncated_frame_then_close(master: Cluster):
    log_before = master.master.log_text()
    with _open(master.master_port) as sock:
        port = sock.getsockname()[1]
        sock.sendall(_hello()[:7])
    wait_for(
        lambda: _lines_about(master.master.log_text()[len(log_before) :], port), 5, "the log line"
    )
    lines = _lines_about(master.master.log_text()[len(log_before) :], port)
    assert len(lines) == 1
    assert "in the middle of a frame" in lines[0]
    assert master.status()["manifest_version"] >= 1


def test_garbage_after_authentication_drops_only_that_peer(master: Cluster):
    async def scenario() -> tuple[str, bytes]:
        ch = await connect("127.0.0.1", master.master_port, PSK.encode(), "garbler")
        ch.writer.write(os.urandom(5000))
        data = await asyncio.wait_for(ch.reader.read(), 5)  # until the master closes
        ch.writer.close()
        return ch.describe(), data

    _, data = asyncio.run(scenario())
    assert [e.code for e in _errors(data)] == ["protocol_error"]
    assert "protocol error" in master.master.log_text()
    assert master.status()["manifest_version"] >= 1


def _collect(socks: list[socket.socket], until: float, dribble=None) -> dict:
    """Read from every socket at once until each is closed by the server or `until` passes.
    Returns sock -> (data, seconds until closed or None). `dribble` (sock, bytes) is sent one
    byte a second meanwhile, as long as that socket is open."""
    started = time.monotonic()
    results = {s: [bytearray(), None] for s in socks}
    for s in socks:
        s.setblocking(False)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    next_byte = 0
    next_time = started
    try:
        while sel.get_map() and time.monotonic() < until:
            if dribble is not None and time.monotonic() >= next_time:
                sock, data = dribble
                if results[sock][1] is None and next_byte < len(data):
                    with contextlib.suppress(OSError):
                        sock.send(data[next_byte : next_byte + 1])
                    next_byte += 1
                next_time += 1.0
            for key, _ in sel.select(0.1):
                sock = key.fileobj
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    results[sock][0] += chunk
                else:
                    results[sock][1] = time.monotonic() - started
                    sel.unregister(sock)
    finally:
        sel.close()
    return {s: (bytes(d), t) for s, (d, t) in results.items()}


def test_hello_flood_idle_and_slow_clients(master: Cluster):
    """70 connections that send a Hello and never authenticate, one that sends nothing and one
    that dribbles a byte a second: the 64-handshake cap refuses the surplus at once with "busy",
    everyone left hanging gets "timeout" after the handshake timeout (the slow one too, although
    it keeps sending), legitimate clients get through afterwards, memory barely moves."""
    pid = master.master.proc.pid
    rss_before = _rss_kib(pid)
    idle = _open(master.master_port)  # first, so they hold handshake slots, not "busy"
    slow = _open(master.master_port)
    flood = []
    for _ in range(70):
        sock = _open(master.master_port)
        sock.sendall(_hello())
        flood.append(sock)
    everyone = [idle, slow, *flood]
    limit = channel_mod.HANDSHAKE_TIMEOUT
    try:
        results = _collect(everyone, time.monotonic() + limit + 8, dribble=(slow, _hello()))
        codes = {s: [e.code for e in _errors(d)] for s, (d, _) in results.items()}
        closed_at = {s: t for s, (_, t) in results.items()}
        assert all(t is not None for t in closed_at.values()), "a connection was never dropped"
        busy = [s for s in everyone if codes[s] == ["busy"]]
        timed_out = [s for s in everyone if codes[s] == ["timeout"]]
        assert len(busy) + len(timed_out) == len(everyone), set(map(tuple, codes.values()))
        assert len(busy) >= len(everyone) - channel_mod.MAX_UNAUTHENTICATED
        assert all(closed_at[s] < 2 for s in busy)  # refused at once
        assert all(closed_at[s] >= limit - 1 for s in timed_out)  # not before the timeout
        assert idle in timed_out
        assert slow in timed_out
    finally:
        for sock in everyone:
            sock.close()
    assert master.status()["manifest_version"] >= 1
    rss_after = _rss_kib(pid)
    assert rss_after - rss_before < 30 * 1024, (rss_before, rss_after)


def test_a_peer_listener_drops_garbage_and_caps_handshakes(master: Cluster):
    daemon, _, port = master.peers[0]
    for name in ("random bytes", "oversized length", "two hellos"):
        with _open(port) as sock:
            sock.sendall(GARBAGE[name])
            data, closed = _read_to_eof(sock, 8)
        assert closed, name
        assert [e.code for e in _errors(data)] == ["protocol_error"], name
    flood = [_open(port) for _ in range(channel_mod.MAX_UNAUTHENTICATED + 6)]
    try:
        results = _collect(flood, time.monotonic() + 1.5)  # the surplus is refused at once
        busy = [s for s, (d, t) in results.items() if t is not None and _errors(d)]
        assert len(busy) >= 6
        assert all([e.code for e in _errors(results[s][0])] == ["busy"] for s in busy)
    finally:
        for sock in flood:
            sock.close()
    assert daemon.running
    # Once the flood's connections are gone (their slots free up as each EOF is read), it
    # answers again.
    answer = wait_for(lambda: master.try_status(port), 10, "the peer to answer after the flood")
    assert answer["synced_version"] >= 1


# -- timeouts at the channel level (in process, real loopback sockets) ---------------------------


async def test_authenticated_but_silent_client_is_dropped_after_the_idle_timeout(monkeypatch):
    monkeypatch.setattr(channel_mod, "IDLE_TIMEOUT", 0.5)
    monkeypatch.setattr(channel_mod, "PING_INTERVAL", 60)
    served: list[Channel] = []
    done = asyncio.Event()

    async def on_connect(reader, writer):
        ch = await accept(reader, writer, b"k", "server", lambda: 1)
        served.append(ch)
        await ch.serve(lambda c, m: asyncio.sleep(0))
        done.set()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await connect("127.0.0.1", port, b"k", "client")
        await asyncio.wait_for(done.wait(), 5)
        assert served[0].closed
        assert served[0]._close_reason == "idle timeout"
        assert await asyncio.wait_for(client.reader.read(), 5) is not None  # EOF reached
        client.writer.close()
    finally:
        server.close()


async def test_handshake_timeout_sends_an_error_then_closes(monkeypatch):
    monkeypatch.setattr(channel_mod, "HANDSHAKE_TIMEOUT", 0.3)
    outcome: list[BaseException] = []

    async def on_connect(reader, writer):
        try:
            await accept(reader, writer, b"k", "server", lambda: 1)
        except BaseException as exc:
            outcome.append(exc)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert [(e.code, e.message) for e in _errors(data)] == [
            ("timeout", "handshake not completed within 0.3s")
        ]
        assert isinstance(outcome[0], TimeoutError)
    finally:
        server.close()


async def _pair(on_server, **server_socket_opts):
    """A real server Channel (handed to `on_server`) and a raw client that authenticated but
    whose socket nobody reads. Returns (server, client reader, client writer, client conn)."""
    server_channel: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_connect(reader, writer):
        sock = writer.get_extra_info("socket")
        for opt, value in server_socket_opts.items():
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, opt), value)
        ch = await accept(reader, writer, b"k", "server", lambda: 1)
        server_channel.set_result(ch)
        await on_server(ch)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await connect("127.0.0.1", port, b"k", "client")
    return server, await asyncio.wait_for(server_channel, 5), client


async def test_a_peer_that_reads_nothing_is_dropped_after_the_send_timeout(monkeypatch):
    monkeypatch.setattr(channel_mod, "SEND_TIMEOUT", 0.5)
    outcome: list[BaseException] = []
    big = StatusResponse(1, "x" * (1 << 20))

    async def flood(ch: Channel) -> None:
        try:
            for _ in range(200):  # 200 MB: far more than any socket buffer
                await ch.send(big)
        except BaseException as exc:
            outcome.append(exc)

    server, _ch, client = await _pair(flood)
    try:
        started = time.monotonic()
        await asyncio.wait_for(_until(lambda: outcome), 20)
        assert isinstance(outcome[0], channel_mod.ChannelClosed)
        assert time.monotonic() - started < 10
    finally:
        client.writer.transport.abort()
        server.close()


async def test_a_peer_that_pings_but_reads_no_pongs_cannot_grow_our_buffer(monkeypatch):
    monkeypatch.setattr(channel_mod, "MAX_UNREAD_PONGS", 64 * 1024)

    async def serve(ch: Channel) -> None:
        await ch.serve(lambda c, m: asyncio.sleep(0))

    server, ch, client = await _pair(serve, SO_SNDBUF=4096)
    try:
        count = 200_000
        pings = b"".join(client.conn.send(Ping(i)) for i in range(1, count + 1))
        client.writer.write(pings)  # ~3 MB of pings; the client reads none of the pongs
        await asyncio.wait_for(client.writer.drain(), 20)
        await asyncio.wait_for(_until(lambda: ch.bytes_in >= len(pings)), 20)
        queued = ch.writer.transport.get_write_buffer_size()
        assert queued <= 64 * 1024 + 100, queued  # not the ~3 MB of pongs it asked for
        assert not ch.closed  # dropping pongs is enough; the connection itself is fine
    finally:
        client.writer.transport.abort()
        server.close()


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.02)
