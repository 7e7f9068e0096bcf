"""Artifacts (tarballs mounted at /app in jobs)."""

from __future__ import annotations

from typing import Any

from flynn.controller import render, schema
from flynn.controller.db import Tx, jsonb
from flynn.controller.errors import Conflict, NotFound


async def create(tx: Tx, spec: schema.ArtifactSpec) -> dict[str, Any]:
    row = await tx.one(
        "INSERT INTO artifacts (id, type, uri, meta, size, sha256) VALUES (%s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (id) DO NOTHING RETURNING *",
        (spec.id, spec.type, spec.uri, jsonb(spec.meta), spec.size, spec.sha256),
    )
    if row is None:
        raise Conflict(f"artifact id {spec.id} is taken", field="id")
    out = render.artifact(row)
    tx.emit(None, "artifact", out["id"], "create", out)
    return out


async def get(tx: Tx, artifact_id: str) -> dict[str, Any]:
    row = await tx.one("SELECT * FROM artifacts WHERE id = %s", (schema.path_uuid(artifact_id, "artifact"),))
    if row is None:
        raise NotFound(f"artifact {artifact_id} not found")
    return render.artifact(row)


async def list_all(tx: Tx, limit: int = 1000) -> list[dict[str, Any]]:
    rows = await tx.all("SELECT * FROM artifacts ORDER BY created_at DESC, id LIMIT %s", (limit,))
    return [render.artifact(r) for r in rows]


async def get_many(tx: Tx, ids: list[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    rows = await tx.all("SELECT * FROM artifacts WHERE id = ANY(%s::uuid[])", (ids,))
    return {str(r["id"]): render.artifact(r) for r in rows}
