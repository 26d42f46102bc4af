"""PSK handshake: the documented formulas, mutual verification, replay and reflection."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from sift.protocol.errors import AuthenticationError, ProtocolError
from sift.protocol.handshake import (
    AUTH_KEY_CONTEXT,
    TRANSCRIPT_DOMAIN,
    ClientHandshake,
    ServerHandshake,
    client_proof,
    derive_auth_key,
    transcript_hash,
)
from sift.protocol.messages import Auth, Challenge, Hello, Ping, decode_payload, encode_payload

PSK = "correct horse battery staple"


def fixed(byte: int) -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom."""
    return lambda n: bytes([byte]) * n


def make_pair(
    client_psk: str | bytes = PSK,
    server_psk: str | bytes = PSK,
    **client_kwargs: object,
) -> tuple[ClientHandshake, ServerHandshake]:
    client = ClientHandshake(client_psk, node_id="peer-a", **client_kwargs)  # type: ignore[arg-type]
    server = ServerHandshake(server_psk, node_id="master")
    return client, server


# -- key and proofs --------------------------------------------------------------------------


def test_auth_key_derivation() -> None:
    expected = blake3(PSK.encode(), derive_key_context=AUTH_KEY_CONTEXT).digest()
    assert derive_auth_key(PSK) == expected
    assert derive_auth_key(PSK.encode()) == expected
    assert AUTH_KEY_CONTEXT == "sift 2026-11 psk handshake v1"


@pytest.mark.parametrize("psk", ["", b""])
def test_empty_psk_is_refused(psk: str | bytes) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        derive_auth_key(psk)
    with pytest.raises(ValueError, match="must not be empty"):
        ClientHandshake(psk, node_id="a")
    with pytest.raises(ValueError, match="must not be empty"):
        ServerHandshake(psk, node_id="b")


def test_psk_type_is_checked() -> None:
    with pytest.raises(TypeError, match="str or bytes"):
        derive_auth_key(1234)  # type: ignore[arg-type]


def test_proofs_follow_the_documented_formulas() -> None:
    client = ClientHandshake(PSK, node_id="peer-a", urandom=fixed(1), channel_binding=b"tls")
    server = ServerHandshake(PSK, node_id="master", urandom=fixed(2), channel_binding=b"tls")
    challenge = server.handle_hello(client.hello_payload)
    auth = client.handle_challenge(challenge)

    def lp(b: bytes) -> bytes:
        return len(b).to_bytes(8, "big") + b

    transcript = blake3(
        TRANSCRIPT_DOMAIN + lp(client.hello_payload) + lp(b"master") + lp(b"\x02" * 32) + lp(b"tls")
    ).digest()
    key = blake3(PSK.encode(), derive_key_context=AUTH_KEY_CONTEXT).digest()
    assert challenge.nonce == b"\x02" * 32
    assert challenge.proof == blake3(b"server" + transcript, key=key).digest()
    assert auth.proof == blake3(b"client" + transcript, key=key).digest()
    assert client.hello.nonce == b"\x01" * 32


def test_transcript_fields_are_length_prefixed() -> None:
    # Moving a byte from one field to its neighbour must change the transcript.
    a = transcript_hash(b"hello", "ab", b"\x00" * 32, b"c")
    b = transcript_hash(b"hello", "a", b"\x00" * 32, b"bc")
    assert a != b


# -- the happy path --------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(psk=st.text(min_size=1, max_size=20) | st.binary(min_size=1, max_size=20))
def test_matching_keys_authenticate_both_ways(psk: str | bytes) -> None:
    client, server = make_pair(psk, psk)
    challenge = server.handle_hello(client.hello_payload)
    auth = client.handle_challenge(challenge)
    hello = server.handle_auth(auth)
    assert hello == client.hello
    assert server.peer_hello == client.hello
    assert client.server_node_id == "master"


def test_hello_carries_the_client_details() -> None:
    client = ClientHandshake(
        PSK,
        node_id="peer-a",
        role="client",
        software="sift-status/1.0",
        listen_port=7070,
        advertise_addr="10.0.0.5:7070",
    )
    assert decode_payload(client.hello_payload) == client.hello
    assert client.hello.role == "client"
    assert client.hello.listen_port == 7070


def test_nonces_are_fresh() -> None:
    assert ServerHandshake(PSK, node_id="m").nonce != ServerHandshake(PSK, node_id="m").nonce
    assert (
        ClientHandshake(PSK, node_id="a").hello.nonce
        != ClientHandshake(PSK, node_id="a").hello.nonce
    )


# -- failures --------------------------------------------------------------------------------


def test_client_detects_a_server_without_the_key() -> None:
    client, server = make_pair(server_psk="not the key")
    challenge = server.handle_hello(client.hello_payload)
    with pytest.raises(AuthenticationError, match="the server does not know the pre-shared key"):
        client.handle_challenge(challenge)


def test_server_detects_a_client_without_the_key() -> None:
    # A client with the wrong key cannot verify the server, but an attacker would answer anyway.
    attacker = ClientHandshake("guess", node_id="mallory")
    server = ServerHandshake(PSK, node_id="master")
    challenge = server.handle_hello(attacker.hello_payload)
    transcript = transcript_hash(attacker.hello_payload, "master", challenge.nonce)
    forged = Auth(client_proof(derive_auth_key("guess"), transcript))
    with pytest.raises(AuthenticationError, match="wrong pre-shared key"):
        server.handle_auth(forged)
    assert server.peer_hello is None


def test_recorded_auth_replayed_to_a_fresh_server_fails() -> None:
    client, server = make_pair()
    auth = client.handle_challenge(server.handle_hello(client.hello_payload))
    server.handle_auth(auth)  # the genuine session succeeds

    replay_target = ServerHandshake(PSK, node_id="master")  # new connection, new nonce
    replay_target.handle_hello(client.hello_payload)
    with pytest.raises(AuthenticationError, match="wrong pre-shared key"):
        replay_target.handle_auth(auth)


def test_server_proof_reflected_as_client_proof_fails() -> None:
    attacker = ClientHandshake("guess", node_id="mallory")
    server = ServerHandshake(PSK, node_id="master")
    challenge = server.handle_hello(attacker.hello_payload)
    with pytest.raises(AuthenticationError):
        server.handle_auth(Auth(challenge.proof))


def test_tampered_hello_is_detected_by_the_client() -> None:
    client, server = make_pair(listen_port=7070)
    tampered = encode_payload(dataclasses.replace(client.hello, advertise_addr="evil.example:1"))
    challenge = server.handle_hello(tampered)
    with pytest.raises(AuthenticationError):
        client.handle_challenge(challenge)


def test_channel_binding_mismatch_fails() -> None:
    client = ClientHandshake(PSK, node_id="a", channel_binding=b"session-1")
    server = ServerHandshake(PSK, node_id="b", channel_binding=b"session-2")
    with pytest.raises(AuthenticationError):
        client.handle_challenge(server.handle_hello(client.hello_payload))


def test_own_node_id_is_refused_on_both_sides() -> None:
    client = ClientHandshake(PSK, node_id="same")
    server = ServerHandshake(PSK, node_id="same")
    with pytest.raises(AuthenticationError, match="our own node id 'same'"):
        server.handle_hello(client.hello_payload)
    other = ServerHandshake(PSK, node_id="other")
    challenge = other.handle_hello(client.hello_payload)
    relayed = Challenge("same", challenge.nonce, challenge.proof)
    with pytest.raises(AuthenticationError, match="our own node id"):
        client.handle_challenge(relayed)


def test_server_rejects_a_non_hello_first_message() -> None:
    server = ServerHandshake(PSK, node_id="m")
    with pytest.raises(ProtocolError, match="expected Hello, got Ping"):
        server.handle_hello(encode_payload(Ping(1)))


def test_roles_are_checked() -> None:
    with pytest.raises(ValueError, match="role must be one of"):
        ClientHandshake(PSK, node_id="a", role="admin")
    hello = Hello("a", "admin", b"\x00" * 32, "sift", None, None)
    with pytest.raises(ProtocolError, match=r"Hello\.role: unknown role 'admin'"):
        ServerHandshake(PSK, node_id="m").handle_hello(encode_payload(hello))


def test_misuse_is_a_runtime_error() -> None:
    client, server = make_pair()
    with pytest.raises(RuntimeError):
        server.handle_auth(Auth(b"\x00" * 32))
    challenge = server.handle_hello(client.hello_payload)
    client.handle_challenge(challenge)
    with pytest.raises(RuntimeError):
        client.handle_challenge(challenge)


def test_bad_urandom_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ServerHandshake(PSK, node_id="m", urandom=lambda n: b"short")
