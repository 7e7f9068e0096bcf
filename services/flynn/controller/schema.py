"""Validation of every request body and parameter (docs/controller.md, "Resources").

Each function takes parsed JSON and returns clean, typed values or raises :class:`Invalid` naming
the field (``processes.web.args``). Nothing here touches the database: a request is validated
whole before its transaction starts, so a bad request changes nothing.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urlsplit

from aiohttp import web

from flynn.common.web import read_json
from flynn.controller.errors import Invalid, NotFound

APP_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
META_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROC_TYPE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,29})$")
SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # discoverd's service names
HOST_ID_RE = re.compile(r"^[A-Za-z0-9]{1,63}$")
JOB_ID_RE = re.compile(
    r"^([A-Za-z0-9]{1,63})-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"
)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

STRATEGIES = ("all-at-once", "one-by-one")
JOB_STATES = ("pending", "starting", "up", "stopping", "down", "crashed", "failed")
FINAL_STATES = ("down", "crashed", "failed")
LIVE_STATES = ("pending", "starting", "up", "stopping")
ARTIFACT_TYPES = ("tarball",)
OBJECT_TYPES = (
    "app",
    "app_deletion",
    "artifact",
    "release",
    "formation",
    "job",
    "deployment",
    "key",
    "app_release",
    "route",
    "sink",
)
# set by the host for every job (docs/host.md): a release or a job may not set them
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

MAX_META_KEYS = 64
MAX_META_VALUE = 4096
MAX_ENV_VARS = 256
MAX_ENV_VALUE = 32 * 1024
MAX_PROCESS_TYPES = 100
MAX_ARGS = 1000
MAX_ARG_LEN = 64 * 1024
MAX_ARTIFACTS = 100
MAX_URI = 2048
MAX_COUNT = 1000
MIN_MEMORY = 4 * 1024 * 1024
MAX_MEMORY = 1 << 50
DEFAULT_MEMORY = 1 << 30
MAX_CPU = 100_000
MAX_SIZE = (1 << 63) - 1
INT32 = (1 << 31) - 1
MAX_TEXT = 4096
DEFAULT_DEPLOY_TIMEOUT = 120


def fail(field_name: str, message: str) -> NoReturn:
    raise Invalid(f"{field_name}: {message}" if field_name else message, field=field_name or None)


# -- the body as a whole -------------------------------------------------------------------------


async def read_body(request: web.Request) -> Any:
    """The JSON body (400/413/415 from flynn.common.http.read_json), checked for text PostgreSQL
    cannot store (NUL, lone surrogates) anywhere in it."""
    body = await read_json(request)
    check_text(body, "")
    return body


def check_text(value: Any, where: str, depth: int = 0) -> None:
    if depth > 32:
        fail(where, "nested too deeply")
    if isinstance(value, str):
        _clean_str(value, where)
    elif isinstance(value, dict):
        for k, v in value.items():
            _clean_str(k, where or "body")
            check_text(v, f"{where}.{k}" if where else k, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_text(v, f"{where}[{i}]" if where else f"[{i}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        fail(where, "numbers must be finite")


def _clean_str(value: str, where: str) -> None:
    if "\x00" in value:
        fail(where, "contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        fail(where, "is not valid UTF-8 (lone surrogate)")


def obj(value: Any, where: str, allowed: set[str] | frozenset[str] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail(where, f"must be a JSON object, not {type_name(value)}")
    if allowed is not None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            name = f"{where}.{unknown[0]}" if where else unknown[0]
            fail(name, "unknown field")
    return value


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    names = ((bool, "a boolean"), (int, "a number"), (float, "a number"), (str, "a string"), (list, "a list"))
    for kind, name in names:
        if isinstance(value, kind):
            return name
    return "an object" if isinstance(value, dict) else type(value).__name__


def string(
    value: Any, where: str, *, max_len: int = MAX_TEXT, pattern: re.Pattern[str] | None = None, what: str = ""
) -> str:
    if not isinstance(value, str):
        fail(where, f"must be a string, not {type_name(value)}")
    if len(value) > max_len:
        fail(where, f"longer than {max_len} characters")
    if pattern is not None and not pattern.fullmatch(value):
        fail(where, f"{value[:80]!r} is not {what or 'valid'}")
    return value


def integer(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(where, f"must be an integer, not {type_name(value)}")
    if not lo <= value <= hi:
        fail(where, f"{value if abs(value) < 10**12 else 'value'} is outside {lo}-{hi}")
    return value


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        fail(where, f"must be true or false, not {type_name(value)}")
    return value


def uuid_str(value: Any, where: str) -> str:
    text = string(value, where, max_len=36)
    if not UUID_RE.fullmatch(text):
        fail(where, f"{text[:40]!r} is not a lower-case UUID")
    return text


def new_id() -> str:
    return str(uuid.uuid4())


def str_map(
    value: Any,
    where: str,
    *,
    key_re: re.Pattern[str],
    key_what: str,
    max_keys: int,
    max_value: int,
    reserved: frozenset[str] = frozenset(),
) -> dict[str, str]:
    data = obj(value, where)
    if len(data) > max_keys:
        fail(where, f"more than {max_keys} entries")
    out: dict[str, str] = {}
    for k, v in data.items():
        name = f"{where}.{k}"
        if not key_re.fullmatch(k):
            fail(name, f"{k[:80]!r} is not {key_what}")
        if k in reserved:
            fail(name, f"{k} is set by the platform and cannot be set here")
        if not isinstance(v, str):
            fail(name, f"must be a string, not {type_name(v)}")
        if len(v.encode()) > max_value:
            fail(name, f"longer than {max_value} bytes")
        out[k] = v
    return out


def meta(value: Any, where: str = "meta") -> dict[str, str]:
    return str_map(
        value,
        where,
        key_re=META_KEY_RE,
        key_what="a meta key ([A-Za-z0-9_.-], 1-128)",
        max_keys=MAX_META_KEYS,
        max_value=MAX_META_VALUE,
    )


def env(value: Any, where: str = "env") -> dict[str, str]:
    return str_map(
        value,
        where,
        key_re=ENV_NAME_RE,
        key_what="an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
        max_keys=MAX_ENV_VARS,
        max_value=MAX_ENV_VALUE,
        reserved=RESERVED_ENV,
    )


# -- path and query parameters -------------------------------------------------------------------


def app_ref(ref: str) -> tuple[str, str]:
    """``("id", uuid)`` or ``("name", name)`` for ``/apps/:app``; 404 for anything else."""
    if UUID_RE.fullmatch(ref):
        return "id", ref
    if APP_NAME_RE.fullmatch(ref):
        return "name", ref
    raise NotFound(f"app {ref[:80]!r} not found")


def path_uuid(ref: str, what: str) -> str:
    if not UUID_RE.fullmatch(ref):
        raise NotFound(f"{what} {ref[:80]!r} not found")
    return ref


def path_job_id(ref: str) -> tuple[str, str]:
    m = JOB_ID_RE.fullmatch(ref)
    if m is None:
        raise NotFound(f"job {ref[:120]!r} not found")
    return m.group(1), m.group(2)


def query_bool(query: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    fail(name, f"{raw[:40]!r} is not true or false")


def query_int(query: Mapping[str, str], name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"-?[0-9]{1,19}", raw):
        fail(name, f"{raw[:40]!r} is not an integer")
    return integer(int(raw), name, lo, hi)


# -- apps ----------------------------------------------------------------------------------------


@dataclass
class AppSpec:
    id: str | None = None
    name: str | None = None
    meta: dict[str, str] | None = None
    strategy: str | None = None
    deploy_timeout: int | None = None
    system: bool = False


def _app_fields(body: dict[str, Any], spec: AppSpec) -> AppSpec:
    if "meta" in body:
        spec.meta = meta(body["meta"])
    if "strategy" in body:
        strategy = string(body["strategy"], "strategy", max_len=32)
        if strategy not in STRATEGIES:
            fail("strategy", f"must be one of {', '.join(STRATEGIES)}")
        spec.strategy = strategy
    if "deploy_timeout" in body:
        spec.deploy_timeout = integer(body["deploy_timeout"], "deploy_timeout", 1, 3600)
    return spec


def app_create(value: Any) -> AppSpec:
    body = obj(value, "", {"id", "name", "meta", "strategy", "deploy_timeout", "system"})
    spec = AppSpec()
    if body.get("id") is not None:
        spec.id = uuid_str(body["id"], "id")
    if body.get("name") is not None:
        spec.name = string(
            body["name"],
            "name",
            max_len=63,
            pattern=APP_NAME_RE,
            what="an app name (a DNS label: a-z, 0-9, -)",
        )
    if "system" in body:
        spec.system = boolean(body["system"], "system")
    return _app_fields(body, spec)


def app_update(value: Any) -> AppSpec:
    body = obj(value, "", {"meta", "strategy", "deploy_timeout"})
    return _app_fields(body, AppSpec())


def id_body(value: Any) -> str:
    body = obj(value, "", {"id"})
    if "id" not in body:
        fail("id", "is required")
    return uuid_str(body["id"], "id")


# -- artifacts -----------------------------------------------------------------------------------


@dataclass
class ArtifactSpec:
    id: str
    type: str
    uri: str
    meta: dict[str, str]
    size: int | None
    sha256: str | None


def artifact_create(value: Any) -> ArtifactSpec:
    body = obj(value, "", {"id", "type", "uri", "meta", "size", "sha256"})
    kind = string(body.get("type", "tarball"), "type", max_len=32)
    if kind not in ARTIFACT_TYPES:
        fail("type", f"must be one of {', '.join(ARTIFACT_TYPES)}")
    if "uri" not in body:
        fail("uri", "is required")
    uri = string(body["uri"], "uri", max_len=MAX_URI)
    try:
        parts = urlsplit(uri)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        fail("uri", "is not a valid URL")
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        fail("uri", "must be an http:// or https:// URL with a host")
    if any(c in uri for c in " \t\r\n"):
        fail("uri", "must not contain whitespace")
    size = None if body.get("size") is None else integer(body["size"], "size", 0, MAX_SIZE)
    sha = None
    if body.get("sha256") is not None:
        sha = string(body["sha256"], "sha256", max_len=64, pattern=SHA256_RE, what="64 lower-case hex digits")
    return ArtifactSpec(
        id=uuid_str(body["id"], "id") if body.get("id") is not None else new_id(),
        type=kind,
        uri=uri,
        meta=meta(body.get("meta", {})),
        size=size,
        sha256=sha,
    )


# -- releases ------------------------------------------------------------------------------------


@dataclass
class ReleaseSpec:
    id: str
    app: str  # id or name, resolved by the caller
    artifacts: list[str]
    env: dict[str, str]
    meta: dict[str, str]
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)


PROCESS_FIELDS = frozenset({"args", "env", "omni", "service", "check", "resources"})


def _check(value: Any, where: str) -> dict[str, Any]:
    body = obj(value, where, {"type", "path", "status"})
    kind = string(body.get("type"), f"{where}.type", max_len=8)
    if kind == "tcp":
        if set(body) != {"type"}:
            fail(where, "a tcp check takes no path or status")
        return {"type": "tcp"}
    if kind == "http":
        path = string(body.get("path", "/"), f"{where}.path", max_len=1024)
        if not path.startswith("/") or any(c in path for c in " \t\r\n"):
            fail(f"{where}.path", "must start with / and contain no whitespace")
        status = integer(body.get("status", 200), f"{where}.status", 100, 599)
        return {"type": "http", "path": path, "status": status}
    fail(f"{where}.type", "must be tcp or http")


def _resources(value: Any, where: str) -> dict[str, Any]:
    body = obj(value, where, {"memory", "cpu"})
    out: dict[str, Any] = {"memory": {"limit": DEFAULT_MEMORY}}
    if body.get("memory") is not None:
        mem = obj(body["memory"], f"{where}.memory", {"limit"})
        if "limit" in mem:
            out["memory"] = {"limit": integer(mem["limit"], f"{where}.memory.limit", MIN_MEMORY, MAX_MEMORY)}
    if body.get("cpu") is not None:
        cpu = obj(body["cpu"], f"{where}.cpu", {"limit"})
        if "limit" in cpu:
            out["cpu"] = {"limit": integer(cpu["limit"], f"{where}.cpu.limit", 1, MAX_CPU)}
    return out


def args_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        fail(where, "must be a non-empty list of strings")
    if len(value) > MAX_ARGS:
        fail(where, f"more than {MAX_ARGS} arguments")
    out: list[str] = []
    for i, arg in enumerate(value):
        out.append(string(arg, f"{where}[{i}]", max_len=MAX_ARG_LEN))
    if not out[0]:
        fail(f"{where}[0]", "the command must not be empty")
    return out


def process(value: Any, where: str, app_name: str, ptype: str) -> dict[str, Any]:
    body = obj(value, where, PROCESS_FIELDS)
    if "args" not in body:
        fail(f"{where}.args", "is required")
    out: dict[str, Any] = {
        "args": args_list(body["args"], f"{where}.args"),
        "env": env(body.get("env", {}), f"{where}.env"),
        "omni": boolean(body.get("omni", False), f"{where}.omni"),
    }
    if "service" in body:
        service = body["service"]
        if service is not None:
            service = string(
                service, f"{where}.service", max_len=63, pattern=SERVICE_RE, what="a service name"
            )
    else:
        service = default_service(app_name, ptype)
    out["service"] = service
    if body.get("check") is not None:
        out["check"] = _check(body["check"], f"{where}.check")
    else:
        out["check"] = {"type": "tcp"} if service else None
    out["resources"] = _resources(body.get("resources") or {}, f"{where}.resources")
    return out


def default_service(app_name: str, ptype: str) -> str | None:
    if ptype == "web" or ptype.endswith("-web"):
        name = f"{app_name}-{ptype}"
        return name if SERVICE_RE.fullmatch(name) else None
    return None


def release_create(value: Any) -> tuple[str, dict[str, Any]]:
    """First pass: the app reference, so the caller can find the app name for service defaults."""
    body = obj(value, "", {"id", "app_id", "artifacts", "env", "meta", "processes"})
    if "app_id" not in body:
        fail("app_id", "is required")
    app = string(body["app_id"], "app_id", max_len=63)
    if not (UUID_RE.fullmatch(app) or APP_NAME_RE.fullmatch(app)):
        fail("app_id", "must be an app id or name")
    return app, body


def release_spec(body: dict[str, Any], app: str, app_name: str) -> ReleaseSpec:
    raw_artifacts = body.get("artifacts", [])
    if not isinstance(raw_artifacts, list):
        fail("artifacts", f"must be a list of artifact ids, not {type_name(raw_artifacts)}")
    if len(raw_artifacts) > MAX_ARTIFACTS:
        fail("artifacts", f"more than {MAX_ARTIFACTS} artifacts")
    artifacts = [uuid_str(a, f"artifacts[{i}]") for i, a in enumerate(raw_artifacts)]
    if len(set(artifacts)) != len(artifacts):
        fail("artifacts", "lists an artifact twice")
    procs = obj(body.get("processes", {}), "processes")
    if len(procs) > MAX_PROCESS_TYPES:
        fail("processes", f"more than {MAX_PROCESS_TYPES} process types")
    processes: dict[str, dict[str, Any]] = {}
    for ptype, pdef in procs.items():
        if not PROC_TYPE_RE.fullmatch(ptype):
            fail(f"processes.{ptype}", "is not a process type name ([a-z0-9][a-z0-9-]{0,29})")
        processes[ptype] = process(pdef, f"processes.{ptype}", app_name, ptype)
    return ReleaseSpec(
        id=uuid_str(body["id"], "id") if body.get("id") is not None else new_id(),
        app=app,
        artifacts=artifacts,
        env=env(body.get("env", {})),
        meta=meta(body.get("meta", {})),
        processes=processes,
    )


# -- formations ----------------------------------------------------------------------------------


def formation_processes(value: Any, release_types: set[str]) -> dict[str, int]:
    body = obj(value, "", {"processes"})
    procs = obj(body.get("processes", {}), "processes")
    out: dict[str, int] = {}
    for ptype, count in procs.items():
        where = f"processes.{ptype}"
        if ptype not in release_types:
            fail(where, f"the release has no process type {ptype[:40]!r}")
        out[ptype] = integer(count, where, 0, MAX_COUNT)
    return out


# -- jobs ----------------------------------------------------------------------------------------


@dataclass
class JobReport:
    release_id: str | None
    type: str | None
    state: str
    args: list[str] | None
    exit_status: int | None
    host_error: str | None
    restarts: int | None
    meta: dict[str, str] | None
    present: set[str]
    # identity fields a reporter may repeat (the scheduler sends whole jobs): checked against the path
    app_id: str | None = None
    host_id: str | None = None
    uuid: str | None = None

    def check_identity(self, job_id: str, app_id: str) -> None:
        host, job_uuid = path_job_id(job_id)
        if self.app_id is not None and self.app_id != app_id:
            fail("app_id", f"is {self.app_id}, but the path names app {app_id}")
        if self.host_id is not None and self.host_id != host:
            fail("host_id", f"is {self.host_id}, but job {job_id} is on host {host}")
        if self.uuid is not None and self.uuid != job_uuid:
            fail("uuid", f"is {self.uuid}, but the job id holds {job_uuid}")


def job_put(value: Any) -> JobReport:
    body = obj(
        value,
        "",
        {
            "release_id",
            "type",
            "state",
            "args",
            "exit_status",
            "host_error",
            "restarts",
            "meta",
            "app_id",
            "host_id",
            "uuid",
        },
    )
    if "state" not in body:
        fail("state", "is required")
    state = string(body["state"], "state", max_len=16)
    if state not in JOB_STATES:
        fail("state", f"must be one of {', '.join(JOB_STATES)}")
    ptype = None
    if body.get("type") is not None:
        ptype = string(body["type"], "type", max_len=30, pattern=PROC_TYPE_RE, what="a process type name")
    args = None
    if body.get("args") is not None:
        raw = body["args"]
        if not isinstance(raw, list) or len(raw) > MAX_ARGS:
            fail("args", "must be a list of strings")
        args = [string(a, f"args[{i}]", max_len=MAX_ARG_LEN) for i, a in enumerate(raw)]
    return JobReport(
        release_id=uuid_str(body["release_id"], "release_id") if body.get("release_id") is not None else None,
        type=ptype,
        state=state,
        args=args,
        exit_status=None
        if body.get("exit_status") is None
        else integer(body["exit_status"], "exit_status", -INT32 - 1, INT32),
        host_error=None if body.get("host_error") is None else string(body["host_error"], "host_error"),
        restarts=None if body.get("restarts") is None else integer(body["restarts"], "restarts", 0, INT32),
        meta=None if body.get("meta") is None else meta(body["meta"]),
        present=set(body) - {"app_id", "host_id", "uuid"},
        app_id=None if body.get("app_id") is None else string(body["app_id"], "app_id", max_len=64),
        host_id=None if body.get("host_id") is None else string(body["host_id"], "host_id", max_len=64),
        uuid=None if body.get("uuid") is None else string(body["uuid"], "uuid", max_len=64),
    )


@dataclass
class RunSpec:
    args: list[str]
    release_id: str | None
    env: dict[str, str]
    attach: bool
    type: str
    meta: dict[str, str]


def run_job(value: Any) -> RunSpec:
    body = obj(value, "", {"args", "release_id", "env", "attach", "type", "meta"})
    if "args" not in body:
        fail("args", "is required")
    return RunSpec(
        args=args_list(body["args"], "args"),
        release_id=uuid_str(body["release_id"], "release_id") if body.get("release_id") is not None else None,
        env=env(body.get("env", {})),
        attach=boolean(body.get("attach", False), "attach"),
        type=string(
            body.get("type", "run"), "type", max_len=30, pattern=PROC_TYPE_RE, what="a process type name"
        ),
        meta=meta(body.get("meta", {})),
    )


# -- keys ----------------------------------------------------------------------------------------


def key_create(value: Any) -> str:
    body = obj(value, "", {"key"})
    if "key" not in body:
        fail("key", "is required")
    return string(body["key"], "key", max_len=16 * 1024)
