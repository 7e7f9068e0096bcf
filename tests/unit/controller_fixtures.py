"""Fixtures: a real controller on 127.0.0.1, backed by a real (throwaway) PostgreSQL 15.

Use them from any test module (the CLI's tests too)::

    from typing import TYPE_CHECKING
    if TYPE_CHECKING:
        from tests.unit.controller_fixtures import ControllerHandle
    pytest_plugins = ("tests.unit.controller_fixtures",)   # fixtures: pg_server, controllers, controller

    def test_something(controller: ControllerHandle) -> None:
        api = controller.client()                       # flynn.common.http.Client with the key
        app = api.post("/apps", {"name": "web1"})
        controller.url, controller.key, controller.db_url  # for the code under test
        release = controller.make_release("web1", processes={"web": ["python3", "app.py"]})
        api.put(f"/apps/web1/formations/{release['id']}", {"processes": {"web": 2}})
        controller.report_job("web1", release["id"], "web", "up")   # as the scheduler would
        controller.scheduler.start()    # or: a fake scheduler that brings formations up by itself

What is real: the controller (``flynn.controller.service.Controller``: migrations, pool, events,
deployer, auth, HTTP server) and PostgreSQL. What is faked, over real HTTP: discoverd (only what
the controller uses: services, instances, heartbeats, the leader stream) and the hosts' API
(``PUT/DELETE /host/jobs/:id`` and the attach WebSocket, see :class:`FakeHost`), so one-off jobs,
``flynn kill`` and ``flynn run`` reach something. :class:`FakeScheduler` plays the scheduler: it
reads ``GET /formations?active=true`` and reports jobs through ``PUT /apps/:app/jobs/:id``.
``cluster.aggregator`` is the real log aggregator API (tests/unit/aggregator_fixture.py),
registered as ``logaggregator``, its lines added by the test.

The controller and the fakes run on their own event loop in a background thread
(:class:`LoopThread`), so synchronous tests (click's CliRunner, ``flynn.common.http.Client``) and
asyncio tests can both talk to it. One PostgreSQL server per test session; one fresh database per
``controller`` fixture.

Fixtures:
* ``pg_server`` (session): the :class:`tests.pg.PostgresServer`.
* ``controller``: one running controller, key :data:`KEY`, two fake hosts ``host1``/``host2``.
* ``controllers``: a factory, ``controllers.start(db_url=None, keys=(KEY,), **config)`` for more
  controllers (e.g. two on one database) or other keys; all stopped at teardown.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from flynn.common.errors import APIError
from flynn.common.http import Client
from flynn.controller.config import ControllerConfig
from flynn.controller.service import Controller
from flynn.discoverd.client import Client as DiscoverdClient
from tests.pg import PostgresServer
from tests.unit.aggregator_fixture import AggregatorHandle

KEY = "test-controller-key-0123456789abcdef"
T = TypeVar("T")


# -- a loop in a thread --------------------------------------------------------------------------


class LoopThread:
    """An asyncio loop running in a daemon thread; :meth:`run` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name="controller-loop", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        async def _cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(_cancel_rest(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


# -- fake hosts ----------------------------------------------------------------------------------


@dataclass
class FakeHost:
    """One host's API as the controller uses it. ``configs`` holds every job config it was sent.

    ``refuse``: answer starts with this HTTP status (e.g. 500: "host broken", 400: "bad config").
    Attach: stdin bytes come back as stdout (``\\x01`` + bytes); ``{"eof": true}`` ends the job
    with ``{"exit": 0}``, ``{"signal": "SIGINT"}`` with ``{"exit": 130}``.
    """

    id: str
    url: str = ""
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    stopped: list[str] = field(default_factory=list)
    attached: list[str] = field(default_factory=list)
    refuse: int | None = None
    runner: web.AppRunner | None = None

    def job(self, job_id: str, state: str) -> dict[str, Any]:
        cfg = self.configs[job_id]
        return {
            "id": job_id,
            "host_id": self.id,
            "app_id": cfg.get("app_id"),
            "release_id": cfg.get("release_id"),
            "type": cfg.get("type"),
            "state": state,
            "args": cfg.get("args"),
        }

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/host/jobs/{id}", self._put)
        app.router.add_delete("/host/jobs/{id}", self._delete)
        app.router.add_get("/host/jobs/{id}/attach", self._attach)
        return app

    async def _put(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        if self.refuse is not None:
            return web.json_response(
                {"error": "refused by the test", "code": self.refuse}, status=self.refuse
            )
        if not job_id.startswith(self.id + "-"):
            return web.json_response({"error": "job id of another host", "code": 409}, status=409)
        if job_id in self.configs:
            return web.json_response(
                {"error": "exists", "code": 409, "job": self.job(job_id, "up")}, status=409
            )
        self.configs[job_id] = await request.json()
        return web.json_response(self.job(job_id, "starting"), status=201)

    async def _delete(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        if job_id not in self.configs:
            return web.json_response({"error": "no such job", "code": 404}, status=404)
        self.stopped.append(job_id)
        return web.json_response(self.job(job_id, "stopping"))

    async def _attach(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["id"]
        if job_id not in self.configs:
            return web.json_response({"error": "no such job", "code": 404}, status=404)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.attached.append(job_id)
        await ws.send_bytes(b"\x02attached\n")
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(b"\x01" + msg.data)
            elif msg.type == WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data.get("eof"):
                    await ws.send_str(json.dumps({"exit": 0}))
                    break
                if data.get("signal"):
                    await ws.send_str(json.dumps({"exit": 130}))
                    break
        await ws.close()
        return ws


@dataclass
class FakeDiscoverd:
    """The part of discoverd's API the controller touches; ``instances[service][id] = instance``."""

    url: str = ""
    instances: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    runner: web.AppRunner | None = None
    down: bool = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/services/{service}", self._add_service)
        app.router.add_get("/services/{service}/instances", self._instances)
        app.router.add_put("/services/{service}/instances/{id}", self._register)
        app.router.add_delete("/services/{service}/instances/{id}", self._deregister)
        app.router.add_post("/services/{service}/instances/{id}/heartbeat", self._heartbeat)
        app.router.add_get("/services/{service}/leader", self._leader)
        return app

    def _unavailable(self) -> web.Response | None:
        if self.down:
            return web.json_response({"error": "no raft leader", "code": 503}, status=503)
        return None

    async def _add_service(self, request: web.Request) -> web.Response:
        self.instances.setdefault(request.match_info["service"], {})
        return self._unavailable() or web.json_response({"name": request.match_info["service"]})

    async def _instances(self, request: web.Request) -> web.Response:
        bad = self._unavailable()
        if bad is not None:
            return bad
        service = request.match_info["service"]
        if service not in self.instances:
            return web.json_response({"error": "unknown service", "code": 404}, status=404)
        return web.json_response(list(self.instances[service].values()))

    async def _register(self, request: web.Request) -> web.Response:
        body = await request.json()
        inst = {"id": request.match_info["id"], **body}
        self.instances.setdefault(request.match_info["service"], {})[inst["id"]] = inst
        return self._unavailable() or web.json_response(inst)

    async def _deregister(self, request: web.Request) -> web.Response:
        self.instances.get(request.match_info["service"], {}).pop(request.match_info["id"], None)
        return web.json_response({})

    async def _heartbeat(self, request: web.Request) -> web.Response:
        if request.match_info["id"] not in self.instances.get(request.match_info["service"], {}):
            return web.json_response({"error": "unknown instance", "code": 404}, status=404)
        return web.json_response({})

    async def _leader(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            while True:
                await resp.write(b": keepalive\n\n")
                await asyncio.sleep(5)
        return resp


@dataclass
class FakeCluster:
    discoverd: FakeDiscoverd
    hosts: dict[str, FakeHost]
    aggregator: AggregatorHandle = field(default_factory=AggregatorHandle)  # the real log API

    @classmethod
    async def start(cls, host_ids: tuple[str, ...] = ("host1", "host2")) -> FakeCluster:
        disc = FakeDiscoverd()
        disc.runner, disc.url = await _serve(disc.app())
        hosts: dict[str, FakeHost] = {}
        for hid in host_ids:
            host = FakeHost(hid)
            host.runner, host.url = await _serve(host.app())
            hosts[hid] = host
            addr = host.url.removeprefix("http://")
            disc.instances.setdefault("flynn-host", {})[hid] = {
                "id": hid,
                "addr": addr,
                "proto": "tcp",
                "meta": {"id": hid},
            }
        cluster = cls(disc, hosts)
        await cluster.aggregator.start()
        disc.instances.setdefault("logaggregator", {})["agg1"] = cluster.aggregator.instance()
        return cluster

    def remove_host(self, host_id: str) -> None:
        """The host's discoverd instance expires (as when it is lost)."""
        self.discoverd.instances.get("flynn-host", {}).pop(host_id, None)

    async def stop(self) -> None:
        await self.aggregator.stop()
        for runner in [self.discoverd.runner, *(h.runner for h in self.hosts.values())]:
            if runner is not None:
                await runner.cleanup()


# -- a fake scheduler ----------------------------------------------------------------------------


class FakeScheduler:
    """Brings formations to life the way the real scheduler reports them, through the API.

    Every ``interval`` it reads ``GET /formations?active=true`` and, per (app, release, type),
    starts missing jobs (reported ``starting`` then ``up``) and stops extra ones (``down``); jobs
    of releases in ``crash_releases`` are reported ``crashed`` instead of ``up`` (and replaced, as
    the real scheduler restarts them). Jobs of releases no formation wants are reported ``down``.
    """

    def __init__(self, handle: ControllerHandle, interval: float = 0.05, host_id: str = "host1") -> None:
        self.handle = handle
        self.interval = interval
        self.host_id = host_id
        self.crash_releases: set[str] = set()
        self.hold_releases: set[str] = set()  # jobs of these stay "starting" (never up)
        self.live: dict[str, dict[str, Any]] = {}  # job id -> {app, release, type, state}
        self._future: concurrent.futures.Future[None] | None = None
        self.reports = 0

    def start(self) -> FakeScheduler:
        if self._future is None:
            self._future = self.handle.loop.submit(self._loop())
        return self

    def stop(self) -> None:
        if self._future is not None:
            self._future.cancel()
            self._future = None

    async def _loop(self) -> None:
        async with aiohttp.ClientSession(
            base_url=self.handle.url, headers=self.handle.auth_header()
        ) as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError, APIError, KeyError, TimeoutError):
                    await self.reconcile(session)
                await asyncio.sleep(self.interval)

    async def _report(
        self, session: aiohttp.ClientSession, job_id: str, info: dict[str, Any], state: str
    ) -> None:
        body = {"release_id": info["release"], "type": info["type"], "state": state, "args": ["fake"]}
        async with session.put(f"/apps/{info['app']}/jobs/{job_id}", json=body) as resp:
            if resp.status >= 400:
                raise APIError(resp.status, await resp.text())
        info["state"] = state
        self.reports += 1

    async def reconcile(self, session: aiohttp.ClientSession) -> None:
        async with session.get("/formations", params={"active": "true"}) as resp:
            forms = await resp.json()
        wanted: dict[tuple[str, str, str], int] = {}
        for f in forms:
            for ptype, count in f["processes"].items():
                wanted[(f["app"]["id"], f["release"]["id"], ptype)] = count
        for job_id, info in list(self.live.items()):
            key = (info["app"], info["release"], info["type"])
            if info["state"] in ("crashed", "down"):
                del self.live[job_id]
                continue
            if wanted.get(key, 0) <= 0:
                await self._report(session, job_id, info, "down")
                del self.live[job_id]
        for key, count in wanted.items():
            jobs = [j for j, i in self.live.items() if (i["app"], i["release"], i["type"]) == key]
            for job_id in jobs[count:]:
                await self._report(session, job_id, self.live.pop(job_id), "down")
            for _ in range(count - len(jobs)):
                job_id = f"{self.host_id}-{uuid.uuid4()}"
                info = {"app": key[0], "release": key[1], "type": key[2], "state": "pending"}
                self.live[job_id] = info
                await self._report(session, job_id, info, "starting")
            for job_id in [j for j, i in self.live.items() if (i["app"], i["release"], i["type"]) == key]:
                info = self.live[job_id]
                if info["state"] != "starting" or key[1] in self.hold_releases:
                    continue
                await self._report(
                    session, job_id, info, "crashed" if key[1] in self.crash_releases else "up"
                )


# -- the controller ------------------------------------------------------------------------------


@dataclass
class ControllerHandle:
    """A running controller. ``url``, ``key``, ``db_url``; ``cluster`` holds the fake hosts."""

    url: str
    key: str
    db_url: str
    loop: LoopThread
    controller: Controller
    cluster: FakeCluster
    scheduler: FakeScheduler = field(init=False)

    def __post_init__(self) -> None:
        self.scheduler = FakeScheduler(self)

    @property
    def hosts(self) -> dict[str, FakeHost]:
        return self.cluster.hosts

    def client(self, key: str | None = None, timeout: float = 10.0) -> Client:
        return Client(self.url, key=self.key if key is None else key, timeout=timeout)

    def auth_header(self, key: str | None = None) -> dict[str, str]:
        token = base64.b64encode(f":{self.key if key is None else key}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the controller's loop (e.g. to poke its internals)."""
        return self.loop.run(coro, timeout)

    # helpers that do what other components would do, through the API

    def make_release(
        self,
        app: str,
        *,
        processes: dict[str, list[str]] | None = None,
        env: dict[str, str] | None = None,
        artifact_uri: str | None = "https://example.com/slug.tgz",
        key: str | None = None,
    ) -> dict[str, Any]:
        api = self.client(key)
        artifacts = []
        if artifact_uri:
            artifacts.append(api.post("/artifacts", {"type": "tarball", "uri": artifact_uri})["id"])
        procs = {t: {"args": args} for t, args in (processes or {"web": ["python3", "app.py"]}).items()}
        return dict(
            api.post(
                "/releases", {"app_id": app, "artifacts": artifacts, "env": env or {}, "processes": procs}
            )
        )

    def report_job(
        self,
        app: str,
        release_id: str,
        ptype: str,
        state: str,
        job_id: str | None = None,
        host_id: str = "host1",
        **fields: Any,
    ) -> dict[str, Any]:
        """``PUT /apps/:app/jobs/:id`` as the scheduler reports a job; returns the job."""
        job_id = job_id or f"{host_id}-{uuid.uuid4()}"
        body = {"release_id": release_id, "type": ptype, "state": state, **fields}
        return dict(self.client().put(f"/apps/{app}/jobs/{job_id}", body))

    def wait_for(
        self, what: str, check: Callable[[], Any], timeout: float = 20, interval: float = 0.05
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def wait_deployment(self, deployment_id: str, timeout: float = 30) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            dep = self.client().get(f"/deployments/{deployment_id}")
            return dict(dep) if dep["status"] in ("complete", "failed") else None

        return dict(self.wait_for(f"deployment {deployment_id}", done, timeout))

    def stop(self) -> None:
        self.scheduler.stop()
        with contextlib.suppress(Exception):
            self.loop.run(self.controller.stop(), timeout=30)


class Controllers:
    """Starts controllers (each on its own loop thread) and stops them all at teardown."""

    def __init__(self, pg: PostgresServer) -> None:
        self.pg = pg
        self.handles: list[ControllerHandle] = []
        self._dbs: list[str] = []

    def start(
        self,
        db_url: str | None = None,
        keys: tuple[str, ...] = (KEY,),
        hosts: tuple[str, ...] = ("host1", "host2"),
        **config: Any,
    ) -> ControllerHandle:
        if db_url is None:
            name = f"t_{uuid.uuid4().hex[:12]}"
            db_url = self.pg.create_database(name)
            self._dbs.append(name)
        loop = LoopThread()
        try:
            cluster = loop.run(FakeCluster.start(hosts))
            cfg = ControllerConfig(
                database_url=db_url,
                auth_keys=keys,
                listen_ip="127.0.0.1",
                port=0,
                discoverd_urls=[cluster.discoverd.url],
                pool_size=5,
            )
            cfg = replace(cfg, **config)

            async def boot() -> Controller:
                ctl = Controller(cfg, discoverd=DiscoverdClient([cluster.discoverd.url], retry_for=1.0))
                await ctl.start(db_timeout=20)
                return ctl

            ctl = loop.run(boot())
        except BaseException:
            loop.stop()
            raise
        handle = ControllerHandle(f"http://127.0.0.1:{ctl.port}", keys[0], db_url, loop, ctl, cluster)
        self.handles.append(handle)
        return handle

    def stop_all(self) -> None:
        for handle in reversed(self.handles):
            handle.stop()
            with contextlib.suppress(Exception):
                handle.loop.run(handle.cluster.stop(), timeout=10)
            handle.loop.stop()
        self.handles.clear()
        for name in self._dbs:
            with contextlib.suppress(Exception):
                self.pg.drop_database(name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with PostgresServer() as pg:
        yield pg


@pytest.fixture
def controllers(pg_server: PostgresServer) -> Iterator[Controllers]:
    ctls = Controllers(pg_server)
    try:
        yield ctls
    finally:
        ctls.stop_all()


@pytest.fixture
def controller(controllers: Controllers) -> ControllerHandle:
    return controllers.start()


async def gather_bounded(coros: list[Awaitable[T]], limit: int = 8) -> list[T]:
    """Await coroutines with at most ``limit`` in flight (for load in tests)."""
    sem = asyncio.Semaphore(limit)

    async def one(c: Awaitable[T]) -> T:
        async with sem:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))
