"""The controller's versioned schema: ``migrations/NNNN_name.sql``, applied at start under an
advisory lock (controllers race at start, one per bootstrap host); see flynn.common.migrations."""

from __future__ import annotations

from flynn.common.migrations import Migration, Schema

MIGRATIONS_LOCK = 7301000000000000  # pg_advisory_lock key, shared by every controller
SCHEMA = Schema("flynn.controller", "migrations", MIGRATIONS_LOCK, what="controller")

__all__ = ["MIGRATIONS_LOCK", "SCHEMA", "Migration", "available", "current_version", "migrate"]


def available() -> list[Migration]:
    return SCHEMA.available()


async def migrate(url: str, *, connect_timeout: int = 5) -> list[int]:
    """Apply the missing migrations; returns the versions applied by this call."""
    return await SCHEMA.migrate(url, connect_timeout=connect_timeout)


async def current_version(url: str) -> int:
    return await SCHEMA.current_version(url)
