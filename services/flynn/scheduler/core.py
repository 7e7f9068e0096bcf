"""The scheduler's I/O loop around the pure reconcile step, gated by leadership.

:class:`Scheduler` is a two-state machine, ``follower`` and ``leader``. As a follower it holds no
view and acts on nothing; on becoming leader it starts a :class:`LeaderTerm` that reads everything
fresh (nothing is carried over from an earlier term: the hosts and the controller hold the truth)
and cancels it the moment leadership is lost.

A term runs these tasks, all feeding one :class:`~flynn.scheduler.state.SchedulerState`:

* hosts: the discoverd watch of ``flynn-host``; one job-stream task per host that is up;
* formations: read at start, again after every controller event (and stream reconnect), and every
  30 s as a safety net; read failures keep the last formations (nothing is stopped for lack of news);
* reports: job state changes sent to the controller in order, coalesced per job, retried;
* reconcile: one pass at a time, after any change and every 5 s (sooner when a held-back start
  becomes due); each action is logged at INFO and carried out, and its answer fed back into the view.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flynn.common.errors import APIError
from flynn.scheduler.aio import wait_event
from flynn.scheduler.interfaces import (
    ClusterView,
    ControllerView,
    HostDown,
    HostsCurrent,
    HostUp,
    JobSeen,
    JobsStreamLost,
    JobsSynced,
    LeaderGate,
)
from flynn.scheduler.model import Action, Host, JobState, Shortfall, StartJob, StopJob
from flynn.scheduler.reconcile import Plan
from flynn.scheduler.state import JobReport, SchedulerState

log = logging.getLogger("flynn.scheduler")

Clock = Callable[[], float]


@dataclass(frozen=True)
class Settings:
    reconcile_every: float = 5.0
    formations_every: float = 30.0
    refuse_for: float = 10.0
    sync_grace: float = 10.0
    retry_min: float = 0.5
    retry_max: float = 10.0
    max_parallel: int = 8
    term_restart_delay: float = 1.0


class Role(enum.StrEnum):
    FOLLOWER = "follower"
    LEADER = "leader"


def _jitter(delay: float) -> float:
    return delay * (0.5 + random.random())  # noqa: S311 - jitter, not crypto


class Scheduler:
    """Follows leadership; leads through a fresh :class:`LeaderTerm` each time it is leader."""

    def __init__(
        self,
        cluster: ClusterView,
        controller: ControllerView,
        gate: LeaderGate,
        *,
        clock: Clock = time.monotonic,
        settings: Settings | None = None,
        new_uuid: Callable[[], str] | None = None,
        on_role: Callable[[Role], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.controller = controller
        self.gate = gate
        self.clock = clock
        self.settings = settings or Settings()
        self.new_uuid = new_uuid
        self.on_role = on_role
        self.role = Role.FOLLOWER
        self.term: LeaderTerm | None = None
        self.terms = 0

    def _set_role(self, role: Role) -> None:
        self.role = role
        if self.on_role is not None:
            self.on_role(role)

    async def run(self) -> None:
        while True:
            await self.gate.wait_until_leader()
            self.terms += 1
            log.info("became the leader (term %d): reading hosts, jobs and formations fresh", self.terms)
            term = LeaderTerm(self)
            self.term = term
            self._set_role(Role.LEADER)
            term_task = asyncio.get_running_loop().create_task(term.run(), name="scheduler-term")
            lost_task = asyncio.get_running_loop().create_task(
                self.gate.wait_until_follower(), name="scheduler-leadership"
            )
            try:
                done, _ = await asyncio.wait({term_task, lost_task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (term_task, lost_task):
                    task.cancel()
                for task in (term_task, lost_task):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                self.term = None
                self._set_role(Role.FOLLOWER)
            if lost_task in done:
                log.info("no longer the leader: stopped acting")
                continue
            exc = term_task.exception() if not term_task.cancelled() else None
            log.error("leader term ended unexpectedly (%s); starting over", _describe(exc))
            await asyncio.sleep(self.settings.term_restart_delay)

    def status(self) -> dict[str, Any]:
        term = self.term
        info: dict[str, Any] = {"role": str(self.role), "terms": self.terms}
        if term is not None:
            info.update(term.status())
        return info


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


class LeaderTerm:
    """Everything the leader does, from a fresh view, until cancelled."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler
        self.cluster = scheduler.cluster
        self.controller = scheduler.controller
        self.gate = scheduler.gate
        self.clock = scheduler.clock
        self.settings = scheduler.settings
        self.state = SchedulerState(
            started_at=self.clock(),
            refuse_for=self.settings.refuse_for,
            sync_grace=self.settings.sync_grace,
        )
        self._dirty = asyncio.Event()
        self._formations_dirty = asyncio.Event()
        self._reports: OrderedDict[str, JobReport] = OrderedDict()
        self._reports_ready = asyncio.Event()
        self._host_tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._waiting_logged: str | None = None
        self._shortfalls_logged: dict[str, str] = {}
        self.passes = 0
        self.last_plan: Plan | None = None
        self.reports_sent = 0

    # -- life cycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._hosts_loop(), name="scheduler-hosts")
                tg.create_task(self._events_loop(), name="scheduler-events")
                tg.create_task(self._formations_loop(), name="scheduler-formations")
                tg.create_task(self._reports_loop(), name="scheduler-reports")
                tg.create_task(self._reconcile_loop(), name="scheduler-reconcile")
        finally:
            self._tg = None

    def poke(self) -> None:
        """Something changed: run a reconcile pass soon."""
        self._dirty.set()

    def status(self) -> dict[str, Any]:
        st = self.state
        plan = self.last_plan
        return {
            "waiting_for": st.waiting_for(self.clock()),
            "hosts": {
                h.id: {"addr": h.addr, "synced": h.synced}
                for h in sorted(st.hosts.values(), key=lambda h: h.id)
            },
            "formations": len(st.formations),
            "jobs": {
                s.value: sum(1 for r in st.jobs.values() if r.job.state is s) for s in JobState if not s.final
            },
            "passes": self.passes,
            "shortfalls": [
                {"formation": str(f.key), "missing": f.missing, "reason": f.reason}
                for f in (plan.shortfalls if plan else [])
            ],
            "pending_reports": len(self._reports),
        }

    # -- hosts and their jobs --------------------------------------------------------------------

    async def _hosts_loop(self) -> None:
        async for event in self.cluster.watch_hosts():
            now = self.clock()
            if isinstance(event, HostUp):
                if self.state.host_up(event.host_id, event.addr):
                    log.info("host %s is up at %s", event.host_id, event.addr)
                    self._start_host(self.state.hosts[event.host_id])
            elif isinstance(event, HostDown):
                if event.host_id in self.state.hosts:
                    self._stop_host(event.host_id)
                    reports = self.state.host_down(event.host_id, now)
                    log.info("host %s is lost: %d of its jobs are down", event.host_id, len(reports))
                    self._enqueue(reports)
            elif isinstance(event, HostsCurrent):
                self.state.hosts_current()
            self.poke()
        raise RuntimeError("the discoverd watch of flynn-host ended")

    def _start_host(self, host: Host) -> None:
        self._stop_host(host.id)
        if self._tg is None:
            raise RuntimeError("the term is not running")
        task = self._tg.create_task(self._host_jobs(host), name=f"scheduler-jobs-{host.id}")
        self._host_tasks[host.id] = task

    def _stop_host(self, host_id: str) -> None:
        task = self._host_tasks.pop(host_id, None)
        if task is not None:
            task.cancel()

    async def _host_jobs(self, host: Host) -> None:
        """Follow one host's jobs until the host is lost; a failing stream is retried, never fatal."""
        delay = self.settings.retry_min
        while True:
            try:
                async for event in self.cluster.watch_jobs(host):
                    now = self.clock()
                    if isinstance(event, JobSeen):
                        self._job_seen(host.id, event, now)
                    elif isinstance(event, JobsSynced):
                        delay = self.settings.retry_min
                        if not self._host_synced(host.id):
                            log.info("host %s reported its jobs", host.id)
                        await self._look_up(host, self.state.jobs_synced(host.id, event.listed))
                    elif isinstance(event, JobsStreamLost):
                        log.warning("job stream of host %s lost (%s); reconnecting", host.id, event.reason)
                        self.state.host_stream_lost(host.id)
                    self.poke()
                reason = "ended"
            except APIError as exc:
                reason = str(exc)
            log.warning("job stream of host %s failed: %s; retrying", host.id, reason)
            self.state.host_stream_lost(host.id)
            self.poke()
            await asyncio.sleep(_jitter(delay))
            delay = min(delay * 2, self.settings.retry_max)

    async def _look_up(self, host: Host, job_ids: list[str]) -> None:
        """Jobs known on ``host`` that its snapshot did not list: ended unseen, or just started."""
        for job_id in job_ids:
            try:
                job = await self.cluster.get_job(host, job_id)
            except APIError as exc:
                log.warning("cannot look up job %s on host %s (%s)", job_id, host.id, exc)
                continue  # counted as it was; looked up again after the next reconnect
            if job is None:
                log.info("job %s vanished from host %s without a record: down", job_id, host.id)
                self._enqueue(self.state.job_gone(host.id, job_id))
            else:
                self._job_seen(host.id, JobSeen(job), self.clock())

    def _host_synced(self, host_id: str) -> bool:
        host = self.state.hosts.get(host_id)
        return host is not None and host.synced

    def _job_seen(self, host_id: str, event: JobSeen, now: float) -> None:
        job = event.job
        known = self.state.jobs.get(job.id)
        was = known.job.state if known is not None else None
        asked = known is not None and (known.seen_stopping or known.stop_requested)
        reports = self.state.job_update(host_id, job, now)
        self._enqueue(reports)
        if not reports or not job.state.final:
            return
        detail = [f"exit status {job.exit_status}"] if job.exit_status is not None else []
        if job.signal:
            detail.append(f"signal {job.signal}")
        if job.error:
            detail.append(job.error)
        restart_at = self.state.backoff.restart_at(job.key)
        if not job.one_off and not asked and restart_at is not None and restart_at > now:
            detail.append(f"its type is held back {restart_at - now:.0f}s (crash backoff)")
        log.info(
            "job %s of %s %s on host %s is %s%s%s",
            job.id,
            self.state.app_name(job.app_id),
            job.type,
            host_id,
            job.state,
            f" (was {was})" if was is not None else "",
            f": {', '.join(detail)}" if detail else "",
        )

    # -- formations ------------------------------------------------------------------------------

    async def _events_loop(self) -> None:
        delay = self.settings.retry_min
        failing = False
        while True:
            try:
                async for event in self.controller.watch_events():
                    if failing:
                        log.info("controller event stream back")
                    delay, failing = self.settings.retry_min, False
                    log.debug("controller event %s (%s)", event.kind, event.event_id)
                    self._formations_dirty.set()
                reason = "ended"
            except APIError as exc:
                reason = str(exc)
            log.log(
                logging.DEBUG if failing else logging.WARNING, "controller event stream: %s; retrying", reason
            )
            failing = True
            await asyncio.sleep(_jitter(delay))
            delay = min(delay * 2, self.settings.retry_max)

    async def _formations_loop(self) -> None:
        delay = self.settings.retry_min
        failing = False
        while True:
            self._formations_dirty.clear()
            try:
                formations = await self.controller.formations()
            except APIError as exc:
                if not failing:
                    log.warning("cannot read the formations (%s): keeping the last ones, retrying", exc)
                failing = True
                await asyncio.sleep(_jitter(delay))
                delay = min(delay * 2, self.settings.retry_max)
                continue
            if failing:
                log.info("the controller answers again")
            failing = False
            delay = self.settings.retry_min
            if self.state.set_formations(formations):
                summary = ", ".join(
                    f"{f.app_name}@{f.release_id[:8]} "
                    + " ".join(f"{t}={n}" for t, n in sorted(f.counts.items()))
                    for f in sorted(formations, key=lambda f: (f.app_name, f.release_id))
                )
                log.info("%d active formations%s", len(formations), f": {summary}" if summary else "")
                self.poke()
            await wait_event(self._formations_dirty, self.settings.formations_every)

    # -- reports to the controller ---------------------------------------------------------------

    def _enqueue(self, reports: list[JobReport]) -> None:
        for report in reports:
            self._reports[report.job_id] = report  # a newer state replaces an unsent older one
        if self._reports:
            self._reports_ready.set()

    async def _reports_loop(self) -> None:
        delay = self.settings.retry_min
        failing = False
        while True:
            await self._reports_ready.wait()
            while self._reports:
                job_id, report = next(iter(self._reports.items()))
                try:
                    await self.controller.report_job(report)
                except APIError as exc:
                    if exc.status == 0 or exc.status >= 500 or exc.status == 401:
                        if not failing:
                            log.warning("cannot report job states to the controller (%s); retrying", exc)
                        failing = True
                        await asyncio.sleep(_jitter(delay))
                        delay = min(delay * 2, self.settings.retry_max)
                        continue
                    log.warning("the controller refused the report of job %s (%s); dropped", job_id, exc)
                else:
                    if failing:
                        log.info("job state reports reach the controller again")
                    failing = False
                    self.reports_sent += 1
                    delay = self.settings.retry_min
                if self._reports.get(job_id) is report:
                    del self._reports[job_id]
            self._reports_ready.clear()

    # -- reconcile -------------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            self._dirty.clear()
            now = self.clock()
            timeout = self.settings.reconcile_every
            waiting = self.state.waiting_for(now)
            if waiting is not None:
                if waiting != self._waiting_logged:
                    log.info("waiting for %s before acting", waiting)
                    self._waiting_logged = waiting
                grace_left = self.state.started_at + self.state.sync_grace - now
                if grace_left > 0:
                    timeout = min(timeout, grace_left)
            else:
                if self._waiting_logged is not None:
                    log.info("view complete: reconciling")
                    self._waiting_logged = None
                plan = self.state.plan(now, self.s.new_uuid)
                self.last_plan = plan
                self.passes += 1
                self._log_shortfalls(plan.shortfalls)
                await self._apply(plan)
                if plan.wake_at is not None:
                    timeout = min(timeout, max(plan.wake_at - self.clock(), 0.0))
            await wait_event(self._dirty, timeout)

    def _log_shortfalls(self, shortfalls: list[Shortfall]) -> None:
        current = {str(f.key): f"{f.missing} missing: {f.reason}" for f in shortfalls}
        for key, text in current.items():
            if self._shortfalls_logged.get(key) != text:
                log.warning("formation %s is short: %s", key, text)
        for key in self._shortfalls_logged.keys() - current.keys():
            log.info("formation %s is no longer short", key)
        self._shortfalls_logged = current

    async def _apply(self, plan: Plan) -> None:
        if not plan.actions:
            return
        limit = asyncio.Semaphore(self.settings.max_parallel)

        async def one(action: Action) -> None:
            async with limit:
                if not self.gate.is_leader:
                    return  # leadership is being lost: the term is about to be cancelled
                if isinstance(action, StartJob):
                    await self._start(action)
                else:
                    await self._stop(action)

        await asyncio.gather(*(one(a) for a in plan.actions))

    async def _start(self, action: StartJob) -> None:
        host = self.state.hosts.get(action.host_id)
        if host is None:
            return
        log.info("%s", action.describe(self.state.app_name(action.key.app_id)))
        try:
            job = await self.cluster.start_job(host, action.config)
        except APIError as exc:
            log.warning(
                "host %s refused job %s (%s): skipping it for this formation for %gs",
                host.id,
                action.job_id,
                exc,
                self.settings.refuse_for,
            )
            self.state.refuse(host.id, action.key, self.clock())
        else:
            self._enqueue(self.state.job_update(host.id, job, self.clock()))
        self.poke()

    async def _stop(self, action: StopJob) -> None:
        host = self.state.hosts.get(action.host_id)
        if host is None:
            return
        log.info("%s", action.describe(self.state.app_name(action.key.app_id)))
        self.state.stop_requested(action.job_id)
        try:
            job = await self.cluster.stop_job(host, action.job_id)
        except APIError as exc:
            log.warning("cannot stop job %s on host %s (%s); will retry", action.job_id, host.id, exc)
            return
        if job is None:
            self._enqueue(self.state.job_gone(host.id, action.job_id))
        else:
            self._enqueue(self.state.job_update(host.id, job, self.clock()))
        self.poke()
