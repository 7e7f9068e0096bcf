"""Controller settings from the environment (``/etc/flynn/controller.env``, see docs/controller.md)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from psycopg.conninfo import conninfo_to_dict

from flynn.common.config import env_int, env_str, parse_ip, parse_port
from flynn.common.errors import ConfigError
from flynn.discoverd.client import default_urls

DEFAULT_PORT = 1200
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"^(?=.{{1,200}}$)({_LABEL}\.)*{_LABEL}$")


def parse_keys(raw: str, what: str = "AUTH_KEY") -> tuple[str, ...]:
    """A comma-separated key list; blanks around keys are ignored, an empty list is an error."""
    keys = tuple(dict.fromkeys(k.strip() for k in raw.split(",") if k.strip()))
    if not keys:
        raise ConfigError(f"{what} lists no key")
    return keys


def parse_database_url(url: str) -> str:
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("DATABASE_URL must be a postgresql:// URL")
    try:
        conninfo_to_dict(url)
    except Exception as exc:  # psycopg raises ProgrammingError for a malformed URL
        raise ConfigError(f"DATABASE_URL is not a valid connection URL: {type(exc).__name__}") from None
    return url


def database_password(url: str) -> str | None:
    password = conninfo_to_dict(url).get("password")
    return str(password) if password else None


def parse_ca_cert(raw: str) -> str | None:
    """CA_CERT: one PEM certificate (the cluster CA that signed the routers' certificate), or
    empty."""
    from cryptography import x509

    pem = raw.strip()
    if not pem:
        return None
    try:
        x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise ConfigError("CA_CERT is not a PEM certificate") from None
    return pem + "\n"


@dataclass(frozen=True)
class ControllerConfig:
    database_url: str
    auth_keys: tuple[str, ...]
    cluster_domain: str | None = None  # set: new apps get the default route APP.CLUSTER_DOMAIN
    port: int = DEFAULT_PORT
    listen_ip: str = "0.0.0.0"  # noqa: S104 - the API is served on the cluster network
    addr: str | None = None  # "IP:PORT" announced in discoverd as "controller"; None: not registered
    discoverd_urls: list[str] = field(default_factory=default_urls)
    pool_size: int = 10
    db_timeout: float = 5.0
    keepalive: float = 15.0  # seconds between SSE keepalive comments
    claim_timeout: float = 30.0  # a deployment claimed longer ago than this is taken over
    ca_cert: str | None = None  # the cluster CA (PEM), served unauthenticated at GET /ca-cert

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ControllerConfig:
        src = os.environ if env is None else env
        port = env_int("CONTROLLER_PORT", DEFAULT_PORT, minimum=1, maximum=65535, env=src)
        addr: str | None = None
        raw_addr = src.get("CONTROLLER_ADDR", "").strip()
        if raw_addr:
            host, sep, raw_port = raw_addr.rpartition(":")
            if sep and "." in host:
                addr = f"{parse_ip(host, 'CONTROLLER_ADDR')}:{parse_port(raw_port, 'CONTROLLER_ADDR port')}"
            else:
                addr = f"{parse_ip(raw_addr, 'CONTROLLER_ADDR')}:{port}"
        domain = env_str("CLUSTER_DOMAIN", "", src).strip().lower().rstrip(".") or None
        if domain is not None and not _DOMAIN_RE.fullmatch(domain):
            raise ConfigError(f"CLUSTER_DOMAIN={domain[:80]!r} is not a domain name")
        return cls(
            database_url=parse_database_url(env_str("DATABASE_URL", None, src)),
            auth_keys=parse_keys(env_str("AUTH_KEY", None, src)),
            cluster_domain=domain,
            port=port,
            listen_ip=parse_ip(env_str("CONTROLLER_LISTEN_IP", "0.0.0.0", src), "CONTROLLER_LISTEN_IP"),  # noqa: S104
            addr=addr,
            discoverd_urls=[u.strip().rstrip("/") for u in src.get("DISCOVERD", "").split(",") if u.strip()]
            or default_urls(),
            pool_size=env_int("CONTROLLER_DB_POOL_SIZE", 10, minimum=1, maximum=100, env=src),
            ca_cert=parse_ca_cert(src.get("CA_CERT", "")),
        )
