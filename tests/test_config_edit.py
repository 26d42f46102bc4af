"""config.get / config.set on a real file: validation first, comments kept, atomic write."""

from __future__ import annotations

import os
import stat

import pytest

from sift.control.config_edit import describe_config, set_config_value
from sift.control.wire import ControlError

CONFIG = """\
# Lab master. Keep this comment.
watched_dir = "data"   # relative to this file
psk = "secret-key"

# How often to rescan (seconds).
rescan_interval = 300
"""


@pytest.fixture
def config_file(tmp_path):
    (tmp_path / "data").mkdir()
    path = tmp_path / "master.toml"
    path.write_text(CONFIG)
    os.chmod(path, 0o640)
    return path


def test_get_lists_every_key_with_value_default_and_liveness(config_file):
    got = describe_config("master", config_file)
    keys = {k["name"]: k for k in got["keys"]}
    assert got["path"] == str(config_file)
    assert keys["rescan_interval"]["value"] == 300
    assert keys["rescan_interval"]["live"]
    assert keys["watched_dir"]["value"] == "data"
    assert not keys["watched_dir"]["live"]
    assert keys["debounce_ms"]["set"] is False
    assert keys["debounce_ms"]["value"] is None
    assert keys["debounce_ms"]["default"] == "200"
    assert keys["psk"]["value"] == "<hidden>"  # the key never leaves the daemon
    assert "secret-key" not in repr(got)


def test_set_keeps_comments_and_order_and_mode(config_file):
    change = set_config_value("master", config_file, "rescan_interval", "60")
    assert change.value == 60
    assert change.live
    assert change.config.rescan_interval == 60.0
    text = config_file.read_text()
    assert text == CONFIG.replace("rescan_interval = 300", "rescan_interval = 60")
    assert stat.S_IMODE(os.stat(config_file).st_mode) == 0o640


def test_set_adds_a_new_key_and_removes_with_none(config_file):
    change = set_config_value("master", config_file, "bind_addr", "127.0.0.1:9000")
    assert not change.live
    assert 'bind_addr = "127.0.0.1:9000"' in config_file.read_text()
    set_config_value("master", config_file, "bind_addr", None)
    assert config_file.read_text() == CONFIG


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("rescan_interval", "soon", "expected float"),
        ("rescan_interval", -5, "must be a finite number >= 0"),
        ("debounce_ms", "1.5", "expected integer"),
        ("bind_addr", "nowhere", "malformed address"),
        ("watched_dir", "missing-dir", "watched_dir"),
        ("watched_dir", None, "required"),
        ("log_level", "loud", "expected one of"),
        ("chunk_max_size", 1024, "chunk"),
        ("psk", "new", "cannot be set"),
        ("no_such_key", 1, "unknown key"),
        ("adopt", True, "unknown key"),  # a peer key on a master
    ],
)
def test_invalid_values_are_refused_and_the_file_is_untouched(config_file, key, value, message):
    before = config_file.read_bytes()
    with pytest.raises(ControlError) as err:
        set_config_value("master", config_file, key, value)
    assert err.value.code == "invalid"
    assert message in err.value.message
    assert "\n" not in err.value.message
    assert config_file.read_bytes() == before
    assert sorted(p.name for p in config_file.parent.iterdir()) == ["data", "master.toml"]


def test_peer_booleans_from_strings(tmp_path):
    path = tmp_path / "peer.toml"
    path.write_text('master_addr = "127.0.0.1:7777"\npsk = "k"\nlocal_dir = "local"\n')
    assert set_config_value("peer", path, "adopt", "true").value is True
    with pytest.raises(ControlError, match="true or false"):
        set_config_value("peer", path, "adopt", "yes")


def test_no_config_file_is_unavailable():
    with pytest.raises(ControlError) as err:
        describe_config("master", None)
    assert err.value.code == "unavailable"


def test_a_daemon_started_with_psk_file_validates_with_it(tmp_path):
    (tmp_path / "data").mkdir()
    path = tmp_path / "master.toml"
    path.write_text('watched_dir = "data"\n')  # the key comes from --psk-file only
    key = tmp_path / "psk"
    key.write_text("from-the-service-manager\n")
    key.chmod(0o600)
    with pytest.raises(ControlError, match="psk"):
        set_config_value("master", path, "rescan_interval", 5)
    change = set_config_value("master", path, "rescan_interval", 5, psk_file=str(key))
    assert change.config.psk == b"from-the-service-manager"
    assert "psk" not in path.read_text()


def test_a_config_that_cannot_be_written_is_one_clear_error(config_file, monkeypatch):
    def read_only(*_args, **_kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("sift.control.config_edit.tempfile.mkstemp", read_only)
    before = config_file.read_bytes()
    with pytest.raises(ControlError) as err:
        set_config_value("master", config_file, "rescan_interval", 60)
    assert err.value.code == "unavailable"
    assert err.value.message == f"cannot write {config_file}: Read-only file system"
    assert config_file.read_bytes() == before
