"""The Nix files parse, and the NixOS VM test's Python script compiles.

Nixpkgs cannot be fetched here, so the flake is never evaluated; `nix-instantiate --parse` still
catches every syntax error, and the VM test's script is plain Python we can compile. The Makefile
installs Debian's nix-bin, which provides nix-instantiate.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NIX = shutil.which("nix-instantiate")
SKIPPED_DIRS = {".git", ".venv", "node_modules", "result"}

pytestmark = pytest.mark.skipif(
    NIX is None, reason="nix-instantiate is not installed (make test installs Debian's nix-bin)"
)


def nix_files() -> list[Path]:
    return sorted(
        path
        for path in REPO.rglob("*.nix")
        if not SKIPPED_DIRS.intersection(path.relative_to(REPO).parts)
    )


def nix_instantiate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NIX, *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )


def test_the_flake_and_its_module_are_there():
    names = {str(p.relative_to(REPO)) for p in nix_files()}
    assert {"flake.nix", "nix/module.nix", "nix/package.nix", "nix/test.nix"} <= names


@pytest.mark.parametrize("path", nix_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_nix_file_parses(path):
    result = nix_instantiate("--parse", str(path))
    assert result.returncode == 0, result.stderr


def test_a_syntax_error_is_caught(tmp_path):
    broken = tmp_path / "broken.nix"
    broken.write_text("{ a = ; }\n")
    result = nix_instantiate("--parse", str(broken))
    assert result.returncode != 0
    assert "syntax error" in result.stderr


def test_vm_test_script_compiles():
    result = nix_instantiate(
        "--eval", "--strict", "--json", "-E", "(import ./nix/test.nix).testScript"
    )
    assert result.returncode == 0, result.stderr
    script = json.loads(result.stdout)
    # The test driver defines start_all, subtest and one object per node; compiling is enough.
    compile(script, "nix/test.nix:testScript", "exec")
    assert 'wait_for_unit("sift-master-lab.service")' in script


# ---------------------------------------------------------------- the NixOS module, evaluated
# tests/nix/eval-module.nix evaluates nix/module.nix with a stub lib and pkgs (no nixpkgs here).

MASTER = {
    "enable": True,
    "watched_dir": "/data/science",
    "pskFile": "/run/agenix/sift-psk",
    "openFirewall": True,
    "settings": {"rescan_interval": 600},
}
PEER = {
    "enable": True,
    "master_addr": "10.0.0.1:7777",
    "local_dir": "/data/local",
    "pskFile": "/run/agenix/sift-psk",
}


def nix_value(value: object) -> str:
    """A Python value as a Nix expression (JSON strings, numbers and booleans are Nix too)."""
    if isinstance(value, dict):
        return "{ " + "".join(f"{k} = {nix_value(v)}; " for k, v in value.items()) + "}"
    return json.dumps(value)


def evaluate_module(masters: dict, peers: dict) -> dict:
    result = nix_instantiate(
        "--eval",
        "--strict",
        "--json",
        "tests/nix/eval-module.nix",
        "--arg",
        "masters",
        nix_value(masters),
        "--arg",
        "peers",
        nix_value(peers),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def start_command(service: dict) -> tuple[list[str], dict]:
    """ExecStart's words, and the settings the stub rendered into the config file's name."""
    words = service["serviceConfig"]["ExecStart"].split(" ")
    config = words[words.index("--config") + 1]
    _path, _, rendered = config.partition("#")
    return words, json.loads(rendered)


def test_master_unit_passes_the_key_as_a_credential_never_in_the_config():
    config = evaluate_module({"lab": MASTER}, {})
    unit = config["systemd"]["services"]["sift-master-lab"]
    service = unit["serviceConfig"]
    words, settings = start_command(unit)
    assert words[0].endswith("/bin/sift")
    assert words[1:4] == ["master", "start", "--config"]
    assert words[-2:] == ["--psk-file", "%d/psk"]
    assert service["LoadCredential"] == "psk:/run/agenix/sift-psk"
    assert settings == {
        "watched_dir": "/data/science",
        "bind_addr": "0.0.0.0:7777",
        "state_dir": "/var/lib/sift-master-lab",
        "control_socket": "/run/sift-master-lab/control.sock",
        "control_group": "sift",
        "rescan_interval": 600,
    }
    assert service["StateDirectory"] == service["RuntimeDirectory"] == "sift-master-lab"
    assert service["RuntimeDirectoryMode"] == "0750"
    assert (service["User"], service["Group"]) == ("sift", "sift")
    assert service["Restart"] == "on-failure"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] is True
    assert config["networking"]["firewall"]["allowedTCPPorts"] == [7777]
    assert all(a["assertion"] for a in config["assertions"])


def test_rendered_keys_are_sift_config_keys():
    from sift.config import MASTER_KEYS, PEER_KEYS

    config = evaluate_module({"lab": MASTER}, {"edge": PEER})
    services = config["systemd"]["services"]
    _, master = start_command(services["sift-master-lab"])
    assert set(master) <= set(MASTER_KEYS)
    _, peer = start_command(services["sift-peer-edge"])
    assert set(peer) <= set(PEER_KEYS)
    assert not {"psk", "psk_file"} & set(master)


def test_peer_unit_may_write_its_mirror_only_and_keeps_its_port_closed():
    config = evaluate_module({}, {"edge": {**PEER, "bind_addr": "[::]:9000"}})
    unit = config["systemd"]["services"]["sift-peer-edge"]
    words, settings = start_command(unit)
    assert words[1:3] == ["peer", "start"]
    assert settings["master_addr"] == "10.0.0.1:7777"
    assert settings["local_dir"] == "/data/local"
    assert settings["bind_addr"] == "[::]:9000"
    assert settings["state_dir"] == "/var/lib/sift-peer-edge"
    assert unit["serviceConfig"]["ReadWritePaths"] == ["/data/local"]
    assert config["systemd"]["tmpfiles"]["rules"] == ["d /data/local 0755 sift sift - -"]
    assert config["networking"]["firewall"]["allowedTCPPorts"] == []


def test_firewall_opens_the_bind_port_only_when_asked():
    config = evaluate_module({}, {"edge": {**PEER, "bind_addr": "[::]:9000", "openFirewall": True}})
    assert config["networking"]["firewall"]["allowedTCPPorts"] == [9000]


def test_a_separate_control_group_joins_the_unit():
    config = evaluate_module({}, {"edge": {**PEER, "controlGroup": "wheel"}})
    service = config["systemd"]["services"]["sift-peer-edge"]["serviceConfig"]
    assert service["SupplementaryGroups"] == ["wheel"]
    assert service["RuntimeDirectoryMode"] == "0755"
    _, settings = start_command(config["systemd"]["services"]["sift-peer-edge"])
    assert settings["control_group"] == "wheel"

    config = evaluate_module({}, {"edge": {**PEER, "controlGroup": None}})
    _, settings = start_command(config["systemd"]["services"]["sift-peer-edge"])
    assert "control_group" not in settings


def test_a_key_in_settings_fails_the_assertion():
    config = evaluate_module({"lab": {**MASTER, "settings": {"psk": "oops"}}}, {})
    (assertion,) = config["assertions"]
    assert assertion["assertion"] is False
    assert "pskFile" in assertion["message"]


def test_disabled_instances_produce_nothing():
    config = evaluate_module({"lab": {**MASTER, "enable": False}}, {})
    assert config == {}


def test_flake_outputs_are_wired_for_each_system():
    result = nix_instantiate("--eval", "--strict", "--json", "tests/nix/eval-flake.nix")
    assert result.returncode == 0, result.stderr
    flake = json.loads(result.stdout)
    assert flake["nixpkgsUrl"].startswith("github:NixOS/nixpkgs/")
    assert flake["nixosModule"] == "module.nix"
    for system in ("x86_64-linux", "aarch64-linux"):
        package = flake["packages"][system]["default"]
        assert package["builtFrom"] == "package.nix"
        apps = flake["apps"][system]
        assert apps["sift"]["program"] == f"{package['path']}/bin/sift"
        assert apps["sift-tui"]["program"] == f"{package['path']}/bin/sift-tui"
        assert apps["default"] == apps["sift"]
        assert "python-env" in flake["devShells"][system]["default"]["packages"]
        assert flake["checks"][system] == {
            "package": package["path"],
            "vm": {"vmTest": "test.nix"},
        }
