"""The deployer: runs deployments step by step, in whichever controller claims them.

A deployment is claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` (exactly one controller runs
it) and its claim is renewed at every step; a claim older than ``claim_timeout`` (its controller
died) is taken over by another controller, which resumes from the formations as they are: every
step is computed from the current state (:func:`plan`), so a resumed deployment neither repeats
nor skips a step.

Job states come from the jobs table, which the scheduler keeps up to date. A deployment fails
(new formation deleted, old one restored) when jobs of the new release crashed or failed
``max_failures`` times in all since it started, or when ``deploy_timeout`` passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from flynn.controller.db import UNAVAILABLE, Database, Row, Tx
from flynn.controller.repo import apps as apps_repo
from flynn.controller.repo import deployments as deployments_repo
from flynn.controller.repo import formations as formations_repo
from flynn.controller.repo import jobs as jobs_repo
from flynn.controller.repo import releases as releases_repo

log = logging.getLogger(__name__)

MAX_FAILURES = 5


@dataclass(frozen=True)
class Step:
    kind: str  # "wait", "scale_new", "scale_old", "done"
    counts: dict[str, int] = field(default_factory=dict)
    job_type: str | None = None


def plan(  # noqa: PLR0911 - one return per kind of step
    strategy: str,
    target: dict[str, int],
    new_counts: dict[str, int],
    old_counts: dict[str, int],
    up: dict[str, int],
) -> Step:
    """The next step of a deployment, from where things are (pure: unit-tested on its own)."""
    if strategy == "all-at-once":
        if any(new_counts.get(t, 0) != c for t, c in target.items()):
            return Step("scale_new", dict(target))
        if all(up.get(t, 0) >= c for t, c in target.items()):
            return Step("done")
        return Step("wait")
    for t in sorted(target):  # one-by-one: per type, new +1, then (once up) old -1
        want, n, o = target[t], new_counts.get(t, 0), old_counts.get(t, 0)
        if n > want:
            return Step("scale_new", {**new_counts, t: want}, t)
        if up.get(t, 0) < n:
            return Step("wait", job_type=t)
        if o > 0 and n + o > want:
            return Step("scale_old", {**old_counts, t: o - 1}, t)
        if n < want:
            return Step("scale_new", {**{k: new_counts.get(k, 0) for k in target}, t: n + 1}, t)
    return Step("done")


class Deployer:
    def __init__(
        self,
        db: Database,
        owner: str,
        *,
        claim_timeout: float = 30.0,
        poll: float = 0.25,
        idle_poll: float = 1.0,
        max_failures: int = MAX_FAILURES,
    ) -> None:
        self.db = db
        self.owner = owner
        self.claim_timeout = claim_timeout
        self.poll = poll
        self.idle_poll = idle_poll
        self.max_failures = max_failures
        self.ran: list[str] = []  # ids of deployments this deployer claimed (tests read it)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}

    def wake(self) -> None:
        self._wake.set()

    async def on_event(self, event: dict[str, Any]) -> None:
        if event["object_type"] in ("deployment", "job", "formation", "app_deletion"):
            self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._claim_loop(), name="deployer")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def _claim_loop(self) -> None:
        while True:
            try:
                async with self.db.transaction() as tx:
                    row = await deployments_repo.claim(tx, self.owner, self.claim_timeout)
            except UNAVAILABLE as exc:
                log.warning("deployer cannot claim: %s", exc)
                await asyncio.sleep(1)
                continue
            except Exception:
                log.exception("deployer claim failed")
                await asyncio.sleep(1)
                continue
            if row is None:
                await self._sleep(self.idle_poll)
                continue
            dep_id = str(row["id"])
            self.ran.append(dep_id)
            log.info(
                "%s deployment %s of app %s (%s)",
                "took over" if row.get("taken_over") else "running",
                dep_id,
                row["app_id"],
                row["strategy"],
            )
            if dep_id in self._running:  # our own claim went stale (a long stall): keep the running task
                continue
            task = asyncio.get_running_loop().create_task(self._run(row), name=f"deployment-{dep_id}")
            self._running[dep_id] = task
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        for dep_id, running in list(self._running.items()):
            if running is task:
                del self._running[dep_id]

    async def _run(self, first: Row) -> None:
        dep_id = str(first["id"])
        seen: dict[str, str] = {}
        while True:
            try:
                step = await self._step(dep_id, seen)
            except UNAVAILABLE as exc:
                log.warning("deployment %s: database unavailable (%s); retrying", dep_id, exc)
                await asyncio.sleep(1)
                continue
            except Exception:
                log.exception("deployment %s: step failed; retrying", dep_id)
                await asyncio.sleep(1)
                continue
            if step is None:
                return
            await self._sleep(self.poll)

    async def _step(self, dep_id: str, seen: dict[str, str]) -> Step | None:
        """One step in one transaction; None when the deployment is over (or not ours any more)."""
        async with self.db.transaction() as tx:
            dep = await deployments_repo.hold(tx, dep_id, self.owner)
            if dep is None:
                return None
            app_id, new_id = str(dep["app_id"]), str(dep["new_release_id"])
            old_id = None if dep["old_release_id"] is None else str(dep["old_release_id"])
            app = await tx.one("SELECT * FROM apps WHERE id = %s FOR UPDATE", (app_id,))
            release = await releases_repo.find(tx, new_id)
            if app is None or release is None:
                await deployments_repo.finish(tx, dep, "failed", "the app or release was deleted")
                return None
            target = {t: c for t, c in dep["processes"].items() if t in release["processes"]}
            new_form = await formations_repo.find(tx, app_id, new_id, lock=True)
            old_form = await formations_repo.find(tx, app_id, old_id, lock=True) if old_id else None
            new_counts = dict(new_form["processes"]) if new_form else {}
            old_counts = dict(old_form["processes"]) if old_form else {}
            up, failures = await jobs_repo.release_summary(tx, app_id, new_id, dep["started_at"])
            await self._job_events(tx, dep, seen)
            timed_out = await tx.one(
                "SELECT now() > %s + make_interval(secs => %s) AS late",
                (dep["started_at"], dep["deploy_timeout"]),
            )
            if failures >= self.max_failures:
                await self._rollback(
                    tx,
                    dep,
                    new_form is not None,
                    f"{failures} jobs of the new release crashed or failed (limit {self.max_failures})",
                )
                return None
            if timed_out and timed_out["late"]:
                waiting = ", ".join(f"{t} {up.get(t, 0)}/{c}" for t, c in sorted(target.items()))
                await self._rollback(
                    tx, dep, new_form is not None, f"timed out after {dep['deploy_timeout']}s (up: {waiting})"
                )
                return None
            step = plan(dep["strategy"], target, new_counts, old_counts, up)
            if step.kind == "scale_new":
                await formations_repo.put(tx, app_id, new_id, step.counts)
                tx.emit(app_id, "deployment", dep_id, "update", _step_data(dep, step, "scale_new"))
            elif step.kind == "scale_old" and old_id is not None:
                await formations_repo.put(tx, app_id, old_id, step.counts)
                tx.emit(app_id, "deployment", dep_id, "update", _step_data(dep, step, "scale_old"))
            elif step.kind == "done":
                if old_form is not None:
                    await formations_repo.put(tx, app_id, old_id or "", {t: 0 for t in old_counts})
                await apps_repo.set_release(tx, app, release)
                await deployments_repo.finish(tx, dep, "complete")
                log.info("deployment %s complete", dep_id)
                return None
            return step

    async def _job_events(self, tx: Tx, dep: Row, seen: dict[str, str]) -> None:
        rows = await jobs_repo.states_since(
            tx, str(dep["app_id"]), str(dep["new_release_id"]), dep["started_at"]
        )
        for row in sorted(rows, key=lambda r: r["id"]):
            if seen.get(row["id"]) == row["state"]:
                continue
            seen[row["id"]] = row["state"]
            tx.emit(
                str(dep["app_id"]),
                "deployment",
                str(dep["id"]),
                "update",
                deployments_repo.event_data(
                    dep, "running", job_type=row["type"], job_state=row["state"], job_id=row["id"]
                ),
            )

    async def _rollback(self, tx: Tx, dep: Row, has_new: bool, error: str) -> None:
        app_id = str(dep["app_id"])
        new_id = str(dep["new_release_id"])
        if has_new:
            app = {"id": app_id, "name": app_id}
            await formations_repo.delete(tx, app, new_id)
        if dep["old_release_id"] is not None:
            await formations_repo.put(tx, app_id, str(dep["old_release_id"]), dict(dep["processes"]))
        await deployments_repo.finish(tx, dep, "failed", error)
        log.warning("deployment %s failed: %s", dep["id"], error)


def _step_data(dep: Row, step: Step, action: str) -> dict[str, Any]:
    data = deployments_repo.event_data(dep, "running", job_type=step.job_type)
    data["step"] = action
    data["processes"] = step.counts
    return data
