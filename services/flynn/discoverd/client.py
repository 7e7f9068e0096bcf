"""The discoverd client used by every component (asyncio, aiohttp).

* :meth:`Client.register` registers an instance and keeps it alive with heartbeats (re-registering
  if discoverd forgot it), returning a :class:`Registration` that also follows the service's
  leader, which is how components elect their own leaders.
* :meth:`Client.watch` is a resumable watch: it reconnects (to the next server when several are
  given) with the id of the last event it saw, so no event is lost or repeated; after a server-side
  resync it turns the difference into ``up``/``update``/``down`` events itself.

Requests retry connection errors and 503 (no Raft leader) for ``retry_for`` seconds, across the
given servers, because writes are idempotent (a registration of the same instance is a no-op).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from flynn.common.errors import APIError

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:1111"


def default_urls() -> list[str]:
    """``DISCOVERD`` (comma-separated URLs) or the local discoverd."""
    raw = os.environ.get("DISCOVERD", DEFAULT_URL)
    return [u.strip().rstrip("/") for u in raw.split(",") if u.strip()]


def instance_id(addr: str, proto: str = "tcp") -> str:
    """A stable id for an address, so re-registering after a restart is idempotent."""
    return hashlib.sha256(f"{proto}-{addr}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # up, update, down, leader, meta, current
    service: str | None
    instance: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    id: str | None = None


class Client:
    def __init__(
        self,
        urls: list[str] | str | None = None,
        *,
        timeout: float = 5.0,
        retry_for: float = 10.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if isinstance(urls, str):
            urls = [urls]
        self.urls = [u.rstrip("/") for u in (urls or default_urls())]
        if not self.urls:
            raise ValueError("no discoverd URL given")
        self.timeout = timeout
        self.retry_for = retry_for
        self._session = session
        self._own_session = session is None
        self._current = 0

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing --------------------------------------------------------------------------------

    async def request(self, method: str, path: str, body: Any = None, *, retry: bool = True) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.retry_for if retry else 0)
        delay = 0.1
        while True:
            url = self.urls[self._current]
            try:
                async with self.session.request(
                    method,
                    url + path,
                    json=body,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as resp:
                    data = await resp.json(content_type=None) if resp.content_length != 0 else None
                    if resp.status < 400:
                        return data
                    message = data.get("error") if isinstance(data, dict) else None
                    error = APIError(resp.status, str(message or resp.reason), url=url + path)
                    if resp.status != 503:
                        raise error
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
                error = APIError(0, f"cannot reach discoverd at {url}: {exc or type(exc).__name__}", url=url)
            if loop.time() + delay > deadline:
                raise error
            self._current = (self._current + 1) % len(self.urls)
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, 1.0)

    # -- services and instances ------------------------------------------------------------------

    async def add_service(self, name: str, leader_type: str = "oldest") -> dict[str, Any]:
        return dict(await self.request("PUT", f"/services/{name}", {"leader_type": leader_type}))

    async def remove_service(self, name: str) -> None:
        await self.request("DELETE", f"/services/{name}")

    async def services(self) -> list[str]:
        return list(await self.request("GET", "/services"))

    async def instances(self, service: str) -> list[dict[str, Any]]:
        return list(await self.request("GET", f"/services/{service}/instances"))

    async def register_instance(
        self, service: str, iid: str, addr: str, proto: str = "tcp", meta: dict[str, str] | None = None
    ) -> dict[str, Any]:
        body = {"addr": addr, "proto": proto, "meta": meta or {}}
        return dict(await self.request("PUT", f"/services/{service}/instances/{iid}", body))

    async def deregister(self, service: str, iid: str) -> None:
        await self.request("DELETE", f"/services/{service}/instances/{iid}")

    async def heartbeat(self, service: str, iid: str) -> bool:
        """False when discoverd does not know the instance (it must register again)."""
        try:
            await self.request("POST", f"/services/{service}/instances/{iid}/heartbeat")
        except APIError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def leader(self, service: str) -> dict[str, Any] | None:
        try:
            return dict(await self.request("GET", f"/services/{service}/leader"))
        except APIError as exc:
            if exc.status == 404:
                return None
            raise

    async def set_leader(self, service: str, iid: str) -> dict[str, Any]:
        return dict(await self.request("PUT", f"/services/{service}/leader", {"id": iid}))

    async def get_meta(self, service: str) -> dict[str, Any]:
        return dict(await self.request("GET", f"/services/{service}/meta"))

    async def set_meta(self, service: str, data: Any, index: int) -> dict[str, Any]:
        """Compare-and-set: ``index`` is the meta's current index (0 to create); 409 if stale."""
        return dict(await self.request("PUT", f"/services/{service}/meta", {"data": data, "index": index}))

    # -- raft ------------------------------------------------------------------------------------

    async def raft_status(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/raft/status"))

    async def promote(self, ip: str) -> dict[str, Any]:
        return dict(await self.request("PUT", f"/raft/peers/{ip}"))

    async def demote(self, ip: str, *, force: bool = False) -> dict[str, Any]:
        return dict(await self.request("DELETE", f"/raft/peers/{ip}" + ("?force=true" if force else "")))

    # -- registration with heartbeats ------------------------------------------------------------

    async def register(
        self,
        service: str,
        addr: str,
        *,
        meta: dict[str, str] | None = None,
        iid: str | None = None,
        proto: str = "tcp",
        leader_type: str = "oldest",
        interval: float = 3.0,
    ) -> Registration:
        await self.add_service(service, leader_type)
        reg = Registration(
            self, service, iid or instance_id(addr, proto), addr, proto, dict(meta or {}), interval
        )
        await reg.start()
        return reg

    # -- watches ---------------------------------------------------------------------------------

    def watch(self, services: list[str] | str | None = None, *, path: str | None = None) -> Watch:
        if isinstance(services, str):
            services = [services]
        return Watch(self, services, path=path)


class Registration:
    """A registered instance kept alive by heartbeats until :meth:`close`."""

    def __init__(
        self,
        client: Client,
        service: str,
        iid: str,
        addr: str,
        proto: str,
        meta: dict[str, str],
        interval: float,
    ) -> None:
        self.client = client
        self.service = service
        self.id = iid
        self.addr = addr
        self.proto = proto
        self.meta = meta
        self.interval = interval
        self.leader: dict[str, Any] | None = None
        self._leader_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def is_leader(self) -> bool:
        return self.leader is not None and self.leader.get("id") == self.id

    async def start(self) -> None:
        await self.client.register_instance(self.service, self.id, self.addr, self.proto, self.meta)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeat_loop(), name=f"heartbeat-{self.service}"),
            loop.create_task(self._leader_loop(), name=f"leader-{self.service}"),
        ]

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if not await self.client.heartbeat(self.service, self.id):
                    log.warning("discoverd forgot %s/%s; registering again", self.service, self.id)
                    await self.client.add_service(self.service)
                    await self.client.register_instance(
                        self.service, self.id, self.addr, self.proto, self.meta
                    )
            except APIError as exc:
                log.warning("heartbeat of %s/%s failed: %s", self.service, self.id, exc)

    async def _leader_loop(self) -> None:
        async for event in self.client.watch(self.service, path=f"/services/{self.service}/leader"):
            if event.kind == "leader":
                self.leader = event.instance
                self._leader_changed.set()

    async def wait_leader_change(self) -> dict[str, Any] | None:
        """Wait for the next leader event of the service (bound it with asyncio.timeout)."""
        self._leader_changed.clear()
        await self._leader_changed.wait()
        return self.leader

    async def wait_until_leader(self) -> None:
        """Wait until this instance is the service's leader (bound it with asyncio.timeout)."""
        while not self.is_leader:
            self._leader_changed.clear()
            await self._leader_changed.wait()

    async def set_meta(self, meta: dict[str, str]) -> None:
        self.meta = dict(meta)
        await self.client.register_instance(self.service, self.id, self.addr, self.proto, self.meta)

    async def close(self, *, deregister: bool = True) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if deregister:
            with contextlib.suppress(APIError):
                await self.client.deregister(self.service, self.id)


class Announcement:
    """A daemon's own registration, made in the background and withdrawn at stop.

    :meth:`start` registers ``service`` at ``addr``, retrying with backoff (``first_delay``
    doubling up to ``max_delay``) while discoverd cannot take it, e.g. while it is starting on
    the same host. :meth:`close` deregisters (within ``within`` seconds) or stops trying."""

    def __init__(
        self,
        client: Client,
        service: str,
        addr: str,
        *,
        meta: dict[str, str] | None = None,
        first_delay: float = 0.5,
        max_delay: float = 10.0,
    ) -> None:
        self.client = client
        self.service = service
        self.addr = addr
        self.meta = meta
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.registration: Registration | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._register(), name=f"announce-{self.service}")

    async def _register(self) -> None:
        delay = self.first_delay
        while True:
            try:
                self.registration = await self.client.register(self.service, self.addr, meta=self.meta)
            except APIError as exc:
                log.warning("cannot register in discoverd yet: %s; retrying in %.1fs", exc.message, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)
                continue
            log.info("registered in discoverd as %s at %s", self.service, self.addr)
            return

    async def close(self, within: float = 5.0) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        reg, self.registration = self.registration, None
        if reg is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(within):
                    await reg.close()  # deregister first: no more traffic is sent here


@dataclass
class _Parsed:
    id: str | None = None
    event: str = "message"
    data: list[str] = field(default_factory=list)


class Watch:
    """Async iterator of :class:`WatchEvent`, resuming across reconnects and servers."""

    def __init__(self, client: Client, services: list[str] | None, *, path: str | None = None) -> None:
        self.client = client
        self.services = services
        if path is None:
            if services and len(services) == 1:
                path = f"/services/{services[0]}/instances"
            else:
                query = "&".join(f"service={s}" for s in services or [])
                path = "/events" + (f"?{query}" if query else "")
        self.path = path
        self.last_id: str | None = None
        # what this watcher believes exists: service -> id -> instance
        self.known: dict[str, dict[str, dict[str, Any]]] = {}
        self.connected = asyncio.Event()
        self.reconnects = 0

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._run()

    async def _run(self) -> AsyncIterator[WatchEvent]:
        delay = 0.1
        while True:
            url = self.client.urls[self.client._current]
            headers = {"Accept": "text/event-stream"}
            if self.last_id:
                headers["Last-Event-ID"] = self.last_id
            try:
                async with self.client.session.get(
                    url + self.path,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.client.timeout, sock_read=45),
                ) as resp:
                    if resp.status >= 400:
                        data = await resp.json(content_type=None)
                        message = data.get("error") if isinstance(data, dict) else resp.reason
                        if resp.status in (404, 400):
                            raise APIError(resp.status, str(message), url=url + self.path)
                        raise aiohttp.ClientResponseError(
                            resp.request_info, (), status=resp.status, message=str(message)
                        )
                    delay = 0.1
                    async for event in self._events(resp):
                        yield event
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                log.debug("watch %s: %s; reconnecting", self.path, exc)
            self.connected.clear()
            self.reconnects += 1
            self.client._current = (self.client._current + 1) % len(self.client.urls)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[WatchEvent]:
        resyncing: dict[str, dict[str, dict[str, Any]]] | None = None
        async for message in sse_messages(resp):
            data = json.loads("\n".join(message.data)) if message.data else {}
            kind, event_id = message.event, message.id
            if kind != "current" and event_id and self.last_id and _id_key(event_id) <= _id_key(self.last_id):
                continue  # already seen before a reconnect
            if kind == "resync":
                resyncing = {}
                continue
            if resyncing is not None and kind == "up":
                inst = data["instance"]
                resyncing.setdefault(data["service"], {})[inst["id"]] = inst
                continue
            if resyncing is not None and kind == "current":
                for out in self._apply_resync(resyncing):
                    yield out
                resyncing = None
                tracked: WatchEvent | None = WatchEvent("current", None, id=event_id)
            else:
                tracked = self._track(kind, data, event_id)
            if event_id:
                self.last_id = event_id
            if kind == "current":
                self.connected.set()
            if tracked is not None:
                yield tracked

    def _track(self, kind: str, data: dict[str, Any], event_id: str | None) -> WatchEvent | None:
        service = data.get("service")
        inst = data.get("instance")
        if kind in ("up", "update") and service and inst:
            known = self.known.setdefault(service, {})
            if kind == "up" and known.get(inst["id"]) == inst:
                return None  # the snapshot after a reconnect repeats what we know
            known[inst["id"]] = inst
        elif kind == "down" and service and inst:
            self.known.get(service, {}).pop(inst["id"], None)
        return WatchEvent(kind, service, inst, data.get("meta"), event_id)

    def _apply_resync(self, fresh: dict[str, dict[str, dict[str, Any]]]) -> list[WatchEvent]:
        out: list[WatchEvent] = []
        for service in sorted(set(self.known) | set(fresh)):
            old, new = self.known.get(service, {}), fresh.get(service, {})
            for iid in sorted(old.keys() - new.keys()):
                out.append(WatchEvent("down", service, old[iid]))
            for iid, inst in sorted(new.items()):
                if iid not in old:
                    out.append(WatchEvent("up", service, inst))
                elif old[iid] != inst:
                    out.append(WatchEvent("update", service, inst))
            self.known[service] = dict(new)
        return out


async def sse_messages(resp: aiohttp.ClientResponse) -> AsyncIterator[_Parsed]:
    """Server-Sent Events messages of a response, until the server closes it."""
    parsed = _Parsed()
    while True:
        raw = await resp.content.readline()
        if not raw:
            return
        line = raw.decode().rstrip("\n").rstrip("\r")
        if line.startswith(":"):
            continue  # a comment (keepalive)
        if not line:
            if parsed.data or parsed.id or parsed.event != "message":
                yield parsed
            parsed = _Parsed()
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            parsed.id = value
        elif name == "event":
            parsed.event = value
        elif name == "data":
            parsed.data.append(value)


def _id_key(event_id: str) -> tuple[int, int]:
    index, _, seq = event_id.partition(":")
    try:
        return (int(index), int(seq or 0))
    except ValueError:
        return (0, 0)
