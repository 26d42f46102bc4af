"""sift.config: typed loading, one-line errors naming file and key, docs and examples in step."""

from __future__ import annotations

import grp
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sift.config import (
    CONFIG_KEYS,
    MASTER_KEYS,
    PEER_KEYS,
    Address,
    ConfigError,
    MasterConfig,
    PeerConfig,
    load_master_config,
    load_peer_config,
    master_config_from_dict,
    peer_config_from_dict,
    render_docs_block,
)
from sift.core.chunk import DEFAULT_PARAMS, ChunkParams

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "config.md"
EXAMPLES = REPO / "config.example"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def master_toml(tmp_path: Path, body: str) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    return write(tmp_path / "master.toml", body)


def master_error(tmp_path: Path, body: str) -> ConfigError:
    path = master_toml(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_master_config(path)
    err = info.value
    # Every message is one line and starts with the file it is about.
    assert "\n" not in str(err)
    assert str(err).startswith(f"{path}: ")
    return err


def peer_error(tmp_path: Path, body: str) -> ConfigError:
    path = write(tmp_path / "peer.toml", body)
    with pytest.raises(ConfigError) as info:
        load_peer_config(path)
    err = info.value
    assert "\n" not in str(err)
    assert str(err).startswith(f"{path}: ")
    return err


MASTER_OK = 'watched_dir = "data"\npsk = "change-me"\n'
PEER_OK = 'master_addr = "m.example:7777"\npsk = "k"\nlocal_dir = "local"\n'


# ---------------------------------------------------------------------------------- Address


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("0.0.0.0:7777", "0.0.0.0", 7777),
        ("master.example.com:1", "master.example.com", 1),
        ("[::1]:7777", "::1", 7777),
        ("[fe80::1%eth0]:65535", "fe80::1%eth0", 65535),
    ],
)
def test_address_parse_and_str_round_trip(text: str, host: str, port: int) -> None:
    addr = Address.parse(text)
    assert addr == (host, port)
    assert str(addr) == text
    assert Address.parse(str(addr)) == addr


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("foo", "malformed address 'foo' (expected HOST:PORT)"),
        ("", "malformed address"),
        (":7777", "malformed address"),
        ("host:", "malformed address"),
        ("host:port", "malformed address"),
        ("host:-1", "malformed address"),
        (" host:1", "malformed address"),
        ("[::1]7777", "malformed address"),
        ("[1.2.3.4]:7777", "malformed address"),
        ("::1:7777", "write IPv6 addresses as [ADDR]:PORT"),
        ("host:65536", "port 65536 out of range in 'host:65536' (expected 1..65535)"),
        ("host:0", "port 0 out of range"),
    ],
)
def test_address_parse_errors(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        Address.parse(text)


def test_address_port_zero_only_when_asked() -> None:
    assert Address.parse("127.0.0.1:0", allow_port_zero=True) == ("127.0.0.1", 0)
    with pytest.raises(ValueError, match=re.escape("expected 1..65535")):
        Address.parse("127.0.0.1:0")


# ---------------------------------------------------------------------------------- valid loads


def test_master_minimal_gets_defaults(tmp_path: Path) -> None:
    path = master_toml(tmp_path, MASTER_OK)
    state_home = tmp_path / "xdg-state"
    cfg = master_config_from_dict(
        tomllib.loads(path.read_text()),
        tmp_path,
        config_path=path,
        env={"XDG_STATE_HOME": str(state_home)},
    )
    assert isinstance(cfg, MasterConfig)
    assert cfg.watched_dir == tmp_path / "data"
    assert cfg.psk == b"change-me"
    assert cfg.bind_addr == Address("0.0.0.0", 7777)
    assert cfg.state_dir == state_home / "sift" / "master"
    assert cfg.control_socket == cfg.state_dir / "control.sock"
    assert cfg.params == DEFAULT_PARAMS == ChunkParams(64 * 1024, 256 * 1024, 1024 * 1024)
    assert cfg.rescan_interval == 300.0
    assert cfg.debounce_ms == 200
    assert cfg.max_frame_size == 64 * 1024 * 1024
    assert cfg.config_path == path


def test_master_state_dir_default_without_xdg(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    data = {"watched_dir": "data", "psk": "k"}
    expected = Path.home() / ".local" / "state" / "sift" / "master"
    assert master_config_from_dict(data, tmp_path, env={}).state_dir == expected
    # A relative XDG_STATE_HOME is invalid per the XDG spec and ignored.
    assert (
        master_config_from_dict(data, tmp_path, env={"XDG_STATE_HOME": "rel"}).state_dir == expected
    )


def test_master_every_key(tmp_path: Path) -> None:
    path = master_toml(
        tmp_path,
        """
        watched_dir = "data"
        bind_addr = "[::]:9000"
        psk = "s3cret"
        state_dir = "state"
        control_socket = "/tmp/sift-test.sock"
        chunk_min_size = 4096
        chunk_avg_size = 16384
        chunk_max_size = 65536
        rescan_interval = 0
        debounce_ms = 50
        max_frame_size = 1048576
        """,
    )
    cfg = load_master_config(path)
    assert cfg.bind_addr == Address("::", 9000)
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.control_socket == Path("/tmp/sift-test.sock")
    assert cfg.params == ChunkParams(4096, 16384, 65536)
    assert cfg.rescan_interval == 0.0
    assert isinstance(cfg.rescan_interval, float)
    assert cfg.debounce_ms == 50
    assert cfg.max_frame_size == 1048576


def test_master_repr_hides_psk(tmp_path: Path) -> None:
    cfg = load_master_config(master_toml(tmp_path, MASTER_OK))
    assert "change-me" not in repr(cfg)


def test_peer_minimal_gets_defaults(tmp_path: Path) -> None:
    cfg = load_peer_config(write(tmp_path / "peer.toml", PEER_OK))
    assert isinstance(cfg, PeerConfig)
    assert cfg.master_addr == Address("m.example", 7777)
    assert cfg.psk == b"k"
    assert cfg.local_dir == tmp_path / "local"  # need not exist yet: the peer creates it
    assert cfg.bind_addr == Address("0.0.0.0", 7778)
    assert cfg.advertise_addr is None
    assert cfg.state_dir == tmp_path / "local" / ".sift" / "state"
    assert cfg.control_socket == cfg.state_dir / "control.sock"
    assert cfg.adopt is False
    assert cfg.update_in_place is False  # atomic replace unless asked
    assert cfg.max_frame_size == 64 * 1024 * 1024
    assert "'k'" not in repr(cfg)


def test_peer_every_key(tmp_path: Path) -> None:
    cfg = peer_config_from_dict(
        {
            "master_addr": "[2001:db8::1]:7777",
            "psk": "k",
            "local_dir": "local",
            "bind_addr": "127.0.0.1:0",
            "advertise_addr": "10.0.0.2:7778",
            "state_dir": "~/peer-state",
            "control_socket": "local/.sift/ctl.sock",
            "adopt": True,
            "update_in_place": True,
            "max_frame_size": 1 << 20,
        },
        tmp_path,
    )
    assert cfg.master_addr == Address("2001:db8::1", 7777)
    assert cfg.bind_addr == Address("127.0.0.1", 0)
    assert cfg.advertise_addr == Address("10.0.0.2", 7778)
    assert cfg.state_dir == Path.home() / "peer-state"
    assert cfg.control_socket == tmp_path / "local" / ".sift" / "ctl.sock"
    assert cfg.adopt is True
    assert cfg.update_in_place is True
    assert cfg.config_path is None


def test_relative_paths_resolve_against_config_dir_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    path = write(conf_dir / "master.toml", 'watched_dir = "data"\npsk = "k"\nstate_dir = "st"\n')
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_master_config(Path("..") / "etc" / "master.toml")
    assert cfg.watched_dir == conf_dir / "data"
    assert cfg.state_dir == conf_dir / "st"
    assert cfg.config_path is not None
    assert cfg.config_path.is_absolute()
    assert os.path.samefile(cfg.config_path, path)


def test_psk_file_is_read_and_trailing_newline_stripped(tmp_path: Path) -> None:
    key = tmp_path / "psk"
    key.write_bytes(b"  secret with spaces\r\n")
    key.chmod(0o600)
    cfg = load_master_config(master_toml(tmp_path, 'watched_dir = "data"\npsk_file = "psk"\n'))
    assert cfg.psk == b"  secret with spaces"
    key.chmod(0o400)
    assert load_peer_config(
        write(tmp_path / "peer.toml", 'master_addr = "m:1"\npsk_file = "psk"\nlocal_dir = "l"\n')
    ).psk == (b"  secret with spaces")


def test_state_dir_under_dot_sift_of_watched_dir_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    cfg = master_config_from_dict(
        {"watched_dir": "data", "psk": "k", "state_dir": "data/.sift/state"}, tmp_path
    )
    assert cfg.state_dir == tmp_path / "data" / ".sift" / "state"


# ---------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_master_config(tmp_path / "nope.toml")
    assert str(info.value).startswith(str(tmp_path / "nope.toml"))


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    err = master_error(tmp_path, 'watched_dir = "data"\npsk = "k"\nbind_addr 0.0.0.0:7777\n')
    assert "TOML syntax error" in str(err)
    assert "line 3" in str(err)


@pytest.mark.parametrize(
    ("body", "key", "fragment"),
    [
        ('psk = "k"\n', "watched_dir", "missing required key 'watched_dir'"),
        ('watched_dir = "data"\n', "psk", "missing required key 'psk' or 'psk_file'"),
        (
            MASTER_OK + 'psk_file = "psk"\n',
            "psk",
            "both 'psk' and 'psk_file' are set (use one)",
        ),
        (
            MASTER_OK + 'bind_adr = "0.0.0.0:1"\n',
            "bind_adr",
            "unknown key 'bind_adr' (did you mean 'bind_addr'?)",
        ),
        (MASTER_OK + "zzz = 1\n", "zzz", "unknown key 'zzz'"),
        (
            MASTER_OK + 'local_dir = "x"\n',
            "local_dir",
            "'local_dir' is a peer setting, not a master one",
        ),
        (
            MASTER_OK + "[bind_addr]\nhost = 1\n",
            "bind_addr",
            "bind_addr: expected a string, got table",
        ),
        (
            MASTER_OK + "bind_addr = 7777\n",
            "bind_addr",
            "bind_addr: expected a string, got integer",
        ),
        (
            MASTER_OK + 'bind_addr = "foo"\n',
            "bind_addr",
            "bind_addr: malformed address 'foo' (expected HOST:PORT)",
        ),
        (MASTER_OK + 'bind_addr = "h:99999"\n', "bind_addr", "port 99999 out of range"),
        ('watched_dir = "data"\npsk = ""\n', "psk", "psk: must not be empty"),
        ('watched_dir = "data"\npsk = 5\n', "psk", "psk: expected a string, got integer"),
        ('watched_dir = ""\npsk = "k"\n', "watched_dir", "watched_dir: must not be empty"),
        ('watched_dir = "missing"\npsk = "k"\n', "watched_dir", "does not exist"),
        ('watched_dir = "master.toml"\npsk = "k"\n', "watched_dir", "is not a directory"),
        (MASTER_OK + "chunk_min_size = 1\n", "chunk_min_size", "chunk_min_size: chunk min_size"),
        (MASTER_OK + "chunk_max_size = 10\n", "chunk_max_size", "chunk_max_size: chunk max_size"),
        (
            MASTER_OK + "chunk_min_size = 65536\nchunk_avg_size = 16384\n",
            "chunk_min_size/chunk_avg_size/chunk_max_size",
            "min_size <= avg_size <= max_size",
        ),
        (
            MASTER_OK + 'chunk_avg_size = "64k"\n',
            "chunk_avg_size",
            "expected an integer, got string",
        ),
        (MASTER_OK + "chunk_avg_size = 65536.0\n", "chunk_avg_size", "got float"),
        (MASTER_OK + "rescan_interval = -1\n", "rescan_interval", "rescan_interval: must be a"),
        (MASTER_OK + "rescan_interval = nan\n", "rescan_interval", "rescan_interval: must be a"),
        (MASTER_OK + "rescan_interval = true\n", "rescan_interval", "got boolean"),
        (MASTER_OK + "debounce_ms = -5\n", "debounce_ms", "debounce_ms: must be >= 0, got -5"),
        (MASTER_OK + "max_frame_size = 1000\n", "max_frame_size", "must be >= 65536"),
        (MASTER_OK + "max_frame_size = 262144\n", "max_frame_size", "too small for chunk_max_size"),
        (MASTER_OK + 'state_dir = "data/state"\n', "state_dir", "is inside watched_dir"),
        (MASTER_OK + 'state_dir = "data"\n', "state_dir", "must not be watched_dir itself"),
        (MASTER_OK + 'control_socket = "data/c.sock"\n', "control_socket", "inside watched_dir"),
    ],
)
def test_master_errors_name_the_key(tmp_path: Path, body: str, key: str, fragment: str) -> None:
    err = master_error(tmp_path, body)
    assert fragment in str(err)
    assert err.key == key
    assert key in str(err)


@pytest.mark.parametrize(
    ("body", "key", "fragment"),
    [
        ('psk = "k"\nlocal_dir = "l"\n', "master_addr", "missing required key 'master_addr'"),
        ('master_addr = "m:1"\npsk = "k"\n', "local_dir", "missing required key 'local_dir'"),
        (
            'master_addr = "m:0"\npsk = "k"\nlocal_dir = "l"\n',
            "master_addr",
            "master_addr: port 0 out of range",
        ),
        (
            'master_addr = "::1:7777"\npsk = "k"\nlocal_dir = "l"\n',
            "master_addr",
            "write IPv6 addresses as [ADDR]:PORT",
        ),
        (PEER_OK + 'advertise_addr = "nope"\n', "advertise_addr", "advertise_addr: malformed"),
        (PEER_OK + 'advertise_addr = "h:0"\n', "advertise_addr", "out of range"),
        (PEER_OK + 'adopt = "yes"\n', "adopt", "adopt: expected a boolean, got string"),
        (
            PEER_OK + "update_in_place = 1\n",
            "update_in_place",
            "update_in_place: expected a boolean, got integer",
        ),
        (PEER_OK + "watched_dir = 'x'\n", "watched_dir", "is a master setting"),
        (PEER_OK + "local_dri = 'x'\n", "local_dri", "(did you mean 'local_dir'?)"),
        (
            'master_addr = "m:1"\npsk = "k"\nlocal_dir = "no/such/parent/local"\n',
            "local_dir",
            "parent directory",
        ),
        (
            'master_addr = "m:1"\npsk = "k"\nlocal_dir = "peer.toml"\n',
            "local_dir",
            "exists and is not a directory",
        ),
        (PEER_OK + 'state_dir = "local/state"\n', "state_dir", "is inside local_dir"),
        (PEER_OK + "max_frame_size = 0\n", "max_frame_size", "must be >= 65536"),
    ],
)
def test_peer_errors_name_the_key(tmp_path: Path, body: str, key: str, fragment: str) -> None:
    err = peer_error(tmp_path, body)
    assert fragment in str(err)
    assert err.key == key
    assert key in str(err)


def test_psk_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "psk"
    key.write_text("secret\n")
    for mode in (0o644, 0o640, 0o604):
        key.chmod(mode)
        err = master_error(tmp_path, 'watched_dir = "data"\npsk_file = "psk"\n')
        assert err.key == "psk_file"
        assert f"psk_file '{key}' is readable by other users (chmod 600 it)" in str(err)


def test_psk_file_missing_empty_or_not_a_file(tmp_path: Path) -> None:
    body = 'watched_dir = "data"\npsk_file = "psk"\n'
    err = master_error(tmp_path, body)
    assert f"psk_file '{tmp_path / 'psk'}' cannot be read: No such file or directory" in str(err)

    (tmp_path / "psk").write_text("\n\n")
    (tmp_path / "psk").chmod(0o600)
    assert "is empty" in str(master_error(tmp_path, body))

    (tmp_path / "psk").unlink()
    (tmp_path / "psk").mkdir(mode=0o700)
    assert "is not a regular file" in str(master_error(tmp_path, body))


def test_psk_file_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "psk"
    key.write_text("secret")
    key.chmod(0o000)
    real_open = os.open

    def deny(path: Any, *args: Any, **kwargs: Any) -> int:
        # Root reads mode-000 files anyway; simulate the unprivileged daemon user.
        if Path(path) == key:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    err = master_error(tmp_path, 'watched_dir = "data"\npsk_file = "psk"\n')
    assert err.key == "psk_file"
    assert f"psk_file '{key}' cannot be read: Permission denied" in str(err)


def test_psk_file_fifo_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "psk", 0o600)
    err = master_error(tmp_path, 'watched_dir = "data"\npsk_file = "psk"\n')
    assert "is not a regular file" in str(err)


def test_watched_dir_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_access = os.access
    data = tmp_path / "data"
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: Path(p) != data and real_access(p, mode, **kw)
    )
    err = master_error(tmp_path, MASTER_OK)
    assert err.key == "watched_dir"
    assert f"watched_dir '{data}' is not readable" in str(err)


def test_config_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "master.toml"
    path.write_bytes(b'watched_dir = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_master_config(path)


def test_from_dict_errors_have_no_file_prefix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        peer_config_from_dict({"psk": "k", "local_dir": "l"}, tmp_path)
    assert str(info.value) == "missing required key 'master_addr'"
    assert info.value.path is None


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------------------- docs, examples


def test_docs_embed_the_generated_key_tables() -> None:
    docs = DOCS.read_text()
    for role in ("master", "peer"):
        assert render_docs_block(role) in docs, (
            f"docs/config.md is out of date for {role}: paste the output of python -m sift.config"
        )


def test_every_key_is_documented() -> None:
    docs = DOCS.read_text()
    for key in CONFIG_KEYS:
        assert f"`{key.name}`" in docs
        assert key.description in docs


@pytest.mark.parametrize(
    ("role", "data"),
    [
        ("master", {"psk": "k"}),
        ("master", {"watched_dir": "data"}),
        ("master", {"watched_dir": "data", "psk": "k", "psk_file": "f"}),
        ("master", {"watched_dir": "data", "psk": "k", "bind_adr": "x"}),
        ("master", {"watched_dir": "data", "psk": "k", "bind_addr": 7777}),
        ("master", {"watched_dir": "data", "psk": ""}),
        ("master", {"watched_dir": "data", "psk": "k", "bind_addr": "foo"}),
        ("master", {"watched_dir": "data", "psk": "k", "chunk_min_size": 1}),
        ("master", {"watched_dir": "data", "psk": "k", "rescan_interval": -1}),
        ("master", {"watched_dir": "data", "psk": "k", "debounce_ms": -5}),
        ("master", {"watched_dir": "data", "psk": "k", "max_frame_size": 1000}),
        ("master", {"watched_dir": "data", "psk": "k", "max_frame_size": 262144}),
        (
            "master",
            {"watched_dir": "data", "psk": "k", "chunk_min_size": 65536, "chunk_avg_size": 16384},
        ),
        ("peer", {"psk": "k", "local_dir": "l", "watched_dir": "x", "master_addr": "m:1"}),
        ("peer", {"psk": "k", "local_dir": "l", "master_addr": "::1:7777"}),
        ("peer", {"psk": "k", "local_dir": "l", "master_addr": "example.com:0"}),
    ],
)
def test_documented_error_messages_are_exact(
    tmp_path: Path, role: str, data: dict[str, Any]
) -> None:
    """The error table in docs/config.md quotes these messages word for word."""
    (tmp_path / "data").mkdir()
    load = master_config_from_dict if role == "master" else peer_config_from_dict
    with pytest.raises(ConfigError) as info:
        load(data, tmp_path)
    assert f"`FILE: {info.value.message}`" in DOCS.read_text()


def _example_with_optional_keys(name: str) -> tuple[str, dict[str, Any]]:
    """An example file's text, and its data with every commented-out key line enabled too
    (except psk_file, which excludes psk, and the TLS files, which must exist: they are loaded
    in tests/test_tls_config.py): the commented values must be valid as well."""
    text = (EXAMPLES / name).read_text()
    enabled = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.MULTILINE)
    data = tomllib.loads(enabled)
    for key in ("psk_file", "tls_cert", "tls_key", "tls_ca"):
        data.pop(key)
    return text, data


def test_master_example_documents_every_key_and_loads(tmp_path: Path) -> None:
    text = (EXAMPLES / "master.toml").read_text()
    for key in MASTER_KEYS:
        assert re.search(rf"^(# )?{key} = ", text, flags=re.MULTILINE), key
    # The example as shipped (with its directories pointed at tmp dirs) loads.
    data = tomllib.loads(text)
    assert data == {"watched_dir": "/data/science", "bind_addr": "0.0.0.0:7777", "psk": "change-me"}
    (tmp_path / "science").mkdir()
    data["watched_dir"] = str(tmp_path / "science")
    cfg = master_config_from_dict(data, tmp_path, env={"XDG_STATE_HOME": str(tmp_path)})
    assert cfg.bind_addr == Address("0.0.0.0", 7777)
    # And with every optional key enabled.
    _, full = _example_with_optional_keys("master.toml")
    full.update(watched_dir=str(tmp_path / "science"), state_dir=str(tmp_path / "state"))
    full.update(control_group=grp.getgrgid(os.getgid()).gr_name)  # one that exists here
    cfg = master_config_from_dict(full, tmp_path)
    assert cfg.params == DEFAULT_PARAMS
    assert cfg.rescan_interval == 300


def test_peer_example_documents_every_key_and_loads(tmp_path: Path) -> None:
    text = (EXAMPLES / "peer.toml").read_text()
    for key in PEER_KEYS:
        assert re.search(rf"^(# )?{key} = ", text, flags=re.MULTILINE), key
    data = tomllib.loads(text)
    assert data == {
        "master_addr": "master.example.com:7777",
        "psk": "change-me",
        "local_dir": "/data/local",
        "bind_addr": "0.0.0.0:7778",
    }
    data["local_dir"] = str(tmp_path / "local")
    cfg = peer_config_from_dict(data, tmp_path)
    assert cfg.master_addr == Address("master.example.com", 7777)
    assert cfg.bind_addr == Address("0.0.0.0", 7778)
    _, full = _example_with_optional_keys("peer.toml")
    full.update(local_dir=str(tmp_path / "local"), state_dir=str(tmp_path / "state"))
    full.update(control_group=grp.getgrgid(os.getgid()).gr_name)  # one that exists here
    cfg = peer_config_from_dict(full, tmp_path)
    assert cfg.adopt is True
    assert cfg.advertise_addr == Address("10.0.0.2", 7778)


def test_example_values_match_the_key_table() -> None:
    """The commented-out example values are the table's examples (one source of truth)."""
    for name, keys in (("master.toml", MASTER_KEYS), ("peer.toml", PEER_KEYS)):
        text = (EXAMPLES / name).read_text()
        for key in keys.values():
            if key.name in ("watched_dir", "local_dir", "master_addr", "psk", "bind_addr"):
                continue  # the quick-start values, checked above
            assert f"# {key.name} = {key.example}\n" in text, (name, key.name)


def test_control_group_must_exist(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    base = {"watched_dir": "data", "psk": "k", "state_dir": str(tmp_path / "state")}
    with pytest.raises(ConfigError, match="control_group: no such group 'no-such-group-x'"):
        master_config_from_dict({**base, "control_group": "no-such-group-x"}, tmp_path)
    group = grp.getgrgid(os.getgid()).gr_name
    assert (
        master_config_from_dict({**base, "control_group": group}, tmp_path).control_group == group
    )


def test_control_socket_of_reads_only_what_it_needs(tmp_path: Path) -> None:
    from sift.config import control_socket_of

    master = tmp_path / "master.toml"
    master.write_text('watched_dir = "/nowhere"\nstate_dir = "state"\n')  # no key, no such dir
    assert control_socket_of(master) == tmp_path / "state" / "control.sock"
    master.write_text('watched_dir = "/x"\ncontrol_socket = "/run/sift-master-lab/control.sock"\n')
    assert control_socket_of(master) == Path("/run/sift-master-lab/control.sock")
    peer = tmp_path / "peer.toml"
    peer.write_text('master_addr = "m:7777"\nlocal_dir = "mirror"\n')
    assert control_socket_of(peer) == tmp_path / "mirror" / ".sift" / "state" / "control.sock"
    peer.write_text('master_addr = "m:7777"\n')
    with pytest.raises(ConfigError, match="local_dir"):
        control_socket_of(peer)
