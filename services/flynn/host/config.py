"""flynn-host settings: flags override environment (``/etc/default/flynn-host``) override defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flynn.common.config import env_int, env_str, parse_ip
from flynn.common.errors import ConfigError

DEFAULT_PORT = 1113


@dataclass(frozen=True)
class HostConfig:
    listen_ip: str = "0.0.0.0"  # noqa: S104 - the host API is reached by every other host
    port: int = DEFAULT_PORT
    state_dir: Path = Path("/var/lib/flynn")
    host_id: str | None = None
    addr: str | None = None  # cluster address announced in discoverd; default: first IPv4 address
    build_file: Path = Path("/opt/flynn/BUILD")
    etc_dir: Path = Path("/etc/flynn")  # platform services' env files (PUT /host/platform/:name)
    drain_delay: float = 2.0  # seconds from a job's deregistration to its SIGTERM (router drain)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HostConfig:
        return cls(
            listen_ip=parse_ip(env_str("FLYNN_HOST_LISTEN_IP", "0.0.0.0", env), "FLYNN_HOST_LISTEN_IP"),  # noqa: S104
            port=env_int("FLYNN_HOST_PORT", DEFAULT_PORT, minimum=1, maximum=65535, env=env),
            state_dir=Path(env_str("FLYNN_STATE_DIR", "/var/lib/flynn", env)),
            host_id=env_str("FLYNN_HOST_ID", "", env) or None,
            addr=parse_ip(raw_addr, "FLYNN_HOST_ADDR")
            if (raw_addr := env_str("FLYNN_HOST_ADDR", "", env))
            else None,
            drain_delay=_seconds("FLYNN_HOST_DRAIN_DELAY", 2.0, env),
        )


def _seconds(name: str, default: float, env: Mapping[str, str] | None) -> float:
    raw = env_str(name, "", env).strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not 0 <= value <= 60:
        raise ConfigError(f"{name}={value:g} is outside 0-60 seconds")
    return value
