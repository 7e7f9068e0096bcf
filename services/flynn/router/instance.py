"""What a host's router shows the rest of the cluster, once for all its workers.

* ``GET /status`` on ``ROUTER_STATUS_IP:ROUTER_STATUS_PORT`` (default: ``ROUTER_ADDR:1230``), the
  workers' statuses summed (:mod:`flynn.router.status`).
* The discoverd registration ``router-http`` (``ROUTER_ADDR:80``, meta ``status`` and ``https``),
  made in the background (discoverd may still be starting) and kept by heartbeats.
* systemd: ``READY=1`` once the listeners are open, and watchdog pings while every worker answers
  its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import web

from flynn.common import sdnotify
from flynn.discoverd.client import Announcement
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.router.settings import SERVICE, DaemonSettings
from flynn.router.status import StatusSource, gather, make_app

log = logging.getLogger(__name__)


class Instance:
    def __init__(
        self,
        settings: DaemonSettings,
        sources: Sequence[StatusSource],
        *,
        http_port: int,
        https_port: int | None,
        register: bool = True,
    ) -> None:
        self.settings = settings
        self.sources = list(sources)
        self.http_port = http_port
        self.https_port = https_port
        self.register = register and settings.addr is not None
        self.runner: web.AppRunner | None = None
        self.status_port = 0
        self.announcement: Announcement | None = None
        self.healthy = True
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def info(self) -> dict[str, Any]:
        return {
            "addr": self.settings.addr,
            "cluster_domain": self.settings.cluster_domain,
            "registered": self.announcement is not None and self.announcement.registration is not None,
        }

    async def start(self) -> None:
        """Serve the status API (raises OSError when its port cannot be bound), then register in
        discoverd and ping the watchdog in the background."""
        self.runner = web.AppRunner(
            make_app(self.sources, self.info), access_log=None, handle_signals=False, shutdown_timeout=1
        )
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, self.settings.status_ip, self.settings.status_port, reuse_address=True
        )
        await site.start()
        self.status_port = int(self.runner.addresses[0][1])
        loop = asyncio.get_running_loop()
        if self.register:
            self.announcement = self._announce()
        if sdnotify.watchdog_interval() is not None:
            self._tasks.append(loop.create_task(self._health_loop(), name="health"))
            watchdog = sdnotify.start_watchdog(lambda: self.healthy)
            if watchdog is not None:
                self._tasks.append(watchdog)
        log.info("status on %s:%d", self.settings.status_ip, self.status_port)

    async def _health_loop(self) -> None:
        interval = max(1.0, (sdnotify.watchdog_interval() or 10.0) / 2)
        while True:
            parts = await gather(self.sources, limit=min(5.0, interval))
            self.healthy = all(p is not None for p in parts)
            if not self.healthy:
                log.warning("a router worker does not answer: the watchdog is not pinged")
            await asyncio.sleep(interval)

    def _announce(self) -> Announcement | None:
        addr = self.settings.addr
        if addr is None:
            return None
        self._session = aiohttp.ClientSession()
        client = DiscoverdClient(list(self.settings.discoverd_urls), session=self._session)
        meta = {"status": f"{self.settings.status_ip}:{self.status_port}"}
        if self.https_port is not None:
            meta["https"] = f"{addr}:{self.https_port}"
        announcement = Announcement(client, SERVICE, f"{addr}:{self.http_port}", meta=meta, max_delay=5.0)
        announcement.start()
        return announcement

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.announcement is not None:
            await self.announcement.close(within=3)  # deregister: no more traffic is sent here
            self.announcement = None
        if self.runner is not None:
            await self.runner.cleanup()
        if self._session is not None:
            await self._session.close()
