"""Clients of the host API (:1113), shared by the scheduler, the controller and the CLIs.

* :class:`HostClient` (asyncio, aiohttp) for services: start/stop/inspect jobs, follow a host's
  jobs with :meth:`HostClient.watch_jobs` (reconnects by itself, and reports the final state of a
  job that ended while it was disconnected), configure platform services at bootstrap.
* :class:`SyncHostClient` (on :class:`flynn.common.http.Client`) for CLIs such as ``flynn-host``.

Every error is an :class:`~flynn.common.errors.APIError` carrying the host's one-line reason
(``status`` 0 when the host could not be reached). Starting a job whose id the host already knows
raises :class:`JobExistsError`, which carries the existing job: starts are idempotent by id.

Jobs are plain dicts in the form of docs/host.md ("Job (what the API answers)"); a job's ``state``
is one of :data:`STATES`, and :data:`FINAL_STATES` never change again.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import random
import socket
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp

from flynn.common.errors import APIError
from flynn.common.http import Client as _SyncJSONClient

if TYPE_CHECKING:
    from flynn.host.logstream import LogStream

log = logging.getLogger(__name__)

DEFAULT_PORT = 1113
STATES = ("starting", "up", "stopping", "down", "crashed", "failed")
FINAL_STATES = frozenset({"down", "crashed", "failed"})
PLATFORM_NAMES = (
    "discoverd",
    "postgres",
    "controller",
    "scheduler",
    "router",
    "blobstore",
    "gitreceive",
    "logaggregator",
)

PLATFORM_TIMEOUT = 150.0  # the host waits up to 120 s for systemd to restart a platform service

Job = dict[str, Any]


def host_url(addr: str, port: int = DEFAULT_PORT) -> str:
    """``http://ADDR:PORT`` for an address as discoverd announces it (``ip``, ``ip:port``, ``[v6]:port``)."""
    if "://" in addr:
        return addr.rstrip("/")
    if addr.startswith("["):
        return f"http://{addr}" if "]:" in addr else f"http://{addr}:{port}"
    if addr.count(":") == 1:
        return f"http://{addr}"
    if ":" in addr:  # a bare IPv6 address
        return f"http://[{addr}]:{port}"
    return f"http://{addr}:{port}"


def host_of_job(job_id: str) -> str:
    """The host id of a job id (``HOSTID-UUID``: everything before the first dash)."""
    host, sep, rest = job_id.partition("-")
    if not sep or not host or not rest:
        raise ValueError(f"job id {job_id!r} is not of the form HOSTID-ID")
    return host


def _job_path(job_id: str, suffix: str = "") -> str:
    return f"/host/jobs/{quote(job_id, safe='')}{suffix}"


class JobExistsError(APIError):
    """``PUT /host/jobs/:id`` for an id the host already has; ``job`` is the existing job."""

    def __init__(self, message: str, job: Job, *, url: str = "") -> None:
        super().__init__(409, message, url=url)
        self.job = job


def _error_from(status: int, body: Any, reason: str, url: str) -> APIError:
    message = reason
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
        if status == 409 and isinstance(body.get("job"), dict):
            return JobExistsError(message, body["job"], url=url)
    return APIError(status, message, url=url)


# -- asyncio client (services) -----------------------------------------------------------------


class HostClient:
    """Async client of one host's API.

    ``url`` is ``http://ADDR:1113`` (see :func:`host_url`). Pass a shared ``session`` when talking
    to many hosts; otherwise the client opens its own and :meth:`close` closes it.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = session
        self._own_session = session is None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HostClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-request HTTP timeout, like aiohttp
    ) -> Any:
        url = self.url + path
        limit = self.timeout if timeout is None else timeout
        try:
            async with self.session.request(
                method,
                url,
                json=body,
                params=params,
                timeout=aiohttp.ClientTimeout(total=limit),
            ) as resp:
                raw = await resp.read()
                try:
                    data = json.loads(raw) if raw else None
                except (UnicodeDecodeError, json.JSONDecodeError):
                    if resp.status < 400:
                        raise APIError(resp.status, f"invalid JSON from {url}", url=url) from None
                    data = None
                if resp.status >= 400:
                    raise _error_from(resp.status, data, resp.reason or "error", url)
                return data
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"timed out after {limit:g}s"
            raise APIError(0, f"cannot reach {self.url}: {reason}", url=url) from None

    # -- host ------------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/host/status"))

    # -- jobs ------------------------------------------------------------------------------------

    async def start_job(self, config: Mapping[str, Any]) -> Job:
        """``PUT /host/jobs/:id`` with a job config (docs/host.md); answers the new job.

        Raises :class:`JobExistsError` (with ``.job``) when the host already has that id."""
        job_id = config.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("the job config has no id")
        return dict(await self.request("PUT", _job_path(job_id), dict(config)))

    async def stop_job(self, job_id: str) -> Job:
        """``DELETE /host/jobs/:id``: deregister, SIGTERM, SIGKILL after the stop timeout."""
        return dict(await self.request("DELETE", _job_path(job_id)))

    async def get_job(self, job_id: str) -> Job:
        return dict(await self.request("GET", _job_path(job_id)))

    async def list_jobs(self, all: bool = False) -> list[Job]:
        params = {"all": "true"} if all else None
        return [dict(j) for j in await self.request("GET", "/host/jobs", params=params)]

    async def signal_job(self, job_id: str, signal: str) -> Job:
        """Send a signal by name (``SIGUSR1``, ``HUP``, ...) to the job's processes."""
        return dict(await self.request("POST", _job_path(job_id, "/signal"), {"signal": signal}))

    def watch_jobs(self) -> JobWatch:
        """Every job of the host (not final) and then every change, across reconnects."""
        return JobWatch(self)

    async def job_log(
        self, job_id: str, *, lines: int | None = None, follow: bool = False
    ) -> AsyncIterator[str]:
        """The job's log lines from the host's journal (``follow``: until the job ends)."""
        params: dict[str, str] = {}
        if lines is not None:
            params["lines"] = str(lines)
        if follow:
            params["follow"] = "true"
        url = self.url + _job_path(job_id, "/log")
        try:
            async with self.session.get(
                url,
                params=params,
                timeout=aiohttp.ClientTimeout(total=None if follow else self.timeout, sock_connect=5),
            ) as resp:
                if resp.status >= 400:
                    data = await resp.json(content_type=None)
                    raise _error_from(resp.status, data, resp.reason or "error", url)
                async for raw in resp.content:
                    yield raw.decode(errors="replace").rstrip("\n")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise APIError(0, f"cannot reach {self.url}: {exc or type(exc).__name__}", url=url) from None

    def follow_logs(
        self,
        *,
        lines: int | None = None,
        per_app: bool = False,
        cursor: str | None = None,
        app_id: str | None = None,
        job_id: str | None = None,
        platform: bool = False,
    ) -> LogStream:
        """Follow ``GET /host/logs`` (docs/logs.md): the backlog, a live marker, then new lines,
        resumed by cursor across reconnects (:class:`flynn.host.logstream.LogStream`)."""
        from flynn.host.logstream import LogStream

        params = {"app_id": app_id, "job_id": job_id, "platform": "true" if platform else None}
        query = {k: v for k, v in params.items() if v}
        return LogStream(self, query, lines=lines, per_app=per_app, cursor=cursor)

    def attach_url(self, job_id: str) -> str:
        """The attach WebSocket of a job started with ``"attach": true`` (frames in docs/host.md)."""
        return self.url.replace("http", "ws", 1) + _job_path(job_id, "/attach")

    # -- platform --------------------------------------------------------------------------------

    async def configure_platform(
        self, name: str, env: Mapping[str, str], *, secret: str | None = None
    ) -> dict[str, Any]:
        """Write ``/etc/flynn/NAME.env`` (and ``NAME.secret``) on the host and (re)start
        ``flynn-NAME.service``; answers once systemd finished the restart (up to 2 minutes)."""
        body: dict[str, Any] = {"env": dict(env)}
        if secret is not None:
            body["secret"] = secret
        path = f"/host/platform/{quote(name, safe='')}"
        return dict(await self.request("PUT", path, body, timeout=max(self.timeout, PLATFORM_TIMEOUT)))

    async def app_env_digest(self, name: str) -> dict[str, Any]:
        """``GET /host/platform/:name/app-env``: the overlay's sha256 and variable names."""
        return dict(await self.request("GET", f"/host/platform/{quote(name, safe='')}/app-env"))

    async def set_app_env(
        self, name: str, env: Mapping[str, str], *, live: Sequence[str] = ()
    ) -> dict[str, Any]:
        """``PUT /host/platform/:name/app-env``: write the system app's env overlay; the host
        restarts the unit when a variable outside ``live`` changed (answers once it is done)."""
        body = {"env": dict(env), "live": list(live)}
        return dict(await self.request("PUT", f"/host/platform/{quote(name, safe='')}/app-env", body))


class JobWatch:
    """Async iterator of job dicts from a host's ``GET /host/jobs`` event stream.

    On each (re)connect the host first sends every job that is not final, then a ``current``
    marker, then each change. A job this watch knew as live but that is missing from a fresh
    snapshot ended while it was disconnected: its final record is fetched and yielded, so a
    consumer sees every job reach a final state. ``connected`` is set while the stream is live
    (after the snapshot); ``reconnects`` counts the lost connections.
    """

    def __init__(self, client: HostClient, *, max_delay: float = 5.0) -> None:
        self.client = client
        self.max_delay = max_delay
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.live: dict[str, Job] = {}  # jobs not final, as last seen

    def __aiter__(self) -> AsyncIterator[Job]:
        return self._run()

    async def _run(self) -> AsyncIterator[Job]:
        delay = 0.2
        url = self.client.url + "/host/jobs"
        while True:
            try:
                async with self.client.session.get(
                    url,
                    headers={"Accept": "text/event-stream"},
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.client.timeout, sock_read=45),
                ) as resp:
                    if resp.status >= 400:
                        data = await resp.json(content_type=None)
                        raise _error_from(resp.status, data, resp.reason or "error", url)
                    delay = 0.2
                    async for job in self._events(resp):
                        yield job
            except (aiohttp.ClientError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
                log.debug("job watch of %s: %s; reconnecting", self.client.url, exc)
            except APIError as exc:
                if exc.status != 0 and exc.status < 500:
                    raise
                log.debug("job watch of %s: %s; reconnecting", self.client.url, exc)
            self.connected.clear()
            self.reconnects += 1
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, self.max_delay)

    async def _events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[Job]:
        snapshot: set[str] = set()
        in_snapshot = True
        event = "message"
        data: list[str] = []
        async for raw in resp.content:
            line = raw.decode().rstrip("\n").rstrip("\r")
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                continue
            if event == "current":
                in_snapshot = False
                for missed in sorted(self.live.keys() - snapshot):
                    job = await self._final_of(missed)
                    if job is not None:
                        yield job
                self.connected.set()
            elif event == "job" and data:
                job = json.loads("\n".join(data))
                if in_snapshot:
                    snapshot.add(job["id"])
                if job.get("state") in FINAL_STATES:
                    self.live.pop(job["id"], None)
                else:
                    self.live[job["id"]] = job
                yield job
            event, data = "message", []

    async def _final_of(self, job_id: str) -> Job | None:
        self.live.pop(job_id, None)
        try:
            return await self.client.get_job(job_id)
        except APIError as exc:
            log.warning("job %s vanished from %s: %s", job_id, self.client.url, exc)
            return None


# -- synchronous client (CLIs) -----------------------------------------------------------------


class SyncHostClient:
    """Synchronous client of one host's API for CLIs (``flynn-host ps``, ``log``, ...)."""

    def __init__(self, url: str = f"http://127.0.0.1:{DEFAULT_PORT}", *, timeout: float = 10.0) -> None:
        self.http = _SyncJSONClient(url, timeout=timeout)
        self.url = self.http.base_url
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        try:
            return self.http.request(method, path, body, **kw)
        except APIError as exc:
            if exc.status != 409 or method != "PUT" or not path.startswith("/host/jobs/"):
                raise
            try:  # the sync client drops error bodies: fetch the existing job, if that is the conflict
                existing = self.http.get(path)
            except APIError:
                raise exc from None
            raise JobExistsError(exc.message, dict(existing), url=exc.url) from None

    def status(self) -> dict[str, Any]:
        return dict(self._request("GET", "/host/status"))

    def start_job(self, config: Mapping[str, Any]) -> Job:
        job_id = config.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("the job config has no id")
        return dict(self._request("PUT", _job_path(job_id), dict(config)))

    def stop_job(self, job_id: str) -> Job:
        return dict(self._request("DELETE", _job_path(job_id)))

    def get_job(self, job_id: str) -> Job:
        return dict(self._request("GET", _job_path(job_id)))

    def list_jobs(self, all: bool = False) -> list[Job]:
        params = {"all": "true"} if all else None
        return [dict(j) for j in self._request("GET", "/host/jobs", params=params)]

    def signal_job(self, job_id: str, signal: str) -> Job:
        return dict(self._request("POST", _job_path(job_id, "/signal"), {"signal": signal}))

    def configure_platform(
        self, name: str, env: Mapping[str, str], *, secret: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"env": dict(env)}
        if secret is not None:
            body["secret"] = secret
        slow = _SyncJSONClient(self.url, timeout=max(self.timeout, PLATFORM_TIMEOUT))
        return dict(slow.put(f"/host/platform/{quote(name, safe='')}", body))

    def job_log(self, job_id: str, *, lines: int | None = None, follow: bool = False) -> Iterator[str]:
        """The job's log lines, streamed as they arrive (``follow``: until the job ends)."""
        params: dict[str, str] = {}
        if lines is not None:
            params["lines"] = str(lines)
        if follow:
            params["follow"] = "true"
        parts = urlsplit(self.url)
        path = (
            parts.path.rstrip("/") + _job_path(job_id, "/log") + ("?" + urlencode(params) if params else "")
        )
        conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORT, timeout=self.timeout)
        try:
            try:
                conn.request("GET", path, headers={"Accept": "text/plain"})
                resp = conn.getresponse()
                if resp.status >= 400:
                    raw = resp.read()
                    try:
                        body = json.loads(raw)
                    except (UnicodeDecodeError, json.JSONDecodeError):
                        body = None
                    raise _error_from(resp.status, body, resp.reason, self.url + path)
                if follow and conn.sock is not None:
                    conn.sock.settimeout(None)  # a quiet job may print nothing for a long time
                while True:
                    line = resp.readline()
                    if not line:
                        return
                    yield line.decode(errors="replace").rstrip("\n")
            except (OSError, http.client.HTTPException) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                if isinstance(exc, socket.timeout | TimeoutError):
                    reason = f"timed out after {self.timeout:g}s"
                raise APIError(0, f"cannot reach {self.url}: {reason}", url=self.url + path) from None
        finally:
            conn.close()
