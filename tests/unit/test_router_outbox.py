"""Writes gathered per loop iteration (flynn.router.outbox.Outbox; UpstreamConn.write/flush/
close/abort): first against a recording transport, where "not sent yet" can be seen, then over
real sockets to a raw server. Whole requests through a router with gathered writes are in every
other router test (bodies, chunked, retries, tunnels, TLS); TLSConn's use of it in
test_router_tlsconn.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from flynn.router.backends import Backend
from flynn.router.proxy import ProxyContext
from flynn.router.routes import RouteTable
from flynn.router.upstream import UpstreamConn, connect
from tests.unit.router_helpers import LOCAL, on_uvloop, router_config


class Transport:
    """Records the calls an UpstreamConn makes on its transport, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", b""))

    def abort(self) -> None:
        self.calls.append(("abort", b""))

    def taken(self) -> list[tuple[str, bytes]]:
        out = list(self.calls)
        self.calls.clear()
        return out


def context() -> ProxyContext:
    return ProxyContext(RouteTable(), router_config(), asyncio.get_running_loop())


def attached(ctx: ProxyContext, backend: Backend) -> tuple[UpstreamConn, Transport]:
    conn = UpstreamConn(ctx, backend)
    transport = Transport()
    conn.connection_made(transport)
    return conn, transport


def two_attached(ctx: ProxyContext) -> tuple[tuple[UpstreamConn, Transport], ...]:
    backend = Backend("web", (LOCAL, 1))
    return attached(ctx, backend), attached(ctx, backend)


async def next_iteration() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


@on_uvloop
async def test_writes_wait_for_the_end_of_the_iteration_and_keep_their_order() -> None:
    ctx = context()
    (a, ta), (b, tb) = two_attached(ctx)
    a.write(b"GET /a HTTP/1.1\r\n")
    b.write(b"GET /b HTTP/1.1\r\n\r\n")
    a.write(b"Host: x\r\n\r\n")
    assert ta.calls == []
    assert tb.calls == []
    await next_iteration()
    # one write per connection, its pieces in the order written
    assert ta.taken() == [("write", b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")]
    assert tb.taken() == [("write", b"GET /b HTTP/1.1\r\n\r\n")]
    a.write(b"later")  # a new iteration gathers anew
    await next_iteration()
    assert ta.taken() == [("write", b"later")]
    assert ctx.outbox.conns == []


@on_uvloop
async def test_close_sends_what_was_written_first_abort_drops_it() -> None:
    ctx = context()
    (a, ta), (b, tb) = two_attached(ctx)
    a.write(b"request")
    a.close()
    assert ta.taken() == [("write", b"request"), ("close", b"")]
    b.write(b"request")
    b.abort()
    assert tb.taken() == [("abort", b"")]
    a.write(b"after close")
    b.write(b"after abort")
    await next_iteration()
    assert ta.calls == []
    assert tb.calls == []


@on_uvloop
async def test_a_connection_lost_before_the_send_gets_no_write() -> None:
    ctx = context()
    backend = Backend("web", (LOCAL, 1))
    a, ta = attached(ctx, backend)
    a.write(b"request")
    a.connection_lost(ConnectionResetError())
    await next_iteration()
    assert ta.calls == []


@on_uvloop
async def test_connections_are_flushed_in_the_order_they_queued() -> None:
    ctx = context()
    backend = Backend("web", (LOCAL, 1))
    order: list[bytes] = []
    conns = []
    for _ in range(3):
        conn = UpstreamConn(ctx, backend)
        transport = Transport()
        transport.write = order.append  # type: ignore[method-assign,assignment]
        conn.connection_made(transport)
        conns.append(conn)
    for i in (2, 0, 1):
        conns[i].write(b"%d" % i)
    assert order == []
    await asyncio.sleep(0)
    assert order == [b"2", b"0", b"1"]


class RawServer:
    """Records each connection's bytes until EOF."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.done = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.received.append(await reader.read())  # until EOF
        writer.close()
        self.done.set()


@contextlib.asynccontextmanager
async def raw_server() -> AsyncIterator[tuple[RawServer, int]]:
    server_state = RawServer()
    server = await asyncio.start_server(server_state.handle, LOCAL, 0)
    try:
        yield server_state, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@on_uvloop
async def test_over_a_real_socket_written_then_closed_arrives_whole() -> None:
    ctx = context()
    async with raw_server() as (server, port):
        conn = await connect(ctx, Backend("web", (LOCAL, port)))
        parts: list[Any] = [b"POST / HTTP/1.1\r\n", b"Content-Length: 5\r\n\r\n", b"hello"]
        for part in parts:
            conn.write(part)
        conn.close()  # in the same iteration as the writes
        async with asyncio.timeout(10):
            await server.done.wait()
    assert server.received == [b"".join(parts)]
