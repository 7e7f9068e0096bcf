"""Clients of the controller API (docs/controller.md), shared by the CLI and the services.

* :class:`Client` is synchronous, on :class:`flynn.common.http.Client` (``http.client``: fast to
  import, what the ``flynn`` CLI uses). It adds TLS pinning, typed methods for every resource and
  a resumable Server-Sent Events stream of the controller's events.
* :class:`AsyncClient` is the asyncio twin on aiohttp, for services (the scheduler, the deployer's
  helpers, ``flynn run``'s attach). aiohttp is imported only when an :class:`AsyncClient` is used.

TLS pinning works as Flynn's CLI ``TLSPin``: the pin is ``base64(sha256(DER of the leaf
certificate))``. A pinned connection does not check the certificate chain or the host name (the
cluster's certificate is self-signed); the pin is checked right after the handshake, before any
request (and so before the key) is sent, and a mismatch fails with :data:`PIN_MISMATCH`.

Every method raises :class:`~flynn.common.errors.APIError` with the server's one-line reason
(``status`` 0 when the controller could not be reached); the key never appears in a message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import http.client
import json
import random
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict, cast
from urllib.parse import quote, urlencode, urlsplit

from flynn.common import resolve
from flynn.common.errors import APIError
from flynn.common.http import Client as HTTPClient

if TYPE_CHECKING:
    import aiohttp

PIN_MISMATCH = "the peer leaf certificate did not match the provided pin"

#: An SSE read that sees nothing (not even the 15 s keepalive) for this long reconnects.
STREAM_READ_TIMEOUT = 45.0

JobState = Literal["pending", "starting", "up", "stopping", "down", "crashed", "failed"]
FINAL_JOB_STATES: frozenset[str] = frozenset({"down", "crashed", "failed"})

# -- resources (docs/controller.md "Resources"); the controller may add fields --------------------


class App(TypedDict):
    id: str
    name: str
    meta: dict[str, str]
    strategy: str
    deploy_timeout: int
    release_id: str | None
    system: bool
    created_at: str
    updated_at: str


class Artifact(TypedDict):
    id: str
    type: str
    uri: str
    meta: dict[str, str]
    size: int | None
    sha256: str | None
    created_at: str


class ResourceLimit(TypedDict):
    limit: int


class ProcessType(TypedDict, total=False):
    args: list[str]
    env: dict[str, str]
    omni: bool
    service: str | None
    check: dict[str, Any] | None
    resources: dict[str, ResourceLimit]


class Release(TypedDict):
    id: str
    app_id: str
    artifacts: list[str]
    env: dict[str, str]
    meta: dict[str, str]
    processes: dict[str, ProcessType]
    created_at: str


class NewRelease(TypedDict, total=False):
    app_id: str
    artifacts: list[str]
    env: dict[str, str]
    meta: dict[str, str]
    processes: dict[str, ProcessType]


class Formation(TypedDict):
    app_id: str
    release_id: str
    processes: dict[str, int]
    created_at: str
    updated_at: str


class ExpandedFormation(TypedDict):
    app: App
    release: Release
    artifacts: list[Artifact]
    processes: dict[str, int]
    updated_at: str


class Job(TypedDict):
    id: str
    uuid: str
    host_id: str
    app_id: str
    release_id: str
    type: str
    state: JobState
    args: list[str]
    exit_status: int | None
    host_error: str | None
    restarts: int
    meta: dict[str, str]
    created_at: str
    updated_at: str


class JobUpdate(TypedDict, total=False):
    """What the scheduler reports with :meth:`AsyncClient.put_job` (``id`` is in the path)."""

    uuid: str
    host_id: str
    app_id: str
    release_id: str
    type: str
    state: JobState
    args: list[str]
    exit_status: int | None
    host_error: str | None
    restarts: int
    meta: dict[str, str]


class NewJob(TypedDict, total=False):
    args: list[str]
    release_id: str
    env: dict[str, str]
    attach: bool
    type: str


class Deployment(TypedDict):
    id: str
    app_id: str
    old_release_id: str | None
    new_release_id: str
    strategy: str
    status: Literal["pending", "running", "complete", "failed"]
    error: str | None
    processes: dict[str, int]
    deploy_timeout: int
    created_at: str
    finished_at: str | None


class Event(TypedDict):
    id: int
    app_id: str | None
    object_type: str
    object_id: str
    op: str
    data: Any
    created_at: str


class Key(TypedDict):
    id: str
    key: str
    comment: str
    created_at: str


class RouteCertificate(TypedDict):
    id: str
    cert: str
    key: NotRequired[str]


class Route(TypedDict):
    """An HTTP route (``domain``, ``path``, ...) or a TCP route (``port``); see docs/controller.md."""

    id: str  # "http/UUID" or "tcp/UUID"
    type: Literal["http", "tcp"]
    app_id: str
    service: str
    leader: bool
    domain: NotRequired[str]
    path: NotRequired[str]
    sticky: NotRequired[bool]
    https_redirect: NotRequired[bool]
    certificate: NotRequired[RouteCertificate | None]
    port: NotRequired[int]
    created_at: str
    updated_at: str


class SinkStatus(TypedDict):
    connected: bool
    delivered: int
    dropped: int
    buffered: int
    error: str | None


class Sink(TypedDict):
    """A log sink (docs/logs.md); ``status`` is the aggregator leader's report, when it answered."""

    id: str
    kind: str
    url: str
    use_tls: bool
    ca_cert: str | None
    created_at: str
    status: NotRequired[SinkStatus | None]


class LogLine(TypedDict):
    """One line of ``GET /apps/:app/log`` (docs/logs.md)."""

    ts: int
    timestamp: str
    host_id: str
    app_id: str | None
    app_name: str | None
    job_id: str
    type: str | None
    release_id: str | None
    stream: str
    priority: int
    msg: str


class Status(TypedDict):
    status: str
    database: NotRequired[str]
    version: NotRequired[str]


# -- TLS pinning -----------------------------------------------------------------------------------


class TLSPinMismatch(APIError):
    """The server's leaf certificate is not the pinned one (nothing was sent to it)."""

    def __init__(self, url: str) -> None:
        super().__init__(0, f"cannot connect to {url}: {PIN_MISMATCH}", url=url)


def parse_pin(pin: str) -> bytes:
    """The SHA-256 digest a ``TLSPin`` string stands for; ValueError when it is not one."""
    try:
        digest = base64.b64decode(pin.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid TLS pin: not base64") from None
    if len(digest) != hashlib.sha256().digest_size:
        raise ValueError("invalid TLS pin: not a base64 SHA-256 digest (44 characters)")
    return digest


def cert_pin(der: bytes) -> str:
    """The ``TLSPin`` of a certificate given in DER form."""
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def pinned_ssl_context() -> ssl.SSLContext:
    """A client context that accepts any chain and name: the pin is checked after the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, timeout: float, pin: bytes, url: str) -> None:
        super().__init__(host, port, timeout=timeout, context=pinned_ssl_context())
        self._pin = pin
        self._url = url

    def connect(self) -> None:
        super().connect()
        sock = self.sock
        der = (sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None) or b""
        if hashlib.sha256(der).digest() != self._pin:
            self.close()
            raise TLSPinMismatch(self._url)


# -- Server-Sent Events --------------------------------------------------------------------------


@dataclass
class SSEMessage:
    id: str | None = None
    event: str = "message"
    data: list[str] = field(default_factory=list)


class SSEDecoder:
    """Incremental SSE parser: feed it lines (without the line break), get whole messages."""

    def __init__(self) -> None:
        self._msg = SSEMessage()

    def feed(self, line: str) -> SSEMessage | None:
        if line.startswith(":"):
            return None  # a comment: keepalive
        if not line:
            msg, self._msg = self._msg, SSEMessage()
            if msg.data or msg.id is not None or msg.event != "message":
                return msg
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self._msg.id = value
        elif name == "event":
            self._msg.event = value
        elif name == "data":
            self._msg.data.append(value)
        return None


def _event_of(msg: SSEMessage) -> Event | None:
    if not msg.data:
        return None
    try:
        data = json.loads("\n".join(msg.data))
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or "id" not in data:
        return None
    return cast(Event, data)


def _events_params(
    app_id: str | None,
    object_types: Sequence[str] | None,
    object_id: str | None,
    past: bool,
    count: int | None,
    since_id: int | None = None,
) -> dict[str, str]:
    params: dict[str, str] = {}
    if app_id:
        params["app_id"] = app_id
    if object_types:
        params["object_types"] = ",".join(object_types)
    if object_id:
        params["object_id"] = object_id
    if past:
        params["past"] = "true"
    if count is not None:
        params["count"] = str(count)
    if since_id is not None:
        params["since_id"] = str(since_id)
    return params


def _route_path(app: str, route_id: str) -> str:
    """``/apps/APP/routes/TYPE/UUID`` for a route id ``TYPE/UUID`` (each part one segment)."""
    kind, _, rid = route_id.partition("/")
    return f"/apps/{_seg(app)}/routes/{_seg(kind)}/{_seg(rid)}"


def _seg(value: str) -> str:
    """One path segment: user input (an app name from -a) cannot add segments or a query."""
    return quote(value, safe="")


def _error_message(status: int, reason: str, body: bytes) -> str:
    with contextlib.suppress(UnicodeDecodeError, json.JSONDecodeError):
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            return str(parsed["error"])
    return reason or f"HTTP {status}"


# -- the synchronous client (CLI) ------------------------------------------------------------------


class Client(HTTPClient):
    """Synchronous controller client. ``tls_pin`` (a ``TLSPin`` string) pins an https controller."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        tls_pin: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            raise ValueError("the controller URL must not contain credentials")
        self._pin = parse_pin(tls_pin) if tls_pin else None
        if self._pin is not None and parts.scheme != "https":
            raise ValueError("a TLS pin needs an https:// controller URL")
        ctx = None if self._pin is not None or parts.scheme != "https" else ssl.create_default_context()
        super().__init__(url, key=key, timeout=timeout, ssl_context=ctx)

    def _connection(self) -> http.client.HTTPConnection:
        if self._pin is not None:
            conn = _PinnedHTTPSConnection(
                self._host, self._port, timeout=self._timeout, pin=self._pin, url=self.base_url
            )
            resolve.patch_connection(conn)  # FLYNN_RESOLVE: an explicit address for this host
            return conn
        return super()._connection()

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> Status:
        return cast(Status, self.get("/status"))

    def openapi(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.get("/openapi.json"))

    def ca_cert(self) -> str:
        """The cluster CA (PEM); trust it only as far as this connection is trusted (pinned)."""
        return str(self.request("GET", "/ca-cert", expect_json=False))

    # -- apps ------------------------------------------------------------------------------------

    def list_apps(self) -> list[App]:
        return cast(list[App], self.get("/apps"))

    def create_app(
        self,
        name: str | None = None,
        *,
        meta: Mapping[str, str] | None = None,
        strategy: str | None = None,
        deploy_timeout: int | None = None,
    ) -> App:
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if meta is not None:
            body["meta"] = dict(meta)
        if strategy is not None:
            body["strategy"] = strategy
        if deploy_timeout is not None:
            body["deploy_timeout"] = deploy_timeout
        return cast(App, self.post("/apps", body))

    def get_app(self, app: str) -> App:
        return cast(App, self.get(f"/apps/{_seg(app)}"))

    def update_app(
        self,
        app: str,
        *,
        meta: Mapping[str, str] | None = None,
        strategy: str | None = None,
        deploy_timeout: int | None = None,
    ) -> App:
        body: dict[str, Any] = {}
        if meta is not None:
            body["meta"] = dict(meta)
        if strategy is not None:
            body["strategy"] = strategy
        if deploy_timeout is not None:
            body["deploy_timeout"] = deploy_timeout
        return cast(App, self.post(f"/apps/{_seg(app)}", body))

    def delete_app(self, app: str) -> str:
        return str(self.delete(f"/apps/{_seg(app)}")["id"])

    def get_app_meta(self, app: str) -> dict[str, str]:
        return cast(dict[str, str], self.get(f"/apps/{_seg(app)}/meta"))

    def set_app_meta(self, app: str, meta: Mapping[str, str]) -> dict[str, str]:
        return cast(dict[str, str], self.put(f"/apps/{_seg(app)}/meta", dict(meta)))

    def get_app_release(self, app: str) -> Release | None:
        """The app's current release, None when it has none yet."""
        try:
            return cast(Release, self.get(f"/apps/{_seg(app)}/release"))
        except APIError as exc:
            if exc.status != 404:
                raise
        self.get_app(app)  # a 404 for the app itself is raised from here
        return None

    def set_app_release(self, app: str, release_id: str) -> Any:
        """Make ``release_id`` current *without* a deployment."""
        return self.put(f"/apps/{_seg(app)}/release", {"id": release_id})

    # -- artifacts -------------------------------------------------------------------------------

    def create_artifact(
        self,
        uri: str,
        *,
        type: str = "tarball",
        meta: Mapping[str, str] | None = None,
        size: int | None = None,
        sha256: str | None = None,
    ) -> Artifact:
        body: dict[str, Any] = {"type": type, "uri": uri}
        if meta is not None:
            body["meta"] = dict(meta)
        if size is not None:
            body["size"] = size
        if sha256 is not None:
            body["sha256"] = sha256
        return cast(Artifact, self.post("/artifacts", body))

    def get_artifact(self, artifact_id: str) -> Artifact:
        return cast(Artifact, self.get(f"/artifacts/{_seg(artifact_id)}"))

    def list_artifacts(self) -> list[Artifact]:
        return cast(list[Artifact], self.get("/artifacts"))

    # -- releases --------------------------------------------------------------------------------

    def create_release(self, release: NewRelease) -> Release:
        return cast(Release, self.post("/releases", dict(release)))

    def get_release(self, release_id: str) -> Release:
        return cast(Release, self.get(f"/releases/{_seg(release_id)}"))

    def list_releases(self, app: str) -> list[Release]:
        return cast(list[Release], self.get(f"/apps/{_seg(app)}/releases"))

    # -- formations ------------------------------------------------------------------------------

    def put_formation(self, app: str, release_id: str, processes: Mapping[str, int]) -> Formation:
        path = f"/apps/{_seg(app)}/formations/{_seg(release_id)}"
        return cast(Formation, self.put(path, {"processes": dict(processes)}))

    def get_formation(self, app: str, release_id: str) -> Formation | None:
        """The formation, None when the release has none."""
        try:
            return cast(Formation, self.get(f"/apps/{_seg(app)}/formations/{_seg(release_id)}"))
        except APIError as exc:
            if exc.status != 404:
                raise
        self.get_app(app)  # unknown apps and releases are raised from here
        self.get_release(release_id)
        return None

    def list_formations(self, app: str) -> list[Formation]:
        return cast(list[Formation], self.get(f"/apps/{_seg(app)}/formations"))

    def delete_formation(self, app: str, release_id: str) -> Any:
        return self.delete(f"/apps/{_seg(app)}/formations/{_seg(release_id)}")

    def active_formations(self) -> list[ExpandedFormation]:
        return cast(list[ExpandedFormation], self.get("/formations", params={"active": "true"}))

    # -- jobs ------------------------------------------------------------------------------------

    def list_jobs(self, app: str, *, all_jobs: bool = False) -> list[Job]:
        params = {"all": "true"} if all_jobs else None
        return cast(list[Job], self.get(f"/apps/{_seg(app)}/jobs", params=params))

    def get_job(self, app: str, job_id: str) -> Job:
        return cast(Job, self.get(f"/apps/{_seg(app)}/jobs/{_seg(job_id)}"))

    def put_job(self, app: str, job_id: str, job: JobUpdate) -> Job:
        return cast(Job, self.put(f"/apps/{_seg(app)}/jobs/{_seg(job_id)}", dict(job)))

    def delete_job(self, app: str, job_id: str) -> Any:
        return self.delete(f"/apps/{_seg(app)}/jobs/{_seg(job_id)}")

    def run_job(self, app: str, job: NewJob) -> Job:
        """Start a one-off job (``flynn run``); with ``attach`` it waits for :meth:`AsyncClient.attach`."""
        return cast(Job, self.post(f"/apps/{_seg(app)}/jobs", dict(job)))

    # -- deployments -----------------------------------------------------------------------------

    def deploy(self, app: str, release_id: str) -> Deployment:
        return cast(Deployment, self.post(f"/apps/{_seg(app)}/deploy", {"id": release_id}))

    def get_deployment(self, deployment_id: str) -> Deployment:
        return cast(Deployment, self.get(f"/deployments/{_seg(deployment_id)}"))

    def list_deployments(self, app: str) -> list[Deployment]:
        return cast(list[Deployment], self.get(f"/apps/{_seg(app)}/deployments"))

    # -- keys ------------------------------------------------------------------------------------

    def create_key(self, key: str) -> Key:
        return cast(Key, self.post("/keys", {"key": key}))

    def list_keys(self) -> list[Key]:
        return cast(list[Key], self.get("/keys"))

    # -- routes ----------------------------------------------------------------------------------

    def list_routes(self, app: str) -> list[Route]:
        return cast(list[Route], self.get(f"/apps/{_seg(app)}/routes"))

    def create_route(self, app: str, route: Mapping[str, Any]) -> Route:
        """``route``: ``{"type": "http", "domain", ...}`` or ``{"type": "tcp", "port"?, ...}``."""
        return cast(Route, self.post(f"/apps/{_seg(app)}/routes", dict(route)))

    def get_route(self, app: str, route_id: str) -> Route:
        return cast(Route, self.get(_route_path(app, route_id)))

    def update_route(self, app: str, route_id: str, changes: Mapping[str, Any]) -> Route:
        return cast(Route, self.put(_route_path(app, route_id), dict(changes)))

    def delete_route(self, app: str, route_id: str) -> Route:
        return cast(Route, self.delete(_route_path(app, route_id)))

    def all_routes(self) -> list[Route]:
        return cast(list[Route], self.get("/routes"))

    def delete_key(self, key_id: str) -> Any:
        return self.delete(f"/keys/{_seg(key_id)}")

    # -- logs and sinks --------------------------------------------------------------------------

    def list_sinks(self) -> list[Sink]:
        return cast(list[Sink], self.get("/sinks"))

    def create_sink(self, url: str, *, use_tls: bool | None = None, ca_cert: str | None = None) -> Sink:
        body: dict[str, Any] = {"kind": "syslog", "url": url}
        if use_tls is not None:
            body["use_tls"] = use_tls
        if ca_cert is not None:
            body["ca_cert"] = ca_cert
        return cast(Sink, self.post("/sinks", body))

    def get_sink(self, sink_id: str) -> Sink:
        return cast(Sink, self.get(f"/sinks/{_seg(sink_id)}"))

    def delete_sink(self, sink_id: str) -> Sink:
        return cast(Sink, self.delete(f"/sinks/{_seg(sink_id)}"))

    def app_log(
        self,
        app: str,
        *,
        lines: int | None = None,
        follow: bool = False,
        process_type: str | None = None,
        job_id: str | None = None,
    ) -> Iterator[LogLine]:
        """The app's lines (``GET /apps/:app/log``), streamed as they arrive; ``follow`` keeps
        reading until the server ends the stream (an ``APIError`` if it ends with an error)."""
        params: dict[str, str] = {}
        if lines is not None:
            params["lines"] = str(lines)
        if follow:
            params["follow"] = "true"
        if process_type:
            params["process_type"] = process_type
        if job_id:
            params["job_id"] = job_id
        url = self._prefix + f"/apps/{_seg(app)}/log" + (("?" + urlencode(params)) if params else "")
        conn = self._connection()
        try:
            try:
                conn.request("GET", url, headers=dict(self._headers))
                resp = conn.getresponse()
                if resp.status >= 400:
                    message = _error_message(resp.status, resp.reason, resp.read())
                    raise APIError(resp.status, message, url=url)
                if follow and conn.sock is not None:
                    conn.sock.settimeout(STREAM_READ_TIMEOUT)  # the server sends a keepalive line every 15 s
                while raw := resp.readline(1 << 20):
                    if not raw.strip():
                        continue
                    data = json.loads(raw)
                    if isinstance(data, dict) and "error" in data and "msg" not in data:
                        raise APIError(0, f"the log stream ended: {data['error']}", url=url)
                    yield cast(LogLine, data)
            except (OSError, http.client.HTTPException, json.JSONDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                reason = reason or type(exc).__name__
                raise APIError(0, f"log stream from {self.base_url} lost: {reason}", url=url) from None
        finally:
            conn.close()

    # -- events ----------------------------------------------------------------------------------

    def list_events(
        self,
        *,
        app_id: str | None = None,
        object_types: Sequence[str] | None = None,
        object_id: str | None = None,
        count: int | None = None,
    ) -> list[Event]:
        """Past events, newest first."""
        params = _events_params(app_id, object_types, object_id, False, count)
        return cast(list[Event], self.get("/events", params=params or None))

    def get_event(self, event_id: int) -> Event:
        return cast(Event, self.get(f"/events/{int(event_id)}"))

    def last_event_id(self, *, app_id: str | None = None) -> int:
        """The id of the newest event (0 when there is none): a point to stream from."""
        newest = self.list_events(app_id=app_id, count=1)
        return int(newest[0]["id"]) if newest else 0

    def stream_events(
        self,
        *,
        app_id: str | None = None,
        object_types: Sequence[str] | None = None,
        object_id: str | None = None,
        since_id: int | None = None,
        past: bool = False,
        deadline: float | None = None,
        reconnect: bool = True,
    ) -> Iterator[Event]:
        """Follow the event stream (SSE), resuming after the last seen event on reconnect.

        ``since_id`` first replays the events after it. ``deadline`` (a ``time.monotonic()``
        value) ends the iteration with :class:`TimeoutError`. Errors the server answers (4xx)
        end it with :class:`APIError`; a lost connection reconnects unless ``reconnect`` is false.
        """
        cursor = _Cursor(since_id)
        delay = 0.1
        while True:
            params = _events_params(app_id, object_types, object_id, past and cursor.last_id is None, None)
            url = self._prefix + "/events" + (("?" + urlencode(params)) if params else "")
            try:
                yield from self._stream_once(url, cursor, deadline, reconnect)
                if not reconnect:
                    return
                delay = 0.1 if cursor.progressed else delay
            except (OSError, http.client.HTTPException) as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError("timed out waiting for events") from None
                if not reconnect:
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    raise APIError(0, f"event stream from {self.base_url} lost: {reason}", url=url) from None
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise TimeoutError("timed out waiting for events")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _stream_once(
        self, url: str, cursor: _Cursor, deadline: float | None, reconnect: bool
    ) -> Iterator[Event]:
        """The events of one SSE connection, until the server closes it."""
        headers = dict(self._headers)
        headers["Accept"] = "text/event-stream"
        if cursor.last_id is not None:
            headers["Last-Event-ID"] = str(cursor.last_id)
        cursor.progressed = False
        conn = self._connection()
        try:
            conn.timeout = _read_timeout(deadline, self._timeout)
            conn.request("GET", url, headers=headers)
            resp = conn.getresponse()
            if resp.status >= 400:
                message = _error_message(resp.status, resp.reason, resp.read())
                if resp.status < 500 or not reconnect:
                    raise APIError(resp.status, message, url=url)
                raise http.client.HTTPException(message)
            cursor.progressed = True
            decoder = SSEDecoder()
            while True:
                if conn.sock is not None:
                    conn.sock.settimeout(_read_timeout(deadline, STREAM_READ_TIMEOUT))
                raw = resp.readline(1 << 20)
                if not raw:
                    return  # the server closed the stream
                msg = decoder.feed(raw.decode(errors="replace").rstrip("\r\n"))
                event = _event_of(msg) if msg is not None else None
                if event is None:
                    continue
                if cursor.last_id is not None and int(event["id"]) <= cursor.last_id:
                    continue  # replayed twice across a reconnect
                cursor.last_id = int(event["id"])
                yield event
        finally:
            conn.close()


@dataclass
class _Cursor:
    last_id: int | None
    progressed: bool = False


def _read_timeout(deadline: float | None, cap: float) -> float:
    if deadline is None:
        return cap
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("timed out waiting for events")
    return max(0.05, min(cap, remaining))


# -- the asyncio client (services) -----------------------------------------------------------------


@dataclass(frozen=True)
class AttachOutput:
    """A chunk of a job's output: ``stream`` 1 is stdout, 2 is stderr."""

    stream: int
    data: bytes


class Attachment:
    """A job's attach WebSocket (frames as in docs/host.md "attach")."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.exit_status: int | None = None

    async def write(self, data: bytes) -> None:
        """Send bytes to the job's stdin."""
        if data:
            await self.ws.send_bytes(data)

    async def close_stdin(self) -> None:
        await self.ws.send_str(json.dumps({"eof": True}))

    async def signal(self, name: str) -> None:
        """Send a signal (``SIGINT``, ``SIGTERM``, ...) to the job."""
        await self.ws.send_str(json.dumps({"signal": name}))

    def __aiter__(self) -> AsyncIterator[AttachOutput]:
        return self._output()

    async def _output(self) -> AsyncIterator[AttachOutput]:
        import aiohttp

        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                data = bytes(msg.data)
                if data and data[0] in (1, 2):
                    yield AttachOutput(data[0], data[1:])
            elif msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    parsed = json.loads(msg.data)
                except json.JSONDecodeError:
                    continue
                if isinstance(parsed, dict) and isinstance(parsed.get("exit"), int):
                    self.exit_status = int(parsed["exit"])
                elif isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
                    raise APIError(0, f"attach: {parsed['error']}")
            elif msg.type == aiohttp.WSMsgType.ERROR:
                break

    async def close(self) -> None:
        await self.ws.close()


class AsyncClient:
    """Asyncio controller client on aiohttp.

    ``urls`` may list several controllers: a connection error moves to the next one. Requests
    that fail with a connection error or a 503 are retried (GET/PUT/DELETE only, which the API
    makes idempotent) for ``retry_for`` seconds. :meth:`set_urls` swaps the list (e.g. from a
    discoverd watch of ``controller``).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        key: str | None = None,
        *,
        tls_pin: str | None = None,
        timeout: float = 10.0,
        retry_for: float = 0.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.set_urls(urls)
        self._pin = parse_pin(tls_pin) if tls_pin else None
        self._headers: dict[str, str] = {}
        if key is not None:
            token = base64.b64encode(f":{key}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self.timeout = timeout
        self.retry_for = retry_for
        self._session = session
        self._own_session = session is None

    def set_key(self, key: str) -> None:
        """Use ``key`` from the next request on (a rotated key: ``flynn -a router env set
        CONTROLLER_KEY=...``); streams already open keep the one they started with."""
        token = base64.b64encode(f":{key}".encode()).decode()
        self._headers["Authorization"] = f"Basic {token}"

    def set_urls(self, urls: str | Sequence[str]) -> None:
        listed = [urls] if isinstance(urls, str) else list(urls)
        cleaned = [u.rstrip("/") for u in listed if u]
        if not cleaned:
            raise ValueError("no controller URL given")
        for url in cleaned:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url!r}")
            if parts.username is not None or parts.password is not None:
                raise ValueError("the controller URL must not contain credentials")
        self.urls = cleaned
        self._current = 0

    @property
    def url(self) -> str:
        return self.urls[self._current % len(self.urls)]

    def _ssl(self) -> Any:
        import aiohttp

        if self._pin is not None:
            return aiohttp.Fingerprint(self._pin)
        return True

    @property
    def session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None:
            resolver = resolve.aiohttp_resolver()  # FLYNN_RESOLVE
            connector = aiohttp.TCPConnector(resolver=resolver) if resolver is not None else None
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _req_headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(self._headers)
        headers.update(extra or {})
        return headers

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _rotate(self) -> None:
        self._current = (self._current + 1) % len(self.urls)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        import aiohttp

        loop = asyncio.get_running_loop()
        retry = self.retry_for if method in ("GET", "PUT", "DELETE", "HEAD") else 0.0
        deadline = loop.time() + retry
        tries_left = len(self.urls)  # without retries, each controller is still tried once
        delay = 0.1
        while True:
            base = self.url
            error: APIError
            try:
                async with self.session.request(
                    method,
                    base + path,
                    json=body,
                    params=dict(params) if params else None,
                    headers=self._req_headers(),
                    ssl=self._ssl(),
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as resp:
                    data = await resp.read()
                    if resp.status < 400:
                        if not data:
                            return None
                        try:
                            return json.loads(data)
                        except (UnicodeDecodeError, json.JSONDecodeError):
                            raise APIError(
                                resp.status, f"invalid JSON from {base}{path}", url=base + path
                            ) from None
                    error = APIError(
                        resp.status, _error_message(resp.status, resp.reason or "", data), url=base + path
                    )
                    if resp.status != 503:
                        raise error
            except aiohttp.ServerFingerprintMismatch:
                raise TLSPinMismatch(base) from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                if isinstance(exc, TimeoutError):
                    reason = f"timed out after {self.timeout:g}s"
                error = APIError(0, f"cannot reach {base}: {reason}", url=base + path)
                self._rotate()
                tries_left -= 1
                if tries_left > 0:
                    continue
            if loop.time() + delay > deadline:
                raise error
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, 2.0)

    # -- status and apps -------------------------------------------------------------------------

    async def status(self) -> Status:
        return cast(Status, await self.request("GET", "/status"))

    async def list_apps(self) -> list[App]:
        return cast(list[App], await self.request("GET", "/apps"))

    async def create_app(self, name: str | None = None, **fields: Any) -> App:
        body = dict(fields)
        if name is not None:
            body["name"] = name
        return cast(App, await self.request("POST", "/apps", body))

    async def get_app(self, app: str) -> App:
        return cast(App, await self.request("GET", f"/apps/{_seg(app)}"))

    async def get_app_release(self, app: str) -> Release | None:
        try:
            return cast(Release, await self.request("GET", f"/apps/{_seg(app)}/release"))
        except APIError as exc:
            if exc.status != 404:
                raise
        await self.get_app(app)  # a 404 for the app itself is raised from here
        return None

    async def set_app_release(self, app: str, release_id: str) -> Any:
        return await self.request("PUT", f"/apps/{_seg(app)}/release", {"id": release_id})

    # -- artifacts and releases ------------------------------------------------------------------

    async def create_artifact(self, uri: str, *, type: str = "tarball", **fields: Any) -> Artifact:
        return cast(Artifact, await self.request("POST", "/artifacts", {"type": type, "uri": uri, **fields}))

    async def get_artifact(self, artifact_id: str) -> Artifact:
        return cast(Artifact, await self.request("GET", f"/artifacts/{_seg(artifact_id)}"))

    async def create_release(self, release: NewRelease) -> Release:
        return cast(Release, await self.request("POST", "/releases", dict(release)))

    async def get_release(self, release_id: str) -> Release:
        return cast(Release, await self.request("GET", f"/releases/{_seg(release_id)}"))

    # -- formations ------------------------------------------------------------------------------

    async def put_formation(self, app: str, release_id: str, processes: Mapping[str, int]) -> Formation:
        path = f"/apps/{_seg(app)}/formations/{_seg(release_id)}"
        return cast(Formation, await self.request("PUT", path, {"processes": dict(processes)}))

    async def get_formation(self, app: str, release_id: str) -> Formation | None:
        try:
            path = f"/apps/{_seg(app)}/formations/{_seg(release_id)}"
            return cast(Formation, await self.request("GET", path))
        except APIError as exc:
            if exc.status != 404:
                raise
        await self.get_app(app)  # unknown apps and releases are raised from here
        await self.get_release(release_id)
        return None

    async def list_formations(self, app: str) -> list[Formation]:
        return cast(list[Formation], await self.request("GET", f"/apps/{_seg(app)}/formations"))

    async def active_formations(self) -> list[ExpandedFormation]:
        """Every formation with a non-zero count, expanded with its app, release and artifacts."""
        return cast(
            list[ExpandedFormation], await self.request("GET", "/formations", params={"active": "true"})
        )

    async def expanded_formation(self, app: str, release_id: str) -> ExpandedFormation | None:
        """One formation expanded like :meth:`active_formations` (None when it does not exist)."""
        formation = await self.get_formation(app, release_id)
        if formation is None:
            return None
        app_obj = await self.get_app(app)
        release = await self.get_release(release_id)
        artifacts = [await self.get_artifact(a) for a in release.get("artifacts", [])]
        return {
            "app": app_obj,
            "release": release,
            "artifacts": artifacts,
            "processes": dict(formation["processes"]),
            "updated_at": formation["updated_at"],
        }

    # -- jobs ------------------------------------------------------------------------------------

    async def list_jobs(self, app: str, *, all_jobs: bool = False) -> list[Job]:
        params = {"all": "true"} if all_jobs else None
        return cast(list[Job], await self.request("GET", f"/apps/{_seg(app)}/jobs", params=params))

    async def get_job(self, app: str, job_id: str) -> Job:
        return cast(Job, await self.request("GET", f"/apps/{_seg(app)}/jobs/{_seg(job_id)}"))

    async def put_job(self, app: str, job_id: str, job: JobUpdate) -> Job:
        """Report a job's state (the scheduler's upsert)."""
        return cast(Job, await self.request("PUT", f"/apps/{_seg(app)}/jobs/{_seg(job_id)}", dict(job)))

    async def delete_job(self, app: str, job_id: str) -> Any:
        return await self.request("DELETE", f"/apps/{_seg(app)}/jobs/{_seg(job_id)}")

    async def run_job(self, app: str, job: NewJob) -> Job:
        return cast(Job, await self.request("POST", f"/apps/{_seg(app)}/jobs", dict(job)))

    # -- deployments -----------------------------------------------------------------------------

    async def deploy(self, app: str, release_id: str) -> Deployment:
        return cast(Deployment, await self.request("POST", f"/apps/{_seg(app)}/deploy", {"id": release_id}))

    async def get_deployment(self, deployment_id: str) -> Deployment:
        return cast(Deployment, await self.request("GET", f"/deployments/{_seg(deployment_id)}"))

    # -- routes ----------------------------------------------------------------------------------

    async def all_routes(self) -> list[Route]:
        """Every route of the cluster, with certificate keys (what a router loads)."""
        return cast(list[Route], await self.request("GET", "/routes"))

    async def get_route(self, app: str, route_id: str) -> Route:
        return cast(Route, await self.request("GET", _route_path(app, route_id)))

    async def last_event_id(self, *, object_types: Sequence[str] | None = None) -> int:
        """The id of the newest event (of these types), 0 when there is none: a point to stream from."""
        params = {"count": "1"}
        if object_types:
            params["object_types"] = ",".join(object_types)
        events = await self.request("GET", "/events", params=params)
        return int(events[0]["id"]) if events else 0

    # -- events ----------------------------------------------------------------------------------

    def events(
        self,
        *,
        app_id: str | None = None,
        object_types: Sequence[str] | None = None,
        object_id: str | None = None,
        since_id: int | None = None,
        past: bool = False,
    ) -> EventStream:
        """A resumable SSE stream of events: ``async for event in client.events(...)``."""
        return EventStream(self, app_id, object_types, object_id, since_id, past)

    # -- attach ----------------------------------------------------------------------------------

    async def attach(self, app: str, job_id: str) -> Attachment:
        """Open the attach WebSocket of a job started with ``attach: true`` (within ``timeout``)."""
        import aiohttp

        base = self.url
        path = f"/apps/{_seg(app)}/jobs/{_seg(job_id)}/attach"
        try:
            async with asyncio.timeout(self.timeout):
                ws = await self.session.ws_connect(
                    base + path,
                    headers=self._req_headers(),
                    ssl=self._ssl(),
                    timeout=aiohttp.ClientWSTimeout(ws_close=10.0),
                    autoping=True,
                    heartbeat=30.0,
                    max_msg_size=0,
                )
        except aiohttp.ServerFingerprintMismatch:
            raise TLSPinMismatch(base) from None
        except aiohttp.WSServerHandshakeError as exc:
            message = exc.message or f"HTTP {exc.status}"
            raise APIError(exc.status, f"cannot attach to job {job_id}: {message}", url=base + path) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = f"timed out after {self.timeout:g}s" if isinstance(exc, TimeoutError) else str(exc)
            raise APIError(
                0, f"cannot reach {base}: {reason or type(exc).__name__}", url=base + path
            ) from None
        return Attachment(ws)


class EventStream:
    """Async iterator of controller :class:`Event` s that reconnects (backoff, next controller)
    and resumes with ``Last-Event-ID`` so nothing is lost or repeated. ``connected`` is set while
    a stream is open; ``last_id`` is the id of the last event yielded."""

    def __init__(
        self,
        client: AsyncClient,
        app_id: str | None,
        object_types: Sequence[str] | None,
        object_id: str | None,
        since_id: int | None,
        past: bool,
    ) -> None:
        self.client = client
        self.app_id = app_id
        self.object_types = list(object_types) if object_types else None
        self.object_id = object_id
        self.past = past
        self.last_id = since_id
        self.connected = asyncio.Event()
        self.reconnects = 0

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._run()

    async def _run(self) -> AsyncIterator[Event]:
        import aiohttp

        delay = 0.1
        while True:
            base = self.client.url
            params = _events_params(
                self.app_id, self.object_types, self.object_id, self.past and self.last_id is None, None
            )
            headers = self.client._req_headers({"Accept": "text/event-stream"})
            if self.last_id is not None:
                headers["Last-Event-ID"] = str(self.last_id)
            try:
                async with self.client.session.get(
                    base + "/events",
                    params=params or None,
                    headers=headers,
                    ssl=self.client._ssl(),
                    timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=self.client.timeout, sock_read=STREAM_READ_TIMEOUT
                    ),
                ) as resp:
                    if resp.status >= 400:
                        data = await resp.read()
                        message = _error_message(resp.status, resp.reason or "", data)
                        if 400 <= resp.status < 500:
                            raise APIError(resp.status, message, url=base + "/events")
                        raise aiohttp.ClientResponseError(
                            resp.request_info, (), status=resp.status, message=message
                        )
                    self.connected.set()
                    delay = 0.1
                    decoder = SSEDecoder()
                    while True:
                        raw = await resp.content.readline()
                        if not raw:
                            break
                        msg = decoder.feed(raw.decode(errors="replace").rstrip("\r\n"))
                        event = _event_of(msg) if msg is not None else None
                        if event is None:
                            continue
                        if self.last_id is not None and int(event["id"]) <= self.last_id:
                            continue
                        self.last_id = int(event["id"])
                        yield event
            except aiohttp.ServerFingerprintMismatch:
                raise TLSPinMismatch(base) from None
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                pass
            self.connected.clear()
            self.reconnects += 1
            self.client._rotate()
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, 2.0)


__all__ = [
    "FINAL_JOB_STATES",
    "PIN_MISMATCH",
    "App",
    "Artifact",
    "AsyncClient",
    "AttachOutput",
    "Attachment",
    "Client",
    "Deployment",
    "Event",
    "EventStream",
    "ExpandedFormation",
    "Formation",
    "Job",
    "JobUpdate",
    "Key",
    "NewJob",
    "NewRelease",
    "ProcessType",
    "Release",
    "Route",
    "RouteCertificate",
    "Status",
    "TLSPinMismatch",
    "cert_pin",
    "parse_pin",
    "pinned_ssl_context",
]
