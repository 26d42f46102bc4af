"""Messages: every type round-trips, validation is exact, and nothing but ProtocolError escapes.

The Hypothesis strategies are derived from the message annotations themselves, so a new message
class is covered by these properties without touching this file. Other protocol tests import
``any_message`` / ``app_message`` from here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sift.protocol import messages
from sift.protocol.errors import ProtocolError
from sift.protocol.frames import FrameDecoder, encode_frame
from sift.protocol.messages import (
    BIG_FIELD,
    HANDSHAKE_MESSAGES,
    INT64_MIN,
    OWN_PIECE,
    UINT64_MAX,
    ByteLength,
    BytesView,
    ChunkRequest,
    ChunkResponse,
    Error,
    Hello,
    IntRange,
    ManifestPush,
    ManifestResponse,
    Message,
    PeerInfo,
    PeerListResponse,
    Ping,
    decode_payload,
    encode_message,
    encode_message_parts,
    encode_payload,
    message,
    registered_messages,
)

FAST = settings(max_examples=40, deadline=None)
H = bytes(range(32))
DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


# -- strategies from annotations -------------------------------------------------------------


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy producing valid values for one field annotation."""
    origin = get_origin(tp)
    if origin is Annotated:
        _, marker = get_args(tp)
        if isinstance(marker, ByteLength):
            return st.binary(min_size=marker.size, max_size=marker.size)
        if isinstance(marker, IntRange):
            return st.integers(marker.lo, marker.hi)
        if isinstance(marker, BytesView):
            return st.binary(max_size=64)
        raise TypeError(tp)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(INT64_MIN, UINT64_MAX)
    if tp is str:
        return st.text(st.characters(codec="utf-8"), max_size=16)
    if tp is bytes:
        return st.binary(max_size=48)
    if origin is Union or origin is types.UnionType:
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return st.none() | strategy_for(inner)
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
        return st.tuples(*(strategy_for(a) for a in args))
    if dataclasses.is_dataclass(tp):
        hints = get_type_hints(tp, include_extras=True)
        return st.builds(tp, *(strategy_for(hints[f.name]) for f in dataclasses.fields(tp)))
    raise TypeError(tp)


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    return strategy_for(cls)


MESSAGE_CLASSES = sorted(registered_messages().values(), key=lambda c: c.TYPE_CODE)
APP_CLASSES = [c for c in MESSAGE_CLASSES if c not in HANDSHAKE_MESSAGES]

any_message = st.sampled_from(MESSAGE_CLASSES).flatmap(message_strategy)
app_message = st.sampled_from(APP_CLASSES).flatmap(message_strategy)


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_every_message_round_trips(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(message_strategy(cls))
    payload = encode_payload(msg)
    decoded = decode_payload(payload)
    assert decoded == msg
    assert type(decoded) is cls
    assert encode_payload(decoded) == payload  # and re-encodes to the same bytes


@FAST
@given(
    msgs=st.lists(any_message, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=10),
)
def test_stream_of_random_messages_split_anywhere(msgs: list[Message], cuts: list[int]) -> None:
    stream = b"".join(encode_message(m) for m in msgs)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    got = []
    for a, b in itertools.pairwise(points):
        decoder.feed(stream[a:b])
        while (payload := decoder.next_payload()) is not None:
            got.append(decode_payload(payload))
    decoder.check_eof()
    assert got == msgs


def test_decoded_containers_are_tuples() -> None:
    msg = ChunkResponse(7, ((H, b"data"),), (H,), (), ((H, "10.0.0.2:7070"),))
    decoded = decode_payload(encode_payload(msg))
    assert isinstance(decoded, ChunkResponse)
    assert type(decoded.chunks) is tuple
    assert type(decoded.chunks[0]) is tuple
    assert hash(decoded) == hash(msg)


def test_nested_dataclass_round_trip() -> None:
    msg = PeerListResponse(1, (PeerInfo("n1", "10.0.0.1:7070", 4, 1000, False),))
    assert decode_payload(encode_payload(msg)) == msg


def test_payload_is_the_documented_array() -> None:
    assert msgpack.unpackb(encode_payload(ManifestPush(5))) == [ManifestPush.TYPE_CODE, 5]


def test_type_codes_are_unique_and_small() -> None:
    codes = [c.TYPE_CODE for c in MESSAGE_CLASSES]
    assert len(set(codes)) == len(codes)
    assert all(0 <= c <= 127 for c in codes)


# -- malformed payloads ----------------------------------------------------------------------


def packed(*items: Any) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


MALFORMED = [
    pytest.param(packed(99), "unknown message type 99", id="unknown-type"),
    pytest.param(msgpack.packb(5), "must be a msgpack array", id="not-array"),
    pytest.param(msgpack.packb({"type": 22}), "maps are not used", id="map"),
    pytest.param(packed(), "empty message array", id="empty-array"),
    pytest.param(packed("22", 5), "type code must be an int, got str", id="str-code"),
    pytest.param(packed(22), "ManifestPush: expected 1 field (version), got 0", id="too-few"),
    pytest.param(
        packed(22, 1, 2), "ManifestPush: expected 1 field (version), got 2", id="too-many"
    ),
    pytest.param(
        packed(22, "5"),
        "ManifestPush.version: expected unsigned 64-bit int, got str",
        id="wrong-type",
    ),
    pytest.param(
        packed(22, True),
        "ManifestPush.version: expected unsigned 64-bit int, got bool",
        id="bool-is-not-int",
    ),
    pytest.param(
        packed(22, -1), "ManifestPush.version: expected unsigned 64-bit int, got -1", id="negative"
    ),
    pytest.param(packed(22, 5) + b"\xc0", "trailing bytes after message", id="trailing"),
    pytest.param(
        packed(30, 1, [H, H, H, "x"], []),
        "ChunkRequest.hashes[3]: expected 32-byte bytes, got str",
        id="hash-type",
    ),
    pytest.param(
        packed(30, 1, [H[:31]], []),
        "ChunkRequest.hashes[0]: expected 32-byte bytes, got 31 bytes",
        id="hash-length",
    ),
    pytest.param(
        packed(30, 1, H, []),
        "ChunkRequest.hashes: expected tuple of 32-byte bytes, got bytes",
        id="not-a-list",
    ),
    pytest.param(
        packed(31, 1, [[H]], [], [], []),
        "ChunkResponse.chunks[0]: expected tuple[32-byte bytes, bytes], got 1 items",
        id="pair-arity",
    ),
    pytest.param(
        packed(31, 1, [[H, "text"]], [], [], []),
        "ChunkResponse.chunks[0][1]: expected bytes, got str",
        id="pair-item",
    ),
    pytest.param(
        packed(41, 1, [["n", "a", 1, 2, 1]]),
        "PeerListResponse.peers[0].complete: expected bool, got int",
        id="nested-field",
    ),
    pytest.param(
        packed(41, 1, [["n", "a", 1]]),
        "PeerListResponse.peers[0]: expected 5 fields",
        id="nested-arity",
    ),
    pytest.param(packed(13, None, "c", None), "Error.message: expected str, got None", id="none"),
    pytest.param(
        packed(20, 1, 1.5),
        "ManifestRequest.since_version: expected unsigned 64-bit int or None, got float",
        id="float",
    ),
    pytest.param(packed(12, b"bytes"), "Goodbye.reason: expected str, got bytes", id="bin-not-str"),
    pytest.param(b"\x92\x0c\xa2\xff\xfe", "not UTF-8", id="bad-utf8"),
    pytest.param(b"\x92\x16", "truncated", id="truncated-msgpack"),
    pytest.param(b"", "truncated", id="empty-payload"),
    pytest.param(b"\x92\x0c\xc1", "invalid type byte", id="reserved-byte"),
    pytest.param(b"\x91" * 5000 + b"\x90", "nested too deeply", id="deep"),
    pytest.param(b"\x92\x0c\xd4\x01\x00", "extension type 1", id="ext"),
    pytest.param(
        b"\x92\x0c\xd6\xff\x00\x00\x00\x01",
        "Goodbye.reason: expected str, got Timestamp",
        id="timestamp",
    ),
]


@pytest.mark.parametrize(("payload", "fragment"), MALFORMED)
def test_malformed_payload(payload: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_payload(payload)
    assert fragment in str(info.value)


# Arbitrary msgpack values, biased towards arrays that start with a real type code.
_msgpack_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(INT64_MIN, UINT64_MAX),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=40),
    st.binary(min_size=32, max_size=32),
)
_msgpack_value = st.recursive(
    _msgpack_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=12,
)
_shaped = st.builds(
    lambda code, fields: [code, *fields],
    st.sampled_from([c.TYPE_CODE for c in MESSAGE_CLASSES]) | st.integers(-5, 200),
    st.lists(_msgpack_value, max_size=7),
)


@FAST
@given(obj=_shaped | _msgpack_value, tail=st.binary(max_size=2))
def test_arbitrary_msgpack_yields_message_or_protocol_error(obj: Any, tail: bytes) -> None:
    payload = msgpack.packb(obj, use_bin_type=True) + tail
    with contextlib.suppress(ProtocolError):
        assert isinstance(decode_payload(payload), Message)


@FAST
@given(msg=any_message, data=st.data())
def test_mutated_messages_yield_message_or_protocol_error(
    msg: Message, data: st.DataObject
) -> None:
    payload = bytearray(encode_payload(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload)))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip" and i < len(payload):
            payload[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            payload[i:i] = data.draw(st.binary(min_size=1, max_size=3))
        elif i < len(payload):
            del payload[i]
    with contextlib.suppress(ProtocolError):
        assert isinstance(decode_payload(bytes(payload)), Message)


@FAST
@given(data=st.binary(max_size=200))
def test_random_bytes_through_frames_and_messages(data: bytes) -> None:
    decoder = FrameDecoder()
    try:
        decoder.feed(encode_frame(data) + data)
        while (payload := decoder.next_payload()) is not None:
            decode_payload(payload)
        decoder.check_eof()
    except ProtocolError:
        pass


# -- encoding is validated too ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "fragment"),
    [
        (
            ChunkRequest(1, [H], ()),
            "ChunkRequest.hashes: expected tuple of 32-byte bytes, got list",
        ),  # type: ignore[arg-type]
        (
            ChunkRequest(1, (H[:5],), ()),
            "ChunkRequest.hashes[0]: expected 32-byte bytes, got 5 bytes",
        ),
        (ManifestPush(-1), "ManifestPush.version: expected unsigned 64-bit int, got -1"),
        (ManifestPush(2**64), "got 18446744073709551616"),
        (Ping(True), "Ping.token: expected unsigned 64-bit int, got bool"),
        (ManifestResponse(1, 2, None, bytearray(b"x")), "ManifestResponse.data: expected bytes"),  # type: ignore[arg-type]
        (Error(None, "c", "\ud800"), "surrogates not allowed"),  # not encodable as UTF-8
    ],
)
def test_encode_rejects_invalid_fields(msg: Message, fragment: str) -> None:
    with pytest.raises(ValueError, match="cannot encode") as info:
        encode_payload(msg)
    assert fragment in str(info.value)


def test_unregistered_class_cannot_be_encoded() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Stray(Message):
        x: int

    with pytest.raises(TypeError, match="not a registered message"):
        encode_payload(Stray(1))


# -- the registry ----------------------------------------------------------------------------


def test_registry_rejects_bad_declarations() -> None:
    with pytest.raises(ValueError, match="already used by Ping"):

        @message(Ping.TYPE_CODE)
        @dataclasses.dataclass(frozen=True, slots=True)
        class Dup(Message):
            x: int

    with pytest.raises(ValueError, match=r"\[0, 127\]"):
        message(128)

    with pytest.raises(TypeError, match="frozen dataclass"):

        @message(120)
        @dataclasses.dataclass(slots=True)
        class Mutable(Message):
            x: int

    with pytest.raises(TypeError, match=r"Floaty\.x: unsupported field type"):

        @message(121)
        @dataclasses.dataclass(frozen=True, slots=True)
        class Floaty(Message):
            x: float

    with pytest.raises(TypeError, match=r"only `X \| None` unions"):

        @message(122)
        @dataclasses.dataclass(frozen=True, slots=True)
        class Either(Message):
            x: int | str

    assert not {120, 121, 122} & set(registered_messages())


def test_hello_fields_are_as_specified() -> None:
    names = [f.name for f in dataclasses.fields(Hello)]
    assert names == ["node_id", "role", "nonce", "software", "listen_port", "advertise_addr"]


# -- docs stay in sync with the code ---------------------------------------------------------


def test_docs_list_every_message_with_its_code() -> None:
    text = DOCS.read_text(encoding="utf-8")
    rows = {name: int(code) for code, name in re.findall(r"^\|\s*(\d+)\s*\|\s*`(\w+)`", text, re.M)}
    assert rows == {c.__name__: c.TYPE_CODE for c in MESSAGE_CLASSES}


def test_docs_worked_example_matches_the_encoder() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert encode_message(ManifestPush(version=5)).hex(" ") in text


# -- frames in parts ---------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(app_message)
def test_parts_are_the_same_bytes_as_the_whole_frame(msg: Message) -> None:
    assert b"".join(encode_message_parts(msg)) == encode_message(msg)


@pytest.mark.parametrize("size", [BIG_FIELD - 1, BIG_FIELD, 3_000_000])
def test_a_big_manifest_is_its_own_piece(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    msg = ManifestResponse(4, 12, 11, data)
    parts = encode_message_parts(msg)
    assert b"".join(parts) == encode_message(msg)
    if size >= BIG_FIELD:
        assert len(parts) == 2
        assert parts[-1] is data  # written as it is, never copied
    else:
        assert len(parts) == 1
    decoder = FrameDecoder()
    for part in parts:
        decoder.feed(part)
    assert decode_payload(decoder.next_payload()) == msg


def test_chunk_bytes_are_pieces_of_their_own() -> None:
    """A ChunkResponse's chunk bytes are written as they are, not copied into the frame; small
    ones (and every other field) are packed around them. Sizes cross each msgpack bin form."""
    sizes = [0, 5, 255, 256, OWN_PIECE - 1, OWN_PIECE, 65_535, 65_536, 262_144]
    chunks = tuple((bytes([i]) * 32, bytes([i]) * n) for i, n in enumerate(sizes))
    msg = ChunkResponse(7, chunks, (b"m" * 32,), (b"s" * 32,), ((b"e" * 32, "10.0.0.1:7000"),))
    parts = encode_message_parts(msg)
    assert b"".join(parts) == encode_message(msg)
    big = [data for _, data in chunks if len(data) >= OWN_PIECE]
    assert [p for p in parts if any(p is d for d in big)] == big
    decoder = FrameDecoder()
    for part in parts:
        decoder.feed(part)
    assert decode_payload(decoder.next_payload()) == msg


def test_parts_respect_the_frame_limit() -> None:
    with pytest.raises(ValueError, match="exceeds the 100000-byte limit"):
        encode_message_parts(
            ChunkResponse(1, ((b"h" * 32, b"x" * 100_000),), (), (), ()), max_frame_size=100_000
        )
    with pytest.raises(ValueError, match="exceeds the 100000-byte limit"):
        encode_message_parts(ManifestResponse(1, 2, None, b"x" * 100_000), max_frame_size=100_000)


# -- ChunkResponse decoded without copying its chunks -------------------------------------------


def _decode_copying(payload: bytes) -> Message:
    """The generic decoder alone (msgpack copies every chunk): the reference for the view path."""
    return messages._decode_generic(payload)


@pytest.mark.parametrize("req_id", [0, 127, 128, 65_535, 65_536, 2**32, UINT64_MAX])
@pytest.mark.parametrize("count", [0, 1, 15, 16])
def test_received_chunks_are_views_of_the_payload(req_id: int, count: int) -> None:
    """Every chunk of a ChunkResponse comes out as a read-only view of the payload it arrived
    in, whatever the width of the request id, the chunk count or each chunk's length."""
    sizes = [0, 5, 255, 256, 65_535, 65_536, 70_000]
    chunks = tuple(
        (bytes([i]) * 32, bytes([i % 251]) * sizes[i % len(sizes)]) for i in range(count)
    )
    msg = ChunkResponse(req_id, chunks, (b"m" * 32,), (), ((b"e" * 32, "10.0.0.1:7000"),))
    payload = encode_payload(msg)
    decoded = decode_payload(payload)
    assert decoded == msg == _decode_copying(payload)
    for (digest, data), (_, want) in zip(decoded.chunks, chunks, strict=True):
        assert type(digest) is bytes
        assert type(data) is memoryview
        assert data.readonly
        assert data.obj is payload  # not a copy
        assert data == want
    assert encode_payload(decoded) == payload  # a received response re-encodes as it came


def test_a_bytearray_payload_gives_read_only_views() -> None:
    payload = bytearray(encode_payload(ChunkResponse(1, ((H, b"abc" * 100),), (), (), ())))
    data = decode_payload(payload).chunks[0][1]
    assert data.readonly
    with pytest.raises(TypeError):
        data[0] = 0  # type: ignore[index]


def test_other_encodings_of_a_chunk_response_still_decode() -> None:
    """msgpack allows wider forms than the ones sift writes (a hash as bin16, a count as
    array16): those take the generic path and decode to the same message."""
    wide = (
        b"\x96\x1f\xcd\x00\x07"  # req_id 7 as uint16
        + b"\xdc\x00\x01"  # one chunk, as array16
        + b"\x92\xc5\x00\x20"
        + H  # the hash as bin16
        + b"\xc6\x00\x00\x00\x03abc"  # data as bin32
        + b"\x90\x90\x90"
    )
    assert decode_payload(wide) == ChunkResponse(7, ((H, b"abc"),), (), (), ())


_CHUNK_RESPONSES = st.builds(
    ChunkResponse,
    st.integers(0, UINT64_MAX),
    st.lists(
        st.tuples(st.binary(min_size=32, max_size=32), st.binary(max_size=300)), max_size=4
    ).map(tuple),
    st.lists(st.binary(min_size=32, max_size=32), max_size=2).map(tuple),
    st.lists(st.binary(min_size=32, max_size=32), max_size=2).map(tuple),
    st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.text(max_size=8)), max_size=2).map(
        tuple
    ),
)


@settings(max_examples=1000, deadline=None)
@given(msg=_CHUNK_RESPONSES, data=st.data())
def test_the_view_path_agrees_with_msgpack_on_damaged_payloads(msg, data) -> None:
    """Cut, extend or change any byte of a ChunkResponse: the view path decodes exactly what
    the generic decoder does, or fails with the same error."""
    payload = bytearray(encode_payload(msg))
    action = data.draw(st.sampled_from(["cut", "extend", "flip"]))
    at = data.draw(st.integers(0, len(payload) - 1))
    if action == "cut":
        del payload[at:]
    elif action == "extend":
        payload[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    else:
        payload[at] = data.draw(st.integers(0, 255))
    payload = bytes(payload)
    assert _outcome(decode_payload, payload) == _outcome(_decode_copying, payload)


def _outcome(decode, payload: bytes) -> object:
    try:
        return decode(payload)
    except ProtocolError as exc:
        return f"ProtocolError: {exc}"
