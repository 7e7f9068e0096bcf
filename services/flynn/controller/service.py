"""One running controller: migrations, pool, event hub, key set, deployer, HTTP server.

:class:`Controller` is what ``flynn-controller`` runs (daemon.py adds signals, sd_notify and the
discoverd registration) and what the tests start in-process against a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket

import aiohttp
from aiohttp import web

from flynn.controller.api import API
from flynn.controller.auth import KeySet
from flynn.controller.config import ControllerConfig
from flynn.controller.db import UNAVAILABLE, Database
from flynn.controller.deployer import Deployer
from flynn.controller.events import EventHub
from flynn.controller.hosts import Hosts
from flynn.controller.migrate import migrate
from flynn.discoverd.client import Client as DiscoverdClient

log = logging.getLogger(__name__)


async def migrate_when_reachable(url: str, *, give_up_after: float | None = None) -> list[int]:
    """Apply migrations, retrying while the database cannot be reached (until ``give_up_after`` s)."""
    loop = asyncio.get_running_loop()
    deadline = None if give_up_after is None else loop.time() + give_up_after
    delay = 0.2
    while True:
        try:
            return await migrate(url)
        except UNAVAILABLE as exc:
            if deadline is not None and loop.time() + delay > deadline:
                raise
            log.warning("database not reachable yet (%s); retrying", str(exc).strip().splitlines()[0])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class Controller:
    def __init__(
        self,
        cfg: ControllerConfig,
        *,
        discoverd: DiscoverdClient | None = None,
        owner: str | None = None,
        deployer_poll: float = 0.25,
    ) -> None:
        self.cfg = cfg
        self.discoverd = discoverd or DiscoverdClient(cfg.discoverd_urls)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.db = Database(cfg.database_url, max_size=cfg.pool_size, timeout=cfg.db_timeout)
        self.hub = EventHub(self.db)
        self.keys = KeySet(cfg.auth_keys)
        self.deployer = Deployer(self.db, self.owner, claim_timeout=cfg.claim_timeout, poll=deployer_poll)
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, *, db_timeout: float | None = None) -> None:
        await migrate_when_reachable(self.cfg.database_url, give_up_after=db_timeout)
        await self.db.open()
        await self.hub.start()
        await self.keys.refresh(self.db)

        async def keys_on_event(event: dict[str, object]) -> None:
            await self.keys.on_event(self.db, event)

        self.hub.add_callback(keys_on_event)
        self.hub.add_callback(self.deployer.on_event)
        await self.deployer.start()
        self.session = aiohttp.ClientSession()
        hosts = Hosts(self.discoverd, self.session)
        api = API(
            self.db,
            self.hub,
            self.keys,
            hosts,
            keepalive=self.cfg.keepalive,
            wake_deployer=self.deployer.wake,
            cluster_domain=self.cfg.cluster_domain,
            ca_cert=self.cfg.ca_cert,
        )
        self.runner = web.AppRunner(api.make_app(), access_log=None, handle_signals=False, shutdown_timeout=2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.listen_ip, self.cfg.port, reuse_address=True)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        log.info("controller listening on %s:%d (owner %s)", self.cfg.listen_ip, self.port, self.owner)

    async def stop(self) -> None:
        await self.hub.close()  # ends SSE streams first
        if self.runner is not None:
            await self.runner.cleanup()
        await self.deployer.close()
        if self.session is not None:
            await self.session.close()
        await self.db.close()
