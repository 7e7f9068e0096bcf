"""Settings of the router daemon around the data plane (docs/router.md, "Control plane").

:class:`~flynn.router.config.RouterConfig` holds the data plane's limits; this holds what the
daemon needs besides: how to reach the controller and discoverd, the host's address (discoverd
registration ``router-http``, the status API), the status port. From ``/etc/flynn/router.env``
(written by ``flynn-host bootstrap``), one-line errors for bad values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flynn.common.config import env_int, env_str, parse_ip
from flynn.common.errors import ConfigError
from flynn.discoverd.client import DEFAULT_URL as DEFAULT_DISCOVERD

STATUS_PORT = 1230  # GET /status (internal: bound to ROUTER_ADDR, or 127.0.0.1 without it)
SERVICE = "router-http"  # the discoverd service every router registers in


def _http_url(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: {value!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{name}: the URL must not contain credentials")
    return value.rstrip("/")


@dataclass(frozen=True)
class DaemonSettings:
    controller_key: str | None = field(default=None, repr=False)  # None: no control plane
    controller_url: str | None = None  # None: the controllers registered in discoverd
    discoverd_urls: tuple[str, ...] = (DEFAULT_DISCOVERD,)
    addr: str | None = None  # the host's cluster address (ROUTER_ADDR)
    status_ip: str = "127.0.0.1"
    status_port: int = STATUS_PORT
    cluster_domain: str | None = None

    @property
    def control_plane(self) -> bool:
        return self.controller_key is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DaemonSettings:
        src = os.environ if env is None else env
        key = env_str("CONTROLLER_KEY", "", src).strip() or None
        raw_discoverd = env_str("DISCOVERD", DEFAULT_DISCOVERD, src)
        discoverd = tuple(_http_url(u.strip(), "DISCOVERD") for u in raw_discoverd.split(",") if u.strip())
        if not discoverd:
            raise ConfigError("DISCOVERD lists no URL")
        raw_addr = env_str("ROUTER_ADDR", "", src).strip()
        addr = parse_ip(raw_addr, "ROUTER_ADDR") if raw_addr else None
        raw_status_ip = env_str("ROUTER_STATUS_IP", "", src).strip()
        status_ip = parse_ip(raw_status_ip, "ROUTER_STATUS_IP") if raw_status_ip else (addr or "127.0.0.1")
        raw_controller = env_str("CONTROLLER_URL", "", src).strip()
        domain = env_str("CLUSTER_DOMAIN", "", src).strip().lower().rstrip(".") or None
        return cls(
            controller_key=key,
            controller_url=_http_url(raw_controller, "CONTROLLER_URL") if raw_controller else None,
            discoverd_urls=discoverd,
            addr=addr,
            status_ip=status_ip,
            status_port=env_int("ROUTER_STATUS_PORT", STATUS_PORT, minimum=0, maximum=65535, env=src),
            cluster_domain=domain,
        )
