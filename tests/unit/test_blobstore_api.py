"""The blobstore HTTP API on the PostgreSQL backend, against a real PostgreSQL 15 (tests/pg.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import psycopg
import pytest
import yarl
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flynn.blobstore.api import make_app, parse_range
from flynn.blobstore.backends.postgres import (
    PostgresBackend,
    SweepTimeout,
    available_migrations,
    migrate,
)
from flynn.blobstore.paths import InvalidPath, validate_path
from tests.pg import PostgresServer
from tests.unit.blobstore_pg import (
    count_rows,
    dbname,
    fresh_backend,
    open_reading_cursors,
    settled,
    wait_until,
    within,
    writing_sessions,
)

MiB = 1 << 20
Client = TestClient[web.Request, web.Application]


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer(role="blobstore") as server:
        yield server


@pytest.fixture
async def backend(pg: PostgresServer) -> AsyncIterator[PostgresBackend]:
    async with fresh_backend(pg) as b:
        yield b


async def serve(aiohttp_client: Any, backend: PostgresBackend, max_bytes: int = 1 << 30) -> Client:
    client: Client = await aiohttp_client(make_app(backend, max_bytes=max_bytes))
    return client


@pytest.fixture
async def client(aiohttp_client: Any, backend: PostgresBackend) -> Client:
    return await serve(aiohttp_client, backend)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def put(client: Client, path: str, data: bytes) -> dict[str, Any]:
    resp = await client.put(path, data=data)
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def get(client: Client, path: str, **headers: str) -> tuple[int, bytes, aiohttp.ClientResponse]:
    resp = await client.get(path, headers=headers)
    return resp.status, await resp.read(), resp


def raw_url(client: Client, raw_path: str) -> yarl.URL:
    """A URL sent exactly as written (no client-side normalization of ``..`` or escapes)."""
    return yarl.URL(f"http://{client.host}:{client.port}{raw_path}", encoded=True)


# -- the basics ------------------------------------------------------------------------------------


async def test_put_get_head_delete_roundtrip(
    client: Client, backend: PostgresBackend, pg: PostgresServer
) -> None:
    data = os.urandom(3 * MiB + 12345)  # several chunks, the last one short
    body = await put(client, "/slugs/app-1/r_1.tgz", data)
    assert body == {
        "path": "/slugs/app-1/r_1.tgz",
        "size": len(data),
        "sha256": sha(data),
        "etag": f'"{sha(data)}"',
    }
    status, got, resp = await get(client, "/slugs/app-1/r_1.tgz")
    assert status == 200
    assert got == data
    assert resp.headers["ETag"] == f'"{sha(data)}"'
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert re.match(r"^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$", resp.headers["Last-Modified"])
    assert count_rows(pg, backend.url) == (1, 4)

    head = await client.head("/slugs/app-1/r_1.tgz")
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["ETag"] == f'"{sha(data)}"'
    assert await head.read() == b""

    resp = await client.delete("/slugs/app-1/r_1.tgz")
    assert resp.status == 200
    assert await resp.json() == {"path": "/slugs/app-1/r_1.tgz"}
    await settled(pg, backend.url, (0, 0))
    for method in ("GET", "HEAD", "DELETE"):
        resp = await client.request(method, "/slugs/app-1/r_1.tgz")
        assert resp.status == 404
        if method != "HEAD":
            assert await resp.json() == {"error": "no blob at /slugs/app-1/r_1.tgz", "code": 404}


async def test_empty_blob_and_exact_chunk_multiple(
    client: Client, backend: PostgresBackend, pg: PostgresServer
) -> None:
    assert (await put(client, "/empty", b""))["size"] == 0
    assert (await get(client, "/empty"))[:2] == (200, b"")
    data = os.urandom(2 * MiB)
    await put(client, "/two", data)
    assert (await get(client, "/two"))[1] == data
    assert count_rows(pg, backend.url) == (2, 2)


async def test_chunked_upload_without_content_length(client: Client) -> None:
    data = os.urandom(MiB + 7)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 65537):
            yield data[i : i + 65537]

    resp = await client.put("/chunked/x", data=body())
    assert resp.status == 201
    assert (await resp.json())["sha256"] == sha(data)
    assert (await get(client, "/chunked/x"))[1] == data


async def test_replace_keeps_created_at_and_removes_old_chunks(
    client: Client, backend: PostgresBackend, pg: PostgresServer
) -> None:
    await put(client, "/r", os.urandom(3 * MiB))
    first = (await (await client.get("/", params={"prefix": "/r"})).json())[0]
    new = os.urandom(MiB + 1)
    await put(client, "/r", new)
    assert (await get(client, "/r"))[1] == new
    listed = (await (await client.get("/", params={"prefix": "/r"})).json())[0]
    assert listed["created_at"] == first["created_at"]
    assert listed["updated_at"] >= first["updated_at"]
    assert listed["sha256"] == sha(new)
    await settled(pg, backend.url, (1, 2))  # the old version's 3 chunks are gone


# -- Range, conditional requests ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-0", (0, 1)),
        ("bytes=0-", (0, 100)),
        ("bytes=10-19", (10, 20)),
        ("bytes=90-200", (90, 100)),
        ("bytes=-10", (90, 100)),
        ("bytes=-500", (0, 100)),
        ("bytes=5-2", None),  # invalid: ignored, the whole blob
        ("bytes=0-1,5-6", None),  # several ranges: ignored
        ("items=0-1", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.fixture
async def ranged(pg: PostgresServer, aiohttp_client: Any) -> AsyncIterator[tuple[Client, bytes]]:
    """A 50,000-byte blob on a backend with 4 KiB chunks: many chunk boundaries under the ranges."""
    data = os.urandom(50_000)
    async with fresh_backend(pg, chunk_size=4096) as small:
        client = await serve(aiohttp_client, small)
        await put(client, "/r/x", data)
        yield client, data


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 50_000 - 1), st.integers(0, 50_000 + 100))
async def test_any_range_returns_exactly_those_bytes(
    ranged: tuple[Client, bytes], start: int, last: int
) -> None:
    client, data = ranged
    resp = await client.get("/r/x", headers={"Range": f"bytes={start}-{last}"})
    body = await resp.read()
    if last < start:
        assert (resp.status, body) == (200, data)  # invalid range: ignored
        return
    assert resp.status == 206
    end = min(last, len(data) - 1)
    assert body == data[start : end + 1]
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
    assert resp.headers["Content-Length"] == str(end + 1 - start)
    assert resp.headers["ETag"] == f'"{sha(data)}"'


async def test_range_edges_and_if_range(ranged: tuple[Client, bytes]) -> None:
    client, data = ranged
    etag = f'"{sha(data)}"'
    for header, part in [
        ("bytes=4095-4096", data[4095:4097]),
        ("bytes=4096-8191", data[4096:8192]),
        ("bytes=-1", data[-1:]),
        ("bytes=-4097", data[-4097:]),
        ("bytes=49999-", data[-1:]),
        ("bytes=0-0", data[:1]),
        ("bytes=0-", data),
    ]:
        status, body, _ = await get(client, "/r/x", Range=header)
        assert (status, body) == (206, part), header

    resp = await client.get("/r/x", headers={"Range": "bytes=50000-"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */50000"
    assert (await resp.json())["code"] == 416
    resp = await client.get("/r/x", headers={"Range": "bytes=-0"})
    assert resp.status == 416

    # If-Range: the range only while the validator still names this version
    status, body, _ = await get(client, "/r/x", Range="bytes=0-9", **{"If-Range": etag})
    assert (status, body) == (206, data[:10])
    status, body, _ = await get(client, "/r/x", Range="bytes=0-9", **{"If-Range": '"stale"'})
    assert (status, body) == (200, data)


async def test_if_none_match(client: Client) -> None:
    data = b"hello blob"
    await put(client, "/c", data)
    etag = f'"{sha(data)}"'
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        status, body, resp = await get(client, "/c", **{"If-None-Match": header})
        assert (status, body) == (304, b""), header
        assert resp.headers["ETag"] == etag
        head = await client.head("/c", headers={"If-None-Match": header})
        assert head.status == 304
    status, body, _ = await get(client, "/c", **{"If-None-Match": '"other"'})
    assert (status, body) == (200, data)


# -- listing ---------------------------------------------------------------------------------------


async def test_listing_by_prefix(client: Client) -> None:
    for path in ["/slugs/a/1.tgz", "/slugs/a/2.tgz", "/slugs/ab/1.tgz", "/slugs/a_b/1.tgz", "/repos/a.tar"]:
        await put(client, path, path.encode())

    async def listing(**params: str) -> list[str]:
        resp = await client.get("/", params=params)
        assert resp.status == 200, await resp.text()
        items = await resp.json()
        for item in items:
            assert set(item) == {"path", "size", "sha256", "created_at", "updated_at"}
            assert item["size"] == len(item["path"])
            assert item["sha256"] == sha(item["path"].encode())
        return [item["path"] for item in items]

    everything = ["/repos/a.tar", "/slugs/a/1.tgz", "/slugs/a/2.tgz", "/slugs/a_b/1.tgz", "/slugs/ab/1.tgz"]
    assert await listing() == everything
    assert await listing(prefix="/") == everything
    assert await listing(prefix="/slugs/a/") == ["/slugs/a/1.tgz", "/slugs/a/2.tgz"]
    assert await listing(prefix="slugs/a") == [
        "/slugs/a/1.tgz",
        "/slugs/a/2.tgz",
        "/slugs/a_b/1.tgz",
        "/slugs/ab/1.tgz",
    ]
    assert await listing(prefix="/slugs/a_") == ["/slugs/a_b/1.tgz"]  # "_" is not a wildcard
    assert await listing(prefix="/nothing") == []
    assert await listing(limit="2") == everything[:2]
    assert await listing(limit="2", after=everything[1]) == everything[2:4]

    for params in ({"prefix": "/a%"}, {"prefix": "/a b"}, {"limit": "0"}, {"limit": "1001"}, {"limit": "x"}):
        resp = await client.get("/", params=params)
        assert resp.status == 400, params
        assert (await resp.json())["code"] == 400


async def test_listing_is_capped_at_1000(client: Client, backend: PostgresBackend) -> None:
    async with backend.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO files (path, size, sha256, chunk_size)"
            " SELECT '/many/' || lpad(i::text, 5, '0'), 0, repeat('0', 64), 1048576"
            " FROM generate_series(1, 1005) i"
        )
    resp = await client.get("/", params={"prefix": "/many/"})
    items = await resp.json()
    assert len(items) == 1000
    assert items[0]["path"] == "/many/00001"
    assert items[-1]["path"] == "/many/01000"


# -- bad input changes nothing --------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "/a/../b",
        "/a/./b",
        "/..",
        "/a//b",
        "/a/",
        "/a%00b",
        "/%C3%A9",
        "/a%2F..%2Fb",
        "/a%20b",
        "/a\\b",
        "/status",
    ],
)
async def test_bad_paths_are_400_and_change_nothing(
    client: Client, backend: PostgresBackend, pg: PostgresServer, raw: str
) -> None:
    await put(client, "/keep", b"kept")
    for method in ("PUT", "GET", "DELETE"):
        resp = await client.session.request(
            method, raw_url(client, raw), data=b"x" if method == "PUT" else None
        )
        if raw == "/status" and method == "GET":
            assert resp.status == 200  # the health check
            continue
        assert resp.status == 400, (method, raw, resp.status)
        body = await resp.json()
        assert body["code"] == resp.status
        assert isinstance(body["error"], str)
    assert count_rows(pg, backend.url) == (1, 1)
    assert (await get(client, "/keep"))[1] == b"kept"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.sampled_from(["a", "Z9", "_", "-", ".", "..", "/", "/", "%", " ", "é", "\x00", "\\", "?x", "#"]),
        min_size=1,
        max_size=12,
    ).map("".join)
)
async def test_fuzzed_paths_over_http(
    client: Client, backend: PostgresBackend, pg: PostgresServer, text: str
) -> None:
    """Whatever the path, either it is valid and round-trips, or it is refused and nothing is stored."""
    path = "/" + text
    wire = quote(path, safe="/")  # the server decodes this back to `path`
    resp = await client.session.put(raw_url(client, wire), data=b"payload")
    try:
        canonical = validate_path(path)
    except InvalidPath:
        assert resp.status == 400, (path, resp.status)
        assert (await resp.json())["code"] == 400
        assert count_rows(pg, backend.url) == (0, 0)
        return
    assert resp.status == 201, (path, await resp.text())
    assert (await resp.json())["path"] == canonical
    got = await client.session.get(raw_url(client, wire))
    assert await got.read() == b"payload"
    assert (await client.session.delete(raw_url(client, wire))).status == 200
    await settled(pg, backend.url, (0, 0))


async def test_size_limit_by_content_length_and_by_stream(
    aiohttp_client: Any, backend: PostgresBackend, pg: PostgresServer
) -> None:
    client = await serve(aiohttp_client, backend, max_bytes=2 * MiB)
    old = os.urandom(1000)
    await put(client, "/lim", old)
    resp = await client.put("/lim", data=os.urandom(2 * MiB + 1))
    assert resp.status == 413
    assert (await resp.json())["code"] == 413

    # a chunked body that grows past the limit: refused mid-stream, the old version stays
    reader, writer = await raw_request(
        client, "PUT /lim HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = os.urandom(MiB // 2)
    for _ in range(5):
        writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 30)
    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    writer.transport.abort()
    await wait_until(lambda: writing_sessions(pg, backend.url) == 0, "the refused upload to roll back")
    assert (await get(client, "/lim"))[1] == old
    assert count_rows(pg, backend.url) == (1, 1)


async def raw_request(client: Client, head: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head.encode())
    await writer.drain()
    return reader, writer


@pytest.mark.parametrize("body", [b"5\r\nhello\r\nzz\r\n", b"3\r\nabcdef\r\n0\r\n\r\n"])
async def test_malformed_chunked_body_is_400_and_stores_nothing(
    client: Client, backend: PostgresBackend, pg: PostgresServer, body: bytes
) -> None:
    await put(client, "/mc", b"old")
    reader, writer = await raw_request(
        client, "PUT /mc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    writer.write(body)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 30)
    assert status_line.split()[1] == b"400", status_line  # aiohttp's parser answers (text, not JSON)
    writer.close()
    await wait_until(lambda: writing_sessions(pg, backend.url) == 0, "the upload to roll back")
    assert count_rows(pg, backend.url) == (1, 1)
    assert (await get(client, "/mc"))[1] == b"old"


async def test_expect_100_continue(client: Client) -> None:
    reader, writer = await raw_request(
        client, "PUT /a/../b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    first = await reader.readline()
    assert first.startswith(b"HTTP/1.1 400"), first  # refused before the body is sent
    writer.close()
    reader, writer = await raw_request(
        client, f"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: {2 << 30}\r\nExpect: 100-continue\r\n\r\n"
    )
    first = await reader.readline()
    assert first.startswith(b"HTTP/1.1 413"), first
    writer.close()
    reader, writer = await raw_request(
        client, "PUT /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    assert (await reader.readline()).startswith(b"HTTP/1.1 100")
    assert await reader.readline() == b"\r\n"
    writer.write(b"hello")
    await writer.drain()
    final = await reader.readline()
    assert final.startswith(b"HTTP/1.1 201"), final
    writer.close()
    assert (await get(client, "/ok"))[1] == b"hello"


# -- interrupted writes, atomic replace, concurrency ----------------------------------------------


async def test_interrupted_put_leaves_nothing(
    client: Client, backend: PostgresBackend, pg: PostgresServer
) -> None:
    old = os.urandom(MiB + 5)
    await put(client, "/i/replace", old)
    for path in ("/i/new", "/i/replace"):
        _reader, writer = await raw_request(
            client, f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {8 * MiB}\r\n\r\n"
        )
        writer.write(os.urandom(3 * MiB))
        await writer.drain()
        # the server is inside its transaction and has written chunks by now
        await wait_until(lambda: writing_sessions(pg, backend.url) == 1, "the upload's transaction to write")
        writer.transport.abort()
        await wait_until(lambda: writing_sessions(pg, backend.url) == 0, "the upload to roll back")
        assert count_rows(pg, backend.url) == (1, 2)
    assert (await get(client, "/i/new"))[0] == 404
    assert (await get(client, "/i/replace"))[1] == old


class SlowBody:
    """A request body that sends ``head`` bytes, waits for ``release``, then sends the rest."""

    def __init__(self, data: bytes, head: int) -> None:
        self.data = data
        self.head = head
        self.release = asyncio.Event()
        self.sent_head = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, self.head, 256 * 1024):
            yield self.data[i : min(i + 256 * 1024, self.head)]
        self.sent_head.set()
        await self.release.wait()
        for i in range(self.head, len(self.data), 256 * 1024):
            yield self.data[i : i + 256 * 1024]


async def test_readers_during_a_replace_see_one_version_whole(
    client: Client, backend: PostgresBackend, pg: PostgresServer
) -> None:
    a, b = os.urandom(24 * MiB), os.urandom(24 * MiB + 3)
    versions = {sha(a): "a", sha(b): "b"}
    await put(client, "/v", a)

    body = SlowBody(b, 8 * MiB)
    writer = asyncio.create_task(client.put("/v", data=body.__aiter__()))
    await asyncio.wait_for(body.sent_head.wait(), 30)
    await wait_until(lambda: writing_sessions(pg, backend.url) == 1, "the replacing upload to write")

    # a reader that starts before the commit and finishes after it
    slow = await client.get("/v")
    assert slow.status == 200
    first = await slow.content.readexactly(MiB)

    seen: list[str] = []

    async def read_whole() -> None:
        status, data, _ = await get(client, "/v")
        assert status == 200
        seen.append(versions.get(sha(data), "torn"))

    await asyncio.gather(*(read_whole() for _ in range(3)))
    assert seen == ["a", "a", "a"]  # nothing of b is visible before its commit

    body.release.set()
    resp = await asyncio.wait_for(writer, 60)
    assert resp.status == 201
    # the slow reader's snapshot is still open: the new version committed under it
    assert open_reading_cursors(pg, backend.url) == 1
    rest = await slow.read()
    assert versions.get(sha(first + rest)) == "a"

    seen.clear()
    await asyncio.gather(*(read_whole() for _ in range(3)))
    assert seen == ["b", "b", "b"]
    await settled(pg, backend.url, (1, 25))


async def test_concurrent_readers_while_replacing_repeatedly(client: Client) -> None:
    blobs = [os.urandom(2 * MiB + i) for i in range(4)]
    shas = {sha(x) for x in blobs}
    await put(client, "/hot", blobs[0])
    done = asyncio.Event()
    results: list[str] = []

    async def reader() -> None:
        while not done.is_set():
            status, data, _ = await get(client, "/hot")
            assert status == 200
            results.append(sha(data))

    readers = [asyncio.create_task(reader()) for _ in range(3)]
    for blob in blobs[1:] * 2:
        await put(client, "/hot", blob)
    done.set()
    await asyncio.gather(*readers)
    assert results
    assert set(results) <= shas


async def test_two_writers_last_commit_wins(
    client: Client, backend: PostgresBackend, pg: PostgresServer
) -> None:
    x, y = os.urandom(3 * MiB), os.urandom(2 * MiB)
    bx, by = SlowBody(x, MiB), SlowBody(y, MiB)
    tx = asyncio.create_task(client.put("/w", data=bx.__aiter__()))
    ty = asyncio.create_task(client.put("/w", data=by.__aiter__()))
    await asyncio.wait_for(asyncio.gather(bx.sent_head.wait(), by.sent_head.wait()), 30)
    bx.release.set()
    assert (await tx).status == 201
    assert (await get(client, "/w"))[1] == x
    by.release.set()
    assert (await ty).status == 201
    assert (await get(client, "/w"))[1] == y
    await settled(pg, backend.url, (1, 2))


async def test_many_simultaneous_writers_of_one_path(
    client: Client, backend: PostgresBackend, pg: PostgresServer
) -> None:
    blobs = [os.urandom(MiB + 100 + i) for i in range(8)]
    bodies = [SlowBody(blob, MiB) for blob in blobs]
    tasks = [asyncio.create_task(client.put("/same", data=body.__aiter__())) for body in bodies]
    await asyncio.wait_for(asyncio.gather(*(body.sent_head.wait() for body in bodies)), 30)
    for body in bodies:  # every upload finishes at about the same moment
        body.release.set()
    statuses = [(await task).status for task in tasks]
    assert statuses == [201] * len(blobs)
    status, data, _ = await get(client, "/same")
    assert status == 200
    assert data in blobs
    await settled(pg, backend.url, (1, 2))


async def test_a_reader_keeps_a_deleted_blob_while_it_is_swept(
    client: Client, backend: PostgresBackend, pg: PostgresServer
) -> None:
    data = os.urandom(24 * MiB)
    await put(client, "/gone", data)
    slow = await client.get("/gone")
    first = await slow.content.readexactly(MiB)
    resp = await client.delete("/gone")
    assert resp.status == 200
    assert (await get(client, "/gone"))[0] == 404
    await settled(pg, backend.url, (0, 0))  # swept while the reader is still reading
    assert open_reading_cursors(pg, backend.url) == 1
    assert first + await slow.read() == data


async def test_versions_left_marked_are_swept_by_any_instance(
    backend: PostgresBackend, pg: PostgresServer
) -> None:
    async def body(n: int) -> AsyncIterator[bytes]:
        yield os.urandom(n)

    for i in range(3):
        await backend.put(f"/left/{i}", body(3 * MiB))
    # as if the instance that marked them had died before sweeping
    with pg.superuser(dbname(backend.url)) as conn:
        conn.execute("UPDATE files SET path = NULL, deleted_at = now()")
    others = [PostgresBackend(backend.url, pool_size=3, sweep_interval=3600) for _ in range(2)]
    for other in others:
        await within(other.start(), pg, backend.url, "starting another instance")
        # (each sweeps at start too; they all race over the same rows)
    try:
        sweeps = asyncio.gather(*(other.sweep() for other in others), backend.sweep())
        removed = await within(sweeps, pg, backend.url, "three instances sweeping")
        await settled(pg, backend.url, (0, 0))
        assert sum(removed) <= 3 * 3 + 3  # SKIP LOCKED: no row is counted twice
    finally:
        for other in others:
            await other.stop()


async def test_a_sweep_blocked_on_a_lock_times_out_and_the_next_one_finishes(
    pg: PostgresServer,
) -> None:
    async with fresh_backend(pg, sweep_interval=3600, sweep_timeout=0.5) as b:
        await b.put("/stuck", _one_piece(b"x" * 10))
        await wait_until(lambda: b.sweep_passes > 0, "the background sweeper's first pass")
        with pg.superuser(dbname(b.url)) as locker:
            # marked deleted behind the back of b's own sweeper task (which would wake up and
            # claim the version for itself), and its chunk held by another session
            locker.execute("UPDATE files SET path = NULL, deleted_at = now()")
            with locker.transaction():
                locker.execute("SELECT 1 FROM chunks FOR UPDATE")
                with pytest.raises(SweepTimeout, match="ran over 500ms"):
                    await within(b.sweep(), pg, b.url, "a sweep that should time out", timeout=20)
        # the lock went with its transaction: this sweep removes the chunk and the version
        assert await within(b.sweep(), pg, b.url, "the next sweep", timeout=20) == 2
        await settled(pg, b.url, (0, 0))


async def _one_piece(data: bytes) -> AsyncIterator[bytes]:
    yield data


# -- the database going away ----------------------------------------------------------------------


async def test_database_unavailable_is_503_and_recovers(pg: PostgresServer, aiohttp_client: Any) -> None:
    async with fresh_backend(pg, timeout=1.0) as b:
        client = await serve(aiohttp_client, b)
        await put(client, "/d", b"data")
        name = dbname(b.url)
        with pg.superuser() as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        pg.terminate_connections(name)
        try:
            resp = await client.get("/status")
            assert resp.status == 503
            assert (await resp.json())["status"] == "unhealthy"
            for method, path in (
                ("GET", "/d"),
                ("HEAD", "/d"),
                ("PUT", "/d"),
                ("DELETE", "/d"),
                ("GET", "/"),
            ):
                resp = await client.request(method, path, data=b"new" if method == "PUT" else None)
                assert resp.status == 503, (method, path)
                if method != "HEAD":
                    assert (await resp.json())["code"] == 503
        finally:
            with pg.superuser() as conn:
                conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

        async def healthy() -> bool:
            return (await client.get("/status")).status == 200

        await wait_until(healthy, "the blobstore to reach the database again")
        assert (await get(client, "/d"))[1] == b"data"  # nothing changed by the failed PUT/DELETE


async def test_database_lost_mid_get_aborts_the_connection(
    client: Client, backend: PostgresBackend, pg: PostgresServer
) -> None:
    data = os.urandom(24 * MiB)
    await put(client, "/m", data)
    resp = await client.get("/m")
    assert resp.status == 200
    got = await resp.content.readexactly(MiB)
    assert pg.terminate_connections(dbname(backend.url)) >= 1
    with pytest.raises(aiohttp.ClientPayloadError):
        # a short body, never an error document appended to the blob's bytes
        got += await resp.read()
    assert data.startswith(got)
    assert (await get(client, "/m"))[1] == data  # the next request gets a fresh connection


async def test_status_healthy(client: Client) -> None:
    resp = await client.get("/status")
    assert resp.status == 200
    assert await resp.json() == {"status": "healthy", "backend": "postgres", "name": "postgres"}


async def test_wrong_method_is_json_405(client: Client) -> None:
    resp = await client.post("/x", data=b"\xff")
    assert resp.status == 405
    assert (await resp.json())["code"] == 405


# -- schema ----------------------------------------------------------------------------------------


async def test_migrations_apply_once_under_the_lock(pg: PostgresServer) -> None:
    url = pg.create_database()
    results = await asyncio.gather(*(migrate(url) for _ in range(4)))
    versions = [m.version for m in available_migrations()]
    assert sorted(v for r in results for v in r) == versions  # each applied by exactly one caller
    assert await migrate(url) == []
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT version FROM blobstore_schema_migrations ORDER BY version")
        assert [row[0] for row in await cur.fetchall()] == versions
        cur = await conn.execute(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = 'chunks'::regclass AND attname = 'data'"
        )
        assert (await cur.fetchone()) == ("e",)  # external: out of line, uncompressed
