"""Shared pieces of the router tests: backends, a test CA, real clients, a running router.

Everything runs on 127.0.0.1 in the test's own event loop (uvloop, like the router in
production); clients are real programs (curl, openssl) run as asynchronous subprocesses, or raw
sockets where a test needs to send bytes no client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import hashlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec

import uvloop
from aiohttp import WSMsgType, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flynn.router.config import RouterConfig
from flynn.router.server import Router
from flynn.router.tls import CertStore

LOCAL = "127.0.0.1"
P = ParamSpec("P")


def on_uvloop(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test on its own uvloop event loop, as the router runs in production."""

    @functools.wraps(fn)
    def run_test(*args: P.args, **kwargs: P.kwargs) -> None:
        uvloop.run(fn(*args, **kwargs))

    return run_test


# --- certificates ------------------------------------------------------------------------------
@dataclass
class Cert:
    cert_pem: str
    key_pem: str


@dataclass
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: Path  # the CA certificate as a file, for curl --cacert / openssl -CAfile

    def issue(self, *names: str) -> Cert:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Cert(
            cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        )


def make_ca(directory: Path) -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flynn router test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CA(key, cert, path)


# --- backends ----------------------------------------------------------------------------------
@dataclass
class Backend:
    name: str
    port: int
    runner: web.AppRunner
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0

    @property
    def addr(self) -> str:
        return f"{LOCAL}:{self.port}"


def _backend_app(backend_ref: list[Backend]) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        b = backend_ref[0]
        b.in_flight += 1
        try:
            digest = hashlib.sha256()
            size = 0
            async for chunk in request.content.iter_any():
                digest.update(chunk)
                size += len(chunk)
            delay = float(request.query.get("sleep", "0"))
            if delay:
                await asyncio.sleep(delay)
            info = {
                "backend": b.name,
                "method": request.method,
                "path": request.path_qs,
                "version": f"{request.version.major}.{request.version.minor}",
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_len": size,
                "body_sha256": digest.hexdigest(),
            }
            b.requests.append(info)
            resp = web.json_response(info)
            if "hop" in request.query:  # hop-by-hop fields the router must not pass on
                resp.headers["Keep-Alive"] = "timeout=5"
                resp.headers["Proxy-Authenticate"] = "Basic"
                resp.headers["X-Kept"] = "yes"
            return resp
        finally:
            b.in_flight -= 1

    async def stream(request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "1000000"))
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = bytes(range(256)) * 256  # 64 KiB
        left = n
        while left > 0:
            await resp.write(block[: min(left, len(block))])
            left -= len(block)
        await resp.write_eof()
        return resp

    async def ws(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(f"{backend_ref[0].name}:{msg.data}")
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    app = web.Application(client_max_size=1 << 30)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def start_backend(name: str) -> Backend:
    ref: list[Backend] = []
    runner = web.AppRunner(_backend_app(ref), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOCAL, 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    ref.append(Backend(name, port, runner))
    return ref[0]


class TCPEcho:
    """A TCP backend that answers each line with ``name:line``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> TCPEcho:
        self.server = await asyncio.start_server(self._handle, LOCAL, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                writer.write(self.name.encode() + b":" + line)
                await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


# --- the router --------------------------------------------------------------------------------
def router_config(**overrides: Any) -> RouterConfig:
    settings: dict[str, Any] = {
        "listen_ip": LOCAL,
        "http_ports": (0,),
        "https_ports": (0,),
        "header_timeout": 1.0,
        "idle_timeout": 3.0,
        "body_timeout": 2.0,
        "tls_handshake_timeout": 2.0,
        "connect_timeout": 1.0,
        "reuse_port": False,
        "max_header_bytes": 8192,
        "max_headers": 50,
    }
    settings.update(overrides)
    return RouterConfig(**settings)


@contextlib.asynccontextmanager
async def running_router(
    config: RouterConfig | None = None, certs: CertStore | None = None
) -> AsyncIterator[Router]:
    router = Router(config=config or router_config(), certs=certs)
    await router.start()
    try:
        yield router
    finally:
        await router.stop()


@contextlib.asynccontextmanager
async def backends(*names: str) -> AsyncIterator[list[Backend]]:
    started = [await start_backend(n) for n in names]
    try:
        yield started
    finally:
        for b in started:
            await b.runner.cleanup()


# --- clients -----------------------------------------------------------------------------------
@dataclass
class Result:
    rc: int
    out: bytes
    err: bytes

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.out)


async def run(*argv: str, stdin: bytes | None = None, limit: float = 20.0) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out, err)


async def curl(*args: str, limit: float = 20.0) -> Result:
    return await run("curl", "-sS", "--max-time", str(int(limit)), *args, limit=limit + 5)


def url(router: Router, path: str = "/", *, tls: bool = False) -> str:
    if tls:
        return f"https://{LOCAL}:{router.https_ports[0]}{path}"
    return f"http://{LOCAL}:{router.http_ports[0]}{path}"


async def raw(port: int, data: bytes, *, wait: float = 3.0, ssl_ctx: ssl.SSLContext | None = None) -> bytes:
    """Send ``data`` on a new connection and return everything read until the peer closes
    (or ``wait`` seconds pass)."""
    reader, writer = await asyncio.open_connection(LOCAL, port, ssl=ssl_ctx)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            except ConnectionError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP response (0 when there is none)."""
    if not response.startswith(b"HTTP/1."):
        return 0
    return int(response.split(b" ", 2)[1])


async def wait_for(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def header(info: dict[str, Any], name: str) -> list[str]:
    """Values of header ``name`` a backend saw (from the echo JSON)."""
    return [v for k, v in info["headers"] if k.lower() == name.lower()]
