"""Length-prefixed framing: turns a byte stream into whole message payloads and back.

A frame on the wire::

    +----------------+------------+---------+----------------------+
    | length N (u32) | b"SIFT"    | version | msgpack payload      |
    | big-endian     | 4 bytes    | 1 byte  | N - 5 bytes          |
    +----------------+------------+---------+----------------------+

N counts everything after the length field (magic + version + payload), so N >= 5.
No I/O happens here: the caller feeds bytes it read and gets payloads back.
"""

from __future__ import annotations

import struct
from typing import NoReturn

from sift.protocol.errors import ProtocolError

MAGIC = b"SIFT"
PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 64 * 1024 * 1024  # largest N accepted by default (64 MiB)

LENGTH_SIZE = 4
PREFIX_SIZE = len(MAGIC) + 1  # magic + version byte: the smallest legal N
FRAME_OVERHEAD = LENGTH_SIZE + PREFIX_SIZE  # bytes a frame adds around its payload
MAX_ENCODABLE_FRAME = 2**32 - 1  # what the u32 length field can express

_LENGTH = struct.Struct(">I")
_HEADER = struct.Struct(">I4sB")  # length, magic, version


def encode_frame(payload: bytes, *, max_frame_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """Wrap one msgpack payload in a frame.

    Raises ``ValueError`` when the frame would exceed ``max_frame_size``: the receiver would reject
    it, so a sender must split large batches (e.g. a big ``ChunkResponse``) before encoding.
    """
    # One copy of the payload; callers with huge payloads pay it once here (or send the
    # header and the payload as separate pieces, see frame_header).
    return frame_header(len(payload), max_frame_size=max_frame_size) + payload


def frame_header(payload_size: int, *, max_frame_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """The FRAME_OVERHEAD bytes that precede a payload of ``payload_size`` bytes (ValueError
    when such a frame would exceed ``max_frame_size``, as in :func:`encode_frame`)."""
    n = PREFIX_SIZE + payload_size
    if n > max_frame_size or n > MAX_ENCODABLE_FRAME:
        raise ValueError(
            f"frame of {n} bytes exceeds the {min(max_frame_size, MAX_ENCODABLE_FRAME)}-byte "
            "limit; split the message"
        )
    return _HEADER.pack(n, MAGIC, PROTOCOL_VERSION)


def _ascii_hint(raw: bytes) -> str:
    """A hint for when the 'length' is really text, e.g. an HTTP client talking to a sift port."""
    if all(32 <= b < 127 for b in raw):
        return f" (the stream starts with {raw!r}: not a sift peer?)"
    return ""


def check_length(n: int, max_frame_size: int, raw: bytes) -> None:
    """Refuse a frame length field ``n`` (``raw``: its 4 bytes, for a hint) out of bounds."""
    if n > max_frame_size:
        raise ProtocolError(
            f"frame of {n} bytes exceeds the {max_frame_size}-byte limit{_ascii_hint(raw)}"
        )
    if n < PREFIX_SIZE:
        raise ProtocolError(
            f"frame length {n} is too short: a frame holds at least the {PREFIX_SIZE}-byte "
            "magic and version"
        )


def check_prefix(magic: bytes, version: int) -> None:
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {magic!r} (expected {MAGIC!r}): not a sift peer?")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unknown protocol version {version} (this sift speaks {PROTOCOL_VERSION})"
        )


def check_header(header: bytes | bytearray, max_frame_size: int) -> int:
    """Validate a whole FRAME_OVERHEAD-byte frame header; returns the payload's size. Raises
    ``ProtocolError`` naming what is wrong (the same words as :class:`FrameDecoder`)."""
    n, magic, version = _HEADER.unpack_from(header, 0)
    check_length(n, max_frame_size, bytes(header[:LENGTH_SIZE]))
    check_prefix(magic, version)
    return n - PREFIX_SIZE


class FrameDecoder:
    """Incremental frame parser: ``feed()`` bytes in any split, pull payloads with
    ``next_payload()``.

    Header problems (oversized or undersized length, bad magic, unknown version) are reported as
    soon as the offending bytes arrive, so an attacker cannot make us buffer a 4 GiB frame.
    After any error the decoder is poisoned: every later call raises ``ProtocolError``.

    ``max_frame_size`` may be changed between frames (the connection raises it once the peer has
    authenticated); it applies to frames whose header has not been checked yet.
    """

    __slots__ = ("_buf", "_error", "_need", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame_size < PREFIX_SIZE:
            raise ValueError(f"max_frame_size must be at least {PREFIX_SIZE}")
        self.max_frame_size = max_frame_size
        # The unconsumed stream. Whole frames are cut off the front with `del buf[:n]`, which
        # CPython does in O(1) for bytearrays (it advances an internal start offset), and appends
        # are amortised O(1): many tiny feeds into one big frame stay linear.
        self._buf = bytearray()
        self._need: int | None = None  # total size (length field included) of the head frame
        self._error: ProtocolError | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a payload."""
        return len(self._buf)

    @property
    def at_frame_boundary(self) -> bool:
        """True when no partial frame is held (nothing buffered). Check after draining
        ``next_payload()``: False at EOF means the stream was cut mid-frame."""
        return not self._buf

    # -- input -------------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. Raises ``ProtocolError`` at once if the head frame's header
        is already visibly bad."""
        self._check_usable()
        self._buf += data
        if self._need is None:
            self._parse_header()

    def take_buffered(self) -> bytes:
        """Hand over the bytes of a partial frame (and forget them), for a caller that reads
        the rest of the stream itself. Call it after draining ``next_payload()``."""
        self._check_usable()
        out = bytes(self._buf)
        self._buf.clear()
        self._need = None
        return out

    def next_payload(self) -> bytes | None:
        """The next complete frame's payload, or None until more bytes arrive."""
        self._check_usable()
        if self._need is None and not self._parse_header():
            return None
        need = self._need
        assert need is not None
        if len(self._buf) < need:
            return None
        with memoryview(self._buf) as view:
            payload = bytes(view[FRAME_OVERHEAD:need])  # the only copy of the payload
        del self._buf[:need]
        self._need = None
        # The next header is checked lazily (on the next call), so a limit change made by the
        # caller after this payload applies to the frame that follows it.
        return payload

    def check_eof(self) -> None:
        """Declare the end of the stream: raise ``ProtocolError`` if it ended inside a frame.

        Complete frames still buffered are not an error (they stay available from
        ``next_payload()``); only a trailing partial frame is.
        """
        self._check_usable()
        offset, total = 0, len(self._buf)
        while offset < total:
            if total - offset < LENGTH_SIZE:
                got, want = total - offset, f"at least {LENGTH_SIZE}"
            else:
                (n,) = _LENGTH.unpack_from(self._buf, offset)
                frame = LENGTH_SIZE + n
                if total - offset >= frame:
                    offset += frame
                    continue
                got, want = total - offset, str(frame)
            self._fail(f"connection closed in the middle of a frame (got {got} of {want} bytes)")

    # -- internals ---------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._error is not None:
            raise ProtocolError(f"frame decoder unusable after an earlier error: {self._error}")

    def _fail(self, message: str) -> NoReturn:
        self._error = ProtocolError(message)
        raise self._error

    def _parse_header(self) -> bool:
        """Validate as much of the head frame's header as has arrived; True once the whole
        9-byte header is in and valid (``_need`` is then set)."""
        buf = self._buf
        if len(buf) < LENGTH_SIZE:
            return False
        (n,) = _LENGTH.unpack_from(buf, 0)
        try:
            check_length(n, self.max_frame_size, bytes(buf[:LENGTH_SIZE]))
        except ProtocolError as exc:
            self._fail(str(exc))
        if len(buf) < FRAME_OVERHEAD:
            # Check what we have of the magic early, so garbage fails fast.
            have = bytes(buf[LENGTH_SIZE:])
            if not MAGIC.startswith(have):
                self._fail(f"bad frame magic {have!r} (expected {MAGIC!r}): not a sift peer?")
            return False
        _, magic, version = _HEADER.unpack_from(buf, 0)
        try:
            check_prefix(magic, version)
        except ProtocolError as exc:
            self._fail(str(exc))
        self._need = LENGTH_SIZE + n
        return True
