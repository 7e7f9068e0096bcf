"""Events: SSE replay + live, resume by Last-Event-ID without gaps while writers commit concurrently,
and the ordering guarantee underneath (event ids are handed out in commit order)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import TYPE_CHECKING, Any

import aiohttp
import psycopg
import pytest

if TYPE_CHECKING:
    from tests.unit.controller_fixtures import ControllerHandle, Controllers

pytest_plugins = ("tests.unit.controller_fixtures",)


async def read_sse(
    resp: aiohttp.ClientResponse,
    *,
    stop_after: int | None = None,
    comments: list[str] | None = None,
    out: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Events of an SSE response until it ends or ``stop_after`` events were read (appended to
    ``out`` as they come, so a caller that times out keeps what was read)."""
    out = [] if out is None else out
    fields: dict[str, str] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            if comments is not None:
                comments.append(line)
            continue
        if line:
            name, _, value = line.partition(": ")
            fields[name] = value
            continue
        if "data" in fields:
            event = json.loads(fields["data"])
            assert fields["id"] == str(event["id"])
            assert fields["event"] == event["object_type"]
            out.append(event)
            if stop_after is not None and len(out) >= stop_after:
                return out
        fields = {}
    return out


def session(handle: ControllerHandle) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url=handle.url, headers=handle.auth_header())


SSE = {"Accept": "text/event-stream"}


async def test_sse_replays_then_follows_live(controller: ControllerHandle) -> None:
    api = controller.client()
    app = api.post("/apps", {"name": "live"})
    first = api.get("/events")[0]["id"]
    async with session(controller) as s:
        async with s.get("/events", headers={**SSE, "Last-Event-ID": "0"}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            replay = await read_sse(resp, stop_after=1)
            assert replay[0]["id"] == first
            assert replay[0]["object_type"] == "app"
            await asyncio.to_thread(api.put, "/apps/live/meta", {"k": "v"})
            live = await read_sse(resp, stop_after=1)
            assert live[0]["object_type"] == "app"
            assert live[0]["op"] == "update"
            assert live[0]["data"]["meta"] == {"k": "v"}
        # filters apply to replay and live alike; without an id, only new events come
        async with s.get(
            "/events", params={"object_types": "release", "app_id": app["id"]}, headers=SSE
        ) as resp:
            await asyncio.to_thread(api.put, "/apps/live/meta", {"k": "w"})  # not a release: filtered out
            rel = await asyncio.to_thread(controller.make_release, "live")
            got = await read_sse(resp, stop_after=1)
            assert [(e["object_type"], e["object_id"]) for e in got] == [("release", rel["id"])]
        async with s.get("/events", params={"past": "true", "count": "2"}, headers=SSE) as resp:
            past = await read_sse(resp, stop_after=2)
            newest = [e["id"] for e in api.get("/events", params={"count": "2"})]
            assert [e["id"] for e in past] == sorted(newest)  # oldest first
        async with s.get("/events", params={"since_id": str(first)}, headers=SSE) as resp:
            got = await read_sse(resp, stop_after=1)
            assert got[0]["id"] > first


async def test_sse_keepalive(controllers: Controllers) -> None:
    handle = controllers.start(keepalive=0.2)
    comments: list[str] = []
    async with session(handle) as s, s.get("/events", headers=SSE) as resp:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.7):
                await read_sse(resp, comments=comments)
    assert comments[0] == ": connected"
    assert comments.count(": keepalive") >= 2


async def test_sse_bad_parameters_are_400(controller: ControllerHandle) -> None:
    async with session(controller) as s:
        for params, headers in [
            ({"object_types": "nope"}, SSE),
            ({"count": "-3"}, SSE),
            ({}, {**SSE, "Last-Event-ID": "abc"}),
            ({}, {**SSE, "Last-Event-ID": "-1"}),
        ]:
            async with s.get("/events", params=params, headers=headers) as resp:
                assert resp.status == 400, (params, headers)
                assert (await resp.json())["code"] == 400


async def test_resume_without_gaps_under_concurrent_writes(controller: ControllerHandle) -> None:
    """Writers commit concurrently while a reader disconnects every few events and resumes with
    Last-Event-ID: the reader must see every event exactly once, in id order."""
    api = controller.client()
    names = [f"w{i}" for i in range(6)]
    for name in names:
        api.post("/apps", {"name": name})
    start = api.get("/events")[0]["id"]
    writes = 240
    rng = random.Random(7)

    async def writer(s: aiohttp.ClientSession, n: int) -> None:
        for i in range(n):
            name = rng.choice(names)
            async with s.put(f"/apps/{name}/meta", json={"i": str(i), "w": str(rng.random())}) as resp:
                assert resp.status == 200, await resp.text()

    seen: list[int] = []
    reconnects = 0

    async def reader(s: aiohttp.ClientSession, done: asyncio.Event) -> None:
        nonlocal reconnects
        last = start
        while True:
            batch: list[dict[str, Any]] = []
            finished = False
            async with s.get("/events", headers={**SSE, "Last-Event-ID": str(last)}) as resp:
                assert resp.status == 200
                try:
                    async with asyncio.timeout(1.0 if done.is_set() else 30):
                        await read_sse(resp, stop_after=rng.randint(1, 25), out=batch)
                except TimeoutError:
                    finished = done.is_set()  # writers are done and nothing more came
            seen.extend(e["id"] for e in batch)
            if batch:
                last = batch[-1]["id"]
            if finished:
                return
            reconnects += 1

    done = asyncio.Event()
    async with session(controller) as s:
        read_task = asyncio.create_task(reader(s, done))
        await asyncio.gather(*(writer(s, writes // 8) for _ in range(8)))
        done.set()
        await asyncio.wait_for(read_task, 60)
    expected = sorted(e["id"] for e in api.get("/events", params={"since_id": str(start), "count": "1000"}))
    assert len(expected) == writes
    assert seen == expected, (
        f"missing {sorted(set(expected) - set(seen))[:10]}, extra {len(seen) - len(set(seen))}"
    )
    assert reconnects > 10
    print(f"{len(seen)} events over {reconnects} SSE connections, none lost or repeated")


async def test_event_ids_are_handed_out_in_commit_order(controller: ControllerHandle) -> None:
    """An event written in an open transaction holds back every later event until it commits, so
    a reader that saw id N never misses an id < N committing later."""
    insert = "INSERT INTO events (app_id, object_type, object_id, op) VALUES (NULL, 'key', %s, 'create')"
    async with (
        await psycopg.AsyncConnection.connect(controller.db_url) as a,
        await psycopg.AsyncConnection.connect(controller.db_url, autocommit=True) as b,
    ):
        await a.execute(insert, ("x",))
        await b.execute("SET lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            await b.execute(insert, ("y",))
        await a.commit()
        await b.execute(insert, ("z",))
        cur = await b.execute("SELECT object_id FROM events WHERE object_type = 'key' ORDER BY id")
        assert [r[0] for r in await cur.fetchall()] == ["x", "z"]
