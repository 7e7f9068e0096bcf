"""The router's control plane against real parts: a real controller on a real PostgreSQL
(tests.unit.controller_fixtures), a real discoverd node (tests.unit.discoverd_local), the real
data plane and real backends; requests made with curl and openssl. Routes added, changed and
removed through the controller's API, and backends registered and deregistered in discoverd, take
effect without any restart."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from flynn.common.errors import ConfigError
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.discoverd.client import Registration
from flynn.router.controlplane import ControlPlane
from flynn.router.routes import HTTPRoute, RouteTable, TCPRoute
from flynn.router.routesync import RouteSync, backend_key, to_route
from flynn.router.server import Router
from flynn.router.settings import DaemonSettings
from flynn.router.status import combine
from flynn.router.tls import CertStore
from tests.unit.discoverd_local import LocalCluster, free_port_pair
from tests.unit.router_helpers import (
    CA,
    LOCAL,
    TCPEcho,
    backends,
    curl,
    make_ca,
    on_uvloop,
    router_config,
    run,
    start_backend,
)

if TYPE_CHECKING:
    from tests.unit.controller_fixtures import ControllerHandle, Controllers

pytest_plugins = ("tests.unit.controller_fixtures",)
T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


def free_route_port() -> int:
    """A TCP route port (3000-3500) nothing listens on here."""
    for port in range(3000, 3501):
        with socket.socket() as s:
            try:
                s.bind((LOCAL, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 3000-3500")


async def call(fn: Callable[..., T], *args: Any) -> T:
    """A blocking controller call, off the loop the router runs on."""
    return await asyncio.to_thread(fn, *args)


async def eventually(check: Callable[[], Any], what: str, limit: float = 10.0) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Env:
    controller: ControllerHandle
    discoverd: LocalCluster
    client: DiscoverdClient
    router: Router
    plane: ControlPlane
    certs: CertStore
    registrations: list[Registration] = field(default_factory=list)

    @property
    def api(self) -> Any:
        return self.controller.client()

    async def register(self, service: str, addr: str) -> Registration:
        reg = await self.client.register(service, addr, interval=0.5)
        self.registrations.append(reg)
        return reg

    async def deregister(self, reg: Registration) -> None:
        await reg.close()
        self.registrations.remove(reg)

    async def get(
        self, host: str, path: str = "/", *, tls: bool = False, extra: tuple[str, ...] = ()
    ) -> tuple[int, Any]:
        """(status, body JSON or text) of a request through the router for ``host``."""
        port = self.router.https_ports[0] if tls else self.router.http_ports[0]
        scheme = "https" if tls else "http"
        r = await curl(
            "-k",
            "-w",
            "\n%{http_code}",
            "--resolve",
            f"{host}:{port}:{LOCAL}",
            *extra,
            f"{scheme}://{host}:{port}{path}",
        )
        body, _, code = r.text.rpartition("\n")
        try:
            return int(code), json.loads(body)
        except ValueError:
            return int(code or 0), body

    async def backend_of(self, host: str, path: str = "/") -> str | None:
        code, body = await self.get(host, path)
        return body["backend"] if code == 200 and isinstance(body, dict) else None


@contextlib.asynccontextmanager
async def environment(
    controller: ControllerHandle, tmp_path: Path, *, via_discoverd: bool = True, key: str | None = None
) -> AsyncIterator[Env]:
    raft_port, http_port = free_port_pair()
    cluster = LocalCluster(tmp_path / "discoverd", raft_port, http_port, ttl=3.0)
    await cluster.start(1)
    client = DiscoverdClient(cluster.urls(), retry_for=5)
    certs = CertStore()
    router = Router(RouteTable(), router_config(), certs)
    await router.start()
    settings = DaemonSettings(
        controller_key=key or controller.key,
        controller_url=None if via_discoverd else controller.url,
        discoverd_urls=tuple(cluster.urls()),
        addr=LOCAL,
    )
    plane = ControlPlane(router.table, settings, certs=certs, retry_after=0.2)
    env = Env(controller, cluster, client, router, plane, certs)
    try:
        if via_discoverd:  # the controller, as its daemon registers itself
            await env.register("controller", controller.url.removeprefix("http://"))
        await plane.start()
        yield env
    finally:
        await plane.close()
        await router.stop()
        for reg in list(env.registrations):
            with contextlib.suppress(Exception):
                await reg.close()
        await client.close()
        await cluster.stop()


def test_to_route_conversions() -> None:
    http = to_route(
        {
            "id": "http/1",
            "type": "http",
            "service": "a-web",
            "domain": "a.example.com",
            "path": "/api",
            "sticky": True,
            "leader": False,
            "https_redirect": True,
            "certificate": {"id": "x", "cert": "C"},  # an event's route: no key, so no certificate
        }
    )
    assert isinstance(http, HTTPRoute)
    assert (http.id, http.service, http.domain, http.path, http.sticky, http.https_redirect) == (
        "http/1",
        "a-web",
        "a.example.com",
        "/api",
        True,
        True,
    )
    assert http.tls_cert is None
    leader = to_route({"id": "http/2", "type": "http", "service": "a-web", "domain": "b.com", "leader": True})
    assert leader.service == "a-web@leader" == backend_key("a-web", True)
    tcp = to_route({"id": "tcp/3", "type": "tcp", "service": "db", "port": 3001, "leader": True})
    assert isinstance(tcp, TCPRoute)
    assert (tcp.port, tcp.service, tcp.id) == (3001, "db@leader", "tcp/3")
    for bad in ({"id": "x", "type": "udp", "service": "s"}, {"id": "x", "type": "http", "service": "s"}):
        with pytest.raises((KeyError, ValueError)):
            to_route(bad)


def test_replace_all_keeps_routes_it_does_not_own() -> None:
    table = RouteTable()
    table.add_http_route("static.example.com", "static")  # e.g. from --routes

    async def no_client() -> Any:
        raise AssertionError("not used")

    sync = RouteSync(table, no_client)
    doc = {"id": "http/a", "type": "http", "service": "a-web", "domain": "a.example.com"}
    sync.replace_all([doc, {"id": "bad", "type": "http", "service": "s", "domain": "not a domain"}])
    assert sorted(r.id for r in table.routes()) == ["http/a", "http:static.example.com/"]
    sync.replace_all([])
    assert [r.id for r in table.routes()] == ["http:static.example.com/"]


@on_uvloop
async def test_routes_and_backends_follow_controller_and_discoverd(
    controller: ControllerHandle, tmp_path: Path
) -> None:
    api = controller.client()
    api.post("/apps", {"name": "shop"})
    api.post("/apps/shop/routes", {"type": "http", "domain": "shop.example.com"})
    async with (
        backends("b1", "b2", "b3", "api1") as (b1, b2, b3, api1),
        environment(controller, tmp_path) as env,
    ):
        r1 = await env.register("shop-web", b1.addr)
        r2 = await env.register("shop-web", b2.addr)
        await eventually(lambda: env.plane.synced and len(env.router.table.backends("shop-web")) == 2, "sync")
        assert env.plane.finder is not None
        assert env.plane.finder.urls == [controller.url]  # found through discoverd
        seen = {await env.backend_of("shop.example.com") for _ in range(6)}
        assert seen == {"b1", "b2"}  # both backends, round robin
        assert (await env.get("nowhere.example.com"))[0] == 404

        # a new route with a path prefix and its own service: no restart
        route = await call(
            api.post,
            "/apps/shop/routes",
            {"type": "http", "domain": "shop.example.com", "path": "/v1", "service": "shop-api-web"},
        )
        await env.register("shop-api-web", api1.addr)
        assert (
            await eventually(lambda: env.backend_of("shop.example.com", "/v1/items"), "the /v1 route")
            == "api1"
        )
        assert await env.backend_of("shop.example.com", "/v2") in ("b1", "b2")

        # a backend deregistered: no new requests go there
        await env.deregister(r1)
        await eventually(lambda: env.router.table.backends("shop-web") == [b2.addr], "b1 removed")
        assert {await env.backend_of("shop.example.com") for _ in range(4)} == {"b2"}

        # a request in flight to a removed backend finishes
        slow = asyncio.ensure_future(env.get("shop.example.com", "/?sleep=1.5"))
        await eventually(lambda: b2.in_flight == 1, "the slow request at b2")
        await env.register("shop-web", b3.addr)
        await env.deregister(r2)
        await eventually(lambda: env.router.table.backends("shop-web") == [b3.addr], "b2 replaced by b3")
        assert await env.backend_of("shop.example.com") == "b3"
        code, body = await slow
        assert code == 200
        assert body["backend"] == "b2"

        # removing the route
        await call(api.delete, f"/apps/shop/routes/{route['id']}")
        await eventually(lambda: env.router.table.get_route(route["id"]) is None, "the route removed")
        assert await env.backend_of("shop.example.com", "/v1/items") == "b3"  # the root route now
        # deleting the app removes its routes
        await call(api.delete, "/apps/shop")
        await eventually(lambda: not env.router.table.routes(), "every route gone")
        assert (await env.get("shop.example.com"))[0] == 404
        assert env.plane.watches is not None
        assert env.plane.watches.services() == []  # no more watches


@on_uvloop
async def test_no_backend_is_503_then_served_when_one_registers(
    controller: ControllerHandle, tmp_path: Path
) -> None:
    api = controller.client()
    api.post("/apps", {"name": "empty"})
    api.post("/apps/empty/routes", {"type": "http", "domain": "empty.example.com"})
    async with backends("e1") as (e1,), environment(controller, tmp_path, via_discoverd=False) as env:
        await eventually(lambda: env.plane.synced, "sync")
        assert (await env.get("empty.example.com"))[0] == 503
        await env.register("empty-web", e1.addr)
        assert await eventually(lambda: env.backend_of("empty.example.com"), "e1 used") == "e1"


@on_uvloop
async def test_leader_routes_get_only_the_leader(controller: ControllerHandle, tmp_path: Path) -> None:
    api = controller.client()
    api.post("/apps", {"name": "db"})
    api.post(
        "/apps/db/routes",
        {"type": "http", "domain": "leader.example.com", "service": "db-web", "leader": True},
    )
    api.post("/apps/db/routes", {"type": "http", "domain": "all.example.com", "service": "db-web"})
    async with backends("l1", "l2") as (l1, l2), environment(controller, tmp_path) as env:
        first = await env.register("db-web", l1.addr)
        await env.register("db-web", l2.addr)
        await eventually(lambda: len(env.router.table.backends("db-web")) == 2, "both instances")
        await eventually(lambda: env.router.table.backends("db-web@leader") == [l1.addr], "the leader")
        assert {await env.backend_of("leader.example.com") for _ in range(4)} == {"l1"}
        assert {await env.backend_of("all.example.com") for _ in range(4)} == {"l1", "l2"}
        await env.deregister(first)  # the leader goes: the next one leads
        await eventually(lambda: env.router.table.backends("db-web@leader") == [l2.addr], "the new leader")
        assert {await env.backend_of("leader.example.com") for _ in range(3)} == {"l2"}


@on_uvloop
async def test_tcp_routes_open_and_close_their_port(controller: ControllerHandle, tmp_path: Path) -> None:
    api = controller.client()
    api.post("/apps", {"name": "echo"})
    port = free_route_port()
    echo = await TCPEcho("t1").start()
    try:
        async with environment(controller, tmp_path) as env:
            route = await call(
                api.post, "/apps/echo/routes", {"type": "tcp", "port": port, "service": "echo-tcp"}
            )
            await env.register("echo-tcp", f"{LOCAL}:{echo.port}")
            await eventually(lambda: env.router.table.backends("echo-tcp"), "the backend")
            await eventually(lambda: port in env.router.status()["listeners"]["tcp"], "the listener")
            reader, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(b"hello\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"t1:hello\n"
            writer.close()
            await call(api.delete, f"/apps/echo/routes/{route['id']}")
            await eventually(
                lambda: port not in env.router.status()["listeners"]["tcp"], "the listener closed"
            )
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(LOCAL, port)
    finally:
        await echo.stop()


async def served_subject(env: Env, ca: CA, server_name: str) -> str:
    argv = [
        "openssl",
        "s_client",
        "-connect",
        f"{LOCAL}:{env.router.https_ports[0]}",
        "-CAfile",
        str(ca.path),
    ]
    r = await run(*argv, "-servername", server_name, stdin=b"", limit=15)
    match = re.search(r"^subject=(.*)$", r.text, re.MULTILINE)
    assert match, r.text + r.err.decode()
    return match.group(1).strip()


@on_uvloop
async def test_certificates_by_sni_and_the_router_apps_default(
    controller: ControllerHandle, tmp_path: Path
) -> None:
    ca = make_ca(tmp_path)
    default = ca.issue("*.cluster.test")
    route_cert = ca.issue("secure.example.com")
    api = controller.client()
    api.post("/apps", {"name": "sec"})
    async with backends("s1") as (s1,), environment(controller, tmp_path) as env:
        env.certs.set_default(default.cert_pem, default.key_pem)
        await env.register("sec-web", s1.addr)
        route = await call(
            api.post,
            "/apps/sec/routes",
            {
                "type": "http",
                "domain": "secure.example.com",
                "certificate": {"cert": route_cert.cert_pem, "key": route_cert.key_pem},
            },
        )
        # the route's event has no key: the control plane reads the whole route back
        await eventually(lambda: "secure.example.com" in env.certs.domains(), "the route certificate")
        assert "secure.example.com" in await served_subject(env, ca, "secure.example.com")
        assert "*.cluster.test" in await served_subject(env, ca, "other.cluster.test")
        code, body = await env.get("secure.example.com", tls=True, extra=("--http2",))
        assert code == 200
        assert body["backend"] == "s1"

        # the router app's release sets the default certificate (flynn -a router env set TLSCERT=...)
        rotated = ca.issue("*.rotated.test")
        app = await call(api.post, "/apps", {"name": "router", "system": True})
        rel = await call(
            api.post,
            "/releases",
            {"app_id": "router", "env": {"TLSCERT": rotated.cert_pem, "TLSKEY": rotated.key_pem}},
        )
        await call(api.put, "/apps/router/release", {"id": rel["id"]})
        assert env.plane.sync is not None
        await eventually(
            lambda: env.plane.sync is not None and env.plane.sync.default_cert, "the new default"
        )
        assert env.plane.sync.router_app_id == app["id"]
        assert "*.rotated.test" in await served_subject(env, ca, "other.cluster.test")

        # the certificate removed from the route: the default one is served for its domain
        await call(api.put, f"/apps/sec/routes/{route['id']}", {"certificate": None})
        await eventually(lambda: "secure.example.com" not in env.certs.domains(), "the certificate removed")
        assert "*.rotated.test" in await served_subject(env, ca, "secure.example.com")


@on_uvloop
async def test_failover_to_another_controller_loses_no_change(
    controllers: Controllers, tmp_path: Path
) -> None:
    first = controllers.start()
    second = controllers.start(db_url=first.db_url)
    api1, api2 = first.client(), second.client()
    api1.post("/apps", {"name": "fo"})
    api1.post("/apps/fo/routes", {"type": "http", "domain": "a.example.com"})
    async with backends("f1") as (f1,), environment(first, tmp_path) as env:
        reg_first = env.registrations[0]
        await env.register("controller", second.url.removeprefix("http://"))
        await env.register("fo-web", f1.addr)
        await eventually(lambda: env.plane.synced, "sync")
        assert env.plane.sync is not None
        loads = env.plane.sync.loads
        # the controller the router follows goes away; changes are made through the other one
        await env.deregister(reg_first)
        await call(first.stop)
        await call(api2.post, "/apps/fo/routes", {"type": "http", "domain": "b.example.com"})
        await call(api2.post, "/apps/fo/routes", {"type": "http", "domain": "c.example.com"})
        for host in ("a.example.com", "b.example.com", "c.example.com"):
            assert await eventually(functools.partial(env.backend_of, host), host, limit=20) == "f1"
        assert env.plane.sync.loads == loads  # resumed with Last-Event-ID: no reload was needed


@on_uvloop
async def test_a_wrong_key_is_reported_and_nothing_is_routed(
    controller: ControllerHandle, tmp_path: Path
) -> None:
    api = controller.client()
    api.post("/apps", {"name": "k"})
    api.post("/apps/k/routes", {"type": "http", "domain": "k.example.com"})
    async with environment(controller, tmp_path, key="not-the-key") as env:
        assert env.plane.sync is not None
        await eventually(lambda: env.plane.sync is not None and env.plane.sync.errors > 0, "an error")
        status = env.plane.status()
        assert status["synced"] is False
        assert "key" in status["routes"]["last_error"]
        assert env.router.table.routes() == []


def worker_status(pid: int, requests: int, *, synced: bool = True, inflight: int = 0) -> dict[str, Any]:
    return {
        "pid": pid,
        "requests": requests,
        "responses_2xx": requests,
        "errors": 1,
        "uptime": 5.0 + pid,
        "routes": {"http": 2, "tcp": 1},
        "services": {"a-web": {"backends": ["10.0.0.1:1"], "ready": ["10.0.0.1:1"], "inflight": inflight}},
        "listeners": {"http": [80], "https": [443], "tcp": [3000]},
        "implementation": {"data_plane": "compiled", "reason": "mypyc build in /x"},
        "control_plane": {"synced": synced, "controllers": ["http://c"], "routes": {"last_event_id": 7}},
    }


def test_status_sums_the_workers() -> None:
    code, body = combine([worker_status(1, 10, inflight=2), worker_status(2, 5, inflight=1)], addr="10.0.0.9")
    assert code == 200
    assert body["status"] == "ok"
    assert body["addr"] == "10.0.0.9"
    assert body["workers"] == {"count": 2, "answered": 2, "pids": [1, 2]}
    assert (body["requests"], body["responses_2xx"], body["errors"]) == (15, 15, 2)
    assert body["uptime"] == 7.0
    assert body["routes"] == {"http": 2, "tcp": 1}
    assert body["services"]["a-web"]["inflight"] == 3
    assert body["control_plane"]["synced"] is True
    assert [w["last_event_id"] for w in body["control_plane"]["workers"]] == [7, 7]
    assert body["implementation"]["data_plane"] == "compiled"
    code, body = combine([worker_status(1, 1), None])
    assert (code, body["status"], body["workers"]["answered"]) == (503, "degraded", 1)
    code, body = combine([worker_status(1, 1), worker_status(2, 1, synced=False)])
    assert (code, body["status"]) == (503, "starting")
    code, body = combine([None])
    assert (code, body["status"]) == (503, "starting")
    plain = worker_status(1, 1)
    plain["control_plane"] = None  # no control plane (--routes): nothing to sync
    assert combine([plain])[0] == 200


def test_daemon_settings() -> None:
    s = DaemonSettings.from_env({})
    assert (s.control_plane, s.status_ip, s.status_port, s.addr) == (False, "127.0.0.1", 1230, None)
    s = DaemonSettings.from_env(
        {
            "CONTROLLER_KEY": "k",
            "ROUTER_ADDR": "10.0.0.5",
            "DISCOVERD": "http://10.0.0.5:1111,http://10.0.0.6:1111",
            "CLUSTER_DOMAIN": "Dev.Example.COM",
        }
    )
    assert s.control_plane
    assert (s.status_ip, s.addr, s.cluster_domain) == ("10.0.0.5", "10.0.0.5", "dev.example.com")
    assert s.discoverd_urls == ("http://10.0.0.5:1111", "http://10.0.0.6:1111")
    assert "k" not in repr(s)
    for env in (
        {"ROUTER_ADDR": "not-an-ip"},
        {"DISCOVERD": "ftp://x"},
        {"CONTROLLER_URL": "http://user:pw@c:1200"},
        {"ROUTER_STATUS_PORT": "70000"},
    ):
        with pytest.raises(ConfigError):
            DaemonSettings.from_env(env)


class RouterProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *args: str) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "flynn.router",
            *args,
            env={**os.environ, "PYTHONPATH": str(REPO / "services"), **self.env},
            stdout=self.log.open("wb"),
            stderr=asyncio.subprocess.STDOUT,
        )

    async def stop(self) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise


@on_uvloop
async def test_daemon_with_two_workers(controller: ControllerHandle, tmp_path: Path) -> None:
    api = controller.client()
    api.post("/apps", {"name": "two"})
    api.post("/apps/two/routes", {"type": "http", "domain": "two.example.com"})
    raft_port, disc_port = free_port_pair()
    cluster = LocalCluster(tmp_path / "discoverd", raft_port, disc_port, ttl=10.0)
    await cluster.start(1)
    http_port, status_port = free_port(), free_port()
    proc = RouterProcess(
        {
            "CONTROLLER_KEY": controller.key,
            "CONTROLLER_URL": controller.url,
            "DISCOVERD": cluster.urls()[0],
            "ROUTER_ADDR": LOCAL,
            "ROUTER_LISTEN_IP": LOCAL,
            "ROUTER_HTTP_PORTS": str(http_port),
            "ROUTER_HTTPS_PORTS": "none",
            "ROUTER_STATUS_PORT": str(status_port),
            "CLUSTER_DOMAIN": "example.com",
        },
        tmp_path / "router.log",
    )
    client = DiscoverdClient(cluster.urls(), retry_for=5)
    backend = await start_backend("w1")
    try:
        await client.register("two-web", backend.addr)
        await proc.start("--workers", "2")

        async def status() -> dict[str, Any] | None:
            r = await curl(f"http://{LOCAL}:{status_port}/status", limit=5)
            try:
                return dict(json.loads(r.out))
            except ValueError:
                return None

        ready = await eventually(lambda: _ok_status(status()), "the router's status to be ok", limit=30)
        assert ready["workers"]["count"] == 2
        assert ready["workers"]["answered"] == 2
        assert ready["control_plane"]["synced"] is True
        assert ready["cluster_domain"] == "example.com"
        for _ in range(10):
            r = await curl("-H", "Host: two.example.com", f"http://{LOCAL}:{http_port}/")
            assert json.loads(r.out)["backend"] == "w1"
        after = await status()
        assert after is not None
        assert after["requests"] == 10  # summed over both workers
        assert after["responses_2xx"] == 10
        assert after["services"]["two-web"]["backends"] == [backend.addr]

        async def registered() -> list[dict[str, Any]]:
            return [i for i in await client.instances("router-http") if i["addr"] == f"{LOCAL}:{http_port}"]

        (inst,) = await eventually(registered, "router-http in discoverd")
        assert inst["meta"]["status"] == f"{LOCAL}:{status_port}"
        assert await proc.stop() == 0
        assert await registered() == []  # deregistered when it stops
    finally:
        await proc.stop()
        await backend.runner.cleanup()
        await client.close()
        await cluster.stop()
    log = (tmp_path / "router.log").read_text()
    assert controller.key not in log


async def _ok_status(pending: Any) -> dict[str, Any] | None:
    body = await pending
    return body if body and body.get("status") == "ok" else None


@on_uvloop
async def test_cli_adds_the_cluster_by_domain_through_the_router(
    controller: ControllerHandle, tmp_path: Path
) -> None:
    """``flynn cluster add -p PIN NAME DOMAIN KEY`` reaches https://controller.DOMAIN: the router
    terminates TLS with the cluster certificate (pinned) and proxies to the controller, found by
    its route; the name is resolved through FLYNN_RESOLVE, nothing of the machine is changed."""
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca = make_ca(tmp_path)
    cluster_cert = ca.issue("*.example.test", "example.test")
    der = x509.load_pem_x509_certificate(cluster_cert.cert_pem.encode()).public_bytes(
        serialization.Encoding.DER
    )
    pin = base64.b64encode(hashlib.sha256(der).digest()).decode()
    api = controller.client()
    api.post("/apps", {"name": "controller", "system": True})
    api.post(
        "/apps/controller/routes",
        {"type": "http", "domain": "controller.example.test", "service": "controller"},
    )
    async with environment(controller, tmp_path) as env:  # registers the controller in discoverd
        env.certs.set_default(cluster_cert.cert_pem, cluster_cert.key_pem)
        await eventually(lambda: env.router.table.backends("controller"), "the controller's backend")
        rc = tmp_path / "flynnrc"
        base_env = {**os.environ, "FLYNNRC": str(rc), "FLYNN_RESOLVE": f"controller.example.test:{LOCAL}"}
        domain = f"example.test:{env.router.https_ports[0]}"
        flynn = str(Path(sys.executable).with_name("flynn"))

        async def cli(*args: str, extra: dict[str, str] | None = None) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                flynn,
                *args,
                env={**base_env, **(extra or {})},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert controller.key not in out.decode()
            return proc.returncode or 0, out.decode()

        wrong_pin = base64.b64encode(b"x" * 32).decode()
        code, out = await cli("cluster", "add", "-p", wrong_pin, "default", domain, controller.key)
        assert code == 1
        assert "did not match the provided pin" in out
        assert not rc.exists()
        code, out = await cli("cluster", "add", "-p", pin, "default", domain, controller.key)
        assert code == 0, out
        assert f"https://controller.{domain}" in rc.read_text()
        code, out = await cli("apps")
        assert code == 0, out
        assert "controller" in out
        code, out = await cli("-a", "controller", "route")
        assert "https:controller.example.test" not in out  # no route certificate: listed as http
        assert "http:controller.example.test" in out
        code, out = await cli("apps", extra={"FLYNN_RESOLVE": "controller.example.test"})
        assert code == 1
        assert "FLYNN_RESOLVE" in out


@on_uvloop
async def test_status_channel_between_parent_and_worker() -> None:
    from flynn.router.workers import StatusChannel, answer_status

    # the real worker end: each query answered with a fresh status; the parent leaving stops it
    parent_sock, child_sock = socket.socketpair()
    calls = 0

    def status() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"calls": calls}

    gone = asyncio.Event()
    worker = asyncio.ensure_future(answer_status(child_sock, status, gone.set))
    channel = StatusChannel(parent_sock)
    assert await channel.query() == {"calls": 1}
    assert await channel.query() == {"calls": 2}
    channel.close()
    await asyncio.wait_for(gone.wait(), 5)  # the worker learns that its parent went away
    await worker

    # a late answer (to a query that timed out) is skipped by its sequence number
    parent_sock, child_sock = socket.socketpair()
    channel = StatusChannel(parent_sock)
    reader, writer = await asyncio.open_connection(sock=child_sock)
    pending = asyncio.ensure_future(channel.query())
    assert await asyncio.wait_for(reader.readline(), 5) == b"1\n"
    writer.write(b'{"seq": 0, "status": {"stale": true}}\n{"seq": 1, "status": {"fresh": true}}\n')
    assert await asyncio.wait_for(pending, 5) == {"fresh": True}
    writer.close()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(channel.query(), 5)
    channel.close()


@on_uvloop
async def test_the_controller_key_follows_the_router_app(controllers: Controllers, tmp_path: Path) -> None:
    """Seed 000's key rotation: ``flynn -a router env set CONTROLLER_KEY=NEW`` while the controller
    accepts both keys; the routers switch without a restart and keep working once the old key is
    gone. A key the controller refuses is dropped for the one used before."""
    from flynn.common.errors import APIError
    from tests.unit.controller_fixtures import KEY

    new = "rotated-controller-key-0123456789"
    handle = controllers.start(keys=(KEY, new))
    api = handle.client()
    api.post("/apps", {"name": "router", "system": True})

    def router_env(env: dict[str, str]) -> None:
        rel = api.post("/releases", {"app_id": "router", "env": env})
        api.put("/apps/router/release", {"id": rel["id"]})

    async with environment(handle, tmp_path) as env:
        await eventually(lambda: env.plane.synced, "sync")
        assert env.plane.finder is not None
        finder = env.plane.finder

        async def accepted() -> bool:
            """The key the control plane uses now is accepted (False: refused with 401)."""
            try:
                await (await finder.client()).all_routes()
            except APIError as exc:
                if exc.status != 401:
                    raise
                return False
            return True

        await call(router_env, {"CONTROLLER_KEY": "mistyped-key-0000000000"})
        await eventually(lambda: _not(accepted()), "the router to use the mistyped key")
        finder.next_key()  # what the route sync does on a 401
        assert await accepted()
        await call(router_env, {"CONTROLLER_KEY": "mistyped-key-0000000000", "OTHER": "1"})
        await asyncio.sleep(1)
        assert await accepted()  # the refused key is not taken up again

        await call(router_env, {"CONTROLLER_KEY": new})
        await asyncio.sleep(0.5)
        # the controller drops the old key (its system app's AUTH_KEY, as in seed 000)
        api.post("/apps", {"name": "controller", "system": True})
        rel = api.post("/releases", {"app_id": "controller", "env": {"AUTH_KEY": new}})
        api.put("/apps/controller/release", {"id": rel["id"]})
        await eventually(lambda: _refused(handle, KEY), "the old key to be refused")
        assert await accepted()
        fresh = handle.client(key=new)
        await call(fresh.post, "/apps", {"name": "after"})
        await call(fresh.post, "/apps/after/routes", {"type": "http", "domain": "after.example.com"})
        await eventually(
            lambda: any(getattr(r, "domain", "") == "after.example.com" for r in env.router.table.routes()),
            "a route made after the rotation",
        )


async def _not(pending: Any) -> bool:
    return not await pending


def _refused(handle: ControllerHandle, key: str) -> bool:
    from flynn.common.errors import APIError

    try:
        handle.client(key=key).get("/apps")
    except APIError as exc:
        return exc.status == 401
    return False
