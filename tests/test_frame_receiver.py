"""FrameReceiver: frames read straight into buffers of their own, over real loopback
connections, on both event loops the daemons may run (asyncio's and uvloop)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random

import pytest
import uvloop

from sift.net.channel import Channel, accept, connect, listen
from sift.net.frame_receiver import MAX_QUEUED, SCRATCH, FrameReceiver
from sift.protocol.frames import FRAME_OVERHEAD, encode_frame
from sift.protocol.messages import ManifestPush

PSK = b"receiver-test-key"
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run_on(loop: str, coro_fn, timeout: float = 60.0):
    async def bounded():
        return await asyncio.wait_for(coro_fn(), timeout)

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(bounded())


@contextlib.asynccontextmanager
async def _client_of(on_server):
    """The client channel of a real authenticated connection on 127.0.0.1, closed afterwards;
    `on_server(channel)` runs on the server's side."""

    async def on_connect(reader, writer):
        channel = await accept(reader, writer, PSK, "server", lambda: 1)
        await on_server(channel)

    server = await listen(on_connect, ("127.0.0.1", 0))
    client = await connect("127.0.0.1", server.sockets[0].getsockname()[1], PSK, "client")
    try:
        yield client
    finally:
        await client.close()
        server.close()


async def _write_in_random_pieces(channel: Channel, data: bytes, rng: random.Random) -> None:
    at = 0
    while at < len(data):
        n = rng.randint(1, 100_000)
        channel.writer.write(data[at : at + n])
        await channel.writer.drain()
        at += n


EDGE = SCRATCH - FRAME_OVERHEAD  # the largest payload a frame in the scratch buffer can have
SIZES = [0, 1, 100, EDGE - 1, EDGE, EDGE + 1, SCRATCH, 1 << 20, 3 << 20]


@pytest.mark.parametrize("loop", LOOPS)
def test_frames_of_every_size_arrive_whole_and_large_ones_in_their_own_buffer(loop: str):
    rng = random.Random(7)
    payloads = [os.urandom(n) for n in SIZES * 2]

    async def main():
        async def send(channel):
            stream = b"".join(encode_frame(p) for p in payloads)
            await _write_in_random_pieces(channel, stream, rng)

        async with _client_of(send) as client:
            receiver = FrameReceiver.take_over(client.writer, client.conn, client.reader)
            assert receiver is not None
            for want in payloads:
                got = await receiver.next_payload(10.0)
                assert got == want
                # Past the scratch buffer, the kernel wrote the payload where it now is.
                assert type(got) is (bytearray if len(want) > EDGE else bytes)

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_bytes_received_before_the_take_over_are_kept_in_order(loop: str):
    """A server that writes right after accepting: the client's handshake read takes part of
    the first frame into the connection's decoder, and the StreamReader buffers more before the
    take-over. The receiver starts from those, in order."""
    payloads = [os.urandom(200_000), os.urandom(300), os.urandom(5)]

    async def main():
        sent = asyncio.Event()

        async def send(channel):
            channel.writer.write(b"".join(encode_frame(p) for p in payloads))
            await channel.writer.drain()
            sent.set()

        async with _client_of(send) as client:
            await sent.wait()
            await asyncio.sleep(0.2)
            assert not client.conn.at_frame_boundary  # part of a frame came with the HelloAck
            assert len(client.reader._buffer) > 0  # and more is in the StreamReader
            receiver = FrameReceiver.take_over(client.writer, client.conn, client.reader)
            assert client.conn.at_frame_boundary
            for want in payloads:
                assert await receiver.next_payload(10.0) == want

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_reader_that_falls_behind_pauses_the_socket(loop: str):
    """Frames queue up to MAX_QUEUED, then reading stops until the consumer catches up: memory
    stays bounded and nothing is lost."""
    frames = [bytes([i]) * (1 << 20) for i in range(24)]

    async def main():
        async def send(channel):
            for f in frames:
                channel.writer.write(encode_frame(f))
                await channel.writer.drain()

        async with _client_of(send) as client:
            receiver = FrameReceiver.take_over(client.writer, client.conn, client.reader)
            await asyncio.sleep(0.5)
            assert receiver._queued <= MAX_QUEUED + (1 << 20)
            assert not client.writer.transport.is_reading()
            for want in frames:
                assert await receiver.next_payload(10.0) == want

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_silence_times_out_but_a_slow_large_frame_does_not(loop: str):
    big = os.urandom(200_000)

    async def main():
        async def trickle(channel):
            await asyncio.sleep(0.5)
            frame = encode_frame(big)
            for at in range(0, len(frame), 20_000):  # ~1 s for the frame, 0.1 s per piece
                channel.writer.write(frame[at : at + 20_000])
                await asyncio.sleep(0.1)

        async with _client_of(trickle) as client:
            receiver = FrameReceiver.take_over(client.writer, client.conn, client.reader)
            with pytest.raises(TimeoutError):
                await receiver.next_payload(0.2)  # nothing yet
            await asyncio.sleep(0.5)
            assert await receiver.next_payload(0.4) == big  # pieces keep it alive

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("size", [100, 200_000])
def test_a_frame_cut_short_closes_the_channel_saying_so(loop: str, size: int):
    async def main():
        async def cut(channel):
            channel.writer.write(encode_frame(b"x" * size)[: size // 2])
            await channel.writer.drain()
            channel.writer.close()

        async with _client_of(cut) as client:
            await client.serve(lambda ch, msg: None)
            assert client.close_reason == (
                "protocol error: connection closed in the middle of a frame "
                f"(got {size // 2} of {size + FRAME_OVERHEAD} bytes)"
            )

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_bad_header_after_good_frames_is_a_protocol_error(loop: str):
    async def main():
        async def send(channel):
            await channel.send(ManifestPush(9))
            channel.writer.write(b"NOT A FRAME HEADER AT ALL")
            await channel.writer.drain()
            await asyncio.sleep(5)

        seen = []

        async def handle(ch, msg):
            seen.append(msg)

        async with _client_of(send) as client:
            await client.serve(handle)
            assert seen == [ManifestPush(9)]  # the good frame before it was delivered
            assert client.close_reason.startswith(
                "protocol error: frame of 1313821728 bytes exceeds"
            )

    run_on(loop, main)
