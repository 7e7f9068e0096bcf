"""The controller's log endpoints (docs/logs.md), registered by api.py.

    GET    /apps/:app/log   the app's lines from a log aggregator, streamed (newline-delimited JSON)
    GET    /sinks           the log sinks, newest first, each with its delivery status
    POST   /sinks           add a sink (201)
    GET    /sinks/:id
    DELETE /sinks/:id

``/apps/:app/log`` is proxied to an aggregator found in discoverd (service ``logaggregator``; the
next one is tried when one cannot be reached) and streamed through as it comes, so ``follow``
works end to end. A system app's lines are its platform service's (``flynn -a controller log``).

A sink's ``status`` (``connected``, ``delivered``, ``dropped``, ``buffered``, ``error``) is what
the aggregator leader reports for it (asked with a 2 s bound); ``null`` when no aggregator leads
or answers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import web

from flynn.common.errors import APIError
from flynn.controller import schema, sinkschema
from flynn.controller.db import Database
from flynn.controller.errors import BadGateway, Unavailable
from flynn.controller.hosts import Hosts
from flynn.controller.repo import apps as apps_repo
from flynn.controller.repo import sinks as sinks_repo
from flynn.host.client import host_url

log = logging.getLogger(__name__)

AGGREGATOR_SERVICE = "logaggregator"
NDJSON = "application/x-ndjson"
STATUS_FIELDS = ("connected", "delivered", "dropped", "buffered", "error")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


class LogsAPI:
    def __init__(self, db: Database, hosts: Hosts, *, status_timeout: float = 2.0) -> None:
        self.db = db
        self.hosts = hosts
        self.status_timeout = status_timeout

    def register(self, r: web.UrlDispatcher) -> None:
        r.add_get("/apps/{app}/log", self.app_log)
        r.add_get("/sinks", self.list_sinks)
        r.add_post("/sinks", self.create_sink)
        r.add_get("/sinks/{id}", self.get_sink)
        r.add_delete("/sinks/{id}", self.delete_sink)

    @property
    def session(self) -> aiohttp.ClientSession:
        return self.hosts.session

    async def aggregators(self) -> list[str]:
        """URLs of the registered aggregators (an empty list when there is none)."""
        try:
            instances = await self.hosts.discoverd.instances(AGGREGATOR_SERVICE)
        except APIError as exc:
            if exc.status == 404:
                return []
            raise Unavailable(f"cannot ask discoverd for the log aggregators: {exc.message}") from None
        return sorted(host_url(str(i["addr"])) for i in instances if isinstance(i.get("addr"), str))

    # -- log lines -------------------------------------------------------------------------------

    async def app_log(self, request: web.Request) -> web.StreamResponse:
        q = sinkschema.log_query(request.query)
        async with self.db.read() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
        key = app["name"] if app["system"] else str(app["id"])
        urls = await self.aggregators()
        if not urls:
            raise Unavailable("no log aggregator is registered in discoverd")
        last = ""
        for url in urls:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None if q.follow else 30)
            try:
                upstream = await self.session.get(f"{url}/apps/{key}/log", params=q.params(), timeout=timeout)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = f"{url}: {exc or type(exc).__name__}"
                log.warning("log aggregator %s", last)
                continue
            try:
                if upstream.status >= 500:
                    last = f"{url}: HTTP {upstream.status}"
                    continue
                if upstream.status >= 400:
                    raise BadGateway(f"the log aggregator at {url} refused: HTTP {upstream.status}")
                return await self._relay(request, upstream)
            finally:
                upstream.release()
        raise Unavailable(f"no log aggregator could be reached (last: {last})")

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:  # the aggregator went away: end the stream
            log.info("log stream from the aggregator ended: %s", exc or type(exc).__name__)
        await resp.write_eof()
        return resp

    # -- sinks -----------------------------------------------------------------------------------

    async def _status_of(self, url: str) -> dict[str, Any] | None:
        try:
            async with self.session.get(
                url + "/sinks/status", timeout=aiohttp.ClientTimeout(total=self.status_timeout)
            ) as resp:
                if resp.status != 200:
                    return None
                data = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("leader") is True else None

    async def sink_status(self) -> dict[str, dict[str, Any]] | None:
        """Each sink's counters from the aggregator leader (None when none answers as leader)."""
        try:
            async with asyncio.timeout(self.status_timeout):
                urls = await self.aggregators()
        except (TimeoutError, Unavailable):
            return None
        answers = await asyncio.gather(*(self._status_of(u) for u in urls))
        leader = next((a for a in answers if a is not None), None)
        if leader is None:
            return None
        out: dict[str, dict[str, Any]] = {}
        for sink in leader.get("sinks") or []:
            if isinstance(sink, dict) and isinstance(sink.get("id"), str):
                out[sink["id"]] = {k: sink.get(k) for k in STATUS_FIELDS}
        return out

    async def list_sinks(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            sinks = await sinks_repo.list_all(tx)
        status = await self.sink_status() if sinks else None
        for sink in sinks:
            sink["status"] = None if status is None else status.get(sink["id"])
        return _json(sinks)

    async def get_sink(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            sink = await sinks_repo.get(tx, request.match_info["id"])
        status = await self.sink_status()
        sink["status"] = None if status is None else status.get(sink["id"])
        return _json(sink)

    async def create_sink(self, request: web.Request) -> web.Response:
        spec = sinkschema.sink_create(await schema.read_body(request))
        async with self.db.transaction() as tx:
            return _json(await sinks_repo.create(tx, spec), 201)

    async def delete_sink(self, request: web.Request) -> web.Response:
        async with self.db.transaction() as tx:
            return _json(await sinks_repo.delete(tx, request.match_info["id"]))
