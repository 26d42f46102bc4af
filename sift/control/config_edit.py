"""Read and edit a daemon's config file for ``config.get`` / ``config.set``.

Edits go through tomlkit so comments, key order and formatting survive, and through the same
validation as ``sift ... start``: a value that would stop the daemon from starting is refused and
the file is left as it was. The new text replaces the file atomically (temp file + rename).
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit

from sift.config import (
    MASTER_KEYS,
    PEER_KEYS,
    ConfigError,
    ConfigKey,
    MasterConfig,
    PeerConfig,
    master_config_from_dict,
    peer_config_from_dict,
    with_psk_file,
)
from sift.control.wire import ControlError

__all__ = ["LIVE_KEYS", "ConfigChange", "describe_config", "set_config_value"]

# Keys a running daemon applies without a restart; everything else waits for the next start.
LIVE_KEYS = {
    "master": frozenset({"log_level", "rescan_interval", "debounce_ms"}),
    "peer": frozenset({"log_level"}),
}
SECRET_KEYS = frozenset({"psk"})
HIDDEN = "<hidden>"


@dataclass(frozen=True, slots=True)
class ConfigChange:
    key: str
    value: Any  # as stored in the file (None: removed)
    config: MasterConfig | PeerConfig  # the whole config after the change
    live: bool


def _keys(role: str) -> dict[str, ConfigKey]:
    return MASTER_KEYS if role == "master" else PEER_KEYS


def _require_file(path: Path | None) -> Path:
    if path is None:
        raise ControlError("unavailable", "this daemon was started without a config file")
    return path


def _read(path: Path) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ControlError("unavailable", f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # tomlkit's parse errors have no common public base
        raise ControlError("unavailable", f"{path}: TOML syntax error: {exc}") from None


def describe_config(role: str, path: Path | None) -> dict[str, Any]:
    path = _require_file(path)
    doc = _read(path).unwrap()
    keys = []
    for key in _keys(role).values():
        present = key.name in doc
        value = doc.get(key.name)
        if key.name in SECRET_KEYS and present:
            value = HIDDEN
        keys.append(
            {
                "name": key.name,
                "type": key.type,
                "value": value,
                "default": key.default,
                "set": present,
                "live": key.name in LIVE_KEYS[role],
                "required": key.required,
                "description": key.description,
            }
        )
    return {"path": str(path), "role": role, "keys": keys}


def coerce(key: ConfigKey, value: Any) -> Any:
    """A JSON value, or a string typed into a form, as the TOML value the key wants."""
    if value is None or not isinstance(value, str):
        return value
    text = value.strip()
    try:
        if key.type == "integer":
            return int(text)
        if key.type == "float":  # "60" stays an integer in the file; TOML numbers accept both
            return int(text) if text.lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise ControlError("invalid", f"{key.name}: expected {key.type}, got {value!r}") from None
    if key.type == "boolean":
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ControlError("invalid", f"{key.name}: expected true or false, got {value!r}")
    return value


def set_config_value(
    role: str, path: Path | None, key: str, value: Any, *, psk_file: str | None = None
) -> ConfigChange:
    """Validate and write one key. ``psk_file`` is the daemon's ``--psk-file``, which replaces
    the file's key at start and so must here too."""
    path = _require_file(path)
    spec = _keys(role).get(key)
    if spec is None:
        raise ControlError("invalid", f"unknown key {key!r} for a {role}")
    if key in SECRET_KEYS:
        raise ControlError("invalid", f"{key} cannot be set through the control socket")
    value = coerce(spec, value)
    if value is not None and not isinstance(value, str | int | float | bool):
        raise ControlError("invalid", f"{key}: expected a {spec.type} value")
    doc = _read(path)
    if value is None:
        if spec.required:
            raise ControlError("invalid", f"{key} is required and cannot be removed")
        doc.pop(key, None)
    else:
        doc[key] = value
    text = tomlkit.dumps(doc)
    load = master_config_from_dict if role == "master" else peer_config_from_dict
    try:
        data = with_psk_file(tomllib.loads(text), psk_file)
        config = load(data, path.parent, config_path=path)
    except ConfigError as exc:
        raise ControlError("invalid", exc.message) from None
    try:
        _replace_file(path, text)
    except OSError as exc:  # e.g. a config in the read-only Nix store
        raise ControlError("unavailable", f"cannot write {path}: {exc.strerror or exc}") from None
    return ConfigChange(key, value, config, key in LIVE_KEYS[role])


def _replace_file(path: Path, text: str) -> None:
    mode = os.stat(path).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
