"""The route table: HTTP routes by domain and path prefix, TCP routes by port, service backends.

This is the whole interface between the data plane and the control plane. The control plane (a
later part of issue 6) drives it from the controller's route events and discoverd's service
watches; the data plane reads it on every request. Every change takes effect for the next
request; nothing is restarted or reloaded. Nothing here is persistent.

HTTP matching: the request's host (lower-cased, port and trailing dot dropped) is looked up
exactly first, then against wildcard routes ``*.suffix`` from the most specific suffix to the
least (``*.example.com`` matches ``a.example.com`` and ``a.b.example.com``, not ``example.com``).
Within a domain the longest path prefix wins, on a segment boundary (``/api`` matches ``/api``,
``/api/x`` and ``/api?q``, not ``/apix``); the root route ``/`` matches anything left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flynn.router.backends import Addr, DrainCallback, Service

_SLASH = 0x2F
_QMARK = 0x3F


def normalize_domain(domain: str) -> str:
    d = domain.strip().lower().rstrip(".")
    if not d:
        raise ValueError("empty domain")
    body = d[2:] if d.startswith("*.") else d
    if not d.isascii():
        raise ValueError(f"domain {domain!r} is not ASCII (use its IDNA form, xn--...)")
    if not body or "*" in body or any(c in body for c in " /:@\t\r\n") or body.startswith("."):
        raise ValueError(f"invalid domain {domain!r} (exact, or *.suffix for a wildcard)")
    return d


def normalize_path(path: str) -> str:
    if not path or path == "/":
        return "/"
    if not path.startswith("/") or any(c in path for c in "?# \t\r\n"):
        raise ValueError(f"invalid path prefix {path!r} (must start with /)")
    return path.rstrip("/") or "/"


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    """Requests for ``domain`` (+ optional ``path`` prefix) go to the backends of ``service``."""

    domain: str
    service: str
    path: str = "/"
    id: str = ""
    sticky: bool = False  # pin a client to a backend with a cookie
    https_redirect: bool = False  # answer plain-HTTP requests with a redirect to https://
    tls_cert: str | None = None  # PEM chain served for ``domain`` (SNI); default cert otherwise
    tls_key: str | None = None
    leader: bool = False  # informational: the control plane feeds only discoverd's leader
    prefix: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        domain = normalize_domain(self.domain)
        path = normalize_path(self.path)
        object.__setattr__(self, "domain", domain)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "prefix", b"" if path == "/" else path.encode())
        if not self.id:
            object.__setattr__(self, "id", f"http:{domain}{path}")
        if not self.service:
            raise ValueError("route has no service")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")

    @property
    def kind(self) -> str:
        return "http"


@dataclass(frozen=True, slots=True)
class TCPRoute:
    """Connections to ``port`` are spliced to the backends of ``service``."""

    port: int
    service: str
    id: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"TCP route port {self.port} is outside 1-65535")
        if not self.service:
            raise ValueError("route has no service")
        if not self.id:
            object.__setattr__(self, "id", f"tcp:{self.port}")

    @property
    def kind(self) -> str:
        return "tcp"


Route = HTTPRoute | TCPRoute


@dataclass(frozen=True, slots=True)
class RouteEvent:
    """Told to subscribers after a change: ``kind`` is "set" or "removed"."""

    kind: str
    route: Route


Listener = Callable[[RouteEvent], None]


class _DomainRoutes:
    """Routes of one domain (or one wildcard suffix): the root route and prefixes, longest first."""

    __slots__ = ("prefixed", "root")

    def __init__(self) -> None:
        self.root: HTTPRoute | None = None
        self.prefixed: list[HTTPRoute] = []

    def add(self, route: HTTPRoute) -> None:
        if not route.prefix:
            self.root = route
            return
        self.prefixed = [r for r in self.prefixed if r.prefix != route.prefix] + [route]
        self.prefixed.sort(key=lambda r: len(r.prefix), reverse=True)

    def remove(self, route: HTTPRoute) -> None:
        if not route.prefix:
            if self.root is not None and self.root.id == route.id:
                self.root = None
            return
        self.prefixed = [r for r in self.prefixed if r.id != route.id]

    def empty(self) -> bool:
        return self.root is None and not self.prefixed

    def match(self, path: bytes) -> HTTPRoute | None:
        for route in self.prefixed:
            prefix = route.prefix
            if path.startswith(prefix):
                n = len(prefix)
                if len(path) == n or path[n] in (_SLASH, _QMARK):
                    return route
        return self.root


class RouteTable:
    """Routes and backends of one router process; see the module docstring for matching."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._exact: dict[bytes, _DomainRoutes] = {}
        self._wild: dict[bytes, _DomainRoutes] = {}  # keyed by b".suffix"
        self._tcp: dict[int, TCPRoute] = {}
        self._services: dict[str, Service] = {}
        self._listeners: list[Listener] = []

    # --- routes --------------------------------------------------------------------------------
    def set_route(self, route: Route) -> Route:
        """Add ``route`` or replace the route with the same id (or the same domain+path / port)."""
        old = self._routes.get(route.id)
        if old is None:
            old = self._find_same_place(route)
        if old is not None:
            self._unindex(old)
            del self._routes[old.id]
            if old.id != route.id or old.kind != route.kind:
                self._emit(RouteEvent("removed", old))
        self._routes[route.id] = route
        self._index(route)
        self.service(route.service)
        self._emit(RouteEvent("set", route))
        return route

    def add_http_route(
        self,
        domain: str,
        service: str,
        *,
        path: str = "/",
        route_id: str = "",
        sticky: bool = False,
        https_redirect: bool = False,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        leader: bool = False,
    ) -> HTTPRoute:
        route = HTTPRoute(
            domain=domain,
            service=service,
            path=path,
            id=route_id,
            sticky=sticky,
            https_redirect=https_redirect,
            tls_cert=tls_cert,
            tls_key=tls_key,
            leader=leader,
        )
        self.set_route(route)
        return route

    def set_tcp_route(self, port: int, service: str, route_id: str = "") -> TCPRoute:
        route = TCPRoute(port=port, service=service, id=route_id)
        self.set_route(route)
        return route

    def remove_route(self, route_id: str) -> Route | None:
        route = self._routes.pop(route_id, None)
        if route is not None:
            self._unindex(route)
            self._emit(RouteEvent("removed", route))
        return route

    def routes(self) -> list[Route]:
        return list(self._routes.values())

    def get_route(self, route_id: str) -> Route | None:
        return self._routes.get(route_id)

    def tcp_route(self, port: int) -> TCPRoute | None:
        return self._tcp.get(port)

    def lookup(self, host: bytes, path: bytes) -> HTTPRoute | None:
        """The route for a normalized host (see :func:`flynn.router.headers.normalize_host`)."""
        domain = self._exact.get(host)
        if domain is not None:
            route = domain.match(path)
            if route is not None:
                return route
        if self._wild:
            i = host.find(b".")
            while i > 0:
                domain = self._wild.get(host[i:])
                if domain is not None:
                    route = domain.match(path)
                    if route is not None:
                        return route
                i = host.find(b".", i + 1)
        return None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` after every route change; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # --- services and backends -----------------------------------------------------------------
    def service(self, name: str) -> Service:
        svc = self._services.get(name)
        if svc is None:
            svc = self._services[name] = Service(name)
        return svc

    def services(self) -> dict[str, Service]:
        return dict(self._services)

    def set_backends(self, service: str, addrs: Iterable[str | Addr]) -> None:
        """Make ``service``'s backends exactly ``addrs`` ("host:port"); in-flight requests to
        removed backends finish, their idle connections close."""
        self.service(service).set(addrs)

    def add_backend(self, service: str, addr: str | Addr) -> None:
        self.service(service).add(addr)

    def remove_backend(self, service: str, addr: str | Addr) -> bool:
        return self.service(service).remove(addr) is not None

    def backends(self, service: str) -> list[str]:
        svc = self._services.get(service)
        return [] if svc is None else sorted(svc.backends)

    def drain(
        self,
        service: str,
        addr: str | Addr,
        *,
        timeout: float | None = None,
        callback: DrainCallback | None = None,
    ) -> asyncio.Future[None]:
        """No new requests to ``addr``; resolves (and calls ``callback(service, addr)``) when the
        requests, tunnels and TCP connections in flight to it have finished."""
        return self.service(service).drain(addr, callback=callback, timeout=timeout)

    def undrain(self, service: str, addr: str | Addr) -> bool:
        return self.service(service).undrain(addr)

    # --- internals -----------------------------------------------------------------------------
    def _find_same_place(self, route: Route) -> Route | None:
        for r in self._routes.values():
            if isinstance(route, HTTPRoute) and isinstance(r, HTTPRoute):
                if r.domain == route.domain and r.path == route.path:
                    return r
            elif isinstance(route, TCPRoute) and isinstance(r, TCPRoute) and r.port == route.port:
                return r
        return None

    def _index(self, route: Route) -> None:
        if isinstance(route, TCPRoute):
            self._tcp[route.port] = route
            return
        table, key = self._key(route)
        table.setdefault(key, _DomainRoutes()).add(route)

    def _unindex(self, route: Route) -> None:
        if isinstance(route, TCPRoute):
            if self._tcp.get(route.port) is route:
                del self._tcp[route.port]
            return
        table, key = self._key(route)
        domain = table.get(key)
        if domain is not None:
            domain.remove(route)
            if domain.empty():
                del table[key]

    def _key(self, route: HTTPRoute) -> tuple[dict[bytes, _DomainRoutes], bytes]:
        if route.domain.startswith("*."):
            return self._wild, route.domain[1:].encode()
        return self._exact, route.domain.encode()

    def _emit(self, event: RouteEvent) -> None:
        for listener in list(self._listeners):
            listener(event)
