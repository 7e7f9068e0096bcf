"""``GET /host/logs``: this host's job log lines from the journal, as Server-Sent Events.

What the log aggregator follows (docs/logs.md). Job lines are the journal entries of units in
``flynn-jobs.slice``; with ``platform=true`` also those of the platform's own units
(``flynn-*.service`` in ``flynn.slice``). Each SSE message is one line, ``id:`` its journal cursor::

    event: line
    id: s=...;i=...
    data: {"cursor", "ts" (µs since the epoch), "host_id", "app_id", "app_name", "job_id", "type",
           "release_id", "stream", "priority", "msg"}

``lines=N`` sends the last N matching lines first (``per_app=true``: the last N of every app and
platform service, merged in time order, what an aggregator rebuilds its buffers from); then
``event: live`` (data ``{"cursor": C}``, the entry following continues after) marks the end of
that backlog and, with ``follow=true``, new lines follow as journald writes them (the reader's
inotify descriptor is watched by the event loop: no polling). ``cursor=`` (or
``Last-Event-ID``) resumes exactly after that entry instead, with no backlog. ``app_id=``,
``job_id=`` filter. A ``: keepalive`` comment is sent every 15 s.

Identity is taken from what an app cannot forge: the job id from journald's own ``_SYSTEMD_UNIT``
(``flynn-job-ID.service``), the app, release and type from the host's record of that job (the
``FLYNN_*`` fields of the entry only for jobs the host no longer has a record of). ``stream`` is
``stdout`` or ``stderr`` for the job's output (told apart by the priority its journal stream was
opened with, 6 or 3: see :mod:`flynn.host.jobs.logwrap`), else journald's transport (``syslog``,
``journal``) for lines an app or service sent itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from flynn.host.jobs.spec import OBJECT_ID_RE

log = logging.getLogger(__name__)

JOB_SLICE = "flynn-jobs.slice"
PLATFORM_SLICE = "flynn.slice"
JOB_UNIT_RE = re.compile(r"^flynn-job-([A-Za-z0-9][A-Za-z0-9-]{0,130})\.service$")
PLATFORM_UNIT_RE = re.compile(r"^flynn-([a-z0-9][a-z0-9-]{0,62})\.service$")
JOB_ID_RE = re.compile(r"^[A-Za-z0-9]{1,63}-[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
CURSOR_RE = re.compile(r"^[A-Za-z0-9=;_-]{1,512}$")
STDOUT_PRIORITY, STDERR_PRIORITY = 6, 3
MAX_LINES = 100_000
DEFAULT_LINES = 100
KEEPALIVE = 15.0
BATCH = 500  # entries per write
FIELDS = (
    "MESSAGE",
    "PRIORITY",
    "_TRANSPORT",
    "_SYSTEMD_UNIT",
    "FLYNN_APP_ID",
    "FLYNN_APP_NAME",
    "FLYNN_RELEASE_ID",
    "FLYNN_PROCESS_TYPE",
)

Raw = dict[str, Any]  # the FIELDS present in an entry, plus "__CURSOR" and "__REALTIME" (µs)


class Reader(Protocol):
    """The part of a journal reader this module uses (systemd's, or a fake in tests)."""

    def fileno(self) -> int: ...
    def process(self) -> None: ...
    def add_match(self, match: str) -> None: ...
    def add_disjunction(self) -> None: ...
    def seek_tail(self) -> None: ...
    def seek_cursor(self, cursor: str) -> None: ...
    def test_cursor(self, cursor: str) -> bool: ...
    def next(self) -> Raw | None: ...
    def previous(self) -> Raw | None: ...
    def unique(self, field: str) -> set[str]: ...
    def close(self) -> None: ...


class SystemdReader:
    """systemd-python's ``journal.Reader``, reading only :data:`FIELDS` of each entry (its
    ``_next``/``_get`` are about 3 times faster than converting whole entries)."""

    def __init__(self, path: str | None = None) -> None:
        from systemd import journal

        self._r = journal.Reader(path=path) if path else journal.Reader()

    def fileno(self) -> int:
        return int(self._r.fileno())

    def process(self) -> None:
        self._r.process()

    def add_match(self, match: str) -> None:
        self._r.add_match(match)

    def add_disjunction(self) -> None:
        self._r.add_disjunction()

    def seek_tail(self) -> None:
        self._r.seek_tail()

    def seek_cursor(self, cursor: str) -> None:
        self._r.seek_cursor(cursor)

    def test_cursor(self, cursor: str) -> bool:
        return bool(self._r.test_cursor(cursor))

    def _entry(self) -> Raw:
        raw: Raw = {"__CURSOR": self._r._get_cursor(), "__REALTIME": int(self._r._get_realtime())}
        for name in FIELDS:
            try:
                raw[name] = self._r._get(name).decode(errors="replace")
            except KeyError:
                continue
        return raw

    def next(self) -> Raw | None:
        return self._entry() if self._r._next() else None

    def previous(self) -> Raw | None:
        return self._entry() if self._r._previous() else None

    def unique(self, field: str) -> set[str]:
        values = self._r.query_unique(field)
        return {v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in values}

    def close(self) -> None:
        self._r.close()


ReaderFactory = Callable[[], Reader]
# job id -> its app id, app name, release id and type, as the host recorded them (None: unknown)
JobLookup = Callable[[str], "JobIdentity | None"]


@dataclass(frozen=True)
class JobIdentity:
    app_id: str | None
    app_name: str | None
    release_id: str | None
    type: str | None


class _Records(Protocol):
    def get(self, job_id: str) -> Any: ...


def records_lookup(records: _Records) -> JobLookup:
    """A :data:`JobLookup` on the host's job records (:class:`flynn.host.jobs.manager.JobManager`)."""

    def lookup(job_id: str) -> JobIdentity | None:
        record = records.get(job_id)
        if record is None:
            return None
        spec = record.spec
        return JobIdentity(spec.app_id, spec.app_name, spec.release_id, spec.type)

    return lookup


@dataclass(frozen=True)
class Live:
    """Where the backlog ends: following continues after the entry at ``cursor`` (None: from the
    start of an empty journal)."""

    cursor: str | None


@dataclass(frozen=True)
class Query:
    app_id: str | None = None
    job_id: str | None = None
    lines: int | None = None
    per_app: bool = False
    follow: bool = False
    cursor: str | None = None
    platform: bool = False


class BadQuery(ValueError):
    pass


def _flag(query: Any, name: str) -> bool:
    raw = query.get(name)
    if raw in (None, "", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    raise BadQuery(f"{name}={str(raw)[:20]!r} is not true or false")


def parse_query(query: Any, last_event_id: str | None = None) -> Query:
    app_id = query.get("app_id") or None
    if app_id is not None and not OBJECT_ID_RE.fullmatch(app_id):
        raise BadQuery(f"app_id={app_id[:80]!r} is not an app id")
    job_id = query.get("job_id") or None
    if job_id is not None and not JOB_ID_RE.fullmatch(job_id):
        raise BadQuery(f"job_id={job_id[:80]!r} is not a job id (HOSTID-ID)")
    lines: int | None = None
    raw = query.get("lines")
    if raw not in (None, ""):
        if not re.fullmatch(r"[0-9]{1,7}", raw):
            raise BadQuery(f"lines={raw[:20]!r} is not a number")
        lines = int(raw)
        if lines > MAX_LINES:
            raise BadQuery(f"lines={lines} is over {MAX_LINES}")
    cursor = query.get("cursor") or last_event_id or None
    if cursor is not None and not CURSOR_RE.fullmatch(cursor):
        raise BadQuery("cursor is not a journal cursor")
    q = Query(
        app_id=app_id,
        job_id=job_id,
        lines=lines,
        per_app=_flag(query, "per_app"),
        follow=_flag(query, "follow"),
        cursor=cursor,
        platform=_flag(query, "platform"),
    )
    if q.cursor is not None and q.lines is not None:
        raise BadQuery("give either cursor (resume) or lines (backlog), not both")
    if q.platform and (q.app_id or q.job_id):
        raise BadQuery("platform=true cannot be combined with app_id or job_id")
    return q


def add_matches(reader: Reader, q: Query, *, app_id: str | None = None, unit: str | None = None) -> None:
    """Job entries (of one app, one job or one unit), or'ed with platform entries when asked."""
    if unit is not None:
        reader.add_match(f"_SYSTEMD_UNIT={unit}")
        return
    reader.add_match(f"_SYSTEMD_SLICE={JOB_SLICE}")
    if q.job_id:
        reader.add_match(f"_SYSTEMD_UNIT=flynn-job-{q.job_id}.service")
    if app_id or q.app_id:
        reader.add_match(f"FLYNN_APP_ID={app_id or q.app_id}")
    if q.platform and app_id is None:
        reader.add_disjunction()
        reader.add_match(f"_SYSTEMD_SLICE={PLATFORM_SLICE}")


def _stream(raw: Raw, priority: int) -> str:
    transport = raw.get("_TRANSPORT", "")
    if transport == "stdout":
        return "stderr" if priority == STDERR_PRIORITY else "stdout"
    return transport or "journal"


def to_line(raw: Raw, host_id: str, lookup: JobLookup) -> dict[str, Any] | None:
    """The API form of a journal entry, or None when it is not a job's or platform unit's line."""
    unit = raw.get("_SYSTEMD_UNIT", "")
    try:
        priority = int(raw.get("PRIORITY", STDOUT_PRIORITY))
    except ValueError:
        priority = STDOUT_PRIORITY
    line: dict[str, Any] = {
        "cursor": raw["__CURSOR"],
        "ts": int(raw["__REALTIME"]),
        "host_id": host_id,
        "system": False,
        "stream": _stream(raw, priority),
        "priority": priority,
        "msg": raw.get("MESSAGE", ""),
    }
    m = JOB_UNIT_RE.fullmatch(unit)
    if m is not None:
        job_id = m.group(1)
        known = lookup(job_id)
        ident = known or JobIdentity(
            raw.get("FLYNN_APP_ID"),
            raw.get("FLYNN_APP_NAME"),
            raw.get("FLYNN_RELEASE_ID"),
            raw.get("FLYNN_PROCESS_TYPE"),
        )
        line.update(
            app_id=ident.app_id,
            app_name=ident.app_name,
            job_id=job_id,
            type=ident.type,
            release_id=ident.release_id,
        )
        return line
    m = PLATFORM_UNIT_RE.fullmatch(unit)
    if m is not None:
        name = m.group(1)
        job_id = f"{host_id}-{name}"
        line.update(system=True, app_id=None, app_name=name, job_id=job_id, type="service", release_id=None)
        return line
    return None


def accepts(line: dict[str, Any], q: Query, app_id: str | None = None) -> bool:
    """The post-check of a line the journal matched (an app may log fields that name another)."""
    want_app = app_id or q.app_id
    if want_app is not None and line["app_id"] != want_app:
        return False
    if q.job_id is not None and line["job_id"] != q.job_id:
        return False
    return q.platform or not line["system"]


class HostLogs:
    """Opens readers and turns a :class:`Query` into lines: the backlog, then the live ones."""

    def __init__(self, host_id: str, lookup: JobLookup, open_reader: ReaderFactory = SystemdReader) -> None:
        self.host_id = host_id
        self.lookup = lookup
        self.open_reader = open_reader

    def _line(self, raw: Raw, q: Query, app_id: str | None = None) -> dict[str, Any] | None:
        line = to_line(raw, self.host_id, self.lookup)
        if line is None or not accepts(line, q, app_id):
            return None
        return line

    def _last(self, q: Query, n: int, start: str | None, **match: str | None) -> list[dict[str, Any]]:
        """The last ``n`` accepted lines at or before cursor ``start`` (or the tail), oldest first."""
        if n <= 0:
            return []
        reader = self.open_reader()
        try:
            add_matches(reader, q, **match)
            if start is None:
                reader.seek_tail()
            else:
                reader.seek_cursor(start)
            out: list[dict[str, Any]] = []
            while len(out) < n and (raw := reader.previous()) is not None:
                line = self._line(raw, q, match.get("app_id"))
                if line is not None:
                    out.append(line)
            out.reverse()
            return out
        finally:
            reader.close()

    def backlog(self, reader: Reader, q: Query) -> tuple[list[dict[str, Any]], str | None]:
        """The backlog and the cursor ``reader`` is positioned at (following continues after it)."""
        reader.seek_tail()
        newest = reader.previous()
        if newest is None:
            return [], None
        tail = str(newest["__CURSOR"])
        n = DEFAULT_LINES if q.lines is None else q.lines
        if not q.per_app:
            return self._last(q, n, tail), tail
        runs: list[list[dict[str, Any]]] = []
        apps = [q.app_id] if q.app_id else sorted(reader.unique("FLYNN_APP_ID"))
        for app_id in apps:
            if OBJECT_ID_RE.fullmatch(app_id):
                runs.append(self._last(q, n, tail, app_id=app_id))
        if q.platform:
            units = sorted(
                u
                for u in reader.unique("_SYSTEMD_UNIT")
                if PLATFORM_UNIT_RE.fullmatch(u) and not JOB_UNIT_RE.fullmatch(u)
            )
            for unit in units:
                runs.append(self._last(q, n, tail, unit=unit))
        # each run is in journal order; merging by time keeps that order within a run
        return list(heapq.merge(*runs, key=lambda line: line["ts"])), tail

    def resume(self, reader: Reader, cursor: str) -> Raw | None:
        """Position ``reader`` right after ``cursor``. Returns the entry it landed on if that is
        not the cursor's own (which was vacuumed): that one is then already a new entry."""
        reader.seek_cursor(cursor)
        raw = reader.next()
        if raw is not None and not reader.test_cursor(cursor):
            return raw
        return None

    def _lines(self, raws: list[Raw], q: Query) -> list[dict[str, Any]]:
        return [line for raw in raws if (line := self._line(raw, q)) is not None]

    async def lines(self, q: Query) -> AsyncGenerator[list[dict[str, Any]] | Live, None]:
        """Lines of the query in batches (what journald had at once, at most :data:`BATCH`), with
        one :class:`Live` where the backlog ends."""
        reader = self.open_reader()
        try:
            add_matches(reader, q)
            if q.cursor is not None:  # no backlog: everything from here on is new
                raw = self.resume(reader, q.cursor)
                yield Live(q.cursor)
                if raw is not None:
                    yield self._lines([raw], q)
            else:
                # a backlog of 10,000 lines per app takes a while to read: off the event loop
                backlog, position = await asyncio.to_thread(self.backlog, reader, q)
                for i in range(0, len(backlog), BATCH):
                    yield backlog[i : i + BATCH]
                yield Live(position)
            if not q.follow:  # what is there now, then the end
                while batch := _drain(reader):
                    yield self._lines(batch, q)
                return
            async for batch in follow(reader):
                yield self._lines(batch, q)
        finally:
            reader.close()


def _drain(reader: Reader) -> list[Raw]:
    """The entries after the reader's position that are there now, at most :data:`BATCH`."""
    batch: list[Raw] = []
    while len(batch) < BATCH and (raw := reader.next()) is not None:
        batch.append(raw)
    return batch


async def follow(reader: Reader, *, idle: float | None = None) -> AsyncIterator[list[Raw]]:
    """Entries after the reader's position as journald writes them, in batches. The journal's
    descriptor is watched by the event loop (``add_reader``); ``idle`` seconds without an entry
    end it."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    fd = reader.fileno()

    def readable() -> None:
        with contextlib.suppress(Exception):
            reader.process()
        wake.set()

    loop.add_reader(fd, readable)
    try:
        while True:
            while batch := _drain(reader):
                yield batch
                await asyncio.sleep(0)  # a busy journal does not hold the loop
            wake.clear()
            try:
                async with asyncio.timeout(idle):
                    await wake.wait()
            except TimeoutError:
                return
    finally:
        loop.remove_reader(fd)


# -- the route -----------------------------------------------------------------------------------

SOURCE: web.AppKey[HostLogs] = web.AppKey("log_source", HostLogs)


def _sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def host_logs(request: web.Request) -> web.StreamResponse:
    try:
        q = parse_query(request.query, request.headers.get("Last-Event-ID", "").strip() or None)
    except BadQuery as exc:
        return web.json_response({"error": str(exc), "code": 400}, status=400)
    source = request.app[SOURCE]
    lines = source.lines(q)
    try:
        first = await anext(lines)
    except OSError as exc:  # a cursor journald cannot seek to
        await lines.aclose()
        return web.json_response({"error": f"cannot read the journal: {exc}", "code": 400}, status=400)
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    pending: asyncio.Task[list[dict[str, Any]] | Live] | None = None
    try:
        item: list[dict[str, Any]] | Live = first
        while True:
            if isinstance(item, Live):
                await resp.write(_sse("live", {"cursor": item.cursor}, item.cursor))
            elif item:
                await resp.write(b"".join(_sse("line", line, line["cursor"]) for line in item))
            pending = asyncio.ensure_future(anext(lines))
            while True:
                done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE)
                if done:
                    break
                await resp.write(b": keepalive\n\n")
            try:
                item = pending.result()
            except StopAsyncIteration:
                break
            finally:
                pending = None
        await resp.write_eof()
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await lines.aclose()
    return resp


def add_routes(app: web.Application, source: HostLogs) -> None:
    app[SOURCE] = source
    app.router.add_get("/host/logs", host_logs)
