"""``flynn-scheduler``: run by flynn-scheduler.service on every bootstrap host; the leader acts.

Start-up: read the configuration (a bad one exits with a one-line reason), serve ``GET /status``
on ``SCHEDULER_ADDR:SCHEDULER_PORT``, register in discoverd as ``flynn-scheduler`` (retrying
until discoverd answers), tell systemd READY=1, then follow leadership until SIGTERM, when the
instance deregisters so that the next one leads at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from flynn.common import sdnotify
from flynn.common.daemon import run_loop, stop_event
from flynn.common.errors import APIError, ConfigError
from flynn.common.log import register_secret, setup_logging
from flynn.common.web import error_middleware
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.discoverd.client import Registration
from flynn.scheduler.cluster import HostsCluster
from flynn.scheduler.config import SchedulerConfig
from flynn.scheduler.controller import ControllerAPI
from flynn.scheduler.core import Role, Scheduler
from flynn.scheduler.gate import DiscoverdGate
from flynn.scheduler.platform import ControllerPlatformSource, DiscoverdPlatformHosts, PlatformSync

SERVICE = "flynn-scheduler"
log = logging.getLogger("flynn.scheduler")


def make_status_app(status: Callable[[], dict[str, Any]]) -> web.Application:
    async def get_status(request: web.Request) -> web.Response:
        return web.json_response(status())

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/status", get_status)
    return app


async def register(discoverd: DiscoverdClient, cfg: SchedulerConfig) -> Registration:
    delay = 0.5
    while True:
        try:
            reg = await discoverd.register(SERVICE, cfg.announce, meta={"addr": cfg.addr})
        except APIError as exc:
            log.info("discoverd not reachable yet (%s); retrying in %gs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        log.info("registered in discoverd as %s/%s at %s", SERVICE, reg.id, cfg.announce)
        return reg


class Daemon:
    """The process: its HTTP session, discoverd registration, status server and scheduler."""

    def __init__(self, cfg: SchedulerConfig) -> None:
        self.cfg = cfg
        self.session = aiohttp.ClientSession()
        self.discoverd = DiscoverdClient(list(cfg.discoverd_urls), session=self.session)
        self.controller = ControllerAPI(
            cfg.controller_key, self.session, url=cfg.controller_url, local_ip=cfg.addr
        )
        self.cluster = HostsCluster(self.discoverd, self.session)
        self.scheduler: Scheduler | None = None
        self.platform: PlatformSync | None = None
        self.registration: Registration | None = None
        self.gate: DiscoverdGate | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self.runner = web.AppRunner(
            make_status_app(self.status), access_log=None, handle_signals=False, shutdown_timeout=2
        )

    def status(self) -> dict[str, Any]:
        info: dict[str, Any] = {"addr": self.cfg.announce, "controllers": self.controller.urls}
        info.update(self.scheduler.status() if self.scheduler is not None else {"role": "starting"})
        return info

    async def start(self) -> None:
        """Serve the status API and register in discoverd (waits until discoverd answers)."""
        await self.runner.setup()
        await web.TCPSite(self.runner, self.cfg.addr, self.cfg.port, reuse_address=True).start()
        self.registration = await register(self.discoverd, self.cfg)
        self.gate = DiscoverdGate(self.registration, ttl=10.0)
        self.gate.start()

        def on_role(role: Role) -> None:
            sdnotify.status(f"{role}; status on {self.cfg.announce}")

        self.scheduler = Scheduler(self.cluster, self.controller, self.gate, on_role=on_role)
        self.platform = PlatformSync(
            ControllerPlatformSource(self.controller),
            DiscoverdPlatformHosts(self.discoverd, self.session),
            self.gate,
            local_ip=self.cfg.addr,
        )
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self.scheduler.run(), name="scheduler"))
        self.tasks.append(loop.create_task(self.platform.run(), name="platform-sync"))
        if self.cfg.controller_url is None:
            self.tasks.append(
                loop.create_task(self.controller.follow_discoverd(self.discoverd), name="controllers")
            )

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.gate is not None:
            await self.gate.close()
        if self.registration is not None:
            with contextlib.suppress(Exception):
                await self.registration.close()  # deregister: the next instance leads at once
        with contextlib.suppress(Exception):
            await self.runner.cleanup()
        await self.discoverd.close()
        await self.session.close()


async def _until(stop: asyncio.Event, work: Awaitable[Any]) -> bool:
    """Run ``work`` until it finishes (True) or ``stop`` is set first (False)."""
    loop = asyncio.get_running_loop()
    task = loop.create_task(_await(work))
    stopping = loop.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False
    task.result()  # re-raises what ``work`` raised
    return True


async def _await(work: Awaitable[Any]) -> Any:
    return await work


async def serve(cfg: SchedulerConfig) -> None:
    setup_logging("scheduler")
    register_secret(cfg.controller_key)
    loop = asyncio.get_running_loop()
    stop = stop_event()
    daemon = Daemon(cfg)
    watchdog: asyncio.Task[None] | None = None
    try:
        if not await _until(stop, daemon.start()):
            return
        log.info("flynn-scheduler %s ready: following leadership", cfg.announce)
        sdnotify.ready(f"follower; status on {cfg.announce}")
        watchdog = sdnotify.start_watchdog()
        stopping = loop.create_task(stop.wait())
        done, _ = await asyncio.wait({stopping, *daemon.tasks}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        for task in done - {stopping}:
            if not task.cancelled() and task.exception() is not None:
                log.error("%s failed: %s", task.get_name(), task.exception())
        log.info("stopping")
        sdnotify.stopping()
    finally:
        await sdnotify.cancel(watchdog)
        await daemon.close()


def main() -> None:
    try:
        cfg = SchedulerConfig.from_env()
    except ConfigError as exc:
        print(f"flynn-scheduler: {exc}", file=sys.stderr)
        sys.exit(1)
    try:
        run_loop(serve(cfg))
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"flynn-scheduler: cannot listen on {cfg.announce}: {reason}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
