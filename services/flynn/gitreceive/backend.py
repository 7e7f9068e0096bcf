"""The real ``git http-backend`` (CGI, RFC 3875) behind an aiohttp request, streamed both ways.

The request body is copied to the CGI's stdin chunk by chunk as it arrives (aiohttp has already
undone a chunked transfer or gzip encoding, so ``CONTENT_LENGTH`` is left unset and the body ends
at EOF, which http-backend reads to); the CGI's stdout is parsed for its header block and the rest
is copied to a chunked response as it comes, so a pack is never held whole and a hook's output
reaches ``git push`` (on the sideband) while the hook runs.

The CGI runs in its own session (process group): ``git http-backend`` -> ``git receive-pack`` ->
hooks. When the request ends early (the client went away: aiohttp cancels the handler), the
group gets SIGTERM, which the pre-receive hook turns into stopping its build; SIGKILL follows
only if http-backend itself has not exited within :data:`KILL_AFTER` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from flynn.common.log import redact

log = logging.getLogger(__name__)

CHUNK = 1 << 16
MAX_HEADER = 64 << 10
KILL_AFTER = 10.0
PASSED_HEADERS = frozenset({"content-type", "cache-control", "expires", "pragma", "last-modified", "etag"})
GIT_PROTOCOL_RE = re.compile(r"^[A-Za-z0-9=:._-]{1,256}$")


class CGIError(Exception):
    """http-backend answered something that is not a CGI response."""


@dataclass(frozen=True)
class CGIHead:
    status: int
    reason: str
    headers: dict[str, str]


def parse_head(block: bytes) -> CGIHead:
    """A CGI header block (without the blank line): ``Status:`` and the headers to pass on."""
    status, reason = 200, "OK"
    headers: dict[str, str] = {}
    for raw in block.decode("latin-1").replace("\r\n", "\n").split("\n"):
        if not raw:
            continue
        name, sep, value = raw.partition(":")
        if not sep:
            raise CGIError(f"malformed CGI header line {raw[:80]!r}")
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            code, _, text = value.partition(" ")
            if not code.isdigit() or not 100 <= int(code) <= 599:
                raise CGIError(f"malformed CGI status {value[:40]!r}")
            status, reason = int(code), text or reason
        elif name.lower() in PASSED_HEADERS:
            headers[name] = value
    return CGIHead(status, reason, headers)


async def read_head(stdout: asyncio.StreamReader) -> tuple[CGIHead, bytes]:
    """The header block and whatever of the body came with it."""
    buf = b""
    while True:
        for sep in (b"\r\n\r\n", b"\n\n"):
            end = buf.find(sep)
            if end >= 0:
                return parse_head(buf[:end]), buf[end + len(sep) :]
        if len(buf) > MAX_HEADER:
            raise CGIError("the CGI header block is too large")
        chunk = await stdout.read(CHUNK)
        if not chunk:
            raise CGIError("http-backend ended without a response")
        buf += chunk


async def _feed(request: web.Request, stdin: asyncio.StreamWriter) -> None:
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            stdin.write(chunk)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # http-backend stopped reading (it answered an error): the response says why
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            stdin.close()


async def _log_stderr(stderr: asyncio.StreamReader, what: str) -> None:
    while line := await stderr.readline():
        text = redact(line.decode(errors="replace").rstrip())
        if text:
            log.warning("%s: %s", what, text[:500])


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def cgi_env(
    request: web.Request, base: Mapping[str, str], *, project_root: str, path_info: str, remote_user: str
) -> dict[str, str]:
    env = dict(base)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    env.update(
        {
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": f"HTTP/{request.version.major}.{request.version.minor}",
            "SERVER_SOFTWARE": "flynn-gitreceive",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": path_info,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "REMOTE_USER": remote_user,
            "REMOTE_ADDR": str(peer[0]) if isinstance(peer, tuple) and peer else "",
            "GIT_PROJECT_ROOT": project_root,
            "GIT_HTTP_EXPORT_ALL": "1",
        }
    )
    env.pop("CONTENT_LENGTH", None)
    protocol = request.headers.get("Git-Protocol", "")
    if protocol and GIT_PROTOCOL_RE.match(protocol):
        env["GIT_PROTOCOL"] = protocol
    return env


async def serve(request: web.Request, env: Mapping[str, str], *, what: str) -> web.StreamResponse:
    """Run http-backend for ``request`` with ``env`` (see :func:`cgi_env`) and stream its answer."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        "http-backend",
        env=dict(env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    if proc.stdin is None or proc.stdout is None or proc.stderr is None:  # pragma: no cover - PIPEs
        raise CGIError("http-backend was started without pipes")
    loop = asyncio.get_running_loop()
    feeder = loop.create_task(_feed(request, proc.stdin), name=f"cgi-stdin {what}")
    errors = loop.create_task(_log_stderr(proc.stderr, what), name=f"cgi-stderr {what}")
    finished = False
    try:
        head, rest = await read_head(proc.stdout)
        resp = web.StreamResponse(status=head.status, reason=head.reason, headers=head.headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if rest:
            await resp.write(rest)
        while chunk := await proc.stdout.read(CHUNK):
            await resp.write(chunk)
        await proc.wait()
        await resp.write_eof()
        finished = True
        return resp
    finally:
        if not finished and proc.returncode is None:
            log.info("%s: the request ended early; stopping git http-backend and its hooks", what)
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(KILL_AFTER):
                    await asyncio.shield(proc.wait())
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feeder
        with contextlib.suppress(asyncio.CancelledError, Exception):
            async with asyncio.timeout(1):
                await errors
        errors.cancel()
