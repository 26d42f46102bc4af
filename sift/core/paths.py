"""Path safety for every path that arrives from the network (manifest entries, chunk requests).

A path in sift is a relative POSIX path inside the synced tree, in normal form: ``a/b/c``.
``validate_path`` is the single gate; anything it accepts can be joined under the tree root
without escaping it, shows up on a terminal as what it is, and round-trips through UTF-8.

Only the *top-level* ``.sift`` directory is reserved (that is where sift keeps its own state);
``a/.sift`` is an ordinary directory name.
"""

from __future__ import annotations

import posixpath
import unicodedata

RESERVED_DIR = ".sift"

MAX_PATH_BYTES = 4096  # Linux PATH_MAX
MAX_COMPONENT_BYTES = 255  # NAME_MAX on every common Linux filesystem

# Unicode categories refused anywhere in a path: C0/C1 controls (Cc), bidi and other invisible
# format controls such as U+202E (Cf), surrogates (Cs) and line/paragraph separators (Zl, Zp).
# They let a name lie about itself on a terminal or in a log line.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

# Characters that *look* like a path separator but that NFKC leaves alone. NFKC already folds
# U+FF0F / U+FF3C / U+FE68 into ``/`` and ``\``; these need listing explicitly.
_SLASH_LOOKALIKES = frozenset(
    "\u2215"  # DIVISION SLASH
    "\u2044"  # FRACTION SLASH
    "\u29f8"  # BIG SOLIDUS
    "\u29f9"  # BIG REVERSE SOLIDUS
    "\u29f5"  # REVERSE SOLIDUS OPERATOR
    "\u2216"  # SET MINUS
    "\u27cb"  # MATHEMATICAL RISING DIAGONAL
    "\u27cd"  # MATHEMATICAL FALLING DIAGONAL
    "\u2571"  # BOX DRAWINGS LIGHT DIAGONAL UPPER RIGHT TO LOWER LEFT
    "\u2572"  # BOX DRAWINGS LIGHT DIAGONAL UPPER LEFT TO LOWER RIGHT
    "\u1735"  # PHILIPPINE SINGLE PUNCTUATION
)


class UnsafePathError(ValueError):
    """A path that must not be used inside the tree. ``.path`` holds the offending value."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"unsafe path {path!r}: {reason}")


def _component_problem(component: str) -> str | None:
    """Why one path component is unsafe, or None when it is fine."""
    if component == "":
        return "empty component (leading, trailing or doubled '/')"
    if component in (".", ".."):
        return f"{component!r} component"
    if len(component.encode("utf-8")) > MAX_COMPONENT_BYTES:
        return f"component longer than {MAX_COMPONENT_BYTES} bytes"
    if component.isascii():
        return None  # nothing below can apply to plain ASCII; keep the common case cheap
    folded = unicodedata.normalize("NFKC", component)
    if "/" in folded or "\\" in folded or any(c in _SLASH_LOOKALIKES for c in component):
        return f"component {component!r} contains a look-alike of a path separator"
    if folded in (".", ".."):
        return f"component {component!r} is a look-alike of {folded!r}"
    return None


def validate_path(path: str) -> str:
    """Return ``path`` unchanged if it is a safe relative path inside the tree, else raise
    :class:`UnsafePathError` naming the path and the first reason found."""
    if not isinstance(path, str):
        raise UnsafePathError(path, f"expected str, got {type(path).__name__}")
    if path == "":
        raise UnsafePathError(path, "empty path")
    # Printable ASCII holds no forbidden character: skip the per-character lookup, which was
    # most of the cost of checking a manifest of many small files.
    plain = path.isascii() and path.isprintable()
    for ch in () if plain else path:
        if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
            if ch == "\x00":
                raise UnsafePathError(path, "NUL character")
            # Cs (lone surrogates) lands here too: such a str cannot be encoded as UTF-8.
            raise UnsafePathError(path, f"control or invisible character U+{ord(ch):04X}")
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise UnsafePathError(path, f"longer than {MAX_PATH_BYTES} bytes")
    if path.startswith("/"):
        raise UnsafePathError(path, "absolute path")
    if "\\" in path:
        raise UnsafePathError(path, "backslash (only '/' separates components)")
    components = path.split("/")
    for component in components:
        problem = _component_problem(component)
        if problem is not None:
            raise UnsafePathError(path, problem)
    if components[0] == RESERVED_DIR:
        raise UnsafePathError(path, f"inside the reserved {RESERVED_DIR!r} directory")
    return path


def is_reserved(path: str) -> bool:
    """True for the top-level ``.sift`` directory and anything inside it."""
    return path == RESERVED_DIR or path.startswith(RESERVED_DIR + "/")


def symlink_target_is_inside(link_path: str, target: str) -> bool:
    """True when a symlink at ``link_path`` (a validated tree path) pointing at ``target``
    resolves inside the tree and outside ``.sift``.

    Beyond the lexical check (``normpath(join(dirname(link), target))`` is relative, not ``..``
    and not under ``.sift``) two stricter rules close escapes that a lexical check cannot see,
    because the kernel resolves each symlink *before* applying a following ``..``:

    * ``..`` may appear only as leading components. ``l -> a/a/a/../../..`` normalizes to ``.``,
      but if ``a`` is itself a link to ``.`` it resolves three levels above the root.
    * no component may be ``.sift``: ``l -> m/.sift/x`` looks harmless, but with ``m -> .`` it
      lands in the reserved directory.

    With those, each link resolves inside the tree by induction over the links it goes through
    (given that no entry lives under a symlink, which manifest decoding enforces).
    """
    if not isinstance(link_path, str) or not isinstance(target, str):
        return False
    if target == "" or "\x00" in target or target.startswith("/"):
        return False
    try:
        if len(target.encode("utf-8")) > MAX_PATH_BYTES:
            return False
    except UnicodeEncodeError:
        return False  # lone surrogates: not representable on the wire or on disk
    seen_name = False
    for component in target.split("/"):
        if component in ("", "."):
            continue  # lexically inert
        if component == "..":
            if seen_name:
                return False
        elif component == RESERVED_DIR:
            return False
        else:
            seen_name = True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    if resolved == ".." or resolved.startswith(("../", "/")):
        return False
    return not is_reserved(resolved)
