"""Log aggregator settings from the environment (``/etc/flynn/logaggregator.env``, docs/logs.md).

* ``LOGAGGREGATOR_ADDR``: cluster IP announced in discoverd as ``logaggregator`` (default: the
  host's first IPv4 address); ``LOGAGGREGATOR_PORT``: API port, default 1240;
  ``LOGAGGREGATOR_LISTEN_IP``: default the announced address.
* ``LOGAGGREGATOR_LINES``: lines kept per app, default 10,000 (100-1,000,000);
  ``LOGAGGREGATOR_SINK_BUFFER``: lines waiting per sink, default 10,000 (1-1,000,000).
* ``CONTROLLER_KEY``: the controller's key, to read the sinks (secret, never logged).
* ``DISCOVERD``: comma-separated discoverd URLs, default the local one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flynn.common.config import env_int, env_str, parse_ip
from flynn.common.errors import ConfigError
from flynn.discoverd.client import DEFAULT_URL as DEFAULT_DISCOVERD

DEFAULT_PORT = 1240
DEFAULT_LINES = 10_000
DEFAULT_SINK_BUFFER = 10_000
SERVICE = "logaggregator"


def _primary_ip() -> str | None:
    from flynn.host import sysinfo

    return next((a["address"] for a in sysinfo.addresses() if a["family"] == "inet"), None)


def _discoverd(raw: str) -> tuple[str, ...]:
    urls = []
    for value in (u.strip().rstrip("/") for u in raw.split(",")):
        if not value:
            continue
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"DISCOVERD: {value!r} is not an http(s) URL")
        urls.append(value)
    if not urls:
        raise ConfigError("DISCOVERD lists no URL")
    return tuple(urls)


@dataclass(frozen=True)
class AggregatorConfig:
    addr: str
    controller_key: str = field(repr=False)
    port: int = DEFAULT_PORT
    listen_ip: str | None = None
    lines: int = DEFAULT_LINES
    sink_buffer: int = DEFAULT_SINK_BUFFER
    discoverd_urls: tuple[str, ...] = (DEFAULT_DISCOVERD,)
    initial_wait: float = 60.0  # at most this long for the hosts' backlogs before registering

    @property
    def announce(self) -> str:
        return f"[{self.addr}]:{self.port}" if ":" in self.addr else f"{self.addr}:{self.port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AggregatorConfig:
        src = os.environ if env is None else env
        key = env_str("CONTROLLER_KEY", "", src).strip()
        if not key:
            raise ConfigError("CONTROLLER_KEY is not set")
        raw_addr = env_str("LOGAGGREGATOR_ADDR", "", src).strip()
        addr = parse_ip(raw_addr, "LOGAGGREGATOR_ADDR") if raw_addr else _primary_ip()
        if addr is None:
            raise ConfigError("LOGAGGREGATOR_ADDR is not set and this host has no IPv4 address")
        raw_listen = env_str("LOGAGGREGATOR_LISTEN_IP", "", src).strip()
        return cls(
            addr=addr,
            controller_key=key,
            port=env_int("LOGAGGREGATOR_PORT", DEFAULT_PORT, minimum=1, maximum=65535, env=src),
            listen_ip=parse_ip(raw_listen, "LOGAGGREGATOR_LISTEN_IP") if raw_listen else None,
            lines=env_int("LOGAGGREGATOR_LINES", DEFAULT_LINES, minimum=100, maximum=1_000_000, env=src),
            sink_buffer=env_int(
                "LOGAGGREGATOR_SINK_BUFFER", DEFAULT_SINK_BUFFER, minimum=1, maximum=1_000_000, env=src
            ),
            discoverd_urls=_discoverd(env_str("DISCOVERD", DEFAULT_DISCOVERD, src)),
        )
