"""Upstream side: HTTP/1.1 connections to backends, pooled per backend, one exchange at a time.

An :class:`UpstreamConn` parses responses with httptools (llhttp validates the status line, the
header syntax and the framing) and reports them to its current sink, the
:class:`~flynn.router.proxy.Exchange` that sent the request. To keep the per-response cost low,
header fields are not handed over one callback at a time: once llhttp has accepted the whole
head, the raw field block is taken from the received bytes and hop-by-hop fields are cut out of
it with a few byte searches. What the sink reads from the connection: ``status_line``
(``b"HTTP/1.1 200 OK"``), ``fields`` (the field block, each line starting with CRLF, hop-by-hop
fields removed), ``length`` (0 with a Content-Length, else -1), ``chunked`` and ``upgrade`` (the
Upgrade value of a 101).

When the exchange ends with the connection still usable it goes back to its backend's idle list
(most recently used last); the sweep in :mod:`flynn.router.timeouts` closes the ones idle for
too long.

The class is an asyncio protocol without deriving from :class:`asyncio.Protocol` (asyncio only
calls its methods), so that it compiles to a native class (see docs/router.md, "Compiled").
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)

if TYPE_CHECKING:
    from flynn.router.backends import Backend
    from flynn.router.proxy import Exchange, ProxyContext

Headers = list[tuple[bytes, bytes]]

# hop-by-hop response fields (RFC 9110 7.6.1), as they start a line of a lower-cased head
_HOP: Final = (
    b"\r\nconnection:",
    b"\r\nkeep-alive:",
    b"\r\nproxy-connection:",
    b"\r\nproxy-authenticate:",
    b"\r\ntrailer:",
    b"\r\nte:",
)
_TE: Final = b"\r\ntransfer-encoding:"
_CL: Final = b"\r\ncontent-length:"
_UPGRADE: Final = b"\r\nupgrade:"
_CONNECTION: Final = b"\r\nconnection:"


def _field_value(fields: bytes, lower: bytes, at: int, name_len: int) -> bytes:
    end = lower.find(b"\r\n", at + 2)
    return fields[at + name_len : end if end >= 0 else len(fields)].strip()


def _cut(fields: bytes, lower: bytes, name: bytes) -> tuple[bytes, bytes]:
    """Remove every line starting with ``name`` (given lower-case with its leading CRLF)."""
    at = lower.find(name)
    while at >= 0:
        end = lower.find(b"\r\n", at + 2)
        if end < 0:
            end = len(lower)
        fields = fields[:at] + fields[end:]
        lower = lower[:at] + lower[end:]
        at = lower.find(name, at)
    return fields, lower


def fields_to_pairs(fields: bytes) -> Headers:
    """``b"\\r\\nName: value..."`` -> ``[(b"name", b"value"), ...]`` (names lower-cased)."""
    out: Headers = []
    for line in fields.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append((name.lower(), value.strip()))
    return out


class _HeadResponse(Exception):
    """Raised from on_headers_complete to stop parsing a response to HEAD (it has no body)."""


class UpstreamConn:
    """One connection to a backend (an asyncio protocol), carrying one exchange at a time."""

    def __init__(self, ctx: ProxyContext, backend: Backend) -> None:
        self.ctx = ctx
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.sink: Exchange | None = None
        self.idle_since = 0.0
        self.uses = 0  # exchanges started on this connection
        self.closed = False
        # per-response state
        self.no_body = False  # the request was HEAD
        self.keep_alive = True
        self.head_done = False
        self.interim = False
        self.until_close = False  # the body ends with the connection
        self.rbuf = b""  # bytes of the response head(s) not yet complete
        self.rstart = 0
        self.status_line = b""
        self.fields = b""
        self.length = -1  # 0 when the response has a Content-Length (its value is not needed), else -1
        self.chunked = False
        self.upgrade = b""

    def __repr__(self) -> str:
        return f"<UpstreamConn {self.backend.key} uses={self.uses} closed={self.closed}>"

    # --- used by exchanges ---------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        transport = self.transport
        if not self.closed and transport is not None:
            transport.write(data)

    def release(self, reusable: bool) -> None:
        """The exchange is over: back to the idle pool when possible, closed otherwise."""
        self.sink = None
        backend = self.backend
        if (
            reusable
            and self.keep_alive
            and not self.closed
            and not backend.draining
            and not backend.removed
            and len(backend.idle) < self.ctx.upstream_max_idle
        ):
            self.idle_since = self.ctx.clock.now
            backend.idle.append(self)
        else:
            self.close()

    def close(self) -> None:
        self.sink = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.sink = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # --- asyncio protocol ----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.ctx.stats.upstream_connections += 1
        self.backend.conns.add(self)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            # an idle connection must stay silent (a late "408" or garbage): drop it
            self._drop_idle()
            return
        if not self.head_done:
            self.rbuf = self.rbuf + data if self.rbuf else data
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0] :])
            return
        except HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadResponse):
                self.parser = HttpResponseParser(self)
                self._complete()
                return
            self._protocol_error(f"callback: {exc.__context__!r}")
            return
        except HttpParserError as exc:
            self._protocol_error(str(exc))
            return
        if self.sink is sink:
            sink.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        backend = self.backend
        backend.conns.discard(self)
        sink = self.sink
        if sink is None:
            if self in backend.idle:
                backend.idle.remove(self)
            return
        if self.until_close and self.head_done:
            # a response framed by the end of the connection is complete now
            self.keep_alive = False
            sink.flush()
            self._complete()
            return
        self.sink = None
        sink.upstream_failed(self, "closed" if exc is None else str(exc) or type(exc).__name__)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_writable(False)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_writable(True)

    # --- httptools callbacks -------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        sink = self.sink
        if sink is None:
            return
        buf = self.rbuf
        start = self.rstart
        end = buf.find(b"\r\n\r\n", start)
        line_end = buf.find(b"\r\n", start)
        fields = buf[line_end:end]
        lower = fields.lower()
        at = lower.find(_CONNECTION)
        if at >= 0:
            stop = lower.find(b"\r\n", at + 2)
            if stop < 0:
                stop = len(lower)
            fields = fields[:at] + fields[stop:]
            lower = lower[:at] + lower[stop:]
        # (bytes.find, not "in": CPython's bytes.__contains__ first fails to read an int)
        self.length = 0 if lower.find(_CL) >= 0 else -1  # llhttp checked its value
        chunked = False
        if (
            # every other hop-by-hop name starts with one of these (a false hit costs a few finds)
            lower.find(b"\r\nt") >= 0  # te, trailer, transfer-encoding
            or lower.find(b"\r\nconnection:") >= 0  # a second Connection field
            or lower.find(b"\r\nu") >= 0  # upgrade
            or lower.find(b"\r\nk") >= 0  # keep-alive
            or lower.find(b"\r\np") >= 0  # proxy-connection, proxy-authenticate
        ):
            fields, chunked = self._hop_fields(fields, lower)
        self.fields = fields
        self.chunked = chunked
        self.status_line = buf[start:line_end]
        parser = self.parser
        status: int = parser.get_status_code()
        if status < 200 and status != 101:
            self.rstart = end + 4  # a final response follows, maybe in the same bytes
            self.interim = True
            sink.on_interim(status, self)
            return
        self.rbuf = b""
        self.rstart = 0
        self.keep_alive = parser.should_keep_alive()
        self.head_done = True
        if status == 101:
            self.interim = True  # its message end is not the exchange's end: a tunnel follows
            return  # the parser raises HttpParserUpgrade next
        self.until_close = not chunked and self.length < 0 and not self.no_body and status not in (204, 304)
        sink.on_head(status, self)
        if self.no_body:
            raise _HeadResponse

    def _hop_fields(self, fields: bytes, lower: bytes) -> tuple[bytes, bool]:
        """Cut the remaining hop-by-hop fields out; note chunked framing and an Upgrade value."""
        chunked = False
        at = lower.find(_TE)
        if at >= 0:
            chunked = _field_value(lower, lower, at, len(_TE)).endswith(b"chunked")
            fields, lower = _cut(fields, lower, _TE)
        at = lower.find(_UPGRADE)
        if at >= 0:
            self.upgrade = _field_value(fields, lower, at, len(_UPGRADE))
            fields, lower = _cut(fields, lower, _UPGRADE)
        for name in _HOP:
            if lower.find(name) >= 0:
                fields, lower = _cut(fields, lower, name)
        return fields, chunked

    def on_body(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink.on_body(data)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        sink = self.sink
        if sink is not None:
            sink.on_end(self)

    # --- internals -----------------------------------------------------------------------------
    def _complete(self) -> None:
        sink = self.sink
        if sink is not None:
            sink.on_end(self)

    def _upgraded(self, extra: bytes) -> None:
        self.interim = False
        sink = self.sink
        status: int = self.parser.get_status_code()
        if sink is None:
            self.close()
        elif status != 101:
            self._protocol_error(f"unexpected upgrade with status {status}")
        else:
            sink.on_upgrade(status, self, extra)

    def _protocol_error(self, reason: str) -> None:
        self.ctx.stats.upstream_errors += 1
        sink = self.sink
        self.keep_alive = False
        self.close()
        if sink is not None:
            sink.upstream_failed(self, f"bad response: {reason}")

    def _drop_idle(self) -> None:
        backend = self.backend
        if self in backend.idle:
            backend.idle.remove(self)
        self.close()


def take_idle(backend: Backend, now: float, fresh_within: float | None) -> UpstreamConn | None:
    """A pooled connection to ``backend``, the most recently used first. With ``fresh_within``
    (for requests that must not be retried), older idle connections are closed instead: an old
    keep-alive connection is the one a backend is most likely closing right now."""
    idle = backend.idle
    while idle:
        conn = idle.pop()
        if conn.closed:
            continue
        if fresh_within is not None and now - conn.idle_since > fresh_within:
            conn.close()
            continue
        return conn
    return None


async def connect(ctx: ProxyContext, backend: Backend) -> UpstreamConn:
    conn = UpstreamConn(ctx, backend)
    factory: Any = lambda: conn  # noqa: E731 - asyncio wants a factory; the protocol is made here
    async with asyncio.timeout(ctx.config.connect_timeout):
        await ctx.loop.create_connection(factory, backend.host, backend.port)
    return conn
