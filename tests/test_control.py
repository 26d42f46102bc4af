"""The control socket server and client, in-process: framing, errors, subscribe, permissions."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sift.control.client import ControlClient, ControlClosed, ControlError, control_call
from sift.control.server import ControlServer, SocketInUse
from sift.events import EventBus


@pytest.fixture
async def served(tmp_path):
    bus = EventBus(first_id=1)
    calls = []

    async def status(params):
        calls.append(params)
        return {"role": "test", "n": len(calls)}

    async def boom(_params):
        raise RuntimeError("kaput")

    server = ControlServer(tmp_path / "run" / "c.sock", bus, {"status": status, "boom": boom})
    await server.start()
    try:
        yield server, bus
    finally:
        await server.close()


def raw_exchange(path: Path, payload: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and hung up before reading everything
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


async def test_socket_is_created_mode_0600_in_a_private_directory(served):
    server, _ = served
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server.path.parent).st_mode) == 0o700


async def test_call_and_errors(served):
    server, _ = served
    assert await control_call(server.path, "status") == {"role": "test", "n": 1}
    async with await ControlClient.connect(server.path) as client:
        with pytest.raises(ControlError) as err:
            await client.call("nope")
        assert err.value.code == "unknown_method"
        with pytest.raises(ControlError) as err:
            await client.call("boom")
        assert err.value.code == "unavailable"
        assert "kaput" in err.value.message
        # The connection survives errors.
        assert (await client.call("status"))["n"] == 2


async def test_bad_lines_get_one_error_each_and_the_connection_goes_on(served):
    server, _ = served
    payload = b'not json\n[1,2]\n{"id": 7}\n{"id": 8, "method": "status", "params": 3}\n\n' + (
        b'{"id": 9, "method": "status"}\n'
    )
    replies = await asyncio.to_thread(raw_exchange, server.path, payload)
    assert [r.get("error", {}).get("code") for r in replies] == [
        "bad_request",
        "bad_request",
        "bad_request",
        "bad_request",
        None,
    ]
    assert replies[2]["id"] == 7
    assert replies[4] == {"id": 9, "result": {"role": "test", "n": 1}}


async def test_an_overlong_line_is_refused(served):
    server, _ = served
    replies = await asyncio.to_thread(raw_exchange, server.path, b"x" * (2 << 20) + b"\n")
    assert replies[0]["error"]["code"] == "bad_request"
    assert "too long" in replies[0]["error"]["message"]


async def test_subscribe_streams_events_and_answers_calls_in_between(served):
    server, bus = served
    bus.publish("old")
    async with await ControlClient.connect(server.path) as client:
        last = await client.subscribe(since=0)
        assert last == bus.last_id
        assert (await asyncio.wait_for(client.next_event(), 2))["type"] == "old"
        bus.publish("manifest.published", version=3)
        assert (await client.call("status"))["role"] == "test"
        event = await asyncio.wait_for(client.next_event(), 2)
        assert event["type"] == "manifest.published"
        assert event["data"] == {"version": 3}
        with pytest.raises(ControlError):
            await client.subscribe()  # one subscription per connection
        with pytest.raises(ControlError):
            await client.call("subscribe", {"since": "soon"})


async def test_a_client_that_never_reads_does_not_block_the_daemon(served):
    server, bus = served
    with socket.socket(socket.AF_UNIX) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(str(server.path))
        s.sendall(b'{"id": 1, "method": "subscribe"}\n')
        await asyncio.sleep(0.1)
        for i in range(20_000):  # far more than the socket buffers and the queue hold
            bus.publish("rates", payload="x" * 200, i=i)
            if i % 1000 == 0:
                await asyncio.sleep(0)
        # Still responsive to everyone else.
        assert (await asyncio.wait_for(control_call(server.path, "status"), 2))["role"] == "test"
        subs = list(bus._subscribers)
        assert all(len(sub.queue) <= sub.maxlen for sub in subs)


async def test_gap_reaches_a_slow_client(served):
    server, bus = served
    async with await ControlClient.connect(server.path) as client:
        await client.subscribe()
        sub = next(iter(bus._subscribers))
        sub.maxlen = 5
        # Publish a burst without yielding: the forwarder cannot drain in between.
        for i in range(50):
            bus.publish("n", i=i)
        events = [await asyncio.wait_for(client.next_event(), 2) for _ in range(6)]
    assert events[0]["type"] == "gap"
    assert events[0]["data"]["count"] == 45
    assert [e["data"]["i"] for e in events[1:]] == [45, 46, 47, 48, 49]


async def test_client_sees_the_daemon_go_away(served):
    server, _ = served
    client = await ControlClient.connect(server.path)
    await client.subscribe()
    await server.close()
    with pytest.raises(ControlClosed):
        await asyncio.wait_for(client.next_event(), 2)
    with pytest.raises(ControlClosed):
        await client.call("status")
    await client.close()
    assert not server.path.exists()


async def test_a_second_server_on_a_live_socket_is_refused_and_a_stale_one_replaced(tmp_path):
    bus = EventBus()
    path = tmp_path / "c.sock"
    first = ControlServer(path, bus, {})
    await first.start()
    with pytest.raises(SocketInUse, match="in use by another running daemon"):
        await ControlServer(path, bus, {}).start()
    await first.close()
    # A socket file left by a killed daemon: nobody listens, so it is replaced.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    second = ControlServer(path, bus, {})
    await second.start()
    await second.close()
    path.write_text("not a socket")
    with pytest.raises(SocketInUse, match="not a socket"):
        await ControlServer(path, bus, {}).start()


NOBODY_CLIENT = """
import os, socket, sys
os.setgroups([int(g) for g in sys.argv[4:]])
os.setgid(int(sys.argv[3])); os.setuid(int(sys.argv[2]))
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
f = s.makefile("rb")
s.settimeout(1.0)
try:  # a refusal comes at once, before any request
    print(f.readline().decode().strip()); sys.exit(0)
except TimeoutError:
    pass
s.settimeout(10.0)
s.sendall(b'{"id": 1, "method": "status"}\\n')
print(s.makefile().readline().strip())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
async def test_other_users_are_refused():
    nobody = pwd.getpwnam("nobody")
    # pytest's tmp_path is private to root; this directory must be traversable by "nobody".
    base = Path(tempfile.mkdtemp(prefix="sift-ctl-"))
    os.chmod(base, 0o755)

    async def status(_params):
        return {"role": "test"}

    server = ControlServer(base / "run" / "c.sock", EventBus(), {"status": status})
    await server.start()

    def as_nobody() -> str:
        result = subprocess.run(
            [sys.executable, "-c", NOBODY_CLIENT, str(server.path), str(nobody.pw_uid),
             str(nobody.pw_gid)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return result.stdout.strip() or result.stderr

    try:
        # The directory and file modes stop them first...
        os.chmod(server.path.parent, 0o755)
        assert await asyncio.to_thread(as_nobody) == "EACCES"
        # ...and with the modes opened up, the credential check still does.
        os.chmod(server.path, 0o666)
        reply = json.loads(await asyncio.to_thread(as_nobody))
        assert reply["error"]["code"] == "forbidden"
        assert (await control_call(server.path, "status"))["role"] == "test"
    finally:
        await server.close()
        shutil.rmtree(base)


async def test_a_socket_path_longer_than_the_kernel_limit_works(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = deep / "control.sock"
    assert len(str(path)) > 108

    async def status(_params):
        return {"deep": True}

    server = ControlServer(path, EventBus(), {"status": status})
    await server.start()
    try:
        assert path.exists()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert await control_call(path, "status") == {"deep": True}
        with pytest.raises(SocketInUse):
            await ControlServer(path, EventBus(), {}).start()
    finally:
        await server.close()
    assert not path.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
async def test_members_of_control_group_are_let_in():
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrnam("users")  # exists on Debian; nobody is not a member
    assert "nobody" not in group.gr_mem
    base = Path(tempfile.mkdtemp(prefix="sift-ctl-"))
    os.chmod(base, 0o755)

    async def status(_params):
        return {"role": "test"}

    server = ControlServer(base / "run" / "c.sock", EventBus(), {"status": status}, group="users")
    await server.start()

    def as_nobody(*groups: int) -> str:
        result = subprocess.run(
            [sys.executable, "-c", NOBODY_CLIENT, str(server.path), str(nobody.pw_uid),
             str(nobody.pw_gid), *map(str, groups)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return result.stdout.strip() or result.stderr

    try:
        st = os.stat(server.path)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == group.gr_gid
        dir_st = os.stat(server.path.parent)
        assert stat.S_IMODE(dir_st.st_mode) == 0o750
        assert dir_st.st_gid == group.gr_gid
        # Not in the group: the directory mode already keeps them out.
        assert await asyncio.to_thread(as_nobody) == "EACCES"
        # In the group (as a supplementary group, the way a service manager grants it).
        reply = json.loads(await asyncio.to_thread(as_nobody, group.gr_gid))
        assert reply == {"id": 1, "result": {"role": "test"}}
    finally:
        await server.close()
        shutil.rmtree(base)
