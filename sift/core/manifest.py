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

``hashes`` is one bin blob of the concatenated 32-byte chunk hashes, so a chunk ref costs about
36 bytes. Decoding trusts nothing: every type, bound, path and digest is checked and any problem
refuses the whole document with :class:`ManifestError`.
"""

from __future__ import annotations

import bisect
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from types import MappingProxyType
from typing import Any, NamedTuple

import msgpack
from blake3 import blake3

from sift.core.chunk import HASH_SIZE, Chunk, ChunkParams
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

MAX_FILE_SIZE = 2**50  # 1 PiB: far beyond any real file, small enough to rule out nonsense
MODE_MASK = 0o7777  # permission bits only; the kind is carried by the entry type
_CHUNKLIST_DOMAIN = b"sift-chunklist-v1\x00"


class ManifestError(ValueError):
    """A manifest or delta that is malformed, unsafe or inconsistent."""


def chunk_list_digest(chunks: Iterable[Chunk]) -> bytes:
    """BLAKE3 over a chunk list: domain string, then per chunk its hash and its length as
    8 bytes big-endian. Two files with equal digests have identical contents."""
    h = blake3(_CHUNKLIST_DOMAIN)
    for chunk in chunks:
        h.update(chunk.hash)
        h.update(chunk.length.to_bytes(8, "big"))
    return h.digest()


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A regular file: its size, permission bits, mtime and chunk list (offsets follow from
    order). ``digest`` is :func:`chunk_list_digest` of ``chunks``; use :meth:`build`."""

    path: str
    size: int
    mode: int
    mtime_ns: int
    chunks: tuple[Chunk, ...]
    digest: bytes

    @classmethod
    def build(
        cls, path: str, size: int, mode: int, mtime_ns: int, chunks: Iterable[Chunk]
    ) -> FileEntry:
        """Make an entry, keeping only permission bits of ``mode`` and computing the digest."""
        chunk_tuple = tuple(Chunk(c[0], c[1]) for c in chunks)
        return cls(
            path, size, mode & MODE_MASK, mtime_ns, chunk_tuple, chunk_list_digest(chunk_tuple)
        )


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


class ChunkLocation(NamedTuple):
    """Where a chunk's bytes can be read: ``length`` bytes at ``offset`` in file ``path``."""

    path: str
    offset: int
    length: int


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
        for path, entry in self.entries.items():
            if path != entry.path:
                raise ManifestError(f"manifest key {path!r} does not match entry {entry.path!r}")
        # Normalize whatever mapping we were given: sorted, read-only.
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
        return sum(len(f.chunks) for f in self.files())

    def chunk_hashes(self) -> set[bytes]:
        """The distinct chunk hashes this manifest refers to."""
        return {c.hash for f in self.files() for c in f.chunks}

    def chunk_locations(self) -> Mapping[bytes, ChunkLocation]:
        """Each distinct chunk hash -> its first occurrence (path order, then offset). The master
        serves a chunk by reading there; a peer copies chunks it already has locally from there.
        Computed once per manifest."""
        return self._chunk_locations

    @cached_property
    def _chunk_locations(self) -> Mapping[bytes, ChunkLocation]:
        locations: dict[bytes, ChunkLocation] = {}
        for f in self.files():
            offset = 0
            for chunk in f.chunks:
                if chunk.hash not in locations:
                    locations[chunk.hash] = ChunkLocation(f.path, offset, chunk.length)
                offset += chunk.length
        return MappingProxyType(locations)


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
        for chunk in entry.chunks:
            h = chunk.hash
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
    upserts: tuple[Entry, ...]  # sorted by path
    removed: tuple[str, ...]  # sorted


def make_delta(old: Manifest, new: Manifest) -> ManifestDelta:
    """The delta from ``old`` to ``new``. Chunk parameters cannot change through a delta (every
    chunk list would change): send the full manifest then."""
    if old.params != new.params:
        raise ManifestError("cannot make a delta across a change of chunk parameters")
    if new.version <= old.version:
        raise ManifestError(f"delta must move forward, got {old.version} -> {new.version}")
    d = diff(old, new)
    upserts = tuple(new.entries[p] for p in sorted(d.added + d.changed))
    return ManifestDelta(old.version, new.version, new.params, upserts, d.removed)


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
    for entry in delta.upserts:
        if entry.path in upserted:
            raise ManifestError(f"delta lists {entry.path!r} twice")
        upserted.add(entry.path)
        entries[entry.path] = entry
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
    if type(entry.mode) is not int or not 0 <= entry.mode <= MODE_MASK:
        raise ManifestError(f"{where}: mode must be an integer in [0, 0o7777], got {entry.mode!r}")
    if isinstance(entry, DirEntry):
        return
    if type(entry.size) is not int or not 0 <= entry.size <= MAX_FILE_SIZE:
        raise ManifestError(f"{where}: size must be an integer in [0, 2**50], got {entry.size!r}")
    if type(entry.mtime_ns) is not int:
        raise ManifestError(f"{where}: mtime_ns must be an integer, got {entry.mtime_ns!r}")
    if type(entry.chunks) is not tuple:
        raise ManifestError(f"{where}: chunks must be a tuple")
    total = 0
    for i, chunk in enumerate(entry.chunks):
        if (
            type(chunk) is not Chunk
            or type(chunk.hash) is not bytes
            or len(chunk.hash) != HASH_SIZE
        ):
            raise ManifestError(f"{where}: chunk {i} is not a {HASH_SIZE}-byte hash and a length")
        if type(chunk.length) is not int or not 1 <= chunk.length <= params.max_size:
            raise ManifestError(
                f"{where}: chunk {i} length must be in [1, {params.max_size}], got {chunk.length!r}"
            )
        total += chunk.length
    if total != entry.size:
        raise ManifestError(f"{where}: chunk lengths sum to {total} but size is {entry.size}")
    if type(entry.digest) is not bytes or entry.digest != chunk_list_digest(entry.chunks):
        raise ManifestError(f"{where}: digest does not match the chunk list")


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


def _encode_entry(entry: Entry) -> list[Any]:
    if isinstance(entry, FileEntry):
        return [
            KIND_FILE,
            entry.path,
            entry.size,
            entry.mode,
            entry.mtime_ns,
            b"".join(c.hash for c in entry.chunks),
            [c.length for c in entry.chunks],
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


def encode_manifest(manifest: Manifest) -> bytes:
    """The canonical msgpack encoding of a manifest (validated first; ManifestError if invalid)."""
    validate_manifest(manifest)
    return _pack(
        [
            MANIFEST_TAG,
            FORMAT_VERSION,
            manifest.version,
            list(manifest.params.as_tuple()),
            [_encode_entry(e) for e in manifest.entries.values()],
        ]
    )


def encode_delta(delta: ManifestDelta) -> bytes:
    """The canonical msgpack encoding of a delta (validated first; ManifestError if invalid)."""
    _check_delta_header(delta.base_version, delta.version)
    upserts = sorted(delta.upserts, key=lambda e: e.path)
    for entry in upserts:
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


def _decode_entry(raw: Any, params: ChunkParams, what: str) -> Entry:
    """One wire entry -> a fully checked Entry (types first, then _check_entry)."""
    if type(raw) is not list or not raw:
        raise ManifestError(f"{what} must be a non-empty array")
    kind = raw[0]
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
        chunks = tuple(
            Chunk(hashes[i * HASH_SIZE : (i + 1) * HASH_SIZE], length)
            for i, length in enumerate(lengths)
        )
        entry = FileEntry(path, size, mode, mtime_ns, chunks, digest)
    _check_entry(entry, params, what)
    return entry


def _decode_entries(raw: Any, params: ChunkParams, what: str) -> list[Entry]:
    """Decode an entry array, requiring strictly sorted paths (canonical form, and duplicates
    show up as equal neighbours)."""
    entries: list[Entry] = []
    previous: str | None = None
    for item in _expect_list(raw, None, f"{what} list"):
        entry = _decode_entry(item, params, what)
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


def _check_delta_structure(upserts: list[Entry], removed: list[str]) -> None:
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
    upserts = _decode_entries(top[5], params, "delta entry")
    removed = _expect_list(top[6], None, "delta removed list")
    for path in removed:
        _check_removed_path(path)
    _check_delta_structure(upserts, removed)
    return ManifestDelta(top[2], top[3], params, tuple(upserts), tuple(removed))
