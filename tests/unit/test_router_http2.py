"""HTTP/2 through a running router, with real clients: the ``h2`` package (an independent
HTTP/2 implementation) over TLS, and nghttp2's h2load. The wire protocol itself is tested frame
by frame in test_router_h2wire.py; curl --http2 in test_router_tls.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

from flynn.router.server import Router
from tests.unit.router_helpers import CA, LOCAL, Backend, backends, make_ca, on_uvloop, run, running_router
from tests.unit.test_router_tls import tls_router_certs

HOST = "app.cluster.test"


class Response:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.reset: int | None = None
        self.done = asyncio.Event()

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def json(self) -> Any:
        return json.loads(bytes(self.body))


class Session:
    """One HTTP/2 connection to the router, driven by the h2 package."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, window: int) -> None:
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config)
        self.reader = reader
        self.writer = writer
        self.responses: dict[int, Response] = {}
        self.terminated: int | None = None
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.acks = True  # give back flow-control window as data arrives
        self.pump = asyncio.get_running_loop().create_task(self._read())
        self._send()

    def _send(self) -> None:
        self.writer.write(self.conn.data_to_send())

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            for event in self.conn.receive_data(data):
                self._event(event)
            self._send()
        self.terminated = self.terminated if self.terminated is not None else -1
        for r in self.responses.values():
            r.done.set()

    def _event(self, event: Any) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.responses[event.stream_id].headers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self.responses[event.stream_id].body += event.data
            if self.acks:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.responses[event.stream_id].done.set()
        elif isinstance(event, h2.events.StreamReset):
            self.responses[event.stream_id].reset = event.error_code
            self.responses[event.stream_id].done.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event.error_code

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":scheme", "https"), (":path", path), (":authority", HOST)]
        fields += extra or []
        self.responses[sid] = Response()
        self.conn.send_headers(sid, [(n.encode(), v.encode()) for n, v in fields], end_stream=body is None)
        if body is not None:
            asyncio.get_running_loop().create_task(self._upload(sid, body))
        self._send()
        return sid

    async def _upload(self, sid: int, body: bytes) -> None:
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                await asyncio.sleep(0.01)
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            self._send()
            await self.writer.drain()
        self.conn.end_stream(sid)
        self._send()

    async def get(self, sid: int) -> Response:
        r = self.responses[sid]
        await asyncio.wait_for(r.done.wait(), 20)
        return r

    async def close(self) -> None:
        self.pump.cancel()
        self.writer.close()


@asynccontextmanager
async def session(router: Router, ca: CA, window: int = 65535) -> AsyncIterator[Session]:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    ctx.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection(
        LOCAL, router.https_ports[0], ssl=ctx, server_hostname=HOST
    )
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
    s = Session(reader, writer, window)
    try:
        yield s
    finally:
        await s.close()


@asynccontextmanager
async def h2_router(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[Router, CA, list[Backend]]]:
    ca = make_ca(tmp_path)
    async with backends("b1", "b2") as bs, running_router(certs=tls_router_certs(ca)) as router:
        router.table.add_http_route(HOST, "web")
        router.table.set_backends("web", [b.addr for b in bs])
        yield router, ca, bs


@on_uvloop
async def test_many_concurrent_streams_and_uploads(tmp_path: Path) -> None:
    async with h2_router(tmp_path) as (router, ca, _), session(router, ca) as s:
        gets = {s.request(f"/get/{i}?q={i}", extra=[("x-n", str(i))]): i for i in range(60)}
        body = bytes(range(256)) * 1000  # 256 KB: several windows of the default 65,535
        up_len = s.request("/up", method="POST", body=body, extra=[("content-length", str(len(body)))])
        up_chunked = s.request("/up2", method="PUT", body=body)
        for sid, i in gets.items():
            r = await s.get(sid)
            assert r.status == 200
            info = r.json()
            assert info["path"] == f"/get/{i}?q={i}"
            assert [v for k, v in info["headers"] if k == "x-n"] == [str(i)]
            assert [v for k, v in info["headers"] if k == "X-Forwarded-Proto"] == ["https"]
        backends_seen = {(await s.get(sid)).json()["backend"] for sid in gets}
        assert backends_seen == {"b1", "b2"}
        for sid in (up_len, up_chunked):
            info = (await s.get(sid)).json()
            assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
            assert info["body_len"] == len(body)
        assert s.terminated is None


@on_uvloop
async def test_response_respects_a_small_client_window(tmp_path: Path) -> None:
    """The client allows 1,000 bytes per stream and gives them back as it reads: the h2 package
    raises if the router sends a byte more than allowed."""
    async with h2_router(tmp_path) as (router, ca, _), session(router, ca, window=1000) as s:
        n = 300_000
        sids = [s.request(f"/stream?n={n}") for _ in range(3)]
        for sid in sids:
            r = await s.get(sid)
            assert r.status == 200
            assert len(r.body) == n
            assert r.body[:256] == bytes(range(256))
        assert s.terminated is None


@on_uvloop
async def test_malformed_stream_is_reset_and_the_connection_goes_on(tmp_path: Path) -> None:
    async with h2_router(tmp_path) as (router, ca, _), session(router, ca) as s:
        bad = s.request("/bad", extra=[("Upper-Case", "x")])  # field names must be lower case
        smuggle = s.request("/bad2", extra=[("transfer-encoding", "chunked")])
        big = s.request("/big", extra=[(f"x-h{i}", "v" * 400) for i in range(30)])  # 12 KB > 8 KiB
        ok = s.request("/after")
        assert (await s.get(bad)).reset == 1  # PROTOCOL_ERROR
        assert (await s.get(smuggle)).reset == 1
        assert (await s.get(big)).status == 431
        r = await s.get(ok)
        assert r.status == 200
        assert r.json()["path"] == "/after"
        assert s.terminated is None
    assert router.status()["bad_requests"] >= 3


@on_uvloop
async def test_protocol_violation_ends_the_connection_not_the_router(tmp_path: Path) -> None:
    async with h2_router(tmp_path) as (router, ca, _):
        async with session(router, ca) as s:
            await s.get(s.request("/first"))
            # WINDOW_UPDATE with increment 0 on the connection: a connection error
            s.writer.write(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")
            await asyncio.wait_for(s.pump, 10)
            assert s.terminated == 1  # GOAWAY(PROTOCOL_ERROR), then the router closed
        async with session(router, ca) as s:
            assert (await s.get(s.request("/again"))).status == 200


@on_uvloop
async def test_h2load_many_streams(tmp_path: Path) -> None:
    async with h2_router(tmp_path) as (router, _ca, _):
        url = f"https://{LOCAL}:{router.https_ports[0]}/h2load"
        r = await run(
            "h2load", "-n", "3000", "-c", "4", "-m", "32", "-H", f":authority: {HOST}", url, limit=60
        )
        assert r.rc == 0, r.err
        assert re.search(r"requests: 3000 total, 3000 started, 3000 done, 3000 succeeded", r.text), r.text
        assert "Application protocol: h2" in r.text
        assert "status codes: 3000 2xx" in r.text
