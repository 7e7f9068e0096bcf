"""The job manager: starts jobs as transient units, follows them from D-Bus, stops and recovers them.

Per job, one *start task* runs the start sequence (each step can fail the job with a reason)::

    fetch artifact -> resolve the command -> [wait for the attach client] -> StartTransientUnit
      -> wait for systemd's start job -> [health check] -> [register in discoverd] -> up

Everything after that is driven by unit changes from D-Bus (:meth:`JobManager.unit_changed`): when
the unit ends, the job's final state comes from ``ExecMainCode``/``ExecMainStatus``/``Result``
(:func:`.units.outcome`), its discoverd registration is removed and its port released.

Stopping deregisters first, then asks systemd to stop the unit (SIGTERM, SIGKILL after the job's
stop timeout, ``KillMode=mixed``). A job that was registered in discoverd gets ``drain_delay``
seconds between the two (``FLYNN_HOST_DRAIN_DELAY``, default 2): the routers drop it on its
``down`` event and let the requests in flight finish before the process is asked to stop.

On daemon start :meth:`JobManager.recover` reads every stored record and every ``flynn-job-*``
unit, so running jobs survive a ``flynn-host`` restart; units with no record are stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal as signals
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flynn.common.errors import APIError
from flynn.host.jobs import health
from flynn.host.jobs.artifacts import ArtifactError, ArtifactStore
from flynn.host.jobs.dbus import NoSuchUnit, SystemdError, UnitBackend
from flynn.host.jobs.events import EventHub
from flynn.host.jobs.ports import PortAllocator, PortsExhausted
from flynn.host.jobs.spec import JobSpec
from flynn.host.jobs.state import JobRecord, JobState, rfc3339, unit_name
from flynn.host.jobs.store import JobStore
from flynn.host.jobs.units import (
    CommandNotFound,
    Outcome,
    Stdio,
    UnitStatus,
    empty_app_dir,
    outcome,
    resolve_command,
    signal_name,
    unit_properties,
)

log = logging.getLogger(__name__)

ATTACH_WAIT = 30.0
START_JOB_TIMEOUT = 120.0
STOP_GRACE = 15.0  # beyond the job's stop timeout before the manager re-reads the unit itself
PRUNE_INTERVAL = 3600.0
ACTIVE_STATES = frozenset({"activating", "active", "deactivating", "reloading"})


class JobError(Exception):
    """A request about a job that cannot be honoured; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str, job: JobRecord | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.job = job


class RegistrationLike(Protocol):
    async def close(self, *, deregister: bool = True) -> None: ...


class Registrar(Protocol):
    """Registers a healthy job in discoverd (the real one: ``flynn.discoverd.client.Client``)."""

    async def register(
        self, service: str, addr: str, *, meta: dict[str, str] | None = None, iid: str | None = None
    ) -> Any: ...


class AttachEndpoint(Protocol):
    """The attach client of a job: gives the job's stdio and learns when the job ended."""

    def stdio(self) -> Stdio: ...

    def started(self) -> None: ...

    def not_started(self, reason: str) -> None: ...


@dataclass
class Runtime:
    """In-memory companion of a live job (never persisted)."""

    props: dict[str, Any] = field(default_factory=dict)
    seen_active: bool = False
    reached_running: bool = False
    task: asyncio.Task[None] | None = None
    registration: RegistrationLike | None = None
    attach: asyncio.Future[AttachEndpoint] | None = None
    fail_reason: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


def parse_signal(value: object) -> int:
    """``SIGUSR1``, ``USR1`` or a number -> the signal number (ValueError for anything else)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= signals.SIGRTMAX:
            return value
        raise ValueError(f"signal {value} is outside 1-{int(signals.SIGRTMAX)}")
    if isinstance(value, str):
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            return int(signals.Signals[name])
        except KeyError:
            pass
    raise ValueError(f"unknown signal {str(value)[:40]!r}")


class JobManager:
    def __init__(
        self,
        *,
        host_id: str,
        addr: str | None,
        backend: UnitBackend,
        store: JobStore,
        artifacts: ArtifactStore,
        ports: PortAllocator | None = None,
        registrar: Registrar | None = None,
        hub: EventHub | None = None,
        check_host: str = "127.0.0.1",
        attach_wait: float = ATTACH_WAIT,
        drain_delay: float = 0.0,
    ) -> None:
        self.host_id = host_id
        self.addr = addr
        self.backend = backend
        self.store = store
        self.artifacts = artifacts
        self.ports = ports or PortAllocator()
        self.registrar = registrar
        self.hub = hub or EventHub()
        self.check_host = check_host
        self.attach_wait = attach_wait
        self.drain_delay = drain_delay  # seconds between deregistration and SIGTERM (registered jobs)
        self.jobs: dict[str, JobRecord] = {}
        self.rt: dict[str, Runtime] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        backend.on_unit_change = self.unit_changed

    # -- queries ------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    def listing(self, *, include_finished: bool = False) -> list[JobRecord]:
        jobs = [j for j in self.jobs.values() if include_finished or not j.final]
        return sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)

    async def wait_final(self, job_id: str) -> JobRecord:
        job = self.jobs[job_id]
        rt = self.rt.get(job_id)
        if not job.final and rt is not None:
            await rt.done.wait()
        return job

    # -- bookkeeping -------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def _changed(self, job: JobRecord) -> None:
        try:
            self.store.save(job)
        except OSError as exc:
            log.error("cannot save the record of job %s: %s", job.id, exc)
        self.hub.publish(job.to_api())

    def _move(self, job: JobRecord, state: JobState, **changes: Any) -> None:
        old = job.state
        job.transition(state, **changes)
        if old is not state:
            log.info("job %s: %s -> %s", job.id, old, state)
        self._changed(job)

    # -- start --------------------------------------------------------------------------------

    async def create(self, spec: JobSpec) -> JobRecord:
        if self._closing:
            raise JobError(503, "the host is shutting down")
        existing = self.jobs.get(spec.id)
        if existing is not None:
            raise JobError(409, f"job {spec.id} already exists", existing)
        try:
            port = self.ports.allocate(spec.id)
        except PortsExhausted as exc:
            raise JobError(503, str(exc)) from None
        job = JobRecord(spec=spec, host_id=self.host_id, port=port)
        rt = Runtime()
        if spec.attach:
            rt.attach = asyncio.get_running_loop().create_future()
        self.jobs[spec.id] = job
        self.rt[spec.id] = rt
        self._changed(job)
        log.info("job %s: starting (%s)", job.id, spec.log_identifier)
        rt.task = self._spawn(self._start(job, rt), f"start-{job.id}")
        return job

    async def _start(self, job: JobRecord, rt: Runtime) -> None:
        """The start sequence; every failure ends in ``failed`` with its reason."""
        try:
            app_dir, exec_path = await self._prepare(job)
            endpoint = await self._wait_attach(rt)
            start_job = await self._start_unit(job, app_dir, exec_path, endpoint)
            result = await self.backend.wait_job(start_job, START_JOB_TIMEOUT)
            if result != "done":
                await self._reread(job)  # the unit's properties say why
                if not job.final:
                    raise _StartFailure(f"systemd could not start the unit (job result: {result})")
                return
            rt.reached_running = True
            await self._become_ready(job, rt)
        except _StartFailure as exc:
            await self._fail(job, rt, str(exc))
        except ArtifactError as exc:
            await self._fail(job, rt, f"artifact: {exc}")
        except CommandNotFound as exc:
            await self._fail(job, rt, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %s: start failed", job.id)
            await self._fail(job, rt, f"internal error: {type(exc).__name__}")

    async def _prepare(self, job: JobRecord) -> tuple[Path, str]:
        """The directory mounted at /app, and the command's path as the job sees it."""
        spec = job.spec
        if spec.artifact is not None:
            app_dir = await self.artifacts.fetch(spec.artifact)
            job.artifact_dir = str(app_dir)
        else:
            app_dir = empty_app_dir(self.artifacts.base)
        return app_dir, resolve_command(spec.args[0], app_dir)

    async def _wait_attach(self, rt: Runtime) -> AttachEndpoint | None:
        if rt.attach is None:
            return None
        try:
            async with asyncio.timeout(self.attach_wait):
                return await rt.attach
        except TimeoutError:
            raise _StartFailure(f"no attach client connected within {self.attach_wait:g}s") from None

    async def _start_unit(
        self, job: JobRecord, app_dir: Path, exec_path: str, endpoint: AttachEndpoint | None
    ) -> str:
        props = unit_properties(
            job.spec,
            port=_port(job),
            app_dir=app_dir,
            exec_path=exec_path,
            stdio=endpoint.stdio() if endpoint else None,
        )
        job.unit_started = True  # before the call: a stop racing with it must stop the unit
        try:
            start_job = await self.backend.start_transient(job.unit, props)
        except SystemdError as exc:
            job.unit_started = False
            raise _StartFailure(f"systemd refused the unit: {exc}") from None
        finally:
            if endpoint is not None:
                if job.unit_started:
                    endpoint.started()
                else:
                    endpoint.not_started("the job could not be started")
        job.started_at = rfc3339()
        self._changed(job)
        return start_job

    async def _become_ready(self, job: JobRecord, rt: Runtime) -> None:
        """Health check, then discoverd registration, then ``up``."""
        if job.spec.check is not None:
            try:
                await health.wait_healthy(job.spec.check, _port(job), self.check_host)
            except TimeoutError as exc:
                raise _StartFailure(str(exc)) from None
        if job.spec.service is not None:
            rt.registration = await self._register(job)
        if not job.final and job.state is JobState.STARTING:
            self._move(job, JobState.UP)

    async def _register(self, job: JobRecord) -> RegistrationLike:
        spec = job.spec
        if spec.service is None:
            raise _StartFailure("the job has no service to register")
        if self.registrar is None or self.addr is None:
            raise _StartFailure("no discoverd or no host address to register the service with")
        meta = {
            "FLYNN_JOB_ID": spec.id,
            "FLYNN_APP_ID": spec.app_id or "",
            "FLYNN_RELEASE_ID": spec.release_id or "",
            "FLYNN_PROCESS_TYPE": spec.type or "",
        }
        deadline = asyncio.get_running_loop().time() + (spec.check.timeout if spec.check else 60)
        delay = 0.5
        while True:
            try:
                reg: RegistrationLike = await self.registrar.register(
                    spec.service, f"{self.addr}:{_port(job)}", meta=meta, iid=spec.id
                )
            except APIError as exc:
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise _StartFailure(f"cannot register {spec.service} in discoverd: {exc}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            log.info("job %s: registered as %s at %s:%d", job.id, spec.service, self.addr, job.port)
            return reg

    async def _fail(self, job: JobRecord, rt: Runtime, reason: str) -> None:
        if job.final:
            return
        log.warning("job %s: failed: %s", job.id, reason)
        rt.fail_reason = reason
        await self._deregister(job, rt)
        if job.unit_started:
            try:
                await self.backend.stop(job.unit)
            except NoSuchUnit:
                self._finalize(job, Outcome(JobState.FAILED, error=reason))
            except SystemdError as exc:
                log.error("job %s: cannot stop its unit: %s", job.id, exc)
                self._finalize(job, Outcome(JobState.FAILED, error=reason))
            else:
                self._spawn(self._stop_guard(job), f"stop-guard-{job.id}")
        else:
            self._finalize(job, Outcome(JobState.FAILED, error=reason))

    # -- D-Bus events -------------------------------------------------------------------------

    def unit_changed(self, unit: str, changed: dict[str, Any]) -> None:
        """Called (in the event loop) for each PropertiesChanged of a job unit."""
        if not unit.startswith("flynn-job-") or not unit.endswith(".service"):
            return
        job_id = unit[len("flynn-job-") : -len(".service")]
        job = self.jobs.get(job_id)
        rt = self.rt.get(job_id)
        if job is None or rt is None or job.final:
            return
        rt.props.update(changed)
        status = UnitStatus.from_props(rt.props)
        if status.active_state in ACTIVE_STATES:
            rt.seen_active = True
        if status.running:
            rt.reached_running = True
        if status.ended and rt.seen_active and job.unit_started:
            self._unit_ended(job, rt, status)

    def _unit_ended(self, job: JobRecord, rt: Runtime, status: UnitStatus) -> None:
        result = outcome(
            status,
            stop_requested=job.stop_requested,
            signals_sent=job.signals_sent,
            reached_running=rt.reached_running,
        )
        if rt.fail_reason is not None:
            result = Outcome(JobState.FAILED, result.exit_status, result.signal, rt.fail_reason)
        self._finalize(job, result)

    async def _reread(self, job: JobRecord) -> None:
        """Read the unit's properties (after a failed start job, or when a signal may be missing)."""
        rt = self.rt.get(job.id)
        if rt is None or job.final:
            return
        try:
            props = await self.backend.unit_properties(job.unit)
        except SystemdError as exc:
            log.warning("job %s: cannot read its unit: %s", job.id, exc)
            return
        if props is None:
            reason = rt.fail_reason or ("ended" if job.stop_requested else "its unit vanished")
            state = JobState.FAILED if rt.fail_reason else JobState.DOWN
            self._finalize(job, Outcome(state, error=None if job.stop_requested else reason))
            return
        rt.props.update(props)
        status = UnitStatus.from_props(rt.props)
        if status.ended:
            self._unit_ended(job, rt, status)

    def _finalize(self, job: JobRecord, result: Outcome) -> None:
        if job.final:
            return
        rt = self.rt.get(job.id)
        self._move(
            job,
            result.state,
            exit_status=result.exit_status,
            signal=result.signal,
            error=result.error,
        )
        self.ports.release(job.port, job.id)
        if rt is not None:
            if rt.task is not None and not rt.task.done() and rt.task is not asyncio.current_task():
                rt.task.cancel()
            if rt.attach is not None and not rt.attach.done():
                rt.attach.cancel()
            self._spawn(self._cleanup(job, rt), f"cleanup-{job.id}")
        for dropped in self.store.prune(list(self.jobs.values())):
            self.jobs.pop(dropped, None)
            self.rt.pop(dropped, None)

    async def _cleanup(self, job: JobRecord, rt: Runtime) -> None:
        await self._deregister(job, rt)
        if job.unit_started:
            try:
                await self.backend.reset_failed(job.unit)  # unload a failed unit: the record keeps it all
            except SystemdError as exc:
                log.debug("job %s: reset-failed: %s", job.id, exc)
        rt.done.set()
        self.rt.pop(job.id, None)

    async def _deregister(self, job: JobRecord, rt: Runtime) -> bool:
        """Remove the job's discoverd instance; True when it had one."""
        reg, rt.registration = rt.registration, None
        if reg is None:
            return False
        try:
            async with asyncio.timeout(10):
                await reg.close(deregister=True)
            log.info("job %s: deregistered from %s", job.id, job.spec.service)
        except (TimeoutError, APIError) as exc:
            log.warning("job %s: deregistering failed (%s); its TTL will expire it", job.id, exc)
        return True

    # -- stop, signal -------------------------------------------------------------------------

    async def stop(self, job_id: str) -> JobRecord:
        job = self._live_or_final(job_id)
        if job.final or job.state is JobState.STOPPING:
            return job
        rt = self.rt[job_id]
        job.stop_requested = True
        self._move(job, JobState.STOPPING)
        task = rt.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if rt.attach is not None and not rt.attach.done():
            rt.attach.cancel()
        registered = await self._deregister(job, rt)  # before the process gets SIGTERM
        if not job.unit_started:
            self._finalize(job, Outcome(JobState.DOWN))
            return job
        if registered and self.drain_delay > 0:
            self._spawn(self._terminate_after_drain(job), f"drain-{job.id}")
            return job
        await self._terminate(job)
        return job

    async def _terminate(self, job: JobRecord) -> None:
        """Ask systemd to stop the job's unit (SIGTERM, SIGKILL after the stop timeout)."""
        try:
            await self.backend.stop(job.unit)
        except NoSuchUnit:
            self._finalize(job, Outcome(JobState.DOWN))
            return
        except SystemdError as exc:
            raise JobError(500, f"systemd refused to stop {job.unit}: {exc}", job) from None
        self._spawn(self._stop_guard(job), f"stop-guard-{job.id}")

    async def _terminate_after_drain(self, job: JobRecord) -> None:
        """The routers saw the instance go: wait for their requests in flight, then stop."""
        await asyncio.sleep(self.drain_delay)
        if job.final:
            return
        try:
            await self._terminate(job)
        except JobError as exc:
            log.error("job %s: %s", job.id, exc)
            self._spawn(self._stop_guard(job), f"stop-guard-{job.id}")

    async def _stop_guard(self, job: JobRecord) -> None:
        """If no D-Bus signal ended the job within its stop timeout (plus grace), ask systemd."""
        await asyncio.sleep(job.spec.stop_timeout + STOP_GRACE)
        if not job.final:
            log.warning(
                "job %s: no end seen %ss after stopping it; reading its unit", job.id, job.spec.stop_timeout
            )
            await self._reread(job)

    async def signal(self, job_id: str, value: object) -> JobRecord:
        job = self._live_or_final(job_id)
        try:
            signum = parse_signal(value)
        except ValueError as exc:
            raise JobError(400, str(exc)) from None
        if job.final or not job.unit_started:
            raise JobError(409, f"job {job_id} is {job.state}: no process to signal", job)
        name = signal_name(signum)
        if name not in job.signals_sent:
            job.signals_sent.append(name)
            self._changed(job)
        try:
            await self.backend.kill(job.unit, signum, "main")
        except SystemdError as exc:
            raise JobError(409, f"cannot signal job {job_id}: {exc}", job) from None
        log.info("job %s: sent %s", job.id, name)
        return job

    def _live_or_final(self, job_id: str) -> JobRecord:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobError(404, f"no job {job_id} on this host")
        return job

    # -- attach -------------------------------------------------------------------------------

    def attach(self, job_id: str, endpoint: AttachEndpoint) -> JobRecord:
        """Hand the attach client to a job waiting for it (its unit starts now)."""
        job = self._live_or_final(job_id)
        if not job.spec.attach:
            raise JobError(400, f"job {job_id} was not started with attach")
        rt = self.rt.get(job_id)
        if job.final or rt is None or rt.attach is None:
            raise JobError(409, f"job {job_id} is {job.state}", job)
        if rt.attach.done():
            raise JobError(409, f"job {job_id} already has an attach client", job)
        rt.attach.set_result(endpoint)
        return job

    # -- recovery -----------------------------------------------------------------------------

    async def recover(self) -> None:
        """Load every record and reconcile it with systemd's ``flynn-job-*`` units."""
        records = self.store.load_all()
        for job in records:
            self.jobs[job.id] = job
        try:
            units = set(await self.backend.list_units("flynn-job-*.service"))
        except SystemdError as exc:
            log.error("cannot list job units: %s", exc)
            units = set()
        live = [j for j in records if not j.final]
        for job in live:
            rt = Runtime()
            self.rt[job.id] = rt
            await self._recover_one(job, rt)
        known = {unit_name(j.id) for j in self.jobs.values() if not j.final}
        for orphan in sorted(units - known):
            log.warning("stopping %s: no job record for it", orphan)
            with contextlib.suppress(SystemdError):
                await self.backend.stop(orphan)
        for dropped in self.store.prune(list(self.jobs.values())):
            self.jobs.pop(dropped, None)
        log.info(
            "recovered %d job(s), %d running; %d finished in the history",
            len(records),
            sum(1 for j in self.jobs.values() if not j.final),
            sum(1 for j in self.jobs.values() if j.final),
        )

    async def _recover_one(self, job: JobRecord, rt: Runtime) -> None:
        if not job.unit_started:
            self._finalize(
                job, Outcome(JobState.FAILED, error="flynn-host restarted before the job's unit started")
            )
            return
        try:
            props = await self.backend.unit_properties(job.unit)
        except SystemdError as exc:
            log.error("job %s: cannot read its unit: %s", job.id, exc)
            props = None
        if props is None:
            self._finalize(
                job,
                Outcome(
                    JobState.DOWN,
                    error=None if job.stop_requested else "ended while flynn-host was not running",
                ),
            )
            return
        rt.props.update(props)
        status = UnitStatus.from_props(rt.props)
        rt.seen_active = True
        rt.reached_running = status.exec_main_code != 0 or status.running
        if status.ended:
            self._unit_ended(job, rt, status)
            return
        if job.port is not None:
            try:
                self.ports.reserve(job.port, job.id)
            except ValueError as exc:
                log.error("job %s: %s", job.id, exc)
        if job.state is JobState.STOPPING:
            with contextlib.suppress(SystemdError):
                await self.backend.stop(job.unit)
            self._spawn(self._stop_guard(job), f"stop-guard-{job.id}")
        elif job.spec.attach and job.state is JobState.STARTING:
            await self._fail(job, rt, "flynn-host restarted while the job was attached")
        elif job.state is JobState.STARTING:
            rt.task = self._spawn(self._resume(job, rt), f"resume-{job.id}")
        elif job.state is JobState.UP and job.spec.service is not None:
            rt.task = self._spawn(self._reregister(job, rt), f"reregister-{job.id}")
        log.info("job %s: still %s after the restart", job.id, job.state)

    async def _resume(self, job: JobRecord, rt: Runtime) -> None:
        """The rest of the start sequence of a job whose unit was started before the restart."""
        try:
            await self._become_ready(job, rt)
        except _StartFailure as exc:
            await self._fail(job, rt, str(exc))

    async def _reregister(self, job: JobRecord, rt: Runtime) -> None:
        while not job.final and rt.registration is None:
            try:
                rt.registration = await self._register(job)
            except _StartFailure as exc:
                log.warning("job %s: %s; retrying", job.id, exc)

    # -- housekeeping -------------------------------------------------------------------------

    def in_use_artifacts(self) -> list[str]:
        return [j.spec.artifact.id for j in self.jobs.values() if not j.final and j.spec.artifact is not None]

    async def prune_loop(self, interval: float = PRUNE_INTERVAL) -> None:
        while True:
            try:
                removed = await asyncio.to_thread(self.artifacts.prune, self.in_use_artifacts())
                if removed:
                    log.info("pruned unused artifacts: %s", ", ".join(removed))
            except OSError as exc:
                log.warning("pruning artifacts failed: %s", exc)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Stop following jobs (they keep running: the next daemon recovers them)."""
        self._closing = True
        for rt in list(self.rt.values()):
            reg, rt.registration = rt.registration, None
            if reg is not None:
                with contextlib.suppress(Exception):
                    await reg.close(deregister=False)  # the instance stays until the TTL or our return
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.hub.close()


class _StartFailure(Exception):
    pass


def _port(job: JobRecord) -> int:
    if job.port is None:
        raise _StartFailure("the job has no port")
    return job.port
