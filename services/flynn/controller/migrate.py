"""Versioned schema: ``migrations/NNNN_name.sql`` applied in order at start, each exactly once.

Controllers race at start (one per bootstrap host, same database): every migration run holds a
session-level ``pg_advisory_lock``, so one controller applies what is missing while the others wait
and then find nothing left to do. Each migration runs in its own transaction together with its row
in ``schema_migrations``, so a crash mid-way leaves the schema at the previous version.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

MIGRATIONS_LOCK = 7301000000000000  # pg_advisory_lock key, shared by every controller
_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    out: list[Migration] = []
    for entry in resources.files("flynn.controller").joinpath("migrations").iterdir():
        m = _NAME_RE.fullmatch(entry.name)
        if m is None:
            continue
        out.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    out.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in out]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {versions}")
    return out


async def migrate(url: str, *, connect_timeout: int = 5) -> list[int]:
    """Apply the missing migrations; returns the versions applied by this call."""
    applied_now: list[int] = []
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=connect_timeout)
    try:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATIONS_LOCK,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {int(row[0]) for row in await cur.fetchall()}
            for mig in available():
                if mig.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql.SQL(mig.sql))
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (mig.version, mig.name),
                    )
                log.info("applied migration %04d_%s", mig.version, mig.name)
                applied_now.append(mig.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATIONS_LOCK,))
    finally:
        await conn.close()
    return applied_now


async def current_version(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
        row = await cur.fetchone()
    return int(row[0]) if row else 0
