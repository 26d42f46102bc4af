"""Two Connection objects talking to each other through plain byte strings: no sockets."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sift.protocol import HANDSHAKE_MAX_FRAME, AuthenticationError, ProtocolError
from sift.protocol.connection import Connection, Role
from sift.protocol.frames import FRAME_OVERHEAD, FrameDecoder, encode_frame
from sift.protocol.handshake import client_proof, derive_auth_key, transcript_hash
from sift.protocol.messages import (
    Auth,
    Challenge,
    ChunkRequest,
    ChunkResponse,
    Error,
    Goodbye,
    Hello,
    HelloAck,
    ManifestPush,
    ManifestResponse,
    Message,
    Ping,
    Pong,
    decode_payload,
    encode_message,
)
from tests.test_protocol_messages import app_message

PSK = "s3cret"
H = bytes(range(32))


def client(psk: str = PSK, **kwargs: object) -> Connection:
    return Connection(Role.CLIENT, psk, "peer-a", listen_port=7070, **kwargs)  # type: ignore[arg-type]


def server(psk: str = PSK, **kwargs: object) -> Connection:
    return Connection(Role.SERVER, psk, "master", **kwargs)  # type: ignore[arg-type]


def deliver(data: bytes, to: Connection) -> list[Message]:
    """Feed bytes to a connection and collect what it surfaces to the application."""
    to.receive_data(data)
    return list(iter(to.next_message, None))


def handshake(c: Connection, s: Connection) -> None:
    assert deliver(c.initiate(), s) == []
    assert deliver(s.data_to_send(), c) == []
    (hello,) = deliver(c.data_to_send(), s)
    assert isinstance(hello, Hello)
    (ack,) = deliver(s.accept(manifest_version=12, observed_addr="192.0.2.7:51000"), c)
    assert isinstance(ack, HelloAck)


def frames_in(data: bytes) -> list[Message]:
    decoder = FrameDecoder()
    decoder.feed(data)
    return [decode_payload(p) for p in iter(decoder.next_payload, None)]


# -- the happy path --------------------------------------------------------------------------


def test_handshake_completes_without_sockets() -> None:
    c, s = client(advertise_addr="10.0.0.5:7070"), server()
    assert not c.authenticated
    assert not s.authenticated
    handshake(c, s)
    assert c.authenticated
    assert s.authenticated
    assert c.peer_node_id == "master"
    assert s.peer_node_id == "peer-a"
    assert s.peer_hello is not None
    assert s.peer_hello.listen_port == 7070
    assert s.peer_hello.advertise_addr == "10.0.0.5:7070"
    assert c.hello_ack == HelloAck("master", 12, "192.0.2.7:51000")
    assert c.data_to_send() == s.data_to_send() == b""


def test_messages_flow_both_ways_after_the_handshake() -> None:
    c, s = client(), server()
    handshake(c, s)
    assert deliver(c.send(ChunkRequest(1, (H,), ())), s) == [ChunkRequest(1, (H,), ())]
    reply = ChunkResponse(1, ((H, b"chunk"),), (), (), ())
    assert deliver(s.send(reply) + s.send(ManifestPush(13)), c) == [reply, ManifestPush(13)]
    # Error and Goodbye are ordinary messages once authenticated.
    assert deliver(c.send(Goodbye("shutting down")), s) == [Goodbye("shutting down")]


@settings(max_examples=30, deadline=None)
@given(
    to_server=st.lists(app_message, max_size=5),
    to_client=st.lists(app_message, max_size=5),
    cuts=st.lists(st.integers(0, 5000), max_size=8),
)
def test_random_traffic_split_anywhere(
    to_server: list[Message], to_client: list[Message], cuts: list[int]
) -> None:
    c, s = client(), server()
    handshake(c, s)
    for sender, receiver, msgs in ((c, s, to_server), (s, c, to_client)):
        stream = b"".join(sender.send(m) for m in msgs)
        points = sorted({x % (len(stream) + 1) for x in cuts} | {0, len(stream)})
        got: list[Message] = []
        for a, b in itertools.pairwise(points):
            got += deliver(stream[a:b], receiver)
        assert got == msgs


def test_handshake_byte_by_byte() -> None:
    c, s = client(), server()

    def trickle(data: bytes, to: Connection) -> list[Message]:
        out: list[Message] = []
        for i in range(len(data)):
            out += deliver(data[i : i + 1], to)
        return out

    trickle(c.initiate(), s)
    trickle(s.data_to_send(), c)
    assert [type(m) for m in trickle(c.data_to_send(), s)] == [Hello]
    assert [type(m) for m in trickle(s.accept(1, "x"), c)] == [HelloAck]


def test_big_frames_allowed_only_after_authentication() -> None:
    c, s = client(), server()
    big = ChunkResponse(1, ((H, b"x" * (HANDSHAKE_MAX_FRAME * 4)),), (), (), ())
    s.receive_data(c.initiate())
    s.next_message()
    with pytest.raises(ProtocolError, match=f"exceeds the {HANDSHAKE_MAX_FRAME}-byte limit"):
        s.receive_data(encode_message(big))

    c, s = client(), server()
    handshake(c, s)
    assert deliver(c.send(big), s) == [big]


def test_frames_pipelined_behind_helloack_use_the_full_limit() -> None:
    c, s = client(), server()
    s.receive_data(c.initiate())
    s.next_message()
    c.receive_data(s.data_to_send())
    c.next_message()
    deliver(c.data_to_send(), s)
    big = ManifestResponse(1, 2, None, b"m" * (HANDSHAKE_MAX_FRAME + 1))
    c.receive_data(s.accept(1, "x") + s.send(big))  # one read holds both frames
    assert [type(m) for m in iter(c.next_message, None)] == [HelloAck, ManifestResponse]


# -- authentication failures -----------------------------------------------------------------


def test_wrong_psk_fails_on_both_sides() -> None:
    c, s = client(psk="wrong"), server()
    deliver(c.initiate(), s)
    with pytest.raises(AuthenticationError, match="the server does not know the pre-shared key"):
        deliver(s.data_to_send(), c)
    goodbye = c.data_to_send()
    assert frames_in(goodbye) == [Error(None, "auth_failed", str(c.error))]
    with pytest.raises(AuthenticationError, match="the client rejected the handshake"):
        deliver(goodbye, s)
    assert s.data_to_send() == b""  # no reply to a peer that is already closing
    assert not c.authenticated
    assert not s.authenticated


def test_server_rejects_a_forged_auth_and_the_client_hears_auth_failed() -> None:
    # An attacker without the key skips verifying the server and forges an answer.
    s = server()
    attacker = Connection(Role.CLIENT, "guess", "mallory")
    hello_frame = attacker.initiate()
    deliver(hello_frame, s)
    (challenge,) = frames_in(s.data_to_send())
    transcript = transcript_hash(hello_frame[9:], "master", challenge.nonce)  # type: ignore[attr-defined]
    forged = encode_message(Auth(client_proof(derive_auth_key("guess"), transcript)))
    with pytest.raises(AuthenticationError, match="wrong pre-shared key"):
        deliver(forged, s)
    (error,) = frames_in(s.data_to_send())
    assert isinstance(error, Error)
    assert error.code == "auth_failed"

    # A real client receiving that Error mid-handshake reports an AuthenticationError.
    c = client()
    c.initiate()
    with pytest.raises(AuthenticationError, match="rejected the handshake"):
        deliver(encode_message(error), c)


def test_recorded_auth_replayed_against_a_fresh_server_fails() -> None:
    c, s = client(), server()
    hello_frame = c.initiate()
    deliver(hello_frame, s)
    deliver(s.data_to_send(), c)
    auth_frame = c.data_to_send()
    deliver(auth_frame, s)  # the genuine session authenticates
    assert s.peer_hello is not None

    fresh = server()
    deliver(hello_frame, fresh)  # replayed Hello: accepted, but a new nonce goes out
    with pytest.raises(AuthenticationError, match="wrong pre-shared key"):
        deliver(auth_frame, fresh)
    # The fresh Challenge (never answered correctly), then the Error explaining the refusal.
    assert [type(m) for m in frames_in(fresh.data_to_send())] == [Challenge, Error]


def test_channel_binding_mismatch_fails() -> None:
    c, s = client(channel_binding=b"A"), server(channel_binding=b"B")
    deliver(c.initiate(), s)
    with pytest.raises(AuthenticationError):
        deliver(s.data_to_send(), c)


def test_helloack_must_name_the_verified_server() -> None:
    c, s = client(), server()
    deliver(c.initiate(), s)
    deliver(s.data_to_send(), c)
    with pytest.raises(ProtocolError, match="differs from the Challenge's 'master'"):
        deliver(encode_message(HelloAck("impostor", 1, "x")), c)


def test_server_may_refuse_a_verified_client() -> None:
    c, s = client(), server()
    deliver(c.initiate(), s)
    deliver(s.data_to_send(), c)
    deliver(c.data_to_send(), s)
    refusal = s.send(Error(None, "duplicate_node", "peer-a is already connected"))
    with pytest.raises(ProtocolError, match="refused the connection \\('duplicate_node'\\)"):
        deliver(refusal, c)


def test_goodbye_during_handshake() -> None:
    c = client()
    c.initiate()
    with pytest.raises(ProtocolError, match="said goodbye during the handshake"):
        deliver(encode_message(Goodbye("maintenance")), c)


# -- ordering --------------------------------------------------------------------------------


def test_server_expects_hello_first() -> None:
    s = server()
    with pytest.raises(ProtocolError, match="expected Hello, got Ping"):
        deliver(encode_message(Ping(1)), s)
    assert [type(m) for m in frames_in(s.data_to_send())] == [Error]


def test_server_expects_auth_second() -> None:
    c, s = client(), server()
    deliver(c.initiate(), s)
    with pytest.raises(ProtocolError, match="expected Auth, got ChunkRequest"):
        deliver(encode_message(ChunkRequest(1, (), ())), s)


def test_client_expects_challenge_then_helloack() -> None:
    c = client()
    c.initiate()
    with pytest.raises(ProtocolError, match="expected Challenge, got HelloAck"):
        deliver(encode_message(HelloAck("master", 1, "x")), c)

    c, s = client(), server()
    deliver(c.initiate(), s)
    deliver(s.data_to_send(), c)
    with pytest.raises(ProtocolError, match="expected HelloAck, got ManifestPush"):
        deliver(encode_message(ManifestPush(1)), c)


def test_client_must_wait_for_helloack() -> None:
    c, s = client(), server()
    deliver(c.initiate(), s)
    deliver(s.data_to_send(), c)
    deliver(c.data_to_send(), s)
    with pytest.raises(ProtocolError, match="before the handshake completed"):
        deliver(encode_message(Ping(1)), s)


def test_handshake_messages_after_authentication_are_errors() -> None:
    c, s = client(), server()
    handshake(c, s)
    stray = Hello("x", "peer", H, "sift", None, None)
    with pytest.raises(ProtocolError, match="unexpected Hello after the handshake"):
        deliver(encode_message(stray), s)
    with pytest.raises(ProtocolError, match="unexpected Auth after the handshake"):
        deliver(encode_message(Auth(H)), c)


def test_server_speaking_first_is_an_error() -> None:
    c = client()
    with pytest.raises(ProtocolError, match="not sent our Hello"):
        deliver(encode_message(Ping(1)), c)


def test_local_misuse_raises_runtime_error() -> None:
    c, s = client(), server()
    with pytest.raises(RuntimeError, match="cannot send Ping before the handshake completes"):
        c.send(Ping(1))
    with pytest.raises(RuntimeError, match="sent by the connection itself"):
        c.send(Auth(H))
    with pytest.raises(RuntimeError, match="only a client initiates"):
        s.initiate()
    with pytest.raises(RuntimeError, match="HelloAck is sent by a server"):
        s.accept(1, "x")
    c.initiate()
    with pytest.raises(RuntimeError, match="only be called once"):
        c.initiate()


def test_helloack_must_carry_our_node_id() -> None:
    c, s = client(), server()
    deliver(c.initiate(), s)
    deliver(s.data_to_send(), c)
    deliver(c.data_to_send(), s)
    with pytest.raises(ValueError, match="not ours"):
        s.send(HelloAck("someone-else", 1, "x"))
    assert not s.authenticated
    assert deliver(s.accept(1, "x"), c)  # still possible after the mistake


def test_send_flushes_pending_handshake_bytes_first() -> None:
    c, s = client(), server()
    deliver(c.initiate(), s)  # the Challenge is now pending in s
    out = s.send(Goodbye("bye"))
    assert [type(m) for m in frames_in(out)] == [Challenge, Goodbye]
    assert s.data_to_send() == b""


# -- malformed input and EOF -----------------------------------------------------------------


def test_garbage_poisons_the_connection_and_tells_the_peer() -> None:
    s = server()
    with pytest.raises(ProtocolError, match="not a sift peer"):
        s.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    (error,) = frames_in(s.data_to_send())
    assert isinstance(error, Error)
    assert error.code == "protocol_error"
    assert "not a sift peer" in error.message
    with pytest.raises(ProtocolError, match="unusable after an earlier error"):
        s.next_message()
    with pytest.raises(RuntimeError, match="failed connection"):
        s.send(Pong(1))


def test_malformed_message_after_authentication() -> None:
    c, s = client(), server()
    handshake(c, s)
    with pytest.raises(ProtocolError, match="unknown message type 99"):
        deliver(encode_frame(b"\x91\x63"), s)
    assert s.error is not None


def test_eof_mid_frame() -> None:
    c, s = client(), server()
    handshake(c, s)
    s.receive_data(c.send(Ping(7))[:-1])
    assert s.next_message() is None
    s.receive_data(b"")
    with pytest.raises(ProtocolError, match=r"middle of a frame \(got 11 of 12 bytes\)"):
        s.next_message()


def test_eof_during_handshake() -> None:
    c, s = client(), server()
    deliver(c.initiate(), s)
    s.receive_data(b"")
    with pytest.raises(ProtocolError, match=r"closed during the handshake \(waiting for Auth\)"):
        s.next_message()


def test_clean_eof_after_authentication() -> None:
    c, s = client(), server()
    handshake(c, s)
    assert deliver(c.send(Ping(1)), s) == [Ping(1)]
    s.receive_data(b"")
    assert s.next_message() is None
    assert s.eof_received
    assert s.error is None
    with pytest.raises(RuntimeError, match="after EOF"):
        s.receive_data(b"more")


# -- hygiene ---------------------------------------------------------------------------------


def test_protocol_package_does_no_io_and_no_ui() -> None:
    code = (
        "import sys, sift.protocol;"
        "bad = {'asyncio', 'socket', 'threading', 'selectors', 'textual', 'pickle'};"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    source = "\n".join(
        p.read_text() for p in (Path(__file__).parent.parent / "sift" / "protocol").glob("*.py")
    )
    for word in ("pickle", "eval(", "exec("):
        assert word not in source


# -- whole frames (the asyncio layer's readexactly path) --------------------------------------


def _whole(data: bytes, to: Connection) -> list[Message]:
    """Deliver frames one whole frame at a time: header, then exactly its payload."""
    out = []
    while data:
        size = to.frame_payload_size(data[:FRAME_OVERHEAD])
        msg = to.receive_frame(data[FRAME_OVERHEAD : FRAME_OVERHEAD + size])
        data = data[FRAME_OVERHEAD + size :]
        if msg is not None:
            out.append(msg)
    return out


def test_whole_frames_give_the_same_messages_as_the_stream() -> None:
    c, s = client(), server()
    handshake(c, s)
    reply = ChunkResponse(1, ((H, b"x" * 70_000),), (), (), ())
    frames = s.send(reply) + s.send(ManifestPush(3))
    assert _whole(frames, c) == [reply, ManifestPush(3)]
    # ...and mixing with the stream path at a boundary is fine.
    assert deliver(s.send(Ping(1)), c) == [Ping(1)]
    assert _whole(s.send(Ping(2)), c) == [Ping(2)]


def test_a_bad_whole_frame_header_poisons_and_tells_the_peer() -> None:
    c, s = client(), server()
    handshake(c, s)
    with pytest.raises(ProtocolError, match="not a sift peer"):
        s.frame_payload_size(b"\x00\x00\x00\x09HTTP\x01")
    (error,) = frames_in(s.data_to_send())
    assert isinstance(error, Error)
    assert "bad frame magic" in error.message
    with pytest.raises(ProtocolError, match="unusable after an earlier error"):
        s.receive_frame(b"\x91\x07")


def test_whole_frames_respect_the_frame_limit_and_message_rules() -> None:
    c, s = client(max_frame_size=1000), server()
    handshake(c, s)
    with pytest.raises(ProtocolError, match="exceeds the 1000-byte limit"):
        c.frame_payload_size(encode_frame(b"\x00" * 2000, max_frame_size=4000)[:FRAME_OVERHEAD])
    c2, s2 = client(), server()
    handshake(c2, s2)
    with pytest.raises(ProtocolError, match="unknown message type 99"):
        s2.receive_frame(b"\x91\x63")
    assert s2.error is not None


def test_whole_frames_only_when_open_and_at_a_boundary() -> None:
    c, s = client(), server()
    with pytest.raises(RuntimeError, match="open connection"):
        s.frame_payload_size(encode_frame(b"\x91\x07")[:FRAME_OVERHEAD])
    handshake(c, s)
    s.receive_data(c.send(Ping(1))[:5])  # half a frame through the stream path
    assert not s.at_frame_boundary
    with pytest.raises(RuntimeError, match="frame boundary"):
        s.frame_payload_size(c.send(Ping(2))[:FRAME_OVERHEAD])
