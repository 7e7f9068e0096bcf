"""Upgrade tunnels (WebSocket through the router, plain and TLS) and TCP routes."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from pathlib import Path

import aiohttp

from flynn.router.tls import CertStore
from tests.unit.router_helpers import (
    LOCAL,
    TCPEcho,
    backends,
    make_ca,
    on_uvloop,
    raw,
    running_router,
    status_of,
    url,
    wait_for,
)

HOST = "app.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


@on_uvloop
async def test_websocket_echo_through_the_router() -> None:
    async with backends("b1") as (b1,), running_router() as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr])
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(url(router, "/ws"), headers={"Host": HOST}) as ws,
        ):
            for i in range(5):
                await ws.send_str(f"hello {i}")
                assert (await ws.receive_str(timeout=5)) == f"b1:hello {i}"
            big = os.urandom(3 * 1024 * 1024)  # more than any socket buffer: flow control works
            await ws.send_bytes(big)
            assert (await ws.receive_bytes(timeout=10)) == big
            stats = router.status()
            assert stats["tunnels"] == 1
            assert stats["active_tunnels"] == 1
            assert stats["services"]["web"]["inflight"] == 1
        await wait_for(lambda: router.status()["active_tunnels"] == 0)
        assert router.status()["services"]["web"]["inflight"] == 0
        # the router still serves plain requests
        r = await raw(
            router.http_ports[0], f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        )
        assert status_of(r) == 200


@on_uvloop
async def test_websocket_over_tls(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    certs = CertStore()
    leaf = ca.issue(HOST)
    certs.set_default(leaf.cert_pem, leaf.key_pem)
    ctx = ssl.create_default_context(cafile=str(ca.path))
    async with backends("b1") as (b1,), running_router(certs=certs) as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr])
        connector = aiohttp.TCPConnector(ssl=ctx, resolver=_Resolve(router.https_ports[0]))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.ws_connect(f"wss://{HOST}:{router.https_ports[0]}/ws") as ws,
        ):
            await ws.send_str("over tls")
            assert (await ws.receive_str(timeout=5)) == "b1:over tls"


class _Resolve(aiohttp.abc.AbstractResolver):
    """Resolve every name to 127.0.0.1 (so the certificate's name can be used)."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def resolve(
        self, host: str, port: int = 0, family: int = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        return [
            {
                "hostname": host,
                "host": LOCAL,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


@on_uvloop
async def test_refused_upgrade_is_relayed_and_the_connection_closed() -> None:
    async with backends("b1") as (b1,), running_router() as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr])
        request = f"GET /plain HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n"
        answer = await raw(router.http_ports[0], request.encode(), wait=3)
        assert status_of(answer) == 200  # the echo backend ignores the upgrade
        assert b'"path": "/plain"' in answer
        assert b'["Upgrade", "foo"]' in answer  # the router passed the upgrade request on


@on_uvloop
async def test_drain_with_timeout_ends_a_websocket() -> None:
    async with backends("b1") as (b1,), running_router() as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b1.addr])
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(url(router, "/ws"), headers={"Host": HOST}) as ws,
        ):
            await ws.send_str("x")
            assert (await ws.receive_str(timeout=5)) == "b1:x"
            drained = router.table.drain("web", b1.addr, timeout=0.3)
            await asyncio.sleep(0.1)
            assert not drained.done()  # the tunnel is still in flight
            await asyncio.wait_for(drained, 5)
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


async def tcp_talk(port: int, lines: list[bytes]) -> list[bytes]:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    answers = []
    try:
        for line in lines:
            writer.write(line + b"\n")
            await writer.drain()
            answers.append((await asyncio.wait_for(reader.readline(), 5)).rstrip(b"\n"))
    finally:
        writer.close()
    return answers


@on_uvloop
async def test_tcp_route_splices_and_spreads_and_follows_the_table() -> None:
    echoes = [await TCPEcho(name).start() for name in ("t1", "t2")]
    port = free_port()
    try:
        async with running_router() as router:
            router.table.set_tcp_route(port, "db")
            router.table.set_backends("db", [f"{LOCAL}:{e.port}" for e in echoes])
            await router.settle()
            assert port in router.status()["listeners"]["tcp"]
            seen = set()
            for i in range(4):
                answers = await tcp_talk(port, [b"ping %d" % i, b"again"])
                name = answers[0].split(b":")[0]
                assert answers == [name + b":ping %d" % i, name + b":again"]
                seen.add(name)
            assert seen == {b"t1", b"t2"}
            # a dead backend is skipped
            router.table.set_backends("db", ["127.0.0.1:1", f"{LOCAL}:{echoes[0].port}"])
            for _ in range(3):
                assert await tcp_talk(port, [b"x"]) == [b"t1:x"]
            # a large transfer both ways keeps its bytes in order
            reader, writer = await asyncio.open_connection(LOCAL, port)
            payload = b"".join(b"%08d\n" % i for i in range(200_000))
            writer.write(payload)
            got = await asyncio.wait_for(reader.readexactly(len(payload) + 3 * 200_000), 20)
            assert got == b"".join(b"t1:%08d\n" % i for i in range(200_000))
            writer.close()
            # removing the route closes the port
            router.table.remove_route(f"tcp:{port}")
            await router.settle()
            await wait_for(lambda: port not in router.status()["listeners"]["tcp"])
            try:
                _r, w = await asyncio.open_connection(LOCAL, port)
            except ConnectionRefusedError:
                pass
            else:
                w.close()
                raise AssertionError("the port still accepts connections")
    finally:
        for e in echoes:
            await e.stop()
