"""The controllers' URLs, from discoverd's ``controller`` service.

Every service that calls the controller (scheduler, router, log aggregator) keeps its
:class:`~flynn.controller.client.AsyncClient`'s URL list equal to the registered controllers with
:func:`follow_controllers`: the one on this host first (no network hop, and it keeps working
when this host is cut off from the others), then the rest by address.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from flynn.common.errors import APIError
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
