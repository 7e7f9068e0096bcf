"""Apps: create, read, update, delete, meta, current release."""

from __future__ import annotations

from typing import Any

from flynn.controller import names, render, schema
from flynn.controller.db import Row, Tx, jsonb
from flynn.controller.errors import Conflict, Invalid, NotFound
from flynn.controller.repo import formations as formations_repo

SYSTEM_APPS = ("controller", "router", "blobstore", "gitreceive", "status", "logaggregator", "scheduler")


async def get(tx: Tx, ref: str, *, lock: bool = False) -> Row:
    kind, value = schema.app_ref(ref)
    if kind == "id" and lock:
        row = await tx.one("SELECT * FROM apps WHERE id = %s FOR UPDATE", (value,))
    elif kind == "id":
        row = await tx.one("SELECT * FROM apps WHERE id = %s", (value,))
    elif lock:
        row = await tx.one("SELECT * FROM apps WHERE name = %s FOR UPDATE", (value,))
    else:
        row = await tx.one("SELECT * FROM apps WHERE name = %s", (value,))
    if row is None:
        raise NotFound(f"app {ref!r} not found")
    return row


async def get_by_name(tx: Tx, name: str) -> Row | None:
    return await tx.one("SELECT * FROM apps WHERE name = %s", (name,))


async def list_all(tx: Tx) -> list[dict[str, Any]]:
    rows = await tx.all("SELECT * FROM apps ORDER BY created_at, id")
    return [render.app(r) for r in rows]


async def create(tx: Tx, spec: schema.AppSpec) -> dict[str, Any]:
    app_id = spec.id or schema.new_id()
    if spec.id is not None and await tx.one("SELECT 1 FROM apps WHERE id = %s", (spec.id,)):
        raise Conflict(f"app id {spec.id} is taken", field="id")
    for _attempt in range(20):
        name = spec.name or names.generate()
        row = await tx.one(
            "INSERT INTO apps (id, name, meta, strategy, deploy_timeout, system)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING *",
            (
                app_id,
                name,
                jsonb(spec.meta or {}),
                spec.strategy or "all-at-once",
                spec.deploy_timeout or schema.DEFAULT_DEPLOY_TIMEOUT,
                spec.system,
            ),
        )
        if row is not None:
            out = render.app(row)
            tx.emit(out["id"], "app", out["id"], "create", out)
            return out
        if spec.name is not None:
            raise Conflict(f"app name {spec.name!r} is taken", field="name")
    raise Conflict("could not find a free app name; give one")


async def update(tx: Tx, ref: str, spec: schema.AppSpec) -> dict[str, Any]:
    row = await get(tx, ref, lock=True)
    row = await tx.must(
        "UPDATE apps SET meta = coalesce(%s, meta), strategy = coalesce(%s, strategy),"
        " deploy_timeout = coalesce(%s, deploy_timeout), updated_at = now() WHERE id = %s RETURNING *",
        (
            jsonb(spec.meta) if spec.meta is not None else None,
            spec.strategy,
            spec.deploy_timeout,
            row["id"],
        ),
    )
    out = render.app(row)
    tx.emit(out["id"], "app", out["id"], "update", out)
    return out


async def set_meta(tx: Tx, ref: str, meta: dict[str, str]) -> dict[str, str]:
    row = await get(tx, ref, lock=True)
    row = await tx.must(
        "UPDATE apps SET meta = %s, updated_at = now() WHERE id = %s RETURNING *", (jsonb(meta), row["id"])
    )
    out = render.app(row)
    tx.emit(out["id"], "app", out["id"], "update", out)
    return dict(out["meta"])


async def delete(tx: Tx, ref: str) -> str:
    row = await get(tx, ref, lock=True)
    if row["system"]:
        raise Invalid(f"{row['name']} is a system app and cannot be deleted")
    app_json = render.app(row)
    app_id = app_json["id"]
    # scaled to 0 first: every formation goes (with an event), so the scheduler stops the jobs
    for form in await formations_repo.list_for_app(tx, app_id):
        tx.emit(app_id, "formation", form["release_id"], "delete", {**form, "processes": {}})
    await tx.run("DELETE FROM apps WHERE id = %s", (app_id,))
    tx.emit(app_id, "app_deletion", app_id, "delete", {"app": app_json})
    return str(app_id)


async def set_release(tx: Tx, app: Row, release: dict[str, Any]) -> dict[str, Any]:
    """Make ``release`` the app's current release (no deployment); emits ``app_release``."""
    prev = None if app["release_id"] is None else str(app["release_id"])
    row = await tx.must(
        "UPDATE apps SET release_id = %s, updated_at = now() WHERE id = %s RETURNING *",
        (release["id"], app["id"]),
    )
    app_id = str(app["id"])
    tx.emit(app_id, "app_release", app_id, "update", {"release": release, "prev_release_id": prev})
    return render.app(row)
