"""Request and response heads through a real router, byte for byte: which fields go on, which
are cut, how the body is framed. The upstream here is a raw socket server answering canned heads,
so the tests control spellings no HTTP library would produce (the router classifies fields by
their first letters and compares names without lower-casing them first, see upstream.py and
headers.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from flynn.router import upstream
from flynn.router.headers import RequestIds, field_class
from tests.unit.router_helpers import LOCAL, on_uvloop, raw, running_router, status_of

HOST = "heads.test"


class CannedBackend:
    """Answers every request head it reads with ``response`` (and closes after it when
    ``close``): the router sees exactly these bytes."""

    def __init__(self, response: bytes, close: bool = False) -> None:
        self.response = response
        self.close = close
        self.requests: list[bytes] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(self.response)
                await writer.drain()
                if self.close:
                    break
        writer.close()


@contextlib.asynccontextmanager
async def canned(response: bytes, close: bool = False) -> AsyncIterator[tuple[CannedBackend, int]]:
    backend = CannedBackend(response, close)
    server = await asyncio.start_server(backend.handle, LOCAL, 0)
    backend.port = server.sockets[0].getsockname()[1]
    async with running_router() as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [f"{LOCAL}:{backend.port}"])
        try:
            yield backend, router.http_ports[0]
        finally:
            server.close()
            await server.wait_closed()


def get(extra: str = "", version: str = "1.1") -> bytes:
    return f"GET / HTTP/{version}\r\nHost: {HOST}\r\n{extra}\r\n".encode()


def fields_of(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")[1:]


@on_uvloop
async def test_hop_by_hop_response_fields_are_cut_whatever_their_case() -> None:
    forwarded = [
        b"Server: canned",
        b"content-TYPE: text/plain",
        b"CONTENT-LENGTH: 5",
        b"Cache-Control: no-store",
        b"Connection-Id: 7",  # not Connection
        b"Keep-Me: 1",  # not Keep-Alive
        b"Proxy-Status: fine",  # not a proxy-* hop-by-hop field
        b"Tk: N",  # not TE
        b"Trailers-Policy: x",  # not Trailer
        b"Upgrade-Hint: none",  # not Upgrade
    ]
    cut = [
        b"CONNECTION: keep-alive",
        b"keep-alive: timeout=5",
        b"Proxy-Connection: keep-alive",
        b"PROXY-AUTHENTICATE: Basic",
        b"TE: trailers",
        b"trailer: X-Sum",
        b"connection: x-other",
    ]
    lines = [forwarded[0], cut[0], *forwarded[1:4], *cut[1:4], *forwarded[4:], *cut[4:]]
    head = b"\r\n".join([b"HTTP/1.1 200 OK", *lines]) + b"\r\n\r\n"
    async with canned(head + b"hello") as (_, port):
        response = await raw(port, get("Connection: close\r\n"))
    got_head, _, body = response.partition(b"\r\n\r\n")
    assert status_of(response) == 200
    assert body == b"hello"
    fields = fields_of(got_head)
    assert fields[: len(forwarded)] == forwarded  # in order, spelled as the backend spelled them
    assert fields[len(forwarded) :] == [b"Connection: close"]  # the router's own, nothing else


@on_uvloop
async def test_a_response_without_hop_by_hop_fields_goes_on_as_it_came() -> None:
    head = b"HTTP/1.1 201 Created\r\nServer: canned\r\nContent-Length: 2\r\nX-A: b\r\n\r\n"
    async with canned(head + b"ok") as (_, port):
        response = await raw(port, get("Connection: close\r\n"))
    assert response == (
        b"HTTP/1.1 201 Created\r\nServer: canned\r\nContent-Length: 2\r\nX-A: b\r\n"
        b"Connection: close\r\n\r\nok"
    )


@pytest.mark.parametrize(
    "te",
    [b"Transfer-Encoding: chunked", b"TRANSFER-ENCODING: Chunked", b"transfer-encoding:  chunked "],
)
@on_uvloop
async def test_a_chunked_response_in_any_spelling_is_relayed_chunked(te: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nServer: canned\r\n" + te + b"\r\n\r\n"
    async with canned(head + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n") as (_, port):
        response = await raw(port, get("Connection: close\r\n"))
    got_head, _, body = response.partition(b"\r\n\r\n")
    assert fields_of(got_head) == [b"Server: canned", b"Transfer-Encoding: chunked", b"Connection: close"]
    assert body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"


@on_uvloop
async def test_a_body_that_ends_with_the_connection_is_relayed_whole() -> None:
    # neither Content-Length nor Transfer-Encoding: the body is what comes until the backend closes
    async with canned(b"HTTP/1.1 200 OK\r\nServer: canned\r\n\r\nuntil the end", close=True) as (_, port):
        response = await raw(port, get("Connection: close\r\n"))
    got_head, _, body = response.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in fields_of(got_head)
    assert body == b"d\r\nuntil the end\r\n0\r\n\r\n"


@on_uvloop
async def test_interim_then_final_response_in_one_read() -> None:
    head = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with canned(head) as (_, port):
        response = await raw(port, get("Connection: close\r\n"))
    assert response.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert response.endswith(b"\r\n\r\nok")


@pytest.mark.parametrize("fields", [0, 1, 30, 31, 32, 33, 60])
@on_uvloop
async def test_heads_of_any_length_with_crlf_lines_in_the_body(fields: int) -> None:
    # the head is split in lines together with the start of the body, up to a bound: around it
    # and past it the head must end at its own empty line, not at one in the body
    names = [f"X-F{i}: {i}".encode() for i in range(fields)]
    lines = [*names[: fields // 2], b"Connection: keep-alive", *names[fields // 2 :]]
    body = b"\r\n".join([b"a", b"", b"", b"Connection: close", b""] * 10)
    head = b"\r\n".join([b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *lines]) + b"\r\n\r\n"
    async with canned(head + body) as (_, port):
        response = await raw(port, get("Connection: close\r\n"))
    got_head, _, got_body = response.partition(b"\r\n\r\n")
    assert fields_of(got_head) == [b"Content-Length: %d" % len(body), *names, b"Connection: close"]
    assert got_body == body


@on_uvloop
async def test_a_head_without_fields() -> None:
    async with canned(b"HTTP/1.1 204 No Content\r\n\r\n") as (_, port):
        response = await raw(port, get("Connection: close\r\n"))
    assert response == b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"


@on_uvloop
async def test_request_versions_and_keep_alive() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with canned(ok) as (backend, port):
        # HTTP/1.0 asking for keep-alive: answered keep-alive, the connection serves a second one
        two = get("Connection: keep-alive\r\n", "1.0") + get("Connection: close\r\n", "1.0")
        response = await raw(port, two)
        assert response.count(b"HTTP/1.1 200 OK") == 2
        assert b"Connection: keep-alive" in response.split(b"\r\n\r\n")[0]
        # HTTP/1.0 without it: closed after one answer, whatever follows is not read
        response = await raw(port, get(version="1.0") + get(version="1.0"))
        assert response.count(b"HTTP/1.1 200 OK") == 1
        assert b"Connection: close" in response
        # HTTP/2.0 with keep-alive (llhttp keeps it alive): still not a version the router speaks
        response = await raw(port, get("Connection: keep-alive\r\n", "2.0"))
        assert status_of(response) == 505
        # HTTP/1.1 with Connection: close is closed after its answer
        response = await raw(port, get("Connection: close\r\n") + get())
        assert response.count(b"HTTP/1.1 200 OK") == 1
        # upstream, every request is 1.1 with the router's own keep-alive (no Connection field)
        assert backend.requests
        assert all(r.startswith(b"GET / HTTP/1.1\r\n") for r in backend.requests)
        assert not any(b"\r\nconnection:" in r.lower() for r in backend.requests)


@on_uvloop
async def test_request_fields_are_classified_whatever_their_case() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with canned(ok) as (backend, port):
        response = await raw(port, f"GET / HTTP/1.1\r\nHost: {HOST}\r\nHOST: other.test\r\n\r\n".encode())
        assert status_of(response) == 400
        assert b"more than one Host" in response
        request = (
            f"GET / HTTP/1.1\r\nhOsT: {HOST}\r\nKEEP-ALIVE: 5\r\nX-Forwarded-PROTO: evil\r\n"
            "x-request-id: abc123\r\nUser-Agent: t\r\nX-Custom: 1\r\nconnection: close\r\n\r\n"
        ).encode()
        response = await raw(port, request)
        assert status_of(response) == 200
    forwarded = fields_of(backend.requests[-1].rstrip(b"\r\n"))
    assert forwarded[:3] == [f"hOsT: {HOST}".encode(), b"User-Agent: t", b"X-Custom: 1"]
    names = [f.split(b":")[0].lower() for f in forwarded]
    assert b"keep-alive" not in names
    assert b"connection" not in names
    assert forwarded.count(b"X-Forwarded-Proto: http") == 1
    assert b"X-Request-Id: abc123" in forwarded


def test_field_class_spellings() -> None:
    assert field_class(b"Host") == field_class(b"host") == field_class(b"HOST") != 0
    assert field_class(b"X-Request-ID") == field_class(b"x-request-id") == field_class(b"X-REQUEST-ID")
    assert field_class(b"Accept") == field_class(b"ACCEPT") == field_class(b"X-Anything") == 0


def test_request_ids_stay_unique_and_fixed_width_across_the_table_boundary() -> None:
    ids = RequestIds()
    seen = [ids.next() for _ in range(3 * 4096 + 5)]
    assert len(set(seen)) == len(seen)
    assert {len(i) for i in seen} == {32}
    assert len({i[:16] for i in seen}) == 1  # one random prefix per process
    assert [int(i[16:], 16) for i in seen] == list(range(1, len(seen) + 1))


def test_fields_to_pairs_cache_gives_each_line_its_own_pair() -> None:
    """Response heads split for HTTP/2 are cached, whole and by line: the same answers as
    splitting afresh, whatever came before, and the caches stay bounded."""
    upstream._PAIRS.clear()
    upstream._HEADS.clear()
    head = b"\r\nServer: nginx\r\nContent-Length: 44\r\nX-A:  spaced  \r\nX-Long: " + b"v" * 200
    want = ((b"server", b"nginx"), (b"content-length", b"44"), (b"x-a", b"spaced"), (b"x-long", b"v" * 200))
    assert upstream.fields_to_pairs(head) == want
    assert head in upstream._HEADS
    assert upstream.fields_to_pairs(head) == want  # from the cache now
    assert b"X-Long: " + b"v" * 200 not in upstream._PAIRS  # long lines are not kept
    # another head made of the same lines but one: the lines come from their cache
    other = head.replace(b"44", b"45")
    assert upstream.fields_to_pairs(other) == (want[0], (b"content-length", b"45"), *want[2:])
    for i in range(upstream.PAIRS_CACHED + 10):
        upstream.fields_to_pairs(b"\r\nX-N: %d" % i)
    assert len(upstream._PAIRS) <= upstream.PAIRS_CACHED
    assert len(upstream._HEADS) <= upstream.HEADS_CACHED
    assert upstream.fields_to_pairs(head) == want
    assert upstream.fields_to_pairs(b"\r\nX-Big: " + b"b" * 2000) == ((b"x-big", b"b" * 2000),)
    assert b"\r\nX-Big: " + b"b" * 2000 not in upstream._HEADS  # a long head is not kept
