"""Announcement: a daemon's background registration, retried until discoverd takes it."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from flynn.common.errors import APIError
from flynn.discoverd.client import Announcement, Client


class FakeRegistration:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class FakeClient:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[str, str, dict[str, str] | None]] = []
        self.reg = FakeRegistration()
        self.registered = asyncio.Event()

    async def register(self, service: str, addr: str, *, meta: dict[str, str] | None = None) -> Any:
        self.calls.append((service, addr, meta))
        if len(self.calls) <= self.failures:
            raise APIError(503, "no Raft leader")
        self.registered.set()
        return self.reg


async def test_retries_until_registered_then_deregisters_on_close() -> None:
    fake = FakeClient(failures=2)
    ann = Announcement(cast(Client, fake), "blobstore", "10.0.0.1:1210", meta={"k": "v"}, first_delay=0.01)
    ann.start()
    async with asyncio.timeout(5):
        await fake.registered.wait()
    await asyncio.sleep(0)  # the announcement stores what register() returned
    assert cast(Any, ann.registration) is fake.reg
    assert fake.calls == [("blobstore", "10.0.0.1:1210", {"k": "v"})] * 3
    await ann.close()
    assert fake.reg.closed
    assert ann.registration is None


async def test_close_while_still_retrying_stops_trying() -> None:
    fake = FakeClient(failures=10**6)
    ann = Announcement(cast(Client, fake), "gitreceive", "10.0.0.1:1220", first_delay=0.01)
    ann.start()
    await asyncio.sleep(0.05)
    await ann.close()
    tried = len(fake.calls)
    assert tried >= 1
    await asyncio.sleep(0.05)
    assert len(fake.calls) == tried  # nothing after close
    assert not fake.reg.closed
