"""Upstream side: HTTP/1.1 connections to backends, pooled per backend, one exchange at a time.

An :class:`UpstreamConn` parses responses with httptools (llhttp validates the status line, the
header syntax and the framing) and reports them to its current sink, the
:class:`~flynn.router.proxy.Exchange` that sent the request. To keep the per-response cost low,
header fields are not handed over one callback at a time: once llhttp has accepted the whole
head, it is taken from the received bytes, split into lines once, and only lines whose first
letter may make them hop-by-hop or framing fields are looked at (docs/router.md, "Performance").
What the sink reads from the connection: ``status_line``
(``b"HTTP/1.1 200 OK"``), ``fields`` (the field block, each line starting with CRLF, hop-by-hop
fields removed), ``length`` (0 with a Content-Length, else -1), ``chunked`` and ``upgrade`` (the
Upgrade value of a 101).

When the exchange ends with the connection still usable it goes back to its backend's idle list
(most recently used last); the sweep in :mod:`flynn.router.timeouts` closes the ones idle for
too long.

Writes to backends are gathered: what an exchange writes during one loop iteration is sent when
that iteration's callbacks are done (:mod:`flynn.router.outbox`), so the router first reads
every request that is waiting and then sends them all, as HAProxy does. Sent at once, the first
request wakes the backend, which on a shared CPU then preempts the router after each request it
forwards (docs/router.md, "Performance"). Per connection the order of writes, and of a write
and a ``close()``, is kept.

The class is an asyncio protocol without deriving from :class:`asyncio.Protocol` (asyncio only
calls its methods), so that it compiles to a native class (see docs/router.md, "Compiled").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)

from flynn.router.outbox import Flushable, not_connected

if TYPE_CHECKING:
    from flynn.router.backends import Backend
    from flynn.router.proxy import Exchange, ProxyContext

Headers = list[tuple[bytes, bytes]]

# First letters (lower-cased) of the response fields the router has to look at: hop-by-hop
# fields (RFC 9110 7.6.1) and the framing ones; every other line is passed on without a look.
_C: Final = 99  # connection, content-length
_K: Final = 107  # keep-alive
_P: Final = 112  # proxy-connection, proxy-authenticate
_T: Final = 116  # te, trailer, transfer-encoding
_U: Final = 117  # upgrade
_COLON: Final = 58
# the head is split in lines together with what follows it, up to this many lines (a longer
# head is split again, alone): a body is seldom cut into many lines by CRLFs
_SPLIT_LINES: Final = 32


def _named(line: bytes, name: bytes, title: bytes) -> bool:
    """Whether header line ``line`` is field ``name`` (given lower-case, with its colon; ``title``
    is the same in Canonical-Case, as most servers send it).

    The colon's place rules out most other fields of the same first letter with one look; a
    name sent in one of the two usual spellings is then one ``memcmp`` (``startswith`` is
    native in compiled code), any other spelling is compared byte by byte: ``byte | 0x20``
    lower-cases a letter and leaves ``-`` and ``:`` alone; the only other bytes it could take
    there (CR, 0x1a) never reach here, llhttp rejects them in a field name."""
    n = len(name)
    if len(line) < n or line[n - 1] != _COLON:
        return False
    if line.startswith(title) or line.startswith(name):
        return True
    i = 0
    while i < n:
        if line[i] | 0x20 != name[i]:
            return False
        i += 1
    return True


# response heads already split into pairs (HTTP/2 answers), whole and by line: a backend sends
# the same head again and again (within a second, Date included) and, failing that, the same
# lines (Server, Content-Type, most Content-Lengths); splitting a line costs three bytes-method
# calls. Bounded (each cleared when full); short heads and lines only.
_HEADS: Final[dict[bytes, tuple[tuple[bytes, bytes], ...]]] = {}
_PAIRS: Final[dict[bytes, tuple[bytes, bytes]]] = {}
HEADS_CACHED = 256
PAIRS_CACHED = 2048


def fields_to_pairs(fields: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """``b"\\r\\nName: value..."`` -> ``((b"name", b"value"), ...)`` (names lower-cased)."""
    heads = _HEADS
    known = heads.get(fields)
    if known is not None:
        return known
    out: Headers = []
    cache = _PAIRS
    for line in fields.split(b"\r\n"):
        if not line:
            continue
        pair = cache.get(line)
        if pair is None:
            name, _, value = line.partition(b":")
            pair = (name.lower(), value.strip())
            if len(line) <= 128:
                if len(cache) >= PAIRS_CACHED:
                    cache.clear()
                cache[line] = pair
        out.append(pair)
    result = tuple(out)
    if len(fields) <= 1024:
        if len(heads) >= HEADS_CACHED:
            heads.clear()
        heads[fields] = result
    return result


class _HeadResponse(Exception):
    """Raised from on_headers_complete to stop parsing a response to HEAD (it has no body)."""


class UpstreamConn(Flushable):
    """One connection to a backend (an asyncio protocol), carrying one exchange at a time."""

    def __init__(self, ctx: ProxyContext, backend: Backend) -> None:
        self.ctx = ctx
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.send: Callable[[bytes], object] = not_connected  # transport.write, once connected
        self._new_parser()
        self.sink: Exchange | None = None
        self.idle_since = 0.0
        self.uses = 0  # exchanges started on this connection
        self.closed = False
        self.out: list[bytes] | None = None  # written, waiting for the Outbox to send it
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

    def _new_parser(self) -> None:
        # bound methods kept: a method called by name from compiled code is looked up on its
        # type every time (docs/router.md, "Performance")
        parser = self.parser = HttpResponseParser(self)
        self.feed: Callable[[bytes], None] = parser.feed_data
        self.status_code: Callable[[], int] = parser.get_status_code
        self.keeps_alive: Callable[[], bool] = parser.should_keep_alive

    def __repr__(self) -> str:
        return f"<UpstreamConn {self.backend.key} uses={self.uses} closed={self.closed}>"

    # --- used by exchanges ---------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue ``data``; it is sent with the other upstream writes of this loop iteration."""
        if self.closed or self.transport is None:
            return
        out = self.out
        if out is None:
            self.out = [data]
            self.ctx.outbox.add(self)
        else:
            out.append(data)

    def flush(self) -> None:
        """Hand what is queued to the transport now."""
        out = self.out
        if out is None:
            return
        self.out = None
        transport = self.transport
        if not self.closed and transport is not None:
            self.send(out[0] if len(out) == 1 else b"".join(out))

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
            self.flush()  # what was written goes first, as with a direct write then close()
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.sink = None
        self.out = None
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
        self.send = transport.write
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
            self.feed(data)
        except HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0] :])
            return
        except HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadResponse):
                self._new_parser()
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
    def on_headers_complete(self) -> None:  # noqa: PLR0912, PLR0915 - the hot path, kept in one piece
        sink = self.sink
        if sink is None:
            return
        buf = self.rbuf
        start = self.rstart
        # the head, split in lines once (bytes.find costs ~1 us a call here, mostly in its
        # argument parsing; a split is one call), together with what follows it, cut off after a
        # few lines; the head ends at the first empty line before the last piece (that one is
        # the rest, or what follows the last CRLF); every line's first letter says whether it
        # can matter
        data = buf[start:] if start else buf
        lines = data.split(b"\r\n", _SPLIT_LINES)
        end = 0
        for i in range(1, len(lines) - 1):
            if not len(lines[i]):
                end = i
                break
        if not end:  # a longer head
            lines = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            end = len(lines)
        status_line = lines[0]
        size = len(status_line)  # of the head without its last CRLF CRLF
        length = -1
        chunked = False
        kept: list[bytes] | None = None  # the lines to forward, once two were dropped
        cut = -1  # where the first dropped line starts in ``data`` (its CRLF), and ends
        cut_end = 0
        cut_line = 0
        for i in range(1, end):
            line = lines[i]
            at = size
            size += len(line) + 2
            drop = False
            c = line[0] | 0x20  # not empty: the head's lines come before ``end``
            if c == _C:
                if _named(line, b"connection:", b"Connection:"):
                    drop = True
                elif _named(line, b"content-length:", b"Content-Length:"):
                    length = 0  # llhttp checked its value
            elif c == _T:
                if _named(line, b"transfer-encoding:", b"Transfer-Encoding:"):
                    drop = True
                    chunked = line[18:].strip().lower().endswith(b"chunked")  # the last one counts
                elif _named(line, b"te:", b"TE:") or _named(line, b"trailer:", b"Trailer:"):
                    drop = True
            elif c == _U:
                if _named(line, b"upgrade:", b"Upgrade:"):
                    drop = True
                    self.upgrade = line[8:].strip()
            elif c == _K:
                drop = _named(line, b"keep-alive:", b"Keep-Alive:")
            elif c == _P:
                drop = _named(line, b"proxy-connection:", b"Proxy-Connection:") or _named(
                    line, b"proxy-authenticate:", b"Proxy-Authenticate:"
                )
            if drop:
                if cut < 0:
                    cut = at
                    cut_end = size
                    cut_line = i
                elif kept is None:  # a second one: the lines left are joined again
                    kept = lines[:i]
                    del kept[cut_line]
            elif kept is not None:
                kept.append(line)
        if cut < 0:
            self.fields = data[len(status_line) : size]
        elif kept is None:  # one line dropped (mostly "Connection: keep-alive"): two slices
            self.fields = data[len(status_line) : cut] + data[cut_end:size]
        else:
            kept[0] = b""  # in place of the status line: the block starts with CRLF
            self.fields = b"\r\n".join(kept)
        self.length = length
        self.chunked = chunked
        self.status_line = status_line
        status = self.status_code()
        if status < 200 and status != 101:
            self.rstart = start + size + 4  # a final response follows, maybe in the same bytes
            self.interim = True
            sink.on_interim(status, self)
            return
        self.rbuf = b""
        self.rstart = 0
        self.keep_alive = self.keeps_alive()
        self.head_done = True
        if status == 101:
            self.interim = True  # its message end is not the exchange's end: a tunnel follows
            return  # the parser raises HttpParserUpgrade next
        self.until_close = not chunked and length < 0 and not self.no_body and status not in (204, 304)
        sink.on_head(status, self)
        if self.no_body:
            raise _HeadResponse

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
