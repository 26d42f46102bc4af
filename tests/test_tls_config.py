"""TLS settings in the config: checked at load time, one-line errors, the key kept private."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sift.config import ConfigError, master_config_from_dict, peer_config_from_dict
from sift.net.tls import node_tls
from tests.tls_certs import CertAuthority

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "config.md"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    ca = CertAuthority(tmp_path / "pki")
    node = ca.issue("master")
    other = ca.issue("other")
    (tmp_path / "data").mkdir()
    return {
        "cert": node.cert,
        "key": node.key,
        "ca": ca.cert_file,
        "other_key": other.key,
        "base": tmp_path,
    }


def master(files: dict[str, Path], **tls: Any):
    data = {"watched_dir": "data", "psk": "k", **{k: str(v) for k, v in tls.items()}}
    return master_config_from_dict(data, files["base"], env={"XDG_STATE_HOME": "/tmp"})


def error_of(files: dict[str, Path], **tls: Any) -> str:
    with pytest.raises(ConfigError) as info:
        node_tls(master(files, **tls))
    message = str(info.value)
    assert "\n" not in message
    return info.value.message


def test_tls_is_off_without_cert_and_key(files):
    cfg = master(files)
    assert cfg.tls_cert is None
    assert node_tls(cfg) is None


def test_cert_and_key_turn_tls_on_and_ca_makes_it_mutual(files):
    cfg = master(files, tls_cert=files["cert"], tls_key=files["key"])
    tls = node_tls(cfg)
    assert tls is not None
    assert tls.server is not None
    assert tls.server.context.verify_mode.name == "CERT_NONE"
    cfg = master(files, tls_cert=files["cert"], tls_key=files["key"], tls_ca=files["ca"])
    tls = node_tls(cfg)
    assert tls.server.context.verify_mode.name == "CERT_REQUIRED"
    assert tls.client.verify_mode.name == "CERT_REQUIRED"


def test_peer_config_takes_the_same_keys(files):
    data = {
        "master_addr": "127.0.0.1:7777",
        "psk": "k",
        "local_dir": "local",
        "tls_cert": str(files["cert"]),
        "tls_key": str(files["key"]),
        "tls_ca": str(files["ca"]),
    }
    cfg = peer_config_from_dict(data, files["base"])
    assert (cfg.tls_cert, cfg.tls_key, cfg.tls_ca) == (files["cert"], files["key"], files["ca"])
    assert node_tls(cfg) is not None


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"tls_cert": "cert"}, "tls_cert is set but tls_key is not (TLS needs both)"),
        ({"tls_key": "key"}, "tls_key is set but tls_cert is not (TLS needs both)"),
        ({"tls_ca": "ca"}, "tls_ca is set but tls_cert and tls_key are not (TLS needs both)"),
    ],
)
def test_incomplete_settings_are_refused(files, keys, message):
    with pytest.raises(ConfigError) as info:
        master(files, **{k: files[v] for k, v in keys.items()})
    assert info.value.message == message
    assert f"`FILE: {message}`" in DOCS.read_text()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_others_can_read_is_refused(files, mode):
    files["key"].chmod(mode)
    with pytest.raises(ConfigError) as info:
        master(files, tls_cert=files["cert"], tls_key=files["key"])
    assert info.value.message == (
        f"tls_key '{files['key']}' is readable by other users (chmod 600 it)"
    )
    assert info.value.key == "tls_key"


def test_missing_files_are_named(files):
    missing = files["base"] / "nope.crt"
    with pytest.raises(ConfigError) as info:
        master(files, tls_cert=missing, tls_key=files["key"])
    assert info.value.message == f"tls_cert '{missing}' cannot be read: No such file or directory"
    with pytest.raises(ConfigError) as info:
        master(files, tls_cert=files["cert"], tls_key=files["key"], tls_ca=files["base"])
    assert info.value.message == f"tls_ca '{files['base']}' is not a regular file"


def test_a_key_that_does_not_match_the_certificate(files):
    message = error_of(files, tls_cert=files["cert"], tls_key=files["other_key"])
    assert message.startswith(f"tls_cert '{files['cert']}' / tls_key '{files['other_key']}'")
    assert "cannot load the certificate and key (key values mismatch)" in message


def test_files_that_are_not_pem(files):
    junk = files["base"] / "junk.pem"
    junk.write_text("not a certificate\n")
    junk.chmod(0o600)
    message = error_of(files, tls_cert=junk, tls_key=files["key"])
    assert "cannot load the certificate and key" in message
    message = error_of(files, tls_cert=files["cert"], tls_key=files["key"], tls_ca=junk)
    assert message.startswith(f"tls_ca '{junk}': not a PEM certificate file")


def test_the_examples_tls_lines_load_with_real_files(files):
    for name in ("master.toml", "peer.toml"):
        text = (REPO / "config.example" / name).read_text()
        lines = re.findall(r"^# (tls_\w+) = ", text, flags=re.MULTILINE)
        assert lines == ["tls_cert", "tls_key", "tls_ca"], name
        enabled = tomllib.loads(re.sub(r"^# (tls_\w+ = )", r"\1", text, flags=re.MULTILINE))
        assert enabled["tls_ca"] == "/etc/sift/ca.crt"
    cfg = master(files, tls_cert=files["cert"], tls_key=files["key"], tls_ca=files["ca"])
    assert node_tls(cfg).server.cert_der
