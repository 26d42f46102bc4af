"""What a sync has to do: compare what is on disk with the target manifest.

Pure: the caller scans `local_dir` (with the target's chunk parameters) and passes the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sift.core.manifest import DirEntry, Entry, FileEntry, Manifest, SymlinkEntry


@dataclass(frozen=True)
class Run:
    """`length` bytes at `src` in the file being replaced belong at `dst` in its successor."""

    src: int
    dst: int
    length: int


@dataclass(frozen=True)
class SyncPlan:
    target: Manifest
    write: tuple[FileEntry, ...]  # content differs: assemble in .sift/tmp, then replace
    touch: tuple[FileEntry, ...]  # same bytes, only permission bits or mtime differ
    make_dirs: tuple[DirEntry, ...]  # missing directories, parents first
    chmod_dirs: tuple[DirEntry, ...]  # existing directories whose mode differs
    links: tuple[SymlinkEntry, ...]  # symlinks to create or retarget
    delete: tuple[str, ...]  # local paths the target lacks (or has as another kind), deepest first

    @property
    def is_empty(self) -> bool:
        return (
            not (self.write or self.touch or self.make_dirs or self.chmod_dirs or self.links)
            and not self.delete
        )

    @property
    def bytes_to_write(self) -> int:
        return sum(f.size for f in self.write)


def make_plan(local: Mapping[str, Entry], target: Manifest) -> SyncPlan:
    write: list[FileEntry] = []
    touch: list[FileEntry] = []
    make_dirs: list[DirEntry] = []
    chmod_dirs: list[DirEntry] = []
    links: list[SymlinkEntry] = []
    delete: list[str] = []

    for path, entry in local.items():
        wanted = target.entries.get(path)
        if wanted is None or type(wanted) is not type(entry):
            delete.append(path)

    for path, entry in target.entries.items():
        have = local.get(path)
        same_kind = have is not None and type(have) is type(entry)
        if isinstance(entry, FileEntry):
            if not same_kind or have.digest != entry.digest or have.size != entry.size:
                write.append(entry)
            elif have.mode != entry.mode or have.mtime_ns != entry.mtime_ns:
                touch.append(entry)
        elif isinstance(entry, DirEntry):
            if not same_kind:
                make_dirs.append(entry)
            elif have.mode != entry.mode:
                chmod_dirs.append(entry)
        elif not same_kind or have.target != entry.target:
            links.append(entry)

    # Children sort after their parent, so reverse order removes contents before directories.
    delete.sort(reverse=True)
    return SyncPlan(
        target=target,
        write=tuple(write),
        touch=tuple(touch),
        make_dirs=tuple(make_dirs),
        chmod_dirs=tuple(chmod_dirs),
        links=tuple(links),
        delete=tuple(delete),
    )


def reusable_runs(old: FileEntry, new: FileEntry) -> tuple[list[Run], list[int]]:
    """Which bytes of `new` the file it replaces (`old`) already holds: maximal runs of
    consecutive chunks that sit one after another in `old` too (at the same offsets after an
    in-place edit, shifted after an insertion), plus the offsets in `new` of the chunks the runs
    cover. Chunks are matched by hash and length, so the runs name the same bytes."""
    where: dict[tuple[bytes, int], int] = {}
    offset = 0
    for chunk in old.chunks:
        where.setdefault((chunk.hash, chunk.length), offset)
        offset += chunk.length
    runs: list[Run] = []
    covered: list[int] = []
    offset = 0
    for chunk in new.chunks:
        src = where.get((chunk.hash, chunk.length))
        if src is not None:
            covered.append(offset)
            last = runs[-1] if runs else None
            if (
                last is not None
                and last.src + last.length == src
                and (last.dst + last.length == offset)
            ):
                runs[-1] = Run(last.src, last.dst, last.length + chunk.length)
            else:
                runs.append(Run(src, offset, chunk.length))
        offset += chunk.length
    return runs, covered
