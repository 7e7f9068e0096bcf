"""The build job: ``flynn-slugbuilder`` on some host (``app_mode: build``), followed live.

The job is started with ``attach: true`` (its unit starts only once the attach WebSocket is
connected, so no output is lost) and its stdout/stderr frames are relayed to the push as they
come (docs/host.md "attach"); the exit frame ends it. Whatever interrupts the relay (the push
going away: the hook is cancelled) stops the job at once with ``DELETE /host/jobs/:id``; closing
the WebSocket before the exit would stop it too (the host's hang-up rule), so even a hook killed
with SIGKILL leaves no build running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from flynn.common.errors import APIError
from flynn.gitreceive.slug import Relay

log = logging.getLogger(__name__)

STDOUT, STDERR = 1, 2
STOP_WAIT = 10.0


class HostAPI(Protocol):
    """What is used of :class:`flynn.host.client.HostClient`."""

    async def start_job(self, config: Mapping[str, Any]) -> dict[str, Any]: ...

    async def stop_job(self, job_id: str) -> dict[str, Any]: ...

    async def get_job(self, job_id: str) -> dict[str, Any]: ...

    def attach_url(self, job_id: str) -> str: ...


class BuildError(Exception):
    """The build did not produce a slug; the message is the reason shown to the pusher."""


class StartError(BuildError):
    """The host did not take the build job; ``retry`` when another host may (unreachable, 5xx)."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class BuildResult:
    exit_status: int
    slug_line: str | None


async def stop(host: HostAPI, job_id: str) -> None:
    """Stop the job, whatever happens to the caller meanwhile (bounded)."""
    task = asyncio.ensure_future(host.stop_job(job_id))
    try:
        async with asyncio.timeout(STOP_WAIT):
            await asyncio.shield(task)
    except (APIError, TimeoutError) as exc:
        log.warning("could not stop build job %s: %s", job_id, exc)
    except asyncio.CancelledError:
        with contextlib.suppress(APIError, TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(STOP_WAIT):
                await task
        raise


async def _follow(
    session: aiohttp.ClientSession, url: str, relay: Relay, write: Callable[[bytes], None]
) -> dict[str, Any] | None:
    """Relay the attach WebSocket's output frames; the exit frame (None if the stream just ended)."""
    async with session.ws_connect(
        url, heartbeat=30.0, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5)
    ) as ws:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY and msg.data:
                if msg.data[0] == STDOUT:
                    relay.feed(msg.data[1:])
                else:
                    write(msg.data[1:])
            elif msg.type == aiohttp.WSMsgType.TEXT:
                frame = json.loads(msg.data)
                if isinstance(frame, dict) and "exit" in frame:
                    return frame
            elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                break
    return None


async def _final(host: HostAPI, job_id: str) -> dict[str, Any]:
    """The exit of a job whose output stream ended without an exit frame, from the host."""
    try:
        job = await host.get_job(job_id)
    except APIError as exc:
        raise BuildError(f"the build's output ended early and its job is unknown: {exc.message}") from None
    if job.get("state") not in ("down", "crashed", "failed"):
        await stop(host, job_id)
        raise BuildError("the build's output ended before it finished")
    status = job.get("exit_status")
    return {
        "exit": int(status) if isinstance(status, int) else (0 if job.get("state") == "down" else 1),
        "error": job.get("error"),
    }


async def run(
    host: HostAPI,
    session: aiohttp.ClientSession,
    config: Mapping[str, Any],
    write: Callable[[bytes], None],
) -> BuildResult:
    """Start the build job, relay its output to ``write``, answer its exit status and slug line."""
    job_id = str(config["id"])
    try:
        await host.start_job(config)
    except APIError as exc:
        retry = exc.status == 0 or exc.status >= 500
        raise StartError(f"the host refused the build job: {exc.message}", retry=retry) from None
    relay = Relay(write)
    try:
        frame = await _follow(session, host.attach_url(job_id), relay, write)
    except BaseException as exc:  # cancelled (the push went away) or the stream broke: stop it
        await stop(host, job_id)
        if isinstance(exc, aiohttp.ClientError | TimeoutError | ValueError):
            raise BuildError(f"lost the build's output: {exc or type(exc).__name__}") from None
        raise
    relay.close()
    if frame is None:
        frame = await _final(host, job_id)
    exit_status = int(frame["exit"])
    error = frame.get("error")
    if isinstance(error, str) and error and exit_status != 0:
        raise BuildError(f"the build job failed: {error}")
    return BuildResult(exit_status, relay.slug_line)
