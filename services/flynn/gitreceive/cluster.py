"""Where the other platform services are: controllers, blobstores and hosts, from discoverd.

A configured URL (``CONTROLLER_URL``, ``BLOBSTORE_URL``) wins; otherwise the instances registered
in discoverd are used, the one on this host's address first (fewer hops, and it is up when this
host is). Every lookup is a fresh ``GET /services/NAME/instances``: a push is rare next to the
cost of a stale address.
"""

from __future__ import annotations

from dataclasses import dataclass

from flynn.common.errors import APIError
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.host.client import host_url

CONTROLLER_SERVICE = "controller"
BLOBSTORE_SERVICE = "blobstore"
HOST_SERVICE = "flynn-host"


@dataclass(frozen=True)
class Host:
    id: str
    url: str  # the host API, http://IP:1113


def _http(addr: str) -> str:
    return addr.rstrip("/") if "://" in addr else f"http://{addr}"


class Cluster:
    def __init__(
        self,
        discoverd: DiscoverdClient,
        *,
        local_ip: str | None = None,
        controller_url: str | None = None,
        blobstore_url: str | None = None,
    ) -> None:
        self.discoverd = discoverd
        self.local_ip = local_ip
        self.controller_url = controller_url
        self.blobstore_url = blobstore_url

    async def close(self) -> None:
        await self.discoverd.close()

    async def _addrs(self, service: str) -> list[str]:
        try:
            instances = await self.discoverd.instances(service)
        except APIError as exc:
            if exc.status == 404:
                return []
            raise
        addrs = [str(i["addr"]) for i in instances if isinstance(i.get("addr"), str)]
        return sorted(addrs, key=lambda a: (a.rsplit(":", 1)[0] != self.local_ip, a))

    async def controller_urls(self) -> list[str]:
        if self.controller_url:
            return [self.controller_url]
        urls = [_http(a) for a in await self._addrs(CONTROLLER_SERVICE)]
        if not urls:
            raise APIError(503, "no controller is registered in discoverd")
        return urls

    async def blobstore_urls(self) -> list[str]:
        if self.blobstore_url:
            return [self.blobstore_url]
        urls = [_http(a) for a in await self._addrs(BLOBSTORE_SERVICE)]
        if not urls:
            raise APIError(503, "no blobstore is registered in discoverd")
        return urls

    async def hosts(self) -> list[Host]:
        try:
            instances = await self.discoverd.instances(HOST_SERVICE)
        except APIError as exc:
            if exc.status != 404:
                raise
            instances = []
        hosts = [
            Host(str(i["meta"]["id"]), host_url(str(i["addr"])))
            for i in instances
            if isinstance(i.get("meta"), dict) and i["meta"].get("id") and isinstance(i.get("addr"), str)
        ]
        if not hosts:
            raise APIError(503, "no host is registered in discoverd")
        return hosts
