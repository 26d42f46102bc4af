"""Errors raised by the wire protocol.

Everything the remote side can get wrong (a malformed frame, a bad message, messages out of order)
raises :class:`ProtocolError`; a failed handshake raises its subclass :class:`AuthenticationError`.
The caller's answer to either is the same: send whatever ``Connection.data_to_send()`` holds (an
``Error`` frame telling the peer why) and close the connection.

Mistakes by the local program (sending before the handshake, encoding a field of the wrong type)
are bugs, not peer misbehaviour, and raise ``RuntimeError`` / ``ValueError`` instead so that a
daemon that drops misbehaving peers does not silently swallow them.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer sent something this side cannot accept; the connection must be dropped."""


class AuthenticationError(ProtocolError):
    """The handshake failed: a wrong pre-shared key on one side, or a replayed/relayed handshake."""
