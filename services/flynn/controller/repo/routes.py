"""Routes: create, read, update, delete; every write emits a ``route`` event in its transaction.

Uniqueness (an HTTP domain+path, a TCP port) is checked first for a message that names the route
in the way, and enforced by the partial unique indexes of migrations/0002_routes.sql (a race
between two controllers ends as the same 409). A TCP route without a port gets the lowest free
port of 3000-3500, chosen under a transaction-level advisory lock.

Event data is the route as the API answers it **without** ``certificate.key``: the private key
stays in the routes table and reaches only callers of the route endpoints (the routers).
"""

from __future__ import annotations

from typing import Any, LiteralString

import psycopg

from flynn.controller import render
from flynn.controller.db import Row, Tx
from flynn.controller.errors import Conflict, NotFound
from flynn.controller.routeschema import TCP_PORT_MAX, TCP_PORT_MIN, RouteSpec, RouteUpdate

PORT_LOCK = 7301000000000002  # pg_advisory_xact_lock key: choosing a free TCP port


def route_id(row: Row) -> str:
    return f"{row['type']}/{row['id']}"


def to_json(row: Row, *, with_key: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": route_id(row),
        "type": row["type"],
        "app_id": str(row["app_id"]),
        "service": row["service"],
        "leader": row["leader"],
    }
    if row["type"] == "http":
        cert = None
        if row["tls_cert"] is not None:
            cert = {"id": row["tls_cert_id"], "cert": row["tls_cert"]}
            if with_key:
                cert["key"] = row["tls_key"]
        out.update(
            domain=row["domain"],
            path=row["path"],
            sticky=row["sticky"],
            https_redirect=row["https_redirect"],
            certificate=cert,
        )
    else:
        out["port"] = row["port"]
    out["created_at"] = render.ts(row["created_at"])
    out["updated_at"] = render.ts(row["updated_at"])
    return out


def _emit(tx: Tx, row: Row, op: str) -> None:
    tx.emit(str(row["app_id"]), "route", route_id(row), op, to_json(row, with_key=False))


async def _holder(tx: Tx, where: LiteralString, params: tuple[Any, ...], own_id: str | None) -> Row | None:
    """The route (and its app's name) already at a place, other than ``own_id``."""
    query = "SELECT r.id, r.type, a.name AS app_name FROM routes r JOIN apps a ON a.id = r.app_id WHERE "
    rows = await tx.all(query + where, params)
    for row in rows:
        if own_id is None or str(row["id"]) != own_id:
            return row
    return None


async def _check_http_place(tx: Tx, domain: str, path: str, own_id: str | None = None) -> None:
    row = await _holder(tx, "r.type = 'http' AND r.domain = %s AND r.path = %s", (domain, path), own_id)
    if row is not None:
        where = domain if path == "/" else f"{domain}{path}"
        raise Conflict(
            f"{where} is already routed (route {route_id(row)} of app {row['app_name']})", field="domain"
        )


async def _check_port(tx: Tx, port: int, own_id: str | None = None) -> None:
    row = await _holder(tx, "r.type = 'tcp' AND r.port = %s", (port,), own_id)
    if row is not None:
        raise Conflict(
            f"TCP port {port} is already routed (route {route_id(row)} of app {row['app_name']})",
            field="port",
        )


async def _free_port(tx: Tx) -> int:
    await tx.run("SELECT pg_advisory_xact_lock(%s)", (PORT_LOCK,))
    used = {int(r["port"]) for r in await tx.all("SELECT port FROM routes WHERE type = 'tcp'")}
    for port in range(TCP_PORT_MIN, TCP_PORT_MAX + 1):
        if port not in used:
            return port
    raise Conflict(f"every TCP route port ({TCP_PORT_MIN}-{TCP_PORT_MAX}) is taken", field="port")


async def create(tx: Tx, app: Row, spec: RouteSpec, *, new_id: str) -> dict[str, Any]:
    service = spec.service or f"{app['name']}-web"
    cert = spec.certificate
    if spec.type == "http":
        if spec.domain is None:
            raise ValueError("an http route needs a domain")
        await _check_http_place(tx, spec.domain, spec.path)
        port = None
    else:
        port = spec.port if spec.port is not None else await _free_port(tx)
        await _check_port(tx, port)
    row = await tx.one(
        "INSERT INTO routes (id, type, app_id, service, leader, domain, path, sticky, https_redirect,"
        " tls_cert, tls_key, tls_cert_id, port) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING RETURNING *",
        (
            new_id,
            spec.type,
            app["id"],
            service,
            spec.leader,
            spec.domain if spec.type == "http" else None,
            spec.path if spec.type == "http" else None,
            spec.sticky,
            spec.https_redirect,
            cert.cert if cert else None,
            cert.key if cert else None,
            cert.id if cert else None,
            port,
        ),
    )
    if row is None:  # a concurrent insert took the place between the check and here
        raise Conflict("the domain and path, or the port, was just routed by another request")
    _emit(tx, row, "create")
    return to_json(row)


async def list_for_app(tx: Tx, app_id: Any) -> list[dict[str, Any]]:
    rows = await tx.all("SELECT * FROM routes WHERE app_id = %s ORDER BY created_at, id", (app_id,))
    return [to_json(r) for r in rows]


async def list_all(tx: Tx) -> list[dict[str, Any]]:
    rows = await tx.all("SELECT * FROM routes ORDER BY created_at, id")
    return [to_json(r) for r in rows]


async def get_row(tx: Tx, app: Row, kind: str, rid: str, *, lock: bool = False) -> Row:
    if lock:
        row = await tx.one(
            "SELECT * FROM routes WHERE id = %s AND type = %s AND app_id = %s FOR UPDATE",
            (rid, kind, app["id"]),
        )
    else:
        row = await tx.one(
            "SELECT * FROM routes WHERE id = %s AND type = %s AND app_id = %s", (rid, kind, app["id"])
        )
    if row is None:
        raise NotFound(f"route {kind}/{rid} of app {app['name']} not found")
    return row


async def get(tx: Tx, app: Row, kind: str, rid: str) -> dict[str, Any]:
    return to_json(await get_row(tx, app, kind, rid))


async def update(tx: Tx, app: Row, kind: str, rid: str, upd: RouteUpdate) -> dict[str, Any]:
    old = await get_row(tx, app, kind, rid, lock=True)
    new = dict(old)
    for name in ("service", "leader", "domain", "path", "sticky", "https_redirect", "port"):
        if name in upd.present:
            new[name] = getattr(upd, name)
    if "certificate" in upd.present:
        cert = upd.certificate
        new["tls_cert"] = cert.cert if cert else None
        new["tls_key"] = cert.key if cert else None
        new["tls_cert_id"] = cert.id if cert else None
    if kind == "http" and (new["domain"], new["path"]) != (old["domain"], old["path"]):
        await _check_http_place(tx, new["domain"], new["path"], own_id=rid)
    if kind == "tcp" and new["port"] != old["port"]:
        await _check_port(tx, new["port"], own_id=rid)
    if new == old:
        return to_json(old)  # nothing changed: no event
    try:
        row = await _update_row(tx, rid, new)
    except psycopg.errors.UniqueViolation:  # a concurrent write took the place meanwhile
        raise Conflict("the domain and path, or the port, was just routed by another request") from None
    if row is None:
        raise NotFound(f"route {kind}/{rid} of app {app['name']} not found")
    _emit(tx, row, "update")
    return to_json(row)


async def _update_row(tx: Tx, rid: str, new: Row) -> Row | None:
    return await tx.one(
        "UPDATE routes SET service = %s, leader = %s, domain = %s, path = %s, sticky = %s,"
        " https_redirect = %s, tls_cert = %s, tls_key = %s, tls_cert_id = %s, port = %s,"
        " updated_at = now() WHERE id = %s RETURNING *",
        (
            new["service"],
            new["leader"],
            new["domain"],
            new["path"],
            new["sticky"],
            new["https_redirect"],
            new["tls_cert"],
            new["tls_key"],
            new["tls_cert_id"],
            new["port"],
            rid,
        ),
    )


async def delete(tx: Tx, app: Row, kind: str, rid: str) -> dict[str, Any]:
    row = await get_row(tx, app, kind, rid, lock=True)
    await tx.run("DELETE FROM routes WHERE id = %s", (rid,))
    _emit(tx, row, "delete")
    return to_json(row, with_key=False)


async def delete_for_app(tx: Tx, app_id: Any) -> int:
    """Delete every route of an app (before the app goes), each with its ``delete`` event."""
    rows = await tx.all("DELETE FROM routes WHERE app_id = %s RETURNING *", (app_id,))
    for row in sorted(rows, key=lambda r: (r["created_at"], str(r["id"]))):
        _emit(tx, row, "delete")
    return len(rows)
