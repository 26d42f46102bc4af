"""Receive frames straight into buffers of their own (an ``asyncio.BufferedProtocol``).

Through asyncio's StreamReader every received byte was copied three times: into a bytes object
by the event loop, into the reader's buffer, and out of it by ``readexactly``. A peer receives
the whole dataset, so here the kernel writes a large frame's payload directly into a bytearray
of the frame's size, which is then decoded in place (a ChunkResponse's chunks are views of it).
Small frames are cut out of one reused scratch buffer.

A channel hands its plain-TCP transport over to a receiver once the handshake is done
(``transport.set_protocol``). Writes still go through the channel's StreamWriter, so the
transport's flow-control and close callbacks are passed on to the stream's own protocol.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from sift.protocol import ProtocolError
from sift.protocol.frames import FRAME_OVERHEAD

SCRATCH = 64 * 1024  # small frames land here; a larger frame gets a buffer of its own
MAX_QUEUED = 4 << 20  # bytes of whole frames waiting for the reader before reading pauses


class FrameReceiver(asyncio.BufferedProtocol):
    def __init__(
        self,
        payload_size: Callable[[memoryview], int],
        stream_protocol: asyncio.BaseProtocol,
        transport: asyncio.Transport,
    ):
        # Validates a frame header and returns its payload size; raises ProtocolError.
        self._payload_size = payload_size
        self._inner = stream_protocol
        self._transport = transport
        self._scratch = memoryview(bytearray(SCRATCH))
        self._start = 0  # scratch[_start:_end] holds received bytes not yet cut into frames
        self._end = 0
        self._big: bytearray | None = None  # the payload of a large frame being filled
        self._big_header = b""
        self._filled = 0
        self._frames: deque[bytes | bytearray] = deque()
        self._queued = 0
        self._paused = False
        self._waiter: asyncio.Future | None = None
        self._error: BaseException | None = None  # a bad header, or the connection's loss
        self._ended = False
        self.last_read = time.monotonic()

    @classmethod
    def take_over(cls, writer: asyncio.StreamWriter, conn, stream_reader: asyncio.StreamReader):
        """Switch a plain-TCP connection's reading to a new receiver, keeping every byte
        received so far (the handshake's leftovers). None over TLS, which keeps the stream."""
        transport = writer.transport
        if transport.get_extra_info("ssl_object") is not None or transport.is_closing():
            return None
        receiver = cls(conn.frame_payload_size, transport.get_protocol(), transport)
        # asyncio has no public way to take a StreamReader's buffered bytes.
        leftover = conn.take_buffered() + bytes(stream_reader._buffer)
        stream_reader._buffer.clear()
        transport.set_protocol(receiver)
        if stream_reader.at_eof():
            receiver._ended = True
        receiver.absorb(leftover)
        if not transport.is_reading() and not receiver._paused and not receiver._ended:
            transport.resume_reading()  # the StreamReader had paused it with a full buffer
        return receiver

    # -- the consumer's side --------------------------------------------------------------

    async def next_payload(self, idle_timeout: float) -> bytes | bytearray | None:
        """The next whole frame's payload; None once the stream has ended (see ``partial``).
        Raises the ProtocolError of a bad header or the error the connection was lost with,
        and TimeoutError when nothing at all arrived for ``idle_timeout`` seconds."""
        while not self._frames:
            if self._error is not None:
                raise self._error
            if self._ended:
                return None
            left = self.last_read + idle_timeout - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"nothing received for {idle_timeout:g}s")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, left)
            except TimeoutError:
                pass  # a large frame may still be arriving: last_read tells
            finally:
                self._waiter = None
        payload = self._frames.popleft()
        self._queued -= len(payload)
        if self._paused and self._queued <= MAX_QUEUED // 2 and self._error is None:
            self._paused = False
            self._transport.resume_reading()
        return payload

    def partial(self) -> bytes:
        """The bytes of a frame the stream ended in the middle of (b"" if it ended cleanly)."""
        if self._big is not None:
            return self._big_header + bytes(self._big[: self._filled])
        return bytes(self._scratch[self._start : self._end])

    def absorb(self, data: bytes) -> None:
        """Take bytes received before this receiver took over, as if just read."""
        view = memoryview(data)
        while view and self._error is None:
            buf = self.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    # -- the transport's side -------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._filled :]
        if self._start == self._end:
            self._start = self._end = 0
        elif SCRATCH - self._end < SCRATCH // 4:  # little room left: move the tail to the front
            size = self._end - self._start
            self._scratch[:size] = self._scratch[self._start : self._end]
            self._start, self._end = 0, size
        return self._scratch[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.last_read = time.monotonic()
        if self._big is not None:
            self._filled += nbytes
            if self._filled == len(self._big):
                big, self._big, self._filled = self._big, None, 0
                self._push(big)
            return
        self._end += nbytes
        try:
            self._cut_frames()
        except ProtocolError as exc:
            self._error = exc
            self._transport.pause_reading()
            self._wake()

    def eof_received(self) -> bool | None:
        self._ended = True
        self._wake()
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        if exc is not None and self._error is None:
            self._error = exc
        self._wake()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- internals ------------------------------------------------------------------------

    def _cut_frames(self) -> None:
        scratch = self._scratch
        while self._end - self._start >= FRAME_OVERHEAD:
            head = self._start + FRAME_OVERHEAD
            size = self._payload_size(scratch[self._start : head])
            if self._end - head >= size:
                self._push(bytes(scratch[head : head + size]))
                self._start = head + size
                continue
            if FRAME_OVERHEAD + size > SCRATCH:  # will never fit: read the rest into its own
                self._big_header = bytes(scratch[self._start : head])
                self._big = bytearray(size)
                self._filled = self._end - head
                self._big[: self._filled] = scratch[head : self._end]
                self._start = self._end = 0
            return

    def _push(self, payload: bytes | bytearray) -> None:
        self._frames.append(payload)
        self._queued += len(payload)
        if self._queued > MAX_QUEUED and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
