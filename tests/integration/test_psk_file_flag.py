"""`--psk-file` on `sift master start` / `sift peer start`: the key a service manager hands the
daemon (systemd's `LoadCredential=` + `--psk-file %d/psk`) replaces the config's psk/psk_file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from sift.config import ConfigError, load_master_config, load_peer_config
from tests.integration.cluster import free_port, wait_for

KEY = "key-from-the-credential"


def key_file(path, text: str = KEY + "\n", mode: int = 0o600):
    path.write_text(text)
    path.chmod(mode)
    return path


def master_config(tmp_path, body: str = 'psk = "key-in-the-config"\n'):
    (tmp_path / "data").mkdir(exist_ok=True)
    cfg = tmp_path / "master.toml"
    cfg.write_text(f'watched_dir = "data"\nstate_dir = "state"\n{body}')
    return cfg


def test_flag_replaces_the_configs_psk(tmp_path):
    cfg = master_config(tmp_path)
    assert load_master_config(cfg).psk == b"key-in-the-config"
    config = load_master_config(cfg, psk_file=key_file(tmp_path / "psk"))
    assert config.psk == KEY.encode()


def test_flag_supplies_the_key_a_config_leaves_out(tmp_path):
    cfg = tmp_path / "peer.toml"
    cfg.write_text('master_addr = "m.example:7777"\nlocal_dir = "local"\n')
    with pytest.raises(ConfigError, match="missing required key 'psk' or 'psk_file'"):
        load_peer_config(cfg)
    assert load_peer_config(cfg, psk_file=key_file(tmp_path / "psk")).psk == KEY.encode()


def test_relative_flag_means_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    cfg = master_config(tmp_path / "etc")
    workdir = tmp_path / "work"
    workdir.mkdir()
    key_file(workdir / "psk")
    monkeypatch.chdir(workdir)
    assert load_master_config(cfg, psk_file="psk").psk == KEY.encode()


def test_flag_file_gets_the_same_checks_as_psk_file(tmp_path):
    cfg = master_config(tmp_path)
    loose = key_file(tmp_path / "loose", mode=0o640)
    with pytest.raises(ConfigError) as info:
        load_master_config(cfg, psk_file=loose)
    assert str(info.value) == (
        f"{cfg}: psk_file '{loose}' is readable by other users (chmod 600 it)"
    )


def run_sift(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sift", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_cli_refuses_a_missing_key_file_in_one_line(tmp_path):
    cfg = master_config(tmp_path)
    missing = tmp_path / "nope"
    result = run_sift("master", "start", "--config", str(cfg), "--psk-file", str(missing))
    assert result.returncode == 2
    assert result.stderr == (
        f"sift: {cfg}: psk_file '{missing}' cannot be read: No such file or directory\n"
    )


def test_master_started_with_the_flag_answers_to_that_key_only(tmp_path):
    port = free_port()
    cfg = master_config(tmp_path, f'bind_addr = "127.0.0.1:{port}"\npsk = "key-in-the-config"\n')
    (tmp_path / "data" / "hello.txt").write_text("hello\n")
    psk = key_file(tmp_path / "psk")
    log = open(tmp_path / "master.log", "wb")  # noqa: SIM115 (the child owns it)
    command = ["master", "start", "--config", str(cfg), "--psk-file", str(psk)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sift", *command],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        addr = f"127.0.0.1:{port}"
        status = wait_for(
            lambda: (
                (r := run_sift("status", "--master", addr, "--psk", KEY)).returncode == 0
                and r.stdout
            ),
            60,
            "the master to answer with the key from --psk-file",
        )
        assert "Manifest version" in status
        refused = run_sift("status", "--master", addr, "--psk", "key-in-the-config")
        assert refused.returncode == 1
        assert "refused the key" in refused.stderr
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (tmp_path / "master.log").read_text()
