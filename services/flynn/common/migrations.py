"""Versioned SQL schemas, shared by the services that own a PostgreSQL database.

A service ships ``NNNN_name.sql`` files as package data and calls :func:`migrate` at start. Every
run holds a session-level ``pg_advisory_lock`` (one key per service), so of several instances
starting at once one applies what is missing while the others wait and then find nothing to do.
Each migration runs in its own transaction together with its row in the service's migrations
table, so a crash mid-way leaves the schema at the previous version.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True)
class Schema:
    """Where a service's migrations live and how their runs are recorded."""

    package: str  # e.g. "flynn.controller"
    directory: str  # inside the package, e.g. "migrations"
    lock_key: int  # pg_advisory_lock key, distinct per service
    table: str = "schema_migrations"
    what: str = "schema"  # for messages: "the controller's schema", ...

    def available(self) -> list[Migration]:
        out: list[Migration] = []
        for entry in resources.files(self.package).joinpath(self.directory).iterdir():
            m = _NAME_RE.fullmatch(entry.name)
            if m is not None:
                out.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
        if not out:
            raise RuntimeError(
                f"no {self.what} files ({self.package}/{self.directory}/*.sql) in this installation"
            )
        out.sort(key=lambda mig: mig.version)
        versions = [mig.version for mig in out]
        if len(set(versions)) != len(versions):
            raise RuntimeError(f"duplicate {self.what} migration versions in {versions}")
        return out

    async def migrate(self, url: str, **connect: Any) -> list[int]:
        """Apply the missing migrations; returns the versions applied by this call."""
        table = sql.Identifier(self.table)
        applied: list[int] = []
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, **connect)
        try:
            await conn.execute("SELECT pg_advisory_lock(%s)", (self.lock_key,))
            try:
                await conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, name text NOT NULL,"
                        " applied_at timestamptz NOT NULL DEFAULT now())"
                    ).format(table)
                )
                cur = await conn.execute(sql.SQL("SELECT version FROM {}").format(table))
                done = {int(row[0]) for row in await cur.fetchall()}
                for mig in self.available():
                    if mig.version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(sql.SQL(mig.sql))  # shipped files, not input
                        await conn.execute(
                            sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(table),
                            (mig.version, mig.name),
                        )
                    log.info("applied %s migration %04d_%s", self.what, mig.version, mig.name)
                    applied.append(mig.version)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (self.lock_key,))
        finally:
            await conn.close()
        return applied

    async def current_version(self, url: str) -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cur = await conn.execute(
                sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(sql.Identifier(self.table))
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0
