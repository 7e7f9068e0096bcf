"""HTTP/1.1 proxying through a real router with curl and raw sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path

from flynn.router.config import RouterConfig
from tests.unit.router_helpers import (
    backends,
    curl,
    header,
    on_uvloop,
    raw,
    router_config,
    running_router,
    status_of,
    url,
    wait_for,
)

HOST = "app.test"


def _h(host: str = HOST) -> list[str]:
    return ["-H", f"Host: {host}"]


@on_uvloop
async def test_proxies_with_forwarding_headers_and_request_id() -> None:
    async with backends("b1") as (b1,), running_router() as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr])
        r = await curl(*_h(), "-H", "X-Forwarded-For: 203.0.113.9", url(router, "/hello?x=1"))
        assert r.rc == 0, r.err
        info = r.json()
        assert info["backend"] == "b1"
        assert info["path"] == "/hello?x=1"
        assert header(info, "X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
        assert header(info, "X-Forwarded-Proto") == ["http"]
        assert header(info, "X-Forwarded-Port") == [str(router.http_ports[0])]
        generated = header(info, "X-Request-Id")
        assert len(generated) == 1
        assert re.fullmatch(r"[0-9a-f]{32}", generated[0])
        # a client's own request id is kept; a second request gets a different generated one
        r = await curl(*_h(), "-H", "X-Request-Id: abc-123", url(router))
        assert header(r.json(), "X-Request-Id") == ["abc-123"]
        r = await curl(*_h(), url(router))
        assert header(r.json(), "X-Request-Id") != generated
        # the client cannot set X-Forwarded-Proto/Port itself
        r = await curl(*_h(), "-H", "X-Forwarded-Proto: https", url(router))
        assert header(r.json(), "X-Forwarded-Proto") == ["http"]


@on_uvloop
async def test_keep_alive_on_both_sides() -> None:
    async with backends("b1") as (b1,), running_router() as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr])
        r = await curl(*_h(), url(router, "/1"), url(router, "/2"), url(router, "/3"))
        assert r.rc == 0, r.err
        assert [json.loads(x)["path"] for x in r.text.replace("}{", "}\n{").splitlines()] == [
            "/1",
            "/2",
            "/3",
        ]
        stats = router.status()
        assert stats["connections"] == 1  # curl reused its connection
        assert stats["requests"] == 3
        assert stats["upstream_connections"] == 1  # and so did the router upstream


@on_uvloop
async def test_streams_large_bodies_both_ways(tmp_path: Path) -> None:
    body = bytes(range(256)) * (12 * 4096)  # 12 MiB
    src = tmp_path / "body"
    src.write_bytes(body)
    async with backends("b1") as (b1,), running_router() as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr])
        r = await curl(*_h(), "--data-binary", f"@{src}", url(router, "/upload"))
        assert r.rc == 0, r.err
        assert r.json()["body_len"] == len(body)
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        # chunked upload (no Content-Length): re-chunked upstream
        r = await curl(*_h(), "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{src}", url(router))
        assert r.rc == 0, r.err
        assert header(r.json(), "Transfer-Encoding") == ["chunked"]
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        # a chunked download of 20 MB arrives whole
        n = 20_000_000
        r = await curl(*_h(), "-D", str(tmp_path / "h"), url(router, f"/stream?n={n}"), limit=60)
        assert r.rc == 0, r.err
        assert len(r.out) == n
        assert r.out == (bytes(range(256)) * 256 * (n // 65536 + 1))[:n]
        assert "transfer-encoding: chunked" in (tmp_path / "h").read_text().lower()


@on_uvloop
async def test_expect_100_continue_is_relayed(tmp_path: Path) -> None:
    src = tmp_path / "body"
    src.write_bytes(b"x" * 100_000)
    async with backends("b1") as (b1,), running_router() as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr])
        # curl waits for "100 Continue" before sending a body this size when asked to
        r = await curl(
            *_h(), "-v", "-H", "Expect: 100-continue", "--expect100-timeout", "10",
            "--data-binary", f"@{src}", url(router, "/upload"),
        )  # fmt: skip
        assert r.rc == 0, r.err
        assert b"HTTP/1.1 100 Continue" in r.err
        assert r.json()["body_len"] == 100_000
        assert header(r.json(), "Expect") == ["100-continue"]


@on_uvloop
async def test_hop_by_hop_fields_are_stripped_both_ways() -> None:
    async with backends("b1") as (b1,), running_router() as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr])
        request = (
            f"GET /x?hop=1 HTTP/1.1\r\nHost: {HOST}\r\nConnection: keep-alive, X-Private\r\n"
            "Keep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\n"
            "X-Private: secret\r\nX-Public: fine\r\n\r\n"
        ).encode()
        response = await raw(router.http_ports[0], request, wait=1.0)
        assert status_of(response) == 200
        head, _, body = response.partition(b"\r\n\r\n")
        info = json.loads(body)
        seen = {k.lower() for k, _ in info["headers"]}
        assert "x-public" in seen
        assert not seen & {"keep-alive", "proxy-authorization", "te"}
        assert header(info, "Connection") in ([], ["keep-alive"])  # aiohttp's client-side default only
        lower = head.lower()
        assert b"x-kept: yes" in lower
        assert b"keep-alive:" not in lower
        assert b"proxy-authenticate" not in lower


@on_uvloop
async def test_no_route_404_no_backend_503_and_custom_page() -> None:
    async with running_router() as router:
        r = await curl(*_h("nothing.test"), "-w", "%{http_code}", "-o", "/dev/null", url(router))
        assert r.text == "404"
        router.table.add_http_route(HOST, "web")
        r = await curl(*_h(), "-w", "\n%{http_code}", url(router))
        assert r.text.endswith("503")
        assert "no backend" in r.text
    page = b"<html><body>be right back</body></html>"
    async with running_router(router_config(error_503_page=page)) as router:
        router.table.add_http_route(HOST, "web")
        r = await curl(*_h(), "-i", url(router))
        assert r.out.startswith(b"HTTP/1.1 503")
        assert r.out.endswith(page)
        assert b"content-type: text/html" in r.out.lower()


@on_uvloop
async def test_load_spreads_over_three_backends() -> None:
    async with backends("b1", "b2", "b3") as bs, running_router() as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b.addr for b in bs])
        for _ in range(30):
            r = await curl(*_h(), url(router))
            assert r.rc == 0
        assert [len(b.requests) for b in bs] == [10, 10, 10]


@on_uvloop
async def test_sticky_cookie_pins_a_client_to_one_backend(tmp_path: Path) -> None:
    jar = tmp_path / "jar"
    async with backends("b1", "b2", "b3") as bs, running_router() as router:
        router.table.add_http_route(HOST, "web", sticky=True)
        router.table.set_backends("web", [b.addr for b in bs])
        first = await curl(*_h(), "-c", str(jar), url(router))
        pinned = first.json()["backend"]
        assert "_backend" in jar.read_text()
        for _ in range(6):
            r = await curl(*_h(), "-b", str(jar), "-c", str(jar), url(router))
            assert r.json()["backend"] == pinned
        # without the cookie: round-robin again
        seen = {(await curl(*_h(), url(router))).json()["backend"] for _ in range(6)}
        assert seen == {"b1", "b2", "b3"}
        # the pinned backend goes away: the client moves and gets a new cookie
        router.table.set_backends("web", [b.addr for b in bs if b.name != pinned])
        r = await curl(*_h(), "-b", str(jar), "-c", str(jar), "-i", url(router))
        assert b"Set-Cookie: _backend=" in r.out
        moved = json.loads(r.out.partition(b"\r\n\r\n")[2])["backend"]
        assert moved != pinned
        r = await curl(*_h(), "-b", str(jar), url(router))
        assert r.json()["backend"] == moved


@on_uvloop
async def test_retry_on_a_dead_backend() -> None:
    async with backends("b1", "b2") as (b1, b2), running_router() as router:
        router.table.add_http_route(HOST, "web")
        dead = "127.0.0.1:1"  # nothing listens on port 1
        router.table.set_backends("web", [dead, b1.addr, b2.addr])
        for _ in range(9):
            r = await curl(*_h(), "-w", "\n%{http_code}", url(router))
            assert r.text.endswith("200"), r.text
        # POST too: nothing was sent to the dead backend, so it is safe to try another
        r = await curl(*_h(), "-d", "payload", "-w", "\n%{http_code}", url(router))
        assert r.text.endswith("200")
        assert router.status()["upstream_connect_errors"] >= 1
        assert router.status()["retries"] >= 1
        # all dead: 503
        router.table.set_backends("web", [dead, "127.0.0.1:2"])
        r = await curl(*_h(), "-w", "%{http_code}", "-o", "/dev/null", url(router))
        assert r.text == "503"


@on_uvloop
async def test_non_idempotent_request_is_not_retried_after_sending() -> None:
    """A backend that takes the request and closes without answering: GET is tried on another
    backend, POST gets 502 and reaches the first backend only once."""
    seen: list[bytes] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    bad = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with backends("good") as (good,), running_router() as router:
            router.table.add_http_route(HOST, "web")
            router.table.set_backends("web", [bad, good.addr])
            for _ in range(4):
                r = await curl(*_h(), "-w", "\n%{http_code}", url(router))
                assert r.text.endswith("200")
            gets_at_bad = len(seen)
            assert gets_at_bad >= 1
            codes = []
            for _ in range(4):
                r = await curl(*_h(), "-d", "x=1", "-w", "\n%{http_code}", "-o", "/dev/null", url(router))
                codes.append(r.text.strip())
            posts_at_bad = len(seen) - gets_at_bad
            assert codes.count("502") == posts_at_bad >= 1
            assert codes.count("200") == 4 - posts_at_bad
            assert len(good.requests) == 4 + 4 - posts_at_bad
    finally:
        server.close()


@on_uvloop
async def test_drain_lets_in_flight_finish_and_sends_nothing_new() -> None:
    async with backends("b1", "b2") as (b1, b2), running_router() as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr, b2.addr])
        slow = [asyncio.create_task(curl(*_h(), url(router, "/slow?sleep=1"))) for _ in range(4)]
        await wait_for(lambda: b1.in_flight == 2 and b2.in_flight == 2)
        drained = router.table.drain("web", b1.addr)
        await asyncio.sleep(0.1)
        assert not drained.done()
        before = len(b1.requests)
        for _ in range(4):
            r = await curl(*_h(), url(router))
            assert r.json()["backend"] == "b2"
        await asyncio.wait_for(drained, 5)
        results = await asyncio.gather(*slow)
        assert all(r.rc == 0 for r in results)
        assert sorted(r.json()["backend"] for r in results) == ["b1", "b1", "b2", "b2"]
        assert len(b1.requests) == before + 2  # only the two in flight when the drain began
        assert b1.in_flight == 0


@on_uvloop
async def test_path_routes_redirect_and_head() -> None:
    async with backends("root", "api") as (root, api), running_router() as router:
        router.table.add_http_route(HOST, "root-svc")
        router.table.add_http_route(HOST, "api-svc", path="/api")
        router.table.add_http_route("secure.test", "root-svc", https_redirect=True)
        router.table.set_backends("root-svc", [root.addr])
        router.table.set_backends("api-svc", [api.addr])
        assert (await curl(*_h(), url(router, "/api/users"))).json()["backend"] == "api"
        assert (await curl(*_h(), url(router, "/apiary"))).json()["backend"] == "root"
        r = await curl(*_h("secure.test:8080"), "-i", url(router, "/login?next=/"))
        assert r.out.startswith(b"HTTP/1.1 301")
        assert b"Location: https://secure.test/login?next=/" in r.out
        r = await curl(*_h("secure.test"), "-i", "-d", "x", url(router, "/form"))
        assert r.out.startswith(b"HTTP/1.1 308")
        # HEAD: headers only, the backend's Content-Length kept, and the connection stays usable
        r = await curl(*_h(), "-I", url(router, "/h"), "-I", url(router, "/h2"))
        assert r.rc == 0, r.err
        assert r.text.count("HTTP/1.1 200") == 2
        assert "Content-Length:" in r.text


@on_uvloop
async def test_pipelined_requests_are_answered_in_order() -> None:
    async with backends("b1") as (b1,), running_router() as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr])
        sleeps = ["0.15", "0.1", "0.05"]  # the first answer is the slowest: order must still hold
        reqs = b"".join(
            f"GET /p{i}?sleep={s} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode() for i, s in enumerate(sleeps)
        )
        reqs += f"GET /last HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        response = await raw(router.http_ports[0], reqs, wait=5.0)
        paths = re.findall(rb'"path": "([^"]+)"', response)
        assert paths == [b"/p0?sleep=0.15", b"/p1?sleep=0.1", b"/p2?sleep=0.05", b"/last"]
        assert response.count(b"HTTP/1.1 200 OK") == 4


@on_uvloop
async def test_http10_client_gets_close_delimited_or_keep_alive() -> None:
    async with backends("b1") as (b1,), running_router() as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr])
        response = await raw(router.http_ports[0], f"GET /s HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
        assert status_of(response) == 200
        assert b"Connection: close" in response
        # a streamed (chunked upstream) body goes to an HTTP/1.0 client unchunked, closed at the end
        response = await raw(
            router.http_ports[0], f"GET /stream?n=1000 HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode()
        )
        head, _, body = response.partition(b"\r\n\r\n")
        assert b"chunked" not in head.lower()
        assert len(body) == 1000


@on_uvloop
async def test_route_changes_take_effect_without_restart() -> None:
    async with backends("old", "new") as (old, new), running_router() as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [old.addr])
        assert (await curl(*_h(), url(router))).json()["backend"] == "old"
        router.table.set_backends("web", [new.addr])
        assert (await curl(*_h(), url(router))).json()["backend"] == "new"
        router.table.add_http_route(HOST, "other")
        router.table.set_backends("other", [old.addr])
        assert (await curl(*_h(), url(router))).json()["backend"] == "old"
        router.table.remove_route(f"http:{HOST}/")
        r = await curl(*_h(), "-w", "%{http_code}", "-o", "/dev/null", url(router))
        assert r.text == "404"


@on_uvloop
async def test_body_limit_413() -> None:
    config: RouterConfig = router_config(max_body_bytes=1000)
    async with backends("b1") as (b1,), running_router(config) as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr])
        r = await curl(*_h(), "-d", "x" * 2000, "-w", "%{http_code}", "-o", "/dev/null", url(router))
        assert r.text == "413"
        r = await curl(*_h(), "-d", "x" * 500, url(router))
        assert r.json()["body_len"] == 500
        assert b1.requests[-1]["body_len"] == 500
