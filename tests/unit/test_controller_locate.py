"""follow_controllers: the controllers' URLs from a discoverd watch (shared by scheduler, router
and log aggregator)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import pytest

from flynn.common.errors import APIError
from flynn.controller.locate import controller_url, follow_controllers, order_urls
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.discoverd.client import WatchEvent


def up(i: str, addr: str) -> WatchEvent:
    return WatchEvent("up", "controller", {"id": i, "addr": addr})


class FakeDiscoverd:
    """Each watch plays the next script of events; an APIError in a script is raised there."""

    def __init__(self, *scripts: list[WatchEvent | APIError]) -> None:
        self.scripts = list(scripts)
        self.watches = 0

    def watch(self, service: str) -> AsyncIterator[WatchEvent]:
        assert service == "controller"
        self.watches += 1
        script = self.scripts.pop(0) if self.scripts else []

        async def events() -> AsyncIterator[WatchEvent]:
            for item in script:
                if isinstance(item, APIError):
                    raise item
                yield item
            await asyncio.Event().wait()  # a watch stays open

        return events()


async def follow(fake: FakeDiscoverd, seen: list[list[str]], local_ip: str | None = None) -> None:
    task = asyncio.get_running_loop().create_task(
        follow_controllers(cast(DiscoverdClient, fake), seen.append, local_ip=local_ip, retry_after=0.01)
    )
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_urls_and_their_order() -> None:
    assert controller_url("10.0.0.1:1200") == "http://10.0.0.1:1200"
    assert controller_url("https://c.example/") == "https://c.example"
    addrs = ["10.0.0.3:1200", "10.0.0.2:1200", "10.0.0.1:1200"]
    assert order_urls(addrs, "10.0.0.2") == [
        "http://10.0.0.2:1200",
        "http://10.0.0.1:1200",
        "http://10.0.0.3:1200",
    ]
    assert order_urls(addrs, None)[0] == "http://10.0.0.1:1200"


async def test_nothing_before_the_snapshot_then_every_change() -> None:
    fake = FakeDiscoverd(
        [
            up("a", "10.0.0.1:1200"),
            up("b", "10.0.0.2:1200"),
            WatchEvent("current", None),
            WatchEvent("leader", "controller", {"id": "a"}),  # not about addresses: ignored
            WatchEvent("down", "controller", {"id": "a", "addr": "10.0.0.1:1200"}),
            WatchEvent("down", "controller", {"id": "b", "addr": "10.0.0.2:1200"}),  # none left
            up("c", "10.0.0.3:1200"),
        ]
    )
    seen: list[list[str]] = []
    await follow(fake, seen, local_ip="10.0.0.2")
    assert seen == [
        ["http://10.0.0.2:1200", "http://10.0.0.1:1200"],  # the whole snapshot at once, local first
        ["http://10.0.0.2:1200"],
        ["http://10.0.0.3:1200"],  # never an empty list in between
    ]


async def test_a_failed_watch_is_watched_again() -> None:
    fake = FakeDiscoverd(
        [up("a", "10.0.0.1:1200"), APIError(0, "discoverd went away")],
        [up("b", "10.0.0.2:1200"), WatchEvent("current", None)],
    )
    seen: list[list[str]] = []
    await follow(fake, seen)
    assert fake.watches >= 2
    assert seen == [["http://10.0.0.2:1200"]]  # the first watch never completed its snapshot
