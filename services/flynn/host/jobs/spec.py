"""Validation of a job config (the ``PUT /host/jobs/:id`` body, docs/host.md).

:func:`parse_job` turns untrusted JSON into a frozen :class:`JobSpec` or raises
:class:`SpecError` with a one-line reason naming the field; nothing else in the host reads the raw
body. Limits follow the controller's (docs/controller.md) so anything the controller accepts, the
host accepts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JOB_SUFFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
OBJECT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
APP_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}$")
SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
META_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

RESERVED_ENV = frozenset(
    {
        "PORT",
        "FLYNN_APP_ID",
        "FLYNN_APP_NAME",
        "FLYNN_RELEASE_ID",
        "FLYNN_PROCESS_TYPE",
        "FLYNN_JOB_ID",
        "HOME",
    }
)
MAX_ENV = 256
MAX_ENV_VALUE = 32 * 1024
MAX_ARGS = 1000
MAX_ARG = 32 * 1024
MAX_META = 64
MAX_META_VALUE = 4096
MAX_URI = 2048
MIN_MEMORY = 4 * 1024 * 1024
MAX_MEMORY = 1 << 50
DEFAULT_MEMORY = 1 << 30  # 1 GiB, Flynn's default
MIN_CPU, MAX_CPU = 1, 100_000
DEFAULT_STOP_TIMEOUT = 10
MAX_STOP_TIMEOUT = 3600
DEFAULT_CHECK_TIMEOUT = 60
MAX_CHECK_TIMEOUT = 600

TOP_FIELDS = frozenset(
    {
        "id",
        "app_id",
        "app_name",
        "release_id",
        "type",
        "artifact",
        "args",
        "env",
        "service",
        "check",
        "resources",
        "attach",
        "stop_timeout",
        "meta",
        "app_mode",
    }
)
# "artifact": /app is the artifact (read-only) or empty; "build": /app is an empty directory the
# job's dynamic user may write, deleted when the job ends (slug builds, docs/gitreceive.md)
APP_MODES = ("artifact", "build")
# the controller's artifact object may be passed whole: its other fields are accepted and ignored
ARTIFACT_FIELDS = frozenset({"id", "type", "uri", "sha256", "meta", "size", "created_at"})


class SpecError(ValueError):
    """Bad job config; ``status`` is the HTTP status to answer (400, or 409 for a foreign id)."""

    def __init__(self, message: str, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@dataclass(frozen=True)
class Artifact:
    id: str
    uri: str
    sha256: str | None = None
    type: str = "tarball"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "uri": self.uri, "sha256": self.sha256}


@dataclass(frozen=True)
class Check:
    type: str = "tcp"  # tcp | http
    path: str = "/"
    status: int = 200
    timeout: int = DEFAULT_CHECK_TIMEOUT

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "timeout": self.timeout}
        if self.type == "http":
            out.update(path=self.path, status=self.status)
        return out


@dataclass(frozen=True)
class JobSpec:
    id: str
    args: tuple[str, ...]
    app_id: str | None = None
    app_name: str | None = None
    release_id: str | None = None
    type: str | None = None
    artifact: Artifact | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # secrets: never logged
    service: str | None = None
    check: Check | None = None
    memory: int = DEFAULT_MEMORY
    cpu: int | None = None  # milliCPU
    attach: bool = False
    stop_timeout: int = DEFAULT_STOP_TIMEOUT
    meta: Mapping[str, str] = field(default_factory=dict)
    app_mode: str = "artifact"

    @property
    def cpu_weight(self) -> int | None:
        """``CPUWeight=`` for the milliCPU limit: round(milli/10), half up, within 1-10000."""
        if self.cpu is None:
            return None
        return max(1, min(10_000, (self.cpu + 5) // 10))

    @property
    def log_identifier(self) -> str:
        return f"{self.app_name or 'flynn'}-{self.type or 'job'}"

    def to_record(self) -> dict[str, Any]:
        """The spec without its env (persisted records never hold secrets)."""
        return {
            "id": self.id,
            "args": list(self.args),
            "app_id": self.app_id,
            "app_name": self.app_name,
            "release_id": self.release_id,
            "type": self.type,
            "artifact": self.artifact.to_json() if self.artifact else None,
            "service": self.service,
            "check": self.check.to_json() if self.check else None,
            "memory": self.memory,
            "cpu": self.cpu,
            "attach": self.attach,
            "stop_timeout": self.stop_timeout,
            "meta": dict(self.meta),
            "app_mode": self.app_mode,
        }

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> JobSpec:
        art = data.get("artifact")
        chk = data.get("check")
        return cls(
            id=data["id"],
            args=tuple(data["args"]),
            app_id=data.get("app_id"),
            app_name=data.get("app_name"),
            release_id=data.get("release_id"),
            type=data.get("type"),
            artifact=Artifact(art["id"], art["uri"], art.get("sha256"), art.get("type", "tarball"))
            if art
            else None,
            service=data.get("service"),
            check=Check(chk["type"], chk.get("path", "/"), chk.get("status", 200), chk.get("timeout", 60))
            if chk
            else None,
            memory=int(data.get("memory", DEFAULT_MEMORY)),
            cpu=data.get("cpu"),
            attach=bool(data.get("attach", False)),
            stop_timeout=int(data.get("stop_timeout", DEFAULT_STOP_TIMEOUT)),
            meta=dict(data.get("meta") or {}),
            app_mode=str(data.get("app_mode", "artifact")),
        )


# -- parsing -----------------------------------------------------------------------------------


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _opt_str(body: Mapping[str, Any], name: str, pattern: re.Pattern[str], what: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise SpecError(f"{name} {_short(value)} is not a valid {what}", field=name)
    return value


def _int(value: object, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{name} must be an integer, not {_short(value)}", field=name)
    if not lo <= value <= hi:
        raise SpecError(f"{name} {value} is outside {lo}-{hi}", field=name)
    return value


def _text(value: object, name: str, limit: int, field: str | None = None) -> str:
    field = field or name
    if not isinstance(value, str):
        shown = "a non-string" if field == "env" else _short(value)  # never echo a secret
        raise SpecError(f"{name} must be a string, not {shown}", field=field)
    if "\0" in value:
        raise SpecError(f"{name} contains a NUL byte", field=field)
    if len(value.encode()) > limit:
        raise SpecError(f"{name} is longer than {limit} bytes", field=field)
    return value


def parse_job_id(job_id: object, host_id: str) -> str:
    """A job id is ``HOSTID-SUFFIX`` for this host (409 for another host's id)."""
    if not isinstance(job_id, str):
        raise SpecError(f"id must be a string, not {_short(job_id)}", field="id")
    host, sep, suffix = job_id.partition("-")
    if not sep or not JOB_SUFFIX_RE.match(suffix) or not host:
        raise SpecError(
            f"invalid job id {_short(job_id)}: HOSTID-ID with 1-64 letters, digits or '-' after the dash",
            field="id",
        )
    if host != host_id:
        raise SpecError(f"job id {job_id!r} belongs to host {host!r}, this is {host_id!r}", 409, "id")
    return job_id


def _artifact(value: object) -> Artifact | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SpecError("artifact must be an object or null", field="artifact")
    unknown = sorted(set(value) - ARTIFACT_FIELDS)
    if unknown:
        raise SpecError(f"unknown artifact field {unknown[0]!r}", field="artifact")
    art_id = value.get("id")
    if not isinstance(art_id, str) or not OBJECT_ID_RE.match(art_id):
        raise SpecError(f"artifact.id {_short(art_id)} is not a valid id", field="artifact.id")
    kind = value.get("type", "tarball")
    if kind != "tarball":
        raise SpecError(
            f"artifact.type {_short(kind)} is not supported (only tarball)", field="artifact.type"
        )
    uri = value.get("uri")
    if not isinstance(uri, str) or len(uri) > MAX_URI or not re.match(r"^https?://[^\s/?#]+", uri):
        raise SpecError(f"artifact.uri {_short(uri)} is not an http(s) URL", field="artifact.uri")
    if any(c.isspace() or ord(c) < 32 for c in uri):
        raise SpecError("artifact.uri contains whitespace or control characters", field="artifact.uri")
    sha = value.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not SHA256_RE.match(sha.lower())):
        raise SpecError(f"artifact.sha256 {_short(sha)} is not 64 hex digits", field="artifact.sha256")
    return Artifact(art_id, uri, sha.lower() if isinstance(sha, str) else None)


def _args(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise SpecError("args must be a non-empty list of strings", field="args")
    if len(value) > MAX_ARGS:
        raise SpecError(f"args has more than {MAX_ARGS} elements", field="args")
    args = tuple(_text(a, "args", MAX_ARG) for a in value)
    if not args[0]:
        raise SpecError("args[0] (the command) is empty", field="args")
    return args


def _env(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError("env must be an object of strings", field="env")
    if len(value) > MAX_ENV:
        raise SpecError(f"env has more than {MAX_ENV} variables", field="env")
    env: dict[str, str] = {}
    for name, val in value.items():
        if not ENV_NAME_RE.match(name):
            raise SpecError(f"invalid env name {_short(name)}", field="env")
        if name in RESERVED_ENV:
            raise SpecError(f"env {name} is set by the host and may not be given", field="env")
        env[name] = _text(val, f"env {name}", MAX_ENV_VALUE, "env")  # the value itself is never echoed
    return env


def _check(value: object, service: str | None) -> Check | None:
    if value is None:
        return Check() if service else None
    if not isinstance(value, dict):
        raise SpecError("check must be an object", field="check")
    unknown = sorted(set(value) - {"type", "path", "status", "timeout"})
    if unknown:
        raise SpecError(f"unknown check field {unknown[0]!r}", field="check")
    kind = value.get("type", "tcp")
    if kind not in ("tcp", "http"):
        raise SpecError(f"check.type {_short(kind)} is not tcp or http", field="check.type")
    timeout = _int(value.get("timeout", DEFAULT_CHECK_TIMEOUT), "check.timeout", 1, MAX_CHECK_TIMEOUT)
    if kind == "tcp":
        if "path" in value or "status" in value:
            raise SpecError("check.path and check.status are for http checks", field="check")
        return Check("tcp", timeout=timeout)
    path = value.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/") or len(path) > 1024:
        raise SpecError(f"check.path {_short(path)} must start with '/'", field="check.path")
    if any(c.isspace() or ord(c) < 32 for c in path):
        raise SpecError("check.path contains whitespace or control characters", field="check.path")
    status = _int(value.get("status", 200), "check.status", 100, 599)
    return Check("http", path, status, timeout)


def _resources(value: object) -> tuple[int, int | None]:
    if value is None:
        return DEFAULT_MEMORY, None
    if not isinstance(value, dict):
        raise SpecError("resources must be an object", field="resources")
    unknown = sorted(set(value) - {"memory", "cpu"})
    if unknown:
        raise SpecError(f"unknown resource {unknown[0]!r} (memory, cpu)", field="resources")
    memory, cpu = DEFAULT_MEMORY, None
    for name in ("memory", "cpu"):
        res = value.get(name)
        if res is None:
            continue
        if not isinstance(res, dict) or set(res) - {"limit"}:
            raise SpecError(f'resources.{name} must be {{"limit": N}}', field=f"resources.{name}")
        limit = res.get("limit")
        if limit is None:
            continue
        if name == "memory":
            memory = _int(limit, "resources.memory.limit", MIN_MEMORY, MAX_MEMORY)
        else:
            cpu = _int(limit, "resources.cpu.limit", MIN_CPU, MAX_CPU)
    return memory, cpu


def _meta(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError("meta must be an object of strings", field="meta")
    if len(value) > MAX_META:
        raise SpecError(f"meta has more than {MAX_META} keys", field="meta")
    out: dict[str, str] = {}
    for key, val in value.items():
        if not META_KEY_RE.match(key):
            raise SpecError(f"invalid meta key {_short(key)}", field="meta")
        out[key] = _text(val, f"meta {key}", MAX_META_VALUE, "meta")
    return out


def _app_mode(value: object, artifact: Artifact | None) -> str:
    if value is None:
        return "artifact"
    if value not in APP_MODES:
        raise SpecError(f"app_mode {_short(value)} is not one of {', '.join(APP_MODES)}", field="app_mode")
    if value == "build" and artifact is not None:
        raise SpecError(
            "a job with app_mode build takes no artifact (its /app starts empty)", field="app_mode"
        )
    return str(value)


def parse_job(body: object, host_id: str, path_id: str | None = None) -> JobSpec:
    """Validate a job config; ``path_id`` is the ``:id`` of the URL (the body's ``id`` must match)."""
    if not isinstance(body, dict):
        raise SpecError("the job config must be a JSON object")
    unknown = sorted(set(body) - TOP_FIELDS)
    if unknown:
        raise SpecError(f"unknown field {unknown[0]!r}", field=unknown[0])
    job_id = body.get("id", path_id)
    if path_id is not None and job_id != path_id:
        raise SpecError(f"id {_short(job_id)} in the body differs from {path_id!r} in the path", field="id")
    job_id = parse_job_id(job_id, host_id)
    service = _opt_str(body, "service", SERVICE_RE, "discoverd service name")
    attach = body.get("attach", False)
    if not isinstance(attach, bool):
        raise SpecError("attach must be true or false", field="attach")
    memory, cpu = _resources(body.get("resources"))
    artifact = _artifact(body.get("artifact"))
    return JobSpec(
        id=job_id,
        args=_args(body.get("args")),
        app_id=_opt_str(body, "app_id", OBJECT_ID_RE, "id"),
        app_name=_opt_str(body, "app_name", APP_NAME_RE, "app name"),
        release_id=_opt_str(body, "release_id", OBJECT_ID_RE, "id"),
        type=_opt_str(body, "type", TYPE_RE, "process type"),
        artifact=artifact,
        env=_env(body.get("env")),
        service=service,
        check=_check(body.get("check"), service),
        memory=memory,
        cpu=cpu,
        attach=attach,
        stop_timeout=_int(
            body.get("stop_timeout", DEFAULT_STOP_TIMEOUT), "stop_timeout", 1, MAX_STOP_TIMEOUT
        ),
        meta=_meta(body.get("meta")),
        app_mode=_app_mode(body.get("app_mode"), artifact),
    )
