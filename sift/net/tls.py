"""TLS for sift connections: contexts built from the config, and the channel binding.

TLS is optional. A node with ``tls_cert`` and ``tls_key`` runs its listener over TLS 1.3 and dials
other nodes over TLS; ``tls_ca`` makes it verify the other side's certificate chain against that
CA (and makes its listener require and verify client certificates: mutual TLS). Every node of one
cluster must agree on TLS being on or off; a mismatch fails with a one-line error, never a hang.

The PSK handshake inside TLS is bound to the TLS session (see ``channel_binding``): proofs made in
one TLS session do not verify in any other, so a man in the middle who terminates TLS with its own
certificate and relays the handshake gets nothing. docs/security.md explains the choice.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from blake3 import blake3

from sift.config import ConfigError
from sift.protocol.errors import ProtocolError

TLS_MIN_VERSION = ssl.TLSVersion.TLSv1_3
BINDING_DOMAIN = b"sift tls13 channel binding v1"

# A TLS record starts with its content type (22 handshake, 21 alert) and version major 3.
_TLS_RECORD_TYPES = (0x15, 0x16)


class TLSFiles(Protocol):
    """What the daemons' configs have in common for TLS (MasterConfig and PeerConfig)."""

    tls_cert: Path | None
    tls_key: Path | None
    tls_ca: Path | None
    config_path: Path | None


@dataclass(frozen=True)
class ServerTLS:
    """A listener's TLS: its context and its own certificate (DER), which the binding covers."""

    context: ssl.SSLContext
    cert_der: bytes


@dataclass(frozen=True)
class NodeTLS:
    """One node's TLS setup: ``server`` for its listener, ``client`` for dialling out."""

    server: ServerTLS | None
    client: ssl.SSLContext


def _config_error(files: TLSFiles | None, key: str, message: str) -> ConfigError:
    path = files.config_path if files is not None else None
    return ConfigError(message, path=path, key=key)


def first_certificate_der(cert_file: Path) -> bytes:
    """The DER bytes of the first (leaf) certificate in a PEM file. Raises ValueError."""
    text = cert_file.read_text(encoding="ascii", errors="replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError("no PEM certificate in the file")
    return ssl.PEM_cert_to_DER_cert(text[start : stop + len(end)] + "\n")


def server_context(
    cert: Path, key: Path, ca: Path | None = None, files: TLSFiles | None = None
) -> ServerTLS:
    """A TLS 1.3 listener context. With ``ca``, clients must present a certificate it signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_MIN_VERSION
    # No session tickets: every connection is a full handshake, so every binding is fresh.
    ctx.num_tickets = 0
    _load_chain(ctx, cert, key, files)
    if ca is not None:
        _load_ca(ctx, ca, files)
        ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        der = first_certificate_der(cert)
    except (OSError, ValueError) as exc:
        raise _config_error(files, "tls_cert", f"tls_cert '{cert}': {exc}") from None
    return ServerTLS(ctx, der)


def client_context(
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    files: TLSFiles | None = None,
) -> ssl.SSLContext:
    """A TLS 1.3 dialling context. With ``ca`` the server's chain must verify against it (host
    names are not checked: cluster nodes are dialled by address, and the PSK proof names the
    node); without it any certificate is accepted and the channel binding alone stops a relay.
    ``cert``/``key`` are presented when the server asks for a client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = TLS_MIN_VERSION
    ctx.check_hostname = False
    if ca is not None:
        _load_ca(ctx, ca, files)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None and key is not None:
        _load_chain(ctx, cert, key, files)
    return ctx


def node_tls(files: TLSFiles) -> NodeTLS | None:
    """The TLS setup a daemon's config asks for, or None when TLS is off. One-line ConfigError
    for files that do not load (wrong format, key not matching the certificate)."""
    if files.tls_cert is None or files.tls_key is None:
        return None
    server = server_context(files.tls_cert, files.tls_key, files.tls_ca, files)
    client = client_context(files.tls_ca, files.tls_cert, files.tls_key, files)
    return NodeTLS(server, client)


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path, files: TLSFiles | None) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = exc.reason or exc.strerror or str(exc)
        raise _config_error(
            files,
            "tls_cert",
            f"tls_cert '{cert}' / tls_key '{key}': cannot load the certificate and key "
            f"({reason.lower().replace('_', ' ')})",
        ) from None
    except OSError as exc:
        raise _config_error(
            files, "tls_cert", f"tls_cert '{cert}' / tls_key '{key}': {exc.strerror or exc}"
        ) from None


def _load_ca(ctx: ssl.SSLContext, ca: Path, files: TLSFiles | None) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        reason = exc.reason or exc.strerror or str(exc)
        raise _config_error(
            files,
            "tls_ca",
            f"tls_ca '{ca}': not a PEM certificate file ({reason.lower().replace('_', ' ')})",
        ) from None
    except OSError as exc:
        raise _config_error(files, "tls_ca", f"tls_ca '{ca}': {exc.strerror or exc}") from None


class TLSError(ProtocolError):
    """A TLS problem on one connection: a failed TLS handshake, or TLS on one side only."""


class ChannelBindingError(Exception):
    """The TLS layer did not give what the binding needs (no TLS 1.3, no Finished message)."""


def channel_binding(ssl_object: ssl.SSLObject, server_cert_der: bytes) -> bytes:
    """What the PSK proofs are bound to on a TLS connection; equal on both ends of one session.

    It covers the session's first Finished message (what CPython's ``tls-unique`` returns; for
    TLS 1.3 it is a MAC over the whole handshake transcript, both key shares included, so no two
    sessions share it) and the server's certificate (RFC 5929 ``tls-server-end-point``, sound in
    TLS 1.3: a relay would have to present the server's own certificate, hence hold its key).
    CPython 3.11 has no RFC 9266 ``tls-exporter`` (no ``export_keying_material``)."""
    if ssl_object.version() != "TLSv1.3":
        raise ChannelBindingError(f"TLS 1.3 required, the session uses {ssl_object.version()}")
    finished = ssl_object.get_channel_binding("tls-unique")
    if not finished:
        raise ChannelBindingError("the TLS session has no Finished message to bind to")
    h = blake3(BINDING_DOMAIN)
    for part in (finished, server_cert_der):
        h.update(len(part).to_bytes(8, "big") + part)
    return h.digest()


def looks_like_tls(data: bytes) -> bool:
    """True if ``data`` starts like a TLS record (a ClientHello or an alert), i.e. the other
    side speaks TLS to a node that has it off."""
    return len(data) >= 2 and data[0] in _TLS_RECORD_TYPES and data[1] == 3


def describe_tls_failure(exc: BaseException) -> str:
    """One line for a failed TLS handshake, with the likely cause."""
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    text = str(reason).lower().replace("_", " ")
    if "wrong version number" in text or "record layer failure" in text:
        return (
            f"TLS handshake failed ({text}): the other side does not speak TLS "
            "(TLS must be on for every node of a cluster, or off for all)"
        )
    if "certificate verify failed" in text:
        return f"TLS handshake failed ({text}): the certificate does not verify against tls_ca"
    if "alert" in text and ("certificate" in text or "unknown ca" in text):
        return (
            f"TLS handshake failed ({text}): the other side refused this node's certificate "
            "(is it signed by the other side's tls_ca?)"
        )
    return f"TLS handshake failed ({text})"
