"""Typed reading of settings from the environment, with one-line errors.

Every service is configured the systemd way: an ``EnvironmentFile=`` plus flags. These helpers turn
strings into typed values and raise :class:`ConfigError` naming the variable when a value is bad,
so a unit fails at start with a reason instead of misbehaving later.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from flynn.common.errors import ConfigError


def env_str(name: str, default: str | None = None, env: Mapping[str, str] | None = None) -> str:
    src = os.environ if env is None else env
    value = src.get(name)
    if value is None or value == "":
        if default is None:
            raise ConfigError(f"{name} is not set")
        return default
    return value


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    src = os.environ if env is None else env
    raw = src.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value} is above the maximum {maximum}")
    return value


def env_bool(name: str, default: bool, env: Mapping[str, str] | None = None) -> bool:
    src = os.environ if env is None else env
    raw = src.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true/false)")


def parse_port(value: str | int, what: str = "port") -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} {port} is outside 1-65535")
    return port


def parse_ip(value: str, what: str = "address") -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not an IP address") from None
