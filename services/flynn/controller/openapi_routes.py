"""The OpenAPI entries of the route endpoints (merged into openapi.document)."""

from __future__ import annotations

from flynn.controller import openapi as o
from flynn.controller import routeschema as rs
from flynn.controller.schema import SERVICE_RE

J = o.J

DOMAIN: J = {
    "type": "string",
    "maxLength": rs.MAX_DOMAIN + 1,
    "pattern": r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$",
}
PATH: J = {"type": "string", "maxLength": rs.MAX_PATH, "pattern": r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$"}
SERVICE: J = {"type": "string", "maxLength": 63, "pattern": SERVICE_RE.pattern}
PORT: J = {"type": "integer", "minimum": rs.TCP_PORT_MIN, "maximum": rs.TCP_PORT_MAX}
ROUTE_ID: J = {"type": "string", "pattern": r"^(http|tcp)/[0-9a-f-]{36}$"}
CERT_IN: J = o.obj(
    {"cert": {"type": "string", "maxLength": 65536}, "key": {"type": "string", "maxLength": 65536}},
    ["cert", "key"],
)

SCHEMAS: J = {
    "Certificate": o.obj(
        {
            "id": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "cert": {"type": "string"},
            "key": {"type": "string", "description": "the private key (never in events)"},
        },
        ["id", "cert"],
    ),
    "HTTPRoute": o.obj(
        {
            "id": ROUTE_ID,
            "type": {"const": "http"},
            "app_id": o.UUID,
            "service": {"type": "string"},
            "leader": {"type": "boolean"},
            "domain": {"type": "string"},
            "path": {"type": "string"},
            "sticky": {"type": "boolean"},
            "https_redirect": {"type": "boolean"},
            "certificate": o.nullable(o.ref("Certificate")),
            "created_at": o.TIME,
            "updated_at": o.TIME,
        },
        [
            "id",
            "type",
            "app_id",
            "service",
            "leader",
            "domain",
            "path",
            "sticky",
            "https_redirect",
            "certificate",
            "created_at",
            "updated_at",
        ],
    ),
    "TCPRoute": o.obj(
        {
            "id": ROUTE_ID,
            "type": {"const": "tcp"},
            "app_id": o.UUID,
            "service": {"type": "string"},
            "leader": {"type": "boolean"},
            "port": PORT,
            "created_at": o.TIME,
            "updated_at": o.TIME,
        },
        ["id", "type", "app_id", "service", "leader", "port", "created_at", "updated_at"],
    ),
    "Route": {"oneOf": [o.ref("HTTPRoute"), o.ref("TCPRoute")]},
    "RouteCreate": {
        "oneOf": [
            o.obj(
                {
                    "type": {"const": "http"},
                    "domain": DOMAIN,
                    "path": o.nullable(PATH),
                    "service": o.nullable(SERVICE),
                    "sticky": {"type": "boolean"},
                    "leader": {"type": "boolean"},
                    "https_redirect": {"type": "boolean"},
                    "certificate": o.nullable(CERT_IN),
                },
                ["type", "domain"],
            ),
            o.obj(
                {
                    "type": {"const": "tcp"},
                    "port": o.nullable(PORT),
                    "service": o.nullable(SERVICE),
                    "leader": {"type": "boolean"},
                },
                ["type"],
            ),
        ]
    },
    "RouteUpdate": o.obj(
        {
            "type": {"enum": list(rs.ROUTE_TYPES)},
            "domain": DOMAIN,
            "path": PATH,
            "service": SERVICE,
            "sticky": {"type": "boolean"},
            "leader": {"type": "boolean"},
            "https_redirect": {"type": "boolean"},
            "certificate": o.nullable(CERT_IN),
            "port": PORT,
        }
    ),
}

ROUTE_TYPE = o._param("type", schema={"enum": list(rs.ROUTE_TYPES)}, description="http or tcp")
ROUTE_UUID = o._param("id", description="the route's UUID (its id is TYPE/UUID)")


def paths() -> J:
    write = (*o.WRITE, 409)
    return {
        "/apps/{app}/routes": {
            "parameters": [o.APP],
            "get": o._op("the app's routes, oldest first", {**o._ok(o._list("Route")), **o._errors(*o.READ)}),
            "post": o._op(
                "add a route (http: domain + optional path; tcp: a port of 3000-3500, free one by default)",
                {**o._ok(o.ref("Route"), 201), **o._errors(*write)},
                body="RouteCreate",
            ),
        },
        "/apps/{app}/routes/{type}/{id}": {
            "parameters": [o.APP, ROUTE_TYPE, ROUTE_UUID],
            "get": o._op("a route", {**o._ok(o.ref("Route")), **o._errors(*o.READ)}),
            "put": o._op(
                "change the fields given (certificate: null removes it)",
                {**o._ok(o.ref("Route")), **o._errors(*write)},
                body="RouteUpdate",
            ),
            "delete": o._op("remove a route", {**o._ok(o.ref("Route")), **o._errors(*o.READ)}),
        },
        "/routes": {
            "get": o._op(
                "every route, oldest first (what the routers load)",
                {**o._ok(o._list("Route")), **o._errors(401, 503)},
            )
        },
    }
