"""Leadership through discoverd: the oldest ``flynn-scheduler`` instance leads.

:class:`DiscoverdGate` wraps a :class:`flynn.discoverd.client.Registration` (which heartbeats and
follows the service's leader) and adds one safety: an instance that has not reached discoverd for
longer than the TTL counts as *not* leader, because by then discoverd has expired it and another
instance leads. So a leader cut off from discoverd stops acting about when its successor starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from flynn.common.errors import APIError
from flynn.discoverd.client import Registration
from flynn.scheduler.aio import wait_event

log = logging.getLogger(__name__)


class DiscoverdGate:
    def __init__(
        self,
        registration: Registration,
        *,
        ttl: float = 10.0,
        check_every: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registration = registration
        self.ttl = ttl
        self.check_every = check_every
        self.clock = clock
        self._last_contact = clock()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._reachable = True

    @property
    def reachable(self) -> bool:
        """discoverd answered within the last TTL."""
        return self.clock() - self._last_contact <= self.ttl

    @property
    def is_leader(self) -> bool:
        return self.registration.is_leader and self.reachable

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._check_loop(), name="scheduler-gate-check"),
            loop.create_task(self._relay_leader_changes(), name="scheduler-gate-leader"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def check(self) -> None:
        """One contact with discoverd: the leader of the service, without retries."""
        reg = self.registration
        try:
            await reg.client.request("GET", f"/services/{reg.service}/leader", retry=False)
        except APIError as exc:
            if exc.status == 0 or exc.status >= 500:
                if self._reachable and not self.reachable:
                    log.warning("discoverd unreachable for over %gs (%s): not leading", self.ttl, exc)
                    self._reachable = False
                    self._changed.set()
                return
        self._last_contact = self.clock()
        if not self._reachable:
            log.info("discoverd reachable again")
            self._reachable = True
            self._changed.set()

    async def _check_loop(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.check_every)

    async def _relay_leader_changes(self) -> None:
        while True:
            await self.registration.wait_leader_change()
            self._changed.set()

    async def _wait_for(self, leader: bool) -> None:
        while self.is_leader != leader:
            self._changed.clear()
            await wait_event(self._changed, self.check_every)  # also re-check when the TTL runs out

    async def wait_until_leader(self) -> None:
        await self._wait_for(True)

    async def wait_until_follower(self) -> None:
        await self._wait_for(False)
