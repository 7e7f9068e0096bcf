"""The last N lines of every app, merged across hosts in time order, and live subscriptions.

Lines arrive from each host in journal order. The merge key is journald's realtime stamp made
monotonic per host (a line never sorts before an earlier line of its own host, even if the
host's clock stepped back), then the arrival order: so lines from different hosts interleave by
time and the lines of one job keep their journal order. Each app's buffer is a sorted list
trimmed to its capacity from the oldest end.

Followers subscribe to an app; live lines (not the backlog a host replays at start) are
published to them. A follower that falls :data:`QUEUE_LIMIT` lines behind is ended (``None``),
so one slow reader never holds memory for everyone.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from flynn.logs.model import Line

DEFAULT_CAPACITY = 10_000
QUEUE_LIMIT = 100_000

Entry = tuple[int, int, Line]  # (merge time, arrival sequence, line)
LineFilter = Callable[[Line], bool]


@dataclass(eq=False)  # identity: each subscription is its own
class Subscription:
    key: str
    queue: asyncio.Queue[Line | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT + 1))
    lagged: bool = False
    hub: Buffers | None = None

    def push(self, line: Line) -> None:
        if self.lagged:
            return
        if self.queue.qsize() >= QUEUE_LIMIT:
            self.lagged = True
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(line)

    def close(self) -> None:
        if self.hub is not None:
            self.hub.unsubscribe(self)
            self.hub = None


class AppBuffer:
    """One app's last ``capacity`` lines, in merge order."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.entries: list[Entry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def insert(self, entry: Entry) -> bool:
        """Insert in order; False when the line is older than every kept one in a full buffer."""
        if len(self.entries) >= self.capacity and entry < self.entries[0]:
            return False
        bisect.insort(self.entries, entry)
        excess = len(self.entries) - self.capacity
        if excess > 0:
            del self.entries[:excess]
        return True

    def last(self, n: int | None, keep: LineFilter | None = None) -> list[Line]:
        """The newest ``n`` lines (all when None) that ``keep`` accepts, oldest first."""
        if keep is None:
            chosen = self.entries if n is None else self.entries[-n:] if n > 0 else []
            return [e[2] for e in chosen]
        out: list[Line] = []
        limit = len(self.entries) if n is None else n
        for entry in reversed(self.entries):
            if len(out) >= limit:
                break
            if keep(entry[2]):
                out.append(entry[2])
        out.reverse()
        return out


class Buffers:
    """Every app's buffer (keyed by :attr:`Line.key`), with the per-host merge clocks."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.apps: dict[str, AppBuffer] = {}
        self.host_clock: dict[str, int] = {}
        self.seq = 0
        self.subs: dict[str, set[Subscription]] = {}
        self.added = 0

    def add(self, line: Line, *, live: bool = True) -> bool:
        """Keep a line (False if it belongs to no app) and, if ``live``, publish it."""
        key = line.key
        if key is None:
            return False
        clock = max(line.ts, self.host_clock.get(line.host_id, 0))
        self.host_clock[line.host_id] = clock
        self.seq += 1
        buf = self.apps.get(key)
        if buf is None:
            buf = self.apps[key] = AppBuffer(self.capacity)
        buf.insert((clock, self.seq, line))
        self.added += 1
        if live:
            for sub in list(self.subs.get(key, ())):
                sub.push(line)
        return True

    def last(self, key: str, n: int | None = None, keep: LineFilter | None = None) -> list[Line]:
        buf = self.apps.get(key)
        return [] if buf is None else buf.last(n, keep)

    def subscribe(self, key: str) -> Subscription:
        sub = Subscription(key, hub=self)
        self.subs.setdefault(key, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self.subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subs[sub.key]

    def lines(self) -> Iterator[Line]:
        """Every kept line, app by app (each app's in merge order)."""
        for buf in self.apps.values():
            for entry in buf.entries:
                yield entry[2]

    def total(self) -> int:
        return sum(len(b) for b in self.apps.values())
