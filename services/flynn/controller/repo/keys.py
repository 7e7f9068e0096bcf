"""SSH public keys (for git over SSH)."""

from __future__ import annotations

from typing import Any

from flynn.controller import render
from flynn.controller.db import Tx
from flynn.controller.errors import Conflict, NotFound
from flynn.controller.sshkeys import PublicKey


async def create(tx: Tx, key: PublicKey) -> dict[str, Any]:
    row = await tx.one(
        "INSERT INTO keys (id, fingerprint, type, key, comment) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (id) DO NOTHING RETURNING *",
        (key.id, key.fingerprint, key.type, key.line, key.comment),
    )
    if row is None:
        raise Conflict(f"key {key.fingerprint} is already added", field="key")
    out = render.key(row)
    tx.emit(None, "key", out["id"], "create", out)
    return out


async def list_all(tx: Tx) -> list[dict[str, Any]]:
    return [render.key(r) for r in await tx.all("SELECT * FROM keys ORDER BY created_at DESC, id")]


async def delete(tx: Tx, key_id: str) -> dict[str, Any]:
    row = await tx.one("DELETE FROM keys WHERE id = %s RETURNING *", (key_id.lower(),))
    if row is None:
        raise NotFound(f"key {key_id[:80]!r} not found")
    out = render.key(row)
    tx.emit(None, "key", out["id"], "delete", out)
    return out
