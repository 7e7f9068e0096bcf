"""Fan-out of job changes to the ``GET /host/jobs`` event streams.

Each subscriber has a bounded queue; a subscriber that falls :data:`QUEUE_SIZE` events behind is
dropped (its stream ends, its client reconnects and gets a fresh snapshot) instead of slowing the
daemon or growing without bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

QUEUE_SIZE = 1000

Event = dict[str, Any] | None  # None: the subscription was dropped


class Subscription:
    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self.queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE + 1)
        self.dropped = False

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self.hub.unsubscribe(self)


class EventHub:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def __len__(self) -> int:
        return len(self._subs)

    def publish(self, job: dict[str, Any]) -> None:
        for sub in list(self._subs):
            if sub.queue.qsize() >= QUEUE_SIZE:
                sub.dropped = True
                self._subs.discard(sub)
                sub.queue.put_nowait(None)
                continue
            sub.queue.put_nowait(job)

    def close(self) -> None:
        for sub in list(self._subs):
            self._subs.discard(sub)
            if not sub.queue.full():
                sub.queue.put_nowait(None)
