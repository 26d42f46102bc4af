"""The headless package never pulls in textual, and layers only import downward.

Layers (BRIEF "Shape"): cli -> master|peer -> net -> protocol -> core. A module may import from its
own layer and any layer below it; an upward import would tangle the design, so it fails here.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import sift

SIFT_DIR = Path(sift.__file__).parent

# Lower number = lower layer. Packages not listed (events, metrics, config, state, control) sit
# between core and the daemons: they may import core, and the daemons may import them.
LAYER = {
    "core": 0,
    "protocol": 1,
    "state": 1,
    "config": 1,
    "events": 1,
    "metrics": 1,
    "chunk_helper": 1,
    "chunk_pool": 2,
    "scanner": 2,
    "chunk_reader": 2,
    "net": 2,
    "control": 3,
    "master": 4,
    "peer": 4,
    "status": 5,
    "demo": 6,
    "__main__": 7,
    "cli": 7,
}


def all_sift_modules() -> list[str]:
    names = ["sift"]
    for info in pkgutil.walk_packages([str(SIFT_DIR)], prefix="sift."):
        names.append(info.name)
    return sorted(names)


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "sift":
        return None
    return LAYER.get(parts[1])


def test_importing_every_sift_module_never_imports_textual():
    # __main__ runs the CLI when imported; its imports are checked by the layering test.
    modules = [m for m in all_sift_modules() if not m.endswith("__main__")]
    assert "sift.core.chunk" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"textual imported by sift: {result.stdout.strip()}"


def imported_modules(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
    return found


@pytest.mark.parametrize("module", all_sift_modules())
def test_layers_only_import_downward(module: str):
    rel = module.split(".")[1:]
    path = SIFT_DIR.joinpath(*rel)
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    own = layer_of(module)
    for target in imported_modules(path, module):
        if target.split(".")[0] in {"textual", "sift_tui"}:
            pytest.fail(f"{module} imports {target}: the headless package must not")
        theirs = layer_of(target)
        if own is None or theirs is None:
            continue
        assert theirs <= own, f"{module} (layer {own}) imports {target} (layer {theirs})"
