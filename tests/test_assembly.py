"""sift.peer.assembly: part files in local_dir/.sift/tmp, resume after a crash, atomic placement."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

from sift.core.chunk import ChunkParams
from sift.core.chunker import chunk_bytes
from sift.core.manifest import DirEntry, FileEntry, SymlinkEntry
from sift.peer.assembly import PART_SUFFIX, Assembler

PARAMS = ChunkParams(min_size=256, avg_size=1024, max_size=4096)
MTIME = 1_600_000_000_123_456_789


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def entry_for(path: str, data: bytes, mode: int = 0o640, mtime_ns: int = MTIME) -> FileEntry:
    return FileEntry.build(path, len(data), mode, mtime_ns, chunk_bytes(data, PARAMS))


def offsets(entry: FileEntry) -> list[tuple[int, bytes, int]]:
    out, off = [], 0
    for c in entry.chunks:
        out.append((off, c.hash, c.length))
        off += c.length
    return out


def fill(asm: Assembler, part, data: bytes, only=None) -> None:
    for off, _, length in offsets(part.entry):
        if only is None or off in only:
            asm.write(part, off, data[off : off + length])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "local"


@pytest.fixture
def asm(root: Path) -> Assembler:
    return Assembler(root)


def test_tmp_dir_is_under_reserved_dir(root, asm):
    assert asm.tmp_dir == root / ".sift" / "tmp"
    assert asm.tmp_dir.is_dir()


def test_fresh_part_lists_every_chunk_missing(asm):
    data = blob(20_000)
    entry = entry_for("a/b.bin", data)
    assert len(entry.chunks) > 4
    part = asm.open_part(entry)
    try:
        assert part.path.parent == asm.tmp_dir
        assert part.path.name.endswith(PART_SUFFIX)
        assert part.missing == {off: h for off, h, _ in offsets(entry)}
        assert part.rel == str(part.path.relative_to(asm.local_dir))
        assert part.missing_bytes() == entry.size
        assert not part.complete
        # Nothing is created before the first write: a sync of many files opens each once.
        assert part.fd is None
        assert not part.path.exists()
        first_off, _, first_len = offsets(entry)[0]
        asm.write(part, first_off, data[:first_len])
        assert os.fstat(part.fd).st_size == entry.size
        assert stat.S_IMODE(os.fstat(part.fd).st_mode) == 0o600
        assert first_off not in part.missing
        assert part.missing_bytes() == entry.size - first_len
    finally:
        asm.close(part)


def test_empty_file_is_created_at_commit(root, asm):
    entry = entry_for("empty.txt", b"")
    part = asm.open_part(entry)
    assert part.complete
    assert part.fd is None
    asm.commit([part])
    assert (root / "empty.txt").read_bytes() == b""
    assert stat.S_IMODE((root / "empty.txt").stat().st_mode) == 0o640


def test_a_complete_part_holds_no_descriptor(asm):
    """A sync of 20,000 small files must not hold 20,000 descriptors until the commit."""
    data = blob(5000, seed=9)
    entry = entry_for("f", data)
    part = asm.open_part(entry)
    offs = offsets(entry)
    fill(asm, part, data, only={o for o, _, _ in offs[:-1]})
    assert part.fd is not None  # still being written
    fill(asm, part, data, only={offs[-1][0]})
    assert part.complete
    assert part.fd is None
    assert part.path.read_bytes() == data
    # A chunk delivered twice is not written again (and does not reopen the file).
    asm.write(part, 0, data[: offs[0][2]])
    assert part.fd is None


def test_concurrent_first_writes_create_the_part_once(asm):
    """Chunk writes run in several worker threads: two first writes to the same new part must
    not each create (and truncate) it."""
    from concurrent.futures import ThreadPoolExecutor

    data = blob(200_000, seed=10)
    entry = entry_for("many.bin", data)
    part = asm.open_part(entry)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda item: asm.write(part, item[0], data[item[0] : item[0] + item[2]]),
                    offsets(entry),
                )
            )
        assert part.complete
        assert part.path.read_bytes() == data
    finally:
        asm.close(part)


def test_part_name_depends_on_path_and_content(asm):
    a = entry_for("x", b"one")
    assert asm.part_path(a) == asm.part_path(entry_for("x", b"one", mode=0o600))
    assert asm.part_path(a) != asm.part_path(entry_for("y", b"one"))
    assert asm.part_path(a) != asm.part_path(entry_for("x", b"two"))


def test_resume_keeps_written_chunks(asm):
    data = blob(30_000, seed=1)
    entry = entry_for("big.bin", data)
    part = asm.open_part(entry)
    all_offsets = [off for off, _, _ in offsets(entry)]
    written = set(all_offsets[::2])
    fill(asm, part, data, only=written)
    assert set(part.missing) == set(all_offsets) - written
    asm.close(part)  # the sync is killed here

    again = Assembler(asm.local_dir).open_part(entry)  # a new process
    try:
        assert set(again.missing) == set(all_offsets) - written
        assert again.path == part.path
    finally:
        asm.close(again)


def test_resume_rejects_chunks_that_do_not_verify(asm):
    data = blob(20_000, seed=2)
    entry = entry_for("f", data)
    part = asm.open_part(entry)
    fill(asm, part, data)
    assert part.complete
    asm.close(part)
    first_off, _, first_len = offsets(entry)[1]
    with open(part.path, "r+b") as fh:  # a torn write: one chunk has garbage
        fh.seek(first_off + first_len // 2)
        fh.write(b"\xff\x00\xff")
    again = asm.open_part(entry)
    try:
        assert set(again.missing) == {first_off}
    finally:
        asm.close(again)


def test_part_of_the_wrong_size_starts_over(asm):
    data = blob(10_000, seed=3)
    entry = entry_for("f", data)
    part_path = asm.part_path(entry)
    part_path.write_bytes(data[:5000])  # a leftover that matches a prefix but not the size
    part = asm.open_part(entry)
    try:
        assert len(part.missing) == len(entry.chunks)
        assert part.path.stat().st_size == entry.size
    finally:
        asm.close(part)


def test_commit_places_file_with_mode_and_mtime(root, asm):
    data = blob(25_000, seed=4)
    entry = entry_for("deep/er/file.bin", data, mode=0o604)
    part = asm.open_part(entry)
    fill(asm, part, data)
    assert part.complete
    placed = asm.commit([part])
    final = root / "deep/er/file.bin"
    assert final.read_bytes() == data
    st = final.stat()
    assert stat.S_IMODE(st.st_mode) == 0o604
    assert st.st_mtime_ns == MTIME
    assert [e for e, _ in placed] == [entry]
    recorded = placed[0][1]
    assert (recorded.st_ino, recorded.st_size, recorded.st_mtime_ns) == (
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    )
    assert not part.path.exists()
    assert (root / "deep").is_dir()
    assert list(asm.tmp_dir.iterdir()) == []


def test_small_part_is_sealed_as_it_completes(root, asm):
    """Mode, mtime and stat are set while the completed part is still open: the commit then
    only renames it, and records the stat taken at completion."""
    data = blob(25_000, seed=5)
    part = asm.open_part(entry_for("s.bin", data, mode=0o640))
    fill(asm, part, data)
    st = part.path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, MTIME)
    assert part.sealed is not None
    assert part.sealed.st_ino == st.st_ino
    placed = asm.commit([part])
    final = (root / "s.bin").stat()
    assert final.st_ino == st.st_ino
    assert placed[0][1].st_mtime_ns == final.st_mtime_ns == MTIME


def test_read_only_part_keeps_owner_access_until_the_commit(root, asm):
    """A part whose mode would lock its owner out stays 0o600 until the commit, so a sync
    resumed after a crash can open it again."""
    data = blob(25_000, seed=6)
    entry = entry_for("ro.bin", data, mode=0o444)
    part = asm.open_part(entry)
    fill(asm, part, data)
    assert part.sealed is None
    assert stat.S_IMODE(part.path.stat().st_mode) == 0o600
    again = Assembler(root).open_part(entry)  # the sync is killed; a new process resumes it
    assert again.complete
    asm.commit([again])
    assert stat.S_IMODE((root / "ro.bin").stat().st_mode) == 0o444
    assert (root / "ro.bin").read_bytes() == data


def test_large_part_is_sealed_at_the_commit(root, asm, monkeypatch):
    import sift.peer.assembly as assembly_mod

    monkeypatch.setattr(assembly_mod, "WRITEBACK_MIN", 10_000)  # large without writing 1 MiB
    data = blob(25_000, seed=7)
    part = asm.open_part(entry_for("big.bin", data, mode=0o640))
    fill(asm, part, data)
    assert part.sealed is None
    assert stat.S_IMODE(part.path.stat().st_mode) == 0o600
    asm.commit([part])
    st = (root / "big.bin").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, MTIME)


def test_commit_many_files_and_an_empty_one(root, asm):
    files = {f"d{i % 2}/f{i}": blob(500 * i, seed=i) for i in range(7)}  # f0 is empty
    parts = []
    for path, data in files.items():
        part = asm.open_part(entry_for(path, data))
        fill(asm, part, data)
        parts.append(part)
    assert parts[0].complete
    assert parts[0].missing == {}
    asm.commit(parts)  # more than 4 parts: durable through one syncfs
    for path, data in files.items():
        assert (root / path).read_bytes() == data


def test_commit_replaces_existing_file_and_symlink(root, asm):
    root.mkdir(exist_ok=True)
    (root / "f").write_bytes(b"old contents")
    outside = root.parent / "outside.txt"
    outside.write_bytes(b"must survive")
    os.symlink(outside, root / "l")
    parts = []
    for path in ("f", "l"):
        part = asm.open_part(entry_for(path, b"new " + path.encode()))
        fill(asm, part, b"new " + path.encode())
        parts.append(part)
    asm.commit(parts)
    assert (root / "f").read_bytes() == b"new f"
    assert not (root / "l").is_symlink()
    assert (root / "l").read_bytes() == b"new l"
    assert outside.read_bytes() == b"must survive"


def test_file_where_a_directory_must_go(root, asm):
    root.mkdir(exist_ok=True)
    (root / "a").write_bytes(b"i am a file")
    data = blob(3000)
    part = asm.open_part(entry_for("a/b/c", data))
    fill(asm, part, data)
    asm.commit([part])
    assert (root / "a").is_dir()
    assert (root / "a/b/c").read_bytes() == data


def test_symlinked_directory_where_a_directory_must_go(root, asm):
    root.mkdir(exist_ok=True)
    elsewhere = root.parent / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, root / "a")  # the direct parent is a symlink
    os.symlink(elsewhere, root / "b")  # an ancestor is a symlink, the parent does not exist
    for rel in ("a/file", "b/x/file"):
        data = rel.encode()
        part = asm.open_part(entry_for(rel, data))
        fill(asm, part, data)
        asm.commit([part])
    assert not (root / "a").is_symlink()
    assert not (root / "b").is_symlink()
    assert (root / "a/file").read_bytes() == b"a/file"
    assert (root / "b/x/file").read_bytes() == b"b/x/file"
    assert list(elsewhere.iterdir()) == []  # nothing was written through the links


def test_empty_directory_where_a_file_must_go(root, asm):
    (root / "x").mkdir(parents=True)
    part = asm.open_part(entry_for("x", b"file now"))
    fill(asm, part, b"file now")
    asm.commit([part])
    assert (root / "x").read_bytes() == b"file now"


def test_non_empty_directory_is_not_removed_silently(root, asm):
    (root / "x").mkdir(parents=True)
    (root / "x" / "data").write_bytes(b"precious")
    part = asm.open_part(entry_for("x", b"file now"))
    fill(asm, part, b"file now")
    with pytest.raises(OSError, match="not empty"):
        asm.commit([part])
    assert (root / "x" / "data").read_bytes() == b"precious"


def test_make_dir_and_set_mode(root, asm):
    root.mkdir(exist_ok=True)
    (root / "p").write_bytes(b"file in the way")
    asm.make_dir(DirEntry("p/q", 0o750))
    asm.make_dir(DirEntry("p/q", 0o750))  # again: nothing to do
    assert (root / "p/q").is_dir()
    asm.set_dir_mode(DirEntry("p/q", 0o750))
    assert stat.S_IMODE((root / "p/q").stat().st_mode) == 0o750
    (root / "s").write_bytes(b"")
    asm.make_dir(DirEntry("s", 0o755))
    assert (root / "s").is_dir()


def test_place_symlink_new_replacing_and_retargeting(root, asm):
    root.mkdir(exist_ok=True)
    asm.place_symlink(SymlinkEntry("d/link", "../target"))
    assert os.readlink(root / "d/link") == "../target"
    asm.place_symlink(SymlinkEntry("d/link", "other"))
    assert os.readlink(root / "d/link") == "other"
    (root / "f").write_bytes(b"a file")
    asm.place_symlink(SymlinkEntry("f", "d"))
    assert os.readlink(root / "f") == "d"
    (root / "e").mkdir()
    asm.place_symlink(SymlinkEntry("e", "d"))
    assert os.readlink(root / "e") == "d"
    assert [p.name for p in asm.tmp_dir.iterdir()] == []


def test_touch_sets_mode_and_mtime(root, asm):
    root.mkdir(exist_ok=True)
    (root / "t").write_bytes(b"same bytes")
    entry = entry_for("t", b"same bytes", mode=0o600, mtime_ns=MTIME)
    st = asm.touch(entry)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_mtime_ns == MTIME
    assert (root / "t").read_bytes() == b"same bytes"


def test_delete_each_kind(root, asm):
    root.mkdir(exist_ok=True)
    outside = root.parent / "keep.txt"
    outside.write_bytes(b"keep")
    (root / "f").write_bytes(b"x")
    os.symlink(outside, root / "l")
    os.symlink(root.parent, root / "dl")  # a symlink to a directory is unlinked, not followed
    (root / "empty").mkdir()
    (root / "full").mkdir()
    (root / "full" / "x").write_bytes(b"x")
    for rel in ("f", "l", "dl", "empty", "full", "never-existed"):
        asm.delete(rel)
    assert sorted(p.name for p in root.iterdir()) == [".sift", "full"]
    assert outside.read_bytes() == b"keep"
    assert (root / "full" / "x").exists()  # refused, not removed recursively


def test_remove_stale_parts(asm):
    keep_entry = entry_for("keep", b"keep me")
    keep = asm.open_part(keep_entry)
    fill(asm, keep, b"keep me")
    asm.close(keep)
    for name in ("old1.part", "old2.part", "link-leftover"):
        (asm.tmp_dir / name).write_bytes(b"junk")
    assert asm.remove_stale_parts([keep.path]) == 3
    assert [p.name for p in asm.tmp_dir.iterdir()] == [keep.path.name]
    assert asm.remove_stale_parts([keep.path]) == 0


def test_closing_a_part_twice_never_closes_a_reused_descriptor(tmp_path):
    """Regression: commit closed each part and the sync's cleanup closed it again; the second
    close hit whatever had reused the number, and every later sync failed with EBADF."""
    data = blob(20_000, seed=11)
    entry = FileEntry.build("f.bin", len(data), 0o644, 0, chunk_bytes(data, PARAMS))
    asm = Assembler(tmp_path)
    part = asm.open_part(entry)
    first_off, _, first_len = offsets(entry)[0]
    asm.write(part, first_off, data[:first_len])  # incomplete: the descriptor stays open
    number = part.fd
    assert number is not None
    asm.close(part)
    bystander = os.open(tmp_path / "bystander", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        assert bystander == number  # the kernel hands out the lowest free number
        asm.close(part)
        os.fstat(bystander)  # still open
    finally:
        os.close(bystander)


def test_many_completed_parts_commit_with_one_syncfs(root, asm, monkeypatch):
    import sift.peer.assembly as assembly_mod

    calls = []
    real = assembly_mod._syncfs

    def counting(fd):
        calls.append(fd)
        return real(fd) if real is not None else 0

    monkeypatch.setattr(assembly_mod, "_syncfs", counting)
    parts = []
    for i in range(10):
        data = blob(3000, seed=100 + i)
        part = asm.open_part(entry_for(f"many/{i}.bin", data))
        fill(asm, part, data)
        parts.append((part, data))
    placed = asm.commit([p for p, _ in parts])
    assert len(calls) == 1
    assert len(placed) == 10
    for (part, data), (_entry, st) in zip(parts, placed, strict=True):
        assert (root / part.entry.path).read_bytes() == data
        assert st.st_mtime_ns == MTIME
