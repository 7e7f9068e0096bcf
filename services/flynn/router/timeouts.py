"""Deadlines without a timer per request: a coarse clock and one periodic sweep.

Connections keep a ``deadline`` (loop time, 0 for none) and the :class:`Reaper` checks them every
``tick`` seconds, so setting or moving a deadline on the hot path costs one attribute store. A
timeout therefore fires between ``timeout`` and ``timeout + tick`` after it was armed. The same
sweep closes pooled upstream connections idle for longer than ``upstream_idle_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from flynn.router.backends import Service

log = logging.getLogger(__name__)


class Timed(Protocol):
    deadline: float

    def timed_out(self) -> None: ...


class Reaper:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        tick: float,
        upstream_idle_timeout: float,
        services: Callable[[], Iterable[Service]],
    ) -> None:
        self.loop = loop
        self.tick = tick
        self.now = loop.time()
        self.watched: set[Timed] = set()
        self._upstream_idle = upstream_idle_timeout
        self._services = services
        self._handle: asyncio.TimerHandle | None = None
        self._last_pool_sweep = self.now

    def start(self) -> None:
        if self._handle is None:
            self._handle = self.loop.call_later(self.tick, self._run)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self) -> None:
        self._handle = self.loop.call_later(self.tick, self._run)
        now = self.now = self.loop.time()
        for item in [c for c in self.watched if 0 < c.deadline <= now]:
            try:
                item.timed_out()
            except Exception:  # a bug in one connection must not stop the sweep
                log.exception("timeout handler failed")
        if now - self._last_pool_sweep >= min(1.0, self._upstream_idle / 4):
            self._last_pool_sweep = now
            self._sweep_pools(now)

    def _sweep_pools(self, now: float) -> None:
        limit = now - self._upstream_idle
        for service in self._services():
            for backend in service.backends.values():
                idle = backend.idle
                # most recently used last: stale ones are at the front
                while idle and idle[0].idle_since < limit:
                    idle.pop(0).close()
