"""Backends of a service: the address set, round-robin choice, sticky tokens, drain.

A :class:`Service` is a named set of :class:`Backend` addresses (``host:port``), fed by the control
plane from discoverd. Requests pick a backend round-robin among the ready ones (not draining, not
recently refused); a sticky route maps a cookie token back to its backend. Each backend also holds
its pool of idle upstream connections (see :mod:`flynn.router.upstream`) and counts requests in
flight, which is what a drain waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from flynn.router.upstream import UpstreamConn


class Abortable(Protocol):
    def abort(self) -> None: ...


Addr = tuple[str, int]
DrainCallback = Callable[[str, str], None]

STICKY_KEY = b"flynn-router-sticky-v1"


def parse_addr(addr: str | Addr) -> Addr:
    """``"10.0.0.1:8080"``, ``"[::1]:80"`` or ``("10.0.0.1", 8080)`` -> ``(host, port)``."""
    if isinstance(addr, tuple):
        host, port = addr
    else:
        host, sep, port_s = addr.rpartition(":")
        if not sep or not host:
            raise ValueError(f"backend address {addr!r} is not host:port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            port = int(port_s)
        except ValueError:
            raise ValueError(f"backend address {addr!r} has a bad port") from None
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"backend port {port!r} is outside 1-65535")
    if not host:
        raise ValueError("backend address has no host")
    return host, port


def addr_key(addr: Addr) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def sticky_token(key: str, secret: bytes = STICKY_KEY) -> bytes:
    """Cookie value naming a backend: a keyed hash of its address, the same on every router."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:20].encode()


class Backend:
    """One backend address of one service."""

    __slots__ = (
        "conns",
        "down_until",
        "draining",
        "host",
        "idle",
        "inflight",
        "key",
        "port",
        "removed",
        "service",
        "token",
        "waiters",
    )

    def __init__(self, service: str, addr: Addr) -> None:
        self.service = service
        self.host, self.port = addr
        self.key = addr_key(addr)
        self.token = sticky_token(self.key)
        self.inflight = 0  # requests, tunnels and TCP connections using it now
        self.draining = False
        self.removed = False
        self.down_until = 0.0  # loop time before which it is skipped (connect failed)
        self.idle: list[UpstreamConn] = []  # pooled idle connections, most recently used last
        self.conns: set[Abortable] = set()  # open upstream connections and TCP tunnels
        self.waiters: list[tuple[asyncio.Future[None], DrainCallback | None]] = []

    def __repr__(self) -> str:
        flags = "".join(f" {f}" for f in ("draining", "removed") if getattr(self, f))
        return f"<Backend {self.service} {self.key} inflight={self.inflight}{flags}>"

    @property
    def accepting(self) -> bool:
        return not self.draining and not self.removed

    def acquire(self) -> None:
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight <= 0:
            self.inflight = 0
            if self.waiters and (self.draining or self.removed):
                self.finish_drain()

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

    def finish_drain(self) -> None:
        waiters, self.waiters = self.waiters, []
        for fut, callback in waiters:
            if not fut.done():
                fut.set_result(None)
            if callback is not None:
                callback(self.service, self.key)

    def abort_busy(self) -> None:
        """Cut every connection still open to this backend (the end of a drain's grace time)."""
        for conn in list(self.conns):
            conn.abort()


class Service:
    """A named backend set with round-robin choice among the ready backends."""

    __slots__ = ("_next", "_ready", "backends", "name", "tokens")

    def __init__(self, name: str) -> None:
        self.name = name
        self.backends: dict[str, Backend] = {}
        self.tokens: dict[bytes, Backend] = {}
        self._ready: list[Backend] = []
        self._next = 0

    def __repr__(self) -> str:
        return f"<Service {self.name} {sorted(self.backends)}>"

    def _refresh(self) -> None:
        self._ready = [b for b in self.backends.values() if b.accepting]
        self.tokens = {b.token: b for b in self._ready}

    @property
    def ready(self) -> list[Backend]:
        return self._ready

    def pick(self, now: float, exclude: tuple[Backend, ...] = ()) -> Backend | None:
        """The next ready backend round-robin, skipping ``exclude`` and, while others are up,
        backends whose last connect failed less than ``backend_down_seconds`` ago."""
        ready = self._ready
        n = len(ready)
        if n == 0:
            return None
        if n == 1 and not exclude:
            return ready[0]
        start = self._next
        fallback: Backend | None = None
        for i in range(n):
            b = ready[(start + i) % n]
            if b in exclude:
                continue
            if b.down_until > now:
                if fallback is None:
                    fallback = b
                continue
            self._next = (start + i + 1) % n
            return b
        return fallback

    def by_token(self, token: bytes) -> Backend | None:
        return self.tokens.get(token)

    def set(self, addrs: Iterable[str | Addr]) -> tuple[list[Backend], list[Backend]]:
        """Make the backend set exactly ``addrs``; returns (added, removed)."""
        wanted = {}
        for a in addrs:
            parsed = parse_addr(a)
            wanted[addr_key(parsed)] = parsed
        added = [self._add(key, addr) for key, addr in wanted.items() if key not in self.backends]
        removed = [self._remove(key) for key in list(self.backends) if key not in wanted]
        self._refresh()
        return added, removed

    def add(self, addr: str | Addr) -> Backend:
        parsed = parse_addr(addr)
        key = addr_key(parsed)
        backend = self.backends.get(key) or self._add(key, parsed)
        self._refresh()
        return backend

    def remove(self, addr: str | Addr) -> Backend | None:
        key = addr_key(parse_addr(addr))
        if key not in self.backends:
            return None
        backend = self._remove(key)
        self._refresh()
        return backend

    def get(self, addr: str | Addr) -> Backend | None:
        return self.backends.get(addr_key(parse_addr(addr)))

    def _add(self, key: str, addr: Addr) -> Backend:
        backend = Backend(self.name, addr)
        self.backends[key] = backend
        return backend

    def _remove(self, key: str) -> Backend:
        backend = self.backends.pop(key)
        backend.removed = True
        backend.close_idle()
        if backend.inflight == 0 and backend.waiters:
            backend.finish_drain()
        return backend

    def drain(
        self, addr: str | Addr, callback: DrainCallback | None = None, timeout: float | None = None
    ) -> asyncio.Future[None]:
        """Stop sending new requests to ``addr``; the future resolves when none is in flight.

        With ``timeout``, connections still busy after that many seconds are closed (a WebSocket
        can last for hours). The backend stays in the set, not used, until removed.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        backend = self.get(addr)
        if backend is None:
            fut.set_result(None)
            if callback is not None:
                callback(self.name, addr_key(parse_addr(addr)))
            return fut
        backend.draining = True
        backend.close_idle()
        self._refresh()
        backend.waiters.append((fut, callback))
        if backend.inflight == 0:
            backend.finish_drain()
        elif timeout is not None:
            handle = loop.call_later(timeout, backend.abort_busy)
            fut.add_done_callback(lambda _f: handle.cancel())
        return fut

    def undrain(self, addr: str | Addr) -> bool:
        backend = self.get(addr)
        if backend is None or not backend.draining:
            return False
        backend.draining = False
        for fut, _cb in backend.waiters:
            with contextlib.suppress(asyncio.InvalidStateError):
                fut.cancel()
        backend.waiters = []
        self._refresh()
        return True
