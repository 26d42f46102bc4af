"""Channel.send_streamed: a message whose last field comes in parts (a manifest streamed from
the master's database) arrives whole; a source that yields the wrong size drops the link."""

from __future__ import annotations

import asyncio

import pytest

from sift.net.channel import Channel, ChannelClosed, accept, connect, listen
from sift.protocol.messages import ManifestRequest, ManifestResponse

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
