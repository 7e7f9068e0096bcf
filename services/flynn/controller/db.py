"""PostgreSQL access: a psycopg 3 async connection pool, transactions that carry events, LISTEN.

Every write happens in :meth:`Database.transaction`; the events a write emits (``tx.emit``) are
inserted at the end of that same transaction, right before COMMIT, so an event exists exactly when
its change does. The events table's trigger hands out ids in commit order and notifies
``controller_events`` (see migrations/0001_initial.sql).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, LiteralString

import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from flynn.controller.errors import Unavailable

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "controller_events"
Row = dict[str, Any]
Conn = psycopg.AsyncConnection[DictRow]

# errors that mean "the database cannot be used right now" (answered 503, never 500)
UNAVAILABLE: tuple[type[BaseException], ...] = (psycopg.OperationalError, PoolTimeout)


def connect_options(timeout: float) -> dict[str, Any]:
    """libpq options: bounded connects, and TCP keepalives so a vanished server is noticed."""
    return {
        "connect_timeout": max(1, int(timeout)),
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }


def jsonb(value: Any) -> Jsonb:
    return Jsonb(value)


@dataclass
class PendingEvent:
    app_id: str | None
    object_type: str
    object_id: str
    op: str
    data: Any


@dataclass
class Tx:
    """One open transaction: queries, and the events it will insert before committing."""

    conn: Conn
    events: list[PendingEvent] = field(default_factory=list)
    event_ids: list[int] = field(default_factory=list)

    async def one(self, query: LiteralString, params: Sequence[Any] | None = None) -> Row | None:
        cur = await self.conn.execute(query, params)
        return await cur.fetchone()

    async def must(self, query: LiteralString, params: Sequence[Any] | None = None) -> Row:
        """A query that returns a row by construction (INSERT/UPDATE ... RETURNING of a known row)."""
        row = await self.one(query, params)
        if row is None:
            raise RuntimeError(f"no row from {query[:60]!r}")
        return row

    async def all(self, query: LiteralString, params: Sequence[Any] | None = None) -> list[Row]:
        cur = await self.conn.execute(query, params)
        return await cur.fetchall()

    async def run(self, query: LiteralString, params: Sequence[Any] | None = None) -> int:
        cur = await self.conn.execute(query, params)
        return cur.rowcount

    def emit(self, app_id: str | None, object_type: str, object_id: str, op: str, data: Any) -> None:
        self.events.append(PendingEvent(app_id, object_type, object_id, op, data))

    async def flush_events(self) -> None:
        for ev in self.events:
            row = await self.must(
                "INSERT INTO events (app_id, object_type, object_id, op, data)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (ev.app_id, ev.object_type, ev.object_id, ev.op, jsonb(ev.data)),
            )
            self.event_ids.append(int(row["id"]))
        self.events.clear()


class Database:
    def __init__(self, url: str, *, max_size: int = 10, timeout: float = 5.0, min_size: int = 1) -> None:
        self.url = url
        self.timeout = timeout
        self.pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            connection_class=psycopg.AsyncConnection[DictRow],
            kwargs={"row_factory": dict_row, "autocommit": True, **connect_options(timeout)},
            min_size=min(min_size, max_size),
            max_size=max_size,
            open=False,
            timeout=timeout,
            check=AsyncConnectionPool.check_connection,
            reconnect_timeout=timeout * 4,
            name="controller",
        )

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        async with self.pool.connection() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        """A connection for reads (autocommit: one round trip per query, no BEGIN/COMMIT)."""
        async with self.pool.connection() as conn:
            tx = Tx(conn)
            yield tx
            if tx.events:
                raise RuntimeError("events emitted outside a transaction")

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self.pool.connection() as conn, conn.transaction():
            tx = Tx(conn)
            yield tx
            await tx.flush_events()

    async def ping(self) -> bool:
        try:
            async with self.connection() as conn:
                await conn.execute("SELECT 1")
        except UNAVAILABLE:
            return False
        return True

    async def query(self, query: LiteralString, params: Sequence[Any] | None = None) -> list[Row]:
        """A read outside any explicit transaction (autocommitted by the pool)."""
        async with self.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def query_one(self, query: LiteralString, params: Sequence[Any] | None = None) -> Row | None:
        rows = await self.query(query, params)
        return rows[0] if rows else None

    async def listen(self, channel: str = EVENTS_CHANNEL, *, idle: float = 10.0) -> AsyncIterator[str]:
        """Payloads of NOTIFY on ``channel`` on a dedicated connection, until it breaks (raises).

        Yields ``""`` once listening and after every ``idle`` seconds without a notification (the
        connection is checked then), so the caller can re-read what it may have missed.
        """
        conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, **connect_options(self.timeout)
        )
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            while True:
                yield ""
                async for note in conn.notifies(timeout=idle):
                    yield note.payload
                await conn.execute("SELECT 1")
        finally:
            with contextlib.suppress(Exception):
                await conn.close()


def unavailable() -> Unavailable:
    return Unavailable("database unavailable")
