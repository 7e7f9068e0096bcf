"""What HTTP/1.1 and HTTP/2 frontends share: the per-process context and one proxied exchange.

:class:`Exchange` is one request on its way to a backend: route and backend choice (round-robin or
sticky), the upstream connection (pooled, or connected with a timeout), retries on connection
errors, and the request body streamed upstream. The frontends subclass it for their side: how a
response is written to the client and how the client's reading is paused.

Retry rules: a connect error (refused, unreachable, timeout) is retried on another backend for any
method, since nothing was sent; a connection that breaks after the request went out is retried
only for idempotent methods without a body (RFC 9110 9.2.2), never for POST or PATCH. Requests
that must not be retried are not sent on a pooled connection idle for more than 2 seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from flynn.router.backends import Backend, Service
from flynn.router.config import RouterConfig
from flynn.router.headers import IDEMPOTENT, RequestIds, cookie_value, https_location
from flynn.router.outbox import Outbox
from flynn.router.responses import Answer, redirect
from flynn.router.routes import HTTPRoute, RouteTable
from flynn.router.stats import Stats
from flynn.router.timeouts import Reaper
from flynn.router.upstream import UpstreamConn, connect, take_idle

log = logging.getLogger(__name__)

FRESH_FOR_UNSAFE = 2.0  # seconds a pooled connection may have idled to carry a non-retryable request


class ProxyContext:
    """Everything a connection of one router process needs, in one object."""

    def __init__(
        self,
        table: RouteTable,
        config: RouterConfig,
        loop: asyncio.AbstractEventLoop,
        stats: Stats | None = None,
    ) -> None:
        self.table = table
        self.config = config
        self.loop = loop
        self.stats = stats or Stats()
        self.ids = RequestIds()
        self.clock = Reaper(
            loop, config.tick, config.upstream_idle_timeout, lambda: table.services().values()
        )
        self.sticky_name = config.sticky_cookie.encode()
        page = config.error_503_page
        self.answer_503 = (
            Answer(503, page, content_type=config.error_503_content_type) if page else Answer(503)
        )
        self.tasks: set[asyncio.Task[None]] = set()
        self.hosts: dict[bytes, bytes] = {}  # Host header as sent -> normalized host (a cache)
        # settings read on every request, copied out of the (frozen dataclass) config
        self.upstream_max_idle = config.upstream_max_idle
        self.upstream_attempts = config.upstream_attempts
        self.outbox = Outbox(loop)  # upstream and TLS writes, sent once per loop iteration

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


class Exchange:
    """One request: backend choice, upstream connection, request body, retries.

    It is the sink of its upstream connection (:class:`~flynn.router.upstream.UpstreamConn`
    calls ``on_interim``, ``on_head``, ``on_body``, ``on_end``, ``on_upgrade``, ``flush``,
    ``upstream_failed``, ``upstream_writable``). Subclasses implement those that write the
    response, ``send_answer`` for the router's own answers, ``client_reading`` and
    ``abort_client``.

    Attributes have class-level defaults: interpreted, an instance only stores what differs;
    compiled, they are the initial values of the native object's fields.
    """

    head = b""  # request line and header fields for the upstream
    has_body = False
    chunked_up = False  # the body goes upstream chunked (re-framed)
    body_done = False  # the whole request body was received from the client
    pending: list[bytes] | None = None  # body received before an upstream connection was ready
    matched: HTTPRoute | None = None
    service: Service | None = None
    pinned: Backend | None = None  # sticky backend named by the client's cookie
    set_cookie: bytes | None = None
    backend: Backend | None = None
    upstream: UpstreamConn | None = None
    connecting: asyncio.Task[None] | None = None
    tried: tuple[Backend, ...] = ()
    attempts = 0
    responded = False  # the response (or an answer) has started towards the client
    finished = False
    held = False  # client reading held while connecting
    is_head = False

    def __init__(self, ctx: ProxyContext, method: bytes) -> None:
        self.ctx = ctx
        self.method = method
        self.idempotent = method in IDEMPOTENT
        if method == b"HEAD":
            self.is_head = True

    # --- to be provided by the frontend --------------------------------------------------------
    def send_answer(self, answer: Answer) -> None:
        raise NotImplementedError

    def client_reading(self, on: bool) -> None:
        raise NotImplementedError

    def abort_client(self) -> None:
        raise NotImplementedError

    def on_head(self, status: int, conn: UpstreamConn) -> None:
        raise NotImplementedError

    def on_end(self, conn: UpstreamConn) -> None:
        raise NotImplementedError

    # --- routing and upstream ------------------------------------------------------------------
    def route(self, host: bytes, target: bytes, tls: bool, cookies: list[bytes] | None) -> None:
        """Find the route for ``host``/``target`` and send the request (``self.head``) on its
        way, or answer it ourselves (no route, redirect to HTTPS, no backend)."""
        table = self.ctx.table
        route = table.lookup(host, target)
        if route is None:
            self.fail(Answer(404))
            return
        if route.https_redirect and not tls:
            self.fail(redirect(https_location(host, target), self.method))
            return
        self.matched = route
        service = self.service = table.service(route.service)
        if route.sticky and cookies:
            token = cookie_value(cookies, self.ctx.sticky_name)
            if token is not None:
                self.pinned = service.by_token(token)
        self.dispatch()

    def dispatch(self) -> None:
        """Pick a backend and send the request on a pooled or new connection."""
        ctx = self.ctx
        service = self.service
        if service is None:
            return
        now = ctx.clock.now
        backend = self.pinned
        if backend is None or backend.draining or backend.removed or backend in self.tried:
            backend = service.pick(now, self.tried)
            if backend is None:
                self.fail(ctx.answer_503 if not self.tried else Answer(503, b"no backend reachable\n"))
                return
        self.backend = backend
        backend.inflight += 1
        self.attempts += 1
        route = self.matched
        if route is not None and route.sticky and self.pinned is not backend:
            self.set_cookie = backend.token
        idle = backend.idle
        if idle:
            conn: UpstreamConn | None
            if self.idempotent and not self.has_body:
                conn = idle.pop()
                if conn.closed:
                    conn = take_idle(backend, now, None)
            else:
                conn = take_idle(backend, now, FRESH_FOR_UNSAFE)
            if conn is not None:
                self._attach(conn)
                return
        if not self.held:
            self.held = True
            self.client_reading(False)
        self.connecting = ctx.spawn(self._connect(backend))

    async def _connect(self, backend: Backend) -> None:
        ctx = self.ctx
        try:
            conn = await connect(ctx, backend)
        except (OSError, TimeoutError) as exc:
            self.connecting = None
            if self.finished:
                return
            ctx.stats.upstream_connect_errors += 1
            backend.down_until = ctx.loop.time() + ctx.config.backend_down_seconds
            log.debug("connect to %s failed: %r", backend.key, exc)
            self._release_backend()
            self.tried += (backend,)
            self._retry()
            return
        self.connecting = None
        if self.finished:
            conn.release(True)
            return
        self._attach(conn)

    def _retry(self) -> None:
        if self.attempts < self.ctx.upstream_attempts:
            self.ctx.stats.retries += 1
            self.dispatch()
        else:
            self.fail(Answer(503, b"no backend reachable\n"))

    def _attach(self, conn: UpstreamConn) -> None:
        self.upstream = conn
        conn.sink = self
        conn.no_body = self.is_head
        conn.uses += 1
        conn.head_done = False
        pending = self.pending
        if pending:
            data = b"".join([self.head, *pending])
            self.pending = None
        else:
            data = self.head
        conn.write(data)
        if self.held:
            self.held = False
            self.client_reading(True)

    def feed_body(self, data: bytes) -> None:
        """A piece of the request body from the client (already de-chunked)."""
        if self.finished:
            return
        if self.chunked_up:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        upstream = self.upstream
        if upstream is not None:
            upstream.write(data)
        elif self.pending is None:
            self.pending = [data]
        else:
            self.pending.append(data)

    def end_body(self) -> None:
        self.body_done = True
        if self.finished or not self.chunked_up:
            return
        upstream = self.upstream
        if upstream is not None:
            upstream.write(b"0\r\n\r\n")
        elif self.pending is None:
            self.pending = [b"0\r\n\r\n"]
        else:
            self.pending.append(b"0\r\n\r\n")

    def upstream_failed(self, conn: UpstreamConn, reason: str) -> None:
        self.upstream = None
        if self.finished:
            return
        ctx = self.ctx
        backend = self.backend
        log.debug("upstream %s failed: %s", conn.backend.key, reason)
        if self.responded:
            ctx.stats.upstream_errors += 1
            self._release_backend()
            self.finished = True
            self.abort_client()
            return
        retryable = self.idempotent and not self.has_body and not conn.head_done
        if retryable and self.attempts < ctx.upstream_attempts:
            if conn.uses <= 1 and backend is not None:
                # a fresh connection broke: the backend is at fault; a pooled one may just have
                # been closed by the backend's keep-alive timeout, so the same backend may do
                self.tried += (backend,)
            self._release_backend()
            ctx.stats.retries += 1
            self.dispatch()
            return
        ctx.stats.upstream_errors += 1
        self._release_backend()
        self.fail(Answer(502))

    def upstream_writable(self, writable: bool) -> None:
        self.client_reading(writable)

    def on_interim(self, status: int, conn: UpstreamConn) -> None:
        """1xx from upstream (100 Continue, 103 Early Hints): relayed by frontends that can."""

    def on_body(self, data: bytes) -> None:
        raise NotImplementedError

    def on_upgrade(self, status: int, conn: UpstreamConn, extra: bytes) -> None:
        # frontends without tunnels: a 101 they did not ask for is a bad response
        conn.close()
        self.upstream_failed(conn, "unexpected 101")

    def flush(self) -> None:
        """Write what the last upstream read produced (frontends batch their writes)."""

    # --- ending --------------------------------------------------------------------------------
    def fail(self, answer: Answer) -> None:
        """Answer the client ourselves (no route, no backend, bad gateway, ...)."""
        if self.finished:
            return
        self.ctx.stats.router_errors += answer.status >= 400
        self.send_answer(answer)

    def _release_backend(self) -> None:
        backend = self.backend
        if backend is not None:
            self.backend = None
            backend.release()

    def client_gone(self) -> None:
        """The client connection or stream went away: drop everything upstream."""
        if self.finished:
            return
        self.finished = True
        self.ctx.stats.client_aborts += 1
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.close()
        self._release_backend()
