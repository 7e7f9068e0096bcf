"""``GET /status`` of a host's router: every worker's ``Router.status()`` summed into one answer.

Each worker is a whole router with its own counters and control plane; :func:`combine` adds up
the counters, takes the routes, listeners and backend sets from the first worker (the workers
follow the same controller and discoverd, so they agree once synced) with the in-flight counts
summed, and reports the control plane of each worker. The answer is 200 with ``"status": "ok"``
when every worker answered and (with a control plane) every one has loaded the routes and the
backends of every routed service; 503 with ``"starting"`` or ``"degraded"`` otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from flynn.common.web import error_middleware
from flynn.router.stats import FIELDS

log = logging.getLogger(__name__)

StatusSource = Callable[[], Awaitable[dict[str, Any] | None]]
COUNTERS = (*(name for name in FIELDS if name != "started"), "errors")


def combine(parts: Sequence[dict[str, Any] | None], **info: Any) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for the statuses of every worker (None: that worker did not answer)."""
    alive = [p for p in parts if p is not None]
    out: dict[str, Any] = {"status": "ok", **info}
    out["workers"] = {"count": len(parts), "answered": len(alive), "pids": [p.get("pid") for p in alive]}
    for name in COUNTERS:
        out[name] = sum(int(p.get(name, 0)) for p in alive)
    out["uptime"] = max((float(p.get("uptime", 0)) for p in alive), default=0.0)
    first = alive[0] if alive else {}
    out["routes"] = first.get("routes", {"http": 0, "tcp": 0})
    services: dict[str, dict[str, Any]] = {}
    for p in alive:
        for name, svc in (p.get("services") or {}).items():
            entry = services.setdefault(
                name, {"backends": svc.get("backends", []), "ready": svc.get("ready", []), "inflight": 0}
            )
            entry["inflight"] += int(svc.get("inflight", 0))
    out["services"] = dict(sorted(services.items()))
    out["listeners"] = first.get("listeners", {})
    if "implementation" in first:  # the same in every worker: one package, one import
        out["implementation"] = first["implementation"]
    errors: dict[str, str] = {}
    for p in alive:
        errors.update(p.get("listen_errors") or {})
    if errors:
        out["listen_errors"] = errors
    planes = [p.get("control_plane") for p in alive]
    synced = True
    if any(plane is not None for plane in planes):
        real = [plane for plane in planes if plane is not None]
        synced = len(real) == len(alive) and all(plane.get("synced") for plane in real)
        head = real[0]
        out["control_plane"] = {
            "synced": synced,
            "controllers": head.get("controllers", []),
            "routes": head.get("routes", {}),
            "watches": head.get("watches", {}),
            "workers": [_worker_plane(p) for p in alive],
        }
    if len(alive) < len(parts) or not alive:
        out["status"] = "degraded" if alive else "starting"
    elif not synced:
        out["status"] = "starting"
    return (200 if out["status"] == "ok" else 503), out


def _worker_plane(part: dict[str, Any]) -> dict[str, Any]:
    plane = part.get("control_plane") or {}
    return {
        "pid": part.get("pid"),
        "synced": bool(plane.get("synced")),
        "last_event_id": (plane.get("routes") or {}).get("last_event_id"),
        "routes": part.get("routes"),
    }


async def gather(sources: Sequence[StatusSource], limit: float = 2.0) -> list[dict[str, Any] | None]:
    """Every source's status; None for one that fails or takes longer than ``limit`` seconds."""

    async def one(source: StatusSource) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(limit):
                return await source()
        except (TimeoutError, OSError, ValueError) as exc:
            log.warning("a router worker did not answer its status: %s", exc or type(exc).__name__)
            return None

    return list(await asyncio.gather(*(one(s) for s in sources)))


def make_app(sources: Sequence[StatusSource], info: Callable[[], dict[str, Any]]) -> web.Application:
    async def get_status(request: web.Request) -> web.Response:
        code, body = combine(await gather(sources), **info())
        return web.json_response(body, status=code)

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/status", get_status)
    return app
