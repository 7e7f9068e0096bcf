"""``flynn route``: the app's routes (list, add http/tcp, update, remove), as Flynn's CLI has them.

    flynn route                                   ROUTE  SERVICE  ID  STICKY  LEADER  PATH
    flynn route add http [-s SERVICE] [--sticky] [--leader] [--https-redirect]
                         [-c CERT -k KEY] [-p PATH] DOMAIN
    flynn route add tcp [-s SERVICE] [-p PORT] [--leader]
    flynn route update ID [-s SERVICE] [--sticky|--no-sticky] [--leader|--no-leader]
                          [--https-redirect|--no-https-redirect] [-c CERT -k KEY | --no-tls]
                          [-p PATH (http) | PORT (tcp)] [--domain DOMAIN]
    flynn route remove ID

``CERT``/``KEY`` are PEM files; ``-`` reads one PEM bundle from stdin and takes its
``CERTIFICATE`` blocks (chain, leaf first) and its private key block. Arguments are checked
before any request (a route id is ``http/UUID`` or ``tcp/UUID``); the controller checks the rest
and refuses a bad route whole. The key is never printed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from flynn.cli.context import app_and_client, app_options, fail
from flynn.cli.output import print_json, table

if TYPE_CHECKING:
    from flynn.controller.client import Route

_ROUTE_ID = re.compile(r"^(http|tcp)/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?\r?\n-----END \1-----", re.DOTALL)


def route_kind(route_id: str) -> str:
    if not _ROUTE_ID.fullmatch(route_id):
        fail(f"{route_id!r} is not a route id (http/UUID or tcp/UUID; see 'flynn route')")
    return route_id.split("/", 1)[0]


def _blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(text)]


def read_pem(path: str, what: str, stdin: str | None) -> str:
    """The PEM text of ``path`` (``-``: the matching blocks of the bundle read from stdin)."""
    if path == "-":
        blocks = _blocks(stdin or "")
        if what == "certificate":
            wanted = [b for kind, b in blocks if kind == "CERTIFICATE"]
        else:
            wanted = [b for kind, b in blocks if kind.endswith("PRIVATE KEY")]
        if not wanted:
            fail(f"no PEM {what} found on stdin")
        return "\n".join(wanted) + "\n"
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the TLS {what} {path}: {getattr(exc, 'strerror', None) or exc}")


def certificate(cert: str | None, key: str | None) -> dict[str, str] | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        fail("--tls-cert and --tls-key go together")
    stdin = sys.stdin.read() if "-" in (cert, key) else None
    return {"cert": read_pem(cert, "certificate", stdin), "key": read_pem(key, "key", stdin)}


def _route_col(route: Route) -> str:
    if route["type"] == "tcp":
        return f"tcp:{route.get('port')}"
    scheme = "https" if route.get("certificate") else "http"
    return f"{scheme}:{route.get('domain')}"


def _flag(value: object) -> str:
    return "true" if value else "false"


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON (certificate keys left out)")
@app_options()
@click.pass_context
def route(ctx: click.Context, as_json: bool) -> None:
    """Show the app's routes (subcommands add, update and remove them)."""
    if ctx.invoked_subcommand is not None:
        return
    name, client = app_and_client()
    routes = client.list_routes(name)
    if as_json:
        print_json([_without_key(r) for r in routes])
        return
    rows = [
        [
            _route_col(r),
            r["service"],
            r["id"],
            _flag(r.get("sticky")),
            _flag(r.get("leader")),
            r.get("path", "") if r["type"] == "http" else "",
        ]
        for r in routes
    ]
    table(["ROUTE", "SERVICE", "ID", "STICKY", "LEADER", "PATH"], rows)


def _without_key(r: Route) -> dict[str, Any]:
    out: dict[str, Any] = dict(r)
    cert = out.get("certificate")
    if isinstance(cert, dict):
        out["certificate"] = {k: v for k, v in cert.items() if k != "key"}
    return out


@route.group("add")
def add() -> None:
    """Add a route to the app."""


service_option = click.option("-s", "--service", metavar="SERVICE", help="the service (default: APP-web)")
cert_option = click.option(
    "-c", "--tls-cert", "cert", metavar="CERT", help="PEM certificate chain ('-': stdin)"
)
key_option = click.option("-k", "--tls-key", "key", metavar="KEY", help="PEM private key ('-': stdin)")


@add.command("http")
@service_option
@click.option("--sticky", is_flag=True, help="pin clients to a backend with a cookie")
@click.option("--leader", is_flag=True, help="only the service's discoverd leader gets requests")
@click.option("--https-redirect", is_flag=True, help="answer plain HTTP with a redirect to HTTPS")
@cert_option
@key_option
@click.option("-p", "--path", metavar="PATH", help="a path prefix (default /)")
@app_options(short_cluster=False)
@click.argument("domain")
def add_http(
    domain: str,
    service: str | None,
    sticky: bool,
    leader: bool,
    https_redirect: bool,
    cert: str | None,
    key: str | None,
    path: str | None,
) -> None:
    """Route DOMAIN (exact, or *.suffix) to the app."""
    body: dict[str, Any] = {"type": "http", "domain": domain, "sticky": sticky, "leader": leader}
    body["https_redirect"] = https_redirect
    if service is not None:
        body["service"] = service
    if path is not None:
        body["path"] = path
    tls = certificate(cert, key)
    if tls is not None:
        body["certificate"] = tls
    name, client = app_and_client()
    created = client.create_route(name, body)
    click.echo(created["id"])


@add.command("tcp")
@service_option
@click.option(
    "-p", "--port", type=click.IntRange(3000, 3500), metavar="PORT", help="3000-3500 (default: a free one)"
)
@click.option("--leader", is_flag=True, help="only the service's discoverd leader gets connections")
@app_options()
def add_tcp(service: str | None, port: int | None, leader: bool) -> None:
    """Route a TCP port (3000-3500) of every router to the app."""
    body: dict[str, Any] = {"type": "tcp", "leader": leader}
    if service is not None:
        body["service"] = service
    if port is not None:
        body["port"] = port
    name, client = app_and_client()
    created = client.create_route(name, body)
    click.echo(f"{created['id']} listening on port {created.get('port')}")


@route.command("update")
@service_option
@click.option("--sticky/--no-sticky", default=None, help="cookie stickiness (http)")
@click.option("--leader/--no-leader", default=None, help="leader only")
@click.option("--https-redirect/--no-https-redirect", default=None, help="redirect plain HTTP (http)")
@cert_option
@key_option
@click.option("--no-tls", is_flag=True, help="remove the route's certificate (http)")
@click.option("-p", "--path", "place", metavar="PATH|PORT", help="path prefix (http) or port (tcp)")
@click.option("--domain", metavar="DOMAIN", help="move the route to another domain (http)")
@app_options(short_cluster=False)
@click.argument("route_id", metavar="ID")
def update(
    route_id: str,
    service: str | None,
    sticky: bool | None,
    leader: bool | None,
    https_redirect: bool | None,
    cert: str | None,
    key: str | None,
    no_tls: bool,
    place: str | None,
    domain: str | None,
) -> None:
    """Change a route: only what is given changes."""
    kind = route_kind(route_id)
    body: dict[str, Any] = {}
    if service is not None:
        body["service"] = service
    if leader is not None:
        body["leader"] = leader
    if kind == "tcp":
        http_only = {
            "--sticky": sticky,
            "--https-redirect": https_redirect,
            "--tls-cert": cert,
            "--tls-key": key,
            "--domain": domain,
            "--no-tls": no_tls or None,
        }
        given = [name for name, value in http_only.items() if value is not None]
        if given:
            fail(f"{given[0]} is for http routes; {route_id} is a tcp route")
        if place is not None:
            body["port"] = _port(place)
    else:
        body.update(_http_changes(sticky, https_redirect, cert, key, no_tls, place, domain))
    if not body:
        fail("nothing to change (see 'flynn route update --help')")
    name, client = app_and_client()
    client.update_route(name, route_id, body)
    click.echo(f"Route {route_id} updated.")


def _port(place: str) -> int:
    if not place.isdigit() or not 3000 <= int(place) <= 3500:
        fail(f"-p {place!r}: a TCP route port is 3000-3500")
    return int(place)


def _http_changes(
    sticky: bool | None,
    https_redirect: bool | None,
    cert: str | None,
    key: str | None,
    no_tls: bool,
    path: str | None,
    domain: str | None,
) -> dict[str, Any]:
    if no_tls and (cert is not None or key is not None):
        fail("--no-tls and --tls-cert/--tls-key contradict each other")
    changes: dict[str, Any] = {}
    for name, value in (("sticky", sticky), ("https_redirect", https_redirect), ("domain", domain)):
        if value is not None:
            changes[name] = value
    if path is not None:
        changes["path"] = path
    tls = certificate(cert, key)
    if tls is not None:
        changes["certificate"] = tls
    elif no_tls:
        changes["certificate"] = None
    return changes


@route.command("remove")
@app_options()
@click.argument("route_id", metavar="ID")
def remove(route_id: str) -> None:
    """Remove a route."""
    route_kind(route_id)
    name, client = app_and_client()
    client.delete_route(name, route_id)
    click.echo(f"Route {route_id} removed.")


def register(group: click.Group) -> None:
    group.add_command(route)
