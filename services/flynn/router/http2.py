"""HTTP/2 frontend (TLS clients that chose ``h2`` by ALPN), proxied to HTTP/1.1 upstreams.

Each stream is an :class:`H2Stream` exchange. Request bodies go upstream as they arrive (chunked
when the client gave no content-length); flow control is HTTP/2's own: received DATA is
acknowledged once it was handed to the upstream, and held back while the upstream's write
buffer is full. Responses are sent as the stream's and connection's send windows allow; while a
stream is blocked its upstream connection stops being read.

Limits: ``h2_max_streams`` concurrent streams, ``max_header_bytes`` as the header list size
(enforced by the HPACK decoder: a connection error), ``max_headers`` fields (a 431 on the
stream). Timeouts: the client preface and first request within ``header_timeout``, and
``idle_timeout`` while no stream is open. Upgrades (WebSocket over HTTP/2) are not offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

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
from flynn.router.upstream import Headers, UpstreamConn, fields_to_pairs

log = logging.getLogger(__name__)

CONNECTION_WINDOW = 1 << 20  # what all streams of a connection may have unacknowledged in total


class H2Stream(Exchange):
    __slots__ = ("conn", "end_pending", "headers_out", "outbuf", "reading", "sid", "unacked")

    def __init__(self, conn: H2Conn, sid: int, method: bytes) -> None:
        super().__init__(conn.ctx, method)
        self.conn = conn
        self.sid = sid
        self.headers_out: list[tuple[bytes, bytes]] | None = None  # response head not sent yet
        self.outbuf: deque[bytes] = deque()  # response body waiting for send window
        self.end_pending = False
        self.reading = True
        self.unacked = 0

    # --- request -------------------------------------------------------------------------------
    def feed(self, data: bytes, flow_len: int) -> None:
        self.feed_body(data)
        if self.reading:
            if flow_len:
                self.conn.h2.acknowledge_received_data(flow_len, self.sid)
        else:
            self.unacked += flow_len

    def client_reading(self, on: bool) -> None:
        self.reading = on
        if on and self.unacked and not self.finished:
            n, self.unacked = self.unacked, 0
            try:
                self.conn.h2.acknowledge_received_data(n, self.sid)
            except h2.exceptions.StreamClosedError:
                return
            self.conn.flush()

    def send_answer(self, answer: Answer) -> None:
        self.responded = True
        self.ctx.stats.count_status(answer.status)
        self._release_backend()
        conn = self.conn
        try:
            if self.is_head or not answer.body:
                conn.h2.send_headers(self.sid, answer.h2_headers(), end_stream=True)
                self._done()
            else:
                conn.h2.send_headers(self.sid, answer.h2_headers())
                self.outbuf.append(answer.body)
                self.end_pending = True
                self._pump()
        except h2.exceptions.StreamClosedError:
            self._done()
        conn.flush()

    def abort_client(self) -> None:
        self._reset(h2.errors.ErrorCodes.INTERNAL_ERROR)

    # --- response (Sink) -----------------------------------------------------------------------
    def on_head(self, status: int, conn: UpstreamConn) -> None:
        self.responded = True
        self.ctx.stats.count_status(status)
        out = [(b":status", b"%d" % status), *fields_to_pairs(conn.fields)]
        if self.set_cookie is not None:
            out.append((b"set-cookie", sticky_set_cookie(self.ctx.sticky_name, self.set_cookie)))
        self.headers_out = out

    def _send_head(self, end: bool) -> None:
        headers = self.headers_out
        if headers is not None:
            self.headers_out = None
            self.conn.h2.send_headers(self.sid, headers, end_stream=end)

    def on_body(self, data: bytes) -> None:
        if data:
            self.outbuf.append(data)

    def flush(self) -> None:
        if self.finished and not self.end_pending:
            return
        try:
            self._send_head(False)
            self._pump()
        except h2.exceptions.StreamClosedError:
            self._done()
        self.conn.flush()

    def on_end(self, conn: UpstreamConn) -> None:
        self.upstream = None
        conn.release(self.body_done)
        self._release_backend()
        self.finished = True
        self.end_pending = True
        try:
            if not self.outbuf and self.headers_out is not None:
                self._send_head(True)
                self.end_pending = False
                self._done()
            else:
                self._send_head(False)
                self._pump()
        except h2.exceptions.StreamClosedError:
            self._done()
        self.conn.flush()

    def _pump(self) -> None:
        """Send buffered body as the flow-control windows allow; end the stream when asked."""
        h2conn = self.conn.h2
        sid = self.sid
        outbuf = self.outbuf
        while outbuf:
            window = h2conn.local_flow_control_window(sid)
            if window <= 0:
                if self not in self.conn.blocked:
                    self.conn.blocked.append(self)
                    if self.upstream is not None:
                        self.upstream.pause_reading()
                return
            chunk = outbuf[0]
            n = min(window, h2conn.max_outbound_frame_size, len(chunk))
            if n == len(chunk):
                outbuf.popleft()
                last = self.end_pending and not outbuf
                h2conn.send_data(sid, chunk, end_stream=last)
                if last:
                    self._done()
                    return
            else:
                outbuf[0] = chunk[n:]
                h2conn.send_data(sid, chunk[:n])
        if self.end_pending:
            h2conn.end_stream(sid)
            self._done()

    def unblocked(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()
        try:
            self._pump()
        except h2.exceptions.StreamClosedError:
            self._done()

    def _done(self) -> None:
        self.end_pending = False
        self.finished = True
        self.conn.stream_done(self)

    def _reset(self, code: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self.conn.h2.reset_stream(self.sid, code)
        self.client_gone()
        self.conn.stream_done(self)
        self.conn.flush()


class H2Conn:
    """One client connection speaking HTTP/2 (an asyncio protocol)."""

    def __init__(self, ctx: ProxyContext, port: int) -> None:
        self.ctx = ctx
        self.cfg = ctx.config
        self.port = port
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=True,
            normalize_inbound_headers=True,
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.cfg.h2_max_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.cfg.max_header_bytes,
            },
        )
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.blocked: list[H2Stream] = []
        self.deadline = 0.0
        self.closed = False
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
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.debug("HTTP/2 protocol error: %s", exc)
            self.ctx.stats.bad_requests += 1
            self.flush()
            self.close()
            return
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.feed(event.data or b"", event.flow_controlled_length or 0)
                elif event.flow_controlled_length:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.RequestReceived):
                self._request(event)
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.end_body()
            elif isinstance(event, h2.events.StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.client_gone()
                    self.stream_done(stream)
            elif isinstance(event, h2.events.WindowUpdated):
                self._unblock(event.stream_id or 0)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.flush()
                self.close()
                return
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        ctx = self.ctx
        ctx.stats.active_connections -= 1
        ctx.clock.watched.discard(self)
        for stream in list(self.streams.values()):
            stream.client_gone()
            ctx.stats.active_h2_streams -= 1
        self.streams.clear()
        self.blocked.clear()

    def pause_writing(self) -> None:
        for stream in self.streams.values():
            if stream.upstream is not None:
                stream.upstream.pause_reading()

    def resume_writing(self) -> None:
        for stream in self.streams.values():
            if stream.upstream is not None and stream not in self.blocked:
                stream.upstream.resume_reading()

    # --- streams -------------------------------------------------------------------------------
    def _request(self, event: h2.events.RequestReceived) -> None:  # noqa: PLR0912, PLR0915
        ctx = self.ctx
        cfg = self.cfg
        sid = event.stream_id
        ctx.stats.requests += 1
        ctx.stats.active_h2_streams += 1
        self.deadline = 0.0
        method = path = authority = None
        hdrs: Headers = []
        cookies: list[bytes] = []
        xff: bytes | None = None
        rid: bytes | None = None
        clen = -1
        headers = event.headers or []
        for name, value in headers:
            name_b = bytes(name)
            value_b = bytes(value)
            if name_b[:1] == b":":
                if name_b == b":method":
                    method = value_b
                elif name_b == b":path":
                    path = value_b
                elif name_b == b":authority":
                    authority = value_b
                continue
            code = REQUEST_FIELDS.get(name_b)
            if code is None:
                hdrs.append((name_b, value_b))
            elif code == H_HOST:
                if authority is None:
                    authority = value_b
            elif code == H_CONTENT_LENGTH:
                clen = int(value_b) if value_b.isdigit() else -1
                hdrs.append((name_b, value_b))
            elif code == H_COOKIE:
                cookies.append(value_b)
            elif code == H_XFF:
                xff = value_b if xff is None else xff + b", " + value_b
            elif code == H_REQUEST_ID:
                rid = value_b
        stream = H2Stream(self, sid, method or b"GET")
        self.streams[sid] = stream
        if event.stream_ended is not None:
            stream.body_done = True
        if len(headers) > cfg.max_headers:
            stream.fail(Answer(431))
            return
        if method is None or path is None or method == b"CONNECT":
            stream.fail(Answer(405 if method == b"CONNECT" else 400))
            return
        host = normalize_host(authority) if authority else None
        if host is None:
            stream.fail(Answer(400, b"missing or bad :authority\n"))
            return
        if cfg.max_body_bytes and clen > cfg.max_body_bytes:
            stream.fail(Answer(413))
            return
        has_body = event.stream_ended is None
        stream.has_body = has_body and clen != 0
        stream.chunked_up = has_body and clen < 0
        parts = [method, b" ", path, b" HTTP/1.1\r\nHost: ", authority or b"", b"\r\n"]
        for name_b, value_b in hdrs:
            parts += (name_b, b": ", value_b, b"\r\n")
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

    def stream_done(self, stream: H2Stream) -> None:
        if self.streams.pop(stream.sid, None) is not None:
            self.ctx.stats.active_h2_streams -= 1
        if stream in self.blocked:
            self.blocked.remove(stream)
        if not self.streams and self.cfg.idle_timeout > 0 and not self.closed:
            self.deadline = self.ctx.clock.now + self.cfg.idle_timeout

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
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def timed_out(self) -> None:
        self.deadline = 0.0
        if self.closed:
            return
        if self.streams:
            return
        self.h2.close_connection()
        self.flush()
        self.close()
