"""The leader's view of the cluster during one term, updated from its inputs (synchronous, no I/O).

:class:`SchedulerState` is built fresh whenever an instance becomes leader and thrown away when it
stops leading: the hosts and the controller hold the truth, this is only the latest news from them.
Update methods take the (injected) time where it matters and return the job state reports they
imply for the controller; :meth:`SchedulerState.plan` hands a snapshot to the pure reconcile step.

Job updates only ever move a job forward (starting < up < stopping < final), so the snapshot a host
answers and the events of its stream can be merged in any interleaving, and a job that reached a
final state is never brought back by a late or repeated event.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flynn.scheduler.backoff import Backoff
from flynn.scheduler.model import Formation, FormationKey, Host, Job, JobState, JSONDict
from flynn.scheduler.reconcile import Plan, RefusalKey, reconcile, refusal_key

log = logging.getLogger(__name__)

REFUSE_FOR = 10.0  # a host that refused a start is skipped for the formation this long
SYNC_GRACE = 10.0  # after taking over, wait this long at most for every host's job list
FINISHED_MEMORY = 10_000  # finished job ids remembered, so late events do not revive them
HOST_LOST = "host lost"
JOB_VANISHED = "job vanished from its host"


@dataclass(frozen=True)
class JobReport:
    """One ``PUT /apps/:app/jobs/:id`` for the controller."""

    app_id: str
    job_id: str
    body: JSONDict

    @property
    def state(self) -> str:
        return str(self.body.get("state"))


@dataclass
class JobRecord:
    job: Job
    seen_stopping: bool = False
    stop_requested: bool = False
    seen_up_at: float | None = None  # scheduler clock, when first seen up


@dataclass
class SchedulerState:
    started_at: float = 0.0
    refuse_for: float = REFUSE_FOR
    sync_grace: float = SYNC_GRACE
    formations: dict[tuple[str, str], Formation] = field(default_factory=dict)
    formations_loaded: bool = False
    hosts_loaded: bool = False
    hosts: dict[str, Host] = field(default_factory=dict)
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    backoff: Backoff = field(default_factory=Backoff)
    refused: dict[RefusalKey, float] = field(default_factory=dict)
    finished: OrderedDict[str, None] = field(default_factory=OrderedDict)
    reported: dict[str, tuple[str, int | None, str | None]] = field(default_factory=dict)

    # -- formations ------------------------------------------------------------------------------

    def set_formations(self, formations: Iterable[Formation]) -> bool:
        """Replace the formations; True when they changed."""
        fresh = {f.id: f for f in formations}
        changed = not self.formations_loaded or fresh != self.formations
        self.formations = fresh
        self.formations_loaded = True
        return changed

    def app_name(self, app_id: str) -> str:
        for formation in self.formations.values():
            if formation.app_id == app_id:
                return formation.app_name
        for record in self.jobs.values():
            if record.job.app_id == app_id and record.job.app_name:
                return record.job.app_name
        return app_id

    # -- hosts -----------------------------------------------------------------------------------

    def host_up(self, host_id: str, addr: str) -> bool:
        """A host is up in discoverd; True when it is new or moved (its job stream must (re)start)."""
        old = self.hosts.get(host_id)
        if old is not None and old.addr == addr:
            return False
        self.hosts[host_id] = Host(host_id, addr, synced=False)
        return True

    def hosts_current(self) -> None:
        """The discoverd watch has delivered every host that is up."""
        self.hosts_loaded = True

    def host_down(self, host_id: str, now: float) -> list[JobReport]:
        """The host is lost: every job known on it is down at the controller."""
        self.hosts.pop(host_id, None)
        self.refused = {k: v for k, v in self.refused.items() if k[0] != host_id}
        reports: list[JobReport] = []
        for job_id in [j for j, r in self.jobs.items() if r.job.host_id == host_id]:
            # not remembered as finished: if the host comes back with the job running, its
            # snapshot is the truth (and the job counts again, or is stopped as an extra)
            record = self.jobs.pop(job_id)
            lost = record.job.with_state(JobState.DOWN)
            reports.extend(self._report(lost, host_error=HOST_LOST, final=True))
        return reports

    def host_stream_lost(self, host_id: str) -> None:
        """The host's job stream broke: keep its jobs, but place nothing there until it is back."""
        host = self.hosts.get(host_id)
        if host is not None:
            self.hosts[host_id] = Host(host.id, host.addr, synced=False)

    # -- jobs ------------------------------------------------------------------------------------

    def jobs_synced(self, host_id: str, listed: Iterable[str]) -> list[str]:
        """The host's snapshot is complete. Returns the jobs known on it that it did not list: each
        either ended while nobody watched, or was started after the snapshot; the caller looks
        them up (:meth:`job_update` with the answer, :meth:`job_gone` when the host has none)."""
        host = self.hosts.get(host_id)
        if host is None:
            return []
        self.hosts[host_id] = Host(host.id, host.addr, synced=True)
        seen = set(listed)
        return sorted(j for j, r in self.jobs.items() if r.job.host_id == host_id and j not in seen)

    def job_update(self, host_id: str, job: Job, now: float) -> list[JobReport]:
        """A job as its host answered it (stream event, start/stop answer)."""
        if host_id not in self.hosts or job.id in self.finished:
            return []
        if job.host_id != host_id:
            job = dataclasses.replace(job, host_id=host_id)
        record = self.jobs.get(job.id)
        if record is not None and job.state.rank < record.job.state.rank:
            return []  # an older state than the one we know
        if record is None:
            record = JobRecord(job)
            self.jobs[job.id] = record
        record.job = job
        if job.state is JobState.STOPPING:
            record.seen_stopping = True
        if job.state is JobState.UP and record.seen_up_at is None:
            record.seen_up_at = now
        if not job.state.final:
            return self._report(job)
        # a final state: account for crashes, forget the job
        del self.jobs[job.id]
        self._remember_finished(job.id)
        if not job.one_off and self._is_crash(record):
            self.backoff = self.backoff.record_crash(job.key, up_for=self._up_for(record, now), now=now)
        return self._report(job, final=True)

    def job_gone(self, host_id: str, job_id: str) -> list[JobReport]:
        """The host has no record of a job we knew (404): it is reported down."""
        record = self.jobs.get(job_id)
        if record is None or record.job.host_id != host_id:
            return []
        del self.jobs[job_id]
        self._remember_finished(job_id)
        return self._report(record.job.with_state(JobState.DOWN), host_error=JOB_VANISHED, final=True)

    def stop_requested(self, job_id: str) -> None:
        record = self.jobs.get(job_id)
        if record is not None:
            record.stop_requested = True

    def refuse(self, host_id: str, key: FormationKey, now: float) -> None:
        self.refused[refusal_key(host_id, key)] = now + self.refuse_for

    # -- reconcile -------------------------------------------------------------------------------

    def waiting_for(self, now: float) -> str | None:
        """None when the view is complete enough to act on, else what it still waits for."""
        if not self.formations_loaded:
            return "the controller's formations"
        if not self.hosts_loaded:
            return "the list of hosts from discoverd"
        if now - self.started_at < self.sync_grace:
            unsynced = sorted(h.id for h in self.hosts.values() if not h.synced)
            if unsynced:
                return "the job lists of hosts " + ", ".join(unsynced)
        return None

    def plan(self, now: float, new_uuid: Callable[[], str] | None = None) -> Plan:
        self.refused = {k: v for k, v in self.refused.items() if v > now}
        self.backoff = self.backoff.prune(now)
        kwargs = {} if new_uuid is None else {"new_uuid": new_uuid}
        return reconcile(
            list(self.formations.values()),
            list(self.hosts.values()),
            [r.job for r in self.jobs.values()],
            self.backoff,
            now,
            refused=self.refused,
            **kwargs,
        )

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _is_crash(record: JobRecord) -> bool:
        state = record.job.state
        if state in (JobState.CRASHED, JobState.FAILED):
            return True
        # down without having been asked to stop: it exited on its own, which is backed off too
        return state is JobState.DOWN and not (record.seen_stopping or record.stop_requested)

    @staticmethod
    def _up_for(record: JobRecord, now: float) -> float:
        job = record.job
        if job.up_at is not None and job.finished_at is not None:
            return max(job.finished_at - job.up_at, 0.0)
        if record.seen_up_at is not None:
            return max(now - record.seen_up_at, 0.0)
        return 0.0

    def _remember_finished(self, job_id: str) -> None:
        self.finished[job_id] = None
        while len(self.finished) > FINISHED_MEMORY:
            old, _ = self.finished.popitem(last=False)
            self.reported.pop(old, None)

    def _report(self, job: Job, *, host_error: str | None = None, final: bool = False) -> list[JobReport]:
        error = host_error if host_error is not None else job.error
        signature = (str(job.state), job.exit_status, error)
        if not final and self.reported.get(job.id) == signature:
            return []
        if final:
            self.reported.pop(job.id, None)
        else:
            self.reported[job.id] = signature
        body: JSONDict = {
            "id": job.id,
            "uuid": job.id.partition("-")[2],
            "host_id": job.host_id,
            "app_id": job.app_id,
            "release_id": job.release_id,
            "type": job.type,
            "state": str(job.state),
            "args": list(job.args),
            "exit_status": job.exit_status,
            "host_error": error,
        }
        return [JobReport(job.app_id, job.id, body)]
