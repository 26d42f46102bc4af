"""A sans-I/O protocol connection (in the style of h11): bytes in, messages out, and back.

The object never touches a socket. An asyncio layer drives it like this::

    conn = Connection(Role.CLIENT, psk, node_id="a")     # or Role.SERVER
    writer.write(conn.initiate())                        # client only: the Hello frame
    while True:
        data = await reader.read(65536)
        try:
            conn.receive_data(data)                      # b"" means EOF
            while (msg := conn.next_message()) is not None:
                handle(msg)                              # may call conn.send(...) / accept(...)
        except ProtocolError:                            # incl. AuthenticationError
            writer.write(conn.data_to_send())            # an Error frame telling the peer why
            break                                        # ... then close the connection
        writer.write(conn.data_to_send())                # handshake replies (Challenge, Auth)
        if not data:
            break                                        # clean EOF after the handshake

Handshake: Challenge and Auth are handled internally (replies queue up in ``data_to_send()``).
The application sees two handshake messages, both only after the peer has proven the key:

* the server's ``next_message()`` returns the client's ``Hello``; the server answers with
  ``accept(manifest_version, observed_addr)`` (or sends an ``Error`` and closes to refuse it);
* the client's ``next_message()`` returns the server's ``HelloAck``: the connection is open.

After that every message goes to the application, and ``send()`` turns messages into bytes.
"""

from __future__ import annotations

import enum
import os

from sift.protocol.errors import AuthenticationError, ProtocolError
from sift.protocol.frames import DEFAULT_MAX_FRAME, FrameDecoder, check_header, encode_frame
from sift.protocol.handshake import ClientHandshake, ServerHandshake, Urandom
from sift.protocol.messages import (
    HANDSHAKE_MESSAGES,
    Auth,
    Challenge,
    Error,
    Goodbye,
    Hello,
    HelloAck,
    Message,
    decode_payload,
    encode_frame_head,
    encode_message,
    encode_message_parts,
)

# Frames before authentication are tiny; an unauthenticated stranger gets no big buffers.
HANDSHAKE_MAX_FRAME = 64 * 1024

_ERROR_TEXT_LIMIT = 500  # keep error frames and log lines short whatever a peer sends


class Role(enum.Enum):
    """Which end of the TCP connection we are: the dialler (CLIENT) or the listener (SERVER).
    Not to be confused with ``Hello.role`` (peer / client / master)."""

    CLIENT = "client"
    SERVER = "server"


class _State(enum.Enum):
    CLIENT_IDLE = "before initiate()"
    AWAIT_CHALLENGE = "Challenge"
    AWAIT_HELLO_ACK = "HelloAck"
    AWAIT_HELLO = "Hello"
    AWAIT_AUTH = "Auth"
    AWAIT_ACCEPT = "accept()"  # server: client verified, application must send HelloAck
    OPEN = "open"
    FAILED = "failed"


# The one message each handshake state accepts (Error/Goodbye aside).
_EXPECTED: dict[_State, type[Message]] = {
    _State.AWAIT_HELLO: Hello,
    _State.AWAIT_AUTH: Auth,
    _State.AWAIT_CHALLENGE: Challenge,
    _State.AWAIT_HELLO_ACK: HelloAck,
}


def _clip(text: str) -> str:
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[:_ERROR_TEXT_LIMIT] + "..."


class Connection:
    """One end of one sift connection. Not thread-safe; no I/O.

    ``node_role``, ``software``, ``listen_port`` and ``advertise_addr`` fill the client's Hello
    and are ignored by a server. ``max_frame_size`` bounds frames both ways once authenticated
    (before that, frames are capped at HANDSHAKE_MAX_FRAME). ``channel_binding`` (e.g. a TLS
    exporter value) must be equal on both sides or the handshake fails.
    """

    def __init__(
        self,
        our_role: Role,
        psk: str | bytes,
        node_id: str,
        *,
        node_role: str = "peer",
        software: str = "sift",
        listen_port: int | None = None,
        advertise_addr: str | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME,
        channel_binding: bytes = b"",
        urandom: Urandom = os.urandom,
    ) -> None:
        if not isinstance(our_role, Role):
            raise TypeError(f"our_role must be a Role, got {our_role!r}")
        self.our_role = our_role
        self.node_id = node_id
        self.max_frame_size = max_frame_size
        self._decoder = FrameDecoder(min(max_frame_size, HANDSHAKE_MAX_FRAME))
        self._pending = bytearray()  # bytes produced internally, handed out by data_to_send()
        self._eof = False
        self._error: ProtocolError | None = None
        self._client_hs: ClientHandshake | None = None
        self._server_hs: ServerHandshake | None = None
        self.peer_hello: Hello | None = None
        self.hello_ack: HelloAck | None = None
        if our_role is Role.CLIENT:
            self._client_hs = ClientHandshake(
                psk,
                node_id=node_id,
                role=node_role,
                software=software,
                listen_port=listen_port,
                advertise_addr=advertise_addr,
                channel_binding=channel_binding,
                urandom=urandom,
            )
            self._state = _State.CLIENT_IDLE
        else:
            self._server_hs = ServerHandshake(
                psk, node_id=node_id, channel_binding=channel_binding, urandom=urandom
            )
            self._state = _State.AWAIT_HELLO

    # -- state -------------------------------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        """True once the handshake is complete and application messages may flow both ways."""
        return self._state is _State.OPEN

    @property
    def peer_node_id(self) -> str | None:
        """The peer's node id, once the peer has proven it knows the key."""
        if self._client_hs is not None:
            return self._client_hs.server_node_id
        return self.peer_hello.node_id if self.peer_hello is not None else None

    @property
    def eof_received(self) -> bool:
        return self._eof

    @property
    def error(self) -> ProtocolError | None:
        """The error that broke this connection, if any."""
        return self._error

    def __repr__(self) -> str:
        return (
            f"<Connection {self.our_role.name} {self.node_id!r} <-> {self.peer_node_id!r} "
            f"state={self._state.name}>"
        )

    # -- output ------------------------------------------------------------------------------

    def initiate(self) -> bytes:
        """Client only, first call: the Hello frame to write."""
        if self._client_hs is None:
            raise RuntimeError("only a client initiates; a server waits for the Hello")
        if self._state is not _State.CLIENT_IDLE:
            raise RuntimeError("initiate() may only be called once")
        self._state = _State.AWAIT_CHALLENGE
        return encode_frame(self._client_hs.hello_payload, max_frame_size=HANDSHAKE_MAX_FRAME)

    def send(self, msg: Message) -> bytes:
        """Encode ``msg`` and return the bytes to write, preceded by anything still pending from
        ``data_to_send()`` so ordering is always right.

        Raises RuntimeError if the message is not allowed now (application messages before the
        handshake completes; Hello/Challenge/Auth at all, the connection sends those itself) and
        ValueError if a field is invalid or the frame would exceed ``max_frame_size``.
        """
        parts = self.send_parts(msg)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def send_parts(self, msg: Message) -> tuple[bytes, ...]:
        """:meth:`send`, as pieces to write in order: a message whose last field is a large
        ``bytes`` (an encoded manifest) is not copied into a frame (see
        ``encode_message_parts``)."""
        opening = self._check_sendable(msg)
        parts = encode_message_parts(msg, max_frame_size=self.max_frame_size)
        if opening:
            assert isinstance(msg, HelloAck)
            self.hello_ack = msg
            self._open()
        if self._pending:
            parts = (self.data_to_send() + parts[0], *parts[1:])
        return parts

    def send_head(self, msg: Message, tail_size: int) -> bytes:
        """:meth:`send` for a message whose last field (a ``bytes`` of ``tail_size`` bytes, e.g.
        an encoded manifest read from disk in parts) the caller writes itself right after the
        returned bytes; that field's value in ``msg`` is ignored. An open connection only."""
        if self._check_sendable(msg) or self._state is not _State.OPEN:
            raise RuntimeError("send_head() only on an open connection")
        head = encode_frame_head(msg, tail_size, max_frame_size=self.max_frame_size)
        return self.data_to_send() + head if self._pending else head

    def _check_sendable(self, msg: Message) -> bool:
        """RuntimeError/ValueError for a message not allowed now; True for the HelloAck that
        opens the connection."""
        if self._error is not None:
            raise RuntimeError(f"cannot send on a failed connection ({self._error})")
        kind = type(msg)
        opening = False
        if kind in (Hello, Challenge, Auth):
            raise RuntimeError(f"{kind.__name__} is sent by the connection itself")
        if kind is HelloAck:
            if self._state is not _State.AWAIT_ACCEPT:
                raise RuntimeError(
                    "HelloAck is sent by a server once the client has authenticated "
                    f"(state: {self._state.name})"
                )
            assert isinstance(msg, HelloAck)
            if msg.node_id != self.node_id:
                raise ValueError(f"HelloAck.node_id {msg.node_id!r} is not ours ({self.node_id!r})")
            opening = True
        elif kind not in (Error, Goodbye) and self._state is not _State.OPEN:
            raise RuntimeError(f"cannot send {kind.__name__} before the handshake completes")
        return opening

    def accept(self, manifest_version: int, observed_addr: str) -> bytes:
        """Server: complete the handshake of the client whose Hello ``next_message()`` just
        returned. Returns the HelloAck frame to write."""
        return self.send(HelloAck(self.node_id, manifest_version, observed_addr))

    def data_to_send(self) -> bytes:
        """Bytes the connection produced by itself (handshake replies, a final Error frame).
        Write them after every ``next_message()`` loop, and after a ProtocolError before
        closing."""
        out = bytes(self._pending)
        self._pending.clear()
        return out

    # -- input -------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the peer; ``b""`` signals EOF. Call ``next_message()`` after."""
        if self._eof:
            raise RuntimeError("receive_data() after EOF")
        if not data:
            self._eof = True
            return
        if self._error is not None:
            raise ProtocolError(f"connection unusable after an earlier error: {self._error}")
        try:
            self._decoder.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def next_message(self) -> Message | None:
        """The next message for the application, or None when more data is needed (or after a
        clean EOF; see ``eof_received``). Handshake frames are consumed here. Raises
        ProtocolError (AuthenticationError for handshake failures); the connection is then
        dead and ``data_to_send()`` holds an Error frame for the peer."""
        if self._error is not None:
            raise ProtocolError(f"connection unusable after an earlier error: {self._error}")
        try:
            while True:
                payload = self._decoder.next_payload()
                if payload is None:
                    if self._eof:
                        self._decoder.check_eof()
                        if self._state is not _State.OPEN:
                            raise ProtocolError(
                                "connection closed during the handshake "
                                f"(waiting for {self._state.value})"
                            )
                    return None
                msg = self._handle(decode_payload(payload), payload)
                if msg is not None:
                    return msg
        except ProtocolError as exc:
            if self._error is None:
                self._fail(exc)
            raise

    # -- whole frames ------------------------------------------------------------------------
    # Once open, a caller that can read exact byte counts (asyncio's readexactly) may hand over
    # whole frames instead of a byte stream: the header first, then exactly the payload it
    # announced. That spares the stream decoder's two copies of every payload. Use it only at a
    # frame boundary (``at_frame_boundary``), and go back to receive_data() for the rest of a
    # frame cut short by EOF, so truncation is reported in the usual words.

    @property
    def at_frame_boundary(self) -> bool:
        """No partial frame is buffered from receive_data()."""
        return self._decoder.at_frame_boundary

    def frame_payload_size(self, header: bytes | bytearray) -> int:
        """Validate one frame's header (FRAME_OVERHEAD bytes) and return its payload's size.
        Only on an open connection at a frame boundary. Raises ProtocolError (the connection is
        then dead and ``data_to_send()`` holds an Error frame for the peer)."""
        self._check_whole_frames()
        try:
            return check_header(header, self._decoder.max_frame_size)
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def receive_frame(self, payload: bytes | bytearray | memoryview) -> Message | None:
        """The message in one whole frame's payload (its header went to frame_payload_size)."""
        self._check_whole_frames()
        try:
            return self._handle(decode_payload(payload), payload)
        except ProtocolError as exc:
            if self._error is None:
                self._fail(exc)
            raise

    def take_buffered(self) -> bytes:
        """Bytes of a partial frame received with receive_data(), taken out of the connection
        so the caller can go on with whole frames (``at_frame_boundary`` is then true). Only on
        an open connection, after draining next_message()."""
        if self._state is not _State.OPEN:
            raise RuntimeError("take_buffered() only on an open connection")
        return self._decoder.take_buffered()

    def _check_whole_frames(self) -> None:
        if self._error is not None:
            raise ProtocolError(f"connection unusable after an earlier error: {self._error}")
        if self._state is not _State.OPEN or not self._decoder.at_frame_boundary:
            raise RuntimeError("whole frames only on an open connection at a frame boundary")

    # -- internals ---------------------------------------------------------------------------

    def _open(self) -> None:
        self._state = _State.OPEN
        self._decoder.max_frame_size = self.max_frame_size

    def _queue(self, msg: Message) -> None:
        self._pending += encode_message(msg, max_frame_size=HANDSHAKE_MAX_FRAME)

    def _fail(self, exc: ProtocolError, *, tell_peer: bool = True) -> None:
        """Poison the connection; queue an Error frame explaining why, for the caller to send."""
        self._error = exc
        self._state = _State.FAILED
        if tell_peer:
            code = "auth_failed" if isinstance(exc, AuthenticationError) else "protocol_error"
            self._queue(Error(req_id=None, code=code, message=_clip(str(exc))))

    def _peer_ended_handshake(self, msg: Error | Goodbye) -> ProtocolError:
        """The peer sent Error/Goodbye before the handshake completed: turn it into our error
        (without answering: the peer is already closing)."""
        peer = "server" if self.our_role is Role.CLIENT else "client"
        exc: ProtocolError
        if isinstance(msg, Goodbye):
            exc = ProtocolError(f"the {peer} said goodbye during the handshake: {msg.reason!r}")
        elif msg.code == "auth_failed":
            exc = AuthenticationError(
                f"the {peer} rejected the handshake (wrong pre-shared key?): {_clip(msg.message)!r}"
            )
        else:
            exc = ProtocolError(
                f"the {peer} refused the connection ({msg.code!r}): {_clip(msg.message)!r}"
            )
        self._fail(exc, tell_peer=False)
        return exc

    def _handle(self, msg: Message, payload: bytes) -> Message | None:
        """Advance the state machine with one received message; return it if the application
        should see it."""
        kind = type(msg)
        state = self._state
        if state is _State.OPEN:
            if kind in HANDSHAKE_MESSAGES:
                raise ProtocolError(f"unexpected {kind.__name__} after the handshake")
            return msg
        if kind is Error or kind is Goodbye:
            assert isinstance(msg, Error | Goodbye)
            raise self._peer_ended_handshake(msg)
        if state is _State.AWAIT_ACCEPT:
            raise ProtocolError(
                f"got {kind.__name__} before the handshake completed (a client waits for HelloAck)"
            )
        if state is _State.CLIENT_IDLE:
            raise ProtocolError(f"unexpected {kind.__name__}: we have not sent our Hello yet")
        expected = _EXPECTED[state]
        if kind is not expected:
            raise ProtocolError(f"expected {expected.__name__}, got {kind.__name__}")

        if state is _State.AWAIT_HELLO:
            assert self._server_hs is not None
            self._queue(self._server_hs.handle_hello(payload))
            self._state = _State.AWAIT_AUTH
            return None
        if state is _State.AWAIT_AUTH:
            assert self._server_hs is not None
            assert isinstance(msg, Auth)
            self.peer_hello = self._server_hs.handle_auth(msg)
            self._state = _State.AWAIT_ACCEPT
            return self.peer_hello  # the application decides: accept() or refuse
        if state is _State.AWAIT_CHALLENGE:
            assert self._client_hs is not None
            assert isinstance(msg, Challenge)
            self._queue(self._client_hs.handle_challenge(msg))
            self._state = _State.AWAIT_HELLO_ACK
            return None
        # AWAIT_HELLO_ACK
        assert self._client_hs is not None
        assert isinstance(msg, HelloAck)
        if msg.node_id != self._client_hs.server_node_id:
            raise ProtocolError(
                f"HelloAck.node_id {msg.node_id!r} differs from the Challenge's "
                f"{self._client_hs.server_node_id!r}"
            )
        self.hello_ack = msg
        self._open()
        return msg
