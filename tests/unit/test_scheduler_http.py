"""The scheduler over real HTTP: a real discoverd node, the real host and controller clients, and
small in-process servers speaking the documented host API (docs/host.md) and controller API
(docs/controller.md). Covers the leader gate, reconnects of the host job streams and of the
controller event stream, and a host lost through discoverd expiry.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import itertools
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from flynn.common.web import Handler, error_middleware, json_error
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.discoverd.client import Registration
from flynn.scheduler.cluster import HostsCluster
from flynn.scheduler.controller import ControllerAPI
from flynn.scheduler.core import Role, Scheduler, Settings
from flynn.scheduler.gate import DiscoverdGate
from flynn.scheduler.memory import expanded
from tests.unit.discoverd_local import LocalCluster, free_port_pair

pytestmark = pytest.mark.timeout(120)

KEY = "s3cr3t-controller-key-0123456789"
ROOT = Path(__file__).resolve().parents[2]


def now_stamp() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _sse(resp: web.StreamResponse, event: str, data: Any, event_id: int | None = None) -> None:
    head = f"id: {event_id}\n" if event_id is not None else ""
    await resp.write(f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode())


# -- a host speaking the host jobs API -------------------------------------------------------------


class FakeHost:
    FINAL = ("down", "crashed", "failed")

    def __init__(self, host_id: str) -> None:
        self.id = host_id
        self.jobs: dict[str, dict[str, Any]] = {}
        self.subs: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.refuse = False
        self.stream_connects = 0
        self.puts: list[dict[str, Any]] = []
        self.deletes: list[str] = []
        self.server: TestServer | None = None
        self._port = itertools.count(49152)

    @property
    def addr(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.port}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[error_middleware])
        app.router.add_get("/host/jobs", self.list_jobs)
        app.router.add_get("/host/jobs/{id}", self.get_job)
        app.router.add_put("/host/jobs/{id}", self.put_job)
        app.router.add_delete("/host/jobs/{id}", self.delete_job)
        return app

    def publish(self, job: dict[str, Any]) -> None:
        for q in self.subs:
            q.put_nowait(dict(job))

    def set_state(self, job_id: str, state: str, **fields: Any) -> None:
        job = self.jobs[job_id]
        job.update(state=state, **fields)
        if state == "up":
            job["up_at"] = now_stamp()
        if state in self.FINAL:
            job["finished_at"] = now_stamp()
        self.publish(job)

    def drop_streams(self) -> None:
        for q in list(self.subs):
            q.put_nowait(None)

    def live(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs.values() if j["state"] in ("starting", "up")]

    async def list_jobs(self, request: web.Request) -> web.StreamResponse:
        current = [j for j in self.jobs.values() if j["state"] not in self.FINAL]
        if "text/event-stream" not in request.headers.get("Accept", ""):
            return web.json_response(current)
        self.stream_connects += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.subs.add(q)
        try:
            for job in current:
                await _sse(resp, "job", job)
            await _sse(resp, "current", {})
            while (change := await q.get()) is not None:
                await _sse(resp, "job", change)
        finally:
            self.subs.discard(q)
        return resp

    async def get_job(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return json_error(404, "no such job")
        return web.json_response(job)

    async def put_job(self, request: web.Request) -> web.Response:
        config = await request.json()
        self.puts.append(config)
        job_id = request.match_info["id"]
        if not job_id.startswith(self.id + "-"):
            return json_error(409, f"job id does not start with {self.id}-")
        if job_id in self.jobs:
            return web.json_response(
                {"error": "job exists", "code": 409, "job": self.jobs[job_id]}, status=409
            )
        if self.refuse:
            return json_error(500, "cannot fetch the artifact")
        job = {
            "id": job_id,
            "host_id": self.id,
            "app_id": config["app_id"],
            "app_name": config["app_name"],
            "release_id": config["release_id"],
            "type": config["type"],
            "state": "starting",
            "port": next(self._port),
            "args": config["args"],
            "service": config.get("service"),
            "meta": dict(config.get("meta") or {}),
            "exit_status": None,
            "signal": None,
            "error": None,
            "created_at": now_stamp(),
        }
        self.jobs[job_id] = job
        self.publish(job)
        asyncio.get_running_loop().call_later(0.05, self._come_up, job_id)
        return web.json_response(job, status=201)

    def _come_up(self, job_id: str) -> None:
        if self.jobs.get(job_id, {}).get("state") == "starting":
            self.set_state(job_id, "up")

    async def delete_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        self.deletes.append(job_id)
        job = self.jobs.get(job_id)
        if job is None:
            return json_error(404, "no such job")
        self.set_state(job_id, "stopping")
        answer = dict(job)
        asyncio.get_running_loop().call_later(0.05, self.set_state, job_id, "down")
        return web.json_response(answer)


# -- a controller speaking the formations, events and jobs API ---------------------------------------


class FakeController:
    def __init__(self) -> None:
        self.formations: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.subs: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.reports: list[tuple[str, str, dict[str, Any]]] = []
        self.last_event_ids: list[str | None] = []
        self.unauthorized = 0
        self.down = False
        self.server: TestServer | None = None

    @property
    def addr(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.port}"

    def app(self) -> web.Application:
        @web.middleware
        async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            token = base64.b64encode(f":{KEY}".encode()).decode()
            if request.headers.get("Authorization") != f"Basic {token}":
                self.unauthorized += 1
                return json_error(401, "invalid or missing key")
            if self.down:
                return json_error(503, "database unavailable")
            return await handler(request)

        app = web.Application(middlewares=[error_middleware, auth])
        app.router.add_get("/formations", self.get_formations)
        app.router.add_get("/events", self.get_events)
        app.router.add_put("/apps/{app}/jobs/{job}", self.put_job)
        return app

    def set_formations(self, formations: list[dict[str, Any]], *, publish: bool = True) -> None:
        self.formations = formations
        for f in formations:
            event = {
                "id": len(self.events) + 1,
                "app_id": f["app"]["id"],
                "object_type": "formation",
                "object_id": f"{f['app']['id']}:{f['release']['id']}",
                "op": "update",
                "data": {"processes": f["processes"]},
                "created_at": now_stamp(),
            }
            self.events.append(event)
            if publish:
                for q in self.subs:
                    q.put_nowait(event)

    def drop_streams(self) -> None:
        for q in list(self.subs):
            q.put_nowait(None)

    def state_of(self, job_id: str) -> str | None:
        job = self.jobs.get(job_id)
        return None if job is None else str(job["state"])

    async def get_formations(self, request: web.Request) -> web.Response:
        assert request.query.get("active") == "true"
        return web.json_response(self.formations)

    async def get_events(self, request: web.Request) -> web.StreamResponse:
        assert request.query.get("object_types") == "formation,app_deletion"
        last = request.headers.get("Last-Event-ID")
        self.last_event_ids.append(last)
        after = int(last) if last else len(self.events)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.subs.add(q)
        try:
            for event in self.events[after:]:
                await _sse(resp, event["object_type"], event, event["id"])
            await resp.write(b": keepalive\n\n")
            while (live := await q.get()) is not None:
                await _sse(resp, live["object_type"], live, live["id"])
        finally:
            self.subs.discard(q)
        return resp

    async def put_job(self, request: web.Request) -> web.Response:
        body = await request.json()
        app, job_id = request.match_info["app"], request.match_info["job"]
        self.reports.append((app, job_id, body))
        self.jobs[job_id] = {"id": job_id, **body}
        return web.json_response(self.jobs[job_id])


# -- the rig -----------------------------------------------------------------------------------------


class Instance:
    """One scheduler as the daemon assembles it, on its own session and registration."""

    def __init__(self, discoverd_urls: list[str], name: str) -> None:
        self.name = name
        self.session = aiohttp.ClientSession()
        self.discoverd = DiscoverdClient(discoverd_urls, session=self.session)
        self.controller = ControllerAPI(KEY, self.session, wait_for_url=0.5)
        self.cluster = HostsCluster(self.discoverd, self.session, timeout=5)
        self.reg: Registration | None = None
        self.gate: DiscoverdGate | None = None
        self.scheduler: Scheduler | None = None
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self, port: int) -> None:
        self.reg = await self.discoverd.register("flynn-scheduler", f"127.0.0.1:{port}", interval=0.4)
        self.gate = DiscoverdGate(self.reg, ttl=2.0, check_every=0.2)
        self.gate.start()
        self.scheduler = Scheduler(
            self.cluster,
            self.controller,
            self.gate,
            settings=Settings(retry_min=0.05, retry_max=0.3, sync_grace=2.0, term_restart_delay=0.1),
        )
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self.scheduler.run()),
            loop.create_task(self.controller.follow_discoverd(self.discoverd)),
        ]

    async def stop(self, *, deregister: bool = True) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with pytest.raises(asyncio.CancelledError):
                await task
        self.tasks = []
        if self.gate is not None:
            await self.gate.close()
        if self.reg is not None:
            await self.reg.close(deregister=deregister)
        await self.session.close()


class Rig:
    def __init__(self, tmp: Path) -> None:
        raft_port, http_port = free_port_pair()
        self.discoverd = LocalCluster(tmp, raft_port, http_port, ttl=2.0)
        self.hosts: dict[str, FakeHost] = {}
        self.regs: dict[str, Registration] = {}
        self.controller = FakeController()
        self.instances: list[Instance] = []
        self.client: DiscoverdClient | None = None

    async def start(self, host_ids: tuple[str, ...] = ("host1", "host2")) -> None:
        await self.discoverd.start(1)
        self.client = DiscoverdClient(self.discoverd.urls())
        self.controller.server = TestServer(self.controller.app(), host="127.0.0.1")
        await self.controller.server.start_server()
        self.regs["controller"] = await self.client.register("controller", self.controller.addr, interval=0.4)
        for host_id in host_ids:
            await self.add_host(host_id)

    async def add_host(self, host_id: str) -> FakeHost:
        assert self.client is not None
        host = FakeHost(host_id)
        host.server = TestServer(host.app(), host="127.0.0.1")
        await host.server.start_server()
        self.hosts[host_id] = host
        self.regs[host_id] = await self.client.register(
            "flynn-host", host.addr, iid=host_id, meta={"id": host_id}, interval=0.4
        )
        return host

    async def instance(self, name: str) -> Instance:
        inst = Instance(self.discoverd.urls(), name)
        await inst.start(10000 + len(self.instances))
        self.instances.append(inst)
        return inst

    def live(self) -> list[dict[str, Any]]:
        return [j for h in self.hosts.values() for j in h.live()]

    def up(self) -> list[dict[str, Any]]:
        return [j for j in self.live() if j["state"] == "up"]

    def puts(self) -> int:
        return sum(len(h.puts) for h in self.hosts.values())

    async def stop(self) -> None:
        for inst in self.instances:
            if inst.tasks:
                await inst.stop()
        for reg in self.regs.values():
            await reg.close(deregister=False)
        for host in self.hosts.values():
            host.drop_streams()
            if host.server is not None:
                await host.server.close()
        self.controller.drop_streams()
        if self.controller.server is not None:
            await self.controller.server.close()
        if self.client is not None:
            await self.client.close()
        await self.discoverd.stop()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


# -- tests -------------------------------------------------------------------------------------------


async def test_formations_become_jobs_on_hosts_and_states_reach_the_controller(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rig.controller.set_formations(
        [expanded("app1", "rel1", {"web": 3}, env={"SECRET_TOKEN": "abc"}, app_name="myapp")]
    )
    inst = await rig.instance("a")
    await eventually(lambda: len(rig.up()) == 3, "3 web jobs up")
    assert sorted(len(h.live()) for h in rig.hosts.values()) == [1, 2]  # spread over both hosts
    config = rig.hosts["host1"].puts[0]
    assert config["id"].startswith("host1-")
    assert config["app_name"] == "myapp"
    assert config["env"] == {"SECRET_TOKEN": "abc"}
    assert config["artifact"]["uri"] == "http://blobstore.test/slug.tgz"
    await eventually(lambda: all(rig.controller.state_of(j["id"]) == "up" for j in rig.live()), "up reported")
    app, job_id, body = rig.controller.reports[0]
    assert app == "app1"
    assert body["host_id"] == job_id.partition("-")[0]
    assert {"state", "release_id", "type", "uuid", "args"} <= body.keys()
    assert inst.scheduler is not None
    assert inst.scheduler.role is Role.LEADER
    assert rig.controller.unauthorized == 0
    assert KEY not in caplog.text
    assert any("start job" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


async def test_only_the_leader_acts_and_the_next_one_takes_over_without_double_starts(rig: Rig) -> None:
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 2})])
    first = await rig.instance("first")
    second = await rig.instance("second")
    await eventually(lambda: len(rig.up()) == 2, "2 web jobs up")
    assert first.scheduler is not None
    assert second.scheduler is not None
    assert first.scheduler.role is Role.LEADER
    assert second.scheduler.role is Role.FOLLOWER
    assert second.scheduler.terms == 0
    puts = rig.puts()

    await first.stop()  # as the daemon does on SIGTERM: stop acting, then deregister
    await eventually(
        lambda: second.scheduler is not None and second.scheduler.role is Role.LEADER, "takeover"
    )
    term = second.scheduler.term
    await eventually(lambda: term is not None and term.passes > 0, "a pass of the new leader")
    await asyncio.sleep(0.3)
    assert rig.puts() == puts  # it adopted the running jobs
    host = next(h for h in rig.hosts.values() if h.live())
    host.set_state(host.live()[0]["id"], "crashed", exit_status=1)
    await eventually(lambda: rig.puts() == puts + 1 and len(rig.up()) == 2, "the new leader replaces a crash")


async def test_a_leader_cut_off_from_discoverd_stops_acting(rig: Rig) -> None:
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 1})])
    inst = await rig.instance("a")
    await eventually(lambda: len(rig.up()) == 1, "1 web job up")
    node = next(iter(rig.discoverd.nodes.values()))
    await node.stop()
    assert inst.scheduler is not None
    await eventually(lambda: inst.scheduler is not None and inst.scheduler.role is Role.FOLLOWER, "step down")
    puts = rig.puts()
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 2})])
    await asyncio.sleep(0.5)
    assert rig.puts() == puts
    await inst.stop(deregister=False)  # there is no discoverd left to deregister from


async def test_host_job_streams_reconnect_and_catch_up(rig: Rig) -> None:
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 2})])
    await rig.instance("a")
    await eventually(lambda: len(rig.up()) == 2, "2 web jobs up")
    host = rig.hosts["host1"]
    connects = host.stream_connects
    victim = host.live()[0]["id"]
    host.drop_streams()
    host.subs.clear()  # the crash below happens while nobody listens
    host.set_state(victim, "crashed", exit_status=137, signal="SIGKILL")
    await eventually(lambda: host.stream_connects > connects, "a reconnect")
    await eventually(lambda: rig.controller.state_of(victim) == "crashed", "the missed crash reported")
    await eventually(lambda: len(rig.up()) == 2, "the crashed job replaced")

    # and once more: changes streamed after a reconnect still arrive
    other = rig.up()[0]
    owner = rig.hosts[other["host_id"]]
    owner.drop_streams()
    await eventually(lambda: len(owner.subs) == 1, "the stream back")
    owner.set_state(other["id"], "crashed", exit_status=1)
    await eventually(lambda: rig.controller.state_of(other["id"]) == "crashed", "a streamed crash")
    await eventually(lambda: len(rig.up()) == 2, "replaced again")


async def test_the_controller_event_stream_reconnects_and_resumes(rig: Rig) -> None:
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 1})])
    await rig.instance("a")
    await eventually(lambda: len(rig.up()) == 1, "1 web job up")
    await eventually(lambda: len(rig.controller.subs) == 1, "the event stream")
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 2})])
    await eventually(lambda: len(rig.up()) == 2, "scaled by an event")
    seen = len(rig.controller.events)

    rig.controller.drop_streams()
    rig.controller.subs.clear()
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 3})], publish=False)
    await eventually(lambda: len(rig.up()) == 3, "scaled after the reconnect")
    assert rig.controller.last_event_ids[-1] == str(seen)  # it resumed where it was

    rig.controller.set_formations([expanded("app1", "rel2", {"web": 1})])  # live events again
    await eventually(
        lambda: [j["release_id"] for j in rig.live()] == ["rel2"] and len(rig.up()) == 1, "rel2 deployed"
    )


async def test_a_host_lost_in_discoverd_has_its_jobs_replaced(rig: Rig) -> None:
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 2})])
    await rig.instance("a")
    await eventually(lambda: len(rig.up()) == 2 and all(h.live() for h in rig.hosts.values()), "spread")
    lost = rig.hosts["host2"].live()[0]["id"]
    await rig.regs["host2"].close(deregister=False)  # heartbeats stop: discoverd expires it
    await eventually(lambda: rig.controller.state_of(lost) == "down", "the lost job reported down")
    assert rig.controller.jobs[lost]["host_error"] == "host lost"
    await eventually(lambda: len(rig.hosts["host1"].live()) == 2, "replaced on host1")


async def test_a_refusing_host_is_skipped(rig: Rig) -> None:
    rig.hosts["host1"].refuse = True
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 2})])
    await rig.instance("a")
    await eventually(lambda: len(rig.hosts["host2"].live()) == 2, "both on host2")
    assert len(rig.hosts["host1"].puts) == 1


async def test_a_wrong_key_acts_on_nothing(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 1})])
    inst = Instance(rig.discoverd.urls(), "wrong")
    inst.controller = ControllerAPI("not-the-key", inst.session, wait_for_url=0.5)
    await inst.start(10999)
    rig.instances.append(inst)
    await eventually(lambda: rig.controller.unauthorized >= 2, "refused requests")
    assert rig.puts() == 0
    assert "invalid or missing key" in caplog.text
    assert "not-the-key" not in caplog.text


async def test_the_daemon_end_to_end(rig: Rig, tmp_path: Path) -> None:
    """``flynn-scheduler`` as systemd runs it: READY=1, leads, serves /status, SIGTERM deregisters."""
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 2})])
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT / "services"),
        "CONTROLLER_KEY": KEY,
        "DISCOVERD": ",".join(rig.discoverd.urls()),
        "SCHEDULER_ADDR": "127.0.0.1",
        "SCHEDULER_PORT": str(port),
        "NOTIFY_SOCKET": str(notify_path),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flynn.scheduler.daemon", env=env, stderr=asyncio.subprocess.PIPE
    )
    loop = asyncio.get_running_loop()
    messages: list[str] = []

    async def next_message() -> str:
        async with asyncio.timeout(20):
            data = await loop.sock_recv(notify, 4096)
        messages.append(data.decode())
        return messages[-1]

    try:
        while "READY=1" not in await next_message():
            pass
        await eventually(lambda: len(rig.up()) == 2, "2 web jobs started by the daemon")
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/status") as resp:
            status = await resp.json()
        assert status["role"] == "leader"
        assert sorted(status["hosts"]) == ["host1", "host2"]
        assert status["controllers"] == [f"http://{rig.controller.addr}"]
        assert rig.client is not None
        instances = await rig.client.instances("flynn-scheduler")
        assert [i["addr"] for i in instances] == [f"127.0.0.1:{port}"]
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
        while "STOPPING=1" not in messages[-1]:
            await next_message()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()
    assert proc.stderr is not None
    stderr = (await proc.stderr.read()).decode()
    assert KEY not in stderr
    assert "start job host" in stderr
    assert await rig.client.instances("flynn-scheduler") == []  # deregistered: the next one leads at once
