"""Route table, backends and header helpers of the router: pure logic, no sockets."""

from __future__ import annotations

import asyncio

import pytest

from flynn.router.backends import parse_addr, sticky_token
from flynn.router.config import RouterConfig
from flynn.router.headers import cookie_value, https_location, normalize_host
from flynn.router.routes import HTTPRoute, RouteEvent, RouteTable, TCPRoute
from flynn.router.upstream import fields_to_pairs
from tests.unit.router_helpers import on_uvloop


def table_with(*routes: tuple[str, str, str]) -> RouteTable:
    table = RouteTable()
    for domain, path, service in routes:
        table.add_http_route(domain, service, path=path)
    return table


def svc(table: RouteTable, host: str, path: str = "/") -> str | None:
    route = table.lookup(host.encode(), path.encode())
    return None if route is None else route.service


def test_exact_domain_beats_wildcard_and_wildcards_go_from_specific_to_general() -> None:
    table = table_with(
        ("example.com", "/", "apex"),
        ("*.example.com", "/", "wild"),
        ("*.b.example.com", "/", "wild-b"),
        ("a.example.com", "/", "exact-a"),
    )
    assert svc(table, "example.com") == "apex"
    assert svc(table, "a.example.com") == "exact-a"
    assert svc(table, "z.example.com") == "wild"
    assert svc(table, "x.y.example.com") == "wild"
    assert svc(table, "x.b.example.com") == "wild-b"
    assert svc(table, "b.example.com") == "wild"  # *.b.example.com needs a label before b
    assert svc(table, "example.org") is None
    assert svc(table, "notexample.com") is None


def test_longest_path_prefix_wins_on_segment_boundaries() -> None:
    table = table_with(
        ("app.test", "/", "root"),
        ("app.test", "/api", "api"),
        ("app.test", "/api/v2/", "v2"),
    )
    assert svc(table, "app.test", "/") == "root"
    assert svc(table, "app.test", "/api") == "api"
    assert svc(table, "app.test", "/api/x") == "api"
    assert svc(table, "app.test", "/api?q=1") == "api"
    assert svc(table, "app.test", "/apix") == "root"
    assert svc(table, "app.test", "/api/v2") == "v2"
    assert svc(table, "app.test", "/api/v2/users") == "v2"
    assert svc(table, "app.test", "/api/v20") == "api"


def test_domain_without_matching_path_falls_through_to_wildcard() -> None:
    table = table_with(("a.test", "/only", "only"), ("*.test", "/", "wild"))
    assert svc(table, "a.test", "/only/x") == "only"
    assert svc(table, "a.test", "/other") == "wild"


def test_set_replace_and_remove_routes_take_effect_at_once() -> None:
    table = RouteTable()
    events: list[RouteEvent] = []
    table.subscribe(events.append)
    r1 = table.add_http_route("a.test", "one")
    assert svc(table, "a.test") == "one"
    r2 = table.add_http_route("A.Test.", "two")  # same place (normalized): replaces
    assert r2.id == r1.id
    assert svc(table, "a.test") == "two"
    assert len([r for r in table.routes() if isinstance(r, HTTPRoute)]) == 1
    assert table.remove_route(r1.id) is not None
    assert svc(table, "a.test") is None
    tcp = table.set_tcp_route(3001, "db")
    assert table.tcp_route(3001) == tcp
    assert table.remove_route(tcp.id) == tcp
    assert table.tcp_route(3001) is None
    assert [(e.kind, e.route.kind) for e in events] == [
        ("set", "http"),
        ("set", "http"),
        ("removed", "http"),
        ("set", "tcp"),
        ("removed", "tcp"),
    ]


@pytest.mark.parametrize("domain", ["", "a b.test", "*.", "*.*.x", "a/b", "bücher.de", "x:80"])
def test_bad_domains_are_refused(domain: str) -> None:
    with pytest.raises(ValueError, match="domain"):
        HTTPRoute(domain=domain, service="s")


def test_bad_routes_are_refused() -> None:
    with pytest.raises(ValueError, match="path"):
        HTTPRoute(domain="a.test", service="s", path="api")
    with pytest.raises(ValueError, match="service"):
        HTTPRoute(domain="a.test", service="")
    with pytest.raises(ValueError, match="together"):
        HTTPRoute(domain="a.test", service="s", tls_cert="x")
    with pytest.raises(ValueError, match="port"):
        TCPRoute(port=70000, service="s")


def test_round_robin_spreads_and_skips_draining_and_refused() -> None:
    table = RouteTable()
    table.set_backends("web", ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])
    service = table.service("web")
    picks = [service.pick(0.0).key for _ in range(6)]  # type: ignore[union-attr]
    assert sorted(picks) == sorted(["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"] * 2)
    b2 = service.get("10.0.0.2:80")
    assert b2 is not None
    b2.down_until = 100.0  # its connect failed: skipped while others are up
    assert {service.pick(50.0).key for _ in range(6)} == {"10.0.0.1:80", "10.0.0.3:80"}  # type: ignore[union-attr]
    assert {service.pick(150.0).key for _ in range(6)} == {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}  # type: ignore[union-attr]


def test_set_backends_adds_and_removes() -> None:
    table = RouteTable()
    table.set_backends("web", ["10.0.0.1:80", ("10.0.0.2", 80)])
    assert table.backends("web") == ["10.0.0.1:80", "10.0.0.2:80"]
    table.set_backends("web", ["10.0.0.2:80", "[::1]:8080"])
    assert table.backends("web") == ["10.0.0.2:80", "[::1]:8080"]
    table.remove_backend("web", "10.0.0.2:80")
    assert table.backends("web") == ["[::1]:8080"]
    with pytest.raises(ValueError, match="host:port"):
        table.set_backends("web", ["nonsense"])
    assert parse_addr("[::1]:8080") == ("::1", 8080)


@on_uvloop
async def test_drain_waits_for_in_flight_then_resolves() -> None:
    table = RouteTable()
    table.set_backends("web", ["10.0.0.1:80", "10.0.0.2:80"])
    service = table.service("web")
    b1 = service.get("10.0.0.1:80")
    assert b1 is not None
    b1.acquire()
    b1.acquire()
    called: list[tuple[str, str]] = []
    fut = table.drain("web", "10.0.0.1:80", callback=lambda s, a: called.append((s, a)))
    assert [b.key for b in service.ready] == ["10.0.0.2:80"]  # no new requests
    await asyncio.sleep(0)
    assert not fut.done()
    b1.release()
    assert not fut.done()
    b1.release()
    await asyncio.wait_for(fut, 1)
    assert called == [("web", "10.0.0.1:80")]
    assert table.backends("web") == ["10.0.0.1:80", "10.0.0.2:80"]  # kept (unused) until removed
    idle_fut = table.drain("web", "10.0.0.2:80")
    assert idle_fut.done()  # nothing in flight: at once
    assert service.pick(0.0) is None


def test_sticky_tokens_are_stable_and_distinct() -> None:
    assert sticky_token("10.0.0.1:80") == sticky_token("10.0.0.1:80")
    assert sticky_token("10.0.0.1:80") != sticky_token("10.0.0.2:80")
    table = RouteTable()
    table.set_backends("web", ["10.0.0.1:80", "10.0.0.2:80"])
    service = table.service("web")
    backend = service.by_token(sticky_token("10.0.0.2:80"))
    assert backend is not None
    assert backend.key == "10.0.0.2:80"
    assert service.by_token(b"forged") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Example.COM", b"example.com"),
        (b"example.com:8080", b"example.com"),
        (b"example.com.", b"example.com"),
        (b"[::1]:80", b"[::1]"),
        (b"127.0.0.1:18080", b"127.0.0.1"),
        (b"bad/host", None),
        (b"a:b", None),
        (b"user@host", None),
        (b"", None),
    ],
)
def test_normalize_host(raw: bytes, expected: bytes | None) -> None:
    assert normalize_host(raw) == expected


def test_small_header_helpers() -> None:
    assert cookie_value([b"a=1; _backend=tok; c=3"], b"_backend") == b"tok"
    assert cookie_value([b"a=1", b"_backend=x"], b"_backend") == b"x"
    assert cookie_value([b"x_backend=no"], b"_backend") is None
    assert https_location(b"a.test:80", b"/p?q") == b"https://a.test/p?q"
    assert https_location(b"[::1]:80", b"/") == b"https://[::1]/"
    assert fields_to_pairs(b"\r\nContent-Type: text/plain\r\nX-A:  b ") == (
        (b"content-type", b"text/plain"),
        (b"x-a", b"b"),
    )


def test_config_from_env_and_tick() -> None:
    cfg = RouterConfig.from_env({"ROUTER_HTTP_PORTS": "8080,8081", "ROUTER_HEADER_TIMEOUT": "0.4"})
    assert cfg.http_ports == (8080, 8081)
    assert cfg.header_timeout == 0.4
    assert cfg.tick == pytest.approx(0.1)
    with pytest.raises(Exception, match="ROUTER_HTTP_PORTS"):
        RouterConfig.from_env({"ROUTER_HTTP_PORTS": "80,x"})
