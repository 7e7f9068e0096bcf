"""``flynn run`` attached: the real ``flynn`` command against a small fake attach server.

A run needs a host to run the job, so the end-to-end test on real hosts is in
tests/integration/test_apps.py. Here a fake controller answers the two requests ``flynn run``
makes (``POST /apps/:app/jobs``, then the attach WebSocket) and plays the job with the framing of
docs/host.md, so stdin/stdout/stderr streaming, the exit code and Ctrl-C forwarding are checked
through the real command line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from flynn.cli.rcfile import Cluster, RcFile
from flynn.cli.run import stream_job
from flynn.controller.client import AsyncClient
from tests.unit.test_controller_client import ThreadServer

KEY = "run-test-key-0123456789"
FLYNN = Path(sys.executable).with_name("flynn")


class FakeController:
    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.frames: list[Any] = []
        self.auth: list[str | None] = []

    def app(self) -> web.Application:
        async def get_app(request: web.Request) -> web.Response:
            self.auth.append(request.headers.get("Authorization"))
            name = request.match_info["app"]
            return web.json_response({"id": f"id-of-{name}", "name": name, "strategy": "all-at-once"})

        async def run_job(request: web.Request) -> web.Response:
            body = await request.json()
            job_id = f"host1-{len(self.jobs):08d}"
            self.jobs[job_id] = body
            return web.json_response({"id": job_id, "state": "starting", **body}, status=201)

        async def attach(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            args = self.jobs[request.match_info["job"]]["args"]
            await PLAYS[args[0]](self, ws, args)
            await ws.close()
            return ws

        app = web.Application()
        app.router.add_get("/apps/{app}", get_app)
        app.router.add_post("/apps/{app}/jobs", run_job)
        app.router.add_get("/apps/{app}/jobs/{job}/attach", attach)
        return app


async def play_upper(fake: FakeController, ws: web.WebSocketResponse, args: list[str]) -> None:
    """Echo stdin upper-cased until EOF, then a line on stderr and exit 7."""
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            fake.frames.append(bytes(msg.data))
            await ws.send_bytes(b"\x01" + bytes(msg.data).upper())
        elif msg.type == WSMsgType.TEXT:
            fake.frames.append(json.loads(msg.data))
            if json.loads(msg.data).get("eof"):
                break
    await ws.send_bytes(b"\x02bye\n")
    await ws.send_str(json.dumps({"exit": 7}))


async def play_signal(fake: FakeController, ws: web.WebSocketResponse, args: list[str]) -> None:
    """Say ready, then wait for a signal and exit as a shell would on it."""
    await ws.send_bytes(b"\x01ready\n")
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            parsed = json.loads(msg.data)
            fake.frames.append(parsed)
            if "signal" in parsed:
                await ws.send_bytes(f"\x01got {parsed['signal']}\n".encode())
                await ws.send_str(json.dumps({"exit": 130}))
                return


async def play_vanish(fake: FakeController, ws: web.WebSocketResponse, args: list[str]) -> None:
    """Some output, then the connection ends without an exit status."""
    await ws.send_bytes(b"\x01partial\n")


PLAYS = {"upper": play_upper, "wait-signal": play_signal, "vanish": play_vanish}


@pytest.fixture
def fake() -> Iterator[tuple[FakeController, ThreadServer]]:
    controller = FakeController()
    server = ThreadServer(controller.app())
    yield controller, server
    server.stop()


@pytest.fixture
def rc(tmp_path: Path, fake: tuple[FakeController, ThreadServer]) -> Path:
    path = tmp_path / "flynnrc"
    rcfile = RcFile(path, default="test")
    rcfile.add(Cluster("test", KEY, fake[1].url))
    rcfile.save()
    return path


def flynn(
    rc: Path, *args: str, stdin: bytes = b"", timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "FLYNNRC": str(rc)}
    env.pop("FLYNN_APP", None)
    return subprocess.run(
        [str(FLYNN), *args], input=stdin, capture_output=True, env=env, timeout=timeout, check=False, cwd="/"
    )


def test_streams_and_exit_code_pass_through(rc: Path, fake: tuple[FakeController, ThreadServer]) -> None:
    controller, _ = fake
    out = flynn(rc, "-a", "myapp", "run", "--", "upper", "-c", "x", stdin=b"hello\nworld\n")
    assert out.returncode == 7, out.stderr
    assert out.stdout == b"HELLO\nWORLD\n"
    assert out.stderr == b"bye\n"
    (body,) = controller.jobs.values()
    assert body == {"args": ["upper", "-c", "x"], "attach": True}  # -c after the command is the job's
    assert controller.frames[-1] == {"eof": True}
    assert b"".join(f for f in controller.frames if isinstance(f, bytes)) == b"hello\nworld\n"
    assert controller.auth == ["Basic " + base64.b64encode(f":{KEY}".encode()).decode()]


def test_ctrl_c_is_sent_to_the_job(rc: Path, fake: tuple[FakeController, ThreadServer]) -> None:
    controller, _ = fake
    env = {**os.environ, "FLYNNRC": str(rc)}
    proc = subprocess.Popen(
        [str(FLYNN), "-a", "myapp", "run", "wait-signal"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd="/",
    )
    assert proc.stdout is not None
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        seen = b""
        deadline = time.monotonic() + 20
        while b"ready\n" not in seen and time.monotonic() < deadline:
            if sel.select(timeout=1):
                seen += os.read(proc.stdout.fileno(), 1024)
        assert seen == b"ready\n"
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert rest == b"got SIGINT\n"
    assert {"signal": "SIGINT"} in controller.frames


def test_detached_prints_the_job_id(rc: Path, fake: tuple[FakeController, ThreadServer]) -> None:
    controller, _ = fake
    out = flynn(rc, "-a", "myapp", "run", "-d", "-e", "FOO=bar", "-r", "rel-1", "--", "sleep", "60")
    assert out.returncode == 0, out.stderr
    (job_id,) = controller.jobs
    assert out.stdout.decode().strip() == job_id
    assert controller.jobs[job_id] == {
        "args": ["sleep", "60"],
        "attach": False,
        "release_id": "rel-1",
        "env": {"FOO": "bar"},
    }


def test_lost_connection_is_an_error(rc: Path) -> None:
    out = flynn(rc, "-a", "myapp", "run", "vanish")
    assert out.returncode == 1
    assert out.stdout == b"partial\n"
    assert out.stderr.decode().startswith("flynn: lost the connection to job host1-")


def test_bad_run_arguments(rc: Path, fake: tuple[FakeController, ThreadServer]) -> None:
    controller, _ = fake
    for args, fragment, code in [
        (("run", "-e", "NOEQ", "--", "x"), "is not KEY=VALUE", 1),
        (("run", "--"), "Missing argument", 2),
    ]:
        out = flynn(rc, "-a", "myapp", *args)
        assert out.returncode == code, out
        assert len(out.stderr.splitlines()) == 1, out
        assert out.stderr.decode().startswith("flynn: ")
        assert fragment in out.stderr.decode()
    assert controller.jobs == {}  # nothing was started


async def test_stream_job_with_pipes(fake: tuple[FakeController, ThreadServer]) -> None:
    controller, server = fake
    controller.jobs["host1-x"] = {"args": ["upper"]}
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"abc")
    os.close(write_fd)
    stdout, stderr = BytesIO(), BytesIO()
    try:
        async with AsyncClient(server.url, KEY) as client:
            att = await client.attach("myapp", "host1-x")
            async with asyncio.timeout(10):
                status = await stream_job(
                    att, stdin_fd=read_fd, stdout=stdout, stderr=stderr, handle_signals=False
                )
    finally:
        os.close(read_fd)
    assert (status, stdout.getvalue(), stderr.getvalue()) == (7, b"ABC", b"bye\n")
    assert controller.frames == [b"abc", {"eof": True}]


async def test_stream_job_without_stdin(fake: tuple[FakeController, ThreadServer]) -> None:
    controller, server = fake
    controller.jobs["host1-y"] = {"args": ["upper"]}
    stdout, stderr = BytesIO(), BytesIO()
    async with AsyncClient(server.url, KEY) as client:
        att = await client.attach("myapp", "host1-y")
        async with asyncio.timeout(10):
            status = await stream_job(att, stdin_fd=None, stdout=stdout, stderr=stderr, handle_signals=False)
    assert status == 7
    assert controller.frames == [{"eof": True}]
