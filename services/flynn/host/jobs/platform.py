"""``PUT /host/platform/:name``: configure and (re)start a platform service (used by bootstrap).

Writes ``/etc/flynn/<name>.env`` (mode 0600, atomically), and ``/etc/flynn/<name>.secret`` (0600)
when the body has a ``secret`` (a credential the unit loads itself, kept out of its environment),
and has systemd enable and restart
``flynn-<name>.service``, answering once systemd's restart job finished. Only the platform's own
services may be named; a service whose unit is not installed is refused before anything is
written, so a bad request changes nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

from flynn.common.envfile import digest, parse_env, render_env
from flynn.host.client import PLATFORM_NAMES
from flynn.host.jobs.spec import ENV_NAME_RE, MAX_ENV, MAX_ENV_VALUE

log = logging.getLogger(__name__)

RESTART_TIMEOUT = 120.0


class PlatformError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class PlatformBackend(Protocol):
    async def load_state(self, name: str) -> str: ...

    async def enable(self, name: str) -> None: ...

    async def restart(self, name: str) -> str: ...

    async def wait_job(self, job_path: str, max_wait: float) -> str: ...

    async def unit_properties(self, name: str) -> dict[str, Any] | None: ...


MAX_SECRET = 4096


def validate_body(body: object) -> tuple[dict[str, str], str | None]:
    """The env and the optional secret of a ``PUT /host/platform/:name`` body."""
    env = validate_env(body)
    secret = body.get("secret") if isinstance(body, dict) else None
    return env, validate_secret(secret)


def validate_secret(secret: object) -> str | None:
    if secret is None:
        return None
    if not isinstance(secret, str) or not secret:
        raise PlatformError(400, "secret must be a non-empty string")
    if any(c in secret for c in "\0\r\n"):
        raise PlatformError(400, "secret contains a NUL or line break")
    if len(secret.encode()) > MAX_SECRET:
        raise PlatformError(400, f"secret is longer than {MAX_SECRET} bytes")
    return secret


def validate_env(body: object) -> dict[str, str]:
    if not isinstance(body, dict) or set(body) - {"env", "secret"}:
        raise PlatformError(400, 'the body must be {"env": {"NAME": "value", ...}, "secret"?: "..."}')
    env = body.get("env", {})
    if not isinstance(env, dict):
        raise PlatformError(400, "env must be an object of strings")
    if len(env) > MAX_ENV:
        raise PlatformError(400, f"env has more than {MAX_ENV} variables")
    out: dict[str, str] = {}
    for name, value in env.items():
        if not ENV_NAME_RE.match(name):
            raise PlatformError(400, f"invalid env name {name[:80]!r}")
        if not isinstance(value, str):
            raise PlatformError(400, f"env {name} must be a string")
        if "\0" in value or "\r" in value:
            raise PlatformError(400, f"env {name} contains a NUL or CR character")
        if len(value.encode()) > MAX_ENV_VALUE:
            raise PlatformError(400, f"env {name} is longer than {MAX_ENV_VALUE} bytes")
        out[name] = value
    return out


class Platform:
    def __init__(self, backend: PlatformBackend, etc_dir: Path = Path("/etc/flynn")) -> None:
        self.backend = backend
        self.etc_dir = etc_dir

    def env_file(self, name: str) -> Path:
        return self.etc_dir / f"{name}.env"

    def secret_file(self, name: str) -> Path:
        """Read by the unit itself (e.g. ``LoadCredential=raft-secret:/etc/flynn/discoverd.secret``)."""
        return self.etc_dir / f"{name}.secret"

    async def configure(self, name: str, body: object) -> dict[str, Any]:
        self._check_name(name)
        env, secret = validate_body(body)
        unit = f"flynn-{name}.service"
        state = await self.backend.load_state(unit)
        if state != "loaded":
            raise PlatformError(404, f"{unit} is not installed on this host (load state: {state})")
        if secret is not None:
            self._write(self.secret_file(name), secret + "\n")
        self._write(self.env_file(name), render_env(env))
        log.info("wrote %s (%d variables); restarting %s", self.env_file(name), len(env), unit)
        await self.backend.enable(unit)
        job = await self.backend.restart(unit)
        result = await self.backend.wait_job(job, RESTART_TIMEOUT)
        props = await self.backend.unit_properties(unit) or {}
        answer = {
            "name": name,
            "unit": unit,
            "env_file": str(self.env_file(name)),
            "secret_file": str(self.secret_file(name)) if secret is not None else None,
            "result": result,
            "state": props.get("ActiveState", "unknown"),
        }
        if result != "done":
            raise PlatformError(500, f"{unit} did not start (job {result}); see journalctl -u {unit}")
        return answer

    def app_env_file(self, name: str) -> Path:
        """The overlay from the service's system app release (``flynn -a NAME env set``), read by
        the unit after its base env file, so it wins."""
        return self.etc_dir / f"{name}.app.env"

    def _read_env(self, path: Path) -> dict[str, str]:
        try:
            return parse_env(path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise PlatformError(500, f"{path} is not in the platform's form: {exc}") from None

    def app_env_digest(self, name: str) -> dict[str, Any]:
        """What ``GET /host/platform/:name/app-env`` answers: a digest and the names, never values."""
        self._check_name(name)
        env = self._read_env(self.app_env_file(name))
        return {"name": name, "sha256": digest(env), "keys": sorted(env)}

    async def set_app_env(self, name: str, body: object) -> dict[str, Any]:
        """Write the app env overlay; restart the unit when it runs and a variable other than the
        ``live`` ones (which the service picks up by itself, e.g. the controller's AUTH_KEY)
        changed its effective value."""
        self._check_name(name)
        if not isinstance(body, dict) or set(body) - {"env", "live"}:
            raise PlatformError(400, 'the body must be {"env": {...}, "live"?: ["NAME", ...]}')
        env = validate_env({"env": body.get("env", {})})
        live = body.get("live", [])
        if not isinstance(live, list) or not all(isinstance(x, str) for x in live):
            raise PlatformError(400, "live must be a list of variable names")
        unit = f"flynn-{name}.service"
        base = self._read_env(self.env_file(name))
        before = {**base, **self._read_env(self.app_env_file(name))}
        after = {**base, **env}
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        self._write(self.app_env_file(name), render_env(env))
        props = await self.backend.unit_properties(unit) or {}
        active = props.get("ActiveState") in ("active", "activating", "reloading")
        restart = active and bool(set(changed) - set(live))
        log.info(
            "wrote %s (%d variables, %d changed)%s",
            self.app_env_file(name),
            len(env),
            len(changed),
            f"; restarting {unit}" if restart else "",
        )
        result = "not needed"
        if restart:
            result = await self.backend.wait_job(await self.backend.restart(unit), RESTART_TIMEOUT)
            if result != "done":
                raise PlatformError(500, f"{unit} did not restart (job {result}); see journalctl -u {unit}")
        return {**self.app_env_digest(name), "changed": changed, "restarted": restart, "result": result}

    def _check_name(self, name: str) -> None:
        if name not in PLATFORM_NAMES:
            raise PlatformError(
                404, f"unknown platform service {name[:40]!r} (one of {', '.join(PLATFORM_NAMES)})"
            )

    def _write(self, path: Path, text: str) -> None:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
