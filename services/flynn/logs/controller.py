"""The sinks, from the controller: ``GET /sinks``, then again on every ``sink`` event.

Controllers are found through a discoverd watch of ``controller``; the event stream
(:class:`flynn.controller.client.EventStream`) reconnects and resumes by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from flynn.common.errors import APIError
from flynn.controller.client import AsyncClient
from flynn.controller.locate import follow_controllers
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.logs.sinks import BadSink, SinkConfig

log = logging.getLogger(__name__)

OnSinks = Callable[[list[SinkConfig]], Awaitable[None]]


def parse_sinks(data: Any) -> list[SinkConfig]:
    out = []
    for item in data if isinstance(data, list) else []:
        try:
            out.append(SinkConfig.from_api(item))
        except BadSink as exc:
            log.warning("ignoring sink %s: %s", str(item.get("id") if isinstance(item, dict) else "?"), exc)
    return out


class SinkSource:
    def __init__(
        self, discoverd: DiscoverdClient, session: aiohttp.ClientSession, key: str, on_sinks: OnSinks
    ) -> None:
        self.discoverd = discoverd
        self.session = session
        self.key = key
        self.on_sinks = on_sinks
        self.client: AsyncClient | None = None
        self.known = asyncio.Event()
        self.loaded = asyncio.Event()

    async def run(self) -> None:
        watcher = asyncio.get_running_loop().create_task(self._controllers(), name="controllers")
        try:
            await self.known.wait()
            while True:
                try:
                    await self._follow()
                except APIError as exc:
                    log.warning("cannot read the sinks from the controller: %s; retrying", exc)
                await asyncio.sleep(2.0)
        finally:
            watcher.cancel()

    async def _follow(self) -> None:
        if self.client is None:
            return
        since = await self.client.last_event_id(object_types=["sink"])
        await self._reload()
        async for _event in self.client.events(object_types=["sink"], since_id=since):
            await self._reload()

    async def _reload(self) -> None:
        if self.client is None:
            return
        sinks = parse_sinks(await self.client.request("GET", "/sinks"))
        await self.on_sinks(sinks)
        self.loaded.set()

    async def _controllers(self) -> None:
        await follow_controllers(self.discoverd, self._set_urls)

    def _set_urls(self, urls: list[str]) -> None:
        if self.client is None:
            self.client = AsyncClient(urls, self.key, session=self.session, retry_for=5)
        else:
            self.client.set_urls(urls)
        self.known.set()
