"""Routes from the controller into the route table: a full load, then the ``route`` events.

One sync round: read the id of the newest ``route`` event (L), load ``GET /routes``, make the
table hold exactly those routes, then follow the SSE stream of ``route`` events after L. Event
ids are handed out in commit order (docs/controller.md, "No gaps"), so a change committed after
the load has an id above L and arrives on the stream, and one committed before is in the load:
nothing is missed and the stream's own reconnects (``Last-Event-ID``) lose nothing either. A
round ends only when the stream fails for good (a 4xx, e.g. a wrong key); the next round loads
everything again.

Event data carries a route without its TLS key, so a created or updated route with a
certificate is read back whole (``GET /apps/:app/routes/:id``); one already gone is removed.

The system app ``router`` configures the routers live: its release's ``TLSCERT``/``TLSKEY``
(``flynn -a router env set TLSCERT=... TLSKEY=...``, seed 002) replace the default certificate
the daemon started with, and its ``CONTROLLER_KEY`` (the key rotation of seed 000) the key used
with the controller, at each load and on the app's ``app_release`` events.

Leader routes: a route with ``leader`` gets the backend set ``SERVICE@leader``
(:func:`backend_key`), which the discoverd watches feed with the service's leader only; the same
service can thus have both kinds of routes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from flynn.common.errors import APIError
from flynn.common.log import register_secret
from flynn.controller.client import AsyncClient
from flynn.router.routes import HTTPRoute, Route, RouteTable, TCPRoute
from flynn.router.tls import CertStore

log = logging.getLogger(__name__)

LEADER_SUFFIX = "@leader"
EVENT_TYPES = ("route", "app_release")
ROUTER_APP = "router"


def backend_key(service: str, leader: bool) -> str:
    """The table's backend set for a route of ``service``: its leader only for ``leader`` routes."""
    return f"{service}{LEADER_SUFFIX}" if leader else service


def split_key(key: str) -> tuple[str, bool]:
    """``(discoverd service, leader only)`` of a backend set name."""
    if key.endswith(LEADER_SUFFIX):
        return key[: -len(LEADER_SUFFIX)], True
    return key, False


def to_route(doc: Mapping[str, Any]) -> Route:
    """A data-plane route from the controller's JSON (ValueError/KeyError/TypeError if unusable)."""
    kind = doc["type"]
    service = backend_key(str(doc["service"]), bool(doc.get("leader", False)))
    if kind == "http":
        cert = doc.get("certificate") or None
        tls_cert = tls_key = None
        if cert is not None and cert.get("key"):
            tls_cert, tls_key = str(cert["cert"]), str(cert["key"])
        return HTTPRoute(
            domain=str(doc["domain"]),
            service=service,
            path=str(doc.get("path") or "/"),
            id=str(doc["id"]),
            sticky=bool(doc.get("sticky", False)),
            https_redirect=bool(doc.get("https_redirect", False)),
            tls_cert=tls_cert,
            tls_key=tls_key,
            leader=bool(doc.get("leader", False)),
        )
    if kind == "tcp":
        return TCPRoute(port=int(doc["port"]), service=service, id=str(doc["id"]))
    raise ValueError(f"unknown route type {kind!r}")


def _fingerprint(cert: str) -> str:
    return hashlib.sha256(cert.encode()).hexdigest()[:16]


class RouteSync:
    """Keeps ``table`` equal to the controller's routes; ``on_change`` runs after each change."""

    def __init__(
        self,
        table: RouteTable,
        client: Callable[[], Awaitable[AsyncClient]],
        *,
        certs: CertStore | None = None,
        on_key: Callable[[str], None] | None = None,
        on_unauthorized: Callable[[], None] = lambda: None,
        on_change: Callable[[], None] = lambda: None,
        retry_after: float = 1.0,
    ) -> None:
        self.table = table
        self._client = client  # waits until a controller is known
        self.certs = certs
        self.on_key = on_key
        self.on_unauthorized = on_unauthorized
        self._not_router: set[str] = set()  # app ids known not to be the system app "router"
        self.on_change = on_change
        self.retry_after = retry_after
        self.owned: set[str] = set()  # route ids this sync put into the table
        self.synced = asyncio.Event()
        self.loads = 0
        self.events = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_event_id: int | None = None
        self.loaded_at: float | None = None
        self.router_app_id: str | None = None
        self.default_cert: str | None = None  # fingerprint of the default certificate from the release

    def status(self) -> dict[str, Any]:
        return {
            "synced": self.synced.is_set(),
            "routes": len(self.owned),
            "loads": self.loads,
            "events": self.events,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_event_id": self.last_event_id,
            "loaded_at": self.loaded_at,
            "default_certificate": self.default_cert,
        }

    async def run(self) -> None:
        delay = self.retry_after
        while True:
            loads = self.loads
            try:
                await self.round()
            except APIError as exc:
                self.errors += 1
                self.last_error = exc.message
                log.warning("route sync: %s; loading again", exc.message)
                if exc.status == 401:
                    self.on_unauthorized()
            except Exception as exc:  # a bug must not take the router's routes away for good
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("route sync failed; loading again")
            if self.loads != loads:
                delay = self.retry_after  # it worked for a while: start the backoff afresh
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def round(self) -> None:
        client = await self._client()
        last = await client.last_event_id(object_types=EVENT_TYPES)
        docs = await client.all_routes()
        await self._load_router_app(client)
        self.replace_all(docs)
        self.last_event_id = last
        self.loads += 1
        self.loaded_at = time.time()
        self.synced.set()
        log.info("route sync: %d routes loaded (events after %d follow)", len(self.owned), last)
        stream = client.events(object_types=EVENT_TYPES, since_id=last)
        async for event in stream:
            await self.apply(client, event)
            self.last_event_id = int(event["id"])
            self.events += 1

    def replace_all(self, docs: list[Any]) -> None:
        wanted: dict[str, Route] = {}
        for doc in docs:
            try:
                route = to_route(doc)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("route %s from the controller is unusable: %s", _doc_id(doc), exc)
                continue
            wanted[route.id] = route
        for rid in sorted(self.owned - set(wanted)):
            self.table.remove_route(rid)
        for route in wanted.values():
            if self.table.get_route(route.id) != route:
                self._set(route)
        self.owned = set(wanted)
        self.on_change()

    async def apply(self, client: AsyncClient, event: Mapping[str, Any]) -> None:
        kind = event.get("object_type")
        if kind == "app_release":
            app_id = event.get("app_id")
            if self.router_app_id is None and isinstance(app_id, str) and app_id not in self._not_router:
                await self._find_router_app(client, app_id)
            if self.router_app_id is not None and app_id == self.router_app_id:
                release = (event.get("data") or {}).get("release") or {}
                self._apply_router_env(release.get("env") or {})
            return
        if kind != "route":
            return
        rid = str(event.get("object_id"))
        doc = event.get("data") or {}
        if event.get("op") != "delete" and doc.get("certificate"):
            try:
                doc = await client.get_route(str(event.get("app_id")), rid)
            except APIError as exc:
                if exc.status != 404:
                    raise
                doc = {}  # deleted since: its delete event follows
        if event.get("op") == "delete" or not doc:
            self._remove(rid)
            return
        try:
            route = to_route(doc)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("route %s from the controller is unusable: %s", rid, exc)
            self._remove(rid)
            return
        self._set(route)
        self.owned.add(route.id)
        self.on_change()

    def _set(self, route: Route) -> None:
        if isinstance(route, HTTPRoute) and route.tls_key:
            register_secret(route.tls_key)  # a route's private key never reaches a log line
        self.table.set_route(route)

    def _remove(self, rid: str) -> None:
        if rid in self.owned:
            self.owned.discard(rid)
            self.table.remove_route(rid)
            self.on_change()

    async def _load_router_app(self, client: AsyncClient) -> None:
        try:
            app = await client.get_app(ROUTER_APP)
            release = await client.get_app_release(ROUTER_APP)
        except APIError as exc:
            if exc.status != 404:
                raise
            return  # no system app "router" (a controller without bootstrap): keep TLSCERT
        if not app.get("system"):
            return  # only the platform's own app may set the cluster's certificate
        self.router_app_id = app["id"]
        if release is not None:
            self._apply_router_env(release.get("env") or {})

    async def _find_router_app(self, client: AsyncClient, app_id: str) -> None:
        """Is ``app_id`` the system app ``router`` (created after the load, e.g. by bootstrap)?"""
        try:
            app = await client.get_app(app_id)
        except APIError as exc:
            if exc.status != 404:
                raise
            return
        if app.get("name") == ROUTER_APP and app.get("system"):
            self.router_app_id = app["id"]
        else:
            self._not_router.add(app_id)

    def _apply_router_env(self, env: Mapping[str, Any]) -> None:
        controller_key = env.get("CONTROLLER_KEY")
        if self.on_key is not None and isinstance(controller_key, str) and controller_key.strip():
            self.on_key(controller_key.strip())
        cert, key = env.get("TLSCERT"), env.get("TLSKEY")
        if self.certs is None or not isinstance(cert, str) or not isinstance(key, str) or not cert:
            return
        fp = _fingerprint(cert)
        if fp == self.default_cert:
            return
        register_secret(key)
        try:
            self.certs.set_default(cert, key)
        except ValueError as exc:
            log.error("the router app's TLSCERT/TLSKEY do not load (%s); keeping the old ones", exc)
            return
        self.default_cert = fp
        log.info("default certificate from the router app's release (%s)", fp)


def _doc_id(doc: Any) -> str:
    return str(doc.get("id")) if isinstance(doc, Mapping) else "?"
