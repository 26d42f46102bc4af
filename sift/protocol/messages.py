"""Protocol messages: frozen dataclasses, encoded as msgpack arrays ``[type_code, field1, ...]``.

Adding a message is one class::

    @message(50)
    @dataclass(frozen=True, slots=True)
    class Frobnicate(Message):
        req_id: UInt
        targets: tuple[Hash, ...]

The decorator registers the type code and compiles a validator/encoder for every field from its
annotation, once. Supported field types: ``int`` (never ``bool``), ``UInt``, ``str``, ``bytes``,
``bool``, ``Hash`` (exactly 32 bytes), ``X | None``, ``tuple[T, ...]``, fixed ``tuple[A, B]``,
and nested frozen dataclasses (encoded as arrays of their fields). Decoding checks exact types, so
a decoded message always compares equal to the one that was encoded.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

import msgpack

from sift.core.chunk import HASH_SIZE
from sift.protocol.errors import ProtocolError
from sift.protocol.frames import DEFAULT_MAX_FRAME, encode_frame, frame_header

__all__ = [
    "HANDSHAKE_MESSAGES",
    "INT64_MIN",
    "NODE_ROLES",
    "UINT64_MAX",
    "Auth",
    "ByteLength",
    "Challenge",
    "ChunkHints",
    "ChunkRequest",
    "ChunkResponse",
    "Error",
    "Goodbye",
    "Hash",
    "Hello",
    "HelloAck",
    "HoldingsReport",
    "IntRange",
    "ManifestPush",
    "ManifestRequest",
    "ManifestResponse",
    "Message",
    "PeerInfo",
    "PeerListRequest",
    "PeerListResponse",
    "Ping",
    "Pong",
    "StatusRequest",
    "StatusResponse",
    "UInt",
    "decode_payload",
    "encode_frame_head",
    "encode_message",
    "encode_message_parts",
    "encode_payload",
    "message",
    "registered_messages",
]

# -- field type markers ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ByteLength:
    """``Annotated`` marker: a ``bytes`` field that must be exactly ``size`` bytes long."""

    size: int


@dataclass(frozen=True, slots=True)
class IntRange:
    """``Annotated`` marker: an ``int`` field restricted to ``lo <= value <= hi``."""

    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class BytesView:
    """``Annotated`` marker: a ``bytes`` field that may also hold a read-only ``memoryview`` of
    bytes (what the receiver decodes chunk bytes to, without copying them)."""


INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1

Hash = Annotated[bytes, ByteLength(HASH_SIZE)]
"""A BLAKE3 chunk/nonce/proof digest: exactly 32 bytes."""

UInt = Annotated[int, IntRange(0, UINT64_MAX)]
"""A counter, id or version: an unsigned 64-bit integer."""

ChunkData = Annotated[bytes, BytesView()]
"""A chunk's bytes: ``bytes``, or a read-only view of the frame it arrived in."""

# Plain `int` is whatever msgpack can carry: signed 64-bit up to unsigned 64-bit.
_INT_RANGE = IntRange(INT64_MIN, UINT64_MAX)

NODE_ROLES = frozenset({"peer", "client", "master"})
"""Values of ``Hello.role``: a syncing peer, a status tool, or the master."""


# -- compiled field codecs -------------------------------------------------------------------


class _Invalid(Exception):
    """A field failed validation. ``parts`` collects the path (innermost first) on the way up,
    so the path string is only built when something is actually wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.parts: list[str] = []

    @property
    def path(self) -> str:
        return "".join(reversed(self.parts))


def _describe(value: object) -> str:
    return "None" if value is None else type(value).__name__


_Fn = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Codec:
    """How one annotated type is checked in both directions.

    ``decode`` takes what ``msgpack.unpackb(use_list=False)`` produced (arrays are tuples) and
    returns the Python value; ``encode`` takes the Python value and returns something msgpack can
    pack. Both raise ``_Invalid``. ``passthrough`` means decode returns its input unchanged,
    which lets containers of such values skip rebuilding.
    """

    expect: str
    decode: _Fn
    encode: _Fn
    passthrough: bool = False


def _exact(tp: type, expect: str) -> _Codec:
    def check(value: Any) -> Any:
        if type(value) is not tp:
            raise _Invalid(f"expected {expect}, got {_describe(value)}")
        return value

    return _Codec(expect, check, check, passthrough=True)


def _int_codec(bounds: IntRange) -> _Codec:
    lo, hi = bounds.lo, bounds.hi
    if lo == 0 and hi == UINT64_MAX:
        expect = "unsigned 64-bit int"
    elif bounds == _INT_RANGE:
        expect = "int"
    else:
        expect = f"int in [{lo}, {hi}]"

    def check(value: Any) -> Any:
        if type(value) is not int:  # `type is`, not isinstance: bool must not pass as int
            raise _Invalid(f"expected {expect}, got {_describe(value)}")
        if not lo <= value <= hi:
            raise _Invalid(f"expected {expect}, got {value}")
        return value

    return _Codec(expect, check, check, passthrough=True)


def _fixed_bytes_codec(size: int) -> _Codec:
    expect = f"{size}-byte bytes"

    def check(value: Any) -> Any:
        if type(value) is not bytes:
            raise _Invalid(f"expected {expect}, got {_describe(value)}")
        if len(value) != size:
            raise _Invalid(f"expected {expect}, got {len(value)} bytes")
        return value

    return _Codec(expect, check, check, passthrough=True)


def _bytes_or_view_codec() -> _Codec:
    def check(value: Any) -> Any:
        if type(value) is bytes:
            return value
        if type(value) is memoryview and value.readonly and value.format == "B" and value.ndim == 1:
            return value
        raise _Invalid(f"expected bytes, got {_describe(value)}")

    return _Codec("bytes", check, check, passthrough=True)


def _optional_codec(inner: _Codec) -> _Codec:
    expect = f"{inner.expect} or None"

    def mention_none(exc: _Invalid) -> None:
        # "expected str, got int" -> "expected str or None, got int" when the value itself is bad
        if not exc.parts:
            exc.reason = exc.reason.replace(f"expected {inner.expect}", f"expected {expect}", 1)

    def decode(value: Any) -> Any:
        if value is None:
            return None
        try:
            return inner.decode(value)
        except _Invalid as exc:
            mention_none(exc)
            raise

    def encode(value: Any) -> Any:
        if value is None:
            return None
        try:
            return inner.encode(value)
        except _Invalid as exc:
            mention_none(exc)
            raise

    return _Codec(expect, decode, encode, inner.passthrough)


def _variadic_tuple_codec(inner: _Codec) -> _Codec:
    expect = f"tuple of {inner.expect}"
    item_decode, item_encode = inner.decode, inner.encode

    def check_container(value: Any) -> None:
        if type(value) is not tuple:
            raise _Invalid(f"expected {expect}, got {_describe(value)}")

    if inner.passthrough:
        # Hot path (e.g. thousands of hashes): validate in place, return the same tuple.
        def check(value: Any) -> Any:
            check_container(value)
            for i, item in enumerate(value):
                try:
                    item_decode(item)
                except _Invalid as exc:
                    exc.parts.append(f"[{i}]")
                    raise
            return value

        return _Codec(expect, check, check, passthrough=True)

    def convert(value: Any, fn: _Fn, out_type: type) -> Any:
        check_container(value)
        out = []
        for i, item in enumerate(value):
            try:
                out.append(fn(item))
            except _Invalid as exc:
                exc.parts.append(f"[{i}]")
                raise
        return out_type(out)

    return _Codec(
        expect,
        lambda value: convert(value, item_decode, tuple),
        lambda value: convert(value, item_encode, list),
    )


def _fixed_tuple_codec(items: list[_Codec]) -> _Codec:
    expect = f"tuple[{', '.join(c.expect for c in items)}]"
    size = len(items)
    passthrough = all(c.passthrough for c in items)

    def convert(value: Any, encoding: bool) -> Any:
        if type(value) is not tuple:
            raise _Invalid(f"expected {expect}, got {_describe(value)}")
        if len(value) != size:
            raise _Invalid(f"expected {expect}, got {len(value)} items")
        out = []
        for i, (codec, item) in enumerate(zip(items, value, strict=True)):
            try:
                out.append(codec.encode(item) if encoding else codec.decode(item))
            except _Invalid as exc:
                exc.parts.append(f"[{i}]")
                raise
        if passthrough:
            return value
        return out if encoding else tuple(out)

    return _Codec(
        expect,
        lambda value: convert(value, False),
        lambda value: convert(value, True),
        passthrough,
    )


_CODECS: dict[type, _Codec] = {}


def _dataclass_codec(cls: type) -> _Codec:
    """Codec for a frozen dataclass, encoded as the array of its fields in declaration order."""
    cached = _CODECS.get(cls)
    if cached is not None:
        return cached
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} must be a frozen dataclass to travel on the wire")
    fields = dataclasses.fields(cls)
    for field in fields:
        if not field.init:
            raise TypeError(f"{cls.__name__}.{field.name}: init=False fields cannot be decoded")
    hints = get_type_hints(cls, include_extras=True)
    names = tuple(f.name for f in fields)
    codecs: list[_Codec] = []
    for name in names:
        try:
            codecs.append(_compile(hints[name]))
        except TypeError as exc:
            raise TypeError(f"{cls.__name__}.{name}: {exc}") from None
    count = len(names)
    arity = f"{count} field{'s' if count != 1 else ''} ({', '.join(names)})"
    pairs = tuple(zip(names, codecs, strict=True))

    def decode(value: Any) -> Any:
        if type(value) is not tuple:
            raise _Invalid(f"expected {cls.__name__} (an array of {arity}), got {_describe(value)}")
        if len(value) != count:
            raise _Invalid(f"expected {arity}, got {len(value)}")
        args = []
        for (name, codec), item in zip(pairs, value, strict=True):
            try:
                args.append(codec.decode(item))
            except _Invalid as exc:
                exc.parts.append(f".{name}")
                raise
        try:
            return cls(*args)
        except (TypeError, ValueError) as exc:  # a class may add semantic checks in __post_init__
            raise _Invalid(str(exc)) from None

    def encode(value: Any) -> Any:
        if type(value) is not cls:
            raise _Invalid(f"expected {cls.__name__}, got {_describe(value)}")
        out = []
        for name, codec in pairs:
            try:
                out.append(codec.encode(getattr(value, name)))
            except _Invalid as exc:
                exc.parts.append(f".{name}")
                raise
        return out

    codec = _Codec(cls.__name__, decode, encode)
    _CODECS[cls] = codec
    return codec


def _compile(tp: Any) -> _Codec:
    """Build the codec for one field annotation (raises TypeError for unsupported types)."""
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        if base is bytes and len(meta) == 1 and isinstance(meta[0], ByteLength):
            return _fixed_bytes_codec(meta[0].size)
        if base is bytes and len(meta) == 1 and isinstance(meta[0], BytesView):
            return _bytes_or_view_codec()
        if base is int and len(meta) == 1 and isinstance(meta[0], IntRange):
            return _int_codec(meta[0])
        raise TypeError(f"unsupported annotation {tp!r}")
    if tp is bool:
        return _exact(bool, "bool")
    if tp is int:
        return _int_codec(_INT_RANGE)
    if tp is str:
        return _exact(str, "str")
    if tp is bytes:
        return _exact(bytes, "bytes")
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        others = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(others) == 1:
            return _optional_codec(_compile(others[0]))
        raise TypeError(f"only `X | None` unions are supported, got {tp!r}")
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return _variadic_tuple_codec(_compile(args[0]))
        if args and Ellipsis not in args:
            return _fixed_tuple_codec([_compile(a) for a in args])
        raise TypeError(f"unsupported tuple type {tp!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_codec(tp)
    raise TypeError(f"unsupported field type {tp!r}")


# -- registry --------------------------------------------------------------------------------


class Message:
    """Base class of every message that travels in its own frame."""

    __slots__ = ()
    TYPE_CODE: ClassVar[int]


_M = TypeVar("_M", bound=Message)
_BY_CODE: dict[int, type[Message]] = {}


def message(type_code: int) -> Callable[[type[_M]], type[_M]]:
    """Register a frozen, slotted dataclass deriving from :class:`Message` under ``type_code``.

    Codes are 0..127 so they encode as a single msgpack byte. Field annotations are compiled
    here, so an unsupported field type fails at import time rather than on first use.
    """
    if type(type_code) is not int or not 0 <= type_code <= 127:
        raise ValueError(f"message type code must be an int in [0, 127], got {type_code!r}")

    def register(cls: type[_M]) -> type[_M]:
        if not (isinstance(cls, type) and issubclass(cls, Message)):
            raise TypeError(f"{cls!r} must subclass Message")
        if "__slots__" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must be a @dataclass(frozen=True, slots=True)")
        taken = _BY_CODE.get(type_code)
        if taken is not None:
            raise ValueError(f"message type code {type_code} is already used by {taken.__name__}")
        _dataclass_codec(cls)
        cls.TYPE_CODE = type_code
        _BY_CODE[type_code] = cls
        return cls

    return register


def registered_messages() -> dict[int, type[Message]]:
    """Every registered message class by type code (a copy)."""
    return dict(_BY_CODE)


# -- encoding / decoding ---------------------------------------------------------------------


def encode_payload(msg: Message) -> bytes:
    """The msgpack payload for ``msg`` (no frame). Raises ``ValueError`` if a field has the
    wrong type or value (a bug in the sender) and ``TypeError`` for an unregistered class."""
    cls = type(msg)
    if _BY_CODE.get(getattr(cls, "TYPE_CODE", -1)) is not cls:
        raise TypeError(f"{cls.__name__} is not a registered message")
    try:
        fields = _CODECS[cls].encode(msg)
    except _Invalid as exc:
        raise ValueError(f"cannot encode {cls.__name__}{exc.path}: {exc.reason}") from None
    try:
        return msgpack.packb([cls.TYPE_CODE, *fields], use_bin_type=True)
    except (ValueError, OverflowError) as exc:  # e.g. a str with lone surrogates is not UTF-8
        raise ValueError(f"cannot encode {cls.__name__}: {exc}") from None


def encode_message(msg: Message, *, max_frame_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """``msg`` as a complete frame, ready to write to the stream."""
    return encode_frame(encode_payload(msg), max_frame_size=max_frame_size)


# A trailing bytes field this large is not copied into the frame (see encode_message_parts).
BIG_FIELD = 64 * 1024
# Chunk bytes this large travel as their own piece of a ChunkResponse's frame (ditto).
OWN_PIECE = 8 * 1024


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    return b"\xdc" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xdd" + n.to_bytes(4, "big")


def _bin_header(n: int) -> bytes:
    """msgpack's header for a bin of ``n`` bytes, as packb writes it (the shortest form)."""
    if n < 1 << 8:
        return b"\xc4" + bytes([n])
    return b"\xc5" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xc6" + n.to_bytes(4, "big")


def encode_message_parts(
    msg: Message, *, max_frame_size: int = DEFAULT_MAX_FRAME
) -> tuple[bytes, ...]:
    """``msg`` as a frame in pieces to write one after the other: when its last field is a
    large ``bytes`` (a ManifestResponse's encoded manifest, megabytes for a big tree), that
    object itself is the last piece instead of being copied twice, into the msgpack payload and
    into the frame; likewise each chunk's bytes in a ChunkResponse. Same bytes on the wire as
    :func:`encode_message`."""
    fields = _fields(msg)
    bulk = _BULK_FIELD.get(type(msg))
    if bulk is not None:
        return _pieces(msg, fields, bulk, max_frame_size)
    big = fields[-1] if fields else None
    if type(big) is not bytes or len(big) < BIG_FIELD:
        try:
            payload = msgpack.packb([type(msg).TYPE_CODE, *fields], use_bin_type=True)
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"cannot encode {type(msg).__name__}: {exc}") from None
        return (encode_frame(payload, max_frame_size=max_frame_size),)
    return _frame_head(msg, fields, len(big), max_frame_size), big


def _pieces(msg: Message, fields: list[Any], bulk: int, max_frame_size: int) -> tuple[bytes, ...]:
    """The frame of a message whose field number ``bulk`` is a tuple of (hash, bytes) pairs,
    with each large ``bytes`` as a piece of its own: a 1 MiB ChunkResponse is written to the
    socket from the chunks read off disk, not after two copies (msgpack's, then the frame's)."""
    cls = type(msg)
    pieces: list[bytes] = []
    small = [_array_header(len(fields) + 1), msgpack.packb(cls.TYPE_CODE)]
    try:
        for i, value in enumerate(fields):
            if i != bulk:
                small.append(msgpack.packb(value, use_bin_type=True))
                continue
            small.append(_array_header(len(value)))
            for digest, data in value:
                small.append(b"\x92" + _bin_header(len(digest)) + digest)
                if len(data) < OWN_PIECE:
                    small.append(_bin_header(len(data)) + data)
                else:
                    small.append(_bin_header(len(data)))
                    pieces.append(b"".join(small))
                    pieces.append(data)
                    small = []
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"cannot encode {cls.__name__}: {exc}") from None
    pieces.append(b"".join(small))
    size = sum(len(p) for p in pieces)
    pieces[0] = frame_header(size, max_frame_size=max_frame_size) + pieces[0]
    return tuple(pieces)


def encode_frame_head(
    msg: Message, tail_size: int, *, max_frame_size: int = DEFAULT_MAX_FRAME
) -> bytes:
    """The frame of ``msg`` up to its last field, a ``bytes`` of ``tail_size`` bytes that the
    caller writes right after (so it can come from a file or a database in parts). The last
    field's own value is ignored (pass ``b""``). ValueError if the frame would be too large."""
    fields = _fields(msg)
    if not fields or type(fields[-1]) is not bytes:
        raise TypeError(f"{type(msg).__name__} does not end in a bytes field")
    return _frame_head(msg, fields, tail_size, max_frame_size)


def _frame_head(msg: Message, fields: list[Any], tail_size: int, max_frame_size: int) -> bytes:
    cls = type(msg)
    try:
        head = [_array_header(len(fields) + 1), msgpack.packb(cls.TYPE_CODE)]
        head += [msgpack.packb(f, use_bin_type=True) for f in fields[:-1]]
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"cannot encode {cls.__name__}: {exc}") from None
    head.append(b"\xc6" + tail_size.to_bytes(4, "big"))  # bin 32: the field's header
    prefix = b"".join(head)
    return frame_header(len(prefix) + tail_size, max_frame_size=max_frame_size) + prefix


def _fields(msg: Message) -> list[Any]:
    """The message's fields as they go on the wire, validated."""
    cls = type(msg)
    if _BY_CODE.get(getattr(cls, "TYPE_CODE", -1)) is not cls:
        raise TypeError(f"{cls.__name__} is not a registered message")
    try:
        return _CODECS[cls].encode(msg)
    except _Invalid as exc:
        raise ValueError(f"cannot encode {cls.__name__}{exc.path}: {exc.reason}") from None


class _NotAllowed(ValueError):
    pass


def _reject_map(_: object) -> object:
    # No sift message uses maps; refusing them at parse time also stops a peer from making us
    # allocate millions of empty dicts from a payload of 0x80 bytes.
    raise _NotAllowed(
        "msgpack maps are not used in sift messages (a payload is an array [type_code, ...])"
    )


def _reject_ext(code: int, _: bytes) -> object:
    raise _NotAllowed(f"msgpack extension type {code} is not used in sift messages")


def _unpack(payload: bytes) -> Any:
    try:
        # unpackb bounds every str/bin/array length by len(payload), so a small payload cannot
        # claim a huge allocation.
        return msgpack.unpackb(
            payload,
            raw=False,
            use_list=False,
            strict_map_key=True,
            object_hook=_reject_map,
            ext_hook=_reject_ext,
        )
    except msgpack.ExtraData as exc:
        what = exc.unpacked
        name = ""
        if type(what) is tuple and what and type(what[0]) is int and what[0] in _BY_CODE:
            name = f" after a {_BY_CODE[what[0]].__name__}"
        raise ProtocolError(
            f"trailing bytes after message: {len(exc.extra)} extra byte(s){name}"
        ) from None
    except _NotAllowed as exc:
        raise ProtocolError(str(exc)) from None
    except msgpack.StackError:
        raise ProtocolError("malformed msgpack payload: nested too deeply") from None
    except msgpack.FormatError:
        raise ProtocolError("malformed msgpack payload: invalid type byte") from None
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"malformed msgpack payload: a string is not UTF-8 ({exc})") from None
    except Exception as exc:  # msgpack signals truncation etc. with plain ValueError & co.
        detail = str(exc) or type(exc).__name__
        if "incomplete input" in detail:
            detail = "truncated (incomplete input)"
        raise ProtocolError(f"malformed msgpack payload: {detail}") from None


def decode_payload(payload: bytes | bytearray | memoryview) -> Message:
    """Parse and validate one frame payload. Raises ``ProtocolError`` for anything malformed,
    naming the message and field at fault. A ChunkResponse's chunk bytes are read-only
    memoryviews of ``payload`` (see _chunk_response_view)."""
    if payload[:2] == _CHUNK_RESPONSE_HEAD:
        msg = _chunk_response_view(payload)
        if msg is not None:
            return msg
    return _decode_generic(payload)


def _decode_generic(payload: bytes | bytearray | memoryview) -> Message:
    obj = _unpack(payload)
    if type(obj) is not tuple:
        raise ProtocolError(
            f"message payload must be a msgpack array [type_code, fields...], got {_describe(obj)}"
        )
    if not obj:
        raise ProtocolError("empty message array: no type code")
    code = obj[0]
    if type(code) is not int:
        raise ProtocolError(f"message type code must be an int, got {_describe(code)}")
    cls = _BY_CODE.get(code)
    if cls is None:
        raise ProtocolError(f"unknown message type {code}")
    try:
        return _CODECS[cls].decode(obj[1:])
    except _Invalid as exc:
        raise ProtocolError(f"{cls.__name__}{exc.path}: {exc.reason}") from None


# -- the messages ----------------------------------------------------------------------------
# Type codes are grouped by purpose; docs/protocol.md has the same tables.
#   1-9 handshake, 10-19 session control, 20-29 manifests, 30-39 chunks, 40-49 peers & status.

# Handshake ----------------------------------------------------------------------------------


@message(1)
@dataclass(frozen=True, slots=True)
class Hello(Message):
    """client -> server, first frame. ``nonce`` is the client's fresh challenge; ``role`` is one
    of NODE_ROLES; ``listen_port`` / ``advertise_addr`` say where other peers can reach us."""

    node_id: str
    role: str
    nonce: Hash
    software: str
    listen_port: UInt | None
    advertise_addr: str | None


@message(2)
@dataclass(frozen=True, slots=True)
class Challenge(Message):
    """server -> client: the server's fresh nonce and its proof of knowing the key."""

    node_id: str
    nonce: Hash
    proof: Hash


@message(3)
@dataclass(frozen=True, slots=True)
class Auth(Message):
    """client -> server: the client's proof of knowing the key."""

    proof: Hash


@message(4)
@dataclass(frozen=True, slots=True)
class HelloAck(Message):
    """server -> client once the client is authenticated: the handshake is complete.
    ``observed_addr`` is the client's address as the server sees it (NAT discovery)."""

    node_id: str
    manifest_version: UInt
    observed_addr: str


HANDSHAKE_MESSAGES: tuple[type[Message], ...] = (Hello, Challenge, Auth, HelloAck)


# Session control ----------------------------------------------------------------------------


@message(10)
@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Either side: liveness check; answered with a Pong carrying the same token."""

    token: UInt


@message(11)
@dataclass(frozen=True, slots=True)
class Pong(Message):
    token: UInt


@message(12)
@dataclass(frozen=True, slots=True)
class Goodbye(Message):
    """Either side, before closing on purpose (shutdown, replaced by a newer connection...)."""

    reason: str


@message(13)
@dataclass(frozen=True, slots=True)
class Error(Message):
    """Either side: a request failed (``req_id`` set) or the connection is about to be closed
    (``req_id`` None), e.g. ``code="auth_failed"`` or ``code="protocol_error"``."""

    req_id: UInt | None
    code: str
    message: str


# Manifests ----------------------------------------------------------------------------------


@message(20)
@dataclass(frozen=True, slots=True)
class ManifestRequest(Message):
    """Ask for the current manifest; with ``since_version`` a delta from that version is fine."""

    req_id: UInt
    since_version: UInt | None


@message(21)
@dataclass(frozen=True, slots=True)
class ManifestResponse(Message):
    """``data`` is an encoded manifest (``base_version`` None) or a delta from ``base_version``
    to ``version``, in sift.core's format; opaque to the protocol."""

    req_id: UInt
    version: UInt
    base_version: UInt | None
    data: bytes


@message(22)
@dataclass(frozen=True, slots=True)
class ManifestPush(Message):
    """master -> peers (and peer -> peer): manifest ``version`` exists; fetch it if behind."""

    version: UInt


# Chunks -------------------------------------------------------------------------------------


@message(30)
@dataclass(frozen=True, slots=True)
class ChunkRequest(Message):
    """Fetch chunks. ``avoid`` lists peer addresses that already failed the requester for these
    chunks, so the master does not answer with ``elsewhere`` pointing back at them (empty when
    asking a peer)."""

    req_id: UInt
    hashes: tuple[Hash, ...]
    avoid: tuple[str, ...]


@message(31)
@dataclass(frozen=True, slots=True)
class ChunkResponse(Message):
    """Answer to ChunkRequest, every requested hash in exactly one list: ``chunks`` (here it is),
    ``missing`` (never had it), ``stale`` (had it, no longer current), ``elsewhere`` (fetch it
    from the peer at this address). Received chunk bytes are read-only memoryviews of the frame
    (bytes-like: hash them, write them, compare them; ``bytes(data)`` for a copy of one's own)."""

    req_id: UInt
    chunks: tuple[tuple[Hash, ChunkData], ...]
    missing: tuple[Hash, ...]
    stale: tuple[Hash, ...]
    elsewhere: tuple[tuple[Hash, str], ...]


# Messages whose field at this index is a tuple of (hash, bytes) chunk pairs, sent in pieces.
_BULK_FIELD: dict[type[Message], int] = {ChunkResponse: 1}

# -- receiving chunks without copying them -----------------------------------------------------
# A peer receives every byte of the dataset in ChunkResponses, and msgpack would copy each chunk
# out of the frame once more before it is hashed and written. So the exact shape _pieces writes
# is read here by hand, each chunk a read-only view of the payload; anything else (or anything
# wrong) goes to the generic decoder, which also says what is wrong.

_CHUNK_RESPONSE_HEAD = bytes([0x96, ChunkResponse.TYPE_CODE])  # array of 6: the code, 5 fields
_CHUNK_PAIR_HEAD = bytes([0x92, 0xC4, HASH_SIZE])  # [bin8 hash, bin data]
_UINT_WIDTHS = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_ARRAY_WIDTHS = {0xDC: 2, 0xDD: 4}
_BIN_WIDTHS = {0xC4: 1, 0xC5: 2, 0xC6: 4}


def _wide_int(view: memoryview, pos: int, widths: dict[int, int]) -> tuple[int, int] | None:
    """The big-endian number after the marker byte at ``pos``: (value, position after it)."""
    width = widths.get(view[pos]) if pos < len(view) else None
    end = pos + 1 + (width or 0)
    if width is None or end > len(view):
        return None
    return int.from_bytes(view[pos + 1 : end], "big"), end


def _chunk_response_view(payload: bytes | bytearray | memoryview) -> ChunkResponse | None:
    view = memoryview(payload).toreadonly()
    pos = 2
    if pos < len(view) and view[pos] < 0x80:  # req_id as a positive fixint
        pos += 1
    elif (found := _wide_int(view, pos, _UINT_WIDTHS)) is not None:
        pos = found[1]
    else:
        return None
    head_end = pos
    if pos < len(view) and view[pos] & 0xF0 == 0x90:
        count, pos = view[pos] & 0x0F, pos + 1
    elif (found := _wide_int(view, pos, _ARRAY_WIDTHS)) is not None:
        count, pos = found
    else:
        return None
    chunks = []
    for _ in range(count):
        if view[pos : pos + 3] != _CHUNK_PAIR_HEAD:
            return None
        digest = view[pos + 3 : pos + 3 + HASH_SIZE].tobytes()
        found = _wide_int(view, pos + 3 + HASH_SIZE, _BIN_WIDTHS)
        if found is None or found[1] + found[0] > len(view):
            return None
        size, start = found
        chunks.append((digest, view[start : start + size]))
        pos = start + size
    # The small fields (req_id, missing, stale, elsewhere, and no trailing bytes) are checked
    # by the generic decoder, on the payload without its chunks; if they are bad, it decodes
    # the whole payload again to name the fault in the usual words.
    try:
        rest = _decode_generic(bytes(view[:head_end]) + b"\x90" + bytes(view[pos:]))
    except ProtocolError:
        return None
    assert isinstance(rest, ChunkResponse)
    return ChunkResponse(rest.req_id, tuple(chunks), rest.missing, rest.stale, rest.elsewhere)


@message(32)
@dataclass(frozen=True, slots=True)
class HoldingsReport(Message):
    """peer -> master: which chunks I hold as of manifest ``version``. ``full=True`` replaces
    what the master knew (``removed`` then empty); otherwise a delta. The two byte counters are
    cumulative since the peer started (chunk bytes received from and served to other peers); the
    master turns them into the peer-to-peer rates it shows operators."""

    version: UInt
    full: bool
    added: tuple[Hash, ...]
    removed: tuple[Hash, ...]
    bytes_from_peers: UInt = 0
    bytes_to_peers: UInt = 0


@message(33)
@dataclass(frozen=True, slots=True)
class ChunkHints(Message):
    """master -> peers, unasked: the peer at ``addr`` is being sent these chunks by the master.
    A peer still missing them asks that peer instead of the master. Advisory: a hint may be
    dropped, and acting on a wrong one costs one request. Answers to chunk requests queue behind
    chunk bytes on a slow master link; hints let peers trade what the master sent others at
    once instead of learning of it only from those answers."""

    addr: str
    hashes: tuple[Hash, ...]


# Peers & status -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """One entry of PeerListResponse (not a message by itself)."""

    node_id: str
    addr: str
    version: UInt
    chunks_held: UInt
    complete: bool


@message(40)
@dataclass(frozen=True, slots=True)
class PeerListRequest(Message):
    req_id: UInt


@message(41)
@dataclass(frozen=True, slots=True)
class PeerListResponse(Message):
    req_id: UInt
    peers: tuple[PeerInfo, ...]


@message(42)
@dataclass(frozen=True, slots=True)
class StatusRequest(Message):
    req_id: UInt


@message(43)
@dataclass(frozen=True, slots=True)
class StatusResponse(Message):
    """``status_json`` is a JSON document defined by the daemon (kept opaque here)."""

    req_id: UInt
    status_json: str
