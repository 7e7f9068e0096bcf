"""The aggregator's HTTP API (internal: the controller proxies ``GET /apps/:app/log`` to it).

* ``GET /apps/:key/log?lines=N&follow=true&process_type=T&job_id=J``: newline-delimited JSON
  lines, oldest first (:meth:`flynn.logs.model.Line.to_json`); ``key`` is an app id, or a platform
  service's name. ``follow`` keeps the response open and sends new lines as they come (an empty
  line every 15 s keeps it alive); a follower that falls too far behind gets a last
  ``{"error": ...}`` line.
* ``GET /status``: hosts followed, buffers, sinks, leadership.
* ``GET /sinks/status``: each sink's ``delivered``, ``dropped``, ``buffered``, ``connected``,
  ``error``.

Bad parameters answer 400 ``{"error", "code"}``; nothing is changed by any request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from flynn.common.web import error_middleware, json_error
from flynn.logs.buffer import Buffers, LineFilter
from flynn.logs.model import Line

KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}$")
JOB_ID_RE = re.compile(r"^[A-Za-z0-9]{1,63}-[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
KEEPALIVE = 15.0
NDJSON = "application/x-ndjson"


class BadRequest(ValueError):
    pass


def _flag(query: Any, name: str) -> bool:
    raw = query.get(name)
    if raw in (None, "", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    raise BadRequest(f"{name}: {str(raw)[:20]!r} is not true or false")


def line_filter(process_type: str | None, job_id: str | None) -> LineFilter | None:
    if process_type is None and job_id is None:
        return None

    def keep(line: Line) -> bool:
        return (process_type is None or line.type == process_type) and (
            job_id is None or line.job_id == job_id
        )

    return keep


def encode(line: Line) -> bytes:
    return json.dumps(line.to_json(), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class LogAPI:
    def __init__(
        self,
        buffers: Buffers,
        status: Callable[[], dict[str, Any]],
        sink_status: Callable[[], dict[str, Any]],
        *,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self.buffers = buffers
        self.status = status
        self.sink_status = sink_status
        self.keepalive = keepalive

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[error_middleware])
        app.router.add_get("/apps/{key}/log", self.app_log)
        app.router.add_get("/status", self.get_status)
        app.router.add_get("/sinks/status", self.get_sinks)
        return app

    async def get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def get_sinks(self, request: web.Request) -> web.Response:
        return web.json_response(self.sink_status())

    def _params(self, request: web.Request) -> tuple[str, int | None, bool, LineFilter | None]:
        key = request.match_info["key"]
        if not KEY_RE.fullmatch(key):
            raise BadRequest(f"{key[:80]!r} is not an app id or service name")
        q = request.query
        lines: int | None = None
        if q.get("lines"):
            if not re.fullmatch(r"[0-9]{1,7}", q["lines"]):
                raise BadRequest(f"lines: {q['lines'][:20]!r} is not a whole number")
            lines = min(int(q["lines"]), self.buffers.capacity)
        ptype = q.get("process_type") or None
        if ptype is not None and not TYPE_RE.fullmatch(ptype):
            raise BadRequest(f"process_type: {ptype[:40]!r} is not a process type")
        job_id = q.get("job_id") or None
        if job_id is not None and not JOB_ID_RE.fullmatch(job_id):
            raise BadRequest(f"job_id: {job_id[:80]!r} is not a job id")
        return key, lines, _flag(q, "follow"), line_filter(ptype, job_id)

    async def app_log(self, request: web.Request) -> web.StreamResponse:
        try:
            key, lines, follow, keep = self._params(request)
        except BadRequest as exc:
            return json_error(400, str(exc))
        sub = self.buffers.subscribe(key) if follow else None  # before the snapshot: nothing falls between
        try:
            snapshot = self.buffers.last(key, lines, keep)
            resp = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"})
            await resp.prepare(request)
            chunk: list[bytes] = []
            for line in snapshot:
                chunk.append(encode(line))
                if len(chunk) >= 500:
                    await resp.write(b"".join(chunk))
                    chunk = []
            if chunk:
                await resp.write(b"".join(chunk))
            if sub is not None:
                await self._follow(resp, sub.queue, keep)
            await resp.write_eof()
            return resp
        finally:
            if sub is not None:
                sub.close()

    async def _follow(
        self, resp: web.StreamResponse, queue: asyncio.Queue[Line | None], keep: LineFilter | None
    ) -> None:
        while True:
            try:
                async with asyncio.timeout(self.keepalive):
                    line = await queue.get()
            except TimeoutError:
                await resp.write(b"\n")
                continue
            if line is None:
                await resp.write(b'{"error":"this reader fell too far behind the log; follow again"}\n')
                return
            batch = [line] if keep is None or keep(line) else []
            while not queue.empty() and len(batch) < 500:  # lines that came together go out together
                more = queue.get_nowait()
                if more is None:
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(None)
                    break
                if keep is None or keep(more):
                    batch.append(more)
            if batch:
                await resp.write(b"".join(encode(x) for x in batch))
