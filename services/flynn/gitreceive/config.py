"""gitreceive settings from the environment (``/etc/flynn/gitreceive.env`` and the gitreceive system
app's overlay ``/etc/flynn/gitreceive.app.env``; see docs/gitreceive.md).

The daemon and its hooks read the same settings: a hook runs as a child of ``git receive-pack``,
itself a child of ``git http-backend`` started by the daemon, and inherits the daemon's
environment. ``CONTROLLER_KEY`` and ``SSH_CLIENT_KEY`` are secrets (never in a message); every
``BUILD_ENV_NAME`` is passed to builds as ``NAME`` and never shown either.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from flynn.cli.units import LimitError, parse_memory
from flynn.common.config import env_int, env_str, parse_ip, parse_port
from flynn.common.errors import ConfigError
from flynn.discoverd.client import default_urls

DEFAULT_PORT = 1220
SERVICE = "gitreceive"
APP_VAR = "FLYNN_GITRECEIVE_APP"  # set by the daemon for git and its hooks: the request's app
DEFAULT_REPOS = Path("/var/lib/flynn/gitreceive/repos")
DEFAULT_MEMORY = 1 << 30  # 1 GiB (Flynn's default slugbuilder limit)
SLUGBUILDER = "/opt/flynn/venv/bin/flynn-slugbuilder"
BUILD_ENV_PREFIX = "BUILD_ENV_"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# names the host sets itself in every job (docs/host.md): a build env may not name them
HOST_ENV = frozenset(
    {
        "PORT",
        "HOME",
        "FLYNN_APP_ID",
        "FLYNN_APP_NAME",
        "FLYNN_RELEASE_ID",
        "FLYNN_PROCESS_TYPE",
        "FLYNN_JOB_ID",
    }
)


def _http_url(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: {value!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{name}: the URL must not contain credentials")
    return value.rstrip("/")


def parse_addr(raw: str, port: int, what: str) -> str:
    """``IP`` or ``IP:PORT`` (IPv4) -> ``IP:PORT``."""
    host, sep, raw_port = raw.rpartition(":")
    if sep and "." in host:
        return f"{parse_ip(host, what)}:{parse_port(raw_port, f'{what} port')}"
    return f"{parse_ip(raw, what)}:{port}"


def parse_build_env(env: Mapping[str, str]) -> dict[str, str]:
    """``BUILD_ENV_NAME=value`` -> ``{NAME: value}`` (values are never put in a message)."""
    out: dict[str, str] = {}
    for var, value in sorted(env.items()):
        if not var.startswith(BUILD_ENV_PREFIX):
            continue
        name = var[len(BUILD_ENV_PREFIX) :]
        if not ENV_NAME_RE.match(name):
            raise ConfigError(f"{var}: {name!r} is not an environment variable name")
        if name in HOST_ENV:
            raise ConfigError(f"{var}: {name} is set by the host in every job and cannot be a build variable")
        if "\0" in value:
            raise ConfigError(f"{var}: the value contains a NUL byte")
        out[name] = value
    return out


def default_hook_command() -> tuple[str, ...]:
    """How a git hook runs this program: the ``flynn-gitreceive`` script next to this Python (the
    host's venv), else this Python with ``-m flynn.gitreceive.daemon`` (a source checkout)."""
    script = Path(sys.executable).parent / "flynn-gitreceive"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (sys.executable, "-m", "flynn.gitreceive.daemon")


@dataclass(frozen=True)
class GitreceiveConfig:
    controller_key: str = field(repr=False)
    port: int = DEFAULT_PORT
    listen_ip: str = "0.0.0.0"  # noqa: S104 - served on the cluster network (and through the routers)
    addr: str | None = None  # "IP:PORT" announced in discoverd as "gitreceive"; None: not registered
    repos: Path = DEFAULT_REPOS
    discoverd_urls: tuple[str, ...] = ()
    controller_url: str | None = None  # default: the controllers in discoverd
    blobstore_url: str | None = None  # default: the blobstores in discoverd
    slugbuilder_memory: int = DEFAULT_MEMORY
    slugbuilder: str = SLUGBUILDER
    ssh_client_key: str | None = field(default=None, repr=False)
    ssh_client_hosts: str | None = None
    build_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    auth_cache_seconds: float = 5.0
    hook_command: tuple[str, ...] = field(default_factory=default_hook_command)

    @property
    def state_dir(self) -> Path:
        """The parent of the repositories: the hooks directory and temporary files live there."""
        return self.repos.parent

    def secrets(self) -> list[str]:
        out = [self.controller_key]
        if self.ssh_client_key:
            out.append(self.ssh_client_key)
        return out

    def build_variables(self) -> dict[str, str]:
        """What every build gets on top of the app's env: ``BUILD_ENV_*`` and the SSH client key."""
        env = dict(self.build_env)
        if self.ssh_client_key:
            env["SSH_CLIENT_KEY"] = self.ssh_client_key
        if self.ssh_client_hosts:
            env["SSH_CLIENT_HOSTS"] = self.ssh_client_hosts
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GitreceiveConfig:
        src = os.environ if env is None else env
        key = env_str("CONTROLLER_KEY", "", src).split(",")[0].strip()
        if not key:
            raise ConfigError("CONTROLLER_KEY is not set")
        port = env_int("GITRECEIVE_PORT", DEFAULT_PORT, minimum=1, maximum=65535, env=src)
        raw_addr = src.get("GITRECEIVE_ADDR", "").strip()
        raw_memory = src.get("SLUGBUILDER_DEFAULT_MEMORY_LIMIT", "").strip()
        try:
            memory = parse_memory(raw_memory) if raw_memory else DEFAULT_MEMORY
        except LimitError:
            raise ConfigError(
                f"SLUGBUILDER_DEFAULT_MEMORY_LIMIT={raw_memory!r} is not a size (e.g. 1GB, 4GB, or bytes)"
            ) from None
        discoverd = tuple(
            _http_url(u.strip(), "DISCOVERD") for u in src.get("DISCOVERD", "").split(",") if u.strip()
        )
        controller_url = src.get("CONTROLLER_URL", "").strip()
        blobstore_url = src.get("BLOBSTORE_URL", "").strip()
        repos = src.get("GITRECEIVE_REPOS", "").strip()
        if repos and not repos.startswith("/"):
            raise ConfigError(f"GITRECEIVE_REPOS={repos!r} is not an absolute path")
        hook = src.get("GITRECEIVE_HOOK_COMMAND", "").split()
        ssh_key = src.get("SSH_CLIENT_KEY", "")
        return cls(
            controller_key=key,
            port=port,
            listen_ip=parse_ip(env_str("GITRECEIVE_LISTEN_IP", "0.0.0.0", src), "GITRECEIVE_LISTEN_IP"),  # noqa: S104
            addr=parse_addr(raw_addr, port, "GITRECEIVE_ADDR") if raw_addr else None,
            repos=Path(repos) if repos else DEFAULT_REPOS,
            discoverd_urls=discoverd or tuple(default_urls()),
            controller_url=_http_url(controller_url, "CONTROLLER_URL") if controller_url else None,
            blobstore_url=_http_url(blobstore_url, "BLOBSTORE_URL") if blobstore_url else None,
            slugbuilder_memory=memory,
            slugbuilder=env_str("GITRECEIVE_SLUGBUILDER", SLUGBUILDER, src),
            ssh_client_key=ssh_key if ssh_key.strip() else None,
            ssh_client_hosts=src.get("SSH_CLIENT_HOSTS") or None,
            build_env=parse_build_env(src),
            auth_cache_seconds=float(env_int("GITRECEIVE_AUTH_CACHE", 5, minimum=0, maximum=300, env=src)),
            hook_command=tuple(hook) if hook else default_hook_command(),
        )
