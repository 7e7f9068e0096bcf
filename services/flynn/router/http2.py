"""HTTP/2 frontend (TLS clients that chose ``h2`` by ALPN), proxied to HTTP/1.1 upstreams.

:class:`H2Conn` is the connection: the wire protocol is its base class
(:class:`~flynn.router.h2wire.H2Wire`, the router's own HTTP/2 and HPACK), whose hooks it
implements. Each stream is an :class:`H2Stream` exchange. Request bodies go upstream as they
arrive (chunked when the client gave no content-length); flow control is HTTP/2's own: received
DATA is acknowledged once it was handed to the upstream, and held back while the upstream's
write buffer is full. Responses are sent as the stream's and connection's send windows allow;
while a stream is blocked its upstream connection stops being read.

Limits: ``h2_max_streams`` concurrent streams (more are refused with REFUSED_STREAM),
``max_header_bytes`` as the header list size and ``max_headers`` fields (a 431 on the stream).
Timeouts: the client preface and first request within ``header_timeout``, and
``idle_timeout`` while no stream is open. Upgrades (WebSocket over HTTP/2) are not offered.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from flynn.router.h2wire import INTERNAL_ERROR, NO_ERROR, H2Wire, WireStream
from flynn.router.headers import (
    H_CONTENT_LENGTH,
    H_COOKIE,
    H_HOST,
    H_REQUEST_ID,
    H_XFF,
    REQUEST_FIELDS,
    normalize_host,
    sticky_set_cookie,
    valid_request_id,
)
from flynn.router.proxy import Exchange, ProxyContext
from flynn.router.responses import Answer
from flynn.router.tlsconn import TLSConn
from flynn.router.upstream import Headers, UpstreamConn, fields_to_pairs

log = logging.getLogger(__name__)

# the :status field of each common status (formatting one is a call, ~0.5k instructions)
STATUS_FIELDS: Final[dict[int, tuple[bytes, bytes]]] = {n: (b":status", b"%d" % n) for n in range(100, 600)}
CONNECTION_WINDOW = 1 << 20  # what all streams of a connection may have unacknowledged in total


class H2Stream(Exchange):
    __slots__ = ("conn", "end_pending", "headers_out", "outbuf", "reading", "sid", "unacked")

    def __init__(self, conn: H2Conn, sid: int, method: bytes) -> None:
        super().__init__(conn.ctx, method)
        self.conn = conn
        self.sid = sid
        self.headers_out: list[tuple[bytes, bytes]] | None = None  # response head not sent yet
        self.outbuf: list[bytes] = []  # response body waiting for send window (a list: native)
        self.end_pending = False
        self.reading = True
        self.unacked = 0

    # --- request -------------------------------------------------------------------------------
    def feed(self, data: bytes, flow_len: int) -> None:
        if data:
            self.feed_body(data)
        if self.reading:
            self.conn.ack_data(self.sid, flow_len)
        else:
            self.unacked += flow_len

    def client_reading(self, on: bool) -> None:
        self.reading = on
        if on and self.unacked and not self.finished:
            n, self.unacked = self.unacked, 0
            self.conn.ack_data(self.sid, n)
            self.conn.flush()

    def send_answer(self, answer: Answer) -> None:
        self.responded = True
        self.ctx.stats.count_status(answer.status)
        self._release_backend()
        conn = self.conn
        if self.is_head or not answer.body:
            conn.send_headers(self.sid, answer.h2_headers(), True)
            self._done()
        elif conn.send_headers(self.sid, answer.h2_headers(), False):
            self.outbuf.append(answer.body)
            self.end_pending = True
            self._pump()
        else:
            self._done()
        conn.flush()

    def abort_client(self) -> None:
        self._reset(INTERNAL_ERROR)

    # --- response (Sink) -----------------------------------------------------------------------
    def on_head(self, status: int, conn: UpstreamConn) -> None:
        self.responded = True
        self.ctx.stats.count_status(status)
        field = STATUS_FIELDS.get(status)
        if field is None:
            field = (b":status", b"%d" % status)
        out = [field, *fields_to_pairs(conn.fields)]
        if self.set_cookie is not None:
            out.append((b"set-cookie", sticky_set_cookie(self.ctx.sticky_name, self.set_cookie)))
        self.headers_out = out

    def _send_head(self, end: bool) -> bool:
        """Send the response head if it is waiting; False when the stream is gone."""
        headers = self.headers_out
        if headers is None:
            return True
        self.headers_out = None
        return self.conn.send_headers(self.sid, headers, end)

    def on_body(self, data: bytes) -> None:
        if data:
            self.outbuf.append(data)

    def flush(self) -> None:
        if self.finished and not self.end_pending:
            return
        if self._send_head(False):
            self._pump()
        else:
            self._done()
        self.conn.flush()

    def on_end(self, conn: UpstreamConn) -> None:
        self.upstream = None
        conn.release(self.body_done)
        self._release_backend()
        self.finished = True
        self.end_pending = True
        if not self.outbuf and self.headers_out is not None:
            self._send_head(True)
            self._done()
        elif self._send_head(False):
            self._pump()
        else:
            self._done()
        self.conn.flush()

    def _pump(self) -> None:
        """Send buffered body as the flow-control windows allow; end the stream when asked."""
        conn = self.conn
        sid = self.sid
        outbuf = self.outbuf
        while outbuf:
            window = conn.send_window(sid)
            if window <= 0:
                if not conn.is_open(sid):
                    self._done()
                    return
                if self not in conn.blocked:
                    conn.blocked.append(self)
                    if self.upstream is not None:
                        self.upstream.pause_reading()
                return
            chunk = outbuf[0]
            # min() of two ints is native in the compiled module, of three a generic call
            n = min(min(len(chunk), window), conn.max_frame)  # noqa: PLW3301
            if n == len(chunk):
                del outbuf[0]
                last = self.end_pending and not outbuf
                conn.send_data(sid, chunk, last)
                if last:
                    self._done()
                    return
            else:
                outbuf[0] = chunk[n:]
                conn.send_data(sid, chunk[:n], False)
        if self.end_pending:
            conn.send_data(sid, b"", True)
            self._done()

    def unblocked(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()
        self._pump()

    def _done(self) -> None:
        self.end_pending = False
        self.finished = True
        self.conn.stream_done(self)

    def _reset(self, code: int) -> None:
        self.conn.send_reset(self.sid, code)
        self.client_gone()
        self.conn.stream_done(self)
        self.conn.flush()


class H2Conn(H2Wire):
    """One client connection speaking HTTP/2 (an asyncio protocol over the TLS connection)."""

    def __init__(self, ctx: ProxyContext, port: int) -> None:
        cfg = ctx.config
        super().__init__(cfg.h2_max_streams, cfg.max_header_bytes, CONNECTION_WINDOW)
        self.ctx = ctx
        self.cfg = cfg
        self.max_headers = cfg.max_headers  # (copied: attributes of the Python config object
        self.max_body = cfg.max_body_bytes  # cost a lookup each)
        self.idle_timeout = cfg.idle_timeout
        self.port = port
        self.transport: TLSConn | None = None  # HTTP/2 is offered over TLS only
        self.h2_streams: dict[int, H2Stream] = {}
        self.blocked: list[H2Stream] = []
        self.deadline = 0.0
        self.closed = False
        self.leaving = False  # the client sent GOAWAY
        self.client_ip = b""
        self.fwd_tail = b"\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: %d\r\nX-Request-Id: " % port

    # --- asyncio protocol ----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = str(peer[0]).encode()
        ctx = self.ctx
        ctx.stats.connections += 1
        ctx.stats.tls_connections += 1
        ctx.stats.h2_connections += 1
        ctx.stats.active_connections += 1
        ctx.clock.watched.add(self)
        if self.cfg.header_timeout > 0:
            self.deadline = ctx.clock.now + self.cfg.header_timeout
        self.start()
        self.flush()

    def data_received(self, data: bytes) -> None:
        errors = self.stream_errors
        self.receive(data)
        if self.stream_errors != errors:
            self.ctx.stats.bad_requests += self.stream_errors - errors
        if self.failed:
            log.debug("HTTP/2 connection error: %s", self.error)
            self.ctx.stats.bad_requests += 1
            self.flush()
            self.close()
            return
        self.flush()
        if self.leaving:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        ctx = self.ctx
        ctx.stats.active_connections -= 1
        ctx.clock.watched.discard(self)
        for stream in list(self.h2_streams.values()):
            stream.client_gone()
            ctx.stats.active_h2_streams -= 1
        self.h2_streams.clear()
        self.blocked.clear()

    def pause_writing(self) -> None:
        # the client does not read what we send: stop reading it too (a client sending PINGs or
        # SETTINGS without reading the answers would otherwise grow the buffer without end)
        if self.transport is not None:
            self.transport.pause_reading()
        for stream in self.h2_streams.values():
            if stream.upstream is not None:
                stream.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()
        for stream in self.h2_streams.values():
            if stream.upstream is not None and stream not in self.blocked:
                stream.upstream.resume_reading()

    # --- the wire protocol's hooks -------------------------------------------------------------
    def on_data(self, sid: int, data: bytes, flow_len: int, end: bool) -> None:
        stream = self.h2_streams.get(sid)
        if stream is None:
            self.ack_data(sid, flow_len)
            return
        stream.feed(data, flow_len)
        if end:
            stream.end_body()

    def on_reset(self, sid: int) -> None:
        stream = self.h2_streams.get(sid)
        if stream is not None:
            stream.client_gone()
            self.stream_done(stream)

    def on_window(self, sid: int) -> None:
        self._unblock(sid)

    def on_goaway(self) -> None:
        self.leaving = True

    def on_request(self, wire: WireStream, fields: list[tuple[bytes, bytes]]) -> None:  # noqa: PLR0912, PLR0915
        ctx = self.ctx
        sid = wire.sid
        ctx.stats.requests += 1
        ctx.stats.active_h2_streams += 1
        self.deadline = 0.0
        method = wire.method
        path = wire.path
        authority = wire.authority
        hdrs: Headers = []
        cookies: list[bytes] = []
        xff: bytes | None = None
        rid: bytes | None = None
        for name, value in fields:
            code = REQUEST_FIELDS.get(name)
            if code is None:
                hdrs.append((name, value))
            elif code == H_HOST:
                if not authority:
                    authority = value
            elif code == H_CONTENT_LENGTH:
                hdrs.append((name, value))
            elif code == H_COOKIE:
                cookies.append(value)
            elif code == H_XFF:
                xff = value if xff is None else xff + b", " + value
            elif code == H_REQUEST_ID:
                rid = value
        stream = H2Stream(self, sid, method)
        self.h2_streams[sid] = stream
        if wire.remote_closed:
            stream.body_done = True
        if wire.oversize or len(fields) > self.max_headers:
            self._reject(stream, Answer(431))
            return
        if method == b"CONNECT":
            self._reject(stream, Answer(405))
            return
        hosts = ctx.hosts  # authorities already normalized (shared with HTTP/1.1's Host)
        host = hosts.get(authority)
        if host is None and authority:
            host = normalize_host(authority)
            if host is not None:
                if len(hosts) > 4096:
                    hosts.clear()
                hosts[authority] = host
        if host is None:
            self._reject(stream, Answer(400, b"missing or bad :authority\n"))
            return
        clen = wire.clen
        if self.max_body and clen > self.max_body:
            self._reject(stream, Answer(413))
            return
        has_body = not wire.remote_closed
        stream.has_body = has_body and clen != 0
        stream.chunked_up = has_body and clen < 0
        parts = [method, b" ", path, b" HTTP/1.1\r\nHost: ", authority, b"\r\n"]
        for name, value in hdrs:  # (appends: native; += of a tuple is a generic call)
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
        if cookies:
            parts += (b"cookie: ", b"; ".join(cookies), b"\r\n")
        if stream.chunked_up:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if rid is None or not valid_request_id(rid):
            rid = ctx.ids.next()
        xff = self.client_ip if xff is None else xff + b", " + self.client_ip
        parts += (b"X-Forwarded-For: ", xff, self.fwd_tail, rid, b"\r\n\r\n")
        stream.head = b"".join(parts)
        stream.route(host, path, True, cookies)

    def _reject(self, stream: H2Stream, answer: Answer) -> None:
        """A request the router refuses itself (over a limit, no usable authority)."""
        self.ctx.stats.bad_requests += 1
        stream.fail(answer)

    # --- streams -------------------------------------------------------------------------------
    def stream_done(self, stream: H2Stream) -> None:
        if self.h2_streams.pop(stream.sid, None) is not None:
            self.ctx.stats.active_h2_streams -= 1
        if stream in self.blocked:
            self.blocked.remove(stream)
        if not self.h2_streams and self.idle_timeout > 0 and not self.closed:
            self.deadline = self.ctx.clock.now + self.idle_timeout

    def _unblock(self, sid: int) -> None:
        if not self.blocked:
            return
        if sid == 0:
            waiting, self.blocked = self.blocked, []
        else:
            waiting = [s for s in self.blocked if s.sid == sid]
            self.blocked = [s for s in self.blocked if s.sid != sid]
        for stream in waiting:
            stream.unblocked()

    # --- flow ----------------------------------------------------------------------------------
    def flush(self) -> None:
        if self.closed or self.transport is None:
            return
        out = self.out
        if out:
            self.out = []
            self.transport.write_parts(out)  # joined once, with the rest, when encrypted

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def timed_out(self) -> None:
        self.deadline = 0.0
        if self.closed:
            return
        if self.h2_streams:
            return
        self.goaway(NO_ERROR)
        self.flush()
        self.close()
