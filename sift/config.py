"""Typed configuration for the master and peer daemons.

Config files are TOML, read with :mod:`tomllib`. Every problem becomes one :class:`ConfigError`
whose message is a single line naming the file and the key, so an operator reading a systemd
journal knows exactly what to fix. :data:`CONFIG_KEYS` describes every key once; ``docs/config.md``
embeds the tables rendered from it (``python -m sift.config``) and a test keeps the two in step.
"""

from __future__ import annotations

import datetime as dt
import difflib
import grp
import os
import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

from sift.core.chunk import DEFAULT_PARAMS, ChunkParams
from sift.core.private_file import readable_by_others

__all__ = [
    "CONFIG_KEYS",
    "MASTER_KEYS",
    "PEER_KEYS",
    "Address",
    "ConfigError",
    "ConfigKey",
    "MasterConfig",
    "PeerConfig",
    "Role",
    "control_socket_of",
    "load_master_config",
    "load_peer_config",
    "master_config_from_dict",
    "peer_config_from_dict",
    "render_docs_block",
    "render_key_table",
]

Role = Literal["master", "peer"]

KiB = 1024
MiB = 1024 * KiB

DEFAULT_MASTER_PORT = 7777
DEFAULT_PEER_PORT = 7778
DEFAULT_RESCAN_INTERVAL = 300.0
DEFAULT_DEBOUNCE_MS = 200
DEFAULT_MAX_FRAME_SIZE = 64 * MiB
DEFAULT_LOG_LEVEL = "info"
LOG_LEVELS = ("debug", "info", "warning", "error")
# Below this a frame cannot carry a useful batch of chunks; the check catches unit mistakes
# ("64" meaning MiB).
MIN_FRAME_SIZE = 64 * KiB
# Room for the frame header and the message envelope around one chunk's bytes.
FRAME_OVERHEAD = 4 * KiB


class ConfigError(ValueError):
    """A config problem, as one line: ``<file>: <key>: <what is wrong>``.

    ``path`` is the config file (None when the config came from a dict) and ``key`` the offending
    key (None for whole-file problems such as a TOML syntax error).
    """

    def __init__(self, message: str, *, path: Path | None = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        self.message = message
        super().__init__(f"{path}: {message}" if path is not None else message)


# --------------------------------------------------------------------------------------------------
# Addresses


class Address(NamedTuple):
    """A TCP endpoint. A tuple, so ``asyncio.open_connection(*addr)`` works; ``str()`` gives back
    ``host:port`` (``[v6]:port`` for IPv6 literals) and round-trips through :meth:`parse`."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, allow_port_zero: bool = False) -> Address:
        """Parse ``host:port`` or ``[v6addr]:port``.

        Raises ValueError with a one-line message. Port 0 ("any free port") is only meaningful for
        an address we bind, so callers must ask for it.
        """
        malformed = f"malformed address {text!r} (expected HOST:PORT)"
        if not isinstance(text, str) or text != text.strip() or not text:
            raise ValueError(malformed)
        if text.startswith("["):
            close = text.find("]")
            if close < 0 or text[close + 1 : close + 2] != ":":
                raise ValueError(malformed)
            host, port_text = text[1:close], text[close + 2 :]
            if ":" not in host:  # brackets are only for IPv6 literals
                raise ValueError(malformed)
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ValueError(malformed)
            if ":" in host:
                raise ValueError(
                    f"malformed address {text!r} (write IPv6 addresses as [ADDR]:PORT)"
                )
        if not host or any(c.isspace() for c in host):
            raise ValueError(malformed)
        if not port_text.isascii() or not port_text.isdigit():
            raise ValueError(malformed)
        port = int(port_text)
        lowest = 0 if allow_port_zero else 1
        if not lowest <= port <= 65535:
            raise ValueError(f"port {port} out of range in {text!r} (expected {lowest}..65535)")
        return cls(host, port)

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


DEFAULT_MASTER_BIND = Address("0.0.0.0", DEFAULT_MASTER_PORT)
DEFAULT_PEER_BIND = Address("0.0.0.0", DEFAULT_PEER_PORT)


# --------------------------------------------------------------------------------------------------
# Config objects


@dataclass(frozen=True, slots=True)
class MasterConfig:
    """Everything the master daemon needs, validated and with defaults filled in."""

    watched_dir: Path
    psk: bytes
    state_dir: Path
    control_socket: Path
    bind_addr: Address = DEFAULT_MASTER_BIND
    params: ChunkParams = DEFAULT_PARAMS
    rescan_interval: float = DEFAULT_RESCAN_INTERVAL
    debounce_ms: int = DEFAULT_DEBOUNCE_MS
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    log_level: str = DEFAULT_LOG_LEVEL
    control_group: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    config_path: Path | None = None
    psk_file_override: str | None = None  # --psk-file, which config.set must apply too

    def __repr__(self) -> str:  # never print the key into a log
        return (
            f"MasterConfig(watched_dir={self.watched_dir!r}, bind_addr={self.bind_addr!s}, "
            f"state_dir={self.state_dir!r}, params={self.params!r}, psk=<{len(self.psk)} bytes>)"
        )


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """Everything the peer daemon needs, validated and with defaults filled in."""

    master_addr: Address
    psk: bytes
    local_dir: Path
    state_dir: Path
    control_socket: Path
    bind_addr: Address = DEFAULT_PEER_BIND
    advertise_addr: Address | None = None
    adopt: bool = False
    update_in_place: bool = False
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    log_level: str = DEFAULT_LOG_LEVEL
    control_group: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    config_path: Path | None = None
    psk_file_override: str | None = None  # --psk-file, which config.set must apply too

    def __repr__(self) -> str:  # never print the key into a log
        return (
            f"PeerConfig(master_addr={self.master_addr!s}, local_dir={self.local_dir!r}, "
            f"bind_addr={self.bind_addr!s}, state_dir={self.state_dir!r}, "
            f"psk=<{len(self.psk)} bytes>)"
        )


# --------------------------------------------------------------------------------------------------
# The key table: the one description of every key, mirrored by docs/config.md.


@dataclass(frozen=True, slots=True)
class ConfigKey:
    """One config key as documented: ``type`` is the TOML-facing type, ``default`` the documented
    default (empty when ``required``), ``example`` a TOML value."""

    role: Role
    name: str
    type: str
    required: bool
    default: str
    description: str
    example: str


_PSK_DESC = "Pre-shared key, identical on the master and every peer. Never sent over the wire."
_PSK_FILE_DESC = (
    "File holding the pre-shared key (trailing newline ignored). Must not be readable by group "
    "or others. Exactly one of `psk` and `psk_file` is required."
)
_FRAME_DESC = "Largest protocol frame accepted or sent, in bytes."
_GROUP_DESC = (
    "Group whose members may also use the control socket: the socket becomes mode 0660 with "
    "this group. Unset: only the daemon's user and root."
)
_LOG_DESC = (
    "Log verbosity on stderr: `debug`, `info`, `warning` or `error`. `sift --log-level` "
    "overrides it; a change through the control socket applies at once."
)
_TLS_CERT_DESC = (
    "PEM certificate (chain) of this node. With `tls_key` it turns TLS 1.3 on for this node's "
    "listener and its outgoing connections; every node of a cluster must have TLS on, or none. "
    "See docs/security.md."
)
_TLS_KEY_DESC = "PEM private key for `tls_cert`. Must not be readable by group or others."
_TLS_CA_DESC = (
    "PEM CA certificate(s). Set: the certificates of the nodes this one dials must verify "
    "against it, and its listener requires client certificates that do (mutual TLS). "
    "Unset: certificates are not checked; the TLS-bound key proof still stops relays. "
    "Needs `tls_cert` and `tls_key`."
)

CONFIG_KEYS: tuple[ConfigKey, ...] = (
    # master
    ConfigKey(
        "master", "watched_dir", "path", True, "",
        "Directory to publish. Must exist and be readable; may be read-only.",
        '"/data/science"',
    ),
    ConfigKey(
        "master", "bind_addr", "address", False, "0.0.0.0:7777",
        "TCP address peers connect to. Port 0 picks a free port.",
        '"0.0.0.0:7777"',
    ),
    ConfigKey("master", "psk", "string", False, "", _PSK_DESC, '"change-me"'),
    ConfigKey("master", "psk_file", "path", False, "", _PSK_FILE_DESC, '"/run/secrets/sift-psk"'),
    ConfigKey(
        "master", "state_dir", "path", False,
        "$XDG_STATE_HOME/sift/master (or ~/.local/state/sift/master)",
        "Where the scan cache and manifest history (SQLite) live. Not inside `watched_dir` "
        "(except under its `.sift/`).",
        '"/var/lib/sift/lab"',
    ),
    ConfigKey(
        "master", "control_socket", "path", False, "<state_dir>/control.sock",
        "Unix socket (mode 0600) for `sift status --control` and `sift-tui`.",
        '"/run/sift/lab.sock"',
    ),
    ConfigKey("master", "control_group", "string", False, "", _GROUP_DESC, '"sift-operators"'),
    ConfigKey(
        "master", "chunk_min_size", "integer", False, "65536",
        "FastCDC minimum chunk size in bytes.", "65536",
    ),
    ConfigKey(
        "master", "chunk_avg_size", "integer", False, "262144",
        "FastCDC average chunk size in bytes. Changing any chunk size rehashes every file once.",
        "262144",
    ),
    ConfigKey(
        "master", "chunk_max_size", "integer", False, "1048576",
        "FastCDC maximum chunk size in bytes.", "1048576",
    ),
    ConfigKey(
        "master", "rescan_interval", "float", False, "300",
        "Seconds between full rescans that catch changes the file watcher missed. 0 disables.",
        "300",
    ),
    ConfigKey(
        "master", "debounce_ms", "integer", False, "200",
        "Milliseconds to wait for file events to settle before rehashing.", "200",
    ),
    ConfigKey(
        "master", "max_frame_size", "integer", False, "67108864",
        _FRAME_DESC + " Must exceed `chunk_max_size`.", "67108864",
    ),
    ConfigKey("master", "log_level", "string", False, "info", _LOG_DESC, '"info"'),
    ConfigKey("master", "tls_cert", "path", False, "", _TLS_CERT_DESC, '"/etc/sift/master.crt"'),
    ConfigKey("master", "tls_key", "path", False, "", _TLS_KEY_DESC, '"/etc/sift/master.key"'),
    ConfigKey("master", "tls_ca", "path", False, "", _TLS_CA_DESC, '"/etc/sift/ca.crt"'),
    # peer
    ConfigKey(
        "peer", "master_addr", "address", True, "",
        "Where the master listens (HOST:PORT).", '"master.example.com:7777"',
    ),
    ConfigKey("peer", "psk", "string", False, "", _PSK_DESC, '"change-me"'),
    ConfigKey("peer", "psk_file", "path", False, "", _PSK_FILE_DESC, '"/run/secrets/sift-psk"'),
    ConfigKey(
        "peer", "local_dir", "path", True, "",
        "Where synced files are written. Its parent must exist; sift creates the directory. "
        "`local_dir/.sift/` is reserved for sift.",
        '"/data/local"',
    ),
    ConfigKey(
        "peer", "bind_addr", "address", False, "0.0.0.0:7778",
        "TCP address other peers connect to for chunks. Port 0 picks a free port.",
        '"0.0.0.0:7778"',
    ),
    ConfigKey(
        "peer", "advertise_addr", "address", False, "",
        "Address other peers should dial to reach this one, when it differs from what the "
        "master sees (NAT, wildcard `bind_addr`). Unset: the master uses the address this peer "
        "connects from, with the `bind_addr` port.",
        '"10.0.0.2:7778"',
    ),
    ConfigKey(
        "peer", "state_dir", "path", False, "<local_dir>/.sift/state",
        "Where the local index (SQLite) lives. Inside `local_dir` only under `.sift/`.",
        '"/var/lib/sift/edge1"',
    ),
    ConfigKey(
        "peer", "control_socket", "path", False, "<state_dir>/control.sock",
        "Unix socket (mode 0600) for `sift status --control` and `sift-tui`.",
        '"/run/sift/edge1.sock"',
    ),
    ConfigKey("peer", "control_group", "string", False, "", _GROUP_DESC, '"sift-operators"'),
    ConfigKey(
        "peer", "adopt", "boolean", False, "false",
        "Allow starting in a non-empty `local_dir` that sift has not synced before. Existing "
        "files are reused as chunk sources, then overwritten or deleted to match the master.",
        "true",
    ),
    ConfigKey(
        "peer", "update_in_place", "boolean", False, "false",
        "Patch a large changed file (1 MiB or more, same size, at most half of it changed) where "
        "it stands instead of rebuilding it, on filesystems that cannot reflink (ext4): a small "
        "edit then writes only the changed chunks, not the whole file. Crash-safe through a "
        "journal in `.sift/tmp`, but a program reading the file during the patch may see old "
        "and new chunks mixed, so it is off by default. See docs/operations.md.",
        "true",
    ),
    ConfigKey(
        "peer", "max_frame_size", "integer", False, "67108864",
        _FRAME_DESC + " Must exceed the master's `chunk_max_size`.", "67108864",
    ),
    ConfigKey("peer", "log_level", "string", False, "info", _LOG_DESC, '"info"'),
    ConfigKey("peer", "tls_cert", "path", False, "", _TLS_CERT_DESC, '"/etc/sift/edge1.crt"'),
    ConfigKey("peer", "tls_key", "path", False, "", _TLS_KEY_DESC, '"/etc/sift/edge1.key"'),
    ConfigKey("peer", "tls_ca", "path", False, "", _TLS_CA_DESC, '"/etc/sift/ca.crt"'),
)  # fmt: skip

MASTER_KEYS: dict[str, ConfigKey] = {k.name: k for k in CONFIG_KEYS if k.role == "master"}
PEER_KEYS: dict[str, ConfigKey] = {k.name: k for k in CONFIG_KEYS if k.role == "peer"}
_KEYS_BY_ROLE: dict[str, dict[str, ConfigKey]] = {"master": MASTER_KEYS, "peer": PEER_KEYS}


def render_key_table(role: Role) -> str:
    """The Markdown table of ``role``'s keys that docs/config.md embeds verbatim."""
    lines = [
        "| key | type | default | meaning | example |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in _KEYS_BY_ROLE[role].values():
        if key.name in ("psk", "psk_file"):
            default = "one of `psk`/`psk_file` **required**"
        elif key.required:
            default = "**required**"
        else:
            default = f"`{key.default}`" if key.default else "unset"
        lines.append(
            f"| `{key.name}` | {key.type} | {default} | {key.description} | "
            f"`{key.name} = {key.example}` |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Loading


def load_master_config(
    path: str | os.PathLike[str], *, psk_file: str | os.PathLike[str] | None = None
) -> MasterConfig:
    """Read and validate a master config file. ``psk_file`` (``--psk-file``) replaces the
    file's ``psk``/``psk_file``."""
    config_path, data = _read_toml(path)
    data = with_psk_file(data, psk_file)
    config = master_config_from_dict(data, config_path.parent, config_path=config_path)
    return replace(config, psk_file_override=data.get("psk_file") if psk_file else None)


def load_peer_config(
    path: str | os.PathLike[str], *, psk_file: str | os.PathLike[str] | None = None
) -> PeerConfig:
    """Read and validate a peer config file. ``psk_file`` (``--psk-file``) replaces the file's
    ``psk``/``psk_file``."""
    config_path, data = _read_toml(path)
    data = with_psk_file(data, psk_file)
    config = peer_config_from_dict(data, config_path.parent, config_path=config_path)
    return replace(config, psk_file_override=data.get("psk_file") if psk_file else None)


def control_socket_of(path: str | os.PathLike[str]) -> Path:
    """Where the daemon configured by ``path`` puts its control socket, read without checking
    the rest of the file: a console or script only needs the socket, and may not be allowed to
    read the key (a NixOS config has none at all)."""
    config_path, data = _read_toml(path)
    role: Role = "master" if "watched_dir" in data else "peer"
    r = _Reader(data, role, config_path.parent, config_path)
    socket = r.path("control_socket")
    if socket is not None:
        return socket
    state_dir = r.path("state_dir")
    if state_dir is None:
        state_dir = (
            _default_master_state_dir(None)
            if role == "master"
            else r.required_path("local_dir") / ".sift" / "state"
        )
    return state_dir / "control.sock"


def with_psk_file(data: dict[str, Any], psk_file: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The key file named on the command line wins over the config's key: a service manager
    hands the daemon its key at start (systemd's ``--psk-file %d/psk``) while the config file
    itself stays free of secrets and world-readable."""
    if psk_file is None:
        return data
    rest = {k: v for k, v in data.items() if k not in ("psk", "psk_file")}
    # Absolute: a relative --psk-file means the current directory, not the config's.
    return {**rest, "psk_file": os.path.abspath(os.fspath(psk_file))}


def master_config_from_dict(
    data: Mapping[str, Any],
    base_dir: str | os.PathLike[str],
    *,
    config_path: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> MasterConfig:
    """Validate a parsed master config. Relative paths resolve against ``base_dir``; ``env``
    (default ``os.environ``) supplies ``XDG_STATE_HOME`` for the default ``state_dir``."""
    r = _Reader(data, "master", base_dir, config_path)
    watched_dir = r.required_path("watched_dir")
    _check_watched_dir(r, watched_dir)
    bind_addr = r.address("bind_addr", allow_port_zero=True) or DEFAULT_MASTER_BIND
    psk = r.psk()
    state_dir = r.path("state_dir") or _default_master_state_dir(env)
    _check_not_published(r, "state_dir", state_dir, watched_dir, "watched_dir")
    control_socket = r.path("control_socket") or state_dir / "control.sock"
    _check_not_published(r, "control_socket", control_socket, watched_dir, "watched_dir")
    params = r.params()
    rescan_interval = r.number("rescan_interval", DEFAULT_RESCAN_INTERVAL)
    debounce_ms = r.integer("debounce_ms", DEFAULT_DEBOUNCE_MS, minimum=0)
    max_frame_size = r.integer("max_frame_size", DEFAULT_MAX_FRAME_SIZE, minimum=MIN_FRAME_SIZE)
    if max_frame_size < params.max_size + FRAME_OVERHEAD:
        raise r.error(
            "max_frame_size",
            f"max_frame_size: {max_frame_size} is too small for chunk_max_size "
            f"{params.max_size} (need at least {params.max_size + FRAME_OVERHEAD})",
        )
    return MasterConfig(
        watched_dir=watched_dir,
        psk=psk,
        state_dir=state_dir,
        control_socket=control_socket,
        bind_addr=bind_addr,
        params=params,
        rescan_interval=rescan_interval,
        debounce_ms=debounce_ms,
        max_frame_size=max_frame_size,
        **r.common(),
        config_path=config_path,
    )


def peer_config_from_dict(
    data: Mapping[str, Any],
    base_dir: str | os.PathLike[str],
    *,
    config_path: Path | None = None,
) -> PeerConfig:
    """Validate a parsed peer config. Relative paths resolve against ``base_dir``."""
    r = _Reader(data, "peer", base_dir, config_path)
    master_addr = r.required_address("master_addr")
    psk = r.psk()
    local_dir = r.required_path("local_dir")
    _check_local_dir(r, local_dir)
    bind_addr = r.address("bind_addr", allow_port_zero=True) or DEFAULT_PEER_BIND
    advertise_addr = r.address("advertise_addr")
    state_dir = r.path("state_dir") or local_dir / ".sift" / "state"
    # Anything else inside local_dir is fair game for deletion when it is not in the manifest.
    _check_not_published(r, "state_dir", state_dir, local_dir, "local_dir")
    control_socket = r.path("control_socket") or state_dir / "control.sock"
    _check_not_published(r, "control_socket", control_socket, local_dir, "local_dir")
    adopt = r.boolean("adopt", False)
    update_in_place = r.boolean("update_in_place", False)
    max_frame_size = r.integer("max_frame_size", DEFAULT_MAX_FRAME_SIZE, minimum=MIN_FRAME_SIZE)
    return PeerConfig(
        master_addr=master_addr,
        psk=psk,
        local_dir=local_dir,
        state_dir=state_dir,
        control_socket=control_socket,
        bind_addr=bind_addr,
        advertise_addr=advertise_addr,
        adopt=adopt,
        update_in_place=update_in_place,
        max_frame_size=max_frame_size,
        **r.common(),
        config_path=config_path,
    )


def _read_toml(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    config_path = Path(os.path.abspath(Path(path).expanduser()))
    try:
        with config_path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config file not found", path=config_path) from None
    except IsADirectoryError:
        raise ConfigError("config file is a directory", path=config_path) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror}", path=config_path) from None
    except tomllib.TOMLDecodeError as e:
        # tomllib reports "<what> (at line L, column C)" on one line.
        raise ConfigError(f"TOML syntax error: {e}", path=config_path) from None
    except UnicodeDecodeError:
        raise ConfigError("TOML syntax error: file is not UTF-8", path=config_path) from None
    return config_path, data


def _toml_type_name(value: object) -> str:
    """How a TOML value's type is called in error messages."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "boolean"
    for py, name in (
        (str, "string"),
        (int, "integer"),
        (float, "float"),
        (list, "array"),
        (dict, "table"),
        (dt.datetime, "datetime"),
        (dt.date, "date"),
        (dt.time, "time"),
    ):
        if isinstance(value, py):
            return name
    return type(value).__name__


class _Reader:
    """Typed access to one config dict, turning every problem into a one-line ConfigError."""

    def __init__(
        self,
        data: Mapping[str, Any],
        role: Role,
        base_dir: str | os.PathLike[str],
        config_path: Path | None,
    ) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError("config must be a table of keys", path=config_path)
        self.data = data
        self.role = role
        self.base_dir = Path(os.path.abspath(Path(base_dir).expanduser()))
        self.config_path = config_path
        self._check_unknown_keys()

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(message, path=self.config_path, key=key)

    def _check_unknown_keys(self) -> None:
        known = _KEYS_BY_ROLE[self.role]
        for key in self.data:
            if key in known:
                continue
            other = "peer" if self.role == "master" else "master"
            if key in _KEYS_BY_ROLE[other]:
                raise self.error(
                    key,
                    f"unknown key {key!r} ({key!r} is a {other} setting, not a {self.role} one)",
                )
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.error(key, f"unknown key {key!r}{hint}")

    def _get(self, key: str, expected: str, types: tuple[type, ...]) -> Any:
        value = self.data.get(key)
        if value is None:
            return None
        # bool is an int subclass; TOML true is never an integer here.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise self.error(key, f"{key}: expected {expected}, got {_toml_type_name(value)}")
        return value

    def missing(self, key: str) -> ConfigError:
        return self.error(key, f"missing required key {key!r}")

    def string(self, key: str) -> str | None:
        value = self._get(key, "a string", (str,))
        if value is not None and not value:
            raise self.error(key, f"{key}: must not be empty")
        return value

    def required_path(self, key: str) -> Path:
        path = self.path(key)
        if path is None:
            raise self.missing(key)
        return path

    def path(self, key: str) -> Path | None:
        text = self.string(key)
        if text is None:
            return None
        if "\0" in text:
            raise self.error(key, f"{key}: path contains a NUL character")
        # Lexically normalized ("a/../b" -> "b") so messages and comparisons see one spelling.
        return Path(os.path.normpath(self.base_dir / Path(text).expanduser()))

    def required_address(self, key: str) -> Address:
        addr = self.address(key)
        if addr is None:
            raise self.missing(key)
        return addr

    def address(self, key: str, *, allow_port_zero: bool = False) -> Address | None:
        text = self.string(key)
        if text is None:
            return None
        try:
            return Address.parse(text, allow_port_zero=allow_port_zero)
        except ValueError as e:
            raise self.error(key, f"{key}: {e}") from None

    def integer(self, key: str, default: int, *, minimum: int | None = None) -> int:
        value = self._get(key, "an integer", (int,))
        if value is None:
            return default
        if minimum is not None and value < minimum:
            raise self.error(key, f"{key}: must be >= {minimum}, got {value}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self._get(key, "a number", (int, float))
        if value is None:
            return default
        value = float(value)
        if not value >= 0 or value == float("inf"):  # also rejects nan
            raise self.error(key, f"{key}: must be a finite number >= 0, got {value:g}")
        return value

    def common(self) -> dict[str, Any]:
        """The keys masters and peers share: logging, control socket access, TLS."""
        tls_cert, tls_key, tls_ca = self.tls_files()
        return {
            "log_level": self.choice("log_level", LOG_LEVELS, DEFAULT_LOG_LEVEL),
            "control_group": self.group("control_group"),
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "tls_ca": tls_ca,
        }

    def group(self, key: str) -> str | None:
        name = self.string(key)
        if name is not None:
            try:
                grp.getgrnam(name)
            except KeyError:
                raise self.error(key, f"{key}: no such group {name!r}") from None
        return name

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(key)
        if value is None:
            return default
        if value not in choices:
            raise self.error(key, f"{key}: expected one of {', '.join(choices)}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, "a boolean", (bool,))
        return default if value is None else value

    def params(self) -> ChunkParams:
        sizes = {
            field: self.integer(f"chunk_{field}", getattr(DEFAULT_PARAMS, field))
            for field in ("min_size", "avg_size", "max_size")
        }
        try:
            return ChunkParams(**sizes)
        except ValueError as e:
            msg = str(e)
            # Name the key the message is about; the ordering error concerns all three.
            keys = [f"chunk_{f}" for f in sizes if f"chunk {f} " in msg]
            key = keys[0] if keys else "chunk_min_size/chunk_avg_size/chunk_max_size"
            raise self.error(key, f"{key}: {msg}") from None

    def psk(self) -> bytes:
        has_psk = self.data.get("psk") is not None
        has_file = self.data.get("psk_file") is not None
        if has_psk and has_file:
            raise self.error("psk", "both 'psk' and 'psk_file' are set (use one)")
        if has_psk:
            return (self.string("psk") or "").encode("utf-8")
        if not has_file:
            raise self.error("psk", "missing required key 'psk' or 'psk_file'")
        return self._read_psk_file(self.required_path("psk_file"))

    def tls_files(self) -> tuple[Path | None, Path | None, Path | None]:
        """``tls_cert``, ``tls_key``, ``tls_ca``: checked to exist and be readable, the key
        private to its owner. The certificates themselves are parsed by sift.net.tls."""
        cert, key, ca = self.path("tls_cert"), self.path("tls_key"), self.path("tls_ca")
        if (cert is None) != (key is None):
            have, need = ("tls_cert", "tls_key") if key is None else ("tls_key", "tls_cert")
            raise self.error(need, f"{have} is set but {need} is not (TLS needs both)")
        if ca is not None and cert is None:
            raise self.error(
                "tls_ca", "tls_ca is set but tls_cert and tls_key are not (TLS needs both)"
            )
        for name, path in (("tls_cert", cert), ("tls_key", key), ("tls_ca", ca)):
            if path is not None:
                self._check_readable_file(name, path, private=name == "tls_key")
        return cert, key, ca

    def _check_readable_file(self, key: str, path: Path, *, private: bool) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise self.error(key, f"{key} '{path}' cannot be read: {e.strerror}") from None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise self.error(key, f"{key} '{path}' is not a regular file")
        if private and st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
            raise self.error(key, f"{key} '{path}' is readable by other users (chmod 600 it)")

    def _read_psk_file(self, path: Path) -> bytes:
        try:
            # O_NONBLOCK: a FIFO given by mistake must not hang the daemon at startup.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise self.error(
                "psk_file", f"psk_file '{path}' cannot be read: {e.strerror}"
            ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self.error("psk_file", f"psk_file '{path}' is not a regular file")
            # A key others can read is a key others have: refuse rather than warn. ACL-aware, so
            # a systemd credential (0400 plus a read entry for this user) passes.
            if readable_by_others(fd, st):
                raise self.error(
                    "psk_file", f"psk_file '{path}' is readable by other users (chmod 600 it)"
                )
            with os.fdopen(fd, "rb", closefd=False) as f:
                content = f.read()
        except OSError as e:
            raise self.error(
                "psk_file", f"psk_file '{path}' cannot be read: {e.strerror}"
            ) from None
        finally:
            os.close(fd)
        key = content.rstrip(b"\r\n")
        if not key:
            raise self.error("psk_file", f"psk_file '{path}' is empty")
        return key


def _default_master_state_dir(env: Mapping[str, str] | None) -> Path:
    env = os.environ if env is None else env
    xdg = env.get("XDG_STATE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "sift" / "master"


def _check_watched_dir(r: _Reader, path: Path) -> None:
    if not path.exists():
        raise r.error("watched_dir", f"watched_dir '{path}' does not exist")
    if not path.is_dir():
        raise r.error("watched_dir", f"watched_dir '{path}' is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise r.error("watched_dir", f"watched_dir '{path}' is not readable")


def _check_local_dir(r: _Reader, path: Path) -> None:
    if path.exists():
        if not path.is_dir():
            raise r.error("local_dir", f"local_dir '{path}' exists and is not a directory")
        return
    if not path.parent.is_dir():
        raise r.error(
            "local_dir", f"local_dir '{path}': parent directory '{path.parent}' does not exist"
        )


def _check_not_published(r: _Reader, key: str, path: Path, tree: Path, tree_key: str) -> None:
    """``path`` may live inside ``tree`` only under ``tree/.sift/``, which sift never publishes
    (master) nor deletes (peer)."""
    p, t = Path(os.path.normpath(path)), Path(os.path.normpath(tree))
    if p == t:
        raise r.error(key, f"{key} '{path}' must not be {tree_key} itself")
    if p.is_relative_to(t) and not p.is_relative_to(t / ".sift"):
        raise r.error(
            key, f"{key} '{path}' is inside {tree_key}; put it elsewhere or under '{t / '.sift'}'"
        )


def render_docs_block(role: Role) -> str:
    """:func:`render_key_table` between the markers that delimit it in docs/config.md."""
    return (
        f"<!-- keys:{role} (generated by python -m sift.config; edit CONFIG_KEYS in "
        f"sift/config.py) -->\n{render_key_table(role)}<!-- /keys:{role} -->\n"
    )


if __name__ == "__main__":  # pragma: no cover - prints the blocks to paste into docs/config.md
    sys.stdout.write(render_docs_block("master") + "\n" + render_docs_block("peer"))
