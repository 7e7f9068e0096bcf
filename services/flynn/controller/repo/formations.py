"""Formations: how many jobs of each process type an (app, release) should have."""

from __future__ import annotations

from typing import Any

from flynn.controller import render
from flynn.controller.db import Row, Tx, jsonb
from flynn.controller.errors import NotFound
from flynn.controller.repo import artifacts as artifacts_repo
from flynn.controller.repo import releases as releases_repo


async def put(tx: Tx, app_id: str, release_id: str, processes: dict[str, int]) -> dict[str, Any]:
    row = await tx.must(
        "INSERT INTO formations (app_id, release_id, processes) VALUES (%s, %s, %s)"
        " ON CONFLICT (app_id, release_id) DO UPDATE SET processes = EXCLUDED.processes, updated_at = now()"
        " RETURNING *, (xmax = 0) AS inserted",
        (app_id, release_id, jsonb(processes)),
    )
    out = render.formation(row)
    tx.emit(str(app_id), "formation", str(release_id), "create" if row["inserted"] else "update", out)
    return out


async def find(tx: Tx, app_id: str, release_id: str, *, lock: bool = False) -> dict[str, Any] | None:
    query = "SELECT * FROM formations WHERE app_id = %s AND release_id = %s"
    row = await tx.one(query + " FOR UPDATE" if lock else query, (app_id, release_id))
    return None if row is None else render.formation(row)


async def get(tx: Tx, app: Row, release_id: str) -> dict[str, Any]:
    out = await find(tx, app["id"], release_id)
    if out is None:
        raise NotFound(f"app {app['name']} has no formation for release {release_id}")
    return out


async def list_for_app(tx: Tx, app_id: str) -> list[dict[str, Any]]:
    rows = await tx.all("SELECT * FROM formations WHERE app_id = %s ORDER BY updated_at DESC", (app_id,))
    return [render.formation(r) for r in rows]


async def delete(tx: Tx, app: Row, release_id: str) -> dict[str, Any]:
    row = await tx.one(
        "DELETE FROM formations WHERE app_id = %s AND release_id = %s RETURNING *", (app["id"], release_id)
    )
    if row is None:
        raise NotFound(f"app {app['name']} has no formation for release {release_id}")
    out = render.formation(row)
    tx.emit(str(app["id"]), "formation", str(release_id), "delete", out)
    return out


async def list_all(tx: Tx) -> list[dict[str, Any]]:
    rows = await tx.all("SELECT * FROM formations ORDER BY updated_at DESC")
    return [render.formation(r) for r in rows]


async def expand(tx: Tx, forms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Formations with their app, release and artifacts inlined (what the scheduler needs)."""
    if not forms:
        return []
    app_ids = sorted({f["app_id"] for f in forms})
    apps = {
        str(r["id"]): render.app(r)
        for r in await tx.all("SELECT * FROM apps WHERE id = ANY(%s::uuid[])", (app_ids,))
    }
    releases = await releases_repo.get_many(tx, sorted({f["release_id"] for f in forms}))
    artifact_ids = sorted({a for r in releases.values() for a in r["artifacts"]})
    artifacts = await artifacts_repo.get_many(tx, artifact_ids)
    out = []
    for f in forms:
        release = releases[f["release_id"]]
        out.append(
            {
                "app": apps[f["app_id"]],
                "release": release,
                "artifacts": [artifacts[a] for a in release["artifacts"]],
                "processes": f["processes"],
                "updated_at": f["updated_at"],
            }
        )
    return out


async def active(tx: Tx) -> list[dict[str, Any]]:
    rows = await tx.all(
        "SELECT * FROM formations f WHERE EXISTS"
        " (SELECT 1 FROM jsonb_each(f.processes) p WHERE (p.value)::int > 0) ORDER BY updated_at DESC"
    )
    return await expand(tx, [render.formation(r) for r in rows])
