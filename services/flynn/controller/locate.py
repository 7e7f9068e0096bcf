"""The controllers' URLs, from discoverd's ``controller`` service.

Every service that calls the controller (scheduler, router, log aggregator) keeps its
:class:`~flynn.controller.client.AsyncClient`'s URL list equal to the registered controllers with
:func:`follow_controllers`: the one on this host first (no network hop, and it keeps working
when this host is cut off from the others), then the rest by address; :class:`FollowedClient`
is that client with the following built in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from flynn.common.errors import APIError
from flynn.controller.client import AsyncClient
from flynn.discoverd.client import Client as DiscoverdClient

log = logging.getLogger(__name__)

OnURLs = Callable[[list[str]], None]

CONTROLLER_SERVICE = "controller"


def controller_url(addr: str) -> str:
    """``http://ADDR`` for an address as the controller registers it (``ip:port``), or a URL as is."""
    return addr.rstrip("/") if "://" in addr else f"http://{addr}"


def order_urls(addrs: list[str], local_ip: str | None) -> list[str]:
    """The controllers' URLs: the one on ``local_ip`` first, then by address."""
    return [controller_url(a) for a in sorted(addrs, key=lambda a: (a.rsplit(":", 1)[0] != local_ip, a))]


async def follow_controllers(
    discoverd: DiscoverdClient,
    on_urls: OnURLs,
    *,
    local_ip: str | None = None,
    retry_after: float = 1.0,
) -> None:
    """Call ``on_urls`` with the controllers' URLs once discoverd's snapshot is complete, then on
    every change; never with an empty list (the last known controllers stay in use while none is
    registered). Runs until cancelled, watching again after an error."""
    while True:
        try:
            await _watch(discoverd, on_urls, local_ip)
        except APIError as exc:
            log.warning("discoverd watch of %s failed (%s); retrying", CONTROLLER_SERVICE, exc.message)
        await asyncio.sleep(retry_after)


async def _watch(
    discoverd: DiscoverdClient, on_urls: Callable[[list[str]], None], local_ip: str | None
) -> None:
    addrs: dict[str, str] = {}
    current = False  # the snapshot is complete: act on the whole set, not instance by instance
    last: list[str] = []
    async for event in discoverd.watch(CONTROLLER_SERVICE):
        inst = event.instance
        if event.kind in ("up", "update") and inst is not None and isinstance(inst.get("addr"), str):
            addrs[str(inst["id"])] = str(inst["addr"])
        elif event.kind == "down" and inst is not None:
            addrs.pop(str(inst["id"]), None)
        elif event.kind == "current":
            current = True
        else:
            continue
        if current and addrs:
            urls = order_urls(list(addrs.values()), local_ip)
            if urls != last:
                log.info("controllers: %s", ", ".join(urls))
                last = urls
            on_urls(urls)


class FollowedClient:
    """An :class:`~flynn.controller.client.AsyncClient` whose URL list follows the controllers
    registered in discoverd (:meth:`follow`), or stays on the one ``url`` configured. The client
    is made with the first URLs known; :meth:`client` waits for them."""

    def __init__(
        self,
        key: str,
        session: aiohttp.ClientSession,
        *,
        url: str | None = None,
        local_ip: str | None = None,
        timeout: float = 10.0,
        retry_for: float = 0.0,
    ) -> None:
        self._key = key
        self._session = session
        self._local_ip = local_ip
        self._timeout = timeout
        self._retry_for = retry_for
        self._client: AsyncClient | None = None
        self._known = asyncio.Event()
        self.fixed = url is not None
        if url is not None:
            self._set_urls([url])

    @property
    def urls(self) -> list[str]:
        return list(self._client.urls) if self._client is not None else []

    def _set_urls(self, urls: list[str]) -> None:
        if self._client is None:
            self._client = AsyncClient(
                urls, self._key, timeout=self._timeout, retry_for=self._retry_for, session=self._session
            )
        elif urls != self._client.urls:
            self._client.set_urls(urls)
        self._known.set()

    def _use_key(self, key: str) -> None:
        self._key = key
        if self._client is not None:
            self._client.set_key(key)

    async def follow(self, discoverd: DiscoverdClient, *, retry_after: float = 1.0) -> None:
        """Keep the URLs current from discoverd (run as a task for the daemon's life)."""
        await follow_controllers(discoverd, self._set_urls, local_ip=self._local_ip, retry_after=retry_after)

    async def client(self, wait: float | None = None) -> AsyncClient:
        """The client, once a controller is known: waits for ever, or ``wait`` seconds and then
        fails with an :class:`~flynn.common.errors.APIError` (status 0) like an unreachable one."""
        if self._client is None:
            try:
                async with asyncio.timeout(wait):
                    await self._known.wait()
            except TimeoutError:
                pass
        if self._client is None:
            raise APIError(0, "no controller is registered in discoverd yet")
        return self._client
