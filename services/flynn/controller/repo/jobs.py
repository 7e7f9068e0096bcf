"""Jobs as the scheduler reports them (the hosts own the processes)."""

from __future__ import annotations

from typing import Any

from flynn.controller import render, schema
from flynn.controller.db import Row, Tx, jsonb
from flynn.controller.errors import Invalid, NotFound
from flynn.controller.repo import releases as releases_repo

ONEOFF_META = "flynn-controller.oneoff"  # meta key set on one-off jobs (`flynn run`): not a formation's
_FIELDS = ("state", "args", "exit_status", "host_error", "restarts", "meta")


async def put(tx: Tx, app: Row, job_id: str, report: schema.JobReport) -> tuple[dict[str, Any], bool]:
    """Insert or update a job from a scheduler report; returns (job, created)."""
    host_id, job_uuid = schema.path_job_id(job_id)
    row = await tx.one("SELECT * FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
    if row is None:
        if report.release_id is None:
            raise Invalid("release_id: is required for a new job", field="release_id")
        if report.type is None:
            raise Invalid("type: is required for a new job", field="type")
        await releases_repo.get_for_app(tx, app, report.release_id, field="release_id")
        row = await tx.one(
            "INSERT INTO jobs (id, uuid, host_id, app_id, release_id, type, state, args, exit_status,"
            " host_error, restarts, meta) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO NOTHING RETURNING *",
            (
                job_id,
                job_uuid,
                host_id,
                app["id"],
                report.release_id,
                report.type,
                report.state,
                jsonb(report.args or []),
                report.exit_status,
                report.host_error,
                report.restarts or 0,
                jsonb(report.meta or {}),
            ),
        )
        if row is not None:
            out = render.job(row)
            tx.emit(out["app_id"], "job", job_id, "create", out)
            return out, True
        row = await tx.must("SELECT * FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
    current = render.job(row)
    if current["app_id"] != str(app["id"]):
        raise NotFound(f"job {job_id} not found in app {app['name']}")
    if report.release_id is not None and report.release_id != current["release_id"]:
        raise Invalid("release_id: a job's release cannot change", field="release_id")
    if report.type is not None and report.type != current["type"]:
        raise Invalid("type: a job's type cannot change", field="type")
    new = dict(current)
    for name in _FIELDS:
        if name in report.present:
            value = getattr(report, name)
            if name in ("args", "meta", "restarts") and value is None:
                continue
            new[name] = value
    if all(new[name] == current[name] for name in _FIELDS):
        return current, False
    row = await tx.must(
        "UPDATE jobs SET state = %s, args = %s, exit_status = %s, host_error = %s, restarts = %s,"
        " meta = %s, updated_at = now() WHERE id = %s RETURNING *",
        (
            new["state"],
            jsonb(new["args"]),
            new["exit_status"],
            new["host_error"],
            new["restarts"],
            jsonb(new["meta"]),
            job_id,
        ),
    )
    out = render.job(row)
    tx.emit(out["app_id"], "job", job_id, "update", out)
    return out, False


async def insert_started(tx: Tx, job: dict[str, Any]) -> dict[str, Any]:
    """Record a job the controller itself started (one-off); a scheduler report may have come first."""
    row = await tx.one(
        "INSERT INTO jobs (id, uuid, host_id, app_id, release_id, type, state, args, meta)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING *",
        (
            job["id"],
            job["uuid"],
            job["host_id"],
            job["app_id"],
            job["release_id"],
            job["type"],
            job["state"],
            jsonb(job["args"]),
            jsonb(job["meta"]),
        ),
    )
    if row is None:
        found = await tx.must("SELECT * FROM jobs WHERE id = %s", (job["id"],))
        return render.job(found)
    out = render.job(row)
    tx.emit(out["app_id"], "job", out["id"], "create", out)
    return out


async def mark(tx: Tx, job_id: str, state: str, *, only_live: bool = True) -> dict[str, Any] | None:
    """Move a job to ``state`` (unless it already reached a final state); emits when it changed."""
    query = "UPDATE jobs SET state = %s, updated_at = now() WHERE id = %s AND state <> %s"
    if only_live:
        query += " AND state IN ('pending', 'starting', 'up', 'stopping')"
    row = await tx.one(query + " RETURNING *", (state, job_id, state))
    if row is None:
        return None
    out = render.job(row)
    tx.emit(out["app_id"], "job", out["id"], "update", out)
    return out


async def get(tx: Tx, app: Row, job_id: str) -> dict[str, Any]:
    schema.path_job_id(job_id)
    row = await tx.one("SELECT * FROM jobs WHERE id = %s AND app_id = %s", (job_id, app["id"]))
    if row is None:
        raise NotFound(f"job {job_id} not found in app {app['name']}")
    return render.job(row)


async def list_for_app(tx: Tx, app_id: str, *, include_final: bool = False) -> list[dict[str, Any]]:
    if include_final:
        rows = await tx.all(
            "SELECT * FROM jobs WHERE app_id = %s ORDER BY created_at DESC, id LIMIT 1000", (app_id,)
        )
    else:
        rows = await tx.all(
            "SELECT * FROM jobs WHERE app_id = %s AND state IN ('pending', 'starting', 'up', 'stopping')"
            " ORDER BY created_at DESC, id",
            (app_id,),
        )
    return [render.job(r) for r in rows]


async def live_counts_by_host(tx: Tx) -> dict[str, int]:
    rows = await tx.all(
        "SELECT host_id, count(*) AS n FROM jobs"
        " WHERE state IN ('pending', 'starting', 'up', 'stopping') GROUP BY host_id"
    )
    return {r["host_id"]: int(r["n"]) for r in rows}


async def release_summary(tx: Tx, app_id: str, release_id: str, since: Any) -> tuple[dict[str, int], int]:
    """(up jobs per type, jobs crashed/failed since ``since``) of one release of an app."""
    rows = await tx.all(
        "SELECT type, count(*) FILTER (WHERE state = 'up') AS up,"
        " count(*) FILTER (WHERE state IN ('crashed', 'failed') AND updated_at >= %s) AS failed"
        " FROM jobs WHERE app_id = %s AND release_id = %s GROUP BY type",
        (since, app_id, release_id),
    )
    return {r["type"]: int(r["up"]) for r in rows}, sum(int(r["failed"]) for r in rows)


async def states_since(tx: Tx, app_id: str, release_id: str, since: Any) -> list[Row]:
    return await tx.all(
        "SELECT id, type, state FROM jobs WHERE app_id = %s AND release_id = %s AND updated_at >= %s",
        (app_id, release_id, since),
    )
