"""Raft membership: promote, demote, and keeping every node's role in line with the leader's view.

Promote and demote run on the Raft leader (other nodes forward the request over HTTP). The
*reconcile* loop on every node asks the leader for the voting members every few seconds and fixes
its own role: a proxy listed as a member becomes a peer, a peer no longer listed becomes a proxy
(so a force-demoted node that comes back does not disturb the cluster), and a proxy follows
changes to the peer list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp

from flynn.discoverd.raft import Unavailable
from flynn.discoverd.state import CommandError
from flynn.discoverd.store import Store

log = logging.getLogger(__name__)

FORWARD_RETRY_SECONDS = 6.0  # longer than an election (pysyncobj: 0.4-1.4 s timeouts)
RECONCILE_INTERVAL = 3.0


class Membership:
    def __init__(self, store: Store, http_port: int = 1111) -> None:
        self.store = store
        self.http_port = http_port
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def url(self, ip: str, path: str) -> str:
        host = f"[{ip}]" if ":" in ip else ip
        return f"http://{host}:{self.http_port}{path}"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5, connect=1.5))
        return self._session

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._reconcile_loop(), name="reconcile")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    # -- HTTP between nodes ----------------------------------------------------------------------

    async def call(self, method: str, ip: str, path: str, body: Any = None) -> Any:
        """JSON request to another node's API; raises CommandError with its status and message."""
        try:
            async with self.session.request(method, self.url(ip, path), json=body) as resp:
                data = await resp.json(content_type=None)
                if resp.status >= 400:
                    message = data.get("error") if isinstance(data, dict) else None
                    raise CommandError(resp.status, str(message or resp.reason))
                return data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"discoverd on {ip} unreachable: {exc or type(exc).__name__}") from None

    async def forward_heartbeats(self, leader: str, ages: list[tuple[str, str, float]]) -> None:
        await self.call("POST", leader, "/raft/heartbeats", {"ages": [list(a) for a in ages]})

    # -- promote / demote (on the leader) ---------------------------------------------------------

    async def promote(self, ip: str) -> dict[str, Any]:
        raft = self.store.raft
        if not raft.is_leader():
            return await self._forward("PUT", ip)
        if ip in raft.peers():
            return {"peers": raft.peers(), "changed": False}
        status = await self.call("GET", ip, "/raft/status")  # must be a running discoverd
        if status.get("role") != "proxy":
            raise CommandError(409, f"{ip} is not a proxy (role {status.get('role')})")
        await raft.add_peer(ip)
        peers = raft.peers()
        log.info("promoted %s; peers now %s", ip, ", ".join(peers))
        try:
            await self.call("POST", ip, "/raft/role", {"role": "peer", "peers": peers})
        except (Unavailable, CommandError) as exc:  # its reconcile loop will pick the change up
            log.warning("could not tell %s to become a peer: %s", ip, exc)
        return {"peers": peers, "changed": True}

    async def demote(self, ip: str, force: bool) -> dict[str, Any]:
        raft = self.store.raft
        if not raft.is_leader():
            return await self._forward("DELETE", ip, force)
        peers = raft.peers()
        if ip not in peers:
            raise CommandError(404, f"{ip} is not a Raft peer (peers: {', '.join(peers)})")
        if len(peers) == 1:
            raise CommandError(409, f"{ip} is the last Raft peer and cannot be removed")
        if ip == self.store.settings.ip:
            await self._step_down()
            return await self._forward("DELETE", ip, force)
        if not force:
            try:
                await self.call("GET", ip, "/raft/status")
            except Unavailable:
                raise CommandError(
                    409, f"peer {ip} is unreachable; use --force to demote a dead peer"
                ) from None
        await raft.remove_peer(ip)
        peers = raft.peers()
        log.info("demoted %s%s; peers now %s", ip, " (forced)" if force else "", ", ".join(peers))
        if not force:
            try:
                await self.call("POST", ip, "/raft/role", {"role": "proxy", "peers": peers})
            except (Unavailable, CommandError) as exc:
                log.warning("could not tell %s to become a proxy: %s", ip, exc)
        return {"peers": peers, "changed": True}

    async def _step_down(self) -> None:
        raft = self.store.raft
        me = self.store.settings.ip
        for _ in range(20):  # the target must be caught up; retry briefly
            try:
                await raft.transfer_leadership()
                break
            except Unavailable:
                await asyncio.sleep(0.25)
        else:
            raise Unavailable("could not hand Raft leadership to another peer")
        for _ in range(100):
            leader = raft.leader()
            if leader is not None and leader != me:
                return
            await asyncio.sleep(0.05)
        raise Unavailable("leadership transfer did not complete")

    async def _forward(self, method: str, ip: str, force: bool = False) -> dict[str, Any]:
        """Hand a membership change to the Raft leader. Right after the leader died this node may
        still name it, so an unreachable leader is retried (re-reading who leads) for a while."""
        path = f"/raft/peers/{ip}" + ("?force=true" if force else "")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FORWARD_RETRY_SECONDS
        last = "no Raft leader to handle the membership change"
        while True:
            leader = self.store.raft.leader()
            if leader is not None and leader != self.store.settings.ip:
                try:
                    return dict(await self.call(method, leader, path))
                except Unavailable as exc:
                    last = f"Raft leader unreachable ({exc})"
            elif leader is not None:  # became the leader meanwhile: handle it here
                return await (self.promote(ip) if method == "PUT" else self.demote(ip, force))
            if loop.time() >= deadline:
                raise Unavailable(last)
            await asyncio.sleep(0.25)

    # -- reconcile --------------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL)
            try:
                await self.reconcile()
            except (Unavailable, CommandError) as exc:
                log.debug("reconcile: %s", exc)
            except Exception:
                log.exception("reconcile failed")

    async def authoritative_peers(self) -> list[str] | None:
        """The voting members according to the current Raft leader, or None if unknown."""
        raft = self.store.raft
        if raft.is_leader():
            return raft.peers()
        candidates = [raft.leader()] if raft.leader() else []
        candidates += [p for p in raft.peers() if p not in candidates and p != self.store.settings.ip]
        for ip in candidates:
            if ip is None:
                continue
            try:
                status = await self.call("GET", ip, "/raft/status")
            except (Unavailable, CommandError):
                continue
            if status.get("state") == "leader":
                return sorted(str(p) for p in status["peers"])
            leader = status.get("leader")
            if leader and leader not in (ip, self.store.settings.ip):
                try:
                    lead_status = await self.call("GET", leader, "/raft/status")
                except (Unavailable, CommandError):
                    continue
                if lead_status.get("state") == "leader":
                    return sorted(str(p) for p in lead_status["peers"])
        return None

    async def reconcile(self) -> None:
        raft = self.store.raft
        if raft.is_leader():
            return
        peers = await self.authoritative_peers()
        if not peers:
            return
        me = self.store.settings.ip
        if raft.role == "proxy" and me in peers:
            log.info("the leader lists this node as a peer: becoming one")
            await self.store.switch_role("peer", peers)
        elif raft.role == "peer" and me not in peers:
            log.info("the leader no longer lists this node as a peer: becoming a proxy")
            await self.store.switch_role("proxy", peers)
        elif raft.role == "proxy" and sorted(raft.peers()) != peers:
            await self.store.switch_role("proxy", peers)
