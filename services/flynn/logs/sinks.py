"""Shipping app lines to syslog sinks (docs/logs.md "Log sinks"), run by the aggregator leader.

Each sink has a :class:`Shipper`: a bounded buffer (:data:`DEFAULT_BUFFER` lines) filled by
:meth:`Shipper.offer` and a task that keeps one TCP (or TLS) connection to the sink and writes
the lines as octet-counted RFC 5424 messages (:mod:`flynn.logs.rfc5424`). When the sink cannot
be reached the task retries with capped exponential backoff and lines wait in the buffer; when
the buffer is full the oldest line is dropped and counted. A batch that could not be written is
put back in front, so a line is dropped only by the buffer bound (or lost in the kernel's send
buffer when the peer dies after accepting the write: TCP syslog has no acknowledgements).
``delivered`` counts lines written to the connection.

A leader change does not lose lines (docs/logs.md "Log sinks"): each shipper knows, per host, the
timestamp of the newest line it delivered (:attr:`Shipper.positions`) and since when it ships
(:attr:`Shipper.since`); the leader publishes them (:meth:`SinkSet.record`) and a new leader
resumes from the last record it finds: every line of its buffers newer than its host's position
(or than ``since``, for a host none was delivered from) is shipped first. At least once: lines
delivered after the last record are shipped again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from flynn.logs import rfc5424
from flynn.logs.model import Line

log = logging.getLogger(__name__)

DEFAULT_BUFFER = 10_000
BATCH = 500
CONNECT_TIMEOUT = 10.0
MIN_DELAY, MAX_DELAY = 0.25, 5.0
DEFAULT_PORTS = {"syslog": 514, "syslog+tls": 6514}


Positions = dict[str, int]  # host id -> ts (µs) of the newest line delivered from that host


class BadSink(ValueError):
    pass


def parse_record(entry: Any) -> tuple[Positions, int] | None:
    """A sink's published position (``{"hosts": {HOST: TS}, "since": TS}``), or None when it is
    not one (a record is data from discoverd: anything else is ignored, not trusted)."""
    if not isinstance(entry, dict):
        return None
    hosts, since = entry.get("hosts"), entry.get("since")
    if not isinstance(hosts, dict) or not isinstance(since, int) or isinstance(since, bool):
        return None
    positions = {
        h: ts
        for h, ts in hosts.items()
        if isinstance(h, str) and isinstance(ts, int) and not isinstance(ts, bool)
    }
    return positions, since


@dataclass(frozen=True)
class SinkConfig:
    id: str
    url: str
    host: str
    port: int
    tls: bool
    ca_cert: str | None = None

    @classmethod
    def from_api(cls, sink: Any) -> SinkConfig:
        """A sink as the controller answers it (``{"id", "kind", "url", "use_tls", "ca_cert"}``)."""
        if not isinstance(sink, dict) or sink.get("kind") != "syslog" or not isinstance(sink.get("id"), str):
            raise BadSink("not a syslog sink")
        url = sink.get("url")
        if not isinstance(url, str):
            raise BadSink("the sink has no url")
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise BadSink(f"{url!r} is not syslog://HOST:PORT or syslog+tls://HOST:PORT")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise BadSink(f"{url!r} has a bad port") from None
        ca = sink.get("ca_cert")
        tls = parts.scheme == "syslog+tls" or bool(sink.get("use_tls"))
        return cls(sink["id"], url, parts.hostname, port, tls, ca if isinstance(ca, str) and ca else None)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = (
            ssl.create_default_context(cadata=self.ca_cert) if self.ca_cert else ssl.create_default_context()
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


@dataclass
class Shipper:
    config: SinkConfig
    capacity: int = DEFAULT_BUFFER
    queue: deque[Line] = field(default_factory=deque)
    delivered: int = 0
    dropped: int = 0
    connected: bool = False
    connects: int = 0
    error: str | None = None
    last_drop: float | None = None
    replayed: int = 0  # lines a resumed leadership shipped again from the buffers
    positions: Positions = field(default_factory=dict)
    since: int = 0  # ts of the newest line buffered when shipping began: older ones were never its
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _inflight: list[Line] = field(default_factory=list)
    _warned_at: float = 0.0

    def offer(self, line: Line) -> None:
        if len(self.queue) + len(self._inflight) >= self.capacity:
            if self.queue:
                self.queue.popleft()
            self._drop(1)
            if not self.queue:
                return  # the whole buffer is in flight: the newest line is the one dropped
        self.queue.append(line)
        self._wake.set()

    def _drop(self, n: int) -> None:
        self.dropped += n
        self.last_drop = time.time()
        now = time.monotonic()
        if now - self._warned_at >= 10:
            self._warned_at = now
            log.warning(
                "sink %s: buffer full (%d lines), dropping the oldest; %d dropped so far",
                self.config.id,
                self.capacity,
                self.dropped,
            )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name=f"sink-{self.config.id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.connected = False

    def status(self) -> dict[str, Any]:
        return {
            "id": self.config.id,
            "url": self.config.url,
            "connected": self.connected,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "buffered": len(self.queue) + len(self._inflight),
            "capacity": self.capacity,
            "replayed": self.replayed,
            "error": self.error,
        }

    def resume(self, positions: Positions, since: int, backlog: Iterable[Line]) -> int:
        """Take over from an earlier leader's record: ship every line of ``backlog`` it had not
        delivered (newer than its host's position, or than ``since``), oldest first."""
        self.since = since
        for host, ts in positions.items():
            self._advance(host, ts)
        queued = {*self.queue, *self._inflight}  # kept from an earlier leadership of this process
        pending = sorted(
            (
                line
                for line in backlog
                if not line.system
                and line.ts > self.positions.get(line.host_id, since)
                and line not in queued
            ),
            key=lambda line: line.ts,
        )
        for line in pending:
            self.offer(line)
        self.replayed += len(pending)
        return len(pending)

    def _delivered(self, lines: list[Line]) -> None:
        self.delivered += len(lines)
        for line in lines:
            self._advance(line.host_id, line.ts)

    def _advance(self, host: str, ts: int) -> None:
        if ts > self.positions.get(host, 0):
            self.positions[host] = ts

    async def run(self) -> None:
        delay = MIN_DELAY
        while True:
            try:
                reader, writer = await self._connect()
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                self.error = (
                    f"cannot connect to {self.config.host}:{self.config.port}: {exc or type(exc).__name__}"
                )
                log.info("sink %s: %s; retrying in %.1fs", self.config.id, self.error, delay)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter
                delay = min(delay * 2, MAX_DELAY)
                continue
            self.connected, self.error = True, None
            self.connects += 1
            delay = MIN_DELAY
            log.info("sink %s: connected to %s:%d", self.config.id, self.config.host, self.config.port)
            try:
                await self._send(reader, writer)
            except (OSError, ssl.SSLError, ConnectionError) as exc:
                self.error = f"connection lost: {exc or type(exc).__name__}"
            finally:
                self.connected = False
                self._requeue()
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            log.info("sink %s: %s", self.config.id, self.error or "connection closed")

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ctx = self.config.ssl_context()
        host = self.config.host
        async with asyncio.timeout(CONNECT_TIMEOUT):
            return await asyncio.open_connection(
                host, self.config.port, ssl=ctx, server_hostname=host if ctx is not None else None
            )

    def _requeue(self) -> None:
        """A batch that was not written goes back in front (dropping the oldest beyond capacity)."""
        if not self._inflight:
            return
        self.queue.extendleft(reversed(self._inflight))
        self._inflight = []
        excess = len(self.queue) - self.capacity
        if excess > 0:
            for _ in range(excess):
                self.queue.popleft()
            self._drop(excess)

    async def _send(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        closed = asyncio.Event()

        async def watch() -> None:  # a syslog receiver sends nothing: any read result is the end
            with contextlib.suppress(Exception):
                await reader.read(1)
            closed.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            while not closed.is_set():
                if not self.queue:
                    self._wake.clear()
                    waits = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(closed.wait())}
                    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    for p in pending:
                        p.cancel()
                    continue
                n = min(BATCH, len(self.queue))
                self._inflight = [self.queue.popleft() for _ in range(n)]
                writer.write(b"".join(rfc5424.frame(rfc5424.message(line)) for line in self._inflight))
                await writer.drain()
                await asyncio.sleep(0)  # let a close the peer sent already be seen first
                if closed.is_set():
                    break
                self._delivered(self._inflight)
                self._inflight = []
            self.error = "the sink closed the connection"
        finally:
            watcher.cancel()


class SinkSet:
    """The shippers of the configured sinks; only the aggregator leader runs them."""

    def __init__(self, capacity: int = DEFAULT_BUFFER, backlog: Callable[[], Iterable[Line]] = tuple) -> None:
        self.capacity = capacity
        self.backlog = backlog  # every buffered line (the aggregator's buffers), for a resume
        self.shippers: dict[str, Shipper] = {}
        self.active = False
        self.resume_from: dict[str, Any] = {}  # the record this leadership started from

    async def configure(self, sinks: Iterable[SinkConfig]) -> None:
        wanted = {s.id: s for s in sinks}
        for sink_id in list(self.shippers):
            if sink_id not in wanted or self.shippers[sink_id].config != wanted[sink_id]:
                await self.shippers.pop(sink_id).stop()
                log.info("sink %s removed", sink_id)
        for sink_id, cfg in wanted.items():
            if sink_id not in self.shippers:
                shipper = self.shippers[sink_id] = Shipper(cfg, self.capacity)
                # in the lines' own clock (the hosts' journals), not this machine's
                shipper.since = max((line.ts for line in self.backlog()), default=0)
                log.info("sink %s: %s", sink_id, cfg.url)
                if self.active:
                    self._resume(shipper)
                    shipper.start()

    async def activate(self, active: bool, record: dict[str, Any] | None = None) -> None:
        """Start (leader) or stop (not leader) shipping; a stopped shipper's buffer is kept.
        ``record``: the positions the previous leader published (:meth:`record`), resumed from."""
        self.active = active
        if active:
            self.resume_from = record if isinstance(record, dict) else {}
        for shipper in self.shippers.values():
            if active:
                self._resume(shipper)
                shipper.start()
            else:
                await shipper.stop()

    def _resume(self, shipper: Shipper) -> None:
        parsed = parse_record(self.resume_from.get(shipper.config.id))
        if parsed is None:
            return  # a sink no leader shipped to yet: it starts with the live lines
        n = shipper.resume(*parsed, self.backlog())
        log.info(
            "sink %s: resumed from the last leader's position, %d buffered lines to ship",
            shipper.config.id,
            n,
        )

    def record(self) -> dict[str, Any]:
        """What a successor resumes from: per sink, per host, the newest line delivered."""
        return {
            sink_id: {"hosts": dict(s.positions), "since": s.since}
            for sink_id, s in sorted(self.shippers.items())
        }

    def offer(self, line: Line) -> None:
        if not self.active or line.system:
            return
        for shipper in self.shippers.values():
            shipper.offer(line)

    def status(self) -> list[dict[str, Any]]:
        return [s.status() for _, s in sorted(self.shippers.items())]

    async def close(self) -> None:
        for shipper in self.shippers.values():
            await shipper.stop()
