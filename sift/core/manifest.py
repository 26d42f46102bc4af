"""The manifest: what the master tree looks like at one version, plus diff, delta and encoding.

A manifest lists every file (with its chunk list), directory and symlink of the tree under one
version number and one set of chunk parameters. Peers compare manifests to decide what to
fetch, and fetch only chunks they do not already hold.

Wire format (msgpack, ``use_bin_type=True``), canonical: entries are strictly sorted by path,
so one manifest always encodes to the same bytes::

    manifest = ["sift-manifest", 1, version, [min, avg, max], [entry, ...]]
    delta    = ["sift-delta", 1, base_version, version, [min, avg, max], [entry, ...], [path, ...]]
    entry    = [0, path, size, mode, mtime_ns, hashes, [length, ...], digest]   # file
             | [1, path, mode]                                                   # directory
             | [2, path, target]                                                 # symlink
             | [3, path, size, mode, mtime_ns, base_digest, edits, digest]       # file edit

A file edit (deltas only) gives a changed file's chunk list as edits of the version in the
base manifest, whose digest it names (``sift.core.chunk_edits``): a small change to a large
file then costs a few runs and the new chunks, not its whole chunk list.

``hashes`` is one bin blob of the concatenated 32-byte chunk hashes, so a chunk ref costs about
36 bytes. Decoding trusts nothing: every type, bound, path and digest is checked and any problem
refuses the whole document with :class:`ManifestError`.

In memory the master holds the manifest of the whole dataset, so it is packed too: a
:class:`FileEntry` is its path plus one ``bytes`` (size, mtime, mode, digest, the hashes
concatenated, the lengths as u32: 36 bytes a chunk instead of ~180 as ``Chunk`` tuples), and
the hash -> location index the master serves from is a few flat arrays (``chunk_index``).
A large manifest is encoded in parts (:func:`iter_manifest_parts`), never as one wire-shaped
list.
"""

from __future__ import annotations

import bisect
import struct
import sys
from array import array
from collections.abc import Container, Iterable, Iterator, Mapping, Set
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from types import MappingProxyType
from typing import Any

import msgpack
from blake3 import blake3

from sift.core.chunk import HASH_SIZE, LENGTH_CODE, Chunk, ChunkParams
from sift.core.chunk_edits import (
    ChunkEditError,
    Op,
    apply_packed,
    checked_ops,
    edit_ops,
    worth_sending,
)
from sift.core.chunk_index import ChunkIndex, ChunkLocation  # noqa: F401 (callers import it here)
from sift.core.paths import (
    MAX_PATH_BYTES,
    UnsafePathError,
    symlink_target_is_inside,
    validate_path,
)

MANIFEST_TAG = "sift-manifest"
DELTA_TAG = "sift-delta"
FORMAT_VERSION = 1

KIND_FILE = 0
KIND_DIR = 1
KIND_SYMLINK = 2
KIND_FILE_EDIT = 3
# Files with fewer chunks always travel whole in a delta: their list is small anyway.
EDIT_MIN_CHUNKS = 32

MAX_FILE_SIZE = 2**50  # 1 PiB: far beyond any real file, small enough to rule out nonsense
MODE_MASK = 0o7777  # permission bits only; the kind is carried by the entry type
_CHUNKLIST_DOMAIN = b"sift-chunklist-v1\x00"


class ManifestError(ValueError):
    """A manifest or delta that is malformed, unsafe or inconsistent."""


_SMALL_DIGEST = 16  # up to this many chunks, update() per chunk beats interleaving in C
_DIGEST_BLOCK = 1 << 13  # chunks interleaved per step (320 KB): a huge file costs no more
# A FileEntry is its path plus one bytes object: this head, the digest, the hashes, the lengths.
_HEAD = struct.Struct("=QqH")  # size, mtime_ns, mode
_LENGTH = struct.Struct("=" + LENGTH_CODE)
_DIGEST_AT = _HEAD.size
_HASHES_AT = _DIGEST_AT + HASH_SIZE
_CHUNK_BYTES = HASH_SIZE + 4
MTIME_RANGE = (-(2**63), 2**63 - 1)  # what the packed entry (and a timespec in ns) can hold


def chunk_list_digest(chunks: Iterable[Chunk]) -> bytes:
    """BLAKE3 over a chunk list: domain string, then per chunk its hash and its length as
    8 bytes big-endian. Two files with equal digests have identical contents."""
    h = blake3(_CHUNKLIST_DOMAIN)
    for chunk in chunks:
        h.update(chunk.hash)
        h.update(chunk.length.to_bytes(8, "big"))
    return h.digest()


def packed_digest(hashes: bytes, lengths: bytes) -> bytes:
    """:func:`chunk_list_digest` of a packed chunk list (see :class:`FileEntry`). Large lists
    are interleaved into hash + length records by strided slice copies, all in C."""
    lens = memoryview(lengths).cast(LENGTH_CODE)
    n = len(lens)
    h = blake3(_CHUNKLIST_DOMAIN)
    if n <= _SMALL_DIGEST:
        for i, length in enumerate(lens):
            h.update(hashes[i * HASH_SIZE : (i + 1) * HASH_SIZE])
            h.update(length.to_bytes(8, "big"))
        return h.digest()
    be = array(LENGTH_CODE, lengths)
    if sys.byteorder == "little":
        be.byteswap()
    be_bytes = be.tobytes()
    del be
    record = HASH_SIZE + 8  # hash, then the length as a u64 whose high 4 bytes are zero
    for start in range(0, n, _DIGEST_BLOCK):
        stop = min(n, start + _DIGEST_BLOCK)
        buf = bytearray(record * (stop - start))
        block = hashes[start * HASH_SIZE : stop * HASH_SIZE]
        for j in range(HASH_SIZE):
            buf[j::record] = block[j::HASH_SIZE]
        block = be_bytes[start * 4 : stop * 4]
        for j in range(4):
            buf[HASH_SIZE + 4 + j :: record] = block[j::4]
        h.update(buf)
    return h.digest()


class FileEntry:
    """A regular file: its size, permission bits, mtime and chunk list (offsets follow from
    order), and ``digest``, :func:`chunk_list_digest` of the list. Immutable, compared by value.

    Stored compactly, as the path plus one ``bytes`` holding everything else (~250 bytes for a
    one-chunk file instead of ~450 as separate objects); the fields are properties. The chunk
    list is packed: ``hashes`` is the chunks' 32-byte hashes concatenated, ``lengths`` their
    lengths as native-endian u32 (``array("I").tobytes()``); :attr:`chunks` gives it as
    ``Chunk`` tuples. Make entries with :meth:`build` or :meth:`from_packed`; the constructor
    takes every field of the wire entry and does not check the digest (decoding does)."""

    __slots__ = ("_packed", "path")
    path: str
    _packed: bytes

    def __init__(  # noqa: PLR0917 (the wire entry's fields, in its order)
        self,
        path: str,
        size: int,
        mode: int,
        mtime_ns: int,
        hashes: bytes,
        lengths: bytes,
        digest: bytes,
    ) -> None:
        object.__setattr__(self, "path", path)
        try:
            head = _HEAD.pack(size, mtime_ns, mode)
        except struct.error as exc:
            raise ManifestError(f"{path!r}: size, mtime_ns or mode out of range ({exc})") from None
        count, rest = divmod(len(lengths), 4)
        if rest or len(hashes) != HASH_SIZE * count:
            raise ManifestError(
                f"{path!r}: {len(hashes)} bytes of chunk hashes for {len(lengths)} bytes of "
                "chunk lengths"
            )
        if len(digest) != HASH_SIZE:
            raise ManifestError(f"{path!r}: digest does not match the chunk list")
        object.__setattr__(self, "_packed", b"".join((head, digest, hashes, lengths)))

    @classmethod
    def build(
        cls, path: str, size: int, mode: int, mtime_ns: int, chunks: Iterable[tuple[bytes, int]]
    ) -> FileEntry:
        """Make an entry from ``(hash, length)`` pairs, keeping only permission bits of
        ``mode`` and computing the digest."""
        hashes: list[bytes] = []
        lengths = array(LENGTH_CODE)
        try:
            for digest, length in chunks:
                if len(digest) != HASH_SIZE:
                    raise ManifestError(
                        f"{path!r}: chunk {len(hashes)} is not a {HASH_SIZE}-byte hash"
                    )
                lengths.append(length)
                hashes.append(digest)
        except (OverflowError, TypeError) as exc:
            raise ManifestError(f"{path!r}: chunk {len(lengths)} length: {exc}") from None
        return cls.from_packed(
            path, size, mode, mtime_ns, hashes=b"".join(hashes), lengths=lengths.tobytes()
        )

    @classmethod
    def from_packed(
        cls, path: str, size: int, mode: int, mtime_ns: int, *, hashes: bytes, lengths: bytes
    ) -> FileEntry:
        """Make an entry from an already packed chunk list, computing the digest."""
        if len(lengths) % 4:
            raise ManifestError(f"{path!r}: {len(lengths)} bytes of chunk lengths")
        return cls(
            path, size, mode & MODE_MASK, mtime_ns, hashes, lengths, packed_digest(hashes, lengths)
        )

    # -- fields -------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return _HEAD.unpack_from(self._packed)[0]

    @property
    def mtime_ns(self) -> int:
        return _HEAD.unpack_from(self._packed)[1]

    @property
    def mode(self) -> int:
        return _HEAD.unpack_from(self._packed)[2]

    @property
    def digest(self) -> bytes:
        return self._packed[_DIGEST_AT:_HASHES_AT]

    @property
    def chunk_count(self) -> int:
        return (len(self._packed) - _HASHES_AT) // _CHUNK_BYTES

    @property
    def hashes(self) -> bytes:
        """The chunk hashes, concatenated (a copy: loops should use :meth:`chunk_hash`)."""
        return self._packed[_HASHES_AT : _HASHES_AT + HASH_SIZE * self.chunk_count]

    @property
    def lengths(self) -> bytes:
        """The chunk lengths as native-endian u32 (a copy; see :meth:`chunk_lengths`)."""
        return self._packed[_HASHES_AT + HASH_SIZE * self.chunk_count :]

    def chunk_lengths(self) -> memoryview:
        """The chunk lengths as a read-only sequence of ints (no copy)."""
        start = _HASHES_AT + HASH_SIZE * self.chunk_count
        return memoryview(self._packed)[start:].cast(LENGTH_CODE)

    def chunk_length(self, i: int) -> int:
        if not 0 <= i < self.chunk_count:
            raise IndexError(i)
        return _LENGTH.unpack_from(self._packed, len(self._packed) - 4 * (self.chunk_count - i))[0]

    def chunk_hash(self, i: int) -> bytes:
        if not 0 <= i < self.chunk_count:
            raise IndexError(i)
        start = _HASHES_AT + i * HASH_SIZE
        return self._packed[start : start + HASH_SIZE]

    def has_chunk(self, i: int, digest: bytes) -> bool:
        """Whether chunk ``i`` has hash ``digest``, compared in place (no copy)."""
        return (
            0 <= i < self.chunk_count
            and len(digest) == HASH_SIZE
            and self._packed.startswith(digest, _HASHES_AT + i * HASH_SIZE)
        )

    def iter_chunks(self) -> Iterator[Chunk]:
        """The chunks in file order, one ``Chunk`` at a time."""
        packed = self._packed
        for i, length in enumerate(self.chunk_lengths()):
            start = _HASHES_AT + i * HASH_SIZE
            yield Chunk(packed[start : start + HASH_SIZE], length)

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        """The chunk list as ``Chunk`` tuples, built anew on each access (the entry keeps only
        the packed form): loops over many entries should use :meth:`iter_chunks`."""
        return tuple(self.iter_chunks())

    # -- value semantics ---------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if type(other) is not FileEntry:
            return NotImplemented
        return self.path == other.path and self._packed == other._packed

    def __hash__(self) -> int:
        return hash((self.path, self._packed))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"FileEntry is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"FileEntry is immutable (cannot delete {name!r})")

    def __reduce__(self) -> tuple[Any, tuple[str, bytes]]:
        # copy and pickle: __setattr__ refuses the default way of restoring slots.
        return (_file_entry, (self.path, self._packed))

    def __repr__(self) -> str:
        return (
            f"FileEntry(path={self.path!r}, size={self.size}, mode={self.mode:#o}, "
            f"mtime_ns={self.mtime_ns}, chunks={self.chunk_count}, digest={self.digest.hex()})"
        )


def _file_entry(path: str, packed: bytes) -> FileEntry:
    entry = object.__new__(FileEntry)
    object.__setattr__(entry, "path", path)
    object.__setattr__(entry, "_packed", packed)
    return entry


@dataclass(frozen=True, slots=True)
class DirEntry:
    """A directory, listed so empty directories sync. No mtime: it changes with every child."""

    path: str
    mode: int


@dataclass(frozen=True, slots=True)
class SymlinkEntry:
    """A symbolic link; its target must stay inside the tree (see ``symlink_target_is_inside``)."""

    path: str
    target: str


Entry = FileEntry | DirEntry | SymlinkEntry


@dataclass(frozen=True, slots=True)
class FileEdit:
    """In a delta only: a file whose chunk list is given as edits (``ops``) of the entry with
    digest ``base_digest`` in the base manifest. :func:`apply_delta` turns it into the
    FileEntry, refusing it unless the rebuilt list has exactly ``digest``."""

    path: str
    size: int
    mode: int
    mtime_ns: int
    base_digest: bytes
    ops: tuple[Op, ...]
    digest: bytes

    def resolve(self, base: Entry | None, params: ChunkParams) -> FileEntry:
        if not isinstance(base, FileEntry) or base.digest != self.base_digest:
            raise ManifestError(
                f"delta edits {self.path!r}, but the base manifest holds another version of it"
            )
        # Every chunk but a file's last is at least min_size long: a bound before building.
        most = self.size // params.min_size + 1
        try:
            hashes, lengths = apply_packed(base.hashes, base.lengths, self.ops, most)
        except ChunkEditError as exc:
            raise ManifestError(f"delta entry {self.path!r}: {exc}") from None
        entry = FileEntry(
            self.path, self.size, self.mode, self.mtime_ns, hashes, lengths, self.digest
        )
        _check_entry(entry, params, "delta entry")  # lengths, their sum, and the digest
        return entry


Upsert = Entry | FileEdit


def _sorted_entries(entries: Iterable[Entry]) -> MappingProxyType[str, Entry]:
    """Entries keyed by path in sorted order (str order == UTF-8 byte order for valid paths),
    read-only. Duplicate paths raise ManifestError."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        if entry.path in by_path:
            raise ManifestError(f"duplicate manifest entry {entry.path!r}")
        by_path[entry.path] = entry
    return MappingProxyType({p: by_path[p] for p in sorted(by_path)})


@dataclass(frozen=True)
class Manifest:
    """The tree at one version. ``entries`` is a read-only mapping path -> entry that iterates in
    sorted path order (a parent always comes before its children)."""

    version: int
    params: ChunkParams
    entries: Mapping[str, Entry]

    def __post_init__(self) -> None:
        previous: str | None = None
        in_order = type(self.entries) is MappingProxyType
        for path, entry in self.entries.items():
            if path != entry.path:
                raise ManifestError(f"manifest key {path!r} does not match entry {entry.path!r}")
            in_order = in_order and (previous is None or previous < path)
            previous = path
        # Normalize whatever mapping we were given: sorted, read-only. A read-only mapping that
        # is sorted already (what build() makes) is kept: a copy per manifest is ~40 bytes a file.
        if not in_order:
            object.__setattr__(self, "entries", _sorted_entries(self.entries.values()))

    @classmethod
    def build(cls, version: int, params: ChunkParams, entries: Iterable[Entry]) -> Manifest:
        """A manifest from entries in any order; duplicate paths raise ManifestError."""
        return cls(version, params, _sorted_entries(entries))

    def files(self) -> Iterator[FileEntry]:
        """File entries in path order."""
        for entry in self.entries.values():
            if isinstance(entry, FileEntry):
                yield entry

    @cached_property
    def file_count(self) -> int:
        return sum(1 for _ in self.files())

    @cached_property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files())

    @cached_property
    def chunk_count(self) -> int:
        """Total chunk references (a chunk used twice counts twice)."""
        return sum(len(f.lengths) for f in self.files()) >> 2

    def chunk_hashes(self) -> Set[bytes]:
        """The distinct chunk hashes this manifest refers to: a read-only set-like view of
        :meth:`chunk_locations`, the same object on every call."""
        return self._chunk_hashes

    def chunk_locations(self) -> ChunkIndex:
        """Each distinct chunk hash -> its first occurrence (path order, then offset). The master
        serves a chunk by reading there; a peer copies chunks it already has locally from there.
        Computed once per manifest, as a compact :class:`ChunkIndex`, not a dict."""
        return self._chunk_index

    @cached_property
    def _chunk_index(self) -> ChunkIndex:
        return ChunkIndex(self.files())

    @cached_property
    def _chunk_hashes(self) -> Set[bytes]:
        return self._chunk_index.keys()


@dataclass(frozen=True)
class ManifestDiff:
    """Paths added, changed (any field, including kind) and removed between two manifests."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def diff(old: Manifest | None, new: Manifest) -> ManifestDiff:
    """What changed from ``old`` (None: nothing yet) to ``new``; each tuple is sorted."""
    old_entries: Mapping[str, Entry] = old.entries if old is not None else {}
    added: list[str] = []
    changed: list[str] = []
    for path, entry in new.entries.items():  # sorted, so the lists come out sorted
        before = old_entries.get(path)
        if before is None:
            added.append(path)
        elif before != entry:  # dataclass eq also compares the class: file -> dir is a change
            changed.append(path)
    removed = [p for p in old_entries if p not in new.entries]
    return ManifestDiff(tuple(added), tuple(changed), tuple(removed))


def needed_chunks(
    manifest: Manifest, have: Container[bytes], paths: Iterable[str] | None = None
) -> list[bytes]:
    """Distinct chunk hashes of ``manifest`` not in ``have``, in first-occurrence order.

    With ``paths``, only those entries count (e.g. the added and changed paths of a diff);
    paths that are not files of the manifest, such as removed ones, contribute nothing."""
    if paths is None:
        files: Iterable[Entry] = manifest.files()
    else:
        files = (manifest.entries[p] for p in sorted(set(paths)) if p in manifest.entries)
    seen: set[bytes] = set()
    out: list[bytes] = []
    for entry in files:
        if not isinstance(entry, FileEntry):
            continue
        hashes = entry.hashes
        for i in range(0, len(hashes), HASH_SIZE):
            h = hashes[i : i + HASH_SIZE]
            if h not in seen:
                seen.add(h)
                if h not in have:
                    out.append(h)
    return out


# --------------------------------------------------------------------------- delta


@dataclass(frozen=True)
class ManifestDelta:
    """How to turn manifest ``base_version`` into ``version``: entries to add or replace, paths
    to remove. Its size scales with the change, not with the tree."""

    base_version: int
    version: int
    params: ChunkParams
    upserts: tuple[Upsert, ...]  # sorted by path
    removed: tuple[str, ...]  # sorted


def make_delta(old: Manifest, new: Manifest) -> ManifestDelta:
    """The delta from ``old`` to ``new``. Chunk parameters cannot change through a delta (every
    chunk list would change): send the full manifest then."""
    if old.params != new.params:
        raise ManifestError("cannot make a delta across a change of chunk parameters")
    if new.version <= old.version:
        raise ManifestError(f"delta must move forward, got {old.version} -> {new.version}")
    d = diff(old, new)
    upserts = tuple(
        _as_edit(old.entries.get(p), new.entries[p]) for p in sorted(d.added + d.changed)
    )
    return ManifestDelta(old.version, new.version, new.params, upserts, d.removed)


def _as_edit(before: Entry | None, after: Entry) -> Upsert:
    """`after` as edits of `before` when both are files and the edits are much smaller."""
    if not (
        isinstance(before, FileEntry)
        and isinstance(after, FileEntry)
        and after.chunk_count >= EDIT_MIN_CHUNKS
    ):
        return after
    ops = edit_ops(before.chunks, after.chunks)
    if not ops or not worth_sending(ops, after.chunk_count):
        return after
    return FileEdit(
        after.path, after.size, after.mode, after.mtime_ns, before.digest, ops, after.digest
    )


def apply_delta(base: Manifest, delta: ManifestDelta) -> Manifest:
    """``base`` with ``delta`` applied. Refuses (ManifestError) a delta for another base version
    or other chunk parameters, removal of an absent path, and a result where an entry would sit
    under a file or symlink. The entries themselves are trusted: :func:`decode_delta` has
    already checked them when the delta came off the wire."""
    if base.version != delta.base_version:
        raise ManifestError(
            f"delta applies to manifest version {delta.base_version}, not {base.version}"
        )
    if base.params != delta.params:
        raise ManifestError("delta chunk parameters differ from the base manifest's")
    entries = dict(base.entries)
    for path in delta.removed:
        if path not in entries:
            raise ManifestError(f"delta removes {path!r}, which is not in the base manifest")
        del entries[path]
    upserted: set[str] = set()
    for upsert in delta.upserts:
        if upsert.path in upserted:
            raise ManifestError(f"delta lists {upsert.path!r} twice")
        upserted.add(upsert.path)
        if isinstance(upsert, FileEdit):
            entries[upsert.path] = upsert.resolve(base.entries.get(upsert.path), delta.params)
        else:
            entries[upsert.path] = upsert
    result = Manifest(delta.version, delta.params, entries)
    # Only upserted paths can break the tree shape, so only they are checked: cost follows the
    # change. An upsert must not sit under a file/symlink, and a file/symlink upsert must not
    # have anything left under it.
    keys = list(result.entries)
    for entry in delta.upserts:
        _check_ancestors(entry.path, result.entries, "delta entry")
        if not isinstance(entry, DirEntry):
            prefix = entry.path + "/"
            i = bisect.bisect_left(keys, prefix)
            if i < len(keys) and keys[i].startswith(prefix):
                raise ManifestError(
                    f"delta entry {keys[i]!r}: lies under {entry.path!r}, which is not a directory"
                )
    return result


def _check_ancestors(path: str, entries: Mapping[str, Entry], what: str) -> None:
    """Refuse a path that lies under a file or symlink entry (the peer would have to write
    through a symlink or into a file)."""
    end = path.find("/")
    while end != -1:
        parent = entries.get(path[:end])
        if parent is not None and not isinstance(parent, DirEntry):
            raise ManifestError(
                f"{what} {path!r}: lies under {path[:end]!r}, which is not a directory"
            )
        end = path.find("/", end + 1)


# --------------------------------------------------------------------------- validation


def _check_entry(entry: Entry, params: ChunkParams, what: str = "manifest entry") -> None:
    """Everything that can be checked about one entry on its own; raises ManifestError."""
    if not isinstance(entry, FileEntry | DirEntry | SymlinkEntry):
        raise ManifestError(f"{what}: not an entry: {type(entry).__name__}")
    try:
        validate_path(entry.path)
    except UnsafePathError as exc:
        raise ManifestError(f"{what}: {exc}") from None
    where = f"{what} {entry.path!r}"
    if isinstance(entry, SymlinkEntry):
        if type(entry.target) is not str:
            raise ManifestError(f"{where}: symlink target must be a string")
        if not symlink_target_is_inside(entry.path, entry.target):
            raise ManifestError(f"{where}: symlink target {entry.target!r} leaves the tree")
        return
    if isinstance(entry, DirEntry):
        _check_mode(entry.mode, where)
        return
    _check_file_fields(entry.size, entry.mode, entry.mtime_ns, where)
    lengths = entry.chunk_lengths()
    if lengths and (min(lengths) < 1 or max(lengths) > params.max_size):
        _check_lengths(lengths, params, where)
    total = sum(lengths)
    if total != entry.size:
        raise ManifestError(f"{where}: chunk lengths sum to {total} but size is {entry.size}")
    if entry.digest != packed_digest(entry.hashes, entry.lengths):
        raise ManifestError(f"{where}: digest does not match the chunk list")


def _check_edit(edit: FileEdit, params: ChunkParams) -> None:
    """What can be checked about a file edit without its base (apply_delta checks the rest)."""
    try:
        validate_path(edit.path)
    except UnsafePathError as exc:
        raise ManifestError(f"delta entry: {exc}") from None
    where = f"delta entry {edit.path!r}"
    _check_file_fields(edit.size, edit.mode, edit.mtime_ns, where)
    for name in ("base_digest", "digest"):
        value = getattr(edit, name)
        if type(value) is not bytes or len(value) != HASH_SIZE:
            raise ManifestError(f"{where}: {name} must be {HASH_SIZE} bytes")
    try:
        checked_ops(list(edit.ops), params.max_size)
    except ChunkEditError as exc:
        raise ManifestError(f"{where}: {exc}") from None


def _check_mode(mode: Any, where: str) -> None:
    if type(mode) is not int or not 0 <= mode <= MODE_MASK:
        raise ManifestError(f"{where}: mode must be an integer in [0, 0o7777], got {mode!r}")


def _check_file_fields(size: Any, mode: Any, mtime_ns: Any, where: str) -> None:
    _check_mode(mode, where)
    if type(size) is not int or not 0 <= size <= MAX_FILE_SIZE:
        raise ManifestError(f"{where}: size must be an integer in [0, 2**50], got {size!r}")
    if type(mtime_ns) is not int or not MTIME_RANGE[0] <= mtime_ns <= MTIME_RANGE[1]:
        raise ManifestError(f"{where}: mtime_ns must be a 64-bit integer, got {mtime_ns!r}")


def _check_lengths(lengths: Iterable[Any], params: ChunkParams, where: str) -> None:
    """Raise ManifestError naming the first length that is not an int in [1, max_size]."""
    for i, length in enumerate(lengths):
        if type(length) is not int or not 1 <= length <= params.max_size:
            raise ManifestError(
                f"{where}: chunk {i} length must be in [1, {params.max_size}], got {length!r}"
            )


def _check_version(value: Any, name: str) -> int:
    if type(value) is not int or value < 0:
        raise ManifestError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def validate_manifest(manifest: Manifest) -> None:
    """Raise ManifestError unless ``manifest`` is one a peer would accept: the checks decoding
    does. :func:`encode_manifest` calls it so the master never publishes what peers refuse."""
    _check_version(manifest.version, "manifest version")
    if type(manifest.params) is not ChunkParams:
        raise ManifestError("manifest params must be ChunkParams")
    for entry in manifest.entries.values():  # sorted: ancestors are checked before use
        _check_entry(entry, manifest.params)
        _check_ancestors(entry.path, manifest.entries, "manifest entry")


# --------------------------------------------------------------------------- encoding


def _encode_entry(entry: Upsert) -> list[Any]:
    if isinstance(entry, FileEdit):
        return [
            KIND_FILE_EDIT,
            entry.path,
            entry.size,
            entry.mode,
            entry.mtime_ns,
            entry.base_digest,
            [[a, list(b) if isinstance(b, tuple) else b] for a, b in entry.ops],
            entry.digest,
        ]
    if isinstance(entry, FileEntry):
        return [
            KIND_FILE,
            entry.path,
            entry.size,
            entry.mode,
            entry.mtime_ns,
            entry.hashes,
            entry.chunk_lengths().tolist(),
            entry.digest,
        ]
    if isinstance(entry, DirEntry):
        return [KIND_DIR, entry.path, entry.mode]
    return [KIND_SYMLINK, entry.path, entry.target]


def _pack(obj: Any) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ManifestError(f"cannot encode: {exc}") from None


ENCODE_PART = 1 << 16  # bytes per part of an encoded manifest (a large file's entry may be more)


def encode_manifest(manifest: Manifest, *, validate: bool = True) -> bytes:
    """The canonical msgpack encoding of a manifest (validated first, ManifestError if invalid,
    unless the caller knows it already was)."""
    if validate:
        validate_manifest(manifest)
    return b"".join(iter_manifest_parts(manifest, 1 << 20))


def iter_manifest_parts(manifest: Manifest, part_size: int = ENCODE_PART) -> Iterator[bytes]:
    """:func:`encode_manifest`'s bytes in parts of about ``part_size`` bytes, produced as they
    are consumed, for a caller that writes them out (the master streams them into SQLite): the
    whole encoding is then never in memory, nor a wire-shaped copy of a large file's entry.
    Does not validate: call :func:`validate_manifest` first. Same manifest, same parts."""
    pending: list[bytes] = []
    size = 0
    try:
        for piece in _manifest_pieces(manifest):
            pending.append(piece)
            size += len(piece)
            if size >= part_size:
                yield b"".join(pending)
                pending, size = [], 0
    except (ValueError, TypeError, OverflowError) as exc:
        raise ManifestError(f"cannot encode: {exc}") from None
    if pending:
        yield b"".join(pending)


_LARGE_ENTRY = 1024  # chunks from which a file's entry is encoded piece by piece
_PIECE_CHUNKS = 2048  # hashes (64 KiB) or lengths per piece of a large entry


def _manifest_pieces(manifest: Manifest) -> Iterator[bytes]:
    packer = msgpack.Packer(use_bin_type=True)  # autoreset: each pack() returns its bytes
    yield packer.pack_array_header(5)
    yield packer.pack(MANIFEST_TAG)
    yield packer.pack(FORMAT_VERSION)
    yield packer.pack(manifest.version)
    yield packer.pack(list(manifest.params.as_tuple()))
    yield packer.pack_array_header(len(manifest.entries))
    for entry in manifest.entries.values():
        if isinstance(entry, FileEntry) and entry.chunk_count > _LARGE_ENTRY:
            yield from _large_file_pieces(packer, entry)
        else:
            yield packer.pack(_encode_entry(entry))


def _large_file_pieces(packer: msgpack.Packer, entry: FileEntry) -> Iterator[bytes]:
    """The bytes ``packer.pack(_encode_entry(entry))`` would give, in pieces of a few KiB."""
    n = entry.chunk_count
    yield packer.pack_array_header(8)
    for value in (KIND_FILE, entry.path, entry.size, entry.mode, entry.mtime_ns):
        yield packer.pack(value)
    yield _bin_header(HASH_SIZE * n)
    step = HASH_SIZE * _PIECE_CHUNKS
    with memoryview(entry._packed) as packed:
        for start in range(_HASHES_AT, _HASHES_AT + HASH_SIZE * n, step):
            yield bytes(packed[start : min(start + step, _HASHES_AT + HASH_SIZE * n)])
    yield packer.pack_array_header(n)
    lengths = entry.chunk_lengths()
    for start in range(0, n, _PIECE_CHUNKS):
        values = lengths[start : start + _PIECE_CHUNKS].tolist()
        # An array of these ints, less its header: the ints as they sit in the big array.
        yield packer.pack(values)[_array_header_size(len(values)) :]
    yield packer.pack(entry.digest)


def _bin_header(n: int) -> bytes:
    """msgpack's header for a bin of ``n`` bytes (bin 8, 16 or 32, as the packer picks)."""
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _array_header_size(n: int) -> int:
    """Bytes of msgpack's header for an array of ``n`` items (fixarray, array 16, array 32)."""
    return 1 if n < 16 else 3 if n < 1 << 16 else 5


def encode_delta(delta: ManifestDelta) -> bytes:
    """The canonical msgpack encoding of a delta (validated first; ManifestError if invalid)."""
    _check_delta_header(delta.base_version, delta.version)
    upserts = sorted(delta.upserts, key=lambda e: e.path)
    for entry in upserts:
        if isinstance(entry, FileEdit):
            _check_edit(entry, delta.params)
        else:
            _check_entry(entry, delta.params, "delta entry")
    removed = sorted(delta.removed)
    for path in removed:
        _check_removed_path(path)
    _check_delta_structure(upserts, removed)
    return _pack(
        [
            DELTA_TAG,
            FORMAT_VERSION,
            delta.base_version,
            delta.version,
            list(delta.params.as_tuple()),
            [_encode_entry(e) for e in upserts],
            removed,
        ]
    )


# --------------------------------------------------------------------------- decoding


def _unpack(data: bytes, what: str) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ManifestError(f"{what} must be bytes, got {type(data).__name__}")
    n = len(data)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            # No maps or ext types in the format; bound the rest by the input size so a
            # forged length prefix cannot make the decoder allocate more than it was sent.
            max_str_len=MAX_PATH_BYTES,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=0,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise ManifestError(f"{what}: trailing bytes after the document") from None
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise ManifestError(f"{what}: not valid msgpack ({type(exc).__name__}: {exc})") from None


def _expect_list(value: Any, length: int | None, what: str) -> list[Any]:
    if type(value) is not list:
        raise ManifestError(f"{what} must be an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ManifestError(f"{what} must have {length} items, got {len(value)}")
    return value


def _decode_header(obj: Any, tag: str, items: int, what: str) -> list[Any]:
    top = _expect_list(obj, None, what)
    if len(top) < 2 or top[0] != tag or type(top[0]) is not str:
        raise ManifestError(f"not a {what} (expected tag {tag!r})")
    if type(top[1]) is not int or top[1] != FORMAT_VERSION:
        raise ManifestError(
            f"unsupported {what} format {top[1]!r} (this sift reads {FORMAT_VERSION})"
        )
    if len(top) != items:
        raise ManifestError(f"{what} must have {items} top-level items, got {len(top)}")
    return top


def _decode_params(value: Any) -> ChunkParams:
    raw = _expect_list(value, 3, "chunk params")
    if any(type(v) is not int for v in raw):
        raise ManifestError(f"chunk params must be three integers, got {raw!r}")
    try:
        return ChunkParams(*raw)
    except ValueError as exc:
        raise ManifestError(f"invalid chunk params: {exc}") from None


def _decode_entry(raw: Any, params: ChunkParams, what: str, edits: bool = False) -> Upsert:
    """One wire entry -> a fully checked Entry (types first, then _check_entry); with `edits`
    (in a delta) also a FileEdit, checked as far as it can be without its base."""
    if type(raw) is not list or not raw:
        raise ManifestError(f"{what} must be a non-empty array")
    kind = raw[0]
    if edits and kind == KIND_FILE_EDIT and type(kind) is int:
        return _decode_edit(raw, params, what)
    if type(kind) is not int or kind not in (KIND_FILE, KIND_DIR, KIND_SYMLINK):
        raise ManifestError(f"{what} has unknown kind {kind!r}")
    expected = {KIND_FILE: 8, KIND_DIR: 3, KIND_SYMLINK: 3}[kind]
    if len(raw) != expected:
        raise ManifestError(f"{what} of kind {kind} must have {expected} items, got {len(raw)}")
    path = raw[1]
    if type(path) is not str:
        raise ManifestError(f"{what} path must be a string, got {type(path).__name__}")
    where = f"{what} {path!r}"
    entry: Entry
    if kind == KIND_DIR:
        entry = DirEntry(path, raw[2])
    elif kind == KIND_SYMLINK:
        entry = SymlinkEntry(path, raw[2])
    else:
        _, _, size, mode, mtime_ns, hashes, lengths, digest = raw
        if type(hashes) is not bytes:
            raise ManifestError(f"{where}: chunk hashes must be bytes")
        if type(lengths) is not list:
            raise ManifestError(f"{where}: chunk lengths must be an array")
        if len(hashes) != HASH_SIZE * len(lengths):
            raise ManifestError(
                f"{where}: {len(hashes)} bytes of chunk hashes for {len(lengths)} chunk lengths"
            )
        if type(digest) is not bytes:
            raise ManifestError(f"{where}: digest must be bytes")
        if len(digest) != HASH_SIZE:
            raise ManifestError(f"{where}: digest does not match the chunk list")
        if not all(type(n) is int for n in lengths) or (
            lengths and (min(lengths) < 1 or max(lengths) > params.max_size)
        ):
            _check_lengths(lengths, params, where)
        _check_file_fields(size, mode, mtime_ns, where)  # before packing, which needs them
        entry = FileEntry(
            path, size, mode, mtime_ns, hashes, array(LENGTH_CODE, lengths).tobytes(), digest
        )
    _check_entry(entry, params, what)
    return entry


def _decode_edit(raw: list[Any], params: ChunkParams, what: str) -> FileEdit:
    if len(raw) != 8:
        raise ManifestError(f"{what} of kind {KIND_FILE_EDIT} must have 8 items, got {len(raw)}")
    _, path, size, mode, mtime_ns, base_digest, ops, digest = raw
    if type(path) is not str:
        raise ManifestError(f"{what} path must be a string, got {type(path).__name__}")
    try:
        edit = FileEdit(
            path, size, mode, mtime_ns, base_digest, checked_ops(ops, params.max_size), digest
        )
    except ChunkEditError as exc:
        raise ManifestError(f"{what} {path!r}: {exc}") from None
    _check_edit(edit, params)
    return edit


def _decode_entries(raw: Any, params: ChunkParams, what: str, edits: bool = False) -> list[Any]:
    """Decode an entry array, requiring strictly sorted paths (canonical form, and duplicates
    show up as equal neighbours). File edits only where `edits` (a delta)."""
    entries: list[Upsert] = []
    previous: str | None = None
    for item in _expect_list(raw, None, f"{what} list"):
        entry = _decode_entry(item, params, what, edits)
        if previous is not None and entry.path <= previous:
            problem = "duplicate" if entry.path == previous else "out of order"
            raise ManifestError(f"{what} {entry.path!r}: {problem} (entries must be sorted)")
        previous = entry.path
        entries.append(entry)
    return entries


def decode_manifest(data: bytes) -> Manifest:
    """Parse and fully validate an encoded manifest; any problem raises ManifestError."""
    top = _decode_header(_unpack(data, "manifest"), MANIFEST_TAG, 5, "manifest")
    version = _check_version(top[2], "manifest version")
    params = _decode_params(top[3])
    entries = _decode_entries(top[4], params, "manifest entry")
    manifest = Manifest.build(version, params, entries)
    for entry in entries:
        _check_ancestors(entry.path, manifest.entries, "manifest entry")
    return manifest


def _check_delta_header(base_version: Any, version: Any) -> None:
    _check_version(base_version, "delta base version")
    _check_version(version, "delta version")
    if version <= base_version:
        raise ManifestError(f"delta must move forward, got {base_version} -> {version}")


def _check_removed_path(path: Any) -> None:
    if type(path) is not str:
        raise ManifestError(f"delta removed path must be a string, got {type(path).__name__}")
    try:
        validate_path(path)
    except UnsafePathError as exc:
        raise ManifestError(f"delta removed path: {exc}") from None


def _check_delta_structure(upserts: list[Upsert], removed: list[str]) -> None:
    """Both lists strictly sorted (canonical, no duplicates), disjoint, and no upsert under a
    file or symlink upsert. ``removed`` items are already known to be valid paths."""
    for what, paths in (
        ("delta entry", [e.path for e in upserts]),
        ("delta removed path", removed),
    ):
        for prev, path in pairwise(paths):
            if path <= prev:
                problem = "duplicate" if path == prev else "out of order"
                raise ManifestError(f"{what} {path!r}: {problem} (paths must be sorted)")
    both = set(removed).intersection(e.path for e in upserts)
    if both:
        raise ManifestError(f"delta both removes and upserts {min(both)!r}")
    by_path = {e.path: e for e in upserts}
    for entry in upserts:
        _check_ancestors(entry.path, by_path, "delta entry")


def decode_delta(data: bytes) -> ManifestDelta:
    """Parse and validate an encoded delta. Checks that need the base manifest (version, removed
    paths present, tree shape) happen in :func:`apply_delta`."""
    top = _decode_header(_unpack(data, "delta"), DELTA_TAG, 7, "delta")
    _check_delta_header(top[2], top[3])
    params = _decode_params(top[4])
    upserts = _decode_entries(top[5], params, "delta entry", edits=True)
    removed = _expect_list(top[6], None, "delta removed list")
    for path in removed:
        _check_removed_path(path)
    _check_delta_structure(upserts, removed)
    return ManifestDelta(top[2], top[3], params, tuple(upserts), tuple(removed))
