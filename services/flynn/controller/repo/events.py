"""Reading events (they are written by Tx.emit, in the transaction of the change they describe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql

from flynn.controller import render
from flynn.controller.db import Tx
from flynn.controller.errors import NotFound


@dataclass(frozen=True)
class Filter:
    app_id: str | None = None
    object_types: tuple[str, ...] = ()
    object_id: str | None = None

    def matches(self, event: dict[str, Any]) -> bool:
        if self.app_id is not None and event["app_id"] != self.app_id:
            return False
        if self.object_types and event["object_type"] not in self.object_types:
            return False
        return self.object_id is None or event["object_id"] == self.object_id


def _where(flt: Filter, after_id: int | None) -> tuple[sql.Composable, list[Any]]:
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    if after_id is not None:
        clauses.append(sql.SQL("id > %s"))
        params.append(after_id)
    if flt.app_id is not None:
        clauses.append(sql.SQL("app_id = %s"))
        params.append(flt.app_id)
    if flt.object_types:
        clauses.append(sql.SQL("object_type = ANY(%s)"))
        params.append(list(flt.object_types))
    if flt.object_id is not None:
        clauses.append(sql.SQL("object_id = %s"))
        params.append(flt.object_id)
    if not clauses:
        return sql.SQL(""), params
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses), params


async def after(tx: Tx, flt: Filter, after_id: int, limit: int = 1000) -> list[dict[str, Any]]:
    """Events with id > ``after_id`` matching ``flt``, oldest first."""
    where, params = _where(flt, after_id)
    query = sql.SQL("SELECT * FROM events{} ORDER BY id LIMIT %s").format(where)
    cur = await tx.conn.execute(query, [*params, limit])
    return [render.event(r) for r in await cur.fetchall()]


async def newest(tx: Tx, flt: Filter, count: int, after_id: int | None = None) -> list[dict[str, Any]]:
    """The newest ``count`` events matching ``flt``, newest first."""
    where, params = _where(flt, after_id)
    query = sql.SQL("SELECT * FROM events{} ORDER BY id DESC LIMIT %s").format(where)
    cur = await tx.conn.execute(query, [*params, count])
    return [render.event(r) for r in await cur.fetchall()]


async def last_id(tx: Tx) -> int:
    row = await tx.one("SELECT coalesce(max(id), 0) AS id FROM events")
    return int(row["id"]) if row else 0


async def get(tx: Tx, event_id: int) -> dict[str, Any]:
    row = await tx.one("SELECT * FROM events WHERE id = %s", (event_id,))
    if row is None:
        raise NotFound(f"event {event_id} not found")
    return render.event(row)
