"""Scheduler settings from the environment (``/etc/flynn/scheduler.env``, see docs/scheduler.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flynn.common.config import env_int, env_str, parse_ip, parse_port
from flynn.common.errors import ConfigError
from flynn.discoverd.client import DEFAULT_URL as DEFAULT_DISCOVERD

DEFAULT_PORT = 1114


def _http_url(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: {value!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{name}: the URL must not contain credentials")
    return value.rstrip("/")


def _primary_ip() -> str | None:
    from flynn.host import sysinfo

    return next((a["address"] for a in sysinfo.addresses() if a["family"] == "inet"), None)


@dataclass(frozen=True)
class SchedulerConfig:
    controller_key: str = field(repr=False)
    addr: str
    port: int = DEFAULT_PORT
    discoverd_urls: tuple[str, ...] = (DEFAULT_DISCOVERD,)
    controller_url: str | None = None

    @property
    def announce(self) -> str:
        """``IP:PORT`` registered in discoverd as service ``flynn-scheduler``."""
        return f"[{self.addr}]:{self.port}" if ":" in self.addr else f"{self.addr}:{self.port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SchedulerConfig:
        src = os.environ if env is None else env
        key = env_str("CONTROLLER_KEY", None, src).strip()
        if not key:
            raise ConfigError("CONTROLLER_KEY is not set")
        raw_discoverd = env_str("DISCOVERD", DEFAULT_DISCOVERD, src)
        discoverd = tuple(_http_url(u.strip(), "DISCOVERD") for u in raw_discoverd.split(",") if u.strip())
        if not discoverd:
            raise ConfigError("DISCOVERD lists no URL")
        port = env_int("SCHEDULER_PORT", DEFAULT_PORT, minimum=1, maximum=65535, env=src)
        raw_addr = env_str("SCHEDULER_ADDR", "", src)
        if raw_addr:
            host, sep, maybe_port = raw_addr.rpartition(":")
            if sep and raw_addr.count(":") == 1:  # IP:PORT
                addr = parse_ip(host, "SCHEDULER_ADDR")
                port = parse_port(maybe_port, "SCHEDULER_ADDR port")
            else:
                addr = parse_ip(raw_addr.strip("[]"), "SCHEDULER_ADDR")
        else:
            primary = _primary_ip()
            if primary is None:
                raise ConfigError("SCHEDULER_ADDR is not set and this host has no IPv4 address")
            addr = primary
        raw_controller = env_str("CONTROLLER_URL", "", src)
        return cls(
            controller_key=key,
            addr=addr,
            port=port,
            discoverd_urls=discoverd,
            controller_url=_http_url(raw_controller, "CONTROLLER_URL") if raw_controller else None,
        )
