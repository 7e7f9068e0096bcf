"""The host API on :1113 (aiohttp): ``GET /host/status``, plus the job runtime's routes
(:mod:`flynn.host.jobs.api`) when the daemon runs one."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

import flynn
from flynn.common.web import error_middleware
from flynn.host import sysinfo
from flynn.host.identity import HostIdentity

if TYPE_CHECKING:
    from flynn.host.jobs.journal import LogSource
    from flynn.host.jobs.manager import JobManager
    from flynn.host.jobs.platform import Platform
    from flynn.host.logs import HostLogs

IDENTITY: web.AppKey[HostIdentity] = web.AppKey("identity", HostIdentity)
CLOCK: web.AppKey[sysinfo.Clock] = web.AppKey("clock", sysinfo.Clock)
BUILD: web.AppKey[str] = web.AppKey("build", str)


async def host_status(request: web.Request) -> web.Response:
    identity = request.app[IDENTITY]
    uptime = sysinfo.boot_uptime()
    return web.json_response(
        {
            "id": identity.id,
            "hostname": socket.gethostname(),
            "version": flynn.__version__,
            "build": request.app[BUILD],
            "uptime": round(uptime, 3),
            "daemon_uptime": round(request.app[CLOCK].uptime(), 3),
            "created_at": identity.created_at,
            "booted_at": round(time.time() - uptime, 3),
            "machine_id": sysinfo.machine_id(),
            "addresses": sysinfo.addresses(),
        }
    )


def make_app(
    identity: HostIdentity,
    *,
    build_file: Path = Path("/opt/flynn/BUILD"),
    jobs: JobManager | None = None,
    logs: LogSource | None = None,
    platform: Platform | None = None,
    log_source: HostLogs | None = None,
) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=1 << 20)
    app[IDENTITY] = identity
    app[CLOCK] = sysinfo.Clock()
    app[BUILD] = sysinfo.read_first_line(build_file) or "source"
    app.router.add_get("/host/status", host_status)
    if jobs is not None:
        from flynn.host.jobs.api import add_routes
        from flynn.host.jobs.journal import Journal

        add_routes(app, manager=jobs, logs=logs or Journal(), platform=platform)
        from flynn.host import logs as host_logs

        source = log_source or host_logs.HostLogs(identity.id, host_logs.records_lookup(jobs))
        host_logs.add_routes(app, source)
    return app
