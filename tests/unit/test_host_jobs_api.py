"""The jobs API in-process (aiohttp test server) on a fake systemd and discoverd: the start
sequence, stop (deregistered first), crash, validation, the event stream, signal, log, platform."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from flynn.host.api import make_app
from flynn.host.identity import HostIdentity
from flynn.host.jobs.manager import JobManager
from flynn.host.jobs.platform import Platform
from flynn.host.jobs.ports import PortAllocator
from tests.unit.host_fakes import FakeLogs, FakeRegistrar, FakeSystemd, make_manager, wait_state

Client = TestClient[Any, Any]


class Env:
    def __init__(self, tmp_path: Path, check_port: int | None = None) -> None:
        self.events: list[tuple[str, str]] = []
        self.systemd = FakeSystemd(self.events)
        self.registrar = FakeRegistrar(self.events)
        ports = PortAllocator(check_port, check_port, is_free=lambda _p: True) if check_port else None
        self.manager: JobManager = make_manager(
            tmp_path,
            backend=self.systemd,
            registrar=self.registrar,
            events=self.events,
            ports=ports,
            attach_wait=0.5,
        )
        self.logs = FakeLogs()
        self.platform = Platform(self.systemd, tmp_path / "etc")
        self.app = make_app(
            HostIdentity("host1", 1.0),
            build_file=tmp_path / "BUILD",
            jobs=self.manager,
            logs=self.logs,
            platform=self.platform,
        )


@pytest.fixture
async def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


async def _client(aiohttp_client: Any, env: Env) -> Client:
    client: Client = await aiohttp_client(env.app)
    return client


async def put(client: Client, job_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await client.put(f"/host/jobs/{job_id}", json=body)
    return resp.status, await resp.json()


async def test_start_runs_a_unit_and_goes_up(aiohttp_client: Any, env: Env) -> None:
    client = await _client(aiohttp_client, env)
    status, job = await put(client, "host1-a", {"args": ["sleep", "100"], "env": {"SECRET": "hunter2"}})
    assert status == 201
    assert job["state"] == "starting"
    assert job["port"] == 50000
    assert job["unit"] == "flynn-job-host1-a.service"
    assert "env" not in job
    assert "hunter2" not in json.dumps(job)
    await wait_state(env.manager, "host1-a", "up")
    resp = await client.get("/host/jobs/host1-a")
    body = await resp.json()
    assert body["state"] == "up"
    assert body["started_at"]
    assert body["up_at"]
    props = {p[0]: p[2] for p in env.systemd.props["flynn-job-host1-a.service"]}
    assert "SECRET=hunter2" in props["Environment"]
    assert "PORT=50000" in props["Environment"]
    argv = props["ExecStart"][0][1]  # through the log wrapper: [python, -I, -S, logwrap.py, IDENT, PATH, ...]
    assert argv[3].endswith("/flynn/host/jobs/logwrap.py")
    assert argv[5] in ("/usr/bin/sleep", "/bin/sleep")
    # the record on disk has no env
    record = (env.manager.store.dir / "host1-a.json").read_text()
    assert "hunter2" not in record
    assert '"state":"up"' in record


async def test_a_second_put_of_a_known_id_is_409_with_the_job(aiohttp_client: Any, env: Env) -> None:
    client = await _client(aiohttp_client, env)
    await put(client, "host1-a", {"args": ["sleep", "100"]})
    status, body = await put(client, "host1-a", {"args": ["sleep", "1"]})
    assert status == 409
    assert body["code"] == 409
    assert body["job"]["id"] == "host1-a"
    status, body = await put(client, "host1-a", {"args": "not a list"})
    assert status == 409
    assert body["job"]["args"] == ["sleep", "100"]
    assert [e for e in env.events if e[0] == "start"] == [("start", "flynn-job-host1-a.service")]


@pytest.mark.parametrize(
    ("job_id", "body", "status", "fragment"),
    [
        ("host2-a", {"args": ["x"]}, 409, "belongs to host 'host2'"),
        ("host1-a", {"args": []}, 400, "args"),
        ("host1-a", {"args": ["x"], "env": {"PORT": "1"}}, 400, "PORT"),
        ("host1-a", {"args": ["x"], "id": "host1-b"}, 400, "differs"),
        ("host1-a", {"args": ["x"], "nonsense": True}, 400, "unknown field"),
        ("host1-a", {"args": ["x"], "resources": {"memory": {"limit": 5}}}, 400, "resources.memory.limit"),
        (
            "host1-a",
            {"args": ["x"], "app_mode": "build", "artifact": {"id": "a", "uri": "http://h/a"}},
            400,
            "app_mode build takes no artifact",
        ),
        ("host1-a/b", {"args": ["x"]}, 404, ""),
    ],
)
async def test_bad_input_is_4xx_json_and_changes_nothing(
    aiohttp_client: Any, env: Env, job_id: str, body: dict[str, Any], status: int, fragment: str
) -> None:
    client = await _client(aiohttp_client, env)
    resp = await client.put(f"/host/jobs/{job_id}", json=body)
    assert resp.status == status
    data = await resp.json()
    assert data["code"] == status
    assert fragment in data["error"]
    assert env.manager.listing(include_finished=True) == []
    assert env.events == []
    assert not (env.manager.store.dir).exists() or not list(env.manager.store.dir.iterdir())


async def test_a_build_job_gets_its_writable_app_and_says_so(aiohttp_client: Any, env: Env) -> None:
    client = await _client(aiohttp_client, env)
    status, job = await put(client, "host1-b", {"args": ["sleep", "100"], "app_mode": "build"})
    assert status == 201
    assert job["app_mode"] == "build"
    await wait_state(env.manager, "host1-b", "up")
    props = {p[0]: p[2] for p in env.systemd.props["flynn-job-host1-b.service"]}
    assert props["StateDirectory"] == ["flynn-build/host1-b"]
    assert props["BindPaths"] == [("/var/lib/private/flynn-build/host1-b", "/app", False, 0)]
    assert "BindReadOnlyPaths" not in props
    resp = await client.get("/host/jobs/host1-b")
    assert (await resp.json())["app_mode"] == "build"
    status, plain = await put(client, "host1-p", {"args": ["sleep", "100"]})
    assert plain["app_mode"] == "artifact"


async def test_malformed_bodies(aiohttp_client: Any, env: Env) -> None:
    client = await _client(aiohttp_client, env)
    resp = await client.put("/host/jobs/host1-a", data=b"{nope", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert "malformed JSON" in (await resp.json())["error"]
    resp = await client.put(
        "/host/jobs/host1-a", data=b"x" * (2 << 20), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    resp = await client.put("/host/jobs/host1-a", data=b"<xml/>", headers={"Content-Type": "application/xml"})
    assert resp.status == 415
    resp = await client.get("/host/jobs?all=maybe")
    assert resp.status == 400
    assert env.events == []


async def test_stop_deregisters_before_the_unit_is_stopped(aiohttp_client: Any, tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = Env(tmp_path, check_port=port)
    client = await _client(aiohttp_client, env)
    try:
        status, _ = await put(
            client, "host1-w", {"args": ["sleep", "100"], "service": "myapp-web", "type": "web"}
        )
        assert status == 201
        await wait_state(env.manager, "host1-w", "up")
        service, addr, meta = env.registrar.registered["host1-w"]
        assert (service, addr) == ("myapp-web", f"10.0.0.1:{port}")
        assert meta["FLYNN_JOB_ID"] == "host1-w"
        assert meta["FLYNN_PROCESS_TYPE"] == "web"
        resp = await client.delete("/host/jobs/host1-w")
        assert resp.status == 200
        assert (await resp.json())["state"] == "stopping"
        await wait_state(env.manager, "host1-w", "down")
    finally:
        server.close()
    order = [e for e in env.events if e[0] in ("register", "deregister", "stop")]
    assert order == [
        ("register", "host1-w"),
        ("deregister", "host1-w"),
        ("stop", "flynn-job-host1-w.service"),
    ]
    job = env.manager.get("host1-w")
    assert job is not None
    assert job.signal == "SIGTERM"
    assert job.error is None
    assert env.manager.ports.held() == {}  # released
    resp = await client.delete("/host/jobs/host1-w")  # idempotent on a final job
    assert resp.status == 200
    assert (await resp.json())["state"] == "down"


async def test_a_failing_health_check_fails_the_job_and_stops_its_unit(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    env = Env(tmp_path, check_port=1)  # nothing listens on port 1
    client = await _client(aiohttp_client, env)
    status, _ = await put(
        client,
        "host1-h",
        {"args": ["sleep", "100"], "service": "x-web", "check": {"type": "tcp", "timeout": 1}},
    )
    assert status == 201
    await wait_state(env.manager, "host1-h", "failed", timeout=10)
    job = env.manager.get("host1-h")
    assert job is not None
    assert job.error is not None
    assert "health check did not pass within 1s" in job.error
    assert ("stop", "flynn-job-host1-h.service") in env.events
    assert "host1-h" not in env.registrar.registered


async def test_a_crash_is_crashed_with_the_exit_status_and_deregistered(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = Env(tmp_path, check_port=port)
    client = await _client(aiohttp_client, env)
    try:
        await put(client, "host1-c", {"args": ["sleep", "100"], "service": "app-web"})
        await wait_state(env.manager, "host1-c", "up")
        env.systemd.exit("flynn-job-host1-c.service", 3)
        await wait_state(env.manager, "host1-c", "crashed")
    finally:
        server.close()
    body = await (await client.get("/host/jobs/host1-c")).json()
    assert body["exit_status"] == 3
    assert body["finished_at"]
    assert body["error"] == "exited with status 3"
    for _ in range(100):
        if ("deregister", "host1-c") in env.events:
            break
        await asyncio.sleep(0.01)
    assert ("deregister", "host1-c") in env.events
    assert ("reset-failed", "flynn-job-host1-c.service") in env.events


async def test_an_exit_0_is_down(env: Env) -> None:
    from flynn.host.jobs.spec import parse_job

    await env.manager.create(parse_job({"args": ["true"]}, "host1", "host1-t"))
    await wait_state(env.manager, "host1-t", "up")
    env.systemd.exit("flynn-job-host1-t.service", 0)
    await wait_state(env.manager, "host1-t", "down")


async def test_systemd_refusing_the_unit_is_failed(aiohttp_client: Any, env: Env) -> None:
    env.systemd.refuse_start = "Invalid argument"
    client = await _client(aiohttp_client, env)
    await put(client, "host1-r", {"args": ["sleep", "1"]})
    await wait_state(env.manager, "host1-r", "failed")
    job = env.manager.get("host1-r")
    assert job is not None
    assert job.error == "systemd refused the unit: Invalid argument"
    assert env.manager.ports.held() == {}


async def test_a_missing_command_is_failed_without_a_unit(env: Env) -> None:
    from flynn.host.jobs.spec import parse_job

    await env.manager.create(parse_job({"args": ["no-such-command-anywhere"]}, "host1", "host1-m"))
    await wait_state(env.manager, "host1-m", "failed")
    job = env.manager.get("host1-m")
    assert job is not None
    assert job.error is not None
    assert "command not found" in job.error
    assert env.events == []


async def test_list_and_history(aiohttp_client: Any, env: Env) -> None:
    client = await _client(aiohttp_client, env)
    await put(client, "host1-a", {"args": ["sleep", "100"]})
    await put(client, "host1-b", {"args": ["sleep", "100"]})
    await wait_state(env.manager, "host1-b", "up")
    await client.delete("/host/jobs/host1-a")
    await wait_state(env.manager, "host1-a", "down")
    live = await (await client.get("/host/jobs")).json()
    assert [j["id"] for j in live] == ["host1-b"]
    every = await (await client.get("/host/jobs?all=true")).json()
    assert {j["id"] for j in every} == {"host1-a", "host1-b"}
    resp = await client.get("/host/jobs/host1-zzz")
    assert resp.status == 404
    assert (await resp.json())["code"] == 404


async def test_the_event_stream_shows_every_transition(aiohttp_client: Any, env: Env) -> None:
    client = await _client(aiohttp_client, env)
    await put(client, "host1-old", {"args": ["sleep", "100"]})
    await wait_state(env.manager, "host1-old", "up")
    resp = await client.get("/host/jobs", headers={"Accept": "text/event-stream"})
    assert resp.headers["Content-Type"] == "text/event-stream"
    seen: list[tuple[str, str]] = []

    async def read() -> None:
        event = ""
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                seen.append((event, f"{data.get('id', '')}:{data.get('state', '')}"))
                if data.get("state") == "down":
                    return

    reader = asyncio.get_running_loop().create_task(read())
    await asyncio.sleep(0.05)
    await put(client, "host1-new", {"args": ["sleep", "100"]})
    await wait_state(env.manager, "host1-new", "up")
    await client.delete("/host/jobs/host1-new")
    async with asyncio.timeout(5):
        await reader
    assert seen[:2] == [("job", "host1-old:up"), ("current", ":")]
    states = [s.split(":")[1] for e, s in seen[2:] if s.startswith("host1-new")]
    assert states[0] == "starting"
    assert "up" in states
    assert states[-2:] == ["stopping", "down"]


async def test_signal(aiohttp_client: Any, env: Env) -> None:
    client = await _client(aiohttp_client, env)
    await put(client, "host1-s", {"args": ["sleep", "100"]})
    await wait_state(env.manager, "host1-s", "up")
    resp = await client.post("/host/jobs/host1-s/signal", json={"signal": "SIGUSR1"})
    assert resp.status == 200
    resp = await client.post("/host/jobs/host1-s/signal", json={"signal": "hup"})
    assert resp.status == 200
    assert env.systemd.kills == [
        ("flynn-job-host1-s.service", 10, "main"),
        ("flynn-job-host1-s.service", 1, "main"),
    ]
    for bad in ({"signal": "SIGNOPE"}, {"signal": 0}, {"sig": "SIGHUP"}, ["SIGHUP"], {"signal": True}):
        resp = await client.post("/host/jobs/host1-s/signal", json=bad)
        assert resp.status == 400, bad
    assert len(env.systemd.kills) == 2
    # a signal we sent that kills it is not a crash
    env.systemd.killed("flynn-job-host1-s.service", 10)
    await wait_state(env.manager, "host1-s", "down")
    resp = await client.post("/host/jobs/host1-s/signal", json={"signal": "SIGUSR1"})
    assert resp.status == 409
    resp = await client.post("/host/jobs/host1-none/signal", json={"signal": "SIGUSR1"})
    assert resp.status == 404


async def test_log(aiohttp_client: Any, env: Env) -> None:
    client = await _client(aiohttp_client, env)
    await put(client, "host1-l", {"args": ["sleep", "100"]})
    env.logs.lines_by_job["host1-l"] = ["one", "two", "three"]
    resp = await client.get("/host/jobs/host1-l/log")
    assert resp.status == 200
    assert await resp.text() == "one\ntwo\nthree\n"
    assert await (await client.get("/host/jobs/host1-l/log?lines=2")).text() == "two\nthree\n"
    resp = await client.get("/host/jobs/host1-l/log", headers={"Accept": "text/event-stream"})
    text = await resp.text()
    assert text.count("event: line") == 3
    assert '"message":"two"' in text
    assert "event: eof" in text
    for bad in ("lines=-1", "lines=abc", "lines=100001", "follow=perhaps"):
        resp = await client.get(f"/host/jobs/host1-l/log?{bad}")
        assert resp.status == 400, bad
    assert (await client.get("/host/jobs/host1-x/log")).status == 404


async def test_log_follow_ends_when_the_job_ends(aiohttp_client: Any, env: Env) -> None:
    client = await _client(aiohttp_client, env)
    await put(client, "host1-f", {"args": ["sleep", "100"]})
    await wait_state(env.manager, "host1-f", "up")
    env.logs.lines_by_job["host1-f"] = ["only"]
    resp = await client.get("/host/jobs/host1-f/log?follow=true")
    first = await resp.content.readline()
    assert first == b"only\n"
    env.systemd.exit("flynn-job-host1-f.service", 0)
    async with asyncio.timeout(5):
        assert await resp.content.read() == b""


async def test_attach_without_attach_flag_and_without_websocket(aiohttp_client: Any, env: Env) -> None:
    client = await _client(aiohttp_client, env)
    await put(client, "host1-p", {"args": ["sleep", "100"]})
    resp = await client.get("/host/jobs/host1-p/attach")
    assert resp.status == 400
    assert "not started with attach" in (await resp.json())["error"]
    await put(client, "host1-q", {"args": ["sleep", "100"], "attach": True})
    resp = await client.get("/host/jobs/host1-q/attach")
    assert resp.status == 400
    assert "WebSocket" in (await resp.json())["error"]


async def test_an_attach_job_waits_for_its_client_then_fails(env: Env) -> None:
    from flynn.host.jobs.spec import parse_job

    await env.manager.create(parse_job({"args": ["sleep", "1"], "attach": True}, "host1", "host1-w"))
    await asyncio.sleep(0.2)
    assert env.events == []  # no unit before the client connects
    await wait_state(env.manager, "host1-w", "failed")
    job = env.manager.get("host1-w")
    assert job is not None
    assert job.error == "no attach client connected within 0.5s"


async def test_attach_streams_stdio_and_passes_the_exit_code(aiohttp_client: Any, env: Env) -> None:
    """The fake systemd hands the pipes to a real /bin/sh; the frames are the real protocol."""
    client = await _client(aiohttp_client, env)
    env.systemd.auto_run = False
    await put(client, "host1-att", {"args": ["sh"], "attach": True})
    procs: list[asyncio.subprocess.Process] = []

    async def run_like_systemd() -> None:
        async with asyncio.timeout(5):
            while "flynn-job-host1-att.service" not in env.systemd.props:  # noqa: ASYNC110 - a fake's state
                await asyncio.sleep(0.01)
        named = {p[0]: p[2] for p in env.systemd.props["flynn-job-host1-att.service"]}
        fds = [
            named[k]
            for k in (
                "StandardInputFileDescriptor",
                "StandardOutputFileDescriptor",
                "StandardErrorFileDescriptor",
            )
        ]
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            "read x; echo got:$x; echo oops >&2; exit 3",
            stdin=fds[0],
            stdout=fds[1],
            stderr=fds[2],
        )
        for fd in fds:
            os.close(fd)
        procs.append(proc)
        env.systemd.run("flynn-job-host1-att.service")
        code = await proc.wait()
        env.systemd.exit("flynn-job-host1-att.service", code)

    runner = asyncio.get_running_loop().create_task(run_like_systemd())
    frames: list[Any] = []
    async with client.ws_connect("/host/jobs/host1-att/attach") as ws:
        await ws.send_bytes(b"hello\n")
        async with asyncio.timeout(10):
            async for msg in ws:
                frames.append(msg.data)
    await runner
    out = b"".join(f[1:] for f in frames if isinstance(f, bytes) and f[:1] == b"\x01")
    err = b"".join(f[1:] for f in frames if isinstance(f, bytes) and f[:1] == b"\x02")
    assert out == b"got:hello\n"
    assert err == b"oops\n"
    assert json.loads(frames[-1]) == {"exit": 3}
    job = env.manager.get("host1-att")
    assert job is not None
    assert job.state.value == "crashed"


async def test_platform_writes_a_private_env_file_and_restarts(
    aiohttp_client: Any, env: Env, tmp_path: Path
) -> None:
    env.systemd.installed.add("flynn-controller.service")
    client = await _client(aiohttp_client, env)
    resp = await client.put(
        "/host/platform/controller", json={"env": {"AUTH_KEY": "s3cret value", "B": 'q"$x'}}
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["unit"] == "flynn-controller.service"
    assert body["result"] == "done"
    assert body["state"] == "active"
    path = tmp_path / "etc/controller.env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == 'AUTH_KEY="s3cret value"\nB="q\\"\\$x"\n'
    assert env.systemd.enabled == ["flynn-controller.service"] == env.systemd.restarted
    assert body["secret_file"] is None
    assert not (tmp_path / "etc/controller.secret").exists()


async def test_platform_writes_the_secret_file_when_given(
    aiohttp_client: Any, env: Env, tmp_path: Path
) -> None:
    env.systemd.installed.add("flynn-discoverd.service")
    client = await _client(aiohttp_client, env)
    resp = await client.put(
        "/host/platform/discoverd", json={"env": {"DISCOVERD_ADDR": "10.0.0.1"}, "secret": "ab" * 16}
    )
    assert resp.status == 200
    assert (await resp.json())["secret_file"] == str(tmp_path / "etc/discoverd.secret")
    secret = tmp_path / "etc/discoverd.secret"
    assert secret.read_text() == "ab" * 16 + "\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("name", "body", "status"),
    [
        ("nope", {"env": {}}, 404),
        ("router", {"env": {}}, 404),  # a platform name whose unit is not installed here
        ("controller", {"env": {"1X": "y"}}, 400),
        ("controller", {"env": {"X": 1}}, 400),
        ("controller", {"env": {"X": "a\0b"}}, 400),
        ("controller", {"environment": {}}, 400),
        ("controller", ["X=1"], 400),
        ("controller", {"env": {}, "secret": ""}, 400),
        ("controller", {"env": {}, "secret": "two\nlines"}, 400),
        ("controller", {"env": {}, "secret": 5}, 400),
    ],
)
async def test_platform_bad_input_changes_nothing(
    aiohttp_client: Any, env: Env, tmp_path: Path, name: str, body: Any, status: int
) -> None:
    env.systemd.installed.add("flynn-controller.service")
    client = await _client(aiohttp_client, env)
    resp = await client.put(f"/host/platform/{name}", json=body)
    assert resp.status == status
    assert (await resp.json())["code"] == status
    assert not (tmp_path / "etc").exists()
    assert env.systemd.restarted == []


async def test_platform_start_failure_is_reported(aiohttp_client: Any, env: Env) -> None:
    env.systemd.installed.add("flynn-scheduler.service")
    env.systemd.start_result = "failed"
    client = await _client(aiohttp_client, env)
    resp = await client.put("/host/platform/scheduler", json={"env": {}})
    assert resp.status == 500
    assert "flynn-scheduler.service did not start (job failed)" in (await resp.json())["error"]
