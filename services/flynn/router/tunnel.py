"""Raw byte splicing: upgraded HTTP connections (WebSocket, ...) and TCP routes.

A tunnel is two transports whose protocols are swapped for two :class:`Pipe` ends: what one
side reads, the other writes. Flow control is per direction: when a side's write buffer passes
its high-water mark, the other side stops reading until it drains. A half-close (EOF) is passed
on where the transport can (plain TCP) and closes the tunnel where it cannot (TLS).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from flynn.router.backends import Backend
from flynn.router.proxy import ProxyContext

log = logging.getLogger(__name__)


class Pipe:
    """One end of a tunnel (an asyncio protocol): reads from its own transport, writes to the peer's."""

    __slots__ = ("eof", "peer", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.transport: asyncio.Transport | None = None
        self.peer: Pipe | None = None
        self.eof = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None or peer.transport is None:
            return False
        if peer.eof or not peer.transport.can_write_eof():
            self.tunnel.close()
            return False
        peer.transport.write_eof()
        return True  # keep our write side open: the other direction may still flow

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.tunnel.close()

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.resume_reading()


class Tunnel:
    """Two spliced transports; ``on_close`` runs once when either side goes away."""

    def __init__(self, on_close: Callable[[], None] | None = None) -> None:
        self.a = Pipe(self)
        self.b = Pipe(self)
        self.a.peer = self.b
        self.b.peer = self.a
        self._on_close = on_close
        self.closed = False

    @classmethod
    def splice(
        cls,
        a: asyncio.Transport,
        b: asyncio.Transport,
        *,
        a_to_b: bytes = b"",
        b_to_a: bytes = b"",
        on_close: Callable[[], None] | None = None,
    ) -> Tunnel:
        """Take over two connected transports. ``a_to_b``/``b_to_a``: bytes already read from one
        side that the other must get first."""
        tunnel = cls(on_close)
        end_a: Any = tunnel.a
        end_b: Any = tunnel.b
        a.set_protocol(end_a)
        b.set_protocol(end_b)
        tunnel.a.connection_made(a)
        tunnel.b.connection_made(b)
        if a_to_b:
            b.write(a_to_b)
        if b_to_a:
            a.write(b_to_a)
        a.resume_reading()
        b.resume_reading()
        return tunnel

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for end in (self.a, self.b):
            if end.transport is not None and not end.transport.is_closing():
                end.transport.close()  # flushes what is buffered first
        if self._on_close is not None:
            callback, self._on_close = self._on_close, None
            callback()

    def abort(self) -> None:
        for end in (self.a, self.b):
            if end.transport is not None:
                end.transport.abort()
        self.close()


class TCPFrontend:
    """A connection to a TCP route's port (an asyncio protocol): connect to a backend (retrying
    others), then splice."""

    __slots__ = ("backend", "buffered", "ctx", "port", "transport", "tried")

    def __init__(self, ctx: ProxyContext, port: int) -> None:
        self.ctx = ctx
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.buffered: list[bytes] = []
        self.tried: tuple[Backend, ...] = ()
        self.backend: Backend | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.ctx.stats.tcp_connections += 1
        transport.pause_reading()
        self.ctx.spawn(self._connect())

    def data_received(self, data: bytes) -> None:
        self.buffered.append(data)  # only before the splice; reading is paused meanwhile

    def eof_received(self) -> bool:
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    async def _connect(self) -> None:
        ctx = self.ctx
        attempts = 0
        while self.transport is not None:
            route = ctx.table.tcp_route(self.port)
            backend = None
            if route is not None:
                backend = ctx.table.service(route.service).pick(ctx.loop.time(), self.tried)
            if backend is None or attempts >= ctx.config.upstream_attempts:
                self.transport.close()
                return
            attempts += 1
            backend.acquire()
            try:
                async with asyncio.timeout(ctx.config.connect_timeout):
                    upstream, _ = await ctx.loop.create_connection(
                        asyncio.Protocol, backend.host, backend.port
                    )
            except (OSError, TimeoutError):
                backend.release()
                ctx.stats.upstream_connect_errors += 1
                backend.down_until = ctx.loop.time() + ctx.config.backend_down_seconds
                self.tried += (backend,)
                continue
            except BaseException:
                backend.release()
                raise
            if self.transport is None or self.transport.is_closing():
                upstream.close()
                backend.release()
                return
            self._splice(backend, upstream)
            return

    def _splice(self, backend: Backend, upstream: asyncio.Transport) -> None:
        client = self.transport
        if client is None:
            upstream.close()
            backend.release()
            return
        ctx = self.ctx
        ctx.stats.active_tcp += 1
        tunnel: Tunnel | None = None
        holder = _BusyTunnel(backend)

        def closed() -> None:
            ctx.stats.active_tcp -= 1
            backend.conns.discard(holder)
            backend.release()

        tunnel = Tunnel.splice(client, upstream, a_to_b=b"".join(self.buffered), on_close=closed)
        holder.tunnel = tunnel
        backend.conns.add(holder)
        self.buffered = []


class _BusyTunnel:
    """Stands in a backend's connection set for a TCP tunnel, so a drain with a timeout can end it."""

    __slots__ = ("backend", "tunnel")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.tunnel: Tunnel | None = None

    def abort(self) -> None:
        if self.tunnel is not None:
            self.tunnel.abort()
