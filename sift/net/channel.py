"""An authenticated sift connection over asyncio streams.

The sans-IO `Connection` does the framing, validation and handshake; this layer only moves bytes,
matches responses to requests by id, answers pings, and puts a timeout on every wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace

from sift import __version__
from sift.net.frame_receiver import FrameReceiver
from sift.net.tls import (
    ChannelBindingError,
    ServerTLS,
    TLSError,
    channel_binding,
    describe_tls_failure,
    looks_like_tls,
)
from sift.protocol import Connection, ProtocolError, Role
from sift.protocol.frames import FRAME_OVERHEAD
from sift.protocol.messages import (
    ChunkRequest,
    ChunkResponse,
    Error,
    Goodbye,
    Hello,
    HelloAck,
    ManifestRequest,
    ManifestResponse,
    Message,
    PeerListRequest,
    PeerListResponse,
    Ping,
    Pong,
    StatusRequest,
    StatusResponse,
)

log = logging.getLogger("sift.net")

HANDSHAKE_TIMEOUT = 10.0  # an unauthenticated connection gets this long to prove the key
REQUEST_TIMEOUT = 60.0
IDLE_TIMEOUT = 90.0  # nothing heard for this long (pings included): the peer is gone
PING_INTERVAL = 20.0
SEND_TIMEOUT = 60.0  # a peer that takes none of our bytes for this long is stuck: drop it
MAX_UNREAD_PONGS = 1 << 20  # no pong while this much is queued (a pinger that never reads)
MAX_QUEUED_FOR_ADVICE = 4 << 20  # send_nowait drops a message while this much is queued
READ_SIZE = 1 << 20
MAX_CONCURRENT_REQUESTS = 32  # per connection: a flood of requests waits, it does not pile up
MAX_UNAUTHENTICATED = 64  # handshakes in progress at once per listener; more are refused

REQUESTS = (ManifestRequest, ChunkRequest, PeerListRequest, StatusRequest)
RESPONSES = (ManifestResponse, ChunkResponse, PeerListResponse, StatusResponse)

# handler(channel, request) -> response (or None for one-way messages)
Handler = Callable[["Channel", Message], Awaitable[Message | None]]


class RemoteError(Exception):
    """The other side answered a request with an Error message."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class ChannelClosed(ConnectionError):
    pass


class Channel:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: Connection,
        hello: Hello | None = None,
        ack: HelloAck | None = None,
    ):
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.hello = hello  # the client's Hello (server side)
        self.ack = ack  # the server's HelloAck (client side)
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.remote_host, self.remote_port = peer[0], peer[1]
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._closed = asyncio.Event()
        self._close_reason = ""
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
        self._tasks: set[asyncio.Task] = set()
        self.bytes_in = 0
        self.bytes_out = 0
        # Held by send_streamed between the parts of one frame: nothing else may be written
        # inside it (a ManifestPush in the middle of a streamed manifest corrupted the stream).
        self._stream_lock = asyncio.Lock()

    @property
    def peer_node_id(self) -> str:
        return self.conn.peer_node_id or "?"

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def close_reason(self) -> str:
        """Why the channel closed ("" while it is open)."""
        return self._close_reason

    # -- sending ----------------------------------------------------------------------------

    async def send(self, msg: Message) -> None:
        if self._stream_lock.locked():
            async with self._stream_lock:
                pass  # the streamed frame is complete; write ours after it, with no await between
        if self.closed:
            raise ChannelClosed(f"connection to {self.peer_node_id} is closed")
        parts = self.conn.send_parts(msg)  # a big manifest is written as it is, not copied
        self.bytes_out += sum(len(p) for p in parts)
        if len(parts) == 1:
            self.writer.write(parts[0])
        else:
            self.writer.writelines(parts)
        await self._drain()

    def send_nowait(self, msg: Message) -> bool:
        """Queue an advisory one-way message without waiting for the other side to take it.
        It is dropped (False) when the connection is closed, in the middle of a streamed frame,
        or already has much queued: advice must never hold up the sender or grow a buffer
        without bound."""
        if self.closed or self._stream_lock.locked():
            return False
        if self.writer.transport.get_write_buffer_size() > MAX_QUEUED_FOR_ADVICE:
            return False
        parts = self.conn.send_parts(msg)
        self.bytes_out += sum(len(p) for p in parts)
        self.writer.writelines(parts)
        return True

    async def send_streamed(self, msg: Message, size: int, parts: Iterable[bytes]) -> None:
        """Send ``msg`` with its last field (``size`` bytes) taken from ``parts`` as they come,
        draining between them: a manifest of hundreds of MB streams from the database without
        ever being whole in memory. A source that yields other than ``size`` bytes cannot be
        taken back mid-frame: the connection is dropped."""
        async with self._stream_lock:
            if self.closed:
                raise ChannelClosed(f"connection to {self.peer_node_id} is closed")
            head = self.conn.send_head(msg, size)
            self.bytes_out += len(head) + size
            self.writer.write(head)
            sent = 0
            for part in parts:
                sent += len(part)
                if sent > size:
                    break
                self.writer.write(part)
                await self._drain()
        if sent != size:
            self._abort(f"a streamed message had {sent} bytes, not the {size} announced")
            raise ChannelClosed(f"connection to {self.peer_node_id} dropped mid-message")
        await self._drain()

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self.writer.drain(), SEND_TIMEOUT)
        except TimeoutError:
            self._abort(f"it took none of our bytes for {SEND_TIMEOUT:g}s")
            raise ChannelClosed(f"connection to {self.peer_node_id} is stuck") from None

    async def request(self, msg: Message, timeout: float = REQUEST_TIMEOUT) -> Message:
        """Send a request (its req_id is filled in here) and wait for the matching response."""
        req_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[req_id] = future
        try:
            await self.send(replace(msg, req_id=req_id))
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(req_id, None)

    # -- receiving --------------------------------------------------------------------------

    async def serve(self, handler: Handler) -> None:
        """Read until the connection ends; requests go to `handler` (each in its own task, so
        a slow one does not hold up the rest), responses to their waiting requests."""
        keepalive = asyncio.ensure_future(self._keepalive())
        try:
            # Frames that arrived in the same read as the handshake's last message.
            while (msg := self.conn.next_message()) is not None:
                await self._dispatch(msg, handler)
            # Plain TCP: frames are received into buffers of their own. Over TLS (whose
            # decryption copies anyway) the StreamReader goes on.
            receiver = FrameReceiver.take_over(self.writer, self.conn, self.reader)
            if receiver is not None:
                await self._serve_frames(receiver, handler)
                return
            while not self.closed:
                try:
                    if self.conn.at_frame_boundary:
                        msg = await self._read_frame()
                        if msg is not None:
                            await self._dispatch(msg, handler)
                            continue
                        if self.conn.at_frame_boundary:  # a clean end between frames
                            await self.close("connection closed by peer", send_goodbye=False)
                            return
                        continue  # a frame cut short: the stream path below reports it
                    data = await asyncio.wait_for(self.reader.read(READ_SIZE), IDLE_TIMEOUT)
                except TimeoutError:
                    await self.close("idle timeout")
                    return
                self.bytes_in += len(data)
                self.conn.receive_data(data)
                while (msg := self.conn.next_message()) is not None:
                    await self._dispatch(msg, handler)
                if not data:
                    await self.close("connection closed by peer", send_goodbye=False)
                    return
        except ProtocolError as exc:
            log.warning("%s: protocol error: %s; dropping the connection", self.describe(), exc)
            with contextlib.suppress(Exception):
                self.writer.write(self.conn.data_to_send())
            await self.close(f"protocol error: {exc}", send_goodbye=False)
        except (ConnectionError, OSError) as exc:
            await self.close(f"connection lost: {exc}", send_goodbye=False)
        finally:
            keepalive.cancel()
            await self.close("done", send_goodbye=False)

    async def _serve_frames(self, receiver: FrameReceiver, handler: Handler) -> None:
        """The read loop on a plain TCP connection: whole frames from the receiver."""
        while not self.closed:
            try:
                payload = await receiver.next_payload(IDLE_TIMEOUT)
            except TimeoutError:
                await self.close("idle timeout")
                return
            if payload is None:
                partial = receiver.partial()
                if partial:  # cut short: let the stream decoder say what was missing
                    self.conn.receive_data(partial)
                    self.conn.receive_data(b"")
                    self.conn.next_message()
                await self.close("connection closed by peer", send_goodbye=False)
                return
            self.bytes_in += FRAME_OVERHEAD + len(payload)
            msg = self.conn.receive_frame(payload)
            if msg is not None:
                await self._dispatch(msg, handler)

    async def _read_frame(self) -> Message | None:
        """Read one whole frame with readexactly: one copy of the payload (out of the stream's
        buffer) instead of three. None at EOF; a frame cut short is handed to the stream path
        (receive_data), which then reports exactly what was missing."""
        try:
            header = await asyncio.wait_for(self.reader.readexactly(FRAME_OVERHEAD), IDLE_TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            self.conn.receive_data(exc.partial)
            return None
        size = self.conn.frame_payload_size(header)
        try:
            # A big frame may take a while on a slow link: allow for 1 MB/s on top.
            payload = await asyncio.wait_for(
                self.reader.readexactly(size), IDLE_TIMEOUT + size / 1e6
            )
        except asyncio.IncompleteReadError as exc:
            self.conn.receive_data(header + exc.partial)
            return None
        self.bytes_in += FRAME_OVERHEAD + size
        return self.conn.receive_frame(payload)

    async def _dispatch(self, msg: Message, handler: Handler) -> None:
        if isinstance(msg, RESPONSES) or (isinstance(msg, Error) and msg.req_id is not None):
            future = self._waiting.get(msg.req_id)
            if future is not None and not future.done():
                if isinstance(msg, Error):
                    future.set_exception(RemoteError(msg.code, msg.message))
                else:
                    future.set_result(msg)
            return
        if isinstance(msg, Ping):
            # No drain here: the reader must never wait on our own send buffer, or two sides
            # that both stopped reading while writing would wait on each other forever.
            if self.closed or self._stream_lock.locked():
                return  # (mid-frame, the streamed bytes prove we are alive)
            # A peer that pings but reads nothing would grow our buffer without bound; while
            # much is queued it gets no pong (our queued bytes prove we are alive anyway).
            if self.writer.transport.get_write_buffer_size() <= MAX_UNREAD_PONGS:
                self.writer.write(self.conn.send(Pong(msg.token)))
            return
        if isinstance(msg, Pong):
            return
        if isinstance(msg, Goodbye):
            log.debug("%s said goodbye: %s", self.describe(), msg.reason)
            await self.close(f"peer said goodbye: {msg.reason}", send_goodbye=False)
            return
        if isinstance(msg, Error):
            log.warning("%s reported an error: %s: %s", self.describe(), msg.code, msg.message)
            return
        await self._slots.acquire()  # backpressure: stop reading while too many are running
        task = asyncio.ensure_future(self._run_handler(msg, handler))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, msg: Message, handler: Handler) -> None:
        try:
            reply = await handler(self, msg)
            if reply is not None and not self.closed:
                await self.send(reply)
        except (ConnectionError, OSError, ChannelClosed):
            pass
        except Exception as exc:
            log.exception("%s: handling %s failed", self.describe(), type(msg).__name__)
            req_id = getattr(msg, "req_id", None)
            if req_id is not None and not self.closed:
                with contextlib.suppress(Exception):
                    await self.send(Error(req_id, "internal", str(exc)[:300]))
        finally:
            self._slots.release()

    async def _keepalive(self) -> None:
        token = itertools.count(1)
        with contextlib.suppress(Exception):
            while not self.closed:
                await asyncio.sleep(PING_INTERVAL)
                await self.send(Ping(next(token)))

    # -- closing ----------------------------------------------------------------------------

    async def close(self, reason: str = "closing", *, send_goodbye: bool = True) -> None:
        if self.closed:
            return
        self._closed.set()
        self._close_reason = reason
        if send_goodbye and not self._stream_lock.locked():  # never inside a streamed frame
            with contextlib.suppress(Exception):
                self.writer.write(self.conn.send(Goodbye(reason)))
                await asyncio.wait_for(self.writer.drain(), 2.0)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ChannelClosed(f"connection closed: {reason}"))
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)

    def _abort(self, why: str) -> None:
        """Drop a peer that stopped reading, at once: a graceful close would wait on the very
        buffer it does not drain. The reader then ends and serve() cleans up."""
        log.warning("%s: dropping the connection: %s", self.describe(), why)
        self._close_reason = f"stuck: {why}"
        self.writer.transport.abort()

    def describe(self) -> str:
        return f"{self.peer_node_id}@{self.remote_host}:{self.remote_port}"


# TLS 1.3 lets the client finish its handshake before the server has checked the client's
# certificate, so a refused certificate shows up as the connection closing right afterwards.
CLOSED_AFTER_TLS_HANDSHAKE = (
    "TLS handshake failed: the server closed the connection at once (it may require a client "
    "certificate signed by its tls_ca)"
)

CLOSED_BEFORE_PLAIN_HANDSHAKE = (
    "connection closed during the handshake (a node with TLS on closes plain connections like "
    "this: is TLS on over there?)"
)


class HandshakeLimit:
    """Caps the handshakes in progress at once on one listener, so connections that never
    authenticate (each may hold a socket and a buffer for HANDSHAKE_TIMEOUT) cannot pile up."""

    def __init__(self, limit: int = MAX_UNAUTHENTICATED):
        self.limit = limit
        self.active = 0


async def _refuse(writer: asyncio.StreamWriter, conn: Connection, code: str, text: str) -> None:
    """Tell an unauthenticated client why it is being dropped (one Error frame), best effort."""
    with contextlib.suppress(Exception):
        writer.write(conn.send(Error(None, code, text)))
        await asyncio.wait_for(writer.drain(), 1.0)


async def _drive_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, *, tls: bool
) -> Message:
    """Pump bytes until the handshake yields its message (Hello on a server, HelloAck on a
    client). Raises ProtocolError (AuthenticationError for a wrong key) or ChannelClosed."""
    first = True
    while True:
        try:
            data = await reader.read(65536)
        except ssl.SSLError as exc:  # e.g. TLS 1.3 reports a refused client certificate here
            raise TLSError(describe_tls_failure(exc)) from None
        if first and not tls and looks_like_tls(data):
            # Say what is wrong instead of "bad frame magic": the other side has TLS on.
            raise TLSError(
                "the other side speaks TLS but TLS is off here (set tls_cert and tls_key on "
                "every node of the cluster, or on none)"
            )
        if first and not data and conn.our_role is Role.CLIENT:
            if tls:
                raise TLSError(CLOSED_AFTER_TLS_HANDSHAKE)
            raise ChannelClosed(CLOSED_BEFORE_PLAIN_HANDSHAKE)
        first = False
        try:
            conn.receive_data(data)
            msg = conn.next_message()
        except ProtocolError:
            with contextlib.suppress(Exception):
                writer.write(conn.data_to_send())
                await writer.drain()
            raise
        out = conn.data_to_send()
        if out:
            writer.write(out)
            await writer.drain()
        if msg is not None:
            return msg
        if not data:
            raise ChannelClosed("connection closed during the handshake")


def _binding(writer: asyncio.StreamWriter, server_cert_der: bytes | None) -> bytes:
    """The TLS channel binding of this connection (b"" without TLS)."""
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return b""
    if server_cert_der is None:  # client side: the certificate the server presented
        server_cert_der = ssl_object.getpeercert(binary_form=True) or b""
    try:
        return channel_binding(ssl_object, server_cert_der)
    except ChannelBindingError as exc:
        raise TLSError(f"cannot bind the handshake to the TLS session: {exc}") from None


async def listen(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    bind_addr: tuple[str, int],
    tls: ServerTLS | None = None,
) -> asyncio.Server:
    """A daemon's TCP listener (over TLS when ``tls`` is set; asyncio does the TLS handshake,
    bounded by HANDSHAKE_TIMEOUT, before ``handler`` runs)."""
    host, port = bind_addr
    return await asyncio.start_server(
        handler,
        host,
        port,
        limit=1 << 20,
        ssl=tls.context if tls else None,
        ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls else None,
    )


async def connect(
    host: str,
    port: int,
    psk: bytes,
    node_id: str,
    *,
    node_role: str = "peer",
    listen_port: int | None = None,
    advertise_addr: str | None = None,
    max_frame_size: int | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
    tls: ssl.SSLContext | None = None,
) -> Channel:
    """Open a TCP connection (TLS 1.3 when ``tls`` is given) and authenticate. Raises OSError /
    TimeoutError when unreachable, TLSError when the TLS handshake fails, AuthenticationError on
    a wrong key."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host,
                port,
                limit=READ_SIZE,
                ssl=tls,
                server_hostname=host if tls is not None else None,
                ssl_handshake_timeout=timeout if tls is not None else None,
            ),
            timeout,
        )
    except ssl.SSLError as exc:
        raise TLSError(describe_tls_failure(exc)) from None
    except ConnectionResetError:
        if tls is None:
            raise
        raise TLSError(
            "TLS handshake failed: the other side closed the connection (is TLS on over there? "
            "TLS must be on for every node of a cluster, or off for all)"
        ) from None
    kwargs = {"max_frame_size": max_frame_size} if max_frame_size else {}
    try:
        binding = _binding(writer, None)
    except BaseException:
        writer.close()
        raise
    conn = Connection(
        Role.CLIENT,
        psk,
        node_id,
        node_role=node_role,
        software=f"sift/{__version__}",
        listen_port=listen_port,
        advertise_addr=advertise_addr,
        channel_binding=binding,
        **kwargs,
    )
    try:
        writer.write(conn.initiate())
        await writer.drain()
        ack = await asyncio.wait_for(
            _drive_handshake(reader, writer, conn, tls=tls is not None), timeout
        )
    except ConnectionResetError:
        writer.close()
        if tls is None:
            raise ChannelClosed(CLOSED_BEFORE_PLAIN_HANDSHAKE) from None
        raise TLSError(CLOSED_AFTER_TLS_HANDSHAKE) from None
    except BaseException:
        writer.close()
        raise
    assert isinstance(ack, HelloAck)
    return Channel(reader, writer, conn, ack=ack)


async def accept(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    psk: bytes,
    node_id: str,
    manifest_version: Callable[[], int],
    *,
    max_frame_size: int | None = None,
    timeout: float | None = None,
    limit: HandshakeLimit | None = None,
    tls: ServerTLS | None = None,
) -> Channel:
    """Server side of the handshake on a freshly accepted connection. With ``tls`` (the
    listener's TLS, whose handshake asyncio already did) the proofs are bound to the session.
    A client that has not authenticated within `timeout` (default HANDSHAKE_TIMEOUT), or
    arrives while `limit` handshakes are already running, gets an Error frame and TimeoutError
    / ConnectionRefusedError.
    """
    timeout = HANDSHAKE_TIMEOUT if timeout is None else timeout
    kwargs = {"max_frame_size": max_frame_size} if max_frame_size else {}
    binding = _binding(writer, tls.cert_der) if tls is not None else b""
    conn = Connection(Role.SERVER, psk, node_id, channel_binding=binding, **kwargs)
    if limit is not None and limit.active >= limit.limit:
        text = f"too many connections authenticating at once (limit {limit.limit}); retry later"
        await _refuse(writer, conn, "busy", text)
        raise ConnectionRefusedError(text)
    if limit is not None:
        limit.active += 1
    try:
        hello = await asyncio.wait_for(
            _drive_handshake(reader, writer, conn, tls=tls is not None), timeout
        )
    except TimeoutError:
        text = f"handshake not completed within {timeout:g}s"
        await _refuse(writer, conn, "timeout", text)
        raise TimeoutError(text) from None
    finally:
        if limit is not None:
            limit.active -= 1
    assert isinstance(hello, Hello)
    peer = writer.get_extra_info("peername") or ("?", 0)
    writer.write(conn.accept(manifest_version(), f"{peer[0]}:{peer[1]}"))
    await writer.drain()
    return Channel(reader, writer, conn, hello=hello)
