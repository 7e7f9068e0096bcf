"""discoverd settings from the environment (``/etc/flynn/discoverd.env``, see docs/discoverd.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flynn.common.config import env_int, env_str, parse_ip
from flynn.common.errors import ConfigError
from flynn.discoverd import validate
from flynn.discoverd.raft import RAFT_PORT

DEFAULT_HTTP_PORT = 1111
DEFAULT_DNS_PORT = 53
SECRET_FILE = Path("/etc/flynn/discoverd.secret")
MIN_SECRET_LEN = 16


@dataclass(frozen=True)
class DiscoverdConfig:
    addr: str
    peers: list[str]
    secret: str
    data_dir: Path
    http_port: int = DEFAULT_HTTP_PORT
    raft_port: int = RAFT_PORT
    dns_addr: str = "0.0.0.0"  # noqa: S104 - jobs and other hosts resolve through every host
    dns_port: int = DEFAULT_DNS_PORT
    ttl: float = 10.0
    recursors: tuple[str, ...] | None = None  # None: read /etc/resolv.conf

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DiscoverdConfig:
        src = os.environ if env is None else env
        addr = parse_ip(env_str("DISCOVERD_ADDR", None, src), "DISCOVERD_ADDR")
        raw_peers = env_str("DISCOVERD_PEERS", None, src)
        try:
            peers = sorted({validate.peer_addr(p.strip()) for p in raw_peers.split(",") if p.strip()})
        except validate.ValidationError as exc:
            raise ConfigError(f"DISCOVERD_PEERS: {exc}") from None
        if not peers:
            raise ConfigError("DISCOVERD_PEERS lists no address")
        creds = src.get("CREDENTIALS_DIRECTORY")
        default_secret = str(Path(creds) / "raft-secret") if creds else str(SECRET_FILE)
        secret_path = Path(env_str("DISCOVERD_SECRET_FILE", default_secret, src))
        try:
            secret = secret_path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the Raft secret {secret_path}: {exc.strerror}") from None
        if len(secret) < MIN_SECRET_LEN:
            raise ConfigError(f"the Raft secret in {secret_path} is shorter than {MIN_SECRET_LEN} characters")
        state_dir = src.get("STATE_DIRECTORY", "/var/lib/flynn-discoverd").split(":")[0]
        recursors = src.get("DISCOVERD_DNS_RECURSORS")
        ttl = env_int("DISCOVERD_TTL", 10, minimum=1, maximum=3600, env=src)
        return cls(
            addr=addr,
            peers=peers,
            secret=secret,
            data_dir=Path(env_str("DISCOVERD_DATA_DIR", state_dir, src)),
            http_port=env_int("DISCOVERD_HTTP_PORT", DEFAULT_HTTP_PORT, minimum=1, maximum=65535, env=src),
            raft_port=env_int("DISCOVERD_RAFT_PORT", RAFT_PORT, minimum=1, maximum=65535, env=src),
            dns_addr=parse_ip(env_str("DISCOVERD_DNS_ADDR", "0.0.0.0", src), "DISCOVERD_DNS_ADDR"),  # noqa: S104
            dns_port=env_int("DISCOVERD_DNS_PORT", DEFAULT_DNS_PORT, minimum=0, maximum=65535, env=src),
            ttl=float(ttl),
            recursors=tuple(r.strip() for r in recursors.split(",") if r.strip()) if recursors else None,
        )
