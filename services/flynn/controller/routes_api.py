"""The controller's route endpoints (docs/controller.md, "Route"), registered by api.py.

    POST   /apps/:app/routes              create (201)
    GET    /apps/:app/routes              the app's routes, oldest first
    GET    /apps/:app/routes/:type/:uuid  one route (its id is "TYPE/UUID": the path is the id)
    PUT    /apps/:app/routes/:type/:uuid  change the fields given
    DELETE /apps/:app/routes/:type/:uuid
    GET    /routes                        every route (what the routers load)

:func:`create_default` makes an app's default route ``APP.CLUSTER_DOMAIN`` -> ``APP-web`` in the
transaction that creates the app.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from flynn.controller import routeschema, schema
from flynn.controller.db import Database, Row, Tx
from flynn.controller.repo import apps as apps_repo
from flynn.controller.repo import routes as routes_repo


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def create_default(tx: Tx, app: Row, cluster_domain: str) -> dict[str, Any]:
    """The default route of a new app: ``APP.CLUSTER_DOMAIN`` to its ``web`` processes."""
    spec = routeschema.RouteSpec(type="http", domain=f"{app['name']}.{cluster_domain}")
    return await routes_repo.create(tx, app, spec, new_id=schema.new_id())


class RouteAPI:
    def __init__(self, db: Database) -> None:
        self.db = db

    def register(self, r: web.UrlDispatcher) -> None:
        r.add_post("/apps/{app}/routes", self.create)
        r.add_get("/apps/{app}/routes", self.list_for_app)
        r.add_get("/apps/{app}/routes/{type}/{id}", self.get)
        r.add_put("/apps/{app}/routes/{type}/{id}", self.update)
        r.add_delete("/apps/{app}/routes/{type}/{id}", self.delete)
        r.add_get("/routes", self.list_all)

    @staticmethod
    def _ref(request: web.Request) -> tuple[str, str]:
        return routeschema.route_ref(request.match_info["type"], request.match_info["id"])

    async def create(self, request: web.Request) -> web.Response:
        spec = routeschema.route_create(await schema.read_body(request))
        async with self.db.transaction() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            out = await routes_repo.create(tx, app, spec, new_id=schema.new_id())
        return _json(out, 201)

    async def list_for_app(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            return _json(await routes_repo.list_for_app(tx, app["id"]))

    async def get(self, request: web.Request) -> web.Response:
        kind, rid = self._ref(request)
        async with self.db.read() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            return _json(await routes_repo.get(tx, app, kind, rid))

    async def update(self, request: web.Request) -> web.Response:
        kind, rid = self._ref(request)
        upd = routeschema.route_update(await schema.read_body(request), kind)
        async with self.db.transaction() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            return _json(await routes_repo.update(tx, app, kind, rid, upd))

    async def delete(self, request: web.Request) -> web.Response:
        kind, rid = self._ref(request)
        async with self.db.transaction() as tx:
            app = await apps_repo.get(tx, request.match_info["app"])
            return _json(await routes_repo.delete(tx, app, kind, rid))

    async def list_all(self, request: web.Request) -> web.Response:
        async with self.db.read() as tx:
            return _json(await routes_repo.list_all(tx))
