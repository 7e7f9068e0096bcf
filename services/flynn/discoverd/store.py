"""The Store: what the HTTP API and the DNS server talk to.

* Reads come from the *serving* state machine's copy of the state, under its lock.
* Writes are proposed to Raft (:class:`~flynn.discoverd.raft.RaftNode`).
* Events fan out to subscribers (watch streams) with a history of recent events, so a watcher
  that reconnects with the id of the last event it saw resumes without a gap.
* Heartbeats: every node notes when it saw each instance and reports ages to the Raft leader;
  only the leader expires instances, through a replicated ``expire`` command.
* Roles: :meth:`switch_role` replaces the Raft node in-process (promote/demote). Until the new
  node has caught up, reads keep coming from the old copy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flynn.discoverd.raft import RaftNode, RaftSettings, Role, StateMachine, Unavailable
from flynn.discoverd.state import CommandError, Event, Instance, State, diff

log = logging.getLogger(__name__)

HISTORY = 10_000
SUBSCRIBER_QUEUE = 10_000
# how long reads wait for this node to settle after a leader change (see Store.settle)
SETTLE_FOR = 2.0
EventId = tuple[int, int]


class Resync:
    """Queued to a subscriber when the node replaced its state wholesale: send everything again."""


RESYNC = Resync()
QueueItem = Event | Resync | None  # None: the subscription is closed (too slow, or shutdown)


@dataclass(eq=False)  # identity semantics: kept in a set
class Subscription:
    services: frozenset[str] | None  # None: every service
    queue: asyncio.Queue[QueueItem] = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE))
    after: EventId = (0, 0)
    closed: bool = False

    def wants(self, event: Event) -> bool:
        return self.services is None or event.service in self.services


@dataclass(frozen=True)
class RoleFile:
    role: Role
    peers: list[str]

    @classmethod
    def load(cls, path: Path) -> RoleFile | None:
        try:
            data = json.loads(path.read_text())
            role = data["role"]
            if role not in ("peer", "proxy"):
                raise ValueError(role)
            return cls(role=role, peers=[str(p) for p in data["peers"]])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable %s: %r", path, exc)
            return None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"role": self.role, "peers": self.peers}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class Store:
    def __init__(
        self,
        settings: RaftSettings,
        *,
        ttl: float = 10.0,
        invalidate: Callable[[str | None], None] | None = None,
        forward_heartbeats: Callable[[str, list[tuple[str, str, float]]], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.ttl = ttl
        self._invalidate = invalidate or (lambda _s: None)
        # async callable(leader_ip, [(service, id, age)]) used by followers/proxies
        self._forward_heartbeats = forward_heartbeats
        self._loop: asyncio.AbstractEventLoop | None = None
        self.node: RaftNode | None = None
        self._serving: StateMachine | None = None
        self._history: collections.deque[Event] = collections.deque(maxlen=HISTORY)
        self._history_lock = threading.Lock()
        self._floor: EventId = (0, 0)  # every event with a larger id is in the history
        self._subs: set[Subscription] = set()
        self._seen: dict[tuple[str, str], float] = {}  # local heartbeats (monotonic time)
        self._dirty: set[tuple[str, str]] = set()
        self._leader_seen: dict[tuple[str, str], float] = {}  # on the Raft leader only
        self._leader_since: float | None = None
        self._switch_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._marker: asyncio.Task[None] | None = None
        self._unsettled_since: float | None = None
        self._spell_leader: str | None = None  # the leader known when the spell was last looked at
        self.role_file = settings.data_dir / "role.json"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, role: Role, peers: list[str]) -> None:
        self._loop = asyncio.get_running_loop()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        RoleFile(role, peers).save(self.role_file)
        self.node = self._new_node(role, peers)
        self._serving = self.node.sm
        self._tasks = [
            self._loop.create_task(self._heartbeat_forward_loop(), name="heartbeat-forward"),
            self._loop.create_task(self._expiry_loop(), name="expiry"),
            self._loop.create_task(self._settle_loop(), name="settle"),
        ]

    def _new_node(self, role: Role, peers: list[str]) -> RaftNode:
        if self._loop is None:
            raise RuntimeError("Store.start() was not called")
        return RaftNode(
            role,
            peers,
            self.settings,
            self._loop,
            sink=self._on_events,
            on_reset=self._on_reset,
            on_state_changed=self._on_raft_state,
        )

    def close_watches(self) -> None:
        """End every watch stream (first step of a shutdown: lets the HTTP server stop quickly)."""
        for sub in list(self._subs):
            self._close(sub)

    async def stop(self) -> None:
        if self._marker is not None:
            self._tasks.append(self._marker)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.close_watches()
        if self.node is not None:
            await asyncio.to_thread(self.node.destroy)

    @property
    def raft(self) -> RaftNode:
        if self.node is None:
            raise Unavailable("discoverd is starting")
        return self.node

    # -- reads ---------------------------------------------------------------------------------

    def settled(self) -> bool:
        """Whether this node's state holds everything committed before the current Raft term.

        pysyncobj tells a follower that entries are committed only with the leader's next
        append; a leader that dies right after acknowledging a write leaves the survivors with
        the entry in their logs but not applied. Each new leader commits a term marker
        (:meth:`_mark_term`); once this node has applied the marker of its current term it has
        applied every write acknowledged under an earlier leader."""
        node, sm = self.node, self._serving
        if node is None or sm is None or sm is not node.sm:
            return False
        if node.leader() is None or not node.is_ready():
            return False
        return sm.state.term >= node.term()

    async def settle(self) -> bool:
        """Wait until :meth:`settled`, for at most SETTLE_FOR after the node became unsettled.

        Returns False when that time is up: the caller then serves the local state, which may be
        stale (no leader reachable, a minority side of a partition), rather than nothing. The
        bound counts from the start of the unsettled spell, not per request, so during a long
        outage reads are not each delayed. A leader that becomes known during a spell starts
        the count again: an election slower than SETTLE_FOR must not leave the node serving
        stale reads while the new leader's marker is on its way."""
        loop = asyncio.get_running_loop()
        while not self._track(loop.time()):
            since = self._unsettled_since
            if since is not None and loop.time() - since >= SETTLE_FOR:
                return False
            await asyncio.sleep(0.02)
        return True

    def _track(self, now: float) -> bool:
        """Follow the unsettled spell: when it began (or began again, with a new leader)."""
        node = self.node
        leader = node.leader() if node is not None else None
        if self.settled():
            self._unsettled_since = None
        elif self._unsettled_since is None or (leader is not None and leader != self._spell_leader):
            self._unsettled_since = now
        self._spell_leader = leader
        return self._unsettled_since is None

    async def _settle_loop(self) -> None:
        """Track unsettled spells even while nobody reads, so each new spell gets its wait."""
        loop = asyncio.get_running_loop()
        while True:
            self._track(loop.time())
            await asyncio.sleep(0.1)

    def _read(self) -> tuple[threading.RLock, State]:
        sm = self._serving
        if sm is None:
            raise Unavailable("discoverd is starting")
        return sm.lock, sm.state

    def index(self) -> int:
        lock, state = self._read()
        with lock:
            return state.index

    def service_names(self) -> list[str]:
        lock, state = self._read()
        with lock:
            return sorted(state.services)

    def service_info(self, name: str) -> dict[str, Any]:
        lock, state = self._read()
        with lock:
            svc = state.service(name)
            leader = svc.leader()
            return {
                "name": svc.name,
                "leader_type": svc.leader_type,
                "instances": len(svc.instances),
                "leader": leader.id if leader else None,
            }

    def instances(self, name: str) -> list[Instance]:
        lock, state = self._read()
        with lock:
            return state.service(name).sorted_instances()

    def instance(self, name: str, iid: str) -> Instance | None:
        lock, state = self._read()
        with lock:
            return state.service(name).instances.get(iid)

    def leader(self, name: str) -> Instance | None:
        lock, state = self._read()
        with lock:
            return state.leader(name)

    def meta(self, name: str) -> dict[str, Any]:
        lock, state = self._read()
        with lock:
            svc = state.service(name)
            return {"data": svc.meta, "index": svc.meta_index}

    # DNS record source (flynn.discoverd.dns.RecordSource) ------------------------------------

    def dns_instances(self, service: str) -> list[tuple[str, int]] | None:
        try:
            lock, state = self._read()
        except Unavailable:
            return None
        with lock:
            svc = state.services.get(service)
            if svc is None:
                return None
            return [(i.host, i.port) for i in svc.sorted_instances()]

    def dns_leader(self, service: str) -> tuple[str, int] | None:
        try:
            lock, state = self._read()
        except Unavailable:
            return None
        with lock:
            svc = state.services.get(service)
            leader = svc.leader() if svc else None
            return (leader.host, leader.port) if leader else None

    # -- writes --------------------------------------------------------------------------------

    async def propose(self, cmd: dict[str, Any]) -> Any:
        result = await self.raft.submit(cmd)
        if cmd["op"] == "register":
            self.heartbeat(cmd["service"], cmd["id"])
        return result

    def heartbeat(self, service: str, iid: str) -> None:
        key = (service, iid)
        self._seen[key] = time.monotonic()
        self._dirty.add(key)

    def record_ages(self, ages: list[tuple[str, str, float]]) -> None:
        """Heartbeat ages reported by another node (on the leader)."""
        if self._leader_since is None:
            return
        now = time.monotonic()
        for service, iid, age in ages:
            key = (service, iid)
            seen = now - max(0.0, age)
            if seen > self._leader_seen.get(key, float("-inf")):
                self._leader_seen[key] = seen

    async def _heartbeat_forward_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                await self._forward_once()
            except Exception as exc:  # keep heartbeating whatever one round did
                log.warning("forwarding heartbeats failed: %s", exc)

    async def _forward_once(self) -> None:
        if not self._dirty or self.node is None:
            return
        now = time.monotonic()
        batch, self._dirty = self._dirty, set()
        ages = [(s, i, now - self._seen[(s, i)]) for s, i in batch if (s, i) in self._seen]
        for key in [k for k, t in self._seen.items() if now - t > 3 * self.ttl]:
            del self._seen[key]  # forget instances gone silent long ago
        if self.node.is_leader():
            self.record_ages(ages)
            return
        leader = self.node.leader()
        if leader is None or self._forward_heartbeats is None:
            self._dirty |= batch  # try again once there is a leader
            return
        try:
            await self._forward_heartbeats(leader, ages)
        except Exception:
            self._dirty |= batch
            raise

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            try:
                await self._expire_once()
            except (Unavailable, CommandError) as exc:
                log.warning("expiring instances failed: %s", exc)

    async def _expire_once(self) -> None:
        if self._leader_since is None or self.node is None or not self.node.is_leader():
            return
        now = time.monotonic()
        if now - self._leader_since < self.ttl:
            return  # grace period of a new leader
        lock, state = self._read()
        stale = []
        with lock:
            for svc in state.services.values():
                for inst in svc.instances.values():
                    key = (svc.name, inst.id)
                    last = max(self._leader_seen.get(key, self._leader_since), self._leader_since)
                    if now - last > self.ttl:
                        stale.append({"service": svc.name, "id": inst.id, "updated": inst.updated})
        if stale:
            result = await self.raft.submit({"op": "expire", "instances": stale})
            for name in result["expired"]:
                service, _, iid = name.partition("/")
                self._leader_seen.pop((service, iid), None)
                log.info("expired %s (no heartbeat for %gs)", name, self.ttl)

    # -- events (called from pysyncobj's thread) ------------------------------------------------

    def _on_events(self, sm: StateMachine, events: list[Event]) -> None:
        if sm is not self._serving or not events:
            return
        with self._history_lock:
            for e in events:
                if len(self._history) == HISTORY:
                    dropped = self._history[0]
                    self._floor = (dropped.index, dropped.seq)
                self._history.append(e)
        now = time.monotonic()
        for service in {e.service for e in events}:
            self._invalidate(service)
        for e in events:
            if e.kind in ("up", "update") and e.instance is not None:
                # a registration is a sign of life; the leader must not expire it on stale data
                self._leader_seen[(e.service, e.instance.id)] = now
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch, events)

    def _on_reset(self, sm: StateMachine, old: State, new: State) -> None:
        if sm is not self._serving:
            return
        if old.index == new.index and not diff(old, new):
            return
        self._reset_watchers(new.index)

    def _reset_watchers(self, index: int) -> None:
        with self._history_lock:
            self._history.clear()
            self._floor = (index, 1 << 30)  # nothing at or before this index is in the history
        self._invalidate(None)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch_resync)

    def _on_raft_state(self, old: int, new: int) -> None:
        node = self.node
        if new == 1 and node is not None:  # journalctl shows when and how often elections ran
            log.info("no leader heard from: standing for election in term %d", node.term())
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._leadership, new == 2)

    def _leadership(self, leader: bool) -> None:
        if leader:
            term = self.node.term() if self.node is not None else 0
            log.info(
                "this node is the Raft leader (term %d); expiry starts after a %gs grace period",
                term,
                self.ttl,
            )
            self._leader_since = time.monotonic()
            self._leader_seen = {}
            if self._loop is not None and (self._marker is None or self._marker.done()):
                self._marker = self._loop.create_task(self._mark_term(), name="term-marker")
        elif self._leader_since is not None:
            log.info("this node is no longer the Raft leader")
            self._leader_since = None
            self._leader_seen = {}

    async def _mark_term(self) -> None:
        """As a new leader, commit a marker of this term (see :meth:`settled`)."""
        while self.node is not None and self.node.is_leader():
            term = self.node.term()
            lock, state = self._read()
            with lock:
                if state.term >= term:
                    return
            try:
                await self.node.submit({"op": "term", "term": term})
            except Unavailable as exc:
                log.warning("committing the marker of term %d failed: %s", term, exc)
                await asyncio.sleep(0.2)

    # -- subscriptions (asyncio side) -----------------------------------------------------------

    def _dispatch(self, events: list[Event]) -> None:
        for sub in list(self._subs):
            for e in events:
                if (e.index, e.seq) > sub.after and sub.wants(e):
                    self._put(sub, e)

    def _dispatch_resync(self) -> None:
        for sub in list(self._subs):
            self._put(sub, RESYNC)

    def _put(self, sub: Subscription, item: QueueItem) -> None:
        try:
            sub.queue.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("closing a watch that fell %d events behind", SUBSCRIBER_QUEUE)
            self._close(sub)

    def _close(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        if not sub.closed:
            sub.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(None)

    def subscribe(
        self, services: frozenset[str] | None, after: EventId | None
    ) -> tuple[Subscription, list[Event] | None, State]:
        """Register a watcher. Returns (subscription, replay, snapshot): ``replay`` is the list of
        events after ``after`` when the history reaches back that far, else None (send everything
        from ``snapshot``, a private copy of the current state)."""
        lock, state = self._read()
        with lock, self._history_lock:
            snapshot = State.from_dict(state.to_dict())
            last = (self._history[-1].index, self._history[-1].seq) if self._history else self._floor
            replay: list[Event] | None = None
            if after is not None and after >= self._floor:
                replay = [
                    e
                    for e in self._history
                    if (e.index, e.seq) > after and (services is None or e.service in services)
                ]
            sub = Subscription(services=services, after=max(last, after or (0, 0)))
            self._subs.add(sub)
        return sub, replay, snapshot

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.closed = True

    # -- roles ---------------------------------------------------------------------------------

    async def switch_role(self, role: Role, peers: list[str]) -> None:
        """Become a peer (promote) or a proxy (demote, or a proxy following new peers)."""
        async with self._switch_lock:
            old = self.raft
            if old.role == role and sorted(old.peers()) == sorted(peers) and role == "proxy":
                return
            if old.role == role == "peer":
                return
            log.info("switching role: %s -> %s (peers %s)", old.role, role, ", ".join(peers))
            RoleFile(role, peers).save(self.role_file)
            if old.role == "peer":
                # a removed voter must stop before it can disturb the cluster
                await asyncio.to_thread(old.destroy)
            if role == "peer":
                for stale in (self.settings.journal, self.settings.dump):
                    stale.unlink(missing_ok=True)  # a peer starts empty and catches up
            new = self._new_node(role, peers)
            self.node = new
            deadline = time.monotonic() + 30
            while not new.is_ready() and time.monotonic() < deadline:  # noqa: ASYNC110 - pysyncobj's readiness is not awaitable
                await asyncio.sleep(0.05)
            if not new.is_ready():
                log.warning("new %s node not caught up after 30s; serving its state anyway", role)
            old_sm = self._serving
            with new.sm.lock:
                self._serving = new.sm
                if (
                    old_sm is None
                    or old_sm.state.index != new.sm.state.index
                    or diff(old_sm.state, new.sm.state)
                ):
                    self._reset_watchers(new.sm.state.index)
            if old.role == "proxy":
                await asyncio.to_thread(old.destroy)
            if role == "proxy":
                for stale in (self.settings.journal, self.settings.dump):
                    stale.unlink(missing_ok=True)
            log.info("now a %s", role)


def wipe(data_dir: Path) -> None:
    """Remove all Raft state (used by tests and by an operator resetting a host)."""
    shutil.rmtree(data_dir, ignore_errors=True)
