"""Backends from discoverd: one watch per routed service, feeding ``RouteTable.set_backends``.

The route sync says which backend sets the routes use (:meth:`BackendWatches.want`); a set is a
discoverd service name, or ``SERVICE@leader`` for leader routes. Each service wanted gets one
watch (``GET /services/:s/instances`` as SSE, resumable: :class:`flynn.discoverd.client.Watch`),
which gives its instances (``up``/``update``/``down``) and its leader (``leader``). After the
watch's first ``current`` every change is published at once: the service's set becomes exactly
the instances' addresses, the ``@leader`` set exactly the leader's. A new instance is used by the
next request; a removed one (its job was deregistered before being stopped, docs/host.md) gets
no new requests while those in flight finish (the data plane's removal semantics). While
discoverd cannot be reached the last known sets stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from flynn.common.errors import APIError
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.router.backends import addr_key, parse_addr
from flynn.router.routes import RouteTable
from flynn.router.routesync import LEADER_SUFFIX, split_key

log = logging.getLogger(__name__)


@dataclass
class _Watched:
    service: str
    task: asyncio.Task[None] | None = None
    keys: set[str] = field(default_factory=set)  # backend sets fed from this service
    instances: dict[str, str] = field(default_factory=dict)  # instance id -> "host:port"
    leader: str | None = None  # the leader's address
    current: bool = False  # the first snapshot was received
    events: int = 0
    errors: int = 0


class BackendWatches:
    def __init__(self, table: RouteTable, discoverd: DiscoverdClient, *, retry_after: float = 1.0) -> None:
        self.table = table
        self.discoverd = discoverd
        self.retry_after = retry_after
        self._watched: dict[str, _Watched] = {}

    def want(self, keys: set[str]) -> None:
        """Watch exactly the services behind these backend sets (from now on)."""
        by_service: dict[str, set[str]] = {}
        for key in keys:
            service, _leader = split_key(key)
            by_service.setdefault(service, set()).add(key)
        for service in sorted(set(self._watched) - set(by_service)):
            gone = self._watched.pop(service)
            if gone.task is not None:
                gone.task.cancel()
            for key in gone.keys:
                self.table.set_backends(key, [])
        for service, wanted in sorted(by_service.items()):
            w = self._watched.get(service)
            if w is None:
                w = self._watched[service] = _Watched(service)
                w.task = asyncio.get_running_loop().create_task(self._run(w), name=f"watch-{service}")
            dropped = w.keys - wanted
            w.keys = wanted
            for key in dropped:
                self.table.set_backends(key, [])
            if w.current:
                self._publish(w)

    def services(self) -> list[str]:
        return sorted(self._watched)

    def ready(self) -> bool:
        """Every watch has received its first snapshot."""
        return all(w.current for w in self._watched.values())

    def status(self) -> dict[str, Any]:
        return {
            s: {
                "current": w.current,
                "instances": sorted(w.instances.values()),
                "leader": w.leader,
                "events": w.events,
                "errors": w.errors,
            }
            for s, w in sorted(self._watched.items())
        }

    async def close(self) -> None:
        tasks = [w.task for w in self._watched.values() if w.task is not None]
        self._watched.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, w: _Watched) -> None:
        while True:
            try:
                await self._follow(w)
            except APIError as exc:
                w.errors += 1
                log.warning("discoverd watch of %s failed (%s); retrying", w.service, exc.message)
            await asyncio.sleep(self.retry_after)

    async def _follow(self, w: _Watched) -> None:
        watch = self.discoverd.watch(w.service)
        async for event in watch:
            inst = event.instance
            if event.kind in ("up", "update") and inst is not None and isinstance(inst.get("addr"), str):
                w.instances[str(inst["id"])] = str(inst["addr"])
            elif event.kind == "down" and inst is not None:
                w.instances.pop(str(inst["id"]), None)
            elif event.kind == "leader":
                addr = inst.get("addr") if inst is not None else None
                w.leader = str(addr) if isinstance(addr, str) else None
            elif event.kind == "current":
                w.current = True
            else:
                continue
            w.events += 1
            if w.current:
                self._publish(w)

    def _publish(self, w: _Watched) -> None:
        addrs = sorted({a for a in w.instances.values() if _usable(w.service, a)})
        for key in w.keys:
            if key.endswith(LEADER_SUFFIX):
                leader = w.leader if w.leader in addrs else None
                wanted = [leader] if leader else []
            else:
                wanted = addrs
            if self.table.backends(key) != sorted(addr_key(parse_addr(a)) for a in wanted):
                self.table.set_backends(key, wanted)


def _usable(service: str, addr: str) -> bool:
    try:
        parse_addr(addr)
    except ValueError as exc:
        log.error("service %s: ignoring an instance: %s", service, exc)
        return False
    return True
