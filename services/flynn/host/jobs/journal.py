"""A job's log lines from the journal (systemd-python's ``journal.Reader``).

Jobs log to journald with ``FLYNN_JOB_ID=<id>`` on every line (``LogExtraFields=``), which is the
match used here, so the lines of a job are found in every boot's journal. Following is driven by
the journal's inotify descriptor in the event loop (``loop.add_reader``), not by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger(__name__)

YIELD_EVERY = 500
SETTLE = 1.0  # after the job ended, lines still arriving within this are shown


@dataclass(frozen=True)
class LogLine:
    message: str
    timestamp: str
    priority: int

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "timestamp": self.timestamp, "priority": self.priority}


class LogSource(Protocol):
    def lines(
        self, job_id: str, *, last: int | None, follow: bool, ended: asyncio.Event
    ) -> AsyncIterator[LogLine]: ...


def _line(entry: dict[str, Any]) -> LogLine:
    message = entry.get("MESSAGE", "")
    if isinstance(message, bytes):
        message = message.decode(errors="replace")
    ts = entry.get("__REALTIME_TIMESTAMP")
    stamp = ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(ts, datetime) else ""
    try:
        priority = int(entry.get("PRIORITY", 6))
    except (TypeError, ValueError):
        priority = 6
    return LogLine(str(message), stamp, priority)


class Journal:
    """The real :class:`LogSource`."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path  # a journal directory (tests); default: the system journal

    def _reader(self, job_id: str) -> Any:
        from systemd import journal

        reader = journal.Reader(path=self.path) if self.path else journal.Reader()
        reader.add_match(FLYNN_JOB_ID=job_id)
        return reader

    async def lines(
        self, job_id: str, *, last: int | None, follow: bool, ended: asyncio.Event
    ) -> AsyncIterator[LogLine]:
        reader = self._reader(job_id)
        try:
            cursor: str | None = None
            if last is not None:
                reader.seek_tail()
                tail: list[dict[str, Any]] = []
                for _ in range(last):
                    entry = reader.get_previous()
                    if not entry:
                        break
                    tail.append(entry)
                for entry in reversed(tail):
                    yield _line(entry)
                if tail:
                    cursor = tail[0]["__CURSOR"]
                    reader.seek_cursor(cursor)
                    reader.get_next()  # positioned on the newest shown; the next read is past it
                else:
                    reader.seek_tail()
                    reader.get_previous()
            else:
                count = 0
                while entry := reader.get_next():
                    yield _line(entry)
                    count += 1
                    if count % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
            if not follow:
                return
            async for line in self._follow(reader, ended):
                yield line
        finally:
            reader.close()

    async def _follow(self, reader: Any, ended: asyncio.Event) -> AsyncIterator[LogLine]:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        fd = reader.fileno()

        def readable() -> None:
            with contextlib.suppress(Exception):
                reader.process()
            wake.set()

        loop.add_reader(fd, readable)

        async def on_end() -> None:
            await ended.wait()
            wake.set()

        end_watch = loop.create_task(on_end())
        try:
            quiet_since: float | None = None
            while True:
                got = 0
                while entry := reader.get_next():
                    got += 1
                    yield _line(entry)
                    if got % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                if ended.is_set():
                    now = loop.time()
                    if got or quiet_since is None:
                        quiet_since = now
                    elif now - quiet_since >= SETTLE:
                        return
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    # once the job ended, lines still in flight get SETTLE seconds to arrive
                    async with asyncio.timeout(SETTLE / 2 if ended.is_set() else None):
                        await wake.wait()
        finally:
            end_watch.cancel()
            loop.remove_reader(fd)
