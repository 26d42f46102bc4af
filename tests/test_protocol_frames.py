"""Framing: layout, incremental decoding under any split, and every malformed-header case."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sift.protocol.errors import ProtocolError
from sift.protocol.frames import (
    DEFAULT_MAX_FRAME,
    FRAME_OVERHEAD,
    MAGIC,
    PROTOCOL_VERSION,
    FrameDecoder,
    encode_frame,
)

FAST = settings(max_examples=60, deadline=None)


def header(n: int, magic: bytes = MAGIC, version: int = PROTOCOL_VERSION) -> bytes:
    return struct.pack(">I", n) + magic + bytes([version])


def drain(decoder: FrameDecoder) -> list[bytes]:
    out = []
    while (payload := decoder.next_payload()) is not None:
        out.append(payload)
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# -- layout ----------------------------------------------------------------------------------


def test_frame_layout() -> None:
    frame = encode_frame(b"\x92\x16\x05")
    assert frame == b"\x00\x00\x00\x08" + b"SIFT" + b"\x01" + b"\x92\x16\x05"
    assert len(frame) == FRAME_OVERHEAD + 3


def test_empty_payload_is_a_legal_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b""))
    assert decoder.next_payload() == b""
    assert decoder.at_frame_boundary


def test_encode_refuses_frames_the_peer_would_reject() -> None:
    with pytest.raises(ValueError, match="exceeds the 100-byte limit"):
        encode_frame(b"x" * 96, max_frame_size=100)
    assert encode_frame(b"x" * 95, max_frame_size=100)  # N == 100 is allowed


# -- decoding --------------------------------------------------------------------------------


def test_byte_at_a_time() -> None:
    payloads = [b"a", b"", b"hello" * 50]
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    got = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        got.extend(drain(decoder))
    assert got == payloads
    assert decoder.at_frame_boundary
    assert decoder.buffered == 0


def test_buffered_and_boundary_track_partial_frames() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"abcdef")
    decoder.feed(frame[:7])
    assert decoder.next_payload() is None
    assert decoder.buffered == 7
    assert not decoder.at_frame_boundary
    decoder.feed(frame[7:])
    assert decoder.next_payload() == b"abcdef"
    assert decoder.at_frame_boundary


def test_max_frame_size_is_inclusive_and_configurable() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    decoder.feed(header(10) + b"x" * 5)
    assert decoder.next_payload() == b"x" * 5
    with pytest.raises(ProtocolError, match="frame of 11 bytes exceeds the 10-byte limit"):
        decoder.feed(header(11))


def test_limit_change_applies_to_the_next_frame() -> None:
    # The connection raises the limit after the handshake; a big frame queued right behind the
    # last handshake frame must be judged by the new limit.
    decoder = FrameDecoder(max_frame_size=100)
    decoder.feed(encode_frame(b"small") + encode_frame(b"y" * 1000))
    assert decoder.next_payload() == b"small"
    decoder.max_frame_size = 10_000
    assert decoder.next_payload() == b"y" * 1000


@pytest.mark.timeout(30)
def test_large_frame_in_small_feeds_is_linear() -> None:
    # 16 MiB in 4 KiB pieces: quadratic buffering would copy tens of GB and time out.
    payload = bytes(range(256)) * (16 * 4096)
    frame = encode_frame(payload)
    decoder = FrameDecoder()
    step = 4096
    for i in range(0, len(frame), step):
        decoder.feed(frame[i : i + step])
        if decoder.buffered < len(frame):
            assert decoder.next_payload() is None
    assert decoder.next_payload() == payload


@pytest.mark.timeout(30)
def test_many_small_frames_in_one_feed_drain_linearly() -> None:
    count = 100_000
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"abc") * count)
    assert sum(1 for _ in iter(decoder.next_payload, None)) == count
    assert decoder.at_frame_boundary


# -- malformed input -------------------------------------------------------------------------


def test_oversized_length_rejected_as_soon_as_length_arrives() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x80\x00")  # nothing to judge yet
    with pytest.raises(ProtocolError, match="frame of 2147483648 bytes exceeds the 67108864-byte"):
        decoder.feed(b"\x00\x00")
    assert DEFAULT_MAX_FRAME == 67108864


def test_plain_text_gets_a_hint() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match=r"starts with b'GET ': not a sift peer\?"):
        decoder.feed(b"GET / HTTP/1.1\r\n")


@pytest.mark.parametrize("n", [0, 1, 4])
def test_length_below_header_size(n: int) -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match=f"frame length {n} is too short"):
        decoder.feed(struct.pack(">I", n))


def test_bad_magic() -> None:
    decoder = FrameDecoder()
    with pytest.raises(
        ProtocolError, match=r"bad frame magic b'HTTP' \(expected b'SIFT'\): not a sift peer\?"
    ):
        decoder.feed(header(20, magic=b"HTTP"))


def test_bad_magic_detected_from_its_first_byte() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", 20) + b"S")
    with pytest.raises(ProtocolError, match="bad frame magic b'SX'"):
        decoder.feed(b"X")


def test_unknown_version() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match=r"unknown protocol version 7 \(this sift speaks 1\)"):
        decoder.feed(header(20, version=7))


def test_error_in_a_later_frame_surfaces_from_next_payload() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"ok") + header(20, magic=b"NOPE"))
    assert decoder.next_payload() == b"ok"
    with pytest.raises(ProtocolError, match="bad frame magic"):
        decoder.next_payload()


def test_decoder_is_poisoned_after_an_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(header(20, version=9))
    for call in (lambda: decoder.feed(encode_frame(b"x")), decoder.next_payload):
        with pytest.raises(ProtocolError, match="unusable after an earlier error"):
            call()


def test_truncated_frame_at_eof() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"0123456789")[:12])
    assert decoder.next_payload() is None
    with pytest.raises(
        ProtocolError, match=r"connection closed in the middle of a frame \(got 12 of 19 bytes\)"
    ):
        decoder.check_eof()


def test_truncated_length_at_eof() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"ok") + b"\x00\x00")
    with pytest.raises(ProtocolError, match="got 2 of at least 4 bytes"):
        decoder.check_eof()


def test_clean_eof() -> None:
    decoder = FrameDecoder()
    decoder.check_eof()
    decoder.feed(encode_frame(b"a") + encode_frame(b"b"))
    decoder.check_eof()  # whole frames still buffered are fine
    assert drain(decoder) == [b"a", b"b"]


# -- properties ------------------------------------------------------------------------------


@FAST
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_any_split_yields_the_same_payloads(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    got = []
    for piece in split_at(stream, cuts):
        decoder.feed(piece)
        got.extend(drain(decoder))
    decoder.check_eof()
    assert got == payloads


# Garbage that is sometimes close to valid: real headers with junk, or plain junk.
_near_frames = st.one_of(
    st.binary(max_size=64),
    st.builds(encode_frame, st.binary(max_size=64)),
    st.builds(
        lambda n, magic, version, rest: struct.pack(">I", n) + magic + bytes([version]) + rest,
        st.integers(0, 80),
        st.sampled_from([MAGIC, b"SIFX", b"HTTP"]),
        st.sampled_from([PROTOCOL_VERSION, 0, 2, 255]),
        st.binary(max_size=64),
    ),
)


@FAST
@given(
    chunks=st.lists(_near_frames, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=8),
    limit=st.sampled_from([5, 40, DEFAULT_MAX_FRAME]),
)
def test_arbitrary_bytes_raise_only_protocol_error(
    chunks: list[bytes], cuts: list[int], limit: int
) -> None:
    decoder = FrameDecoder(max_frame_size=limit)
    try:
        for piece in split_at(b"".join(chunks), cuts):
            decoder.feed(piece)
            drain(decoder)
        decoder.check_eof()
    except ProtocolError:
        pass
