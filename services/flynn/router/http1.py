"""HTTP/1.1 frontend: one :class:`H1Conn` per client connection (plain or TLS without h2).

Requests are parsed with httptools (llhttp, strict: it already rejects Content-Length together
with Transfer-Encoding, repeated Content-Length, bad chunk sizes, obs-fold and bare LF). On top
the router enforces its limits (URL, header bytes, header count, body size), timeouts (headers,
body silence, keep-alive idle) and HTTP rules (Host required and single, only the ``chunked``
transfer coding, no CONNECT, HTTP/1.0 or 1.1 only).

Pipelined requests are answered in order: while one is in flight, the next ones are parsed into
a queue and reading pauses. Bodies stream both ways with flow control: a client reading pause
follows the upstream's write buffer and the other way round; nothing is buffered whole.

This is the hot path of the router, written for few Python operations per request: settings
are copied onto the connection, the exchange object stores only what differs from its class
defaults, and the response head is assembled from the upstream's raw field block. The classes
are asyncio protocols without deriving from :class:`asyncio.Protocol` (asyncio only calls their
methods), so that they compile to native classes (docs/router.md, "Compiled").
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
    parse_url,
)

from flynn.router.backends import Backend
from flynn.router.headers import (
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_COOKIE,
    H_HOST,
    H_PASS,
    H_REQUEST_ID,
    H_TRANSFER_ENCODING,
    H_UPGRADE,
    H_XFF,
    field_class,
    normalize_host,
    sticky_set_cookie,
    valid_request_id,
)
from flynn.router.outbox import not_connected
from flynn.router.proxy import Exchange, ProxyContext
from flynn.router.responses import Answer
from flynn.router.tunnel import Tunnel
from flynn.router.upstream import UpstreamConn

log = logging.getLogger(__name__)

# parser phases
IDLE: Final = 0  # between requests
HEAD: Final = 1  # request line and header fields
BODY: Final = 2  # request body
TUNNEL: Final = 3  # after an Upgrade request: bytes wait for the upstream's 101
DONE: Final = 4  # a bad request was seen: nothing more is read

# reasons to pause reading from the client
P_PIPELINE: Final = 1
P_UPSTREAM: Final = 2
P_TUNNEL: Final = 4

DISCARDABLE_BODY: Final = 65536  # after an answer of our own, a declared body up to this is read and dropped
TUNNEL_EARLY_MAX: Final = 65536


class _Reject(Exception):
    """Raised from parser callbacks: answer this and close."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


def _bad(status: int, message: bytes | None = None) -> _Reject:
    return _Reject(Answer(status, message))


class H1Exchange(Exchange):
    chunk_out = False  # the response goes to the client re-chunked
    close_after = False
    http11 = True
    keep_alive = True
    cookies: list[bytes] | None = None
    xff: bytes | None = None
    request_id: bytes | None = None
    upgrade: bytes | None = None
    content_length = -1
    early: list[bytes] | None = None  # tunnel bytes read after an Upgrade request

    def __init__(self, conn: H1Conn, method: bytes, target: bytes, host: bytes, fields: bytes) -> None:
        super().__init__(conn.ctx, method)
        self.conn = conn
        self.target = target
        self.host = host
        self.fields = fields  # forwarded header fields, each starting with CRLF
        self.out: list[bytes] = []

    # --- request -------------------------------------------------------------------------------
    def start(self) -> None:
        conn = self.conn
        rid = self.request_id
        if rid is None or not valid_request_id(rid):
            rid = self.request_id = self.ctx.ids.next()
        xff = conn.client_ip if self.xff is None else self.xff + b", " + conn.client_ip
        # bytes %-formatting of bytes only is one allocation and a copy per piece in compiled
        # code (mypyc's CPyBytes_Build), cheaper than a join (docs/router.md, "Performance")
        extra = b"\r\nTransfer-Encoding: chunked" if self.chunked_up else b""
        if self.upgrade is not None:
            extra += b"\r\nConnection: Upgrade\r\nUpgrade: " + self.upgrade
        self.head = b"%s %s HTTP/1.1%s%s\r\nX-Forwarded-For: %s%s%s\r\n\r\n" % (
            self.method,
            self.target,
            self.fields,
            extra,
            xff,
            conn.fwd_tail,
            rid,
        )
        self.route(self.host, self.target, conn.tls, self.cookies)

    def send_answer(self, answer: Answer) -> None:
        conn = self.conn
        self.responded = True
        self.finished = True
        self.ctx.stats.count_status(answer.status)
        discardable = (
            self.body_done
            or not self.has_body
            or (not self.chunked_up and self.content_length <= DISCARDABLE_BODY)
        )
        close = not self.keep_alive or not discardable or self.upgrade is not None
        conn.write(answer.http1(close=close, head_only=self.is_head, request_id=self.request_id))
        self._release_backend()
        conn.exchange_done(self, close)

    def client_reading(self, on: bool) -> None:
        if on:
            self.conn.resume(P_UPSTREAM)
        else:
            self.conn.pause(P_UPSTREAM)

    def abort_client(self) -> None:
        self.out = []
        self.conn.close()

    def abort_upstream(self) -> None:
        """The request cannot be completed (client error mid-body): drop the upstream side."""
        self.finished = True
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self._release_backend()

    # --- response (Sink) -----------------------------------------------------------------------
    def on_interim(self, status: int, conn: UpstreamConn) -> None:
        if self.http11 and not self.responded:
            self.conn.write(b"HTTP/1.1" + conn.status_line[8:] + conn.fields + b"\r\n\r\n")

    def on_head(self, status: int, conn: UpstreamConn) -> None:
        self.responded = True
        client = self.conn
        if 200 <= status < 300:
            self.ctx.stats.responses_2xx += 1
        else:
            self.ctx.stats.count_status(status)
        status_line = conn.status_line
        if not status_line.startswith(b"HTTP/1.1 "):  # as the client is answered: 1.1
            status_line = b"HTTP/1.1" + status_line[8:]
        framing = b""
        if conn.length < 0 and not self.is_head and status not in {204, 304}:
            if self.http11:
                framing = b"\r\nTransfer-Encoding: chunked"
                self.chunk_out = True
            else:
                self.close_after = True
        if self.set_cookie is not None:
            framing += b"\r\nSet-Cookie: " + sticky_set_cookie(self.ctx.sticky_name, self.set_cookie)
        if self.close_after or not self.keep_alive:
            self.close_after = True
            end = b"\r\nConnection: close\r\n\r\n"
        elif self.http11:
            end = b"\r\n\r\n"
        else:
            end = b"\r\nConnection: keep-alive\r\n\r\n"
        self.out.append(b"%s%s%s%s" % (status_line, conn.fields, framing, end))
        if client.write_paused:
            conn.pause_reading()

    def on_body(self, data: bytes) -> None:
        if self.chunk_out:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)

    def flush(self) -> None:
        out = self.out
        if out:
            self.out = []
            self.conn.write(out[0] + out[1] if len(out) == 2 else b"".join(out))

    def on_end(self, conn: UpstreamConn) -> None:
        out = self.out
        if self.chunk_out:
            out.append(b"0\r\n\r\n")
        client = self.conn
        if out:
            self.out = []
            if not client.closed:
                # mostly the head and the body: two pieces are one concatenation
                client.send(out[0] + out[1] if len(out) == 2 else b"".join(out))
        self.upstream = None
        self.finished = True
        conn.release(self.body_done)
        backend = self.backend
        if backend is not None:
            self.backend = None
            backend.release()
        client.exchange_done(self, self.close_after or not self.keep_alive)

    def on_upgrade(self, status: int, conn: UpstreamConn, extra: bytes) -> None:
        client = self.conn
        if self.upgrade is None or client.closed:
            conn.close()
            self.upstream_failed(conn, "101 to a request that did not ask for an upgrade")
            return
        self.responded = True
        self.finished = True
        self.ctx.stats.count_status(status)
        client.write(
            b"".join(
                (
                    b"HTTP/1.1",
                    conn.status_line[8:],
                    conn.fields,
                    b"\r\nConnection: Upgrade\r\nUpgrade: ",
                    conn.upgrade or self.upgrade,
                    b"\r\n\r\n",
                )
            )
        )
        self.upstream = None
        conn.sink = None
        backend, self.backend = self.backend, None
        client.become_tunnel(self, conn, extra, backend)


class H1Conn:
    """One client connection speaking HTTP/1.x (an asyncio protocol)."""

    def __init__(self, ctx: ProxyContext, port: int, tls: bool) -> None:
        self.ctx = ctx
        cfg = self.cfg = ctx.config
        self.clock = ctx.clock
        self.stats = ctx.stats
        self.t_header = cfg.header_timeout
        self.t_idle = cfg.idle_timeout
        self.t_body = cfg.body_timeout
        self.max_head = cfg.max_header_bytes + cfg.max_url_bytes
        # limits read per request, copied out of the config (a Python object: its attributes are
        # looked up by name from compiled code)
        self.max_headers = cfg.max_headers
        self.max_url_bytes = cfg.max_url_bytes
        self.max_header_bytes = cfg.max_header_bytes
        self.max_body_bytes = cfg.max_body_bytes
        self.port = port
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.send: Callable[[bytes], object] = not_connected  # transport.write, once connected
        # the parser and the bound methods called per request: a method called by name from
        # compiled code is looked up on its type every time (docs/router.md, "Performance")
        parser = self.parser = HttpRequestParser(self)
        self.feed: Callable[[bytes], None] = parser.feed_data
        self.method_of: Callable[[], bytes] = parser.get_method
        self.keeps_alive: Callable[[], bool] = parser.should_keep_alive
        self.phase = IDLE
        self.deadline = 0.0
        self.paused = 0
        self.closed = False
        self.eof = False  # the client half-closed: close once what is in flight is answered
        self.write_paused = False
        self.running = False
        self.req: H1Exchange | None = None  # the request being parsed
        self.active: H1Exchange | None = None  # the request being answered
        self.queue: deque[H1Exchange] = deque()  # parsed, waiting for their turn
        self.waiting_body: H1Exchange | None = None  # answered, its body still being read away
        self.reject_after: Answer | None = None  # a later pipelined request was bad
        self.tunnel_owner: H1Exchange | None = None
        self.head_bytes = 0
        self.client_ip = b""
        self.target = b""
        self.hdrs: list[tuple[bytes, bytes]] = []
        scheme = b"https" if tls else b"http"
        self.fwd_tail = b"\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Port: %d\r\nX-Request-Id: " % (
            scheme,
            port,
        )

    # --- asyncio protocol ----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.send = transport.write
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = str(peer[0]).encode()
        stats = self.stats
        stats.connections += 1
        stats.active_connections += 1
        if self.tls:
            stats.tls_connections += 1
        self.clock.watched.add(self)
        if self.t_header > 0:
            self.deadline = self.clock.now + self.t_header

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase == IDLE:
            self.phase = HEAD
            self.head_bytes = len(data)
            if self.t_header > 0:
                self.deadline = self.clock.now + self.t_header
        elif phase == HEAD:
            self.head_bytes += len(data)
        elif phase != BODY:
            if phase == TUNNEL:
                self._tunnel_data(data)
            return  # DONE: a bad request was seen, nothing after it is read
        try:
            self.feed(data)
        except HttpParserUpgrade as exc:
            self._client_upgraded(data[exc.args[0] :])
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.answer)
            else:
                log.error("request handling failed", exc_info=cause)
                self._reject(Answer(500))
        except HttpParserError as exc:
            self._reject(Answer(400, f"bad request: {exc}\n".encode()))
        else:
            if self.phase == HEAD and self.head_bytes > self.max_head:
                self._reject(Answer(431))

    def eof_received(self) -> bool:
        # a half-closed client may still wait for its answer, unless nothing is in flight
        self.eof = True
        if self.tunnel_owner is not None:
            return True
        return not (self.active is None and not self.queue)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.stats.active_connections -= 1
        self.clock.watched.discard(self)
        for ex in (self.active, self.req, *self.queue):
            if ex is not None:
                ex.client_gone()
        self.active = None
        self.req = None
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    # --- httptools callbacks -------------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        if self.phase != HEAD:
            # a pipelined request that starts in the middle of a read
            self.phase = HEAD
            self.head_bytes = 0
            if self.t_header > 0 and not self.paused:
                self.deadline = self.clock.now + self.t_header
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase == HEAD:  # trailer fields (after a chunked body) are not forwarded
            self.hdrs.append((name, value))

    def on_headers_complete(self) -> None:  # noqa: PLR0912, PLR0915 - the hot path, kept in one piece
        parser = self.parser
        self.stats.requests += 1
        self.phase = BODY
        hdrs = self.hdrs
        target = self.target
        self.hdrs = []
        self.target = b""
        if len(hdrs) > self.max_headers:
            raise _bad(431)
        if len(target) > self.max_url_bytes:
            raise _bad(414)
        method = self.method_of()
        host: bytes | None = None
        clen = -1
        te: bytes | None = None
        upgrade_v = b""
        xff: bytes | None = None
        rid: bytes | None = None
        cookies: list[bytes] | None = None
        parts: list[bytes] = []
        size = len(target)
        connection = False
        for name, value in hdrs:
            size += len(name) + len(value) + 4
            code = field_class(name)
            if code == H_PASS:
                parts += (b"\r\n", name, b": ", value)
            elif code == H_HOST:
                if host is not None:
                    raise _bad(400, b"more than one Host header\n")
                host = value
                parts += (b"\r\n", name, b": ", value)
            elif code == H_CONTENT_LENGTH:
                clen = int(value)  # llhttp checked: digits, given once
                parts += (b"\r\n", name, b": ", value)
            elif code == H_TRANSFER_ENCODING:
                te = value
            elif code == H_UPGRADE:
                upgrade_v = value
            elif code == H_XFF:
                xff = value if xff is None else xff + b", " + value
            elif code == H_REQUEST_ID:
                rid = value
            elif code == H_COOKIE:
                if cookies is None:
                    cookies = [value]
                else:
                    cookies.append(value)
                parts += (b"\r\n", name, b": ", value)
            elif code == H_CONNECTION:
                connection = True
            # H_DROP: hop-by-hop fields and X-Forwarded-* the router sets itself
        # llhttp keeps alive by default only in HTTP/1.1 (the only valid 1.x with a minor > 0);
        # 0.9, 1.0 and 2.0 need "Connection: keep-alive". So without a Connection field a kept
        # alive request is 1.1, and the parser's version string (costly to make) is not needed
        keep_alive = self.keeps_alive()
        version = "1.1" if keep_alive and not connection else parser.get_http_version()
        if version not in {"1.1", "1.0"}:
            raise _bad(505 if version[0] in "23" else 400)
        if size > self.max_header_bytes:
            raise _bad(431)
        if method == b"CONNECT":
            raise _bad(405, b"CONNECT is not supported\n")
        if target[:1] != b"/":
            if target.startswith((b"http://", b"https://")):
                try:
                    url = parse_url(target)
                except (HttpParserError, ValueError):
                    raise _bad(400, b"bad request target\n") from None
                host = url.host + (b":%d" % url.port if url.port else b"")
                target = (url.path or b"/") + (b"?" + url.query if url.query else b"")
            elif not (target == b"*" and method == b"OPTIONS"):
                raise _bad(400, b"bad request target\n")
        if host is None:
            raise _bad(400, b"missing Host header\n")
        hosts = self.ctx.hosts
        nhost = hosts.get(host)
        if nhost is None:
            nhost = normalize_host(host)
            if nhost is None:
                raise _bad(400, b"bad Host header\n")
            if len(hosts) > 4096:
                hosts.clear()
            hosts[host] = nhost
        ex = H1Exchange(self, method, target, nhost, b"".join(parts))
        if version == "1.0":
            ex.http11 = False
        if not keep_alive:
            ex.keep_alive = False
        if cookies is not None:
            ex.cookies = cookies
        if xff is not None:
            ex.xff = xff
        if rid is not None:
            ex.request_id = rid
        if clen >= 0:
            if self.max_body_bytes and clen > self.max_body_bytes:
                raise _bad(413)
            ex.content_length = clen
            if clen > 0:
                ex.has_body = True
        if te is not None:
            if te.strip().lower() != b"chunked":
                raise _bad(501)
            ex.chunked_up = True
            ex.has_body = True
        if upgrade_v and parser.should_upgrade():
            ex.upgrade = upgrade_v
        self.req = ex
        if self.active is None and not self.queue:
            self.active = ex
            ex.start()
        else:
            self.queue.append(ex)
            if self.active is None:
                self._run_next()
            else:
                self.pause(P_PIPELINE)

    def on_body(self, data: bytes) -> None:
        ex = self.req
        if ex is not None:
            if ex.chunked_up and self.max_body_bytes:
                ex.content_length += len(data)
                if ex.content_length > self.max_body_bytes:
                    raise _bad(413)
            ex.feed_body(data)
        if self.t_body > 0 and not self.paused:
            self.deadline = self.clock.now + self.t_body

    def on_message_complete(self) -> None:
        ex = self.req
        self.req = None
        self.phase = IDLE
        if ex is None:
            return
        ex.body_done = True
        if ex.chunked_up:
            ex.end_body()
        if self.active is not None:
            self.deadline = 0.0  # the answer is on its way: no client timeout meanwhile
        elif self.waiting_body is ex:
            self.waiting_body = None
            self._run_next()
        elif self.t_idle > 0 and not self.queue:
            self.deadline = self.clock.now + self.t_idle

    # --- flow ----------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.send(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
            self.deadline = 0.0
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if self.paused or self.closed or self.transport is None:
            return
        self.transport.resume_reading()
        now = self.clock.now
        if self.phase == HEAD and self.t_header > 0:
            self.deadline = now + self.t_header
        elif self.phase == BODY and self.t_body > 0:
            self.deadline = now + self.t_body
        elif self.phase == IDLE and self.active is None and self.t_idle > 0:
            self.deadline = now + self.t_idle

    def exchange_done(self, ex: H1Exchange, close: bool) -> None:
        """``ex`` has been answered completely; go on with the next request or close."""
        if self.active is ex:
            self.active = None
        if self.closed:
            return
        if close or self.tunnel_owner is ex or (self.eof and not self.queue):
            self.close()
            return
        if not ex.body_done:
            # answered before its body was read: read the rest away when it is small, else close
            if ex.upstream is None and (
                not ex.has_body or (not ex.chunked_up and ex.content_length <= DISCARDABLE_BODY)
            ):
                self.waiting_body = ex
                return
            self.close()
            return
        if self.queue or self.reject_after is not None or self.paused & P_PIPELINE:
            if not self.running:
                self._run_next()
        elif self.phase == IDLE and self.t_idle > 0:
            self.deadline = self.clock.now + self.t_idle

    def _run_next(self) -> None:
        self.running = True
        try:
            while self.active is None and self.waiting_body is None and self.queue and not self.closed:
                ex = self.queue.popleft()
                if self.reject_after is not None and not ex.body_done:
                    ex.client_gone()
                    continue
                self.active = ex
                ex.start()  # may answer at once, calling exchange_done
        finally:
            self.running = False
        if self.active is not None or self.closed or self.waiting_body is not None:
            return
        if self.reject_after is not None:
            answer, self.reject_after = self.reject_after, None
            self.write(answer.http1(close=True))
            self.close()
            return
        if self.eof:
            self.close()
            return
        self.resume(P_PIPELINE)
        if self.phase == IDLE and self.t_idle > 0:
            self.deadline = self.clock.now + self.t_idle

    def _reject(self, answer: Answer) -> None:
        """A malformed or over-limit request: answer it once earlier requests are done, close."""
        stats = self.stats
        stats.bad_requests += 1
        stats.router_errors += 1
        stats.count_status(answer.status)
        self.phase = DONE
        ex = self.active
        req = self.req
        self.req = None
        if req is not None and req is not ex:
            # the request being parsed is not being answered yet: forget it
            if req in self.queue:
                self.queue.remove(req)
            req.client_gone()
        if ex is not None and ex is req:
            # broken in the middle of the body of the request in flight
            ex.abort_upstream()
            self.active = None
            if ex.responded:
                self.close()
                return
            ex = None
        if ex is None and not self.queue:
            self.write(answer.http1(close=True))
            self.close()
            return
        self.reject_after = answer
        self.pause(P_PIPELINE)
        if self.active is None and not self.running:
            self._run_next()

    def timed_out(self) -> None:
        self.deadline = 0.0
        if self.closed:
            return
        if self.phase in {HEAD, BODY}:
            self.stats.timeouts += 1
            ex = self.active
            if ex is None or (ex is self.req and not ex.responded):
                if ex is not None:
                    ex.abort_upstream()
                    self.active = None
                self.stats.count_status(408)
                self.write(Answer(408).http1(close=True))
        self.close()

    # --- upgrades ------------------------------------------------------------------------------
    def _client_upgraded(self, rest: bytes) -> None:
        ex = self.queue[-1] if self.queue else self.active
        if ex is None or ex.upgrade is None or ex.finished:
            if ex is None or not ex.finished:
                self.close()
            return
        self.phase = TUNNEL
        self.deadline = 0.0
        self.tunnel_owner = ex
        if rest:
            self._tunnel_data(rest)

    def _tunnel_data(self, data: bytes) -> None:
        ex = self.tunnel_owner
        if ex is None or ex.finished:
            return
        if ex.early is None:
            ex.early = [data]
        else:
            ex.early.append(data)
        if sum(len(d) for d in ex.early) > TUNNEL_EARLY_MAX:
            self.pause(P_TUNNEL)

    def become_tunnel(
        self, ex: H1Exchange, upstream: UpstreamConn, extra: bytes, backend: Backend | None
    ) -> None:
        transport = self.transport
        up_transport = upstream.transport
        if transport is None or up_transport is None:
            upstream.close()
            return
        upstream.flush()  # (nothing is queued once the 101 came; the tunnel writes directly)
        stats = self.stats
        self.closed = True  # this protocol object is done; the tunnel owns the transport
        self.active = None
        self.clock.watched.discard(self)
        stats.active_connections -= 1
        stats.tunnels += 1
        stats.active_tunnels += 1
        early = b"".join(ex.early or ())
        ex.early = None

        def closed() -> None:
            stats.active_tunnels -= 1
            upstream.closed = True
            if backend is not None:
                backend.conns.discard(upstream)
                backend.release()

        Tunnel.splice(transport, up_transport, a_to_b=early, b_to_a=extra, on_close=closed)
