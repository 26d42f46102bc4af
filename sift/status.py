"""`sift status`: ask a master for its status over the authenticated protocol, and print it."""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl

from sift.net.channel import connect
from sift.protocol.messages import StatusRequest, StatusResponse

STATUS_TIMEOUT = 10.0


async def _no_requests(_channel, _msg) -> None:
    return None  # a status client serves nothing; pushes and the like are ignored


async def fetch_status(
    host: str,
    port: int,
    psk: bytes,
    timeout: float = STATUS_TIMEOUT,
    *,
    tls: ssl.SSLContext | None = None,
) -> dict:
    channel = await connect(
        host,
        port,
        psk,
        "status-" + secrets.token_hex(3),
        node_role="client",
        timeout=timeout,
        tls=tls,
    )
    reading = asyncio.ensure_future(channel.serve(_no_requests))
    try:
        response = await channel.request(StatusRequest(0), timeout=timeout)
    finally:
        await channel.close("status done")
        await reading
    assert isinstance(response, StatusResponse)
    return json.loads(response.status_json)


def human_size(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def format_status(status: dict) -> str:
    """The table from the original README: version; files, chunks, bytes; peers; a row per file
    and per peer."""
    if status.get("role") == "peer":
        return format_peer_status(status)
    lines = [
        f"Manifest version : {status['manifest_version']}",
        f"Files            : {status['files']} ({_plural(status['chunks'], 'chunk')}, "
        f"{human_size(status['bytes'])})",
        f"Connected peers  : {status['connected_peers']}",
        "",
        "Files:",
    ]
    files = status.get("file_list", [])
    width = max((len(f["path"]) for f in files), default=0)
    for f in files:
        lines.append(
            f"  {f['path']:<{width}}  {_plural(f['chunks'], 'chunk'):>12}  "
            f"{human_size(f['size']):>12}"
        )
    lines += ["", "Peers:"]
    peers = status.get("peers", [])
    width = max((len(p["addr"] or p["node_id"]) for p in peers), default=0)
    for p in peers:
        done = "complete" if p["complete"] else f"version {p['version']}"
        lines.append(
            f"  {p['addr'] or p['node_id']:<{width}}  {p['chunks_held']:>8} chunks held  ({done})"
        )
    return "\n".join(lines)


def format_peer_status(status: dict) -> str:
    lines = [
        f"Peer             : {status['node_id']} ({status['local_dir']})",
        f"Master           : {status['master_addr']} "
        f"({'connected' if status['master_connected'] else 'disconnected'}, "
        f"version {status['master_version']})",
        f"Synced version   : {status['synced_version']}"
        + (" (syncing)" if status["syncing"] else ""),
        f"Files            : {status['files']} ({_plural(status['chunks'], 'chunk')}, "
        f"{human_size(status['bytes'])})",
        f"Chunks held      : {status['chunks_held']}",
    ]
    progress = status.get("progress")
    if progress:
        done, total = progress["bytes_done"], progress["bytes_total"]
        percent = 100 * done // total if total else 100
        lines.append(
            f"Progress         : {human_size(done)} of {human_size(total)} ({percent}%), "
            f"version {progress['version']}"
        )
    return "\n".join(lines)


def to_json(status: dict) -> str:
    return json.dumps(status, indent=2, sort_keys=True)
