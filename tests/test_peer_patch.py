"""update_in_place: a large file that keeps its size is patched where it stands through a
crash-safe journal (sift.peer.patch), only on filesystems that cannot reflink."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest

from sift.core.manifest import FileEntry, Manifest
from sift.peer import patch as patch_mod
from sift.peer.assembly import Assembler
from sift.peer.fetch import ManifestOutdated
from sift.peer.patch import (
    SEALED_SUFFIX,
    UNSEALED_SUFFIX,
    PatchError,
    apply_patch,
    changed_chunks,
    read_patch,
)
from sift.peer.sync import LocalChunks, Syncer
from tests.test_peer_reuse import OLD_NS, PARAMS, MemorySource, blob, chunk_map, entry, flipped

SIZE = 3_000_000  # above patch.MIN_SIZE


def no_reflink(tmp: Path) -> None:
    if Assembler(tmp / "probe").can_reflink():
        pytest.skip("this filesystem reflinks: sift rebuilds files there instead of patching")


def _place(local: Path, name: str, data: bytes) -> os.stat_result:
    (local / name).write_bytes(data)
    os.utime(local / name, ns=(OLD_NS, OLD_NS))
    return (local / name).stat()


# -- which files qualify -----------------------------------------------------------------------


def test_changed_chunks_lists_only_what_differs_in_place():
    old = blob(SIZE, 1)
    new = flipped(old, SIZE // 2)
    changed = changed_chunks(entry("f", old), entry("f", new))
    assert changed is not None
    assert 1 <= len(changed) <= 2
    assert any(offset <= SIZE // 2 < offset + length for offset, length, _ in changed)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (blob(SIZE, 2), blob(SIZE, 2) + b"x"),  # size changed
        (blob(500_000, 3), flipped(blob(500_000, 3), 10)),  # too small to bother
        (blob(SIZE, 4), blob(SIZE, 5)),  # mostly new content
        (blob(SIZE, 6), blob(SIZE, 6)),  # nothing changed
    ],
)
def test_files_that_do_not_qualify(old, new):
    assert changed_chunks(entry("f", old), entry("f", new)) is None


# -- the journal -------------------------------------------------------------------------------


def _journal(tmp_path: Path, old: bytes, new: bytes) -> tuple[Assembler, Path, FileEntry]:
    """A complete, sealed journal for patching local/f from `old` to `new`, not yet applied."""
    local = tmp_path / "local"
    local.mkdir(exist_ok=True)
    st = _place(local, "f", old)
    asm = Assembler(local)
    target = entry("f", new, mtime_ns=OLD_NS + 10**9)
    changed = changed_chunks(entry("f", old), target)
    assert changed is not None
    part = asm.open_patch(target, changed, st.st_mtime_ns)
    for change in part.patch.changes:
        asm.write(part, change.slot, new[change.offset : change.offset + change.length])
    assert part.complete
    asm.close(part)
    journal = part.path.with_name(part.path.name.removesuffix(UNSEALED_SUFFIX) + SEALED_SUFFIX)
    os.replace(part.path, journal)
    return asm, journal, target


def test_apply_writes_the_chunks_in_place_and_removes_the_journal(tmp_path: Path):
    old = blob(SIZE, 7)
    new = flipped(old, SIZE // 3)
    asm, journal, target = _journal(tmp_path, old, new)
    before = (asm.local_dir / "f").stat()
    st = apply_patch(journal, asm.local_dir, OLD_NS, asm.ensure_parent)
    assert (asm.local_dir / "f").read_bytes() == new
    assert st.st_ino == before.st_ino  # the same file, patched
    assert st.st_mtime_ns == target.mtime_ns
    assert not journal.exists()


def test_a_crash_after_sealing_is_finished_at_the_next_start(tmp_path: Path):
    old = blob(SIZE, 8)
    new = flipped(old, SIZE // 2)
    asm, journal, _ = _journal(tmp_path, old, new)
    # Simulate a crash half-way through the patch: one chunk written, the rest not.
    first = read_patch_file(journal).changes[0]
    with (asm.local_dir / "f").open("r+b") as f:
        f.seek(first.offset)
        f.write(new[first.offset : first.offset + first.length // 2])
    assert Assembler(asm.local_dir).recover_patches() == 1
    assert (asm.local_dir / "f").read_bytes() == new
    assert not journal.exists()


def test_an_unsealed_journal_is_discarded_and_the_file_left_alone(tmp_path: Path):
    old = blob(SIZE, 9)
    local = tmp_path / "local"
    local.mkdir()
    _place(local, "f", old)
    asm = Assembler(local)
    target = entry("f", flipped(old, 100), mtime_ns=OLD_NS + 1)
    part = asm.open_patch(target, changed_chunks(entry("f", old), target), OLD_NS)
    asm.close(part)
    assert Assembler(local).recover_patches() == 0
    assert not part.path.exists()
    assert (local / "f").read_bytes() == old


def test_a_damaged_journal_never_touches_the_file(tmp_path: Path, caplog):
    old = blob(SIZE, 10)
    asm, journal, _ = _journal(tmp_path, old, flipped(old, 2000))
    patch = read_patch_file(journal)
    with journal.open("r+b") as f:  # flip a byte of the stored chunk
        f.seek(patch.changes[0].slot)
        byte = f.read(1)
        f.seek(patch.changes[0].slot)
        f.write(bytes([byte[0] ^ 1]))
    assert Assembler(asm.local_dir).recover_patches() == 0
    assert (asm.local_dir / "f").read_bytes() == old
    assert "could not finish an interrupted in-place update" in caplog.text
    assert not journal.exists()


def test_a_file_changed_since_the_scan_is_not_patched(tmp_path: Path):
    old = blob(SIZE, 11)
    asm, journal, _ = _journal(tmp_path, old, flipped(old, 5000))
    os.utime(asm.local_dir / "f", ns=(OLD_NS + 5, OLD_NS + 5))  # someone touched it
    with pytest.raises(PatchError, match="changed since it was scanned"):
        apply_patch(journal, asm.local_dir, OLD_NS, asm.ensure_parent)
    assert (asm.local_dir / "f").read_bytes() == old


@pytest.mark.parametrize(
    "header",
    [
        ["sift-patch", 1, "../../etc/passwd", SIZE, 0o644, OLD_NS, [[0, 10, b"h" * 32]]],
        ["sift-patch", 1, "f", SIZE, 0o644, OLD_NS, [[SIZE - 5, 10, b"h" * 32]]],
        ["sift-patch", 9, "f", SIZE, 0o644, OLD_NS, [[0, 10, b"h" * 32]]],
        ["other", 1, "f", SIZE, 0o644, OLD_NS, [[0, 10, b"h" * 32]]],
    ],
)
def test_malformed_journals_are_refused(tmp_path: Path, header):
    body = msgpack.packb(header, use_bin_type=True)
    path = tmp_path / "x.patch"
    path.write_bytes(patch_mod._PREFIX.pack(patch_mod.MAGIC, len(body)) + body + b"\0" * 64)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(PatchError):
            read_patch(fd)
    finally:
        os.close(fd)


def read_patch_file(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_patch(fd)
    finally:
        os.close(fd)


# -- a whole sync ------------------------------------------------------------------------------


async def _sync(local: Path, cache, source, files: dict[str, bytes], in_place: bool):
    target = Manifest.build(2, PARAMS, [entry(p, d) for p, d in files.items()])
    chunks = LocalChunks(local)
    try:
        syncer = Syncer(local, cache, chunks, source, update_in_place=in_place)
        return await syncer.run(target)
    finally:
        chunks.reader.close()


async def test_sync_patches_in_place_and_fetches_only_the_change(peer_store, tmp_path: Path):
    no_reflink(tmp_path)
    local, cache = peer_store
    old = blob(SIZE, 12)
    new = flipped(old, SIZE // 2)
    before = _place(local, "big.bin", old)
    source = MemorySource(chunk_map(new))
    report = await _sync(local, cache, source, {"big.bin": new}, in_place=True)
    after = (local / "big.bin").stat()
    assert (local / "big.bin").read_bytes() == new
    assert report.files_patched == 1
    assert after.st_ino == before.st_ino  # patched, not replaced
    assert 0 < sum(len(source.data[h]) for h in source.asked) <= 2 * PARAMS.max_size
    assert report.bytes_reused == 0  # nothing copied: the unchanged bytes never moved
    assert not list((local / ".sift" / "tmp").iterdir())  # no journal left behind
    # The next sync trusts the patched file: same stat as recorded, nothing to do.
    again = await _sync(local, cache, MemorySource({}), {"big.bin": new}, in_place=True)
    assert again.files_written == 0


async def test_without_the_option_the_file_is_replaced(peer_store):
    local, cache = peer_store
    old = blob(SIZE, 13)
    new = flipped(old, 1000)
    before = _place(local, "big.bin", old)
    report = await _sync(local, cache, MemorySource(chunk_map(new)), {"big.bin": new}, False)
    assert report.files_patched == 0
    assert (local / "big.bin").stat().st_ino != before.st_ino
    assert (local / "big.bin").read_bytes() == new


async def test_a_file_touched_during_the_sync_is_left_to_the_next_one(peer_store, tmp_path: Path):
    """The live file changed between the scan and the patch (someone wrote to the mirror): it
    is not patched, no journal is left to replay onto it, and the sync asks to start over."""
    no_reflink(tmp_path)
    local, cache = peer_store
    old = blob(SIZE, 14)
    new = flipped(old, SIZE // 2)
    _place(local, "big.bin", old)

    class TouchingSource(MemorySource):
        async def ask_master(self, hashes, avoid):
            os.utime(local / "big.bin", ns=(OLD_NS + 7, OLD_NS + 7))
            return await super().ask_master(hashes, avoid)

    with pytest.raises(ManifestOutdated, match="changed since it was scanned"):
        await _sync(local, cache, TouchingSource(chunk_map(new)), {"big.bin": new}, True)
    assert (local / "big.bin").read_bytes() == old
    assert not [p for p in (local / ".sift" / "tmp").iterdir() if "patch" in p.name]
