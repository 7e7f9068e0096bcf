"""The attach WebSocket: a client's stdin/stdout/stderr wired to a job started with ``"attach": true``.

The job's unit starts only once the client is connected (the manager waits for it). Its stdio are
three pipes whose job ends are passed to systemd over D-Bus (``StandardInputFileDescriptor=`` ...)
and whose other ends the host pumps:

* client -> host: binary frames are stdin bytes; text ``{"eof": true}`` closes stdin;
  text ``{"signal": "SIGINT"}`` signals the job's main process.
* host -> client: binary frames prefixed by one byte, 1 = stdout, 2 = stderr; at the end a text
  frame ``{"exit": N}`` (N: exit status, or 128+signal; plus ``"error"`` when the job failed) and
  a normal close.

A client that goes away before the job ended hangs up on it: the job is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from typing import Any

from aiohttp import WSMsgType, web

from flynn.host.jobs.manager import JobError, JobManager
from flynn.host.jobs.state import JobState
from flynn.host.jobs.units import Outcome, Stdio, attach_exit_code

log = logging.getLogger(__name__)

STDOUT, STDERR = 1, 2
CHUNK = 64 * 1024
PUMP_DRAIN = 10.0


class AttachSession:
    """The host side of one attached job (implements the manager's ``AttachEndpoint``)."""

    def __init__(self, ws: web.WebSocketResponse, manager: JobManager, job_id: str) -> None:
        self.ws = ws
        self.manager = manager
        self.job_id = job_id
        self._stdin_r, self._stdin_w = os.pipe2(os.O_CLOEXEC)
        self._stdout_r, self._stdout_w = os.pipe2(os.O_CLOEXEC)
        self._stderr_r, self._stderr_w = os.pipe2(os.O_CLOEXEC)
        self._decided: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._stdin: asyncio.StreamWriter | None = None

    # -- AttachEndpoint ------------------------------------------------------------------------

    def stdio(self) -> Stdio:
        return Stdio(stdin=self._stdin_r, stdout=self._stdout_w, stderr=self._stderr_w)

    def _close_job_ends(self) -> None:
        for fd in (self._stdin_r, self._stdout_w, self._stderr_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stdin_r = self._stdout_w = self._stderr_w = -1

    def started(self) -> None:
        self._close_job_ends()  # systemd holds its own copies now
        if not self._decided.done():
            self._decided.set_result(True)

    def not_started(self, reason: str) -> None:
        self._close_job_ends()
        if not self._decided.done():
            self._decided.set_result(False)

    # -- pumping -------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        final = loop.create_task(self.manager.wait_final(self.job_id))
        waiters: set[asyncio.Future[Any]] = {final, self._decided}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        started = self._decided.done() and self._decided.result()
        receiver: asyncio.Task[None] | None = None
        pumps: list[asyncio.Task[None]] = []
        try:
            if started:
                pumps = [
                    loop.create_task(self._pump(self._stdout_r, STDOUT)),
                    loop.create_task(self._pump(self._stderr_r, STDERR)),
                ]
                self._stdout_r = self._stderr_r = -1  # owned by the pumps now
                self._stdin = await _pipe_writer(self._stdin_w)
                self._stdin_w = -1
                receiver = loop.create_task(self._receive())
                done, _ = await asyncio.wait({receiver, final}, return_when=asyncio.FIRST_COMPLETED)
                if receiver in done and not final.done():
                    # the client hung up before the job ended
                    log.info("job %s: attach client went away; stopping the job", self.job_id)
                    with contextlib.suppress(JobError):
                        await self.manager.stop(self.job_id)
                    await final
                # the outputs end when every holder of the pipes' job ends is gone (the job's
                # processes, and systemd once it released the unit's resources)
                await asyncio.wait(pumps, timeout=PUMP_DRAIN)
            else:
                await final
            if not self.ws.closed:
                await self.ws.send_str(json.dumps(_exit_frame(self.manager, self.job_id)))
                await self.ws.close()
        finally:
            for task in (receiver, final, *pumps):
                if task is not None and not task.done():
                    task.cancel()
            self.close()

    async def _pump(self, fd: int, stream: int) -> None:
        reader = asyncio.StreamReader(limit=CHUNK)
        pipe = os.fdopen(fd, "rb", buffering=0)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        prefix = bytes([stream])
        try:
            while True:
                chunk = await reader.read(CHUNK)
                if not chunk:
                    return
                if not self.ws.closed:
                    await self.ws.send_bytes(prefix + chunk)
        except (ConnectionError, RuntimeError):
            return  # the client is gone; keep draining is pointless
        finally:
            transport.close()

    async def _receive(self) -> None:
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                if self._stdin is not None:
                    try:
                        self._stdin.write(msg.data)
                        await self._stdin.drain()
                    except (ConnectionError, BrokenPipeError):
                        self._stdin = None  # the job closed its stdin
            elif msg.type == WSMsgType.TEXT:
                await self._control(msg.data)
            elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                return

    async def _control(self, text: str) -> None:
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError:
            await self.ws.send_str(json.dumps({"error": "control frames are JSON objects"}))
            return
        if not isinstance(data, dict):
            await self.ws.send_str(json.dumps({"error": "control frames are JSON objects"}))
            return
        if data.get("eof") is True:
            if self._stdin is not None:
                self._stdin.close()
                self._stdin = None
        elif "signal" in data:
            try:
                await self.manager.signal(self.job_id, data["signal"])
            except JobError as exc:
                await self.ws.send_str(json.dumps({"error": str(exc)}))
        else:
            await self.ws.send_str(json.dumps({"error": 'expected {"eof": true} or {"signal": NAME}'}))

    def close(self) -> None:
        self._close_job_ends()
        for fd in (self._stdin_w, self._stdout_r, self._stderr_r):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._stdin_w = self._stdout_r = self._stderr_r = -1
        if self._stdin is not None:
            self._stdin.close()
            self._stdin = None


async def _pipe_writer(fd: int) -> asyncio.StreamWriter:
    loop = asyncio.get_running_loop()
    pipe = os.fdopen(fd, "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), pipe
    )
    return asyncio.StreamWriter(transport, protocol, None, loop)


def _exit_frame(manager: JobManager, job_id: str) -> dict[str, Any]:
    job = manager.get(job_id)
    if job is None:
        return {"exit": 1, "error": "the job record is gone"}
    frame: dict[str, Any] = {
        "exit": attach_exit_code(Outcome(job.state, job.exit_status, job.signal, job.error))
    }
    if job.state is JobState.FAILED and job.error:
        frame["error"] = job.error
    return frame
