"""TLS on sift connections, with real TLS 1.3 sessions on 127.0.0.1 (in-process, no daemons).

What must hold: both ends of one session compute the same channel binding and no two sessions
share one; a key proof made in one session fails in another; a relay that terminates TLS with
its own certificate learns nothing and gets nothing; mutual TLS refuses strangers; a TLS/plain
mismatch fails fast with a message that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest

from sift.net.channel import ChannelClosed, accept, connect
from sift.net.tls import (
    ServerTLS,
    TLSError,
    channel_binding,
    client_context,
    looks_like_tls,
    server_context,
)
from sift.protocol import AuthenticationError
from sift.protocol.handshake import ClientHandshake, ServerHandshake
from sift.protocol.messages import StatusRequest, StatusResponse
from tests.tls_certs import CertAuthority

PSK = b"tls-test-key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    base = tmp_path_factory.mktemp("pki")
    ca = CertAuthority(base / "ca")
    rogue = CertAuthority(base / "rogue", name="someone else's CA")
    return {
        "ca": ca.cert_file,
        "server": ca.issue("master"),
        "client": ca.issue("peer1"),
        "rogue_ca": rogue.cert_file,
        "rogue": rogue.issue("mallory"),
    }


class Server:
    """A TLS (or plain) listener running sift's accept() and answering StatusRequest."""

    def __init__(self, tls: ServerTLS | None):
        self.tls = tls
        self.errors: list[Exception] = []
        self.sessions: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(
            self._on_connect,
            "127.0.0.1",
            0,
            ssl=self.tls.context if self.tls else None,
            ssl_handshake_timeout=5 if self.tls else None,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _on_connect(self, reader, writer) -> None:
        try:
            channel = await accept(reader, writer, PSK, "server", lambda: 7, tls=self.tls)
        except Exception as exc:
            self.errors.append(exc)
            writer.close()
            return
        self.sessions.append(channel.peer_node_id)

        async def handle(ch, msg):
            if isinstance(msg, StatusRequest):
                return StatusResponse(msg.req_id, '{"ok": true}')
            return None

        await channel.serve(handle)


async def _status_over(port: int, tls: ssl.SSLContext | None, psk: bytes = PSK) -> str:
    channel = await connect("127.0.0.1", port, psk, "client", node_role="client", tls=tls)
    reading = asyncio.ensure_future(channel.serve(lambda ch, msg: asyncio.sleep(0)))
    try:
        response = await channel.request(StatusRequest(0), timeout=5)
    finally:
        await channel.close("done")
        await reading
    assert isinstance(response, StatusResponse)
    return response.status_json


async def _wait_for(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


# -- the happy path and the binding ---------------------------------------------------------------


async def test_handshake_and_requests_over_tls(pki):
    tls = server_context(pki["server"].cert, pki["server"].key)
    async with Server(tls) as server:
        ctx = client_context(pki["ca"])
        assert await _status_over(server.port, ctx) == '{"ok": true}'
    assert server.sessions == ["client"]
    assert server.errors == []


async def _binding_pair(pki) -> tuple[bytes, bytes]:
    """One real TLS session: the binding as the server and as the client compute it."""
    tls = server_context(pki["server"].cert, pki["server"].key)
    got: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_connect(reader, writer):
        got.set_result(channel_binding(writer.get_extra_info("ssl_object"), tls.cert_der))
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=tls.context)
    port = server.sockets[0].getsockname()[1]
    try:
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(pki["ca"])
        )
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.version() == "TLSv1.3"
        client_side = channel_binding(ssl_object, ssl_object.getpeercert(binary_form=True))
        server_side = await asyncio.wait_for(got, 5)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    return client_side, server_side


async def test_binding_is_shared_within_a_session_and_unique_across_sessions(pki):
    first_client, first_server = await _binding_pair(pki)
    second_client, second_server = await _binding_pair(pki)
    assert first_client == first_server
    assert second_client == second_server
    assert first_client != second_client
    assert len(first_client) == 32


async def test_proofs_from_one_tls_session_fail_in_another(pki):
    """Even with the very same nonces on both sides (which the fresh server nonce normally
    rules out), a proof made inside one TLS session does not verify inside another."""
    binding_a, _ = await _binding_pair(pki)
    binding_b, _ = await _binding_pair(pki)

    def fixed(n: int) -> bytes:
        return b"\x01" * n

    def run(client_binding: bytes, server_binding: bytes):
        client = ClientHandshake(
            PSK, node_id="peer1", channel_binding=client_binding, urandom=fixed
        )
        server = ServerHandshake(
            PSK, node_id="master", channel_binding=server_binding, urandom=fixed
        )
        challenge = server.handle_hello(client.hello_payload)
        return client, server, challenge

    # Within one session everything verifies.
    client, server, challenge = run(binding_a, binding_a)
    auth_a = client.handle_challenge(challenge)
    assert server.handle_auth(auth_a).node_id == "peer1"

    # The recorded Auth from session A, replayed into session B: refused.
    _, server_b, _ = run(binding_b, binding_b)
    with pytest.raises(AuthenticationError, match="proof did not verify"):
        server_b.handle_auth(auth_a)

    # The server's Challenge from session A shown to a client in session B: refused too.
    client_b, _, _ = run(binding_b, binding_b)
    with pytest.raises(AuthenticationError, match="does not know the pre-shared key"):
        client_b.handle_challenge(challenge)


async def test_a_relay_with_its_own_certificate_gets_nothing(pki):
    """A man in the middle terminates the client's TLS with its own certificate (the client has
    no tls_ca, so TLS alone would let it) and relays the plaintext handshake to the real TLS
    server. The proofs cover different TLS sessions, so the client refuses the server's proof
    before sending its own, and the server never opens a session."""
    real = server_context(pki["server"].cert, pki["server"].key)
    fake = server_context(pki["rogue"].cert, pki["rogue"].key)
    relayed = []

    async with Server(real) as server:

        async def pump(src, dst):
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    relayed.append(len(data))
                    dst.write(data)
                    await dst.drain()
            dst.close()

        async def on_victim(reader, writer):
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", server.port, ssl=client_context()
            )
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

        mitm = await asyncio.start_server(on_victim, "127.0.0.1", 0, ssl=fake.context)
        mitm_port = mitm.sockets[0].getsockname()[1]
        try:
            with pytest.raises(AuthenticationError, match="does not know the pre-shared key"):
                await connect(
                    "127.0.0.1", mitm_port, PSK, "victim", node_role="client", tls=client_context()
                )
            await _wait_for(lambda: server.errors)
        finally:
            mitm.close()
            await mitm.wait_closed()
    assert relayed, "the relay carried the handshake"
    assert server.sessions == []


# -- mutual TLS ---------------------------------------------------------------------------------


async def test_mutual_tls_accepts_only_certificates_from_the_ca(pki):
    tls = server_context(pki["server"].cert, pki["server"].key, pki["ca"])
    async with Server(tls) as server:
        good = client_context(pki["ca"], pki["client"].cert, pki["client"].key)
        assert await _status_over(server.port, good) == '{"ok": true}'

        no_cert = client_context(pki["ca"])
        with pytest.raises(TLSError, match="TLS handshake failed"):
            await _status_over(server.port, no_cert)

        stranger = client_context(pki["ca"], pki["rogue"].cert, pki["rogue"].key)
        with pytest.raises(TLSError, match="TLS handshake failed"):
            await _status_over(server.port, stranger)
    assert server.sessions == ["client"]


async def test_client_with_a_ca_refuses_a_server_it_signed_not(pki):
    tls = server_context(pki["rogue"].cert, pki["rogue"].key)
    async with Server(tls) as server:
        with pytest.raises(TLSError, match="does not verify against tls_ca"):
            await _status_over(server.port, client_context(pki["ca"]))
    assert server.sessions == []


async def test_wrong_key_over_tls_is_still_refused(pki):
    tls = server_context(pki["server"].cert, pki["server"].key)
    async with Server(tls) as server:
        with pytest.raises(AuthenticationError):
            await _status_over(server.port, client_context(pki["ca"]), psk=b"not-the-key")
    assert server.sessions == []


# -- TLS on one side only -------------------------------------------------------------------------


async def test_plain_client_to_tls_server_fails_fast_with_a_hint(pki):
    tls = server_context(pki["server"].cert, pki["server"].key)
    async with Server(tls) as server:
        async with asyncio.timeout(5):  # not a hang
            with pytest.raises(ChannelClosed, match="is TLS on over there"):
                await _status_over(server.port, None)
    assert server.sessions == []


async def test_tls_client_to_plain_server_fails_fast_on_both_sides(pki):
    async with Server(None) as server:
        async with asyncio.timeout(5):
            with pytest.raises(TLSError, match="is TLS on over there"):
                await _status_over(server.port, client_context(pki["ca"]))
        await _wait_for(lambda: server.errors)
    assert isinstance(server.errors[0], TLSError)
    assert "speaks TLS but TLS is off here" in str(server.errors[0])


def test_looks_like_tls():
    client_hello = b"\x16\x03\x01\x00\xdc\x01\x00\x00"
    assert looks_like_tls(client_hello)
    assert looks_like_tls(b"\x15\x03\x03\x00\x02")  # an alert
    assert not looks_like_tls(b"\x00\x00\x00\x20SIFT")  # a sift frame header
    assert not looks_like_tls(b"")
    assert not looks_like_tls(b"\x16")


def test_contexts_require_tls_13(pki):
    tls = server_context(pki["server"].cert, pki["server"].key, pki["ca"])
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert tls.context.verify_mode == ssl.CERT_REQUIRED
    assert tls.context.num_tickets == 0
    assert tls.cert_der == ssl.PEM_cert_to_DER_cert(Path(pki["server"].cert).read_text())
    assert client_context().verify_mode == ssl.CERT_NONE
    assert client_context(pki["ca"]).verify_mode == ssl.CERT_REQUIRED
    assert client_context().minimum_version == ssl.TLSVersion.TLSv1_3
