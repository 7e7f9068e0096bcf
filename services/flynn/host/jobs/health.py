"""Health checks run by the host before a job with a ``service`` is registered in discoverd.

The job shares the host's network and listens on ``0.0.0.0:$PORT``, so the host checks
``127.0.0.1:$PORT``: ``tcp`` passes once a connection is accepted, ``http`` once ``GET path``
answers the expected status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from flynn.host.jobs.spec import Check

log = logging.getLogger(__name__)

ATTEMPT_TIMEOUT = 2.0
INTERVAL = 0.25
MAX_INTERVAL = 1.0


async def check_once(check: Check, port: int, host: str = "127.0.0.1") -> str | None:
    """None when the check passes, else the reason it did not."""
    try:
        if check.type == "tcp":
            async with asyncio.timeout(ATTEMPT_TIMEOUT):
                _, writer = await asyncio.open_connection(host, port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return None
        url = f"http://{host}:{port}{check.path}"
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                url, timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT), allow_redirects=False
            ) as resp,
        ):
            if resp.status == check.status:
                return None
            return f"GET {check.path} answered {resp.status}, expected {check.status}"
    except (OSError, TimeoutError, aiohttp.ClientError) as exc:
        return f"{check.type} check of port {port}: {exc or type(exc).__name__}"


async def wait_healthy(check: Check, port: int, host: str = "127.0.0.1") -> None:
    """Return once ``check`` passes; raise TimeoutError (with the last reason) after
    ``check.timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + check.timeout
    delay = INTERVAL
    reason = "not checked yet"
    while True:
        failure = await check_once(check, port, host)
        if failure is None:
            return
        reason = failure
        if loop.time() + delay >= deadline:
            raise TimeoutError(f"health check did not pass within {check.timeout}s: {reason}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, MAX_INTERVAL)
