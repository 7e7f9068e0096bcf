"""Platform services follow their system app's release: ``flynn -a scheduler env set K=V``.

Platform services (controller, scheduler, blobstore, router, ...) are units of ``units/``, not
scheduled jobs; their system app in the controller holds their configuration. The leader makes
every host's ``/etc/flynn/NAME.app.env`` overlay equal to the app's env (release env merged with
the ``web`` process env, so ``-t web`` works as in Flynn's key rotation guide) through
``PUT /host/platform/NAME/app-env``, one host at a time and this scheduler's own host last. The
host restarts the unit only when a variable outside the release's ``live_env`` changed its
effective value (the controller picks ``AUTH_KEY`` up by itself, without a restart).

:func:`desired` is pure; :class:`PlatformSync` is the loop around it: a pass on every
``app_release`` event, and a full pass (asking every host) every ``full_every`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from flynn.common.envfile import digest
from flynn.common.errors import APIError
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.host.client import PLATFORM_NAMES, HostClient, host_url
from flynn.scheduler.aio import wait_event
from flynn.scheduler.cluster import HOST_SERVICE, host_id_of
from flynn.scheduler.controller import ControllerAPI

log = logging.getLogger("flynn.scheduler.platform")


@dataclass(frozen=True)
class SystemService:
    name: str  # platform name: the unit is flynn-NAME.service
    env: dict[str, str]
    live: tuple[str, ...]

    @property
    def digest(self) -> str:
        return digest(self.env)


def desired(
    apps: Iterable[Mapping[str, Any]], releases: Mapping[str, Mapping[str, Any]]
) -> list[SystemService]:
    """The overlay every platform service should have, from the system apps and their current
    releases (``releases``: app id -> release). Apps whose release names no platform unit
    (meta ``unit``) are left out."""
    out: list[SystemService] = []
    for app in apps:
        if not app.get("system"):
            continue
        release = releases.get(str(app["id"]))
        if release is None:
            continue
        meta = release.get("meta") or {}
        unit = str(meta.get("unit", ""))
        name = unit.removeprefix("flynn-").removesuffix(".service")
        if not unit.startswith("flynn-") or not unit.endswith(".service") or name not in PLATFORM_NAMES:
            continue
        env = dict(release.get("env") or {})
        web = (release.get("processes") or {}).get("web") or {}
        env.update(web.get("env") or {})
        live = tuple(sorted(x.strip() for x in str(meta.get("live_env", "")).split(",") if x.strip()))
        out.append(SystemService(name, {str(k): str(v) for k, v in env.items()}, live))
    return sorted(out, key=lambda s: s.name)


class PlatformSource(Protocol):
    async def system_services(self) -> list[SystemService]: ...

    def app_release_events(self) -> AsyncIterator[None]:
        """Yields whenever an app's release changed (reconnecting by itself)."""
        ...


class PlatformHosts(Protocol):
    async def host_addrs(self) -> dict[str, str]:
        """host id -> host API address, of the hosts that are up."""
        ...

    async def app_env_digest(self, addr: str, name: str) -> str: ...

    async def set_app_env(self, addr: str, name: str, env: Mapping[str, str], live: Sequence[str]) -> bool:
        """Write the overlay; True when the host restarted the unit."""
        ...


class Gate(Protocol):
    @property
    def is_leader(self) -> bool: ...

    async def wait_until_leader(self) -> None: ...


class PlatformSync:
    def __init__(
        self,
        source: PlatformSource,
        hosts: PlatformHosts,
        gate: Gate,
        *,
        local_ip: str | None = None,
        full_every: float = 60.0,
        retry_after: float = 5.0,
    ) -> None:
        self.source = source
        self.hosts = hosts
        self.gate = gate
        self.local_ip = local_ip
        self.full_every = full_every
        self.retry_after = retry_after
        self.known: dict[tuple[str, str], str] = {}  # (host id, name) -> digest the host has
        self._poke = asyncio.Event()
        self.passes = 0
        self.updates = 0

    def poke(self) -> None:
        self._poke.set()

    async def run(self) -> None:
        events = asyncio.get_running_loop().create_task(self._follow_events(), name="platform-events")
        try:
            full = True
            while True:
                await self.gate.wait_until_leader()
                try:
                    await self.sync_once(full=full)
                    full = not await wait_event(self._poke, self.full_every)
                except APIError as exc:
                    log.warning("platform sync: %s; retrying in %gs", exc, self.retry_after)
                    await asyncio.sleep(self.retry_after)
                    full = True
                self._poke.clear()
        finally:
            events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await events

    async def _follow_events(self) -> None:
        while True:
            try:
                async for _ in self.source.app_release_events():
                    self.poke()
            except APIError as exc:
                log.debug("app release events: %s; reconnecting", exc)
            await asyncio.sleep(self.retry_after)

    def _order(self, addrs: dict[str, str]) -> list[tuple[str, str]]:
        """Other hosts first and this scheduler's own host last: restarting our own unit ends
        this process, and the next leader finishes the pass."""
        return sorted(addrs.items(), key=lambda kv: (kv[1].rsplit(":", 1)[0] == self.local_ip, kv[0]))

    async def sync_once(self, *, full: bool) -> None:
        """One pass; ``full`` asks every host what it has instead of trusting what was written."""
        self.passes += 1
        services = await self.source.system_services()
        addrs = await self.hosts.host_addrs()
        if full:
            self.known = {k: v for k, v in self.known.items() if k[0] in addrs}
        for host_id, addr in self._order(addrs):
            for svc in services:
                if not self.gate.is_leader:
                    return
                key = (host_id, svc.name)
                have = self.known.get(key) if not full else None
                if have is None:
                    try:
                        have = await self.hosts.app_env_digest(addr, svc.name)
                    except APIError as exc:
                        log.warning("cannot ask %s for the %s env: %s", host_id, svc.name, exc)
                        continue
                if have == svc.digest:
                    self.known[key] = have
                    continue
                try:
                    restarted = await self.hosts.set_app_env(addr, svc.name, svc.env, svc.live)
                except APIError as exc:
                    log.warning("cannot update the %s env on %s: %s", svc.name, host_id, exc)
                    self.known.pop(key, None)
                    continue
                self.updates += 1
                self.known[key] = svc.digest
                log.info(
                    "%s env updated on %s from its release%s",
                    svc.name,
                    host_id,
                    " (restarted)" if restarted else "",
                )


# -- the real source and hosts ---------------------------------------------------------------------


class ControllerPlatformSource:
    """System apps and their releases from the controller; ``app_release`` events from its stream."""

    def __init__(self, controller: ControllerAPI) -> None:
        self.controller = controller

    async def system_services(self) -> list[SystemService]:
        client = await self.controller.client()
        apps = [a for a in await client.list_apps() if a.get("system")]
        releases: dict[str, Mapping[str, Any]] = {}
        for app in apps:
            release = await client.get_app_release(str(app["id"]))
            if release is not None:
                releases[str(app["id"])] = release
        return desired(apps, releases)

    async def app_release_events(self) -> AsyncIterator[None]:
        client = await self.controller.client()
        async for _ in client.events(object_types=("app_release",)):
            yield None


class DiscoverdPlatformHosts:
    """The hosts from discoverd's ``flynn-host`` instances; overlays through their host API."""

    def __init__(self, discoverd: DiscoverdClient, session: aiohttp.ClientSession) -> None:
        self.discoverd = discoverd
        self.session = session

    async def host_addrs(self) -> dict[str, str]:
        return {host_id_of(i): str(i["addr"]) for i in await self.discoverd.instances(HOST_SERVICE)}

    def _client(self, addr: str) -> HostClient:
        return HostClient(host_url(addr), session=self.session, timeout=150)

    async def app_env_digest(self, addr: str, name: str) -> str:
        return str((await self._client(addr).app_env_digest(name))["sha256"])

    async def set_app_env(self, addr: str, name: str, env: Mapping[str, str], live: Sequence[str]) -> bool:
        return bool((await self._client(addr).set_app_env(name, env, live=live))["restarted"])
