"""Router settings: limits, timeouts and listeners, with their defaults and the environment names.

Every value has a default that suits a public front door; tests pass much shorter timeouts. The
daemon reads them with :meth:`RouterConfig.from_env` (``ROUTER_*`` variables, one-line errors).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from flynn.common.config import env_int, env_str
from flynn.common.errors import ConfigError


def _env_seconds(name: str, default: float, env: Mapping[str, str]) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ConfigError(f"{name}={value} is negative")
    return value


@dataclass(frozen=True)
class RouterConfig:
    """Limits and timeouts of one router process (all sizes in bytes, all times in seconds)."""

    listen_ip: str = "0.0.0.0"  # noqa: S104 - the router is the public front door
    http_ports: tuple[int, ...] = (80,)
    https_ports: tuple[int, ...] = (443,)

    # client side
    header_timeout: float = 10.0  # from a connection's or request's first byte to the end of its headers
    idle_timeout: float = 60.0  # keep-alive wait between requests (HTTP/1.1 and HTTP/2)
    body_timeout: float = 60.0  # longest silence while a request body is being received
    tls_handshake_timeout: float = 10.0
    max_url_bytes: int = 8192  # request target; longer: 414
    max_header_bytes: int = 32768  # request line + headers; larger: 431
    max_headers: int = 100  # header fields per request; more: 431
    max_body_bytes: int = 0  # 0: unlimited (bodies are streamed); larger declared bodies: 413
    h2_max_streams: int = 128  # concurrent HTTP/2 streams per connection

    # upstream side
    connect_timeout: float = 3.0  # TCP connect to a backend
    upstream_attempts: int = 3  # backends tried for one request on connection errors
    upstream_idle_timeout: float = 30.0  # pooled idle upstream connection is closed after this
    upstream_max_idle: int = 128  # idle pooled connections kept per backend
    backend_down_seconds: float = 2.0  # a backend whose connect failed is skipped this long

    # answers
    error_503_page: bytes | None = None  # body of "no backend" answers; plain text when None
    error_503_content_type: bytes = b"text/html; charset=utf-8"
    sticky_cookie: str = "_backend"
    reuse_port: bool = True

    @property
    def tick(self) -> float:
        """How often deadlines are checked: a quarter of the shortest client timeout, 50 ms to 1 s."""
        shortest = min(
            t
            for t in (self.header_timeout, self.idle_timeout, self.body_timeout, 4.0)
            if t > 0  # 0 disables a timeout
        )
        return max(0.05, min(1.0, shortest / 4))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RouterConfig:
        src = os.environ if env is None else env

        def ports(name: str, default: str) -> tuple[int, ...]:
            raw = env_str(name, default, env=src)
            if raw.strip() in ("", "none", "off"):
                return ()
            out = []
            for part in raw.split(","):
                try:
                    port = int(part)
                except ValueError:
                    raise ConfigError(f"{name}={raw!r}: {part!r} is not a port") from None
                if not 1 <= port <= 65535:
                    raise ConfigError(f"{name}={raw!r}: {port} is outside 1-65535")
                out.append(port)
            return tuple(out)

        return cls(
            listen_ip=env_str("ROUTER_LISTEN_IP", "0.0.0.0", env=src),  # noqa: S104
            http_ports=ports("ROUTER_HTTP_PORTS", "80"),
            https_ports=ports("ROUTER_HTTPS_PORTS", "443"),
            header_timeout=_env_seconds("ROUTER_HEADER_TIMEOUT", 10.0, src),
            idle_timeout=_env_seconds("ROUTER_IDLE_TIMEOUT", 60.0, src),
            body_timeout=_env_seconds("ROUTER_BODY_TIMEOUT", 60.0, src),
            tls_handshake_timeout=_env_seconds("ROUTER_TLS_HANDSHAKE_TIMEOUT", 10.0, src),
            connect_timeout=_env_seconds("ROUTER_CONNECT_TIMEOUT", 3.0, src),
            upstream_idle_timeout=_env_seconds("ROUTER_UPSTREAM_IDLE_TIMEOUT", 30.0, src),
            max_url_bytes=env_int("ROUTER_MAX_URL_BYTES", 8192, minimum=64, env=src),
            max_header_bytes=env_int("ROUTER_MAX_HEADER_BYTES", 32768, minimum=256, env=src),
            max_headers=env_int("ROUTER_MAX_HEADERS", 100, minimum=4, env=src),
            max_body_bytes=env_int("ROUTER_MAX_BODY_BYTES", 0, minimum=0, env=src),
            upstream_attempts=env_int("ROUTER_UPSTREAM_ATTEMPTS", 3, minimum=1, maximum=16, env=src),
        )
