"""Mutual pre-shared-key authentication: each side proves it knows the key, which never travels.

::

    client                                              server
      | Hello(node_id, role, nonce_c, ...)       -->      |
      |      <--   Challenge(node_id_s, nonce_s, server_proof)
      | (verify server_proof)                             |
      | Auth(client_proof)                       -->      |
      |                                     (verify client_proof)
      |      <--   HelloAck(node_id_s, manifest_version, observed_addr)

Both proofs are keyed BLAKE3 over one transcript hash that covers the client's Hello exactly as
sent, the server's node id and the server's fresh nonce (and a TLS channel binding, later).
A fresh server nonce per connection defeats replay; the distinct "server"/"client" labels defeat
reflecting one side's proof back as the other's. docs/protocol.md has the full argument.

These classes only compute and check; ``Connection`` drives them and does the framing.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable

from blake3 import blake3

from sift.core.chunk import HASH_SIZE
from sift.protocol.errors import AuthenticationError, ProtocolError
from sift.protocol.messages import (
    NODE_ROLES,
    Auth,
    Challenge,
    Hello,
    decode_payload,
    encode_payload,
)

AUTH_KEY_CONTEXT = "sift 2026-11 psk handshake v1"  # BLAKE3 derive_key context for the PSK
TRANSCRIPT_DOMAIN = b"sift handshake transcript v1"
NONCE_SIZE = HASH_SIZE

Urandom = Callable[[int], bytes]


def derive_auth_key(psk: str | bytes) -> bytes:
    """The 32-byte MAC key both sides derive from the pre-shared key (str is UTF-8 encoded)."""
    if isinstance(psk, str):
        psk = psk.encode("utf-8")
    elif not isinstance(psk, bytes):
        raise TypeError(f"pre-shared key must be str or bytes, got {type(psk).__name__}")
    if not psk:
        raise ValueError("the pre-shared key must not be empty")
    return blake3(psk, derive_key_context=AUTH_KEY_CONTEXT).digest()


def _lp(data: bytes) -> bytes:
    """Length-prefix (u64 big-endian) so that no two field sequences hash the same."""
    return len(data).to_bytes(8, "big") + data


def transcript_hash(
    hello_payload: bytes, server_node_id: str, server_nonce: bytes, channel_binding: bytes = b""
) -> bytes:
    """BLAKE3(TRANSCRIPT_DOMAIN || lp(hello) || lp(server node id) || lp(nonce_s) || lp(cb))."""
    h = blake3(TRANSCRIPT_DOMAIN)
    for part in (hello_payload, server_node_id.encode("utf-8"), server_nonce, channel_binding):
        h.update(_lp(part))
    return h.digest()


def server_proof(auth_key: bytes, transcript: bytes) -> bytes:
    return blake3(b"server" + transcript, key=auth_key).digest()


def client_proof(auth_key: bytes, transcript: bytes) -> bytes:
    return blake3(b"client" + transcript, key=auth_key).digest()


def _fresh_nonce(urandom: Urandom) -> bytes:
    nonce = urandom(NONCE_SIZE)
    if type(nonce) is not bytes or len(nonce) != NONCE_SIZE:
        raise ValueError(f"urandom must return {NONCE_SIZE} bytes")
    return nonce


def _self_connection(node_id: str) -> AuthenticationError:
    # Two honest nodes never share an id. Seeing our own id means we dialled ourselves, or someone
    # is relaying our own handshake back to us; both must fail.
    return AuthenticationError(
        f"the peer claims our own node id {node_id!r}: a connection to ourselves, a relayed "
        "handshake, or two nodes configured with the same id"
    )


class ClientHandshake:
    """The dialling side. Send ``hello_payload`` (it is what the transcript covers, byte for
    byte), then pass the server's Challenge to ``handle_challenge`` and send the Auth it returns.
    """

    def __init__(
        self,
        psk: str | bytes,
        *,
        node_id: str,
        role: str = "peer",
        software: str = "sift",
        listen_port: int | None = None,
        advertise_addr: str | None = None,
        channel_binding: bytes = b"",
        urandom: Urandom = os.urandom,
    ) -> None:
        if role not in NODE_ROLES:
            raise ValueError(f"role must be one of {sorted(NODE_ROLES)}, got {role!r}")
        self._key = derive_auth_key(psk)
        self._channel_binding = bytes(channel_binding)
        self.hello = Hello(
            node_id=node_id,
            role=role,
            nonce=_fresh_nonce(urandom),
            software=software,
            listen_port=listen_port,
            advertise_addr=advertise_addr,
        )
        self.hello_payload = encode_payload(self.hello)
        self.server_node_id: str | None = None  # set once the server has proven itself

    def handle_challenge(self, challenge: Challenge) -> Auth:
        """Verify the server's proof and return our own. Raises AuthenticationError."""
        if self.server_node_id is not None:
            raise RuntimeError("handle_challenge() called twice")
        if challenge.node_id == self.hello.node_id:
            raise _self_connection(challenge.node_id)
        transcript = transcript_hash(
            self.hello_payload, challenge.node_id, challenge.nonce, self._channel_binding
        )
        if not hmac.compare_digest(challenge.proof, server_proof(self._key, transcript)):
            raise AuthenticationError(
                "the server does not know the pre-shared key (its proof did not verify)"
            )
        self.server_node_id = challenge.node_id
        return Auth(proof=client_proof(self._key, transcript))


class ServerHandshake:
    """The accepting side, one per connection (the nonce is drawn here, fresh each time).
    ``handle_hello`` returns the Challenge to send; ``handle_auth`` checks the client's proof."""

    def __init__(
        self,
        psk: str | bytes,
        *,
        node_id: str,
        channel_binding: bytes = b"",
        urandom: Urandom = os.urandom,
    ) -> None:
        self._key = derive_auth_key(psk)
        self._channel_binding = bytes(channel_binding)
        self.node_id = node_id
        self.nonce = _fresh_nonce(urandom)
        self._hello: Hello | None = None
        self._transcript: bytes | None = None
        self.peer_hello: Hello | None = None  # set only once the client has proven itself

    def handle_hello(self, hello_payload: bytes) -> Challenge:
        """Take the client's first frame payload, exactly as received, and answer it.

        Raises ProtocolError if it is not a well-formed Hello."""
        if self._transcript is not None:
            raise RuntimeError("handle_hello() called twice")
        hello = decode_payload(hello_payload)
        if type(hello) is not Hello:
            raise ProtocolError(f"expected Hello, got {type(hello).__name__}")
        if hello.role not in NODE_ROLES:
            raise ProtocolError(
                f"Hello.role: unknown role {hello.role!r} (expected one of {sorted(NODE_ROLES)})"
            )
        if hello.node_id == self.node_id:
            raise _self_connection(hello.node_id)
        self._hello = hello
        self._transcript = transcript_hash(
            bytes(hello_payload), self.node_id, self.nonce, self._channel_binding
        )
        return Challenge(
            node_id=self.node_id,
            nonce=self.nonce,
            proof=server_proof(self._key, self._transcript),
        )

    def handle_auth(self, auth: Auth) -> Hello:
        """Verify the client's proof; returns its (now authenticated) Hello.
        Raises AuthenticationError on a wrong key or a replayed Auth."""
        if self._transcript is None or self._hello is None:
            raise RuntimeError("handle_auth() before handle_hello()")
        if self.peer_hello is not None:
            raise RuntimeError("handle_auth() called twice")
        if not hmac.compare_digest(auth.proof, client_proof(self._key, self._transcript)):
            raise AuthenticationError("wrong pre-shared key: the client's proof did not verify")
        self.peer_hello = self._hello
        return self._hello
