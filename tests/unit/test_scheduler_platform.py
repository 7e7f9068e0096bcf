"""Platform services following their system app's release: the pure desired() and the sync loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from flynn.common.envfile import digest
from flynn.common.errors import APIError
from flynn.scheduler.platform import PlatformSync, SystemService, desired


def _app(name: str, *, system: bool = True) -> dict[str, Any]:
    return {"id": f"id-{name}", "name": name, "system": system}


def _release(
    unit: str, env: dict[str, str], web_env: dict[str, str] | None = None, live: str = ""
) -> dict[str, Any]:
    meta = {"unit": unit, **({"live_env": live} if live else {})}
    return {"env": env, "meta": meta, "processes": {"web": {"args": ["x"], "env": web_env or {}}}}


def test_desired_merges_web_env_and_keeps_only_platform_units() -> None:
    apps = [_app("controller"), _app("scheduler"), _app("myapp", system=False), _app("status"), _app("weird")]
    releases = {
        "id-controller": _release(
            "flynn-controller.service",
            {"AUTH_KEY": "old", "A": "1"},
            {"AUTH_KEY": "new,old"},
            live="AUTH_KEY",
        ),
        "id-scheduler": _release("flynn-scheduler.service", {"CONTROLLER_KEY": "k"}),
        "id-myapp": _release("flynn-scheduler.service", {"X": "y"}),  # not a system app: ignored
        "id-status": _release("flynn-status.service", {}),  # no such platform unit
        "id-weird": {"env": {}, "meta": {}, "processes": {}},
    }
    assert desired(apps, releases) == [
        SystemService("controller", {"AUTH_KEY": "new,old", "A": "1"}, ("AUTH_KEY",)),
        SystemService("scheduler", {"CONTROLLER_KEY": "k"}, ()),
    ]


class Source:
    def __init__(self, services: list[SystemService]) -> None:
        self.services = services
        self.events: asyncio.Queue[None] = asyncio.Queue()

    async def system_services(self) -> list[SystemService]:
        return list(self.services)

    async def app_release_events(self) -> AsyncIterator[None]:
        while True:
            await self.events.get()
            yield None


class Hosts:
    def __init__(self, addrs: dict[str, str]) -> None:
        self.addrs = addrs
        self.have: dict[tuple[str, str], dict[str, str]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.down: set[str] = set()

    async def host_addrs(self) -> dict[str, str]:
        return dict(self.addrs)

    async def app_env_digest(self, addr: str, name: str) -> str:
        self.calls.append(("get", addr, name))
        if addr in self.down:
            raise APIError(0, f"cannot reach {addr}")
        return digest(self.have.get((addr, name), {}))

    async def set_app_env(self, addr: str, name: str, env: Mapping[str, str], live: Sequence[str]) -> bool:
        self.calls.append(("put", addr, name))
        if addr in self.down:
            raise APIError(0, f"cannot reach {addr}")
        self.have[(addr, name)] = dict(env)
        return True


class Gate:
    def __init__(self) -> None:
        self.is_leader = True

    async def wait_until_leader(self) -> None:
        assert self.is_leader, "these tests only run the loop as the leader"


async def test_pass_updates_hosts_in_order_own_host_last_and_only_what_differs() -> None:
    svc = SystemService("scheduler", {"CONTROLLER_KEY": "new"}, ())
    hosts = Hosts({"host1": "10.0.0.1:1113", "host2": "10.0.0.2:1113", "host3": "10.0.0.3:1113"})
    hosts.have[("10.0.0.3:1113", "scheduler")] = {"CONTROLLER_KEY": "new"}  # already right
    sync = PlatformSync(Source([svc]), hosts, Gate(), local_ip="10.0.0.1")
    await sync.sync_once(full=True)
    puts = [c[1] for c in hosts.calls if c[0] == "put"]
    assert puts == ["10.0.0.2:1113", "10.0.0.1:1113"]  # host3 had it; our own host (host1) last
    assert sync.updates == 2
    # a second pass trusts what it wrote: no host is asked again
    hosts.calls.clear()
    await sync.sync_once(full=False)
    assert hosts.calls == []
    # a full pass asks every host, and repairs one that lost its file
    hosts.have.pop(("10.0.0.2:1113", "scheduler"))
    await sync.sync_once(full=True)
    assert [c for c in hosts.calls if c[0] == "put"] == [("put", "10.0.0.2:1113", "scheduler")]


async def test_unreachable_hosts_are_retried_and_a_follower_does_nothing() -> None:
    svc = SystemService("controller", {"AUTH_KEY": "k"}, ("AUTH_KEY",))
    hosts = Hosts({"host1": "10.0.0.1:1113", "host2": "10.0.0.2:1113"})
    hosts.down.add("10.0.0.2:1113")
    gate = Gate()
    sync = PlatformSync(Source([svc]), hosts, gate)
    await sync.sync_once(full=False)
    assert hosts.have == {("10.0.0.1:1113", "controller"): {"AUTH_KEY": "k"}}
    hosts.down.clear()
    await sync.sync_once(full=False)  # host2 was never confirmed: asked and updated now
    assert ("10.0.0.2:1113", "controller") in hosts.have
    gate.is_leader = False
    hosts.calls.clear()
    await sync.sync_once(full=True)
    assert hosts.calls == []


async def test_an_app_release_event_triggers_a_pass() -> None:
    source = Source([SystemService("scheduler", {"K": "1"}, ())])
    hosts = Hosts({"host1": "10.0.0.1:1113"})
    sync = PlatformSync(source, hosts, Gate(), full_every=3600)
    task = asyncio.get_running_loop().create_task(sync.run())
    try:
        for _ in range(200):
            if hosts.have:
                break
            await asyncio.sleep(0.01)
        assert hosts.have[("10.0.0.1:1113", "scheduler")] == {"K": "1"}
        source.services = [SystemService("scheduler", {"K": "2"}, ())]
        source.events.put_nowait(None)
        for _ in range(200):
            if hosts.have[("10.0.0.1:1113", "scheduler")] == {"K": "2"}:
                break
            await asyncio.sleep(0.01)
        assert hosts.have[("10.0.0.1:1113", "scheduler")] == {"K": "2"}
    finally:
        task.cancel()
