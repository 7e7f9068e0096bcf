"""The real :class:`~flynn.scheduler.interfaces.ClusterView`: discoverd for hosts, the host API for jobs.

* hosts: a discoverd watch of ``flynn-host`` (instance meta ``id`` = host id, ``addr`` = the host
  API address); a ``down`` instance is a lost host;
* jobs: :meth:`flynn.host.client.HostClient.watch_jobs` per host, which reconnects by itself and
  yields the final record of jobs that ended while it was disconnected. Its ``connected`` flag is
  turned into :class:`JobsSynced` / :class:`JobsStreamLost` markers here;
* actions: ``PUT``/``DELETE /host/jobs/:id`` through :class:`~flynn.host.client.HostClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from flynn.common.errors import APIError
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.host.client import HostClient, JobExistsError, host_url
from flynn.scheduler.interfaces import (
    HostDown,
    HostEvent,
    HostsCurrent,
    HostUp,
    JobSeen,
    JobsEvent,
    JobsStreamLost,
    JobsSynced,
)
from flynn.scheduler.model import Host, Job, JSONDict, ModelError

log = logging.getLogger(__name__)

HOST_SERVICE = "flynn-host"


class SignalEvent(asyncio.Event):
    """An :class:`asyncio.Event` that calls back when it is set or cleared (edge-triggered)."""

    def __init__(self, on_set: Callable[[], None], on_clear: Callable[[], None]) -> None:
        super().__init__()
        self._on_set = on_set
        self._on_clear = on_clear

    def set(self) -> None:
        was = self.is_set()
        super().set()
        if not was:
            self._on_set()

    def clear(self) -> None:
        was = self.is_set()
        super().clear()
        if was:
            self._on_clear()


def host_id_of(instance: dict[str, Any]) -> str:
    meta = instance.get("meta") or {}
    value = meta.get("id") if isinstance(meta, dict) else None
    return str(value or instance.get("id", ""))


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class HostsCluster:
    """Hosts from discoverd, jobs from each host's API. ``session`` is shared by every host client."""

    def __init__(
        self,
        discoverd: DiscoverdClient,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 10.0,
    ) -> None:
        self.discoverd = discoverd
        self.session = session
        self.timeout = timeout

    def _client(self, host: Host) -> HostClient:
        return HostClient(host.url, timeout=self.timeout, session=self.session)

    async def watch_hosts(self) -> AsyncIterator[HostEvent]:
        async for event in self.discoverd.watch(HOST_SERVICE):
            inst = event.instance
            if event.kind in ("up", "update") and inst is not None:
                host_id, addr = host_id_of(inst), inst.get("addr")
                if not host_id or "-" in host_id or not isinstance(addr, str):
                    log.warning("ignoring flynn-host instance %r: no usable id or address", inst.get("id"))
                    continue
                yield HostUp(host_id, host_url(addr))
            elif event.kind == "down" and inst is not None:
                yield HostDown(host_id_of(inst))
            elif event.kind == "current":
                yield HostsCurrent()

    async def watch_jobs(self, host: Host) -> AsyncIterator[JobsEvent]:
        watch = self._client(host).watch_jobs()
        queue: asyncio.Queue[JobsEvent | _Failed] = asyncio.Queue()
        listed: set[str] = set()

        def synced() -> None:
            queue.put_nowait(JobsSynced(frozenset(listed)))

        def lost() -> None:
            listed.clear()
            queue.put_nowait(JobsStreamLost("disconnected"))

        watch.connected = SignalEvent(synced, lost)

        async def pump() -> None:
            try:
                async for raw in watch:
                    try:
                        job = Job.from_json(raw, host.id)
                    except ModelError as exc:
                        log.warning("host %s sent a malformed job: %s", host.id, exc)
                        continue
                    if not watch.connected.is_set():
                        listed.add(job.id)
                    queue.put_nowait(JobSeen(job))
            except APIError as exc:
                queue.put_nowait(_Failed(exc))
            except Exception as exc:  # a broken stream of one host must not end the term
                log.warning("job stream of host %s broke", host.id, exc_info=True)
                queue.put_nowait(_Failed(APIError(502, f"job stream of host {host.id} broke: {exc!r}")))

        task = asyncio.get_running_loop().create_task(pump(), name=f"host-jobs-{host.id}")
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Failed):
                    raise item.exc
                yield item
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def start_job(self, host: Host, config: JSONDict) -> Job:
        try:
            raw = await self._client(host).start_job(config)
        except JobExistsError as exc:
            raw = exc.job  # starts are idempotent by id
        return _job(raw, host)

    async def stop_job(self, host: Host, job_id: str) -> Job | None:
        try:
            raw = await self._client(host).stop_job(job_id)
        except APIError as exc:
            if exc.status == 404:
                return None
            raise
        return _job(raw, host)

    async def get_job(self, host: Host, job_id: str) -> Job | None:
        try:
            raw = await self._client(host).get_job(job_id)
        except APIError as exc:
            if exc.status == 404:
                return None
            raise
        return _job(raw, host)


def _job(raw: Any, host: Host) -> Job:
    try:
        return Job.from_json(raw, host.id)
    except ModelError as exc:
        raise APIError(502, f"host {host.id} answered a malformed job: {exc}") from None
