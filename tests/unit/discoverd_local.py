"""Several real discoverd nodes (pysyncobj + HTTP API) in one process, on 127.0.0.x addresses.

Each node binds its own loopback address, so nodes use the same ports as on real hosts would
(Raft and HTTP) and address each other by IP exactly like the daemon does. No DNS server.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from flynn.discoverd.api import make_app
from flynn.discoverd.membership import Membership
from flynn.discoverd.raft import RaftSettings, Role
from flynn.discoverd.store import RoleFile, Store

SECRET = "test-secret-0123456789"  # noqa: S105 - a throwaway test cluster's secret


def free_port_pair() -> tuple[int, int]:
    """Two ports free on every 127.0.0.x we use (checked on 127.0.0.1..9)."""
    for _ in range(100):
        base = random.randint(20000, 60000)
        ok = True
        for port in (base, base + 1):
            for host in range(1, 10):
                with socket.socket() as s:
                    try:
                        s.bind((f"127.0.0.{host}", port))
                    except OSError:
                        ok = False
        if ok:
            return base, base + 1
    raise RuntimeError("no free ports")


@dataclass
class Node:
    ip: str
    store: Store
    membership: Membership
    runner: web.AppRunner
    url: str
    running: bool = True

    async def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self.store.close_watches()
        await self.runner.cleanup()
        await self.membership.stop()
        await self.store.stop()


@dataclass
class LocalCluster:
    tmp: Path
    raft_port: int
    http_port: int
    ttl: float = 2.0
    nodes: dict[str, Node] = field(default_factory=dict)
    bootstrap: list[str] = field(default_factory=list)

    @staticmethod
    def ip(k: int) -> str:
        return f"127.0.0.{k}"

    async def start_node(self, ip: str, peers: list[str] | None = None) -> Node:
        peers = peers or self.bootstrap
        data_dir = self.tmp / ip
        settings = RaftSettings(
            ip=ip, secret=SECRET, data_dir=data_dir, port=self.raft_port, commit_timeout=5
        )
        holder: dict[str, Membership] = {}

        async def forward(leader: str, ages: list[tuple[str, str, float]]) -> None:
            await holder["m"].forward_heartbeats(leader, ages)

        store = Store(settings, ttl=self.ttl, forward_heartbeats=forward)
        membership = Membership(store, self.http_port)
        holder["m"] = membership
        saved = RoleFile.load(data_dir / "role.json")
        role: Role
        if saved is not None:
            role, node_peers = saved.role, saved.peers
        else:
            role, node_peers = ("peer" if ip in peers else "proxy"), peers
        store.start(role, node_peers)
        membership.start()
        runner = web.AppRunner(make_app(store, membership), access_log=None, shutdown_timeout=2)
        await runner.setup()
        await web.TCPSite(runner, ip, self.http_port).start()
        node = Node(ip, store, membership, runner, f"http://{ip}:{self.http_port}")
        self.nodes[ip] = node
        return node

    async def start(self, n: int) -> None:
        self.bootstrap = [self.ip(k) for k in range(1, n + 1)]
        for ip in self.bootstrap:
            await self.start_node(ip)
        await self.wait_for(lambda: self.leader() is not None, 10, "a Raft leader")

    def leader(self) -> str | None:
        leaders = [ip for ip, n in self.nodes.items() if n.running and n.store.raft.is_leader()]
        return leaders[0] if len(leaders) == 1 else None

    def urls(self, *ips: str) -> list[str]:
        return [self.nodes[ip].url for ip in (ips or tuple(self.nodes))]

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes.values()))

    @staticmethod
    async def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while loop.time() - t0 < timeout:
            if check():
                return loop.time() - t0
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    @staticmethod
    async def wait_for_async(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while loop.time() - t0 < timeout:
            if await check():
                return loop.time() - t0
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
