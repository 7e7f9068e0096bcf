"""blobstore settings from the environment (``/etc/flynn/blobstore.env``, see docs/blobstore.md).

Backends are configured as in Flynn: ``BACKEND_<NAME>="backend=<kind> key=value ..."`` (values
without spaces), with ``BACKEND_<NAME>_KEY`` holding a key file's content for kinds that need one
(GCS), and ``DEFAULT_BACKEND=<name>`` naming the one new blobs are written to. The PostgreSQL
backend ``postgres`` (on ``DATABASE_URL``) always exists, as in Flynn. Every setting of a backend
except its kind and a few plain ones is treated as a secret and never appears in a message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from psycopg.conninfo import conninfo_to_dict

from flynn.common.config import env_int, env_str, parse_ip, parse_port
from flynn.common.errors import ConfigError
from flynn.discoverd.client import default_urls

DEFAULT_PORT = 1210
DEFAULT_MAX_BYTES = 10 << 30  # 10 GiB
SERVICE = "blobstore"
_BACKEND_VAR = re.compile(r"^BACKEND_([A-Za-z0-9]+)$")
_KEY_VAR = re.compile(r"^BACKEND_([A-Za-z0-9]+)_KEY$")
_OPTION = re.compile(r"^([a-z][a-z0-9_]*)=(.*)$")
# settings whose values may be shown in messages; every other value is a secret
PLAIN_OPTIONS = frozenset({"backend", "region", "bucket", "container", "account_name", "endpoint", "prefix"})


@dataclass(frozen=True)
class BackendSpec:
    """One configured backend: its name (lower-case), kind and options (values may be secrets)."""

    name: str
    kind: str
    options: Mapping[str, str] = field(default_factory=dict)
    source: str = ""  # the variable it came from, for messages

    def secrets(self) -> list[str]:
        return [v for k, v in self.options.items() if k not in PLAIN_OPTIONS and v]


def parse_backend(name: str, raw: str, source: str) -> BackendSpec:
    """``backend=s3 region=us-east-1 bucket=b ...`` → BackendSpec; messages never quote values."""
    options: dict[str, str] = {}
    for position, token in enumerate(raw.split(), start=1):
        m = _OPTION.match(token)
        if m is None:
            raise ConfigError(f"{source}: setting {position} is not key=value")
        key, value = m.groups()
        if key in options:
            raise ConfigError(f"{source}: {key} is given twice")
        options[key] = value
    kind = options.pop("backend", "")
    if not kind:
        raise ConfigError(f"{source}: no backend=<kind> (postgres, s3, gcs, azure)")
    return BackendSpec(name=name, kind=kind, options=options, source=source)


def parse_backends(env: Mapping[str, str]) -> dict[str, BackendSpec]:
    specs: dict[str, BackendSpec] = {}
    keys: dict[str, str] = {}
    for var, value in sorted(env.items()):
        if not var.startswith("BACKEND_"):
            continue
        if (km := _KEY_VAR.match(var)) is not None:
            if f"BACKEND_{km.group(1)}" not in env:
                raise ConfigError(f"{var} is set but BACKEND_{km.group(1)} is not")
            keys[km.group(1).lower()] = value
            continue
        m = _BACKEND_VAR.match(var)
        if m is None:
            raise ConfigError(f"{var}: a backend name is letters and digits only (BACKEND_S3MAIN)")
        name = m.group(1).lower()
        if name in specs:
            raise ConfigError(f"{var}: backend {name} is configured twice (names are case-insensitive)")
        specs[name] = parse_backend(name, value, var)
    for name, key in keys.items():
        spec = specs[name]
        specs[name] = BackendSpec(spec.name, spec.kind, {**spec.options, "key": key}, spec.source)
    specs.setdefault("postgres", BackendSpec(name="postgres", kind="postgres", source="(built in)"))
    return specs


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


def parse_addr(raw: str, port: int, what: str) -> str:
    """``IP`` or ``IP:PORT`` (IPv4) → ``IP:PORT``."""
    host, sep, raw_port = raw.rpartition(":")
    if sep and "." in host:
        return f"{parse_ip(host, what)}:{parse_port(raw_port, f'{what} port')}"
    return f"{parse_ip(raw, what)}:{port}"


@dataclass(frozen=True)
class BlobstoreConfig:
    database_url: str
    backends: Mapping[str, BackendSpec]
    default_backend: str = "postgres"
    port: int = DEFAULT_PORT
    listen_ip: str = "0.0.0.0"  # noqa: S104 - served on the cluster network
    addr: str | None = None  # "IP:PORT" announced in discoverd as "blobstore"; None: not registered
    discoverd_urls: list[str] = field(default_factory=default_urls)
    max_bytes: int = DEFAULT_MAX_BYTES
    pool_size: int = 20
    db_timeout: float = 5.0
    db_wait: float = 60.0  # seconds to wait for the database at start before giving up

    @property
    def default(self) -> BackendSpec:
        return self.backends[self.default_backend]

    def secrets(self) -> list[str]:
        out = [s for spec in self.backends.values() for s in spec.secrets()]
        password = database_password(self.database_url)
        if password:
            out.append(password)
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BlobstoreConfig:
        src = os.environ if env is None else env
        port = env_int("BLOBSTORE_PORT", DEFAULT_PORT, minimum=1, maximum=65535, env=src)
        raw_addr = src.get("BLOBSTORE_ADDR", "").strip()
        backends = parse_backends(src)
        default_backend = env_str("DEFAULT_BACKEND", "postgres", src).strip().lower()
        if default_backend not in backends:
            raise ConfigError(
                f"DEFAULT_BACKEND={default_backend} names no configured backend"
                f" (configured: {', '.join(sorted(backends))})"
            )
        return cls(
            database_url=parse_database_url(env_str("DATABASE_URL", None, src)),
            backends=backends,
            default_backend=default_backend,
            port=port,
            listen_ip=parse_ip(env_str("BLOBSTORE_LISTEN_IP", "0.0.0.0", src), "BLOBSTORE_LISTEN_IP"),  # noqa: S104
            addr=parse_addr(raw_addr, port, "BLOBSTORE_ADDR") if raw_addr else None,
            discoverd_urls=[u.strip().rstrip("/") for u in src.get("DISCOVERD", "").split(",") if u.strip()]
            or default_urls(),
            max_bytes=env_int("BLOBSTORE_MAX_BYTES", DEFAULT_MAX_BYTES, minimum=0, env=src),
            pool_size=env_int("BLOBSTORE_DB_POOL_SIZE", 20, minimum=2, maximum=200, env=src),
            db_wait=float(env_int("BLOBSTORE_DB_WAIT", 60, minimum=0, maximum=3600, env=src)),
        )
