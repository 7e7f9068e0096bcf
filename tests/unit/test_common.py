import logging
import os
import socket
from pathlib import Path

import pytest

from flynn.common import sdnotify
from flynn.common.config import env_bool, env_int, env_str, parse_ip, parse_port
from flynn.common.errors import ConfigError
from flynn.common.log import RedactingFilter, redact, register_secret


def test_env_helpers() -> None:
    env = {"N": "42", "B": "yes", "S": "x", "BAD": "4x", "NO": "maybe"}
    assert env_int("N", 1, env=env) == 42
    assert env_int("MISSING", 7, env=env) == 7
    assert env_bool("B", False, env=env) is True
    assert env_str("S", env=env) == "x"
    with pytest.raises(ConfigError, match="BAD='4x' is not an integer"):
        env_int("BAD", 1, env=env)
    with pytest.raises(ConfigError, match="above the maximum"):
        env_int("N", 1, maximum=10, env=env)
    with pytest.raises(ConfigError, match="not a boolean"):
        env_bool("NO", True, env=env)
    with pytest.raises(ConfigError, match="MISSING is not set"):
        env_str("MISSING", env=env)


def test_parse_port_and_ip() -> None:
    assert parse_port("1113") == 1113
    assert parse_ip("::1") == "::1"
    for bad in ("0", "65536", "x"):
        with pytest.raises(ConfigError):
            parse_port(bad)
    with pytest.raises(ConfigError):
        parse_ip("256.1.1.1")


def test_redaction_of_named_and_registered_secrets() -> None:
    assert redact("AUTH_KEY=abc123 other=1") == "AUTH_KEY=<redacted> other=1"
    assert "hunter22" not in redact("PGPASSWORD=hunter22")
    register_secret("s3cr3t-value")
    assert redact("connecting with s3cr3t-value now") == "connecting with <redacted> now"


def test_redacting_filter_rewrites_records() -> None:
    register_secret("tok-987654")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key is %s", ("tok-987654",), None)
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "key is <redacted>"


def test_sd_notify_sends_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.ready("serving")
        assert server.recv(100) == b"READY=1\nSTATUS=serving"
        assert sdnotify._socket_notify("WATCHDOG=1")
        assert server.recv(100) == b"WATCHDOG=1"


def test_sd_notify_without_systemd_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert sdnotify.watchdog_interval() is None
