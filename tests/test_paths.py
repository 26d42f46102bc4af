"""Path safety: the gate every network-supplied path goes through."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sift.core.paths import (
    MAX_COMPONENT_BYTES,
    MAX_PATH_BYTES,
    RESERVED_DIR,
    UnsafePathError,
    is_reserved,
    symlink_target_is_inside,
    validate_path,
)

NASTY = [
    "../../etc/passwd",
    "/etc/passwd",
    "/",
    "a/../../b",
    "a/..",
    "..",
    ".",
    "./a",
    "a/./b",
    "a//b",
    "a/",
    "",
    "a\\b",
    "..\\x",
    "\\",
    ".sift",
    ".sift/x",
    ".sift/objects/ab",
    "a\x00b",
    "\x00",
    "a\nb",
    "a\rb",
    "a\tb",
    "a\x1bb",  # ESC: terminal escape sequences
    "a\x7fb",  # DEL
    "a\x85b",  # C1 NEL
    "\u202eabc",  # RIGHT-TO-LEFT OVERRIDE
    "a\u200bb",  # ZERO WIDTH SPACE (Cf)
    "a\ufeffb",  # BOM (Cf)
    "a\u2028b",  # LINE SEPARATOR
    "\uff0e\uff0e/x",  # fullwidth '..'
    "\uff0e/x",  # fullwidth '.'
    "\u2025/x",  # TWO DOT LEADER
    "\u2024\u2024/x",  # ONE DOT LEADER x2
    "a/\ufe52\ufe52",  # SMALL FULL STOP x2
    "a\u2215..\u2215b",  # DIVISION SLASH
    "a\u2044b",  # FRACTION SLASH
    "a\uff0fb",  # FULLWIDTH SOLIDUS
    "a\uff3cb",  # FULLWIDTH REVERSE SOLIDUS
    "a\ufe68b",  # SMALL REVERSE SOLIDUS
    "a\ud800b",  # lone surrogate
    "\udcff",  # surrogateescape'd byte
    "x" * (MAX_COMPONENT_BYTES + 1),
    "a/" + "é" * (MAX_COMPONENT_BYTES // 2 + 1),  # 256 bytes in UTF-8, 128 characters
    "/".join(["d" * 200] * 21),  # 4220 bytes
]


@pytest.mark.parametrize("path", NASTY)
def test_nasty_paths_rejected(path: str) -> None:
    with pytest.raises(UnsafePathError) as info:
        validate_path(path)
    assert info.value.path == path
    message = str(info.value)
    assert message.startswith(f"unsafe path {path!r}: ")
    assert "\n" not in message


@pytest.mark.parametrize("value", [None, b"a", 1, ["a"], pytest.param(bytearray(b"a"), id="ba")])
def test_non_str_rejected(value: object) -> None:
    with pytest.raises(UnsafePathError, match="expected str"):
        validate_path(value)  # type: ignore[arg-type]


def test_error_message_names_path_and_reason() -> None:
    with pytest.raises(UnsafePathError) as info:
        validate_path("../../etc/passwd")
    assert str(info.value) == "unsafe path '../../etc/passwd': '..' component"
    assert isinstance(info.value, ValueError)


LEGIT = [
    "a",
    "a/b.c",
    "a/b/c/d/e",
    ".hidden",
    "a/.hidden",
    "a/.sift",  # only the top-level .sift is reserved
    "a/.sift/x",
    ".sifty",
    "sift",
    "données/µm.csv",
    "日本/データ.h5",
    "...",
    "a/...",
    "a..b",
    "..a",
    "a..",
    "a b/c d",
    "a\u2026",  # HORIZONTAL ELLIPSIS: NFKC '...', a legal name
    "Ωmega/ñ/ß",
    "emoji-\U0001f600",
    "x" * MAX_COMPONENT_BYTES,
    "/".join(["d" * 200] * 20),  # 4019 bytes
]


@pytest.mark.parametrize("path", LEGIT)
def test_legit_paths_accepted(path: str) -> None:
    assert validate_path(path) is path


def test_max_total_length_boundary() -> None:
    exact = "/".join(["d" * 240] * 17)  # 17 * 240 + 16 = 4096 bytes
    assert len(exact.encode()) == MAX_PATH_BYTES
    assert validate_path(exact) == exact
    with pytest.raises(UnsafePathError, match="longer than"):
        validate_path(exact + "x")


def test_reserved() -> None:
    assert RESERVED_DIR == ".sift"
    assert is_reserved(".sift")
    assert is_reserved(".sift/x/y")
    assert not is_reserved(".sifty")
    assert not is_reserved("a/.sift")
    assert not is_reserved("sift")


_NAME_CHARS = st.sampled_from(list("ab.z/\\\x00\n \xe9\uff0e\u2025\u2215\u202e"))


@given(st.text(_NAME_CHARS, max_size=12))
def test_accepted_paths_are_normal_relative(path: str) -> None:
    try:
        validate_path(path)
    except UnsafePathError:
        return
    assert path
    assert not path.startswith("/")
    assert ".." not in path.split("/")
    assert "." not in path.split("/")
    assert posixpath.normpath(path) == path
    assert not is_reserved(path)


@given(st.text(max_size=30))
def test_arbitrary_text_only_raises_unsafe_path_error(path: str) -> None:
    try:
        assert validate_path(path) == path
    except UnsafePathError:
        return
    path.encode("utf-8")  # anything accepted is encodable
    assert posixpath.normpath(path) == path


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("l", "a"),
        ("l", "a/b"),
        ("a/l", "b"),
        ("a/l", "../b"),
        ("a/b/l", "../../c"),
        ("a/l", ".."),  # the tree root itself
        ("l", "."),
        ("l", "./a"),
        ("l", "a//b"),
        ("l", "dir/"),
        ("l", "données"),
    ],
)
def test_symlink_inside(link: str, target: str) -> None:
    assert symlink_target_is_inside(link, target)


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("l", ""),
        ("l", "/etc/passwd"),
        ("l", ".."),
        ("l", "../x"),
        ("a/l", "../.."),
        ("a/l", "../../x"),
        ("a/b/l", "../../../x"),
        ("l", "a/../.."),
        ("l", "a\x00b"),
        ("l", ".sift"),
        ("l", ".sift/objects"),
        ("a/l", "../.sift"),
        ("l", "./.sift"),
        # Lexically inside, but escape once intermediate links resolve (see the docstring):
        ("l", "a/a/a/../../.."),
        ("l", "a/../b"),
        ("l", "m/.sift/x"),
        ("a/l", "../a/.sift"),  # even a nested .sift: cannot tell whether a hop leads to root
        ("l", "\udcff"),
        ("l", "x" * (MAX_PATH_BYTES + 1)),
    ],
)
def test_symlink_outside(link: str, target: str) -> None:
    assert not symlink_target_is_inside(link, target)


def test_symlink_non_str() -> None:
    assert not symlink_target_is_inside("l", b"a")  # type: ignore[arg-type]
