"""Server side of the platform's HTTP APIs (aiohttp), shared by every service.

:func:`error_middleware` turns every error into ``{"error": "...", "code": N}`` JSON, so bad input
always gets a 4xx with a one-line message and never an HTML page or a traceback. :func:`read_json`
parses and size-checks request bodies. :func:`serve_app` binds an application to its address.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

JSON = Any
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_JSON_BODY = 1 << 20  # 1 MiB: larger request bodies get 413


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "code": status}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.content_type == "application/json":
            raise
        reason = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return json_error(exc.status, reason or "error")
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "internal error")


def _too_large(max_bytes: int) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(
        max_size=max_bytes, actual_size=max_bytes + 1, text=f"request body larger than {max_bytes} bytes"
    )


async def read_json(request: web.Request, *, max_bytes: int = MAX_JSON_BODY) -> JSON:
    """Read and parse a JSON request body, answering 400/413/415 for bad input."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    ctype = request.content_type
    if ctype not in ("application/json", "application/octet-stream", "text/plain", ""):
        raise web.HTTPUnsupportedMediaType(text=f"expected application/json, got {ctype}")
    body = await request.content.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise _too_large(max_bytes)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise web.HTTPBadRequest(text=f"malformed JSON: {exc}") from None


async def serve_app(
    app: web.Application,
    ip: str,
    port: int,
    *,
    shutdown_timeout: float = 10,
    handler_cancellation: bool = False,
) -> web.AppRunner | None:
    """Serve *app* on ``ip:port`` (no access log: services log what matters themselves). None,
    with the reason logged, when the address cannot be bound: the caller exits non-zero."""
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        handler_cancellation=handler_cancellation,
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, ip, port, reuse_address=True).start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", ip, port, exc.strerror or exc)
        await runner.cleanup()
        return None
    return runner
