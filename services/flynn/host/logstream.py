"""Following a host's ``GET /host/logs`` (docs/logs.md), across reconnects, from the aggregator.

:class:`LogStream` is an async iterator of :class:`LogEvent`: the backlog lines (``live`` false),
one :data:`LIVE` marker where the host's backlog ends, then the live lines. A lost connection is
resumed with the cursor of the last entry the host reported (``Last-Event-ID``), so no line is
lost or repeated and lines after a resume are live; only a stream that never reached its first
``live`` event asks for the backlog again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from flynn.common.errors import APIError

if TYPE_CHECKING:
    from flynn.host.client import HostClient

log = logging.getLogger(__name__)

READ_TIMEOUT = 45.0  # the host sends a keepalive every 15 s


@dataclass
class SSEMessage:
    event: str = "message"
    id: str | None = None
    data: list[str] = field(default_factory=list)


def parse_block(block: bytes) -> SSEMessage | None:
    """One SSE message (the lines between blank lines); None for a comment-only block."""
    msg = SSEMessage()
    seen = False
    for raw in block.decode(errors="replace").split("\n"):
        line = raw.rstrip("\r")
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        seen = True
        if name == "event":
            msg.event = value
        elif name == "id":
            msg.id = value
        elif name == "data":
            msg.data.append(value)
    return msg if seen else None


async def sse_blocks(resp: aiohttp.ClientResponse) -> AsyncIterator[SSEMessage]:
    """The SSE messages of a response, read in whatever chunks arrive (a busy host sends hundreds
    of messages per chunk: splitting them here is cheaper than reading line by line)."""
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk
        *blocks, buf = buf.split(b"\n\n")
        for block in blocks:
            msg = parse_block(block)
            if msg is not None:
                yield msg


@dataclass(frozen=True)
class LogEvent:
    line: dict[str, Any] | None  # None for the marker where the backlog ends
    live: bool


LIVE = LogEvent(None, True)


@dataclass
class LogStream:
    client: HostClient
    params: Mapping[str, str] = field(default_factory=dict)  # app_id, job_id, platform, ...
    lines: int | None = None  # the backlog asked for on the first connection
    per_app: bool = False
    cursor: str | None = None  # resume after this entry (no backlog)
    max_delay: float = 5.0
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    reconnects: int = 0
    went_live: bool = False

    def __post_init__(self) -> None:
        if self.cursor is not None:
            self.went_live = True  # resuming: everything that comes is new

    def __aiter__(self) -> AsyncIterator[LogEvent]:
        return self._run()

    def _query(self) -> dict[str, str]:
        query = {**self.params, "follow": "true"}
        if self.cursor is not None:
            query["cursor"] = self.cursor
        elif self.lines is not None:
            query["lines"] = str(self.lines)
            if self.per_app:
                query["per_app"] = "true"
        return query

    async def _run(self) -> AsyncIterator[LogEvent]:
        delay = 0.2
        url = self.client.url + "/host/logs"
        while True:
            try:
                async with self.client.session.get(
                    url,
                    params=self._query(),
                    headers={"Accept": "text/event-stream"},
                    timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=self.client.timeout, sock_read=READ_TIMEOUT
                    ),
                ) as resp:
                    if resp.status >= 400:
                        body = await resp.json(content_type=None)
                        message = body.get("error") if isinstance(body, dict) else resp.reason
                        raise APIError(resp.status, str(message), url=url)
                    self.connected.set()
                    async for event in self._events(resp):
                        delay = 0.2
                        yield event
            except (aiohttp.ClientError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
                log.debug("log stream of %s: %s; reconnecting", self.client.url, exc)
            except APIError as exc:
                if exc.status == 400 and self.cursor is not None:
                    # a cursor the host's journal cannot seek to any more: start over from its tail
                    log.warning("host %s refused cursor (%s); following from its tail", self.client.url, exc)
                    self.cursor, self.lines = None, 0
                elif exc.status != 0 and exc.status < 500:
                    raise
            self.connected.clear()
            self.reconnects += 1
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, self.max_delay)

    async def _events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[LogEvent]:
        async for message in sse_blocks(resp):
            data = json.loads("\n".join(message.data)) if message.data else {}
            if message.event == "line":
                if message.id:
                    self.cursor = message.id
                yield LogEvent(data, self.went_live)
            elif message.event == "live":
                cursor = data.get("cursor") if isinstance(data, dict) else None
                if isinstance(cursor, str) and cursor:
                    self.cursor = cursor
                elif self.cursor is None:
                    self.lines = 0  # an empty journal: a reconnect must not replay a backlog
                first = not self.went_live
                self.went_live = True
                if first:
                    yield LIVE
