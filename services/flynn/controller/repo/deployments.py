"""Deployments: created by the API, run by the deployer (deployer.py), claimed by one controller."""

from __future__ import annotations

from typing import Any

from flynn.controller import render, schema
from flynn.controller.db import Row, Tx, jsonb
from flynn.controller.errors import Conflict, NotFound
from flynn.controller.repo import apps as apps_repo
from flynn.controller.repo import formations as formations_repo
from flynn.controller.repo import releases as releases_repo

ACTIVE = ("pending", "running")


def event_data(dep: Row | dict[str, Any], status: str, **extra: Any) -> dict[str, Any]:
    return {
        "deployment_id": str(dep["id"]),
        "app_id": str(dep["app_id"]),
        "release_id": str(dep["new_release_id"]),
        "status": status,
        "job_type": extra.get("job_type"),
        "job_state": extra.get("job_state"),
        "job_id": extra.get("job_id"),
        "error": extra.get("error"),
    }


async def create(tx: Tx, app_ref: str, release_id: str) -> dict[str, Any]:
    app = await apps_repo.get(tx, app_ref, lock=True)  # the app row lock orders deployments of one app
    release = await releases_repo.get_for_app(tx, app, release_id, field="id")
    if await tx.one(
        "SELECT 1 FROM deployments WHERE app_id = %s AND status IN ('pending', 'running')", (app["id"],)
    ):
        raise Conflict(f"app {app['name']} already has a deployment in progress")
    old_id = None if app["release_id"] is None else str(app["release_id"])
    processes: dict[str, int] = {}
    old_form = await formations_repo.find(tx, app["id"], old_id) if old_id else None
    if old_form is not None:
        processes = dict(old_form["processes"])
    instant = old_id is None or old_id == release_id or not any(c > 0 for c in processes.values())
    row = await tx.must(
        "INSERT INTO deployments (id, app_id, old_release_id, new_release_id, strategy, status, processes,"
        " deploy_timeout, finished_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END)"
        " RETURNING *",
        (
            schema.new_id(),
            app["id"],
            old_id,
            release_id,
            app["strategy"],
            "complete" if instant else "pending",
            jsonb(processes),
            app["deploy_timeout"],
            instant,
        ),
    )
    out = render.deployment(row)
    if instant:
        if old_id != release_id:
            if old_form is not None:  # keep the (zero) counts of the types the new release has
                target = {t: c for t, c in processes.items() if t in release["processes"]}
                await formations_repo.put(tx, app["id"], release_id, target)
            await apps_repo.set_release(tx, app, release)
        tx.emit(out["app_id"], "deployment", out["id"], "create", event_data(row, "complete"))
    else:
        tx.emit(out["app_id"], "deployment", out["id"], "create", event_data(row, "pending"))
    return out


async def get(tx: Tx, deployment_id: str) -> dict[str, Any]:
    row = await tx.one(
        "SELECT * FROM deployments WHERE id = %s", (schema.path_uuid(deployment_id, "deployment"),)
    )
    if row is None:
        raise NotFound(f"deployment {deployment_id} not found")
    return render.deployment(row)


async def list_for_app(tx: Tx, app_id: str) -> list[dict[str, Any]]:
    rows = await tx.all(
        "SELECT * FROM deployments WHERE app_id = %s ORDER BY created_at DESC, id LIMIT 1000", (app_id,)
    )
    return [render.deployment(r) for r in rows]


async def claim(tx: Tx, owner: str, stale_after: float) -> Row | None:
    """Take one deployment nobody runs (pending, or claimed more than ``stale_after`` s ago)."""
    row = await tx.one(
        "SELECT * FROM deployments WHERE status IN ('pending', 'running')"
        " AND (claimed_at IS NULL OR claimed_at < now() - make_interval(secs => %s))"
        " ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        (stale_after,),
    )
    if row is None:
        return None
    taken_over = row["claimed_by"] is not None
    row = await tx.must(
        "UPDATE deployments SET status = 'running', claimed_by = %s, claimed_at = now(),"
        " started_at = coalesce(started_at, now()) WHERE id = %s RETURNING *",
        (owner, row["id"]),
    )
    row["taken_over"] = taken_over
    if not taken_over:
        tx.emit(str(row["app_id"]), "deployment", str(row["id"]), "update", event_data(row, "running"))
    return row


async def hold(tx: Tx, deployment_id: str, owner: str) -> Row | None:
    """Lock our claimed deployment for one step and renew the claim; None if no longer ours."""
    row = await tx.one(
        "SELECT * FROM deployments WHERE id = %s AND claimed_by = %s AND status = 'running' FOR UPDATE",
        (deployment_id, owner),
    )
    if row is None:
        return None
    await tx.run("UPDATE deployments SET claimed_at = now() WHERE id = %s", (deployment_id,))
    return row


async def finish(tx: Tx, dep: Row, status: str, error: str | None = None) -> dict[str, Any]:
    row = await tx.must(
        "UPDATE deployments SET status = %s, error = %s, finished_at = now(), claimed_at = NULL"
        " WHERE id = %s RETURNING *",
        (status, error, dep["id"]),
    )
    tx.emit(str(row["app_id"]), "deployment", str(row["id"]), "update", event_data(row, status, error=error))
    return render.deployment(row)
