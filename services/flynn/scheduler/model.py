"""The scheduler's value types: formations (as the controller expands them), hosts, jobs, actions.

Everything here is immutable and parsed defensively from the JSON the controller and the hosts
answer: a malformed entry raises :class:`ModelError` with a one-line reason, which the callers log
and skip, so one bad record never stops the scheduling of the others.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

JSONDict = dict[str, Any]

# Names the host sets itself in every job's environment; a caller may not send them (docs/host.md).
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

# The scheduler marks the jobs it starts with this meta entry (hosts answer a job's meta). Other
# jobs, such as the one-off jobs the controller starts for ``flynn run``, are not part of any
# formation: the scheduler reports their states but never counts or stops them. For a host answer
# without ``meta`` the controller's default one-off type is the fallback.
SCHEDULER_META = ("flynn-scheduler.formation", "true")
ONE_OFF_TYPE = "run"

DEFAULT_STOP_TIMEOUT = 10


class ModelError(ValueError):
    """A record from the controller or a host is not what the documented API promises."""


class JobState(enum.StrEnum):
    STARTING = "starting"
    UP = "up"
    STOPPING = "stopping"
    DOWN = "down"
    CRASHED = "crashed"
    FAILED = "failed"

    @property
    def live(self) -> bool:
        """Counted towards a formation (``starting`` or ``up``)."""
        return self in (JobState.STARTING, JobState.UP)

    @property
    def final(self) -> bool:
        return self in (JobState.DOWN, JobState.CRASHED, JobState.FAILED)

    @property
    def rank(self) -> int:
        """Jobs only move forward: starting < up < stopping < final."""
        if self.final:
            return 3
        return {JobState.STARTING: 0, JobState.UP: 1, JobState.STOPPING: 2}[self]


class FormationKey(NamedTuple):
    """One process type of one release of one app: the unit that is counted, spread and backed off."""

    app_id: str
    release_id: str
    type: str

    def __str__(self) -> str:
        return f"{self.app_id}/{self.release_id}/{self.type}"


def parse_time(value: Any) -> float | None:
    """An RFC 3339 timestamp (``...Z`` or with an offset) as POSIX seconds, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def _str(data: Mapping[str, Any], name: str, what: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ModelError(f"{what}: {name!r} is missing or not a string")
    return value


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ModelError(f"{what} is not a map of strings")
    return dict(value)


@dataclass(frozen=True)
class ProcessSpec:
    """One entry of a release's ``processes``."""

    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    omni: bool = False
    service: str | None = None
    check: JSONDict | None = None
    resources: JSONDict | None = None

    @classmethod
    def from_json(cls, data: Any, what: str) -> ProcessSpec:
        if not isinstance(data, dict):
            raise ModelError(f"{what} is not an object")
        args = data.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            raise ModelError(f"{what}: args must be a non-empty list of strings")
        service = data.get("service")
        check = data.get("check")
        resources = data.get("resources")
        return cls(
            args=tuple(args),
            env=_str_map(data.get("env"), f"{what}: env"),
            omni=bool(data.get("omni", False)),
            service=service if isinstance(service, str) and service else None,
            check=dict(check) if isinstance(check, dict) else None,
            resources=dict(resources) if isinstance(resources, dict) else None,
        )


@dataclass(frozen=True)
class Formation:
    """An expanded active formation: ``GET /formations?active=true`` (docs/controller.md)."""

    app_id: str
    app_name: str
    release_id: str
    env: Mapping[str, str]
    processes: Mapping[str, ProcessSpec]
    counts: Mapping[str, int]
    artifact: JSONDict | None = None

    @property
    def id(self) -> tuple[str, str]:
        return (self.app_id, self.release_id)

    def key(self, type_: str) -> FormationKey:
        return FormationKey(self.app_id, self.release_id, type_)

    @classmethod
    def from_expanded(cls, data: Any) -> Formation:
        if not isinstance(data, dict):
            raise ModelError("formation is not an object")
        app, release = data.get("app"), data.get("release")
        if not isinstance(app, dict) or not isinstance(release, dict):
            raise ModelError("formation lacks its expanded app or release")
        app_id = _str(app, "id", "formation app")
        release_id = _str(release, "id", f"formation of app {app_id}: release")
        what = f"formation {app_id}/{release_id}"
        raw_counts = data.get("processes")
        if not isinstance(raw_counts, dict):
            raise ModelError(f"{what}: processes is not a map of counts")
        counts: dict[str, int] = {}
        for type_, count in raw_counts.items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ModelError(f"{what}: count of {type_!r} is not a non-negative integer")
            counts[str(type_)] = count
        raw_procs = release.get("processes") or {}
        if not isinstance(raw_procs, dict):
            raise ModelError(f"{what}: release processes is not an object")
        processes = {
            str(name): ProcessSpec.from_json(spec, f"{what}: process {name!r}")
            for name, spec in raw_procs.items()
        }
        artifacts = data.get("artifacts") or []
        artifact: JSONDict | None = None
        if isinstance(artifacts, list) and artifacts:
            first = artifacts[0]
            if not isinstance(first, dict):
                raise ModelError(f"{what}: artifact is not an object")
            artifact = {
                "id": _str(first, "id", f"{what}: artifact"),
                "type": first.get("type", "tarball"),
                "uri": _str(first, "uri", f"{what}: artifact"),
                "sha256": first.get("sha256"),
            }
        name = app.get("name")
        return cls(
            app_id=app_id,
            app_name=name if isinstance(name, str) and name else app_id,
            release_id=release_id,
            env=_str_map(release.get("env"), f"{what}: release env"),
            processes=processes,
            counts=counts,
            artifact=artifact,
        )


@dataclass(frozen=True)
class Host:
    """A host as the scheduler sees it: up in discoverd; ``synced`` once its job list is known."""

    id: str
    addr: str
    synced: bool = False

    @property
    def url(self) -> str:
        return self.addr if self.addr.startswith(("http://", "https://")) else f"http://{self.addr}"


@dataclass(frozen=True)
class Job:
    """A job as its host answers it (``GET /host/jobs``), with the times parsed."""

    id: str
    host_id: str
    app_id: str
    release_id: str
    type: str
    state: JobState
    app_name: str = ""
    created_at: float = 0.0
    up_at: float | None = None
    finished_at: float | None = None
    exit_status: int | None = None
    signal: str | None = None
    error: str | None = None
    args: tuple[str, ...] = ()
    raw: JSONDict = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> FormationKey:
        return FormationKey(self.app_id, self.release_id, self.type)

    @property
    def one_off(self) -> bool:
        """Not started by the scheduler for a formation (see :data:`SCHEDULER_META`)."""
        meta = self.raw.get("meta")
        if isinstance(meta, dict):
            return meta.get(SCHEDULER_META[0]) != SCHEDULER_META[1]
        return self.type == ONE_OFF_TYPE

    def with_state(self, state: JobState, **changes: Any) -> Job:
        raw = dict(self.raw)
        raw["state"] = str(state)
        return dataclasses.replace(self, state=state, raw=raw, **changes)

    @classmethod
    def from_json(cls, data: Any, host_id: str | None = None) -> Job:
        if not isinstance(data, dict):
            raise ModelError("job is not an object")
        job_id = _str(data, "id", "job")
        what = f"job {job_id}"
        try:
            state = JobState(str(data.get("state")))
        except ValueError:
            raise ModelError(f"{what}: unknown state {data.get('state')!r}") from None
        owner = data.get("host_id") or host_id or job_id.partition("-")[0]
        if not isinstance(owner, str):
            raise ModelError(f"{what}: host_id is not a string")
        exit_status = data.get("exit_status")
        args = data.get("args")
        sig, error = data.get("signal"), data.get("error")
        return cls(
            id=job_id,
            host_id=owner,
            app_id=_str(data, "app_id", what),
            release_id=_str(data, "release_id", what),
            type=_str(data, "type", what),
            state=state,
            app_name=str(data.get("app_name") or ""),
            created_at=parse_time(data.get("created_at")) or 0.0,
            up_at=parse_time(data.get("up_at")),
            finished_at=parse_time(data.get("finished_at")),
            exit_status=exit_status if isinstance(exit_status, int) else None,
            signal=str(sig) if sig is not None else None,
            error=str(error) if error is not None else None,
            args=tuple(str(a) for a in args) if isinstance(args, list) else (),
            raw=dict(data),
        )


def job_id_for(host_id: str, uuid: str) -> str:
    """Flynn's job id form: the host id (which has no dash), a dash, a UUID."""
    return f"{host_id}-{uuid}"


def job_config(formation: Formation, type_: str, job_id: str) -> JSONDict:
    """The body of ``PUT /host/jobs/:id`` for one job of ``type_`` of ``formation`` (docs/host.md)."""
    proc = formation.processes[type_]
    env = {**formation.env, **proc.env}
    for name in RESERVED_ENV:
        env.pop(name, None)  # the host sets these itself and refuses them from callers
    config: JSONDict = {
        "id": job_id,
        "app_id": formation.app_id,
        "app_name": formation.app_name,
        "release_id": formation.release_id,
        "type": type_,
        "artifact": dict(formation.artifact) if formation.artifact is not None else None,
        "args": list(proc.args),
        "env": env,
        "service": proc.service,
        "check": dict(proc.check) if proc.check is not None else None,
        "attach": False,
        "stop_timeout": DEFAULT_STOP_TIMEOUT,
        "meta": dict([SCHEDULER_META]),
    }
    if proc.resources is not None:
        config["resources"] = dict(proc.resources)
    return config


# -- actions: what a reconcile pass decides ------------------------------------------------------


@dataclass(frozen=True)
class StartJob:
    job_id: str
    host_id: str
    key: FormationKey
    config: JSONDict = field(compare=False)
    reason: str = ""

    def describe(self, app_name: str = "") -> str:
        app = app_name or self.key.app_id
        return (
            f"start job {self.job_id} on host {self.host_id}: {app} {self.key.type} "
            f"(release {self.key.release_id}){': ' + self.reason if self.reason else ''}"
        )


@dataclass(frozen=True)
class StopJob:
    job_id: str
    host_id: str
    key: FormationKey
    reason: str

    def describe(self, app_name: str = "") -> str:
        app = app_name or self.key.app_id
        return (
            f"stop job {self.job_id} on host {self.host_id}: {app} {self.key.type} "
            f"(release {self.key.release_id}): {self.reason}"
        )


Action = StartJob | StopJob


@dataclass(frozen=True)
class Shortfall:
    """A formation type that wants more jobs than this pass could start, and why."""

    key: FormationKey
    missing: int
    reason: str
