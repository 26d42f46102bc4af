"""Channel.send_streamed: a message whose last field comes in parts (a manifest streamed from
the master's database) arrives whole; a source that yields the wrong size drops the link."""

from __future__ import annotations

import asyncio

import pytest

from sift.net.channel import Channel, ChannelClosed, accept, connect, listen
from sift.protocol.messages import ChunkHints, ManifestPush, ManifestRequest, ManifestResponse

PSK = b"stream-test-key"
DATA = bytes(range(256)) * 12_000  # ~3 MB, sent in 1 MB parts


async def _serve_with(parts_for):
    """A server that answers every ManifestRequest by streaming `parts_for()`."""

    async def on_connect(reader, writer):
        channel = await accept(reader, writer, PSK, "server", lambda: 1)

        async def handle(ch: Channel, msg):
            size, parts = parts_for()
            head = ManifestResponse(msg.req_id, 7, None, b"")
            await ch.send_streamed(head, size, parts)

        await channel.serve(handle)

    server = await listen(on_connect, ("127.0.0.1", 0))
    client = await connect("127.0.0.1", server.sockets[0].getsockname()[1], PSK, "client")
    task = asyncio.ensure_future(client.serve(lambda ch, msg: None))
    return server, client, task


async def test_a_streamed_message_arrives_whole():
    def parts():
        return len(DATA), (DATA[i : i + 1_000_000] for i in range(0, len(DATA), 1_000_000))

    server, client, task = await _serve_with(parts)
    try:
        response = await client.request(ManifestRequest(0, None))
        assert response == ManifestResponse(response.req_id, 7, None, DATA)
    finally:
        await client.close()
        task.cancel()
        server.close()


@pytest.mark.parametrize("actual", [len(DATA) - 1000, len(DATA) + 1000])
async def test_a_source_of_the_wrong_size_drops_the_connection(actual: int):
    data = (DATA * 2)[:actual]

    def parts():
        return len(DATA), (data[i : i + 1_000_000] for i in range(0, len(data), 1_000_000))

    server, client, task = await _serve_with(parts)
    try:
        with pytest.raises(ChannelClosed):
            await client.request(ManifestRequest(0, None), timeout=10)
    finally:
        await client.close()
        task.cancel()
        server.close()


async def test_messages_sent_during_a_stream_go_after_it_whole():
    """A ManifestPush sent while a big manifest streams waits for the frame to end, and advice
    (send_nowait) is dropped rather than written into it: either would corrupt the stream."""
    big = DATA * 20  # ~60 MB: more than the socket buffers, so the stream waits on the reader
    sent_nowait: list[bool] = []
    hint = ChunkHints("127.0.0.1:1", (b"\x01" * 32,))

    async def on_connect(reader, writer):
        channel = await accept(reader, writer, PSK, "server", lambda: 1)

        async def push_meanwhile(ch: Channel):
            await asyncio.sleep(0.05)  # the stream is now blocked on the unread socket
            sent_nowait.append(ch.send_nowait(hint))
            await ch.send(ManifestPush(9))
            sent_nowait.append(ch.send_nowait(hint))

        async def handle(ch: Channel, msg):
            pusher = asyncio.ensure_future(push_meanwhile(ch))
            head = ManifestResponse(msg.req_id, 7, None, b"")
            parts = (big[i : i + 1_000_000] for i in range(0, len(big), 1_000_000))
            await ch.send_streamed(head, len(big), parts)
            await pusher

        await channel.serve(handle)

    server = await listen(on_connect, ("127.0.0.1", 0))
    client = await connect("127.0.0.1", server.sockets[0].getsockname()[1], PSK, "client")
    received: list = []

    async def on_message(ch, msg):
        received.append(msg)

    try:
        request = asyncio.ensure_future(client.request(ManifestRequest(0, None), timeout=20))
        await asyncio.sleep(0.3)  # nobody reads yet: the server's writes back up
        task = asyncio.ensure_future(client.serve(on_message))
        response = await request
        assert response.data == big
        for _ in range(200):
            if len(received) == 2:
                break
            await asyncio.sleep(0.01)
        assert received == [ManifestPush(9), hint]
        assert sent_nowait == [False, True]
    finally:
        await client.close()
        task.cancel()
        server.close()
