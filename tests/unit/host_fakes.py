"""Fakes of flynn-host's collaborators for unit tests: systemd (a unit backend that behaves like
systemd's D-Bus API: start jobs, PropertiesChanged, stop with SIGTERM), discoverd registrations,
and the journal. The real ones are exercised by tests/integration/test_jobs.py."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from flynn.host.jobs.artifacts import ArtifactStore
from flynn.host.jobs.dbus import NoSuchUnit, SystemdError
from flynn.host.jobs.events import EventHub
from flynn.host.jobs.journal import LogLine
from flynn.host.jobs.manager import JobManager
from flynn.host.jobs.ports import PortAllocator
from flynn.host.jobs.store import JobStore
from flynn.host.jobs.units import Property

CLD_EXITED, CLD_KILLED = 1, 2


class FakeSystemd:
    """Units live in ``self.units`` (name -> properties); changes are announced through
    ``on_unit_change`` from the event loop, as the D-Bus signal connection does."""

    def __init__(self, events: list[tuple[str, str]] | None = None) -> None:
        self.on_unit_change: Any = None
        self.units: dict[str, dict[str, Any]] = {}
        self.props: dict[str, list[Property]] = {}
        self.events = events if events is not None else []
        self.kills: list[tuple[str, int, str]] = []
        self.refuse_start: str | None = None  # error message to refuse StartTransientUnit with
        self.start_result = "done"
        self.auto_run = True  # units reach running on their own after a start
        self._jobs: dict[str, asyncio.Future[str]] = {}
        self._n = 0
        # platform
        self.installed: set[str] = set()
        self.enabled: list[str] = []
        self.restarted: list[str] = []

    def _emit(self, name: str, **changed: Any) -> None:
        self.units.setdefault(name, {}).update(changed)
        if self.on_unit_change is not None:
            self.on_unit_change(name, dict(changed))

    # -- UnitBackend ---------------------------------------------------------------------------

    async def start_transient(self, name: str, props: list[Property]) -> str:
        self.events.append(("start", name))
        if self.refuse_start is not None:
            raise SystemdError(self.refuse_start)
        # D-Bus passes file descriptors by duplicating them: the caller may close its own at once
        self.props[name] = [(n, sig, os.dup(v) if sig == "h" else v) for n, sig, v in props]
        self.units[name] = {"ActiveState": "inactive", "SubState": "dead"}
        self._n += 1
        path = f"/org/freedesktop/systemd1/job/{self._n}"
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._jobs[path] = fut
        if self.auto_run:
            asyncio.get_running_loop().call_soon(self.run, name, path)
        return path

    def run(self, name: str, job_path: str | None = None) -> None:
        """The unit's process starts (Type=exec: the start job is done)."""
        self._emit(name, ActiveState="activating", SubState="start")
        self._emit(name, ActiveState="active", SubState="running", MainPID=4242)
        if job_path is None:
            job_path = next(p for p, f in self._jobs.items() if not f.done())
        fut = self._jobs[job_path]
        if not fut.done():
            fut.set_result(self.start_result)

    def exit(self, name: str, status: int) -> None:
        """The main process exits with ``status``."""
        self._emit(
            name,
            ExecMainCode=CLD_EXITED,
            ExecMainStatus=status,
            Result="success" if status == 0 else "exit-code",
        )
        self._emit(
            name,
            ActiveState="inactive" if status == 0 else "failed",
            SubState="dead" if status == 0 else "failed",
        )

    def killed(self, name: str, signum: int) -> None:
        self._emit(name, ExecMainCode=CLD_KILLED, ExecMainStatus=signum, Result="signal")
        self._emit(name, ActiveState="failed", SubState="failed")

    async def wait_job(self, job_path: str, max_wait: float) -> str:
        async with asyncio.timeout(max_wait):
            return await self._jobs[job_path]

    async def stop(self, name: str) -> None:
        self.events.append(("stop", name))
        if name not in self.units:
            raise NoSuchUnit(f"unit {name} not loaded")
        asyncio.get_running_loop().call_soon(self._stopped, name)

    def _stopped(self, name: str) -> None:
        self._emit(name, ActiveState="deactivating", SubState="stop-sigterm")
        self._emit(name, ExecMainCode=CLD_KILLED, ExecMainStatus=int(signal.SIGTERM), Result="success")
        self._emit(name, ActiveState="inactive", SubState="dead")

    async def kill(self, name: str, signum: int, who: str = "main") -> None:
        if name not in self.units:
            raise NoSuchUnit(f"unit {name} not loaded")
        self.kills.append((name, signum, who))

    async def unit_properties(self, name: str) -> dict[str, Any] | None:
        unit = self.units.get(name)
        return dict(unit) if unit is not None else None

    async def list_units(self, pattern: str) -> list[str]:
        return sorted(n for n in self.units if n.startswith(pattern.split("*", maxsplit=1)[0]))

    async def reset_failed(self, name: str) -> None:
        self.events.append(("reset-failed", name))
        if self.units.get(name, {}).get("ActiveState") in ("failed", "inactive"):
            self.units.pop(name, None)

    # -- platform ------------------------------------------------------------------------------

    async def load_state(self, name: str) -> str:
        return "loaded" if name in self.installed else "not-found"

    async def enable(self, name: str) -> None:
        self.enabled.append(name)

    async def restart(self, name: str) -> str:
        self.restarted.append(name)
        self.units[name] = {"ActiveState": "active", "SubState": "running"}
        self._n += 1
        path = f"/org/freedesktop/systemd1/job/{self._n}"
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        fut.set_result(self.start_result)
        self._jobs[path] = fut
        return path


class FakeRegistration:
    def __init__(self, registrar: FakeRegistrar, service: str, iid: str) -> None:
        self.registrar = registrar
        self.service = service
        self.id = iid

    async def close(self, *, deregister: bool = True) -> None:
        if deregister:
            self.registrar.events.append(("deregister", self.id))
            self.registrar.registered.pop(self.id, None)
        else:
            self.registrar.events.append(("release", self.id))


class FakeRegistrar:
    def __init__(self, events: list[tuple[str, str]]) -> None:
        self.events = events
        self.registered: dict[str, tuple[str, str, dict[str, str]]] = {}
        self.failures = 0  # the next N registrations fail as if discoverd were unreachable

    async def register(
        self, service: str, addr: str, *, meta: dict[str, str] | None = None, iid: str | None = None
    ) -> FakeRegistration:
        from flynn.common.errors import APIError

        if self.failures:
            self.failures -= 1
            raise APIError(0, "cannot reach discoverd")
        assert iid is not None
        self.events.append(("register", iid))
        self.registered[iid] = (service, addr, dict(meta or {}))
        return FakeRegistration(self, service, iid)


class FakeLogs:
    def __init__(self) -> None:
        self.lines_by_job: dict[str, list[str]] = {}

    async def lines(
        self, job_id: str, *, last: int | None, follow: bool, ended: asyncio.Event
    ) -> AsyncIterator[LogLine]:
        lines = self.lines_by_job.get(job_id, [])
        if last is not None:
            lines = lines[-last:] if last else []
        for text in lines:
            yield LogLine(text, "2026-12-01T00:00:00.000000Z", 6)
        if follow:
            await ended.wait()


def make_manager(
    tmp_path: Path,
    *,
    backend: FakeSystemd | None = None,
    registrar: FakeRegistrar | None = None,
    events: list[tuple[str, str]] | None = None,
    host_id: str = "host1",
    ports: PortAllocator | None = None,
    attach_wait: float = 30.0,
) -> JobManager:
    events = events if events is not None else []
    return JobManager(
        host_id=host_id,
        addr="10.0.0.1",
        backend=backend or FakeSystemd(events),
        store=JobStore(tmp_path / "jobs"),
        artifacts=ArtifactStore(tmp_path / "artifacts"),
        ports=ports or PortAllocator(50000, 50010, is_free=lambda _p: True),
        registrar=registrar if registrar is not None else FakeRegistrar(events),
        hub=EventHub(),
        attach_wait=attach_wait,
    )


async def wait_state(manager: JobManager, job_id: str, state: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            job = manager.get(job_id)
            if job is not None and str(job.state) == state:
                return
            await asyncio.sleep(0.01)
