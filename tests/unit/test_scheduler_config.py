"""flynn-scheduler's configuration, its one-line exits, and its systemd unit."""

from __future__ import annotations

import configparser
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from flynn.common.errors import ConfigError
from flynn.scheduler import daemon
from flynn.scheduler.config import DEFAULT_PORT, SchedulerConfig

UNIT = Path(__file__).resolve().parents[2] / "units" / "flynn-scheduler.service"
KEY = "k3y-0123456789abcdef"


def test_minimal_configuration() -> None:
    cfg = SchedulerConfig.from_env({"CONTROLLER_KEY": KEY, "SCHEDULER_ADDR": "10.0.0.5"})
    assert cfg.controller_key == KEY
    assert cfg.discoverd_urls == ("http://127.0.0.1:1111",)
    assert (cfg.addr, cfg.port, cfg.announce) == ("10.0.0.5", DEFAULT_PORT, f"10.0.0.5:{DEFAULT_PORT}")
    assert cfg.controller_url is None
    assert KEY not in repr(cfg)


def test_every_setting() -> None:
    cfg = SchedulerConfig.from_env(
        {
            "CONTROLLER_KEY": KEY,
            "DISCOVERD": "http://10.0.0.1:1111/, http://10.0.0.2:1111",
            "SCHEDULER_ADDR": "10.0.0.5:2000",
            "CONTROLLER_URL": "http://10.0.0.1:1200/",
        }
    )
    assert cfg.discoverd_urls == ("http://10.0.0.1:1111", "http://10.0.0.2:1111")
    assert cfg.announce == "10.0.0.5:2000"
    assert cfg.controller_url == "http://10.0.0.1:1200"
    assert SchedulerConfig.from_env({"CONTROLLER_KEY": KEY, "SCHEDULER_ADDR": "fd00::5"}).announce == (
        f"[fd00::5]:{DEFAULT_PORT}"
    )


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({}, "CONTROLLER_KEY is not set"),
        ({"CONTROLLER_KEY": "  "}, "CONTROLLER_KEY is not set"),
        ({"CONTROLLER_KEY": KEY, "DISCOVERD": "ftp://x"}, "DISCOVERD: 'ftp://x' is not an http(s) URL"),
        ({"CONTROLLER_KEY": KEY, "DISCOVERD": " , "}, "DISCOVERD lists no URL"),
        ({"CONTROLLER_KEY": KEY, "SCHEDULER_ADDR": "1.2.3"}, "SCHEDULER_ADDR '1.2.3' is not an IP address"),
        ({"CONTROLLER_KEY": KEY, "SCHEDULER_ADDR": "1.2.3.4:99999"}, "SCHEDULER_ADDR port 99999 is outside"),
        ({"CONTROLLER_KEY": KEY, "SCHEDULER_PORT": "x", "SCHEDULER_ADDR": "1.2.3.4"}, "is not an integer"),
        (
            {"CONTROLLER_KEY": KEY, "SCHEDULER_ADDR": "1.2.3.4", "CONTROLLER_URL": "http://u:p@c:1200"},
            "must not contain credentials",
        ),
    ],
)
def test_bad_configuration_is_one_line_naming_the_variable(env: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        SchedulerConfig.from_env(env)
    assert reason in str(err.value)
    assert "\n" not in str(err.value)


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """``main()`` configures the root logger for a service process; give the test run its own back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_daemon_exits_with_a_one_line_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CONTROLLER_KEY", raising=False)
    with pytest.raises(SystemExit) as exit_:
        daemon.main()
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "flynn-scheduler: CONTROLLER_KEY is not set\n"


def test_the_daemon_exits_with_a_reason_when_it_cannot_listen(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONTROLLER_KEY", KEY)
    monkeypatch.setenv("SCHEDULER_ADDR", "192.0.2.77")  # TEST-NET-1: not an address of this machine
    monkeypatch.setenv("DISCOVERD", "http://127.0.0.1:9")
    with pytest.raises(SystemExit) as exit_:
        daemon.main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err == "flynn-scheduler: cannot listen on 192.0.2.77:1114: Cannot assign requested address\n"
    assert KEY not in err


def unit() -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(strict=False, delimiters=("=",), interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    return cp


def test_the_unit_is_notify_dynamic_user_without_capabilities() -> None:
    cp = unit()
    svc = cp["Service"]
    assert svc["Type"] == "notify"
    assert svc["ExecStart"] == "/opt/flynn/venv/bin/flynn-scheduler"
    assert svc["DynamicUser"] == "yes"
    assert svc["CapabilityBoundingSet"] == ""
    assert svc["AmbientCapabilities"] == ""
    env_files = [
        ln.split("=", 1)[1] for ln in UNIT.read_text().splitlines() if ln.startswith("EnvironmentFile=")
    ]
    assert env_files == ["/etc/flynn/scheduler.env", "-/etc/flynn/scheduler.app.env"]
    assert cp["Unit"]["ConditionPathExists"] == "/etc/flynn/scheduler.env"
    assert svc["Restart"] == "always"
    assert svc["WatchdogSec"] == "30s"
    for key in ("ProtectSystem", "NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome"):
        assert svc[key] in ("yes", "strict"), key
