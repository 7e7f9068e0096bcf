"""The reconcile step: a pure function from what is wanted and what exists to a list of actions.

``reconcile(formations, hosts, jobs, backoff, now, refused=...)`` reads nothing and changes
nothing; the loop in :mod:`flynn.scheduler.core` feeds it a snapshot of its view, carries out the
returned :class:`Plan` and runs it again on the next change. Rules (docs/scheduler.md):

* a formation type's *live* jobs are those ``starting`` or ``up`` on a host that is up;
* too few: start the missing ones, each on the eligible host with the fewest live jobs of that
  type, then the fewest live jobs overall, then the lowest host id; ``omni`` types want ``count``
  jobs on every host instead;
* too many: stop the extra ones, ``starting`` before ``up``, newest first;
* jobs of types, releases or apps in no active formation are stopped;
* a host is eligible for a start when its job list is known (``synced``) and it has not refused a
  start of that formation recently (``refused``: (host, app, release) -> until);
* a type held back by crash backoff starts nothing until its restart time, which becomes the
  plan's ``wake_at``.

One-off jobs (``flynn run``) are neither counted towards formations nor stopped.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from flynn.scheduler.backoff import Backoff
from flynn.scheduler.model import (
    Action,
    Formation,
    FormationKey,
    Host,
    Job,
    JobState,
    Shortfall,
    StartJob,
    StopJob,
    job_config,
    job_id_for,
)

RefusalKey = tuple[str, str, str]  # (host_id, app_id, release_id)


def refusal_key(host_id: str, key: FormationKey) -> RefusalKey:
    return (host_id, key.app_id, key.release_id)


@dataclass(frozen=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    wake_at: float | None = None  # when a held-back start becomes possible
    shortfalls: list[Shortfall] = field(default_factory=list)

    @property
    def starts(self) -> list[StartJob]:
        return [a for a in self.actions if isinstance(a, StartJob)]

    @property
    def stops(self) -> list[StopJob]:
        return [a for a in self.actions if isinstance(a, StopJob)]


def _new_uuid() -> str:
    return str(uuid.uuid4())


def extras_order(jobs: Iterable[Job]) -> list[Job]:
    """The order in which extra jobs are stopped: ``starting`` before ``up``, newest first."""
    return sorted(jobs, key=lambda j: (j.state is not JobState.STARTING, -j.created_at, j.id))


def _counter() -> dict[str, int]:
    return defaultdict(int)


@dataclass
class _Pass:
    """Mutable bookkeeping of one reconcile pass (private: the function stays pure from outside)."""

    hosts: dict[str, Host]
    refused: Mapping[RefusalKey, float]
    now: float
    new_uuid: Callable[[], str]
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    per_key: dict[FormationKey, dict[str, int]] = field(default_factory=lambda: defaultdict(_counter))
    actions: list[Action] = field(default_factory=list)
    shortfalls: list[Shortfall] = field(default_factory=list)
    wake_at: float | None = None

    def wake(self, at: float) -> None:
        self.wake_at = at if self.wake_at is None else min(self.wake_at, at)

    def eligible(self, host: Host, key: FormationKey) -> str | None:
        """None when ``host`` may take a start of ``key``, else the reason it may not."""
        if not host.synced:
            return f"host {host.id} has not reported its jobs yet"
        until = self.refused.get(refusal_key(host.id, key))
        if until is not None and self.now < until:
            self.wake(until)
            return f"host {host.id} refused a start"
        return None

    def start(self, formation: Formation, key: FormationKey, host: Host, reason: str) -> None:
        job_id = job_id_for(host.id, self.new_uuid())
        config = job_config(formation, key.type, job_id)
        self.actions.append(StartJob(job_id, host.id, key, config, reason))
        self.total[host.id] += 1
        self.per_key[key][host.id] += 1

    def stop(self, job: Job, reason: str) -> None:
        self.actions.append(StopJob(job.id, job.host_id, job.key, reason))
        self.total[job.host_id] -= 1
        self.per_key[job.key][job.host_id] -= 1


def _stale_reason(key: FormationKey, formations: Mapping[tuple[str, str], Formation]) -> str:
    if (key.app_id, key.release_id) in formations:
        return f"type {key.type} is scaled to 0"
    if any(app_id == key.app_id for app_id, _ in formations):
        return "release superseded"
    return "app has no active formation (scaled to 0 or deleted)"


def reconcile(
    formations: Sequence[Formation],
    hosts: Sequence[Host],
    jobs: Sequence[Job],
    backoff: Backoff,
    now: float,
    *,
    refused: Mapping[RefusalKey, float] | None = None,
    new_uuid: Callable[[], str] = _new_uuid,
) -> Plan:
    """Decide what to start and stop. ``hosts`` are the hosts up in discoverd (lost ones absent);
    ``jobs`` are the known jobs on any host (final ones are ignored)."""
    p = _Pass({h.id: h for h in hosts}, refused or {}, now, new_uuid)
    live = _count_live(p, jobs)
    by_id = {f.id: f for f in formations}
    wanted = {
        formation.key(type_): (formation, count)
        for formation in formations
        for type_, count in formation.counts.items()
        if count > 0
    }

    # jobs nothing wants any more
    for key in sorted(live.keys() - wanted.keys()):
        reason = _stale_reason(key, by_id)
        for job in sorted(live[key], key=lambda j: j.id):
            p.stop(job, reason)

    for key in sorted(wanted):
        formation, count = wanted[key]
        have = live.get(key, [])
        proc = formation.processes.get(key.type)
        if proc is None:
            p.shortfalls.append(Shortfall(key, max(count - len(have), 0), "type not in the release"))
            continue
        held_until = backoff.restart_at(key)
        held = held_until is not None and now < held_until
        if held_until is not None and held:
            p.wake(held_until)
        if proc.omni:
            _omni(p, formation, key, count, have, held)
        else:
            _spread(p, formation, key, count, have, held)

    return Plan(p.actions, p.wake_at, p.shortfalls)


def _count_live(p: _Pass, jobs: Iterable[Job]) -> dict[FormationKey, list[Job]]:
    """The live jobs of each formation type, counting every live job into the hosts' loads."""
    live: dict[FormationKey, list[Job]] = defaultdict(list)
    for job in jobs:
        if not job.state.live or job.host_id not in p.hosts:
            continue
        p.total[job.host_id] += 1
        if job.one_off:
            continue
        p.per_key[job.key][job.host_id] += 1
        live[job.key].append(job)
    return live


def _spread(
    p: _Pass, formation: Formation, key: FormationKey, count: int, have: list[Job], held: bool
) -> None:
    if len(have) > count:
        for job in extras_order(have)[: len(have) - count]:
            p.stop(job, f"extra job ({len(have)} live, {count} wanted)")
        return
    missing = count - len(have)
    if missing == 0:
        return
    if held:
        p.shortfalls.append(Shortfall(key, missing, "crash backoff"))
        return
    candidates: list[Host] = []
    reasons: list[str] = []
    for host in sorted(p.hosts.values(), key=lambda h: h.id):
        why = p.eligible(host, key)
        if why is None:
            candidates.append(host)
        else:
            reasons.append(why)
    if not candidates:
        p.shortfalls.append(Shortfall(key, missing, "; ".join(reasons) or "no hosts"))
        return
    for n in range(missing):
        host = min(candidates, key=lambda h: (p.per_key[key][h.id], p.total[h.id], h.id))
        p.start(formation, key, host, f"{len(have) + n} of {count} live")


def _omni(p: _Pass, formation: Formation, key: FormationKey, count: int, have: list[Job], held: bool) -> None:
    on_host: dict[str, list[Job]] = defaultdict(list)
    for job in have:
        on_host[job.host_id].append(job)
    short = 0
    reasons: list[str] = []
    for host in sorted(p.hosts.values(), key=lambda h: h.id):
        mine = on_host.get(host.id, [])
        if len(mine) > count:
            for job in extras_order(mine)[: len(mine) - count]:
                p.stop(job, f"extra omni job on host {host.id} ({len(mine)} live, {count} wanted)")
            continue
        missing = count - len(mine)
        if missing == 0:
            continue
        why = "crash backoff" if held else p.eligible(host, key)
        if why is not None:
            short += missing
            reasons.append(why)
            continue
        for n in range(missing):
            p.start(formation, key, host, f"omni: {len(mine) + n} of {count} live on host {host.id}")
    if short:
        p.shortfalls.append(Shortfall(key, short, "; ".join(sorted(set(reasons)))))
