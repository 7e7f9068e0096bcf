"""HTTP routes of the job runtime (docs/host.md "API additions"), added to the host API app.

Every input is validated before anything happens; errors are ``{"error": ..., "code": N}`` JSON
(plus ``"field"`` for a bad job config field, and ``"job"`` for a 409 about an existing job).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web

from flynn.common.web import read_json
from flynn.host.jobs.attach import AttachSession
from flynn.host.jobs.journal import LogSource
from flynn.host.jobs.manager import JobError, JobManager
from flynn.host.jobs.platform import Platform, PlatformError
from flynn.host.jobs.spec import SpecError, parse_job

MANAGER: web.AppKey[JobManager] = web.AppKey("jobs", JobManager)
PLATFORM: web.AppKey[Platform] = web.AppKey("platform", Platform)
LOGS: web.AppKey[LogSource] = web.AppKey("logs", object)  # type: ignore[arg-type]
KEEPALIVE = 15.0
MAX_LINES = 100_000


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "code": status, **extra}, status=status)


def _job_error(exc: JobError) -> web.Response:
    extra = {"job": exc.job.to_api()} if exc.job is not None and exc.status == 409 else {}
    return _error(exc.status, str(exc), **extra)


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return False
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise web.HTTPBadRequest(text=f"{name}={raw[:20]!r} is not true or false")


def _wants_sse(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _sse_response(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    return resp


# -- jobs ----------------------------------------------------------------------------------------


async def list_jobs(request: web.Request) -> web.StreamResponse:
    manager = request.app[MANAGER]
    include_all = _flag(request, "all")
    if _wants_sse(request):
        return await _job_stream(request, manager)
    return web.json_response([j.to_api() for j in manager.listing(include_finished=include_all)])


async def _job_stream(request: web.Request, manager: JobManager) -> web.StreamResponse:
    sub = manager.hub.subscribe()  # before the snapshot: no change can fall between the two
    try:
        resp = await _sse_response(request)
        for job in reversed(manager.listing()):
            await resp.write(_sse("job", job.to_api()))
        await resp.write(_sse("current", {}))
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE):
                    event = await sub.get()
            except TimeoutError:
                await resp.write(b": keepalive\n\n")
                continue
            if event is None:  # dropped (too slow) or shutting down: the client reconnects
                return resp
            await resp.write(_sse("job", event))
    finally:
        sub.close()


def _job_or_404(request: web.Request) -> Any:
    job = request.app[MANAGER].get(request.match_info["id"])
    if job is None:
        raise web.HTTPNotFound(text=f"no job {request.match_info['id'][:100]!r} on this host")
    return job


async def get_job(request: web.Request) -> web.Response:
    return web.json_response(_job_or_404(request).to_api())


async def put_job(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    body = await read_json(request)
    try:
        spec = parse_job(body, manager.host_id, request.match_info["id"])
    except SpecError as exc:
        existing = manager.get(request.match_info["id"])
        if existing is not None:  # a repeated PUT of a known id is a conflict, whatever the body
            return _error(409, f"job {existing.id} already exists", job=existing.to_api())
        return _error(exc.status, str(exc), **({"field": exc.field} if exc.field else {}))
    try:
        job = await manager.create(spec)
    except JobError as exc:
        return _job_error(exc)
    return web.json_response(job.to_api(), status=201)


async def delete_job(request: web.Request) -> web.Response:
    _job_or_404(request)
    try:
        job = await request.app[MANAGER].stop(request.match_info["id"])
    except JobError as exc:
        return _job_error(exc)
    return web.json_response(job.to_api())


async def signal_job(request: web.Request) -> web.Response:
    _job_or_404(request)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"signal"}:
        return _error(400, 'the body must be {"signal": "SIGNAME"}', field="signal")
    try:
        job = await request.app[MANAGER].signal(request.match_info["id"], body["signal"])
    except JobError as exc:
        return _job_error(exc)
    return web.json_response(job.to_api())


def _lines(request: web.Request) -> int | None:
    raw = request.query.get("lines")
    if raw is None:
        return None
    try:
        last = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"lines={raw[:20]!r} is not a number") from None
    if not 0 <= last <= MAX_LINES:
        raise web.HTTPBadRequest(text=f"lines={last} is outside 0-{MAX_LINES}")
    return last


async def job_log(request: web.Request) -> web.StreamResponse:
    job = _job_or_404(request)
    manager = request.app[MANAGER]
    follow = _flag(request, "follow")
    last = _lines(request)
    ended = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    if job.final:
        ended.set()
    else:

        async def watch() -> None:
            await manager.wait_final(job.id)
            ended.set()

        watcher = asyncio.get_running_loop().create_task(watch())
    sse = _wants_sse(request)
    if sse:
        resp = await _sse_response(request)
    else:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await resp.prepare(request)
    try:
        async for line in request.app[LOGS].lines(job.id, last=last, follow=follow, ended=ended):
            if sse:
                await resp.write(_sse("line", line.to_json()))
            else:
                await resp.write(line.message.encode() + b"\n")
        if sse:
            await resp.write(_sse("eof", {}))
        await resp.write_eof()
    finally:
        if watcher is not None:
            watcher.cancel()
    return resp


async def attach_job(request: web.Request) -> web.StreamResponse:
    manager = request.app[MANAGER]
    job = _job_or_404(request)
    if not job.spec.attach:
        return _error(400, f"job {job.id} was not started with attach")
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=1 << 20)
    if not ws.can_prepare(request).ok:
        return _error(400, "this endpoint speaks WebSocket only")
    session = AttachSession(ws, manager, job.id)
    try:
        manager.attach(job.id, session)
    except JobError as exc:
        session.not_started(str(exc))
        session.close()
        return _job_error(exc)
    await ws.prepare(request)
    try:
        await session.run()
    finally:
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
    return ws


# -- platform ----------------------------------------------------------------------------------


async def put_platform(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM]
    name = request.match_info["name"]
    body = await read_json(request)
    try:
        answer = await platform.configure(name, body)
    except PlatformError as exc:
        return _error(exc.status, str(exc))
    return web.json_response(answer)


async def get_app_env(request: web.Request) -> web.Response:
    try:
        return web.json_response(request.app[PLATFORM].app_env_digest(request.match_info["name"]))
    except PlatformError as exc:
        return _error(exc.status, str(exc))


async def put_app_env(request: web.Request) -> web.Response:
    body = await read_json(request)
    try:
        answer = await request.app[PLATFORM].set_app_env(request.match_info["name"], body)
    except PlatformError as exc:
        return _error(exc.status, str(exc))
    return web.json_response(answer)


def add_routes(
    app: web.Application,
    *,
    manager: JobManager,
    logs: LogSource,
    platform: Platform | None = None,
) -> None:
    app[MANAGER] = manager
    app[LOGS] = logs
    app.router.add_get("/host/jobs", list_jobs)
    app.router.add_get("/host/jobs/{id}", get_job)
    app.router.add_put("/host/jobs/{id}", put_job)
    app.router.add_delete("/host/jobs/{id}", delete_job)
    app.router.add_post("/host/jobs/{id}/signal", signal_job)
    app.router.add_get("/host/jobs/{id}/log", job_log)
    app.router.add_get("/host/jobs/{id}/attach", attach_job)
    if platform is not None:
        app[PLATFORM] = platform
        app.router.add_put("/host/platform/{name}", put_platform)
        app.router.add_get("/host/platform/{name}/app-env", get_app_env)
        app.router.add_put("/host/platform/{name}/app-env", put_app_env)
