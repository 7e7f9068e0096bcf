"""The PostgreSQL backend (the default): blobs as 1 MiB ``bytea`` chunks, one transaction per PUT.

Schema (``migrations/NNNN_name.sql``, applied at start under a session ``pg_advisory_lock`` so
instances starting together apply each migration once; recorded in ``blobstore_schema_migrations``):
``files(id, path unique, size, sha256, chunk_size, created_at, updated_at)`` and
``chunks(file_id, seq, data)``.

* **PUT** inserts a ``files`` row with no path, then the body chunk by chunk (the network read of
  the next chunk overlaps the INSERT of the previous one), then, under a transaction-scoped
  advisory lock on the path, marks the previous version deleted (``path`` NULL, ``deleted_at``
  set) and moves the path to the new row. All of it is one transaction: the new version appears
  at COMMIT, and an error (or a crash, or a client gone) rolls everything back. Two writers of one
  path serialize on the lock; the last to commit wins.
* **DELETE** only marks the version deleted, whatever its size.
* **The sweeper** (a task of every instance) removes the chunks of versions marked deleted, a
  few chunks per short transaction, claiming a version with ``FOR UPDATE SKIP LOCKED`` so
  instances never sweep the same one; woken when this instance marks something, and every
  ``sweep_interval`` seconds to pick up what other instances (or a crash) left. Its statements
  run under a ``statement_timeout`` (``sweep_timeout``), so a sweep that cannot finish fails and
  is tried again instead of stalling the sweeper for good.
* **GET** opens a ``REPEATABLE READ READ ONLY`` transaction: the ``files`` row and every chunk
  come from one snapshot, so a reader keeps the version it started with even when a writer
  replaces it meanwhile (MVCC keeps the deleted chunks for as long as the snapshot needs them).
  Chunks come through a server-side cursor, a few at a time, the next fetch overlapping the
  write of the current chunk to the client.

Memory per request is a few chunks (plus libpq's buffer for one row), whatever the blob's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from typing import Any, LiteralString

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from flynn.blobstore.backends.base import (
    Backend,
    BackendUnavailable,
    BlobCorrupt,
    BlobInfo,
    BlobNotFound,
    BlobReader,
)
from flynn.common.migrations import Migration, Schema

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
MIGRATIONS_LOCK = 7301000000000005  # session pg_advisory_lock key (the controller uses ...000)
PATH_LOCK_CLASS = 7305  # pg_advisory_xact_lock(class, hashtext(path)): one writer commits a path at a time
MIGRATIONS_TABLE = "blobstore_schema_migrations"
SWEEP_BATCH = 32  # chunks removed per sweeper transaction

# errors that mean "the database cannot be used right now" (answered 503, never 500)
UNAVAILABLE: tuple[type[BaseException], ...] = (psycopg.OperationalError, PoolTimeout)
Conn = psycopg.AsyncConnection[tuple[Any, ...]]


class SweepTimeout(RuntimeError):
    """A sweeper statement hit its statement_timeout (logged; the sweep is tried again later)."""


def connect_options(timeout: float) -> dict[str, Any]:
    """libpq options: bounded connects, and TCP keepalives so a vanished server is noticed."""
    return {
        "connect_timeout": max(1, int(timeout)),
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }


def _row(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    if row is None:
        raise RuntimeError("the statement returned no row")
    return row


def _info(row: Sequence[Any]) -> BlobInfo:
    return BlobInfo(
        path=str(row[0]), size=int(row[1]), sha256=str(row[2]), created_at=row[3], updated_at=row[4]
    )


# -- schema ----------------------------------------------------------------------------------------


SCHEMA = Schema(
    "flynn.blobstore.backends", "migrations", MIGRATIONS_LOCK, table=MIGRATIONS_TABLE, what="blobstore"
)


def available_migrations() -> list[Migration]:
    return SCHEMA.available()


async def migrate(url: str, *, connect_timeout: float = 5.0) -> list[int]:
    """Apply the missing migrations under the advisory lock; returns the versions applied now."""
    return await SCHEMA.migrate(url, **connect_options(connect_timeout))


# -- streaming helpers -----------------------------------------------------------------------------


async def rechunk(body: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Pieces of any size → pieces of exactly ``size`` bytes (the last one shorter, never empty)."""
    buf = bytearray()
    async for piece in body:
        buf += piece
        while len(buf) >= size:
            with memoryview(buf) as view:
                out = view[:size].tobytes()  # one copy (bytes(buf[:size]) would make two)
            del buf[:size]
            yield out
    if buf:
        yield bytes(buf)


async def _settle(task: asyncio.Task[Any] | None) -> None:
    """Finish (or, when we are being cancelled, cancel) an in-flight query before leaving."""
    if task is None or task.done():
        if task is not None and not task.cancelled():
            task.exception()  # retrieved: the caller's own exception is what matters
        return
    try:
        await asyncio.wait([task])
    except asyncio.CancelledError:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    if not task.cancelled():
        task.exception()


class PostgresReader(BlobReader):
    def __init__(self, conn: Conn, file_id: int, chunk_size: int, info: BlobInfo, prefetch: int) -> None:
        self._conn = conn
        self._file_id = file_id
        self._chunk_size = chunk_size
        self._prefetch = prefetch
        self.info = info

    async def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes | memoryview]:
        size = self.info.size
        end = size if end is None else min(end, size)
        if start >= end:
            return
        cs = self._chunk_size
        first, last = start // cs, (end - 1) // cs
        cur = self._conn.cursor("blob", binary=True)
        fetch: asyncio.Task[list[tuple[Any, ...]]] | None = None
        try:
            await cur.execute(
                "SELECT seq, data FROM chunks WHERE file_id = %s AND seq BETWEEN %s AND %s ORDER BY seq",
                (self._file_id, first, last),
            )
            expected = first
            loop = asyncio.get_running_loop()
            fetch = loop.create_task(cur.fetchmany(self._prefetch))
            while fetch is not None:
                rows = await fetch
                fetch = None
                if expected + len(rows) <= last and rows:
                    fetch = loop.create_task(cur.fetchmany(self._prefetch))  # overlaps the writes below
                for seq, data in rows:
                    if seq != expected or (seq < last and len(data) != cs):
                        raise BlobCorrupt(f"{self.info.path}: chunk {expected} is missing or short")
                    view = memoryview(data)
                    lo = start - seq * cs if seq == first else 0
                    hi = end - seq * cs if seq == last else len(data)
                    if hi > len(data):
                        raise BlobCorrupt(f"{self.info.path}: chunk {seq} is short")
                    expected += 1
                    yield view[lo:hi] if (lo, hi) != (0, len(data)) else data
            if expected != last + 1:
                raise BlobCorrupt(f"{self.info.path}: chunks {expected}-{last} are missing")
        except UNAVAILABLE as exc:
            raise BackendUnavailable(f"database unavailable: {type(exc).__name__}") from None
        finally:
            await _settle(fetch)
            with contextlib.suppress(Exception):
                await cur.close()


class PostgresBackend(Backend):
    kind = "postgres"

    def __init__(
        self,
        url: str,
        *,
        name: str = "postgres",
        pool_size: int = 20,
        timeout: float = 5.0,
        chunk_size: int = CHUNK_SIZE,
        prefetch: int = 1,
        sweep_interval: float = 30.0,
        sweep_timeout: float | None = None,
    ) -> None:
        super().__init__(name)
        self.url = url
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.prefetch = prefetch
        self.sweep_interval = sweep_interval
        # statement_timeout of the sweeper's statements (32 chunks take milliseconds)
        limit = sweep_timeout if sweep_timeout is not None else max(timeout, 1.0) * 6
        self._sweep_limit = f"{max(1, int(limit * 1000))}ms"
        self._sweep_wake = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self.sweep_passes = 0  # passes of the background sweeper so far (finished or failed)
        self.pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            kwargs={"autocommit": True, **connect_options(timeout)},
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=timeout,
            check=AsyncConnectionPool.check_connection,
            name=f"blobstore-{name}",
        )

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, *, wait: float = 0.0) -> None:
        """Apply the schema (retrying while the database cannot be reached) and open the pool."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        delay = 0.2
        while True:
            try:
                await migrate(self.url, connect_timeout=self.timeout)
                break
            except psycopg.OperationalError as exc:
                if loop.time() + delay > deadline:
                    raise BackendUnavailable(f"cannot reach the database: {_one_line(exc)}") from None
                log.warning("database not ready (%s); retrying", _one_line(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        await self.pool.open(wait=True, timeout=max(self.timeout, 1.0))
        self._sweeper = loop.create_task(self._sweep_loop(), name=f"blobstore-sweeper-{self.name}")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        try:
            async with self.pool.connection() as conn:
                yield conn
        except UNAVAILABLE as exc:
            raise BackendUnavailable(f"database unavailable: {type(exc).__name__}") from None

    async def _one(self, query: LiteralString, params: Sequence[Any]) -> tuple[Any, ...] | None:
        async with self._connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchone()

    # -- Backend ---------------------------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            await self._one("SELECT 1", ())
        except BackendUnavailable:
            return False
        return True

    async def put(self, path: str, body: AsyncIterable[bytes]) -> BlobInfo:
        hasher = hashlib.sha256()
        size = 0
        loop = asyncio.get_running_loop()
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO files (chunk_size) VALUES (%s) RETURNING id", (self.chunk_size,)
            )
            file_id = int(_row(await cur.fetchone())[0])
            insert: asyncio.Task[Any] | None = None
            try:
                seq = 0
                async for piece in rechunk(body, self.chunk_size):
                    hasher.update(piece)
                    size += len(piece)
                    if insert is not None:
                        await insert
                    # the INSERT runs while the next chunk is read from the client
                    insert = loop.create_task(
                        conn.execute(
                            "INSERT INTO chunks (file_id, seq, data) VALUES (%s, %s, %b)",
                            (file_id, seq, piece),
                        )
                    )
                    seq += 1
                if insert is not None:
                    await insert
            finally:
                await _settle(insert)
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (PATH_LOCK_CLASS, path))
            old = await _mark_deleted(conn, path)
            cur = await conn.execute(
                "UPDATE files SET path = %s, size = %s, sha256 = %s,"
                " created_at = coalesce(%s, clock_timestamp()), updated_at = clock_timestamp()"
                " WHERE id = %s RETURNING path, size, sha256, created_at, updated_at",
                (path, size, hasher.hexdigest(), old, file_id),
            )
            info = _info(_row(await cur.fetchone()))
        if old is not None:
            self._sweep_wake.set()
        return info

    @contextlib.asynccontextmanager
    async def open(self, path: str) -> AsyncIterator[BlobReader]:
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur = await conn.execute(
                "SELECT id, chunk_size, path, size, sha256, created_at, updated_at FROM files"
                " WHERE path = %s",
                (path,),
            )
            row = await cur.fetchone()
            if row is None:
                raise BlobNotFound(path)
            yield PostgresReader(conn, int(row[0]), int(row[1]), _info(row[2:]), self.prefetch)

    async def head(self, path: str) -> BlobInfo | None:
        row = await self._one(
            "SELECT path, size, sha256, created_at, updated_at FROM files WHERE path = %s", (path,)
        )
        return _info(row) if row else None

    async def delete(self, path: str) -> bool:
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (PATH_LOCK_CLASS, path))
            found = await _mark_deleted(conn, path) is not None
        if found:
            self._sweep_wake.set()
        return found

    # -- the sweeper -----------------------------------------------------------------------------

    async def sweep_once(self) -> int:
        """Remove up to SWEEP_BATCH chunks of one deleted version (or the emptied version itself).

        Returns how many rows went; 0 when nothing is left to sweep (or all of it is being swept
        by other instances right now).
        """
        async with self._connection() as conn, conn.transaction():
            try:
                return await self._sweep_batch(conn)
            except psycopg.errors.QueryCanceled:
                # (caught here: _connection() would report it as the database being unavailable)
                raise SweepTimeout(f"a sweeper statement ran over {self._sweep_limit}") from None

    async def _sweep_batch(self, conn: Conn) -> int:
        # bounded: a sweep that cannot finish fails (and is tried again later) instead of holding
        # its connection, and this instance's sweeper, forever
        await conn.execute("SELECT set_config('statement_timeout', %s, true)", (self._sweep_limit,))
        cur = await conn.execute(
            "SELECT id FROM files WHERE deleted_at IS NOT NULL ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
        )
        row = await cur.fetchone()
        if row is None:
            return 0
        file_id = int(row[0])
        cur = await conn.execute(
            "DELETE FROM chunks WHERE file_id = %s AND seq IN"
            " (SELECT seq FROM chunks WHERE file_id = %s ORDER BY seq LIMIT %s)",
            (file_id, file_id, SWEEP_BATCH),
        )
        if cur.rowcount > 0:
            return cur.rowcount
        await conn.execute("DELETE FROM files WHERE id = %s", (file_id,))
        return 1

    async def sweep(self) -> int:
        """Sweep until nothing is left; returns the rows removed."""
        total = 0
        while removed := await self.sweep_once():
            total += removed
        return total

    async def _sweep_loop(self) -> None:
        while True:
            self._sweep_wake.clear()
            try:
                removed = await self.sweep()
                if removed:
                    log.debug("swept %d rows of deleted blobs", removed)
            except BackendUnavailable as exc:
                log.debug("sweeper: %s", exc)
            except Exception:
                log.exception("sweeper failed; trying again later")
            self.sweep_passes += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.sweep_interval):
                    await self._sweep_wake.wait()

    async def list(self, prefix: str, *, after: str = "", limit: int = 1000) -> list[BlobInfo]:
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT path, size, sha256, created_at, updated_at FROM files"
                " WHERE path LIKE %s ESCAPE '\\' AND path > %s ORDER BY path LIMIT %s",
                (pattern, after, limit),
            )
            return [_info(row) for row in await cur.fetchall()]


async def _mark_deleted(conn: Conn, path: str) -> dt.datetime | None:
    """Mark the current version of ``path`` deleted; returns its created_at, None if there was none."""
    cur = await conn.execute(
        "UPDATE files SET path = NULL, deleted_at = clock_timestamp() WHERE path = %s RETURNING created_at",
        (path,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    created: dt.datetime = row[0]
    return created


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
