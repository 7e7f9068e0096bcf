"""The :class:`Router`: listeners (HTTP, HTTPS, TCP routes) wired to one route table.

One Router runs in one process on one event loop. Listening sockets are opened with
``SO_REUSEPORT``, so several worker processes (see :mod:`flynn.router.daemon`) can each open
the same ports and the kernel spreads new connections over them. TCP-route listeners follow the
route table: adding a TCP route opens its port, removing it closes the port (connections
already spliced carry on). Route certificates follow the table into the :class:`CertStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from flynn.router import _native
from flynn.router.config import RouterConfig
from flynn.router.http1 import H1Conn
from flynn.router.http2 import H2Conn
from flynn.router.proxy import ProxyContext
from flynn.router.routes import HTTPRoute, RouteEvent, RouteTable, TCPRoute
from flynn.router.stats import Stats
from flynn.router.tls import CertStore
from flynn.router.tlsconn import TLSConn
from flynn.router.tunnel import TCPFrontend

log = logging.getLogger(__name__)


def bind_socket(ip: str, port: int, *, reuse_port: bool, backlog: int = 1024) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((ip, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def tls_listener(ctx: ProxyContext, port: int, sslctx: ssl.SSLContext) -> Callable[[], TLSConn]:
    """The protocol factory of an HTTPS port: TLS, then HTTP/2 or HTTP/1.1 by ALPN."""

    def choose(sslobj: ssl.SSLObject) -> H1Conn | H2Conn:
        if sslobj.selected_alpn_protocol() == "h2":
            return H2Conn(ctx, port)
        return H1Conn(ctx, port, tls=True)

    timeout = ctx.config.tls_handshake_timeout
    return lambda: TLSConn(sslctx, choose, ctx.clock, ctx.stats, timeout, ctx.outbox)


class Router:
    """Listeners and the proxying of one router process.

    ``table`` is the route table the control plane drives; ``certs`` the TLS certificates (the
    default certificate set with ``certs.set_default``). Ports in ``config`` may be 0 (tests):
    :attr:`http_ports` / :attr:`https_ports` give the ports actually bound.
    """

    def __init__(
        self,
        table: RouteTable | None = None,
        config: RouterConfig | None = None,
        certs: CertStore | None = None,
    ) -> None:
        self.table = table if table is not None else RouteTable()
        self.config = config if config is not None else RouterConfig()
        self.certs = certs if certs is not None else CertStore()
        self.stats = Stats()
        self._ctx: ProxyContext | None = None
        self._servers: list[asyncio.Server] = []
        self._tcp_servers: dict[int, asyncio.Server] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._unsubscribe: Any = None
        self.http_ports: list[int] = []
        self.https_ports: list[int] = []
        self.listen_errors: dict[int, str] = {}

    @property
    def ctx(self) -> ProxyContext:
        if self._ctx is None:
            raise RuntimeError("router not started")
        return self._ctx

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        ctx = self._ctx = ProxyContext(self.table, cfg, loop, self.stats)
        ctx.clock.start()
        for route in self.table.routes():
            self._on_route(RouteEvent("set", route))
        self._unsubscribe = self.table.subscribe(self._on_route)
        for port in cfg.http_ports:
            server = await self._serve(port, lambda p: lambda: H1Conn(ctx, p, tls=False))
            self.http_ports.append(_bound_port(server))
        if cfg.https_ports:
            sslctx = self.certs.server_context
            for port in cfg.https_ports:
                server = await self._serve(port, lambda p: tls_listener(ctx, p, sslctx))
                self.https_ports.append(_bound_port(server))
        await self.settle()

    async def _serve(self, port: int, make: Any) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        cfg = self.config
        sock = bind_socket(cfg.listen_ip, port, reuse_port=cfg.reuse_port)
        bound = sock.getsockname()[1]
        server = await loop.create_server(make(bound), sock=sock)
        self._servers.append(server)
        return server

    async def settle(self) -> None:
        """Wait until listener changes caused by route changes so far are done."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        await self.settle()
        servers = self._servers + list(self._tcp_servers.values())
        self._servers = []
        self._tcp_servers = {}
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if self._ctx is not None:
            self._ctx.clock.stop()
            for task in list(self._ctx.tasks):
                task.cancel()
            for service in self.table.services().values():
                for backend in service.backends.values():
                    backend.close_idle()

    def status(self) -> dict[str, Any]:
        out = self.stats.snapshot()
        out["routes"] = {
            "http": sum(isinstance(r, HTTPRoute) for r in self.table.routes()),
            "tcp": sum(isinstance(r, TCPRoute) for r in self.table.routes()),
        }
        out["services"] = {
            name: {
                "backends": sorted(svc.backends),
                "ready": sorted(b.key for b in svc.ready),
                "inflight": sum(b.inflight for b in svc.backends.values()),
            }
            for name, svc in self.table.services().items()
        }
        out["listeners"] = {
            "http": list(self.http_ports),
            "https": list(self.https_ports),
            "tcp": sorted(self._tcp_servers),
        }
        out["implementation"] = {"data_plane": _native.state, "reason": _native.reason}
        if self.listen_errors:
            out["listen_errors"] = {str(k): v for k, v in self.listen_errors.items()}
        return out

    # --- route table events --------------------------------------------------------------------
    def _on_route(self, event: RouteEvent) -> None:
        route = event.route
        if isinstance(route, HTTPRoute):
            if route.tls_cert is not None and route.tls_key is not None and event.kind == "set":
                try:
                    self.certs.add(route.domain, route.tls_cert, route.tls_key, owner=route.id)
                except ValueError as exc:
                    log.error("route %s: %s", route.id, exc)
            else:
                self.certs.remove(route.id)
            return
        if self._ctx is None:
            return
        port = route.port
        if event.kind == "set" and self.table.tcp_route(port) is not None:
            if port not in self._tcp_servers:
                self._track(self._open_tcp(port))
        elif event.kind == "removed" and self.table.tcp_route(port) is None:
            server = self._tcp_servers.pop(port, None)
            if server is not None:
                server.close()

    def _track(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _open_tcp(self, port: int) -> None:
        ctx = self.ctx
        cfg = self.config
        try:
            sock = bind_socket(cfg.listen_ip, port, reuse_port=cfg.reuse_port)
            factory: Any = lambda: TCPFrontend(ctx, port)  # noqa: E731 - not an asyncio.Protocol subclass
            server = await ctx.loop.create_server(factory, sock=sock)
        except OSError as exc:
            self.listen_errors[port] = str(exc)
            log.error("TCP route port %d: cannot listen: %s", port, exc)
            return
        self.listen_errors.pop(port, None)
        if self.table.tcp_route(port) is None or port in self._tcp_servers:
            server.close()  # removed (or opened twice) meanwhile
            return
        self._tcp_servers[port] = server


def _bound_port(server: asyncio.Server) -> int:
    for sock in server.sockets:
        return int(sock.getsockname()[1])
    raise RuntimeError("server has no socket")
