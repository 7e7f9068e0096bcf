"""Evaluate the Nix packaging with nix-instantiate (Debian's nix-bin) and a stand-in for nixpkgs' lib.

What this cannot do here: build the package or a NixOS system (no nixpkgs, no binary cache).
"""

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "tests/unit/nix/harness.nix"


def evaluate(**args: str) -> dict[str, Any]:
    if shutil.which("nix-instantiate") is None:
        pytest.fail("nix-instantiate missing: scripts/setup installs Debian's nix-bin")
    argv = ["nix-instantiate", "--eval", "--strict", "--json", str(HARNESS), "--arg", "enable", "true"]
    for name, expr in args.items():
        argv += ["--arg", name, expr]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_enabled_module_ships_the_package_units_and_enables_flynn_host() -> None:
    out = evaluate()
    cfg = out["config"]
    assert cfg["systemd"]["packages"] == ["PKG"]
    svc = cfg["systemd"]["services"]["flynn-host"]
    assert svc["wantedBy"] == ["multi-user.target"]
    assert svc["environment"] == {"FLYNN_HOST_LISTEN_IP": "0.0.0.0", "FLYNN_HOST_PORT": "1113"}
    assert set(svc) == {"wantedBy", "environment"}  # nothing of the unit itself is re-typed in Nix
    assert cfg["networking"]["firewall"]["allowedTCPPorts"] is None
    journald = cfg["services"]["journald"]  # as appliance/rootfs-customize configures it
    assert (journald["storage"], journald["rateLimitBurst"]) == ("persistent", 500000)
    assert "SystemMaxUse=1G" in journald["extraConfig"]


def test_host_id_and_firewall_options() -> None:
    cfg = evaluate(hostId='"host7"', openFirewall="true")["config"]
    assert cfg["systemd"]["services"]["flynn-host"]["environment"]["FLYNN_HOST_ID"] == "host7"
    assert cfg["networking"]["firewall"]["allowedTCPPorts"] == [1113]


def test_disabled_module_configures_nothing() -> None:
    assert evaluate(enable="false")["config"] is None


def test_options() -> None:
    names = set(evaluate()["optionNames"])
    assert names == {"enable", "package", "hostId", "listenAddress", "port", "openFirewall"}


def test_package_matches_pyproject_and_installs_units() -> None:
    pkg = evaluate()["package"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert (pkg["pname"], pkg["version"]) == (project["name"], project["version"])
    for dep in project["dependencies"]:
        name = re.split(r"[<>=!~ \[]", dep)[0].lower()
        assert name in pkg["dependencies"], f"pyproject dependency {name} missing from nix/package.nix"
    assert "install -Dm644 -t $out/lib/systemd/system units/*" in pkg["postInstall"]
    assert "--replace-fail /opt/flynn/venv/bin/ $out/bin/" in pkg["postInstall"]
    assert "flynn.host.daemon" in pkg["pythonImportsCheck"]
