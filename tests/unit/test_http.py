import asyncio
import base64
import socket
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from flynn.common.errors import APIError
from flynn.common.http import Client
from flynn.common.web import error_middleware, read_json


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"got": await read_json(request, max_bytes=64)})


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("secret internals")


def make_app() -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app.router.add_put("/echo", echo)
    app.router.add_get("/boom", boom)
    return app


async def test_malformed_json_is_400(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(make_app())
    resp = await client.put("/echo", data=b"{oops", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["error"].startswith("malformed JSON")


async def test_oversize_body_is_413(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(make_app())
    resp = await client.put("/echo", json={"x": "y" * 100})
    assert resp.status == 413
    assert "error" in await resp.json()


async def test_wrong_content_type_is_415(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(make_app())
    resp = await client.put("/echo", data=b"{}", headers={"Content-Type": "image/png"})
    assert resp.status == 415


async def test_unhandled_error_is_500_without_internals(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(make_app())
    resp = await client.get("/boom")
    assert resp.status == 500
    assert await resp.json() == {"error": "internal error", "code": 500}


@pytest.fixture
def server_url() -> Iterator[str]:
    """The test app served on a real loopback port from a thread, for the synchronous client."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(make_app())
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.SockSite(runner, sock).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_client_round_trip(server_url: str) -> None:
    assert Client(server_url).put("/echo", {"a": 1}) == {"got": {"a": 1}}


def test_client_raises_server_message(server_url: str) -> None:
    with pytest.raises(APIError) as info:
        Client(server_url).get("/nope")
    assert info.value.status == 404
    with pytest.raises(APIError) as info:
        Client(server_url).put("/echo", {"x": "y" * 100})
    assert info.value.status == 413


def test_client_unreachable_is_status_0() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(APIError, match="cannot reach") as info:
        Client(f"http://127.0.0.1:{port}", timeout=2).get("/")
    assert info.value.status == 0


def test_client_rejects_non_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        Client("ftp://example")


def test_client_sends_basic_auth_with_key() -> None:
    client = Client("http://127.0.0.1:1", key="k3y")
    scheme, token = client._headers["Authorization"].split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token) == b":k3y"  # any user, the key as password (Flynn's scheme)
