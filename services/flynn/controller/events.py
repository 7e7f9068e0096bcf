"""Events: the ``LISTEN controller_events`` fan-out and ``GET /events`` (JSON list or SSE).

:class:`EventHub` keeps one LISTEN connection per controller. A notification only says "something
new"; the hub then reads the new rows itself (``id > last seen``), hands each to in-process
callbacks (key rotation, the deployer) and wakes every SSE subscriber, which reads its own rows.
Readers always read rows back from the table, and the table's ids are handed out in commit order,
so nothing is lost between a replay and the live stream, nor when LISTEN reconnects (everyone is
woken then and re-reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from flynn.controller.db import UNAVAILABLE, Database
from flynn.controller.repo import events as events_repo
from flynn.controller.repo.events import Filter

log = logging.getLogger(__name__)

Callback = Callable[[dict[str, Any]], Awaitable[None]]


class Subscription:
    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self.wake = asyncio.Event()

    async def wait(self, seconds: float) -> bool:
        """True when woken (new events, or the hub closing), False after ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                await self.wake.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.hub._subscribers.discard(self)


class EventHub:
    def __init__(self, db: Database, *, idle: float = 10.0) -> None:
        self.db = db
        self.idle = idle
        self.last_id = 0
        self.listening = asyncio.Event()
        self.closing = False
        self._subscribers: set[Subscription] = set()
        self._callbacks: list[Callback] = []
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def add_callback(self, callback: Callback) -> None:
        self._callbacks.append(callback)

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self._subscribers.add(sub)
        return sub

    async def start(self) -> None:
        async with self.db.read() as tx:
            self.last_id = await events_repo.last_id(tx)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._listen_loop(), name="events-listen"),
            loop.create_task(self._read_loop(), name="events-read"),
        ]

    async def close(self) -> None:
        self.closing = True
        self._wake_all()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _wake_all(self) -> None:
        for sub in list(self._subscribers):
            sub.wake.set()

    async def _listen_loop(self) -> None:
        delay = 0.1
        while True:
            try:
                async for _payload in self.db.listen():
                    self.listening.set()
                    delay = 0.1
                    self._dirty.set()  # coalesced: one read catches up every notification so far
            except UNAVAILABLE as exc:
                log.warning("LISTEN connection lost: %s; reconnecting", exc)
            except Exception:
                log.exception("LISTEN loop failed; reconnecting")
            self.listening.clear()
            self._dirty.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _read_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.catch_up()
            except UNAVAILABLE as exc:
                log.warning("cannot read events: %s", exc)
                await asyncio.sleep(0.5)
                self._dirty.set()
            except Exception:
                log.exception("reading events failed")
                await asyncio.sleep(0.5)
            self._wake_all()

    async def catch_up(self) -> None:
        while True:
            async with self.db.read() as tx:
                rows = await events_repo.after(tx, Filter(), self.last_id, limit=500)
            for event in rows:
                self.last_id = event["id"]
                for callback in self._callbacks:
                    try:
                        await callback(event)
                    except Exception:
                        log.exception("event callback failed for event %s", event["id"])
            if len(rows) < 500:
                return


def sse_message(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"))
    return f"id: {event['id']}\nevent: {event['object_type']}\ndata: {data}\n\n".encode()


async def stream(
    request: web.Request,
    db: Database,
    hub: EventHub,
    flt: Filter,
    *,
    since_id: int | None,
    past: bool,
    count: int,
    keepalive: float,
) -> web.StreamResponse:
    """SSE: replay (after ``since_id``, or the last ``count`` with ``past``), then follow live."""
    sub = hub.subscribe()  # before the first read: whatever commits after it wakes us
    resp: web.StreamResponse | None = None
    try:
        async with db.read() as tx:
            if since_id is not None:
                last = since_id
                replay: list[dict[str, Any]] = []
            else:
                last = await events_repo.last_id(tx)
                replay = []
                if past:
                    newest = await events_repo.newest(tx, flt, count)
                    replay = [e for e in reversed(newest) if e["id"] <= last]
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        await resp.write(b"retry: 1000\n: connected\n\n")
        for event in replay:
            await resp.write(sse_message(event))
        while not hub.closing:
            sub.wake.clear()
            async with db.read() as tx:
                rows = await events_repo.after(tx, flt, last, limit=500)
            for event in rows:
                await resp.write(sse_message(event))
                last = event["id"]
            if len(rows) == 500:
                continue
            if not await sub.wait(keepalive):
                await resp.write(b": keepalive\n\n")
        return resp
    except ConnectionResetError:  # the client went away
        return resp if resp is not None else web.StreamResponse()
    except UNAVAILABLE:
        if resp is not None and resp.prepared:
            return resp  # the stream ends; the client resumes with Last-Event-ID
        raise
    finally:
        sub.close()
