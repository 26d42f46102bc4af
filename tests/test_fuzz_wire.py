"""Fuzzing the sans-IO connection as a daemon meets it: arbitrary bytes in arbitrary splits, and
real handshake frames in the wrong order, repeated or replayed. Whatever arrives, the only
exception is ProtocolError, the connection never counts as authenticated without the key, and
what it buffers stays within one handshake frame."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sift.protocol import HANDSHAKE_MAX_FRAME, ProtocolError
from sift.protocol.connection import Connection, Role
from sift.protocol.frames import LENGTH_SIZE
from sift.protocol.messages import (
    ChunkRequest,
    Error,
    Goodbye,
    HelloAck,
    ManifestPush,
    Ping,
    encode_message,
)

PSK = "fuzz-key"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _server() -> Connection:
    return Connection(Role.SERVER, PSK, "master")


def _feed_all(conn: Connection, pieces: list[bytes]) -> str:
    """Feed pieces the way channel.py does; returns how it ended: "open", "waiting" or
    "error". Any exception but ProtocolError fails the test by propagating."""
    for piece in pieces:
        try:
            conn.receive_data(piece)
            while conn.next_message() is not None:
                pass
        except ProtocolError:
            # Poisoned: every later call says so again, and an Error frame waits to be sent.
            try:
                conn.next_message()
            except ProtocolError:
                pass
            else:
                raise AssertionError("a failed connection yielded again") from None
            return "error"
        # Memory: at most one partial handshake frame beyond what this piece brought in.
        assert conn._decoder.buffered <= HANDSHAKE_MAX_FRAME + LENGTH_SIZE + len(piece)
    return "open" if conn.authenticated else "waiting"


@FUZZ
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=12))
def test_server_meets_arbitrary_bytes(pieces: list[bytes]) -> None:
    conn = _server()
    assert _feed_all(conn, pieces) in ("waiting", "error")
    assert not conn.authenticated


def _frame_pool() -> dict[str, bytes]:
    """Real frames a hostile client could send: its own Hello (with or without the key), an
    Auth recorded against another server's challenge, and messages that belong elsewhere."""
    rogue = Connection(Role.CLIENT, "wrong key", "rogue")
    honest = Connection(Role.CLIENT, PSK, "honest")
    other_server = Connection(Role.SERVER, PSK, "master")
    honest_hello = honest.initiate()
    other_server.receive_data(honest_hello)
    assert other_server.next_message() is None
    challenge = other_server.data_to_send()
    honest.receive_data(challenge)
    assert honest.next_message() is None
    replayed_auth = honest.data_to_send()
    rogue_hello = rogue.initiate()
    return {
        "rogue hello": rogue_hello,
        "honest hello": honest_hello,
        "replayed auth": replayed_auth,
        "challenge": challenge,
        "hello ack": encode_message(HelloAck("master", 1, "x")),
        "ping": encode_message(Ping(1)),
        "push": encode_message(ManifestPush(3)),
        "request": encode_message(ChunkRequest(1, (bytes(32),), ())),
        "error": encode_message(Error(None, "x", "y")),
        "goodbye": encode_message(Goodbye("bye")),
    }


POOL = _frame_pool()


@FUZZ
@given(
    order=st.lists(st.sampled_from(sorted(POOL)), min_size=1, max_size=8),
    split=st.integers(min_value=1, max_value=97),
)
def test_handshake_frames_in_any_order_never_authenticate(order: list[str], split: int) -> None:
    """A replayed Auth answers another server's nonce, so no order of these frames, however
    split, may open the connection; everything out of place is a ProtocolError."""
    stream = b"".join(POOL[name] for name in order)
    pieces = [stream[i : i + split] for i in range(0, len(stream), split)]
    conn = _server()
    outcome = _feed_all(conn, pieces)
    assert outcome in ("waiting", "error")
    assert not conn.authenticated
    if order[0] not in ("rogue hello", "honest hello"):
        assert outcome == "error"  # anything but a Hello first is refused at once


@FUZZ
@given(st.lists(st.binary(min_size=1, max_size=200), max_size=8))
def test_client_meets_an_arbitrary_server(pieces: list[bytes]) -> None:
    conn = Connection(Role.CLIENT, PSK, "peer")
    conn.initiate()
    assert _feed_all(conn, pieces) in ("waiting", "error")
    assert not conn.authenticated


@FUZZ
@given(
    prefix=st.sampled_from(sorted(POOL)),
    length=st.integers(min_value=0, max_value=2**32 - 1),
    tail=st.binary(max_size=64),
)
def test_any_length_prefix_after_a_hello(prefix: str, length: int, tail: bytes) -> None:
    """Oversized, undersized and plausible lengths after a first frame: refused as soon as the
    header is in, never buffered beyond the handshake limit."""
    conn = _server()
    stream = POOL[prefix] + length.to_bytes(4, "big") + tail
    _feed_all(conn, [stream[:7], stream[7:]])
    assert not conn.authenticated
