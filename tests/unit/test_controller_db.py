"""The database side: migrations raced by several controllers, and a database that goes away
(503 everywhere, the unit keeps running, the pool and LISTEN reconnect)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
import psycopg
import pytest

from flynn.common.errors import APIError
from flynn.controller.migrate import available, current_version, migrate
from tests.pg import PostgresServer

if TYPE_CHECKING:
    from tests.unit.controller_fixtures import Controllers

pytest_plugins = ("tests.unit.controller_fixtures",)


async def test_migrations_raced_apply_once(pg_server: PostgresServer) -> None:
    url = pg_server.create_database()
    results = await asyncio.gather(*(migrate(url) for _ in range(6)))
    versions = [m.version for m in available()]
    assert sorted(v for r in results for v in r) == versions  # each applied by exactly one
    assert sum(1 for r in results if r) == 1
    assert await current_version(url) == versions[-1]
    assert await migrate(url) == []
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in await cur.fetchall()] == versions


def test_two_controllers_start_together_on_a_fresh_database(
    controllers: Controllers, pg_server: PostgresServer
) -> None:
    url = pg_server.create_database()
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _i: controllers.start(db_url=url), range(2))
    assert a.controller.owner != b.controller.owner
    a.client().post("/apps", {"name": "shared"})
    assert b.client().get("/apps/shared")["name"] == "shared"


def test_database_outage_is_503_and_recovers(controllers: Controllers, pg_server: PostgresServer) -> None:
    handle = controllers.start(db_timeout=1.0)
    api = handle.client()
    api.post("/apps", {"name": "before"})
    dbname = handle.db_url.rsplit("/", 1)[1]
    with pg_server.superuser() as su:
        su.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
    pg_server.terminate_connections(dbname)
    try:
        t0 = time.monotonic()
        calls: list[Callable[[], object]] = [
            lambda: api.get("/apps"),
            lambda: api.post("/apps", {"name": "during"}),
            lambda: api.get("/events"),
        ]
        for call in calls:
            with pytest.raises(APIError) as info:
                call()
            assert info.value.status == 503
            assert info.value.message == "database unavailable"
        with pytest.raises(APIError) as info:
            api.get("/status")
        assert info.value.status == 503
        print(f"3 requests answered 503 in {time.monotonic() - t0:.1f}s during the outage")
    finally:
        with pg_server.superuser() as su:
            su.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
    handle.wait_for("recovery", lambda: _status_ok(handle), timeout=20)
    assert [a["name"] for a in api.get("/apps")] == ["before"]  # the failed create changed nothing
    handle.wait_for("LISTEN again", handle.controller.hub.listening.is_set, timeout=20)

    async def live_event() -> str:
        async with (
            aiohttp.ClientSession(headers=handle.auth_header()) as s,
            s.get(f"{handle.url}/events", headers={"Accept": "text/event-stream"}) as resp,
        ):
            await resp.content.readline()  # "retry:" then ": connected"
            await resp.content.readline()
            await asyncio.to_thread(api.post, "/apps", {"name": "after"})
            async with asyncio.timeout(10):
                async for raw in resp.content:
                    if raw.startswith(b"data: "):
                        return str(raw)
        return ""

    assert '"after"' in asyncio.run(live_event())


def _status_ok(handle: object) -> bool:
    try:
        return bool(handle.client().get("/status")["database"] == "ok")  # type: ignore[attr-defined]
    except APIError:
        return False
