"""The controller's HTTP API (aiohttp): routes, auth, JSON errors. See docs/controller.md."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

import flynn
from flynn.common.errors import APIError
from flynn.common.web import Handler, error_middleware, json_error
from flynn.controller import auth, events, logs_api, openapi, render, routes_api, schema, sshkeys
from flynn.controller.auth import KeySet
from flynn.controller.db import UNAVAILABLE, Database
from flynn.controller.errors import BadGateway, ControllerError, Invalid, NotFound, Unavailable
from flynn.controller.events import EventHub
from flynn.controller.hosts import Hosts
from flynn.controller.repo import apps as apps_repo
from flynn.controller.repo import artifacts as artifacts_repo
from flynn.controller.repo import deployments as deployments_repo
from flynn.controller.repo import events as events_repo
from flynn.controller.repo import formations as formations_repo
from flynn.controller.repo import jobs as jobs_repo
from flynn.controller.repo import keys as keys_repo
from flynn.controller.repo import releases as releases_repo
from flynn.controller.repo import routes as routes_repo

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


@web.middleware
async def controller_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ControllerError as exc:
        return web.json_response(exc.body(), status=exc.status)
    except UNAVAILABLE as exc:
        log.warning("%s %s: database unavailable: %s", request.method, request.path, exc)
        return json_error(503, "database unavailable")


class API:
    def __init__(
        self,
        db: Database,
        hub: EventHub,
        keys: KeySet,
        hosts: Hosts,
        *,
        keepalive: float = 15.0,
        wake_deployer: Any = None,
        cluster_domain: str | None = None,
        ca_cert: str | None = None,
    ) -> None:
        self.db = db
        self.ca_cert = ca_cert
        self.cluster_domain = cluster_domain  # set: every new (non-system) app gets APP.DOMAIN
        self.hub = hub
        self.keys = keys
        self.hosts = hosts
        self.keepalive = keepalive
        self.wake_deployer = wake_deployer or (lambda: None)
        self.version = flynn.__version__
        self._document = openapi.document(self.version)

    def make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[error_middleware, controller_errors, auth.middleware(self.keys)],
            client_max_size=MAX_BODY,
        )
        r = app.router
        r.add_get("/status", self.status)
        r.add_get("/openapi.json", self.openapi)
        r.add_get("/ca-cert", self.get_ca_cert)
        r.add_post("/apps", self.create_app)
        r.add_get("/apps", self.list_apps)
        r.add_get("/apps/{app}", self.get_app)
        r.add_post("/apps/{app}", self.update_app)
        r.add_delete("/apps/{app}", self.delete_app)
        r.add_get("/apps/{app}/meta", self.get_meta)
        r.add_put("/apps/{app}/meta", self.put_meta)
        r.add_get("/apps/{app}/release", self.get_app_release)
        r.add_put("/apps/{app}/release", self.put_app_release)
        r.add_get("/apps/{app}/releases", self.list_app_releases)
        r.add_get("/apps/{app}/formations", self.list_formations)
        r.add_get("/apps/{app}/formations/{release}", self.get_formation)
        r.add_put("/apps/{app}/formations/{release}", self.put_formation)
        r.add_delete("/apps/{app}/formations/{release}", self.delete_formation)
        r.add_get("/formations", self.all_formations)
        r.add_get("/apps/{app}/jobs", self.list_jobs)
        r.add_post("/apps/{app}/jobs", self.run_job)
        r.add_get("/apps/{app}/jobs/{job}", self.get_job)
        r.add_put("/apps/{app}/jobs/{job}", self.put_job)
        r.add_delete("/apps/{app}/jobs/{job}", self.delete_job)
        r.add_get("/apps/{app}/jobs/{job}/attach", self.attach_job)
        r.add_post("/apps/{app}/deploy", self.deploy)
        r.add_get("/apps/{app}/deployments", self.list_deployments)
        r.add_get("/deployments/{id}", self.get_deployment)
        r.add_post("/artifacts", self.create_artifact)
        r.add_get("/artifacts", self.list_artifacts)
        r.add_get("/artifacts/{id}", self.get_artifact)
        r.add_post("/releases", self.create_release)
        r.add_get("/releases/{id}", self.get_release)
        r.add_get("/events", self.list_events)
        r.add_get("/events/{id}", self.get_event)
        r.add_post("/keys", self.create_key)
        r.add_get("/keys", self.list_keys)
        r.add_delete("/keys/{id}", self.delete_key)
        routes_api.RouteAPI(self.db).register(r)
        logs_api.LogsAPI(self.db, self.hosts).register(r)
        return app

    # -- other -----------------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(2):
                ok = await self.db.ping()
        except TimeoutError:
            ok = False
        body = {"status": "healthy" if ok else "unhealthy", "database": "ok" if ok else "unavailable"}
        body["version"] = self.version
        return _json(body, 200 if ok else 503)

    async def get_ca_cert(self, request: web.Request) -> web.Response:
        """The cluster CA (public, as in Flynn): what git and browsers need to trust the routers'
        certificate. A client fetches it over a pinned connection (``flynn cluster add -p``)."""
        if self.ca_cert is None:
            raise NotFound("this cluster has no CA certificate configured (CA_CERT)")
        return web.Response(text=self.ca_cert, content_type="application/x-pem-file")

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(self._document)

    # -- apps ------------------------------------------------------------------------------------

    async def create_app(self, request: web.Request) -> web.Response:
        spec = schema.app_create(await schema.read_body(request))
        async with self.db.transaction() as tx:
            out = await apps_repo.create(tx, spec)
            if self.cluster_domain and not spec.system:
                await routes_api.create_default(tx, out, self.cluster_domain)
        return _json(out, 201)

    async def list_apps(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            return _json(await apps_repo.list_all(tx))

    async def get_app(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            return _json(render.app(await apps_repo.get(tx, request.match_info["app"])))

    async def update_app(self, request: web.Request) -> web.Response:
        spec = schema.app_update(await schema.read_body(request))
        async with self.db.transaction() as tx:
            return _json(await apps_repo.update(tx, request.match_info["app"], spec))

    async def delete_app(self, request: web.Request) -> web.Response:
        async with self.db.transaction() as tx:
            app = await apps_repo.get(tx, request.match_info["app"], lock=True)
            if not app["system"]:  # a system app is refused below: nothing is deleted
                await routes_repo.delete_for_app(tx, app["id"])
            app_id = await apps_repo.delete(tx, request.match_info["app"])
        return _json({"id": app_id})

    async def get_meta(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            return _json((await apps_repo.get(tx, request.match_info["app"]))["meta"])

    async def put_meta(self, request: web.Request) -> web.Response:
        meta = schema.meta(await schema.read_body(request), "")
        async with self.db.transaction() as tx:
            return _json(await apps_repo.set_meta(tx, request.match_info["app"], meta))

    async def get_app_release(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            if app["release_id"] is None:
                raise NotFound(f"app {app['name']} has no release")
            return _json(await releases_repo.get(tx, str(app["release_id"])))

    async def put_app_release(self, request: web.Request) -> web.Response:
        release_id = schema.id_body(await schema.read_body(request))
        async with self.db.transaction() as tx:
            app = await apps_repo.get(tx, request.match_info["app"], lock=True)
            release = await releases_repo.get_for_app(tx, app, release_id, field="id")
            await apps_repo.set_release(tx, app, release)
        return _json(release)

    # -- artifacts and releases ------------------------------------------------------------------

    async def create_artifact(self, request: web.Request) -> web.Response:
        spec = schema.artifact_create(await schema.read_body(request))
        async with self.db.transaction() as tx:
            return _json(await artifacts_repo.create(tx, spec), 201)

    async def list_artifacts(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            return _json(await artifacts_repo.list_all(tx))

    async def get_artifact(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            return _json(await artifacts_repo.get(tx, request.match_info["id"]))

    async def create_release(self, request: web.Request) -> web.Response:
        app_ref, body = schema.release_create(await schema.read_body(request))
        async with self.db.transaction() as tx:
            try:
                app = await apps_repo.get(tx, app_ref)
            except NotFound:
                raise Invalid(f"app_id: app {app_ref!r} not found", field="app_id") from None
            spec = schema.release_spec(body, app_ref, app["name"])
            return _json(await releases_repo.create(tx, app, spec), 201)

    async def get_release(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            return _json(await releases_repo.get(tx, request.match_info["id"]))

    async def list_app_releases(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            return _json(await releases_repo.list_for_app(tx, app["id"]))

    # -- formations ------------------------------------------------------------------------------

    async def put_formation(self, request: web.Request) -> web.Response:
        body = await schema.read_body(request)
        async with self.db.transaction() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            release = await releases_repo.get_for_app(tx, app, request.match_info["release"])
            processes = schema.formation_processes(body, set(release["processes"]))
            return _json(await formations_repo.put(tx, app["id"], release["id"], processes))

    async def get_formation(self, request: web.Request) -> web.Response:
        expand = schema.query_bool(request.query, "expand")
        async with self.db.read() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            release_id = schema.path_uuid(request.match_info["release"], "release")
            form = await formations_repo.get(tx, app, release_id)
            if expand:
                return _json((await formations_repo.expand(tx, [form]))[0])
            return _json(form)

    async def list_formations(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            return _json(await formations_repo.list_for_app(tx, app["id"]))

    async def delete_formation(self, request: web.Request) -> web.Response:
        async with self.db.transaction() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            release_id = schema.path_uuid(request.match_info["release"], "release")
            return _json(await formations_repo.delete(tx, app, release_id))

    async def all_formations(self, request: web.Request) -> web.Response:
        active = schema.query_bool(request.query, "active")
        async with self.db.read() as tx:
            if active:
                return _json(await formations_repo.active(tx))
            return _json(await formations_repo.list_all(tx))

    # -- jobs ------------------------------------------------------------------------------------

    async def list_jobs(self, request: web.Request) -> web.Response:
        include_final = schema.query_bool(request.query, "all")
        async with self.db.read() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            return _json(await jobs_repo.list_for_app(tx, app["id"], include_final=include_final))

    async def get_job(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            return _json(await jobs_repo.get(tx, app, request.match_info["job"]))

    async def put_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job"]
        schema.path_job_id(job_id)
        report = schema.job_put(await schema.read_body(request))
        async with self.db.transaction() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            report.check_identity(job_id, str(app["id"]))
            job, created = await jobs_repo.put(tx, app, job_id, report)
        return _json(job, 201 if created else 200)

    async def run_job(self, request: web.Request) -> web.Response:
        spec = schema.run_job(await schema.read_body(request))
        async with self.db.read() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            release_id = spec.release_id or (None if app["release_id"] is None else str(app["release_id"]))
            if release_id is None:
                raise Invalid(f"release_id: app {app['name']} has no release; give one", field="release_id")
            release = await releases_repo.get_for_app(tx, app, release_id, field="release_id")
            artifacts = await artifacts_repo.get_many(tx, release["artifacts"][:1])
            counts = await jobs_repo.live_counts_by_host(tx)
        try:
            hosts = await self.hosts.list()
        except APIError as exc:
            raise Unavailable(f"cannot list hosts: {exc.message}") from None
        if not hosts:
            raise Unavailable("no host is available to run the job")
        proc = release["processes"].get(spec.type)
        env = {**release["env"], **(proc["env"] if proc else {}), **spec.env}
        resources = proc["resources"] if proc else {"memory": {"limit": schema.DEFAULT_MEMORY}}
        artifact = None
        if release["artifacts"]:
            a = artifacts[release["artifacts"][0]]
            artifact = {"id": a["id"], "type": a["type"], "uri": a["uri"], "sha256": a["sha256"]}
        job_uuid = str(uuid.uuid4())
        meta = {**spec.meta, jobs_repo.ONEOFF_META: "true"}
        last_error = ""
        for host in sorted(hosts, key=lambda h: (counts.get(h.id, 0), h.id)):
            config = {
                "id": f"{host.id}-{job_uuid}",
                "app_id": str(app["id"]),
                "app_name": app["name"],
                "release_id": release["id"],
                "type": spec.type,
                "artifact": artifact,
                "args": spec.args,
                "env": env,
                "service": None,
                "check": None,
                "resources": resources,
                "attach": spec.attach,
                "stop_timeout": 10,
                "meta": meta,
            }
            try:
                started = await self.hosts.start_job(host, config)
            except APIError as exc:
                if exc.status == 0 or exc.status >= 500:
                    log.warning("host %s cannot start a job: %s", host.id, exc)
                    last_error = f"{host.id}: {exc.message}"
                    continue
                raise Invalid(f"host {host.id} refused the job: {exc.message}") from None
            state = started.get("state")
            record = {
                "id": config["id"],
                "uuid": job_uuid,
                "host_id": host.id,
                "app_id": str(app["id"]),
                "release_id": release["id"],
                "type": spec.type,
                "state": state if state in schema.JOB_STATES else "starting",
                "args": spec.args,
                "meta": meta,
            }
            async with self.db.transaction() as tx:
                return _json(await jobs_repo.insert_started(tx, record), 201)
        raise Unavailable(f"no host could start the job (last: {last_error})")

    async def _job_and_host(self, request: web.Request) -> tuple[dict[str, Any], Any]:
        async with self.db.read() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            job = await jobs_repo.get(tx, app, request.match_info["job"])
        try:
            host = await self.hosts.find(job["host_id"])
        except APIError as exc:
            raise Unavailable(f"cannot list hosts: {exc.message}") from None
        return job, host

    async def delete_job(self, request: web.Request) -> web.Response:
        job, host = await self._job_and_host(request)
        if job["state"] in schema.FINAL_STATES:
            return _json(job)
        if host is None:
            raise Unavailable(f"host {job['host_id']} of job {job['id']} is not available")
        state = "stopping"
        try:
            await self.hosts.stop_job(host, job["id"])
        except APIError as exc:
            if exc.status == 404:
                state = "down"  # the host does not know it (any more): it is not running there
            elif exc.status == 0 or exc.status >= 500:
                raise Unavailable(f"host {host.id} cannot stop the job: {exc.message}") from None
            else:
                raise BadGateway(f"host {host.id} refused to stop the job: {exc.message}") from None
        async with self.db.transaction() as tx:
            updated = await jobs_repo.mark(tx, job["id"], state)
        return _json(updated or job)

    async def attach_job(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_BODY)
        if not ws.can_prepare(request).ok:
            raise Invalid("attach needs a WebSocket upgrade (GET with Upgrade: websocket)")
        job, host = await self._job_and_host(request)
        if job["state"] in schema.FINAL_STATES:
            raise Invalid(f"job {job['id']} is {job['state']}: nothing to attach to")
        if host is None:
            raise Unavailable(f"host {job['host_id']} of job {job['id']} is not available")
        url = self.hosts.attach_url(host, job["id"])
        try:
            upstream = await self.hosts.session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=10))
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 404:
                raise NotFound(f"host {host.id} has no job {job['id']} to attach to") from None
            raise BadGateway(f"host {host.id} refused the attach: HTTP {exc.status} {exc.message}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot reach host {host.id}: {exc or type(exc).__name__}") from None
        try:
            await ws.prepare(request)
            await _pump(ws, upstream)
        finally:
            await upstream.close()
            await ws.close()
        return ws

    # -- deployments -----------------------------------------------------------------------------

    async def deploy(self, request: web.Request) -> web.Response:
        release_id = schema.id_body(await schema.read_body(request))
        async with self.db.transaction() as tx:
            out = await deployments_repo.create(tx, request.match_info["app"], release_id)
        self.wake_deployer()
        return _json(out, 201)

    async def list_deployments(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            return _json(await deployments_repo.list_for_app(tx, app["id"]))

    async def get_deployment(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            return _json(await deployments_repo.get(tx, request.match_info["id"]))

    # -- events ----------------------------------------------------------------------------------

    async def list_events(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        app_id = None
        if q.get("app_id"):
            ref = q["app_id"]
            if schema.UUID_RE.fullmatch(ref):
                app_id = ref  # events outlive their app: an id needs no app
            else:
                async with self.db.read() as tx:
                    try:
                        app_id = str((await apps_repo.get(tx, ref))["id"])
                    except NotFound:
                        raise Invalid(f"app_id: app {ref[:80]!r} not found", field="app_id") from None
        types: tuple[str, ...] = ()
        if q.get("object_types"):
            types = tuple(t.strip() for t in q["object_types"].split(",") if t.strip())
            for t in types:
                if t not in schema.OBJECT_TYPES:
                    raise Invalid(
                        f"object_types: {t[:40]!r} is not one of {', '.join(schema.OBJECT_TYPES)}",
                        field="object_types",
                    )
        object_id = q.get("object_id") or None
        if object_id is not None:
            schema.string(object_id, "object_id", max_len=200)
            schema.check_text(object_id, "object_id")
        flt = events_repo.Filter(app_id=app_id, object_types=types, object_id=object_id)
        count = schema.query_int(q, "count", 100, 1, 1000) or 100
        since_id = schema.query_int(q, "since_id", None, 0, (1 << 63) - 1)
        header_id = request.headers.get("Last-Event-ID", "").strip()
        if header_id:
            since_id = schema.query_int({"Last-Event-ID": header_id}, "Last-Event-ID", None, 0, (1 << 63) - 1)
        past = schema.query_bool(q, "past")
        if "text/event-stream" in request.headers.get("Accept", ""):
            return await events.stream(
                request,
                self.db,
                self.hub,
                flt,
                since_id=since_id,
                past=past,
                count=count,
                keepalive=self.keepalive,
            )
        async with self.db.read() as tx:
            return _json(await events_repo.newest(tx, flt, count, since_id))

    async def get_event(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        if not re.fullmatch(r"[0-9]{1,18}", raw):
            raise NotFound(f"event {raw[:40]!r} not found")
        async with self.db.read() as tx:
            return _json(await events_repo.get(tx, int(raw)))

    # -- keys ------------------------------------------------------------------------------------

    async def create_key(self, request: web.Request) -> web.Response:
        key = sshkeys.parse(schema.key_create(await schema.read_body(request)))
        async with self.db.transaction() as tx:
            return _json(await keys_repo.create(tx, key), 201)

    async def list_keys(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            return _json(await keys_repo.list_all(tx))

    async def delete_key(self, request: web.Request) -> web.Response:
        async with self.db.transaction() as tx:
            return _json(await keys_repo.delete(tx, request.match_info["id"]))


async def _pump(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Copy frames both ways until either side closes (then close the other)."""

    async def client_to_host() -> None:
        async for msg in client:
            if msg.type == WSMsgType.BINARY:
                await upstream.send_bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await upstream.send_str(msg.data)
            else:
                break

    async def host_to_client() -> None:
        async for msg in upstream:
            if msg.type == WSMsgType.BINARY:
                await client.send_bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await client.send_str(msg.data)
            else:
                break

    tasks = [asyncio.ensure_future(client_to_host()), asyncio.ensure_future(host_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await task
