"""The sift wire protocol, sans I/O: framing, messages, PSK handshake and a connection state
machine that turns received bytes into messages and messages into bytes to send.

See docs/protocol.md for the wire format. Nothing in this package performs I/O.
"""

from sift.protocol.connection import HANDSHAKE_MAX_FRAME, Connection, Role
from sift.protocol.errors import AuthenticationError, ProtocolError
from sift.protocol.frames import DEFAULT_MAX_FRAME, PROTOCOL_VERSION, FrameDecoder, encode_frame
from sift.protocol.messages import decode_payload, encode_message, encode_payload

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HANDSHAKE_MAX_FRAME",
    "PROTOCOL_VERSION",
    "AuthenticationError",
    "Connection",
    "FrameDecoder",
    "ProtocolError",
    "Role",
    "decode_payload",
    "encode_frame",
    "encode_message",
    "encode_payload",
]
