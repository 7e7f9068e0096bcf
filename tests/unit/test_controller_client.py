"""Mechanics of the controller clients (flynn.controller.client) against small local servers.

These fake the controller only where the mechanics are the point: TLS pinning (a real TLS server
with a self-signed certificate), the SSE event stream's resume across reconnects, error
messages, fail-over between controllers, and the attach WebSocket framing. The clients' use of
the real controller is tested through the CLI (tests/unit/test_cli_controller.py).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flynn.common.errors import APIError
from flynn.controller.client import (
    PIN_MISMATCH,
    AsyncClient,
    Client,
    SSEDecoder,
    TLSPinMismatch,
    cert_pin,
    parse_pin,
)

KEY = "s3cret-controller-key-0123456789"
FAKE_CA = "-----BEGIN CERTIFICATE-----\nMIIB (a stand-in)\n-----END CERTIFICATE-----\n"


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f":{key}".encode()).decode()


class Recorder:
    """What the fake server saw."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.ws_frames: list[tuple[str, bytes | str]] = []
        self.event_connections: list[str | None] = []


def make_app(rec: Recorder) -> web.Application:
    async def record(request: web.Request) -> None:
        rec.requests.append((request.method, request.path_qs, dict(request.headers)))

    async def apps(request: web.Request) -> web.Response:
        await record(request)
        if request.headers.get("Authorization") != _basic(KEY):
            return web.json_response({"error": "invalid or missing key", "code": 401}, status=401)
        return web.json_response([{"id": "a1", "name": "myapp"}])

    async def app(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"error": "app not found", "code": 404}, status=404)

    async def ca_cert(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text=FAKE_CA, content_type="application/x-pem-file")

    async def events(request: web.Request) -> web.StreamResponse:
        await record(request)
        last = request.headers.get("Last-Event-ID")
        rec.event_connections.append(last)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(eid: int) -> None:
            body = json.dumps({"id": eid, "object_type": "job", "object_id": f"j{eid}", "op": "update"})
            await resp.write(f"id: {eid}\nevent: job\ndata: {body}\n\n".encode())

        if last is None:
            await resp.write(b": keepalive\n\n")
            await send(1)
            await send(2)
            return resp  # closed mid-stream: the client must resume after 2
        try:
            await send(int(last))  # a repeat the client must drop
            await send(int(last) + 1)
            for _ in range(50):
                await resp.write(b": keepalive\n\n")
                await asyncio.sleep(0.1)
        except ConnectionError:
            pass  # the client went away
        return resp

    async def attach(request: web.Request) -> web.WebSocketResponse:
        await record(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(b"\x01hello ")
        await ws.send_bytes(b"\x02oops\n")
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                rec.ws_frames.append(("bin", bytes(msg.data)))
                await ws.send_bytes(b"\x01" + bytes(msg.data).upper())
            elif msg.type == WSMsgType.TEXT:
                rec.ws_frames.append(("text", msg.data))
                parsed = json.loads(msg.data)
                if parsed.get("eof"):
                    await ws.send_str(json.dumps({"exit": 3}))
                    await ws.close()
        return ws

    web_app = web.Application()
    web_app.router.add_get("/apps", apps)
    web_app.router.add_get("/apps/{app}", app)
    web_app.router.add_get("/events", events)
    web_app.router.add_get("/ca-cert", ca_cert)
    web_app.router.add_get("/apps/{app}/jobs/{job}/attach", attach)
    return web_app


class ThreadServer:
    """An aiohttp app on a real loopback port, served from a thread (for the sync client)."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.ssl_context = ssl_context
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            site = web.SockSite(self.runner, self.sock, ssl_context=ssl_context)
            self.loop.run_until_complete(site.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert started.wait(10)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def self_signed(tmp: Path, name: str) -> tuple[ssl.SSLContext, str]:
    """A server context with a fresh self-signed certificate for ``name``, and its TLS pin."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    der = cert.public_bytes(serialization.Encoding.DER)
    return ctx, base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def plain(rec: Recorder) -> Iterator[ThreadServer]:
    server = ThreadServer(make_app(rec))
    yield server
    server.stop()


@pytest.fixture
def tls(rec: Recorder, tmp_path: Path) -> Iterator[tuple[ThreadServer, str]]:
    ctx, pin = self_signed(tmp_path, "controller.example.com")
    server = ThreadServer(make_app(rec), ctx)
    yield server, pin
    server.stop()


def _other_pin() -> str:
    return cert_pin(b"some other certificate")


# -- pins ------------------------------------------------------------------------------------------


def test_parse_pin_accepts_flynn_form_and_rejects_others() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert parse_pin(base64.b64encode(digest).decode()) == digest
    with pytest.raises(ValueError, match="not base64"):
        parse_pin("not a pin!")
    with pytest.raises(ValueError, match="SHA-256"):
        parse_pin(base64.b64encode(b"short").decode())


def test_pin_needs_https() -> None:
    with pytest.raises(ValueError, match="https"):
        Client("http://127.0.0.1:1", KEY, tls_pin=_other_pin())


def test_sync_pinned_connection_skips_ca_and_hostname(tls: tuple[ThreadServer, str], rec: Recorder) -> None:
    server, pin = tls
    # the certificate is self-signed and names controller.example.com, yet 127.0.0.1 works: pinned
    assert [a["name"] for a in Client(server.url, KEY, tls_pin=pin).list_apps()] == ["myapp"]
    assert rec.requests[-1][2]["Authorization"] == _basic(KEY)


def test_sync_pin_mismatch_fails_before_sending_the_key(tls: tuple[ThreadServer, str], rec: Recorder) -> None:
    server, _ = tls
    with pytest.raises(TLSPinMismatch) as info:
        Client(server.url, KEY, tls_pin=_other_pin()).list_apps()
    assert PIN_MISMATCH in str(info.value)
    assert KEY not in str(info.value)
    assert rec.requests == []  # the handshake was cut before any request


def test_sync_unpinned_https_verifies_the_certificate(tls: tuple[ThreadServer, str], rec: Recorder) -> None:
    server, _ = tls
    with pytest.raises(APIError) as info:
        Client(server.url, KEY).list_apps()
    assert info.value.status == 0
    assert "certificate" in str(info.value).lower()
    assert rec.requests == []


async def test_async_pin_match_and_mismatch(tls: tuple[ThreadServer, str], rec: Recorder) -> None:
    server, pin = tls
    async with AsyncClient(server.url, KEY, tls_pin=pin) as client:
        assert [a["name"] for a in await client.list_apps()] == ["myapp"]
    seen = len(rec.requests)
    async with AsyncClient(server.url, KEY, tls_pin=_other_pin()) as client:
        with pytest.raises(TLSPinMismatch, match=PIN_MISMATCH):
            await client.list_apps()
    assert len(rec.requests) == seen


# -- errors ----------------------------------------------------------------------------------------


def test_sync_errors_carry_the_server_message(plain: ThreadServer) -> None:
    with pytest.raises(APIError) as info:
        Client(plain.url, "wrong-key").list_apps()
    assert (info.value.status, info.value.message) == (401, "invalid or missing key")
    with pytest.raises(APIError) as info:
        Client(plain.url, KEY).get_app("nope")
    assert (info.value.status, info.value.message) == (404, "app not found")


def test_sync_app_names_cannot_escape_their_path_segment(plain: ThreadServer, rec: Recorder) -> None:
    with pytest.raises(APIError):
        Client(plain.url, KEY).get_app("../apps?x=1")
    assert rec.requests[-1][1] == "/apps/..%2Fapps%3Fx%3D1"


def test_unreachable_is_status_zero_without_the_key() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(APIError) as info:
        Client(f"http://127.0.0.1:{port}", KEY, timeout=2).list_apps()
    assert info.value.status == 0
    assert "cannot reach" in info.value.message
    assert KEY not in str(info.value)


def test_credentials_in_url_refused() -> None:
    with pytest.raises(ValueError, match="credentials"):
        Client("http://user:pw@127.0.0.1:1", KEY)


async def test_async_fails_over_to_the_next_controller(plain: ThreadServer) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    async with AsyncClient([dead, plain.url], KEY, timeout=2) as client:
        assert (await client.list_apps())[0]["name"] == "myapp"
        assert client.url == plain.url
        with pytest.raises(APIError) as info:
            await client.get_app("nope")
        assert (info.value.status, info.value.message) == (404, "app not found")


async def test_async_unreachable_is_status_zero() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    async with AsyncClient(dead, KEY, timeout=2) as client:
        with pytest.raises(APIError) as info:
            await client.list_apps()
    assert info.value.status == 0


# -- events ----------------------------------------------------------------------------------------


def test_sse_decoder() -> None:
    dec = SSEDecoder()
    lines = [": keepalive", "", "id: 7", "event: job", 'data: {"a":', "data: 1}", ""]
    out = [m for m in (dec.feed(line) for line in lines) if m is not None]
    assert len(out) == 1
    assert (out[0].id, out[0].event, out[0].data) == ("7", "job", ['{"a":', "1}"])


def test_sync_stream_resumes_with_last_event_id(plain: ThreadServer, rec: Recorder) -> None:
    client = Client(plain.url, KEY)
    ids = []
    for event in client.stream_events(app_id="a1", object_types=["job"], deadline=time.monotonic() + 10):
        ids.append(event["id"])
        if len(ids) == 3:
            break
    assert ids == [1, 2, 3]  # 2 was sent twice (before and after the reconnect) and seen once
    assert rec.event_connections == [None, "2"]
    assert "object_types=job" in rec.requests[0][1]
    assert rec.requests[0][2]["Authorization"] == _basic(KEY)


def test_sync_stream_deadline(plain: ThreadServer) -> None:
    client = Client(plain.url, KEY)
    start = time.monotonic()
    seen: list[int] = []
    events = client.stream_events(deadline=time.monotonic() + 1.5)
    with pytest.raises(TimeoutError):
        seen.extend(event["id"] for event in events)
    assert seen == [1, 2, 3]
    assert time.monotonic() - start < 5


def test_sync_stream_error_status_is_raised(plain: ThreadServer) -> None:
    # a 4xx is an answer, not a lost connection: no reconnecting, the error is raised
    client = Client(plain.url + "/nothing-here", KEY)
    with pytest.raises(APIError) as info:
        next(iter(client.stream_events(deadline=time.monotonic() + 5)))
    assert info.value.status == 404


async def test_async_event_stream_resumes(plain: ThreadServer, rec: Recorder) -> None:
    async with AsyncClient(plain.url, KEY) as client:
        stream = client.events(object_types=["formation", "app_deletion"])
        ids = []
        async with asyncio.timeout(10):
            async for event in stream:
                ids.append(event["id"])
                if len(ids) == 3:
                    break
        assert ids == [1, 2, 3]
        assert stream.last_id == 3
        assert stream.reconnects == 1
    assert rec.event_connections == [None, "2"]
    assert "object_types=formation,app_deletion" in rec.requests[0][1]


# -- attach ----------------------------------------------------------------------------------------


async def test_attach_frames(plain: ThreadServer, rec: Recorder) -> None:
    async with AsyncClient(plain.url, KEY) as client:
        att = await client.attach("myapp", "host1-abc")
        out: list[tuple[int, bytes]] = []

        async def feed() -> None:
            await att.write(b"ping")
            await att.signal("SIGINT")
            await att.close_stdin()

        task = asyncio.create_task(feed())
        async with asyncio.timeout(10):
            async for chunk in att:
                out.append((chunk.stream, chunk.data))
        await task
        assert att.exit_status == 3
    assert out == [(1, b"hello "), (2, b"oops\n"), (1, b"PING")]
    assert rec.ws_frames == [("bin", b"ping"), ("text", '{"signal": "SIGINT"}'), ("text", '{"eof": true}')]
    assert rec.requests[-1][1] == "/apps/myapp/jobs/host1-abc/attach"
    assert rec.requests[-1][2]["Authorization"] == _basic(KEY)


async def test_attach_is_pinned_too(tls: tuple[ThreadServer, str], rec: Recorder) -> None:
    server, pin = tls
    async with AsyncClient(server.url, KEY, tls_pin=_other_pin()) as client:
        with pytest.raises(TLSPinMismatch, match=PIN_MISMATCH):
            await client.attach("myapp", "host1-abc")
    assert rec.requests == []
    async with AsyncClient(server.url, KEY, tls_pin=pin) as client:
        att = await client.attach("myapp", "host1-abc")
        await att.close_stdin()
        async with asyncio.timeout(10):
            chunks = [c async for c in att]
        assert att.exit_status == 3
    assert [c.stream for c in chunks] == [1, 2]
