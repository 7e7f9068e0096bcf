"""The control plane of one router process: controller routes and discoverd backends into its table.

* :class:`ControllerFinder` keeps an :class:`~flynn.controller.client.AsyncClient`'s URLs equal to
  the controllers registered in discoverd (service ``controller``; this host's own first), or uses
  a configured ``CONTROLLER_URL``.
* :class:`~flynn.router.routesync.RouteSync` loads the routes and follows their events.
* :class:`~flynn.router.backendwatch.BackendWatches` watches the services the routes use.

Each worker process runs its own :class:`ControlPlane` (docs/router.md, "Workers"): workers stay
independent, at the price of one event stream and one watch per service per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp

from flynn.common.log import register_secret
from flynn.controller.locate import FollowedClient
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.router.backendwatch import BackendWatches
from flynn.router.routes import RouteTable
from flynn.router.routesync import RouteSync
from flynn.router.settings import DaemonSettings
from flynn.router.tls import CertStore

log = logging.getLogger(__name__)

REFUSED_FOR = 60.0  # seconds a refused key is not taken up again from the router app's release


class ControllerFinder(FollowedClient):
    """The controller client, its URLs kept current from discoverd (unless one URL is configured),
    and the router app's controller keys: the one in use first, earlier ones as fallbacks."""

    def __init__(
        self,
        key: str,
        session: aiohttp.ClientSession,
        *,
        url: str | None = None,
        local_ip: str | None = None,
        timeout: float = 10.0,
        retry_for: float = 5.0,
    ) -> None:
        super().__init__(key, session, url=url, local_ip=local_ip, timeout=timeout, retry_for=retry_for)
        self._keys = [key]  # known keys, the one in use first
        self._refused: dict[str, float] = {}  # key -> when the controller refused it

    def set_key(self, key: str) -> None:
        """A new controller key (from the router app's release), for every request from now on;
        the ones used before stay as fallbacks (:meth:`next_key`) should it be refused."""
        refused_at = self._refused.get(key)
        if key == self._key or (refused_at is not None and time.monotonic() - refused_at < REFUSED_FOR):
            return
        register_secret(key)
        self._keys = [key, *[k for k in self._keys if k != key][:3]]
        self._use_key(key)
        log.info("using the router app's CONTROLLER_KEY")

    def next_key(self) -> None:
        """The controller refused the key (401): try the next known one (a mistyped rotation
        must not cut the router off from the release that corrects it)."""
        if len(self._keys) > 1:
            self._refused[self._keys[0]] = time.monotonic()  # not taken up again for a while
            self._keys = [*self._keys[1:], self._keys[0]]
            self._use_key(self._keys[0])
            log.warning("the controller refused the key: trying an earlier one")


class ControlPlane:
    """Runs the finder, the route sync and the backend watches for one route table."""

    def __init__(
        self,
        table: RouteTable,
        settings: DaemonSettings,
        *,
        certs: CertStore | None = None,
        retry_after: float = 1.0,
    ) -> None:
        if settings.controller_key is None:
            raise ValueError("the control plane needs CONTROLLER_KEY")
        self.table = table
        self.settings = settings
        self.certs = certs
        self.retry_after = retry_after
        self.session: aiohttp.ClientSession | None = None
        self.discoverd: DiscoverdClient | None = None
        self.finder: ControllerFinder | None = None
        self.sync: RouteSync | None = None
        self.watches: BackendWatches | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        key = self.settings.controller_key
        if key is None:
            raise ValueError("the control plane needs CONTROLLER_KEY")
        self.session = aiohttp.ClientSession()
        self.discoverd = DiscoverdClient(list(self.settings.discoverd_urls), session=self.session)
        self.finder = ControllerFinder(
            key, self.session, url=self.settings.controller_url, local_ip=self.settings.addr
        )
        self.watches = BackendWatches(self.table, self.discoverd, retry_after=self.retry_after)
        self.sync = RouteSync(
            self.table,
            self.finder.client,
            certs=self.certs,
            on_key=self.finder.set_key,
            on_unauthorized=self.finder.next_key,
            on_change=self._routes_changed,
            retry_after=self.retry_after,
        )
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.sync.run(), name="route-sync"))
        if not self.finder.fixed:
            self._tasks.append(
                loop.create_task(
                    self.finder.follow(self.discoverd, retry_after=self.retry_after), name="controllers"
                )
            )

    def _routes_changed(self) -> None:
        if self.sync is None or self.watches is None:
            return
        keys = set()
        for rid in self.sync.owned:
            route = self.table.get_route(rid)
            if route is not None:
                keys.add(route.service)
        self.watches.want(keys)

    @property
    def synced(self) -> bool:
        """Routes loaded at least once and every routed service's backends known."""
        return (
            self.sync is not None
            and self.sync.synced.is_set()
            and self.watches is not None
            and self.watches.ready()
        )

    def status(self) -> dict[str, Any]:
        return {
            "synced": self.synced,
            "controllers": self.finder.urls if self.finder is not None else [],
            "routes": self.sync.status() if self.sync is not None else {},
            "watches": self.watches.status() if self.watches is not None else {},
        }

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.watches is not None:
            await self.watches.close()
        if self.session is not None:
            await self.session.close()
