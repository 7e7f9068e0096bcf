"""Bad input to the router: each gets a 4xx (or a closed connection) and the router keeps
serving normal requests afterwards. Raw sockets, since no real client sends these."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from flynn.router.server import Router
from flynn.router.tls import CertStore
from tests.unit.router_helpers import (
    LOCAL,
    backends,
    curl,
    make_ca,
    on_uvloop,
    raw,
    router_config,
    running_router,
    status_of,
    url,
)

HOST = "app.test"


@asynccontextmanager
async def proxied(**config: object) -> AsyncIterator[Router]:
    async with backends("b1") as (b1,), running_router(router_config(**config)) as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr])
        yield router


async def still_serves(router: Router) -> None:
    r = await curl("-H", f"Host: {HOST}", url(router, "/after"))
    assert r.rc == 0, r.err
    assert r.json()["path"] == "/after"


def req(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


BAD_REQUESTS = {
    "bad request line": (b"GARBAGE\r\n\r\n", 400),
    "bad method char": (req("G@T / HTTP/1.1", f"Host: {HOST}"), 400),
    "space in target": (req("GET /a b HTTP/1.1", f"Host: {HOST}"), 400),
    "http/0.9 style": (b"GET /\r\n\r\n", 400),
    "http/2.0 version": (req("GET / HTTP/2.0", f"Host: {HOST}"), 505),
    "missing host": (req("GET / HTTP/1.1"), 400),
    "two hosts": (req("GET / HTTP/1.1", f"Host: {HOST}", "Host: other.test"), 400),
    "content-length with transfer-encoding": (
        req(
            "POST / HTTP/1.1",
            f"Host: {HOST}",
            "Content-Length: 5",
            "Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
        400,
    ),
    "two differing content-lengths": (
        req("POST / HTTP/1.1", f"Host: {HOST}", "Content-Length: 3", "Content-Length: 5", body=b"abcde"),
        400,
    ),
    "content-length list": (
        req("POST / HTTP/1.1", f"Host: {HOST}", "Content-Length: 3, 3", body=b"abc"),
        400,
    ),
    "negative content-length": (req("POST / HTTP/1.1", f"Host: {HOST}", "Content-Length: -1"), 400),
    "invalid chunk size": (
        req(
            "POST / HTTP/1.1", f"Host: {HOST}", "Transfer-Encoding: chunked", body=b"zz\r\nhello\r\n0\r\n\r\n"
        ),
        400,
    ),
    "unknown transfer coding": (
        req("POST / HTTP/1.1", f"Host: {HOST}", "Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
        501,
    ),
    "obs-fold": (req("GET / HTTP/1.1", f"Host: {HOST}", "X-Folded: a", " b"), 400),
    "space before colon": (req("GET / HTTP/1.1", f"Host : {HOST}"), 400),
    "bare LF line ends": (f"GET / HTTP/1.1\nHost: {HOST}\n\n".encode(), 400),
    "NUL in header": (req("GET / HTTP/1.1", f"Host: {HOST}", "X-A: a\x00b"), 400),
    "huge header": (req("GET / HTTP/1.1", f"Host: {HOST}", "X-Big: " + "a" * 20000), 431),
    "too many headers": (req("GET / HTTP/1.1", f"Host: {HOST}", *[f"X-H{i}: v" for i in range(60)]), 431),
    "huge url": (req("GET /" + "u" * 10000 + " HTTP/1.1", f"Host: {HOST}"), 414),
    "bad host": (req("GET / HTTP/1.1", "Host: a/b"), 400),
    "connect method": (req("CONNECT example.com:443 HTTP/1.1", "Host: example.com:443"), 405),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
@on_uvloop
async def test_malformed_request_gets_4xx_and_close(name: str) -> None:
    data, expected = BAD_REQUESTS[name]
    async with proxied() as router:
        response = await raw(router.http_ports[0], data, wait=3.0)
        assert status_of(response) == expected, response[:200]
        assert b"Connection: close" in response
        assert router.status()["bad_requests"] == 1
        await still_serves(router)


@on_uvloop
async def test_endless_header_is_cut_off_without_buffering_it() -> None:
    """A header that never ends: the router answers 431 once the limit is passed, not later."""
    async with proxied() as router:
        reader, writer = await asyncio.open_connection(LOCAL, router.http_ports[0])
        writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Endless: ".encode())
        answer = b""
        for _ in range(200):
            try:
                writer.write(b"a" * 1024)
                await writer.drain()
            except ConnectionError:
                break
            if reader.at_eof() or len(reader._buffer) > 0:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.005)
        answer = await asyncio.wait_for(reader.read(), 3)
        writer.close()
        assert status_of(answer) == 431
        await still_serves(router)


async def read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    try:
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    except ConnectionError:
        pass
    return b"".join(chunks)


@on_uvloop
async def test_slowloris_headers_get_408_and_close() -> None:
    async with proxied(header_timeout=0.6) as router:
        reader, writer = await asyncio.open_connection(LOCAL, router.http_ports[0])
        received = asyncio.create_task(read_all(reader))
        started = time.monotonic()
        parts = [
            b"GET / HTTP/1.1\r\n",
            f"Host: {HOST}\r\n".encode(),
            b"X-A: 1\r\n",
            b"X-B: 2\r\n",
            b"X-C: 3\r\n",
        ]
        for part in parts:  # each piece within the idle window, the whole far beyond the limit
            if received.done():
                break
            try:
                writer.write(part)
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.3)
        answer = await asyncio.wait_for(received, 3)
        elapsed = time.monotonic() - started
        writer.close()
        assert status_of(answer) == 408
        assert elapsed < 2.5  # cut at the header deadline, not when the client gave up
        assert router.status()["timeouts"] == 1
        await still_serves(router)


@on_uvloop
async def test_idle_connection_is_closed_and_silent_one_too() -> None:
    async with proxied(header_timeout=0.5, idle_timeout=0.5) as router:
        # a connection that never says anything is closed at the header deadline, without answer
        silent = await raw(router.http_ports[0], b"", wait=3.0)
        assert silent == b""
        # after a complete request, keep-alive ends at the idle deadline
        reader, writer = await asyncio.open_connection(LOCAL, router.http_ports[0])
        writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert status_of(head) == 200
        started = time.monotonic()
        rest = await asyncio.wait_for(reader.read(), 3)  # body, then EOF when the router closes
        assert rest.endswith(b"}")
        assert 0.3 < time.monotonic() - started < 2.5
        writer.close()
        await still_serves(router)


@on_uvloop
async def test_slow_body_gets_408() -> None:
    async with proxied(body_timeout=0.5) as router:
        reader, writer = await asyncio.open_connection(LOCAL, router.http_ports[0])
        writer.write(f"POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\nabc".encode())
        answer = await asyncio.wait_for(reader.read(), 3)
        writer.close()
        assert status_of(answer) == 408
        await still_serves(router)


@on_uvloop
async def test_bad_pipelined_request_is_answered_after_the_good_one() -> None:
    async with proxied() as router:
        data = req("GET /good HTTP/1.1", f"Host: {HOST}") + b"NOT HTTP AT ALL\r\n\r\n"
        answer = await raw(router.http_ports[0], data)
        first, _, rest = answer.partition(b"\r\n\r\n")
        assert status_of(first) == 200
        assert b'"/good"' in rest
        assert b"HTTP/1.1 400 " in rest
        await still_serves(router)


@on_uvloop
async def test_tls_garbage_is_dropped_and_tls_still_works(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    ca = make_ca(tmp_path)
    certs = CertStore()
    leaf = ca.issue(HOST)
    certs.set_default(leaf.cert_pem, leaf.key_pem)
    async with backends("b1") as (b1,), running_router(certs=certs) as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr])
        port = router.https_ports[0]
        for garbage in (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            bytes(range(256)) * 4,
            b"\x16\x03\x01\xff\xff" + b"A" * 600,
        ):
            answer = await raw(port, garbage, wait=3.0)
            assert not answer.startswith(b"HTTP/"), answer[:100]
        # a client that connects and never handshakes is cut at the handshake timeout
        reader, writer = await asyncio.open_connection(LOCAL, port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        r = await curl(
            "--cacert", str(ca.path), "--resolve", f"{HOST}:{port}:{LOCAL}", f"https://{HOST}:{port}/ok"
        )
        assert r.rc == 0, r.err
        assert r.json()["path"] == "/ok"
        assert header_value(r.json(), "X-Forwarded-Proto") == "https"
        ctx = ssl.create_default_context(cafile=str(ca.path))
        answer = await raw(
            port, req("GET /raw HTTP/1.1", f"Host: {HOST}", "Connection: close"), ssl_ctx=ctx_for(ctx)
        )
        assert status_of(answer) == 200
        await still_serves(router)


def ctx_for(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.check_hostname = False
    return ctx


def header_value(info: dict[str, object], name: str) -> str:
    headers = info["headers"]
    assert isinstance(headers, list)
    values = [v for k, v in headers if k.lower() == name.lower()]
    return str(values[0]) if values else ""
