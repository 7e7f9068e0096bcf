"""Following every host's journal: one :class:`HostFollower` per host of a discoverd watch of
``flynn-host``, each reading the host's ``GET /host/logs`` stream (:mod:`flynn.host.logstream`).

The first connection to a host asks for the last N lines of every app and platform service
(``per_app``), which is how a fresh aggregator rebuilds its buffers from the journals; after that
the stream is resumed by cursor, across disconnects and across a host leaving and rejoining
discoverd, so lines are neither lost nor repeated. Backlog lines are only buffered; live lines are
also handed to ``on_live`` (the sinks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from flynn.common.errors import APIError
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.host.client import HostClient, host_url
from flynn.host.logstream import LogStream
from flynn.logs.buffer import Buffers
from flynn.logs.model import BadLine, Line

log = logging.getLogger(__name__)

HOST_SERVICE = "flynn-host"


@dataclass
class HostFollower:
    host_id: str
    addr: str
    stream: LogStream
    received: int = 0
    bad: int = 0
    live: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any]:
        return {
            "addr": self.addr,
            "connected": self.stream.connected.is_set() and self.task is not None and not self.task.done(),
            "live": self.live.is_set(),
            "received": self.received,
            "reconnects": self.stream.reconnects,
            "bad": self.bad,
        }


def host_id_of(instance: dict[str, Any]) -> str:
    meta = instance.get("meta") or {}
    value = meta.get("id") if isinstance(meta, dict) else None
    return str(value or instance.get("id", ""))


class HostFollowers:
    def __init__(
        self,
        discoverd: DiscoverdClient,
        session: aiohttp.ClientSession,
        buffers: Buffers,
        on_live: Callable[[Line], None],
        *,
        lines: int,
    ) -> None:
        self.discoverd = discoverd
        self.session = session
        self.buffers = buffers
        self.on_live = on_live
        self.lines = lines
        self.followers: dict[str, HostFollower] = {}
        self.current = asyncio.Event()  # the watch delivered its first snapshot of hosts

    # -- hosts from discoverd ---------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                async for event in self.discoverd.watch(HOST_SERVICE):
                    inst = event.instance
                    if (
                        event.kind in ("up", "update")
                        and inst is not None
                        and isinstance(inst.get("addr"), str)
                    ):
                        self.host_up(host_id_of(inst), str(inst["addr"]))
                    elif event.kind == "down" and inst is not None:
                        await self.host_down(host_id_of(inst))
                    elif event.kind == "current":
                        self.current.set()
            except APIError as exc:
                log.warning("discoverd watch of %s failed (%s); retrying", HOST_SERVICE, exc)
            await asyncio.sleep(1.0)

    def host_up(self, host_id: str, addr: str) -> None:
        old = self.followers.get(host_id)
        if old is not None and old.addr == addr and old.task is not None and not old.task.done():
            return
        if old is not None and old.task is not None:
            old.task.cancel()
        client = HostClient(host_url(addr), session=self.session, timeout=10)
        if old is not None and old.stream.went_live and old.stream.cursor is not None:
            stream = client.follow_logs(cursor=old.stream.cursor, platform=True)
        elif old is not None and old.stream.went_live:  # its journal had no line then: from its tail
            stream = client.follow_logs(lines=0, platform=True)
            stream.went_live = True
        else:
            stream = client.follow_logs(lines=self.lines, per_app=True, platform=True)
        follower = HostFollower(host_id, addr, stream, received=old.received if old else 0)
        if old is not None and old.live.is_set():
            follower.live.set()
        follower.task = asyncio.get_running_loop().create_task(self._follow(follower), name=f"logs-{host_id}")
        self.followers[host_id] = follower
        log.info("following the journal of host %s at %s", host_id, addr)

    async def host_down(self, host_id: str) -> None:
        follower = self.followers.get(host_id)
        if follower is None or follower.task is None:
            return
        follower.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await follower.task
        log.info("host %s left discoverd; its lines are kept, following resumes when it is back", host_id)

    # -- one host ---------------------------------------------------------------------------------

    async def _follow(self, f: HostFollower) -> None:
        while True:
            try:
                await self._read(f)
            except APIError as exc:  # the host refused the request (4xx): log it, try again later
                log.warning("host %s: %s; retrying in 5s", f.host_id, exc)
            await asyncio.sleep(5.0)

    async def _read(self, f: HostFollower) -> None:
        async for event in f.stream:
            if event.line is None:
                if not f.live.is_set():
                    log.info("host %s: backlog read (%d lines), following", f.host_id, f.received)
                f.live.set()
                continue
            try:
                line = Line.from_host(event.line, f.host_id)
            except BadLine as exc:
                f.bad += 1
                log.debug("host %s sent a bad line: %s", f.host_id, exc)
                continue
            f.received += 1
            if self.buffers.add(line, live=event.live) and event.live:
                self.on_live(line)
            if f.received % 1000 == 0:
                await asyncio.sleep(0)  # a long backlog does not hold the loop

    async def wait_initial(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bound, not a request timeout
        """Wait (up to ``timeout``) until the hosts known at start have sent their backlogs."""
        try:
            async with asyncio.timeout(timeout):
                await self.current.wait()
                for follower in list(self.followers.values()):
                    await follower.live.wait()
        except TimeoutError:
            waiting = [h for h, f in self.followers.items() if not f.live.is_set()]
            log.warning("backlogs not read within %gs from: %s", timeout, ", ".join(waiting) or "discoverd")
            return False
        return True

    def status(self) -> dict[str, Any]:
        return {host_id: f.status() for host_id, f in sorted(self.followers.items())}

    async def close(self) -> None:
        for follower in self.followers.values():
            if follower.task is not None:
                follower.task.cancel()
        for follower in self.followers.values():
            if follower.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await follower.task
