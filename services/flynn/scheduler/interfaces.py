"""The three small interfaces the scheduler core talks to (a DCS-like abstraction, as in Patroni).

* :class:`ClusterView` — the hosts and their jobs: which hosts are up (discoverd), each host's job
  stream, and starting/stopping jobs on a host. Real: :mod:`flynn.scheduler.cluster`.
* :class:`ControllerView` — the formations and the job records: the active formations, a stream
  telling when to re-read them, and job state reports. Real: :mod:`flynn.scheduler.controller`.
* :class:`LeaderGate` — whether this instance may act. Real: a discoverd registration.

In-memory implementations for tests are in :mod:`flynn.scheduler.memory`. Every failure of a real
implementation is an :class:`~flynn.common.errors.APIError` (``status`` 0: unreachable).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from flynn.scheduler.model import Formation, Host, Job, JSONDict
from flynn.scheduler.state import JobReport

# -- hosts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostUp:
    """A host is up in discoverd (new, or its address changed)."""

    host_id: str
    addr: str


@dataclass(frozen=True)
class HostDown:
    """A host's discoverd instance went down (heartbeats stopped for the TTL): the host is lost."""

    host_id: str


@dataclass(frozen=True)
class HostsCurrent:
    """Every host that is up has been announced (sent again after a reconnect)."""


HostEvent = HostUp | HostDown | HostsCurrent

# -- a host's jobs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSeen:
    """A job as the host answered it: in a snapshot, as a change, or as the final state of a job
    that ended while the stream was disconnected."""

    job: Job


@dataclass(frozen=True)
class JobsSynced:
    """The host's snapshot is complete: ``listed`` are the ids it reported since the stream
    (re)connected. From here on, every change is streamed."""

    listed: frozenset[str]


@dataclass(frozen=True)
class JobsStreamLost:
    """The stream broke; the view reconnects by itself (with backoff)."""

    reason: str


JobsEvent = JobSeen | JobsSynced | JobsStreamLost


class ClusterView(Protocol):
    def watch_hosts(self) -> AsyncIterator[HostEvent]:
        """Hosts from discoverd, for as long as the caller iterates (reconnecting by itself)."""
        ...

    def watch_jobs(self, host: Host) -> AsyncIterator[JobsEvent]:
        """One host's jobs: on each (re)connect every non-final job, then :class:`JobsSynced`,
        then each change; :class:`JobsStreamLost` when the stream breaks."""
        ...

    async def start_job(self, host: Host, config: JSONDict) -> Job:
        """``PUT /host/jobs/:id``; a job the host already has (same id) is answered, not an error."""
        ...

    async def stop_job(self, host: Host, job_id: str) -> Job | None:
        """``DELETE /host/jobs/:id``; None when the host does not know the job."""
        ...

    async def get_job(self, host: Host, job_id: str) -> Job | None:
        """``GET /host/jobs/:id``; None when the host does not know the job."""
        ...


# -- the controller ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ControllerEvent:
    """``connected``: the event stream (re)connected; otherwise a controller event's object type
    (``formation``, ``app_deletion``). Each is a reason to re-read the formations."""

    kind: str
    event_id: int | None = None
    app_id: str | None = None


class ControllerView(Protocol):
    async def formations(self) -> list[Formation]:
        """The expanded active formations (malformed ones left out, with a warning)."""
        ...

    def watch_events(self) -> AsyncIterator[ControllerEvent]:
        """Formation and app deletion events, resuming across reconnects."""
        ...

    async def report_job(self, report: JobReport) -> None:
        """``PUT /apps/:app/jobs/:id``."""
        ...


# -- leadership ----------------------------------------------------------------------------------


class LeaderGate(Protocol):
    @property
    def is_leader(self) -> bool: ...

    async def wait_until_leader(self) -> None: ...

    async def wait_until_follower(self) -> None:
        """Return once this instance is no longer the leader."""
        ...
