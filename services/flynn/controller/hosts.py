"""The hosts, as the controller meets them: found in discoverd (service ``flynn-host``, instance
meta ``id`` = host id) and driven through their API with :class:`flynn.host.client.HostClient`.

Used for one-off jobs (``POST /apps/:app/jobs``), stopping a job (``DELETE``) and the attach proxy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from flynn.common.errors import APIError
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.host.client import HostClient, host_url

log = logging.getLogger(__name__)

HOST_SERVICE = "flynn-host"


@dataclass(frozen=True)
class Host:
    id: str
    addr: str

    @property
    def url(self) -> str:
        return host_url(self.addr)


class Hosts:
    def __init__(self, discoverd: DiscoverdClient, session: aiohttp.ClientSession, *, timeout: float = 10.0):
        self.discoverd = discoverd
        self.session = session
        self.timeout = timeout

    async def list(self) -> list[Host]:
        """Hosts registered (and so alive) in discoverd; raises APIError when it cannot be asked."""
        try:
            instances = await self.discoverd.instances(HOST_SERVICE)
        except APIError as exc:
            if exc.status == 404:  # no host registered yet
                return []
            raise
        hosts: dict[str, Host] = {}
        for inst in instances:
            meta = inst.get("meta") or {}
            host_id = meta.get("id") if isinstance(meta, dict) else None
            addr = inst.get("addr")
            if isinstance(host_id, str) and host_id and isinstance(addr, str) and addr:
                hosts[host_id] = Host(host_id, addr)
        return sorted(hosts.values(), key=lambda h: h.id)

    async def find(self, host_id: str) -> Host | None:
        for host in await self.list():
            if host.id == host_id:
                return host
        return None

    def client(self, host: Host) -> HostClient:
        return HostClient(host.url, session=self.session, timeout=self.timeout)

    async def start_job(self, host: Host, config: dict[str, Any]) -> dict[str, Any]:
        return await self.client(host).start_job(config)

    async def stop_job(self, host: Host, job_id: str) -> dict[str, Any]:
        return await self.client(host).stop_job(job_id)

    def attach_url(self, host: Host, job_id: str) -> str:
        return self.client(host).attach_url(job_id)
