"""Releases: immutable (artifacts + env + processes) versions of an app."""

from __future__ import annotations

from typing import Any

from flynn.controller import render, schema
from flynn.controller.db import Row, Tx, jsonb
from flynn.controller.errors import Conflict, Invalid, NotFound
from flynn.controller.repo import artifacts as artifacts_repo

_SELECT = (
    "SELECT r.*, coalesce((SELECT array_agg(ra.artifact_id ORDER BY ra.position)"
    " FROM release_artifacts ra WHERE ra.release_id = r.id), '{}') AS artifacts FROM releases r"
)


async def create(tx: Tx, app: Row, spec: schema.ReleaseSpec) -> dict[str, Any]:
    found = await artifacts_repo.get_many(tx, spec.artifacts)
    for i, artifact_id in enumerate(spec.artifacts):
        if artifact_id not in found:
            raise Invalid(f"artifacts[{i}]: artifact {artifact_id} not found", field=f"artifacts[{i}]")
    row = await tx.one(
        "INSERT INTO releases (id, app_id, env, meta, processes) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (id) DO NOTHING RETURNING *",
        (spec.id, app["id"], jsonb(spec.env), jsonb(spec.meta), jsonb(spec.processes)),
    )
    if row is None:
        raise Conflict(f"release id {spec.id} is taken", field="id")
    for position, artifact_id in enumerate(spec.artifacts):
        await tx.run(
            "INSERT INTO release_artifacts (release_id, artifact_id, position) VALUES (%s, %s, %s)",
            (spec.id, artifact_id, position),
        )
    row["artifacts"] = spec.artifacts
    out = render.release(row)
    tx.emit(out["app_id"], "release", out["id"], "create", out)
    return out


async def find(tx: Tx, release_id: str) -> dict[str, Any] | None:
    row = await tx.one(_SELECT + " WHERE r.id = %s", (release_id,))
    return None if row is None else render.release(row)


async def get(tx: Tx, release_id: str) -> dict[str, Any]:
    out = await find(tx, schema.path_uuid(release_id, "release"))
    if out is None:
        raise NotFound(f"release {release_id} not found")
    return out


async def get_for_app(tx: Tx, app: Row, release_id: str, *, field: str | None = None) -> dict[str, Any]:
    """The release if it belongs to ``app``: 404 (a path parameter) or 400 naming ``field`` (a body)."""
    out = await find(tx, release_id) if schema.UUID_RE.fullmatch(release_id) else None
    if out is None or out["app_id"] != str(app["id"]):
        message = f"release {release_id} not found in app {app['name']}"
        if field is not None:
            raise Invalid(f"{field}: {message}", field=field)
        raise NotFound(message)
    return out


async def list_for_app(tx: Tx, app_id: str) -> list[dict[str, Any]]:
    rows = await tx.all(_SELECT + " WHERE r.app_id = %s ORDER BY r.created_at DESC, r.id", (app_id,))
    return [render.release(r) for r in rows]


async def get_many(tx: Tx, ids: list[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    rows = await tx.all(_SELECT + " WHERE r.id = ANY(%s::uuid[])", (ids,))
    return {str(r["id"]): render.release(r) for r in rows}
