"""Log sinks: create, list, read, delete; every write emits a ``sink`` event in its transaction.

The same canonical URL twice is a 409 (checked first for the message, enforced by the table's
unique constraint, so a race between two controllers ends the same way).
"""

from __future__ import annotations

from typing import Any

import psycopg

from flynn.controller import render
from flynn.controller.db import Row, Tx
from flynn.controller.errors import Conflict, NotFound
from flynn.controller.schema import UUID_RE, new_id
from flynn.controller.sinkschema import SinkSpec


def to_json(row: Row) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "kind": row["kind"],
        "url": row["url"],
        "use_tls": str(row["url"]).startswith("syslog+tls://"),
        "ca_cert": row["ca_cert"],
        "created_at": render.ts(row["created_at"]),
    }


async def create(tx: Tx, spec: SinkSpec) -> dict[str, Any]:
    taken = await tx.one("SELECT id FROM sinks WHERE url = %s", (spec.url,))
    if taken is not None:
        raise Conflict(f"sink {taken['id']} already ships to {spec.url}", field="url")
    sink_id = spec.id or new_id()
    try:
        row = await tx.must(
            "INSERT INTO sinks (id, kind, url, ca_cert) VALUES (%s, %s, %s, %s) RETURNING *",
            (sink_id, spec.kind, spec.url, spec.ca_cert),
        )
    except psycopg.errors.UniqueViolation:
        raise Conflict(f"a sink with id {sink_id} or url {spec.url} exists", field="url") from None
    out = to_json(row)
    tx.emit(None, "sink", out["id"], "create", out)
    return out


async def list_all(tx: Tx) -> list[dict[str, Any]]:
    return [to_json(r) for r in await tx.all("SELECT * FROM sinks ORDER BY created_at DESC, id")]


def _check_id(sink_id: str) -> str:
    if not UUID_RE.fullmatch(sink_id):
        raise NotFound(f"sink {sink_id[:80]!r} not found")
    return sink_id


async def get(tx: Tx, sink_id: str) -> dict[str, Any]:
    row = await tx.one("SELECT * FROM sinks WHERE id = %s", (_check_id(sink_id),))
    if row is None:
        raise NotFound(f"sink {sink_id} not found")
    return to_json(row)


async def delete(tx: Tx, sink_id: str) -> dict[str, Any]:
    row = await tx.one("DELETE FROM sinks WHERE id = %s RETURNING *", (_check_id(sink_id),))
    if row is None:
        raise NotFound(f"sink {sink_id} not found")
    out = to_json(row)
    tx.emit(None, "sink", out["id"], "delete", out)
    return out
