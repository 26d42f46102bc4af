"""sift.core.chunker: FastCDC cuts named by BLAKE3, stable-file checks, memory bounds."""

from __future__ import annotations

import array
import gc
import os
import random
import stat
import sys
import time
import tracemalloc
import types
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sift.core import chunker
from sift.core.chunk import DEFAULT_PARAMS, HASH_SIZE, Chunk, ChunkParams
from sift.core.chunker import (
    ChunkerUnavailable,
    FileChunks,
    UnstableFileError,
    chunk_bytes,
    chunk_file,
    iter_chunk_spans,
    load_fastcdc,
)

MiB = 1 << 20
SMALL = ChunkParams(min_size=2048, avg_size=8192, max_size=32768)


@pytest.fixture(scope="module")
def base_data() -> bytes:
    """16 MiB of seeded random bytes: generated once, the same on every run."""
    return random.Random(0x5F7).randbytes(16 * MiB)


@pytest.fixture(scope="module")
def base_chunks(base_data: bytes) -> tuple[Chunk, ...]:
    return chunk_bytes(base_data)


@pytest.fixture
def base_file(tmp_path: Path, base_data: bytes) -> Iterator[Path]:
    path = tmp_path / "base.bin"
    path.write_bytes(base_data)
    yield path
    path.unlink(missing_ok=True)


def _open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")


# --- the compiled chunker -------------------------------------------------------------------


def test_load_fastcdc_returns_the_compiled_extension() -> None:
    func = load_fastcdc()
    module = sys.modules["fastcdc.fastcdc_cy"]
    assert func is module.fastcdc_cy
    assert module.__file__ is not None
    assert module.__file__.endswith(".so")


def test_unimportable_compiled_module_raises_chunker_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # None in sys.modules makes `import fastcdc.fastcdc_cy` fail as if the .so were missing.
    monkeypatch.setitem(sys.modules, "fastcdc.fastcdc_cy", None)
    with pytest.raises(ChunkerUnavailable) as info:
        load_fastcdc()
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "200x" in message
    assert "reinstall" in message
    assert "\n" not in message
    with pytest.raises(ChunkerUnavailable):
        chunk_bytes(b"x" * 100_000)
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100_000)
    with pytest.raises(ChunkerUnavailable):
        chunk_file(path)


def test_pure_python_stand_in_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A module that imports fine but is not the compiled extension (e.g. a .py shadowing it).
    fake = types.ModuleType("fastcdc.fastcdc_cy")
    fake.fastcdc_cy = lambda *args, **kwargs: iter(())  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fastcdc.fastcdc_cy", fake)
    with pytest.raises(ChunkerUnavailable, match="not a compiled extension"):
        load_fastcdc()


# --- what the chunks are --------------------------------------------------------------------


def test_same_bytes_same_chunks(base_data: bytes, base_chunks: tuple[Chunk, ...]) -> None:
    assert chunk_bytes(base_data) == base_chunks
    assert chunk_bytes(bytearray(base_data)) == base_chunks
    assert chunk_bytes(memoryview(base_data)) == base_chunks
    assert len(base_chunks) > 40  # 16 MiB at 256 KiB average: really many chunks


def test_chunk_file_equals_chunk_bytes(
    base_file: Path, base_chunks: tuple[Chunk, ...], base_data: bytes
) -> None:
    result = chunk_file(base_file)
    st_ = os.stat(base_file)
    assert isinstance(result, FileChunks)
    assert result.chunks == base_chunks
    assert result.size == len(base_data) == st_.st_size
    assert result.mtime_ns == st_.st_mtime_ns
    assert result.inode == st_.st_ino
    assert result.mode == st_.st_mode
    assert stat.S_ISREG(result.mode)
    assert result.params == DEFAULT_PARAMS
    assert chunk_file(str(base_file)) == result  # str path too, and deterministic


@pytest.mark.parametrize("params", [DEFAULT_PARAMS, SMALL], ids=["default", "small"])
def test_lengths_cover_the_data_and_respect_bounds(base_data: bytes, params: ChunkParams) -> None:
    chunks = chunk_bytes(base_data, params)
    lengths = [c.length for c in chunks]
    assert sum(lengths) == len(base_data)
    for length in lengths[:-1]:
        assert params.min_size <= length <= params.max_size
    assert 0 < lengths[-1] <= params.max_size
    # Content-defined, not fixed-size: the cuts are not all at max_size.
    assert len(set(lengths)) > len(lengths) // 2


def test_spans_are_contiguous_and_match_chunk_lengths(
    base_data: bytes, base_chunks: tuple[Chunk, ...]
) -> None:
    spans = list(iter_chunk_spans(memoryview(base_data)))
    assert [length for _, length in spans] == [c.length for c in base_chunks]
    offset = 0
    for start, length in spans:
        assert start == offset
        offset += length
    assert offset == len(base_data)


def test_hashes_are_blake3_of_the_chunk_bytes(
    base_data: bytes, base_chunks: tuple[Chunk, ...]
) -> None:
    offset = 0
    for chunk in base_chunks:
        assert len(chunk.hash) == HASH_SIZE
        assert chunk.hash == blake3(base_data[offset : offset + chunk.length]).digest()
        offset += chunk.length
    assert len({c.hash for c in base_chunks}) == len(base_chunks)  # random data: all distinct


def test_empty_input_has_no_chunks(tmp_path: Path) -> None:
    assert chunk_bytes(b"") == ()
    path = tmp_path / "empty"
    path.touch()
    result = chunk_file(path)
    assert result.size == 0
    assert result.chunks == ()
    assert result.inode == os.stat(path).st_ino


def test_input_shorter_than_min_size_is_one_chunk(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(1000)
    expected = (Chunk(blake3(data).digest(), 1000),)
    assert chunk_bytes(data) == expected
    path = tmp_path / "tiny"
    path.write_bytes(data)
    assert chunk_file(path).chunks == expected


def test_non_byte_buffers_are_chunked_as_their_bytes(base_data: bytes) -> None:
    words = array.array("I", base_data[: 4 * MiB])
    assert chunk_bytes(memoryview(words)) == chunk_bytes(base_data[: 4 * MiB])


def test_custom_params_change_the_cut_and_travel_with_the_list(
    base_file: Path, base_data: bytes, base_chunks: tuple[Chunk, ...]
) -> None:
    small = chunk_bytes(base_data, SMALL)
    assert len(small) > 4 * len(base_chunks)  # 8 KiB vs 64 KiB average
    assert not {c.hash for c in small} & {c.hash for c in base_chunks}
    result = chunk_file(base_file, SMALL)
    assert result.chunks == small
    assert result.params == SMALL


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_size": 10},  # below fastcdc's floor
        {"max_size": 2 * 1024 * 1024 * 1024},  # above fastcdc's ceiling
        {"min_size": 128 * 1024, "avg_size": 64 * 1024},  # min > avg
        {"avg_size": 512 * 1024, "max_size": 256 * 1024},  # avg > max
        {"avg_size": 65536.0},  # not an int
    ],
)
def test_invalid_params_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="chunk"):
        ChunkParams(**kwargs)  # type: ignore[arg-type]


@settings(
    max_examples=15,
    deadline=None,
    database=None,  # keep the source tree free of .hypothesis/ state
    suppress_health_check=[HealthCheck.data_too_large],
)
@given(data=st.data())
def test_small_insertion_changes_at_most_three_chunks(
    base_data: bytes, base_chunks: tuple[Chunk, ...], data: st.DataObject
) -> None:
    """The point of content-defined chunking: an edit disturbs only the chunks around it."""
    # Anywhere, edges included: the middle is the usual case, the edges the corner cases.
    position = data.draw(st.integers(0, len(base_data)), label="position")
    inserted = data.draw(st.binary(min_size=1, max_size=100), label="inserted")
    edited = chunk_bytes(base_data[:position] + inserted + base_data[position:])
    old = Counter(c.hash for c in base_chunks)
    new = Counter(c.hash for c in edited)
    assert sum((new - old).values()) <= 3
    assert sum((old - new).values()) <= 3
    assert sum(c.length for c in edited) == len(base_data) + len(inserted)


# --- reading files safely -------------------------------------------------------------------


def test_file_is_hashed_through_views_of_the_read_buffer(
    base_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Zero-copy: every chunk is hashed from a memoryview into the reusable read buffer, never a
    bytes copy, and never an mmap (a truncation under a map would kill us with SIGBUS)."""
    seen: list[tuple[type, type]] = []
    real = chunker.hash_chunk

    def spy(piece: memoryview) -> bytes:
        seen.append((type(piece), type(piece.obj)))
        return real(piece)

    monkeypatch.setattr(chunker, "hash_chunk", spy)
    result = chunk_file(base_file)
    assert len(seen) == len(result.chunks)
    assert set(seen) == {(memoryview, bytearray)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(min_value=1, max_value=300_000),
    block_kib=st.sampled_from([4, 5, 8, 64]),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_block_by_block_reading_cuts_exactly_like_one_buffer(
    tmp_path_factory: pytest.TempPathFactory, size: int, block_kib: int, seed: int
) -> None:
    """Blocks of 4x max_size and up (block_kib * 1024 >= 4 * 1024): every cut, including those
    right at a block boundary, equals the cut of the whole file in one buffer."""
    params = ChunkParams(min_size=64, avg_size=256, max_size=1024)
    data = random.Random(seed).randbytes(size)
    path = tmp_path_factory.mktemp("blocks") / "f.bin"
    path.write_bytes(data)
    real = chunker.READ_BLOCK
    chunker.READ_BLOCK = block_kib * 1024
    try:
        assert chunk_file(path, params).chunks == chunk_bytes(data, params)
    finally:
        chunker.READ_BLOCK = real


def _past(path: Path) -> None:
    # Timestamps come from a coarse clock: set an old mtime so a write in the same tick as the
    # file's creation still yields a different one.
    old = time.time_ns() - 3_600 * 10**9
    os.utime(path, ns=(old, old))


def _append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"appended")


def _overwrite_tail_in_place(path: Path) -> None:
    # Same size, new bytes the shared mapping would show: the half-old half-new case.
    with open(path, "r+b") as f:
        f.seek(-4096, os.SEEK_END)
        f.write(os.urandom(4096))


def _overwrite_and_restore_mtime(path: Path) -> None:
    st_ = os.stat(path)
    _overwrite_tail_in_place(path)
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns))  # like `touch -r`: only ctime moved


def _replace_by_rename(path: Path) -> None:
    # Same size and mtime as the original: only the inode tells them apart.
    st_ = os.stat(path)
    sibling = path.with_name(path.name + ".new")
    sibling.write_bytes(os.urandom(st_.st_size))
    os.utime(sibling, ns=(st_.st_atime_ns, st_.st_mtime_ns))
    os.replace(sibling, path)


def _delete(path: Path) -> None:
    path.unlink()


def _truncate_to_half(path: Path) -> None:
    # What killed the mmap-based chunker with SIGBUS; a read now just comes back short.
    os.truncate(path, os.stat(path).st_size // 2)


def _chmod(path: Path) -> None:
    os.chmod(path, 0o600 if stat.S_IMODE(os.stat(path).st_mode) != 0o600 else 0o640)


def _mutate_after_first_chunk(
    monkeypatch: pytest.MonkeyPatch, path: Path, mutate: Callable[[Path], None]
) -> list[int]:
    """Really change the file on disk after the first chunk is hashed, the rest still unread."""
    real = chunker.hash_chunk
    calls = [0]

    def hash_then_mutate(piece: memoryview) -> bytes:
        calls[0] += 1
        if calls[0] == 1:
            mutate(path)
        return real(piece)

    monkeypatch.setattr(chunker, "hash_chunk", hash_then_mutate)
    return calls


@needs_proc
@pytest.mark.parametrize(
    "mutate",
    [
        _append,
        _overwrite_tail_in_place,
        _overwrite_and_restore_mtime,
        _replace_by_rename,
        _delete,
        _truncate_to_half,
        _chmod,
    ],
)
def test_file_changed_during_chunking_is_unstable(
    base_file: Path, monkeypatch: pytest.MonkeyPatch, mutate: Callable[[Path], None]
) -> None:
    _past(base_file)
    time.sleep(0.02)  # let the coarse ctime clock tick past the _past() call
    calls = _mutate_after_first_chunk(monkeypatch, base_file, mutate)
    fds = _open_fd_count()
    with pytest.raises(UnstableFileError) as info:
        chunk_file(base_file)
    assert calls[0] > 1  # the change happened mid-way, not before reading started
    assert info.value.path == str(base_file)
    assert str(info.value) == f"file changed while it was read: {base_file}"
    assert _open_fd_count() == fds  # fd (and map) closed on the error path


def test_replacement_by_rename_is_caught_by_the_path_stat_alone(
    base_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fd still reads the old, unchanged inode; only os.stat(path) sees the new one.

    On Linux the rename also moves the old inode's ctime, but not if it lands in the same coarse
    clock tick as the first fstat; simulate that case by leaving ctime out of the comparison.
    """
    monkeypatch.setattr(
        chunker,
        "_identity",
        lambda s: (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_mode),
    )
    _mutate_after_first_chunk(monkeypatch, base_file, _replace_by_rename)
    with pytest.raises(UnstableFileError):
        chunk_file(base_file)


@needs_proc
def test_error_mid_way_propagates_and_releases_the_map(
    base_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while hashing surfaces as itself, not as BufferError from releasing the buffer."""
    real = chunker.hash_chunk
    calls = 0

    def fail_on_third(piece: memoryview) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError("injected read failure")
        return real(piece)

    monkeypatch.setattr(chunker, "hash_chunk", fail_on_third)
    fds = _open_fd_count()
    with pytest.raises(OSError, match="injected read failure") as info:
        chunk_file(base_file)
    assert not isinstance(info.value.__context__, BufferError)
    assert _open_fd_count() == fds


def test_non_regular_files_are_refused_without_blocking(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="not a regular file"):
        chunk_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        chunk_file(fifo)  # would hang forever in open() without O_NONBLOCK


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        chunk_file(tmp_path / "nope")


# --- memory ---------------------------------------------------------------------------------


def _deep_size(chunks: tuple[Chunk, ...]) -> int:
    return sys.getsizeof(chunks) + sum(
        sys.getsizeof(c) + sys.getsizeof(c.hash) + sys.getsizeof(c.length) for c in chunks
    )


@pytest.mark.slow
def test_chunking_512_mib_keeps_the_python_heap_flat(tmp_path: Path) -> None:
    size = 512 * MiB
    block = memoryview(random.Random(11).randbytes(8 * MiB))
    path = tmp_path / "big.bin"
    try:
        with open(path, "wb") as f:
            for i in range(size // len(block)):
                f.write(i.to_bytes(8, "little"))  # a different prefix per block
                f.write(block[8:])
        del block
        load_fastcdc()  # its first import (fastcdc, click) is not what this test measures
        gc.collect()
        tracemalloc.start()
        try:
            result = chunk_file(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result.size == size
        assert sum(c.length for c in result.chunks) == size
        chunk_list = _deep_size(result.chunks)
        assert peak < chunk_list + 8 * MiB, (peak, chunk_list)
    finally:
        path.unlink(missing_ok=True)  # pytest keeps old tmp dirs around; 512 MiB is too much


def _vm_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(key)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_resident_memory_stays_about_one_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is read a block at a time into one reused buffer: chunking a file much larger
    than the block does not make the process resident size grow with the file."""
    monkeypatch.setattr(chunker, "READ_BLOCK", 4 * MiB)
    path = tmp_path / "big.bin"
    block = random.Random(13).randbytes(4 * MiB)
    with open(path, "wb") as f:
        for i in range(24):  # 96 MiB
            f.write(i.to_bytes(8, "little") + block[8:])
    load_fastcdc()
    before = _vm_kib("VmRSS")
    peak_seen = 0
    real = chunker.hash_chunk

    def watching(piece):
        nonlocal peak_seen
        peak_seen = max(peak_seen, _vm_kib("VmRSS"))
        return real(piece)

    monkeypatch.setattr(chunker, "hash_chunk", watching)
    result = chunk_file(path)
    assert result.size == 96 * MiB
    growth_mib = (peak_seen - before) / 1024
    assert growth_mib < 40, growth_mib  # ~ the 4 MiB buffer plus the chunk list
