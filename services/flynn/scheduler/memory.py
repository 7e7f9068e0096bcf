"""In-memory implementations of the scheduler's interfaces, for tests and dry runs.

They keep the documented semantics of the real ones (a host's stream sends a snapshot then
changes, a start of a known id answers the existing job, a stop answers ``stopping``), so the core
can be exercised without any I/O. Every call is recorded in ``calls``.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from flynn.common.errors import APIError
from flynn.scheduler.interfaces import (
    ControllerEvent,
    HostDown,
    HostEvent,
    HostsCurrent,
    HostUp,
    JobSeen,
    JobsEvent,
    JobsStreamLost,
    JobsSynced,
)
from flynn.scheduler.model import Formation, Host, Job, JobState, JSONDict
from flynn.scheduler.state import JobReport

_EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _stamp(seconds: float) -> str:
    return (_EPOCH + datetime.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def expanded(
    app_id: str,
    release_id: str,
    counts: dict[str, int],
    *,
    processes: dict[str, JSONDict] | None = None,
    env: dict[str, str] | None = None,
    app_name: str | None = None,
    artifact_uri: str | None = "http://blobstore.test/slug.tgz",
) -> JSONDict:
    """An expanded formation as ``GET /formations?active=true`` answers it (docs/controller.md).
    Process types default to ``{"args": ["/bin/app", TYPE]}`` for every counted type."""
    procs = processes if processes is not None else {t: {"args": ["/bin/app", t]} for t in counts}
    artifacts: list[JSONDict] = (
        [{"id": f"art-{release_id}", "type": "tarball", "uri": artifact_uri, "sha256": None, "meta": {}}]
        if artifact_uri
        else []
    )
    return {
        "app": {"id": app_id, "name": app_name or f"name-{app_id}", "meta": {}, "system": False},
        "release": {
            "id": release_id,
            "app_id": app_id,
            "artifacts": [a["id"] for a in artifacts],
            "env": dict(env or {}),
            "meta": {},
            "processes": procs,
        },
        "artifacts": artifacts,
        "processes": dict(counts),
        "updated_at": _stamp(0),
    }


@dataclass
class MemoryHost:
    id: str
    addr: str
    jobs: dict[str, JSONDict] = field(default_factory=dict)
    refuse: APIError | None = None  # raised by start_job while set
    history: dict[str, JSONDict] = field(default_factory=dict)  # finished jobs
    streams: list[asyncio.Queue[JobsEvent]] = field(default_factory=list)


class MemoryCluster:
    """Hosts and jobs in memory. ``auto_down``: a stopped job goes ``down`` right after ``stopping``."""

    def __init__(self, *, auto_down: bool = True) -> None:
        self.hosts: dict[str, MemoryHost] = {}
        self.auto_down = auto_down
        self.calls: list[tuple[str, str, str]] = []  # (start|stop, host id, job id)
        self._host_watchers: list[asyncio.Queue[HostEvent]] = []
        self._tick = itertools.count(1)

    # -- test controls ---------------------------------------------------------------------------

    def add_host(self, host_id: str, addr: str | None = None) -> MemoryHost:
        host = MemoryHost(host_id, addr or f"{host_id}.test:1113")
        self.hosts[host_id] = host
        for q in self._host_watchers:
            q.put_nowait(HostUp(host.id, host.addr))
        return host

    def lose_host(self, host_id: str) -> None:
        host = self.hosts.pop(host_id)
        for stream in host.streams:
            stream.put_nowait(JobsStreamLost("host lost"))
        for watcher in self._host_watchers:
            watcher.put_nowait(HostDown(host_id))

    def break_stream(self, host_id: str, during: Callable[[], object] | None = None) -> None:
        """The host's job streams break and reconnect: a lost marker, then (after ``during``, whose
        changes nobody sees) a fresh snapshot."""
        host = self.hosts[host_id]
        streams, host.streams = host.streams, []
        for q in streams:
            q.put_nowait(JobsStreamLost("connection reset"))
        if during is not None:
            during()
        for q in streams:
            self._snapshot_into(host, q)
        host.streams.extend(streams)

    def set_state(self, job_id: str, state: JobState, **fields: Any) -> JSONDict:
        host = self.hosts[job_id.partition("-")[0]]
        job = host.jobs[job_id]
        job["state"] = str(state)
        stamp = _stamp(next(self._tick))
        if state is JobState.UP:
            job["up_at"] = stamp
        if state.final:
            job["finished_at"] = stamp
        job.update(fields)
        self._emit(host, job)
        if state.final:
            host.history[job_id] = host.jobs.pop(job_id)
        return dict(job)

    def add_job(self, host_id: str, job: JSONDict) -> None:
        """A job that exists on a host without the scheduler having started it."""
        host = self.hosts[host_id]
        host.jobs[job["id"]] = dict(job)
        self._emit(host, host.jobs[job["id"]])

    def live_jobs(self, host_id: str | None = None) -> list[JSONDict]:
        out: list[JSONDict] = []
        for host in self.hosts.values():
            if host_id is not None and host.id != host_id:
                continue
            out.extend(j for j in host.jobs.values() if JobState(j["state"]).live)
        return sorted(out, key=lambda j: str(j["id"]))

    # -- ClusterView -----------------------------------------------------------------------------

    async def watch_hosts(self) -> AsyncIterator[HostEvent]:
        q: asyncio.Queue[HostEvent] = asyncio.Queue()
        for host in self.hosts.values():
            q.put_nowait(HostUp(host.id, host.addr))
        q.put_nowait(HostsCurrent())
        self._host_watchers.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._host_watchers.remove(q)

    async def watch_jobs(self, host: Host) -> AsyncIterator[JobsEvent]:
        mem = self.hosts.get(host.id)
        if mem is None:
            raise APIError(0, f"cannot reach host {host.id}")
        q: asyncio.Queue[JobsEvent] = asyncio.Queue()
        self._snapshot_into(mem, q)
        mem.streams.append(q)
        try:
            while True:
                event = await q.get()
                yield event
                if isinstance(event, JobsStreamLost) and event.reason == "host lost":
                    return
        finally:
            if q in mem.streams:
                mem.streams.remove(q)

    async def start_job(self, host: Host, config: JSONDict) -> Job:
        mem = self.hosts.get(host.id)
        if mem is None:
            raise APIError(0, f"cannot reach host {host.id}")
        self.calls.append(("start", host.id, config["id"]))
        if mem.refuse is not None:
            raise mem.refuse
        if config["id"] in mem.jobs:
            return Job.from_json(mem.jobs[config["id"]], host.id)
        if not str(config["id"]).startswith(host.id + "-"):
            raise APIError(409, "job id is not of this host")
        job = {
            "id": config["id"],
            "host_id": host.id,
            "app_id": config["app_id"],
            "app_name": config.get("app_name", ""),
            "release_id": config["release_id"],
            "type": config["type"],
            "state": "starting",
            "args": list(config.get("args", [])),
            "meta": dict(config.get("meta") or {}),
            "created_at": _stamp(next(self._tick)),
            "config": config,
        }
        mem.jobs[job["id"]] = job
        self._emit(mem, job)
        return Job.from_json(job, host.id)

    async def stop_job(self, host: Host, job_id: str) -> Job | None:
        mem = self.hosts.get(host.id)
        if mem is None:
            raise APIError(0, f"cannot reach host {host.id}")
        self.calls.append(("stop", host.id, job_id))
        job = mem.jobs.get(job_id)
        if job is None:
            return None
        answer = Job.from_json(self.set_state(job_id, JobState.STOPPING), host.id)
        if self.auto_down:
            self.set_state(job_id, JobState.DOWN)
        return answer

    async def get_job(self, host: Host, job_id: str) -> Job | None:
        mem = self.hosts.get(host.id)
        if mem is None:
            raise APIError(0, f"cannot reach host {host.id}")
        job = mem.jobs.get(job_id) or mem.history.get(job_id)
        return Job.from_json(dict(job), host.id) if job is not None else None

    # -- internals -------------------------------------------------------------------------------

    def _snapshot_into(self, host: MemoryHost, q: asyncio.Queue[JobsEvent]) -> None:
        listed = []
        for job in host.jobs.values():
            if not JobState(job["state"]).final:
                q.put_nowait(JobSeen(Job.from_json(dict(job), host.id)))
                listed.append(str(job["id"]))
        q.put_nowait(JobsSynced(frozenset(listed)))

    def _emit(self, host: MemoryHost, job: JSONDict) -> None:
        for q in host.streams:
            q.put_nowait(JobSeen(Job.from_json(dict(job), host.id)))


class MemoryController:
    """Formations and job reports in memory; ``fail`` makes every call raise it."""

    def __init__(self) -> None:
        self.expanded: list[JSONDict] = []
        self.reports: list[JobReport] = []
        self.fail: APIError | None = None
        self.reads = 0
        self._watchers: list[asyncio.Queue[ControllerEvent]] = []
        self._event_id = itertools.count(1)

    def set_formations(self, expanded: list[JSONDict]) -> None:
        self.expanded = [dict(f) for f in expanded]
        self.emit("formation")

    def emit(self, kind: str) -> None:
        event = ControllerEvent(kind, next(self._event_id))
        for q in self._watchers:
            q.put_nowait(event)

    def jobs(self) -> dict[str, str]:
        """The latest reported state of every job."""
        return {r.job_id: r.state for r in self.reports}

    async def formations(self) -> list[Formation]:
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        return [Formation.from_expanded(f) for f in self.expanded]

    async def watch_events(self) -> AsyncIterator[ControllerEvent]:
        if self.fail is not None:
            raise self.fail
        q: asyncio.Queue[ControllerEvent] = asyncio.Queue()
        q.put_nowait(ControllerEvent("connected"))
        self._watchers.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._watchers.remove(q)

    async def report_job(self, report: JobReport) -> None:
        if self.fail is not None:
            raise self.fail
        self.reports.append(report)


class MemoryGate:
    """Leadership set by hand."""

    def __init__(self, leader: bool = False) -> None:
        self._leader = leader
        self._changed = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self._leader

    def set_leader(self, leader: bool) -> None:
        self._leader = leader
        self._changed.set()

    async def _wait_for(self, leader: bool) -> None:
        while self._leader != leader:
            self._changed.clear()
            await self._changed.wait()

    async def wait_until_leader(self) -> None:
        await self._wait_for(True)

    async def wait_until_follower(self) -> None:
        await self._wait_for(False)
