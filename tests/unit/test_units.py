"""Static checks of units/, the single source of every systemd unit."""

import configparser
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).resolve().parents[2] / "units").iterdir())
SERVICES = [u for u in UNITS if u.suffix == ".service"]
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ProtectKernelModules": "yes",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
}


def parse(path: Path) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(strict=False, delimiters=("=",), interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


def test_there_are_units() -> None:
    assert SERVICES, "units/ holds no services"


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_has_description(unit: Path) -> None:
    assert parse(unit).get("Unit", "Description")


# boot-time steps (Type=oneshot), e.g. flynn-build-cleanup: everything else is a daemon
BOOT_STEPS = [u for u in SERVICES if parse(u)["Service"].get("Type") == "oneshot"]
DAEMONS = [u for u in SERVICES if u not in BOOT_STEPS]


@pytest.mark.parametrize("unit", DAEMONS, ids=lambda p: p.name)
def test_service_is_notify_hardened_and_in_a_flynn_slice(unit: Path) -> None:
    svc = parse(unit)["Service"]
    assert svc["Type"] == "notify"
    assert svc["Slice"].startswith("flynn")
    assert svc["ExecStart"].startswith("/opt/flynn/venv/bin/"), "nix/package.nix rewrites this prefix"
    for key, value in HARDENING.items():
        assert svc.get(key) == value, f"{unit.name}: {key} should be {value}"


def test_boot_steps_are_few_and_known() -> None:
    assert [u.name for u in BOOT_STEPS] == ["flynn-build-cleanup.service"]


@pytest.mark.parametrize("unit", BOOT_STEPS, ids=lambda p: p.name)
def test_boot_step_runs_once_per_boot_before_flynn_host_hardened(unit: Path) -> None:
    cp = parse(unit)
    svc = cp["Service"]
    assert svc["RemainAfterExit"] == "yes"  # once per boot: a flynn-host restart does not run it again
    assert "flynn-host.service" in cp["Unit"]["Before"].split()
    assert cp["Install"]["WantedBy"] == "multi-user.target"
    assert svc["Slice"].startswith("flynn")
    assert svc["ExecStart"].startswith("/"), "an absolute path (not the venv: nothing to rewrite for Nix)"
    for key, value in HARDENING.items():
        assert svc.get(key) == value, f"{unit.name}: {key} should be {value}"
