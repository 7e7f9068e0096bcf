"""The real :class:`~flynn.scheduler.interfaces.ControllerView` on the controller's ``AsyncClient``.

The controllers are found through discoverd (service ``controller``) unless a URL is configured;
:meth:`ControllerAPI.follow_discoverd` keeps the client's URL list current (the controller on this
scheduler's own address first). Requests made while no controller is known fail with an
:class:`~flynn.common.errors.APIError` (status 0) after a short wait, like an unreachable one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from flynn.common.errors import APIError
from flynn.controller.client import AsyncClient, JobUpdate
from flynn.controller.locate import FollowedClient
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.scheduler.cluster import SignalEvent
from flynn.scheduler.interfaces import ControllerEvent
from flynn.scheduler.model import Formation, ModelError
from flynn.scheduler.state import JobReport

log = logging.getLogger(__name__)

EVENT_TYPES = ("formation", "app_deletion")


class ControllerAPI(FollowedClient):
    def __init__(
        self,
        key: str,
        session: aiohttp.ClientSession,
        *,
        url: str | None = None,
        local_ip: str | None = None,
        timeout: float = 10.0,
        wait_for_url: float = 5.0,
    ) -> None:
        super().__init__(key, session, url=url, local_ip=local_ip, timeout=timeout)
        self._wait_for_url = wait_for_url

    async def follow_discoverd(self, discoverd: DiscoverdClient, *, retry_after: float = 2.0) -> None:
        """Keep the controller URLs current from discoverd (run as a task for the daemon's life)."""
        await self.follow(discoverd, retry_after=retry_after)

    async def _get_client(self) -> AsyncClient:
        """The controller client (waiting briefly until a controller is known)."""
        return await self.client(self._wait_for_url)

    # -- ControllerView --------------------------------------------------------------------------

    async def formations(self) -> list[Formation]:
        client = await self._get_client()
        raw = await client.active_formations()
        if not isinstance(raw, list):
            raise APIError(502, "the controller answered formations that are not a list")
        formations: list[Formation] = []
        for item in raw:
            try:
                formations.append(Formation.from_expanded(item))
            except ModelError as exc:
                log.warning("ignoring a malformed formation: %s", exc)
        return formations

    async def watch_events(self) -> AsyncIterator[ControllerEvent]:
        client = await self._get_client()
        stream = client.events(object_types=EVENT_TYPES)
        queue: asyncio.Queue[ControllerEvent | BaseException] = asyncio.Queue()
        stream.connected = SignalEvent(lambda: queue.put_nowait(ControllerEvent("connected")), lambda: None)

        async def pump() -> None:
            try:
                async for event in stream:
                    app_id = event.get("app_id")
                    queue.put_nowait(
                        ControllerEvent(
                            str(event.get("object_type")),
                            int(event["id"]),
                            str(app_id) if app_id is not None else None,
                        )
                    )
            except Exception as exc:
                queue.put_nowait(exc)

        task = asyncio.get_running_loop().create_task(pump(), name="controller-events")
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def report_job(self, report: JobReport) -> None:
        client = await self._get_client()
        body: dict[str, Any] = {k: v for k, v in report.body.items() if k != "id"}
        update: JobUpdate = {
            "uuid": str(body["uuid"]),
            "host_id": str(body["host_id"]),
            "app_id": str(body["app_id"]),
            "release_id": str(body["release_id"]),
            "type": str(body["type"]),
            "state": body["state"],
            "args": list(body.get("args") or []),
            "exit_status": body.get("exit_status"),
            "host_error": body.get("host_error"),
        }
        await client.put_job(report.app_id, report.job_id, update)
