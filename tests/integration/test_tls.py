"""Transport security with real daemons: a mutual-TLS cluster syncs (peer to peer too), `sift
status` speaks TLS, a TLS/plain mismatch fails fast and clearly, and a recorded handshake
replayed to the master (plain or TLS) gets nothing."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import pytest

from sift.net.channel import connect
from sift.net.tls import client_context
from tests.integration.cluster import PSK, wait_for
from tests.integration.test_sync import run_sift
from tests.tls_certs import CertAuthority

MiB = 1024 * 1024


@pytest.fixture
def pki(tmp_path):
    ca = CertAuthority(tmp_path / "pki")
    return ca


def tls_keys(ca: CertAuthority, name: str, mutual: bool = True) -> dict:
    files = ca.issue(name)
    keys = {"tls_cert": str(files.cert), "tls_key": str(files.key)}
    if mutual:
        keys["tls_ca"] = str(ca.cert_file)
    return keys


def write_dataset(root, mib: int = 12) -> None:
    rng = random.Random(7)
    (root / "big.bin").write_bytes(rng.randbytes(mib * MiB))
    (root / "notes").mkdir()
    for i in range(10):
        (root / "notes" / f"n{i}.txt").write_text(f"note {i}\n" * (i + 1))


def test_mutual_tls_cluster_syncs_peer_to_peer_and_status_needs_tls(cluster, pki):
    write_dataset(cluster.master_dir)
    client = pki.issue("operator")
    cluster.status_tls = client_context(pki.cert_file, client.cert, client.key)
    cluster.start_master(**tls_keys(pki, "master"))
    for i in range(3):
        cluster.add_peer(**tls_keys(pki, f"peer{i + 1}"))
    cluster.wait_converged(timeout=120)

    master_log = cluster.master.log_text()
    assert "(TLS)" in master_log
    assert "refused" not in master_log
    from_peers = sum(cluster.peer_status(i)["last_sync"]["bytes_from_peers"] for i in range(3))
    assert from_peers > 0, "peers traded chunks with each other over TLS"
    for daemon, _, _ in cluster.peers:
        assert "(TLS)" in daemon.log_text()
        assert "refused" not in daemon.log_text()

    addr = f"127.0.0.1:{cluster.master_port}"
    ok = run_sift(
        "status",
        "--master",
        addr,
        "--psk",
        PSK,
        "--tls-ca",
        str(pki.cert_file),
        "--tls-cert",
        str(client.cert),
        "--tls-key",
        str(client.key),
    )
    assert ok.returncode == 0, ok.stderr
    assert "Connected peers  : 3" in ok.stdout

    # No client certificate for a mutual-TLS master: refused, one line.
    no_cert = run_sift("status", "--master", addr, "--psk", PSK, "--tls-ca", str(pki.cert_file))
    assert no_cert.returncode == 1
    assert no_cert.stderr.count("\n") == 1
    assert "TLS handshake failed" in no_cert.stderr

    # TLS without a CA still needs a client certificate for this master.
    bare = run_sift("status", "--master", addr, "--psk", PSK, "--tls")
    assert bare.returncode == 1
    assert "TLS handshake failed" in bare.stderr

    # A plain client: a clear one-line error at once, not a hang.
    started = time.monotonic()
    plain = run_sift("status", "--master", addr, "--psk", PSK)
    assert time.monotonic() - started < 10
    assert plain.returncode == 1
    assert plain.stderr.count("\n") == 1
    assert "is TLS on over there?" in plain.stderr

    # A plain peer gets nothing and says why in its log.
    cluster.add_peer()
    plain_peer, plain_dir, _ = cluster.peers[-1]
    wait_for(lambda: "is TLS on over there?" in plain_peer.log_text(), 30, "the plain peer's hint")
    assert [p.name for p in plain_dir.iterdir()] == [".sift"]  # nothing synced
    assert cluster.status()["connected_peers"] == 3


def test_tls_peer_against_a_plain_master_is_refused_on_both_sides(cluster, pki):
    write_dataset(cluster.master_dir, mib=1)
    cluster.start_master()
    peer = cluster.add_peer(**tls_keys(pki, "peer1", mutual=False))
    wait_for(lambda: "is TLS on over there?" in peer.log_text(), 30, "the TLS peer's error")
    assert f"master 127.0.0.1:{cluster.master_port}: TLS handshake failed" in peer.log_text()
    wait_for(
        lambda: "speaks TLS but TLS is off here" in cluster.master.log_text(),
        30,
        "the master to say a TLS client knocked",
    )
    assert cluster.status()["connected_peers"] == 0


def test_bad_tls_files_stop_the_daemon_with_one_line(tmp_path, pki):
    node = pki.issue("master")
    other = pki.issue("other")
    (tmp_path / "data").mkdir()
    config = tmp_path / "master.toml"
    config.write_text(
        f'watched_dir = "{tmp_path / "data"}"\npsk = "k"\nbind_addr = "127.0.0.1:0"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        f'tls_cert = "{node.cert}"\ntls_key = "{other.key}"\n'
    )
    result = run_sift("master", "start", "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "cannot load the certificate and key (key values mismatch)" in lines[0]


# -- replay -----------------------------------------------------------------------------------


class RecordingProxy:
    """A TCP relay in front of the master that records every byte the client sends, the way
    an eavesdropper on the wire would."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.recorded = bytearray()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(src, dst, record):
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if record:
                        self.recorded += data
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def record_then_replay(port: int, tls) -> tuple[bytes, bytes]:
    """Authenticate once through the recording proxy as peer 'recorded-peer', then send the
    recorded client bytes, as they were, on a new connection. Returns (recorded, answer)."""
    proxy = RecordingProxy(port)
    await proxy.start()
    try:
        channel = await connect(
            "127.0.0.1", proxy.port, PSK.encode(), "recorded-peer", node_role="peer", tls=tls
        )
        assert channel.ack is not None  # the genuine session worked
        await channel.close("recorded")
    finally:
        await proxy.stop()
    recorded = bytes(proxy.recorded)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(recorded)
    await writer.drain()
    answer = bytearray()
    async with asyncio.timeout(15):  # the master must close the connection, not leave it hanging
        while data := await reader.read(65536):
            answer += data
    writer.close()
    return recorded, bytes(answer)


def _sessions_of(master_log: str, node_id: str) -> int:
    return master_log.count(f"peer {node_id} connected")


def test_replayed_plain_handshake_gets_nothing(cluster):
    write_dataset(cluster.master_dir, mib=1)
    cluster.start_master()
    recorded, answer = asyncio.run(record_then_replay(cluster.master_port, None))
    assert b"recorded-peer" in recorded  # the Hello, in the clear
    assert b"SIFT" in answer  # the master answered the replayed Hello with a fresh Challenge
    wait_for(lambda: "wrong pre-shared key" in cluster.master.log_text(), 10, "the refusal")
    log = cluster.master.log_text()
    assert _sessions_of(log, "recorded-peer") == 1  # the genuine one only
    assert cluster.status()["connected_peers"] == 0


def test_replayed_tls_handshake_gets_nothing(cluster, pki):
    write_dataset(cluster.master_dir, mib=1)
    cluster.status_tls = client_context(pki.cert_file)
    cluster.start_master(**tls_keys(pki, "master", mutual=False))
    recorded, answer = asyncio.run(
        record_then_replay(cluster.master_port, client_context(pki.cert_file))
    )
    assert b"recorded-peer" not in recorded  # encrypted on the wire
    assert recorded[:2] == b"\x16\x03"  # a TLS ClientHello
    assert b"SIFT" not in answer
    # Without tls_ca on the master, `--tls` alone (no verification) is enough for status.
    ok = run_sift("status", "--master", f"127.0.0.1:{cluster.master_port}", "--psk", PSK, "--tls")
    assert ok.returncode == 0, ok.stderr
    assert "Connected peers  : 0" in ok.stdout
    log = cluster.master.log_text()
    assert _sessions_of(log, "recorded-peer") == 1
    assert cluster.status()["connected_peers"] == 0


def test_status_tls_options_are_checked_before_connecting(tmp_path, pki):
    node = pki.issue("operator")
    half = run_sift("status", "--master", "127.0.0.1:1", "--psk", "k", "--tls-cert", str(node.cert))
    assert half.returncode == 2
    assert half.stderr == (
        "sift: --tls-cert and --tls-key go together (a client certificate needs both)\n"
    )
    missing = tmp_path / "nope.crt"
    gone = run_sift("status", "--master", "127.0.0.1:1", "--psk", "k", "--tls-ca", str(missing))
    assert gone.returncode == 2
    assert gone.stderr == f"sift: --tls-ca '{missing}' is not a readable file\n"
