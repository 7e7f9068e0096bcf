"""The job record and its state machine.

::

    starting --> up --> stopping --> down
       |  \\       \\
       |   \\       +--> down (exited 0) / crashed (exited non-zero, or an unrequested signal)
       |    +--> stopping
       +--> down / crashed (exited before it was up) / failed (could not be started)

``down``, ``crashed`` and ``failed`` are final: a job never leaves them. Every change of state goes
through :meth:`JobRecord.transition`, which refuses a transition not in :data:`TRANSITIONS`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from flynn.host.jobs.spec import JobSpec


class JobState(StrEnum):
    STARTING = "starting"
    UP = "up"
    STOPPING = "stopping"
    DOWN = "down"
    CRASHED = "crashed"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({JobState.DOWN, JobState.CRASHED, JobState.FAILED})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.STARTING: frozenset(
        {JobState.UP, JobState.STOPPING, JobState.DOWN, JobState.CRASHED, JobState.FAILED}
    ),
    JobState.UP: frozenset({JobState.STOPPING, JobState.DOWN, JobState.CRASHED}),
    JobState.STOPPING: frozenset({JobState.DOWN}),
    JobState.DOWN: frozenset(),
    JobState.CRASHED: frozenset(),
    JobState.FAILED: frozenset(),
}


class TransitionError(RuntimeError):
    """A state change the state machine does not allow (a bug, never bad input)."""


def rfc3339(ts: float | None = None) -> str:
    """``2026-12-01T07:03:44.123Z`` (UTC, milliseconds), the form every Flynn API answers."""
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def unit_name(job_id: str) -> str:
    return f"flynn-job-{job_id}.service"


@dataclass
class JobRecord:
    """What the host knows of one job. Persisted (without env) in ``/var/lib/flynn/jobs/<id>.json``."""

    spec: JobSpec
    host_id: str
    state: JobState = JobState.STARTING
    port: int | None = None
    exit_status: int | None = None
    signal: str | None = None
    error: str | None = None
    created_at: str = field(default_factory=rfc3339)
    started_at: str | None = None
    up_at: str | None = None
    finished_at: str | None = None
    # host-internal, not answered by the API
    unit_started: bool = False  # StartTransientUnit was accepted: a unit exists (or existed)
    stop_requested: bool = False
    signals_sent: list[str] = field(default_factory=list)
    artifact_dir: str | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def unit(self) -> str:
        return unit_name(self.spec.id)

    @property
    def final(self) -> bool:
        return self.state.final

    def transition(self, new: JobState, **changes: Any) -> None:
        """Move to ``new`` (raising :class:`TransitionError` if not allowed) and set ``changes``."""
        if new is not self.state and new not in TRANSITIONS[self.state]:
            raise TransitionError(f"job {self.id}: {self.state} -> {new} is not allowed")
        for key, value in changes.items():
            if not hasattr(self, key) or key in ("spec", "state", "host_id"):
                raise TransitionError(f"job {self.id}: unknown field {key}")
            setattr(self, key, value)
        if new is JobState.UP and self.up_at is None:
            self.up_at = rfc3339()
        if new.final and self.finished_at is None:
            self.finished_at = rfc3339()
        self.state = new

    def to_api(self) -> dict[str, Any]:
        """The job as the API answers it (docs/host.md); never the env."""
        s = self.spec
        return {
            "id": s.id,
            "host_id": self.host_id,
            "app_id": s.app_id,
            "app_name": s.app_name,
            "release_id": s.release_id,
            "type": s.type,
            "state": str(self.state),
            "port": self.port,
            "unit": self.unit,
            "args": list(s.args),
            "service": s.service,
            "artifact": s.artifact.to_json() if s.artifact else None,
            "attach": s.attach,
            "app_mode": s.app_mode,
            "meta": dict(s.meta),
            "exit_status": self.exit_status,
            "signal": self.signal,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "up_at": self.up_at,
            "finished_at": self.finished_at,
        }

    def to_record(self) -> dict[str, Any]:
        """Everything needed to follow the job after a daemon restart, without the env."""
        data = asdict(self)
        data["spec"] = self.spec.to_record()
        data["state"] = str(self.state)
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> JobRecord:
        fields = dict(data)
        spec = JobSpec.from_record(fields.pop("spec"))
        state = JobState(fields.pop("state"))
        known = {f for f in cls.__dataclass_fields__ if f not in ("spec", "state")}
        return cls(spec=spec, state=state, **{k: v for k, v in fields.items() if k in known})
