"""Validation of route bodies and route ids (docs/controller.md, "Route").

Like schema.py: parsed JSON in, clean typed values out, or :class:`~flynn.controller.errors.Invalid`
naming the field. Domains are normalized (lower case, no trailing dot) and path prefixes too (no
trailing slash), so what is stored is what the routers match on, and uniqueness of domain+path
means what it says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flynn.controller import certs
from flynn.controller.errors import NotFound
from flynn.controller.schema import SERVICE_RE, UUID_RE, boolean, fail, integer, obj, string

ROUTE_TYPES = ("http", "tcp")
TCP_PORT_MIN = 3000
TCP_PORT_MAX = 3500
MAX_DOMAIN = 253
MAX_PATH = 1024
_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# a path prefix: what may appear unescaped in a request path (RFC 3986 pchar and "/")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")

HTTP_FIELDS = frozenset(
    {"type", "domain", "path", "service", "sticky", "leader", "https_redirect", "certificate"}
)
TCP_FIELDS = frozenset({"type", "port", "service", "leader"})


@dataclass
class Certificate:
    cert: str
    key: str
    id: str


@dataclass
class RouteSpec:
    """A route to create (``service`` None: the app's ``APP-web``; ``port`` None: a free one)."""

    type: str
    service: str | None = None
    leader: bool = False
    domain: str | None = None
    path: str = "/"
    sticky: bool = False
    https_redirect: bool = False
    certificate: Certificate | None = None
    port: int | None = None


@dataclass
class RouteUpdate:
    """Fields to change; only those named in ``present`` are changed (``certificate`` None in
    ``present`` removes the certificate)."""

    present: set[str] = field(default_factory=set)
    service: str | None = None
    leader: bool = False
    domain: str | None = None
    path: str = "/"
    sticky: bool = False
    https_redirect: bool = False
    certificate: Certificate | None = None
    port: int | None = None


def domain(value: Any, where: str = "domain") -> str:
    """An exact domain (``www.example.com``) or a wildcard (``*.example.com``), normalized."""
    text = string(value, where, max_len=MAX_DOMAIN + 1)
    if not text.isascii():
        fail(where, f"{text[:80]!r} is not ASCII: give the IDNA form (xn--...)")
    name = text.lower()
    name = name.removesuffix(".")
    labels = name.split(".")
    body = labels[1:] if labels[0] == "*" else labels
    if not body or not all(_LABEL_RE.fullmatch(label) for label in body):
        fail(where, f"{text[:80]!r} is not a domain name (labels of a-z, 0-9 and -, or *.suffix)")
    if len(name) > MAX_DOMAIN:
        fail(where, f"longer than {MAX_DOMAIN} characters")
    return name


def path_prefix(value: Any, where: str = "path") -> str:
    """A path prefix: ``/`` (everything) or ``/segment...``, without a trailing slash."""
    text = string(value, where, max_len=MAX_PATH)
    if not _PATH_RE.fullmatch(text):
        fail(where, f"{text[:80]!r} is not a path prefix (starts with /; no spaces, ? or #)")
    return text.rstrip("/") or "/"


def service(value: Any, where: str = "service") -> str:
    return string(value, where, max_len=63, pattern=SERVICE_RE, what="a service name ([a-z0-9][a-z0-9-]*)")


def tcp_port(value: Any, where: str = "port") -> int:
    return integer(value, where, TCP_PORT_MIN, TCP_PORT_MAX)


def certificate(value: Any, where: str = "certificate") -> Certificate:
    body = obj(value, where, {"cert", "key"})
    for name in ("cert", "key"):
        if name not in body:
            fail(f"{where}.{name}", "is required")
    cert = string(body["cert"], f"{where}.cert", max_len=certs.MAX_PEM)
    key = string(body["key"], f"{where}.key", max_len=certs.MAX_PEM)
    info = certs.check_pair(cert, key, where)
    return Certificate(cert.strip() + "\n", key.strip() + "\n", info.id)


def _route_type(body: dict[str, Any]) -> str:
    if "type" not in body:
        fail("type", "is required (http or tcp)")
    kind = string(body["type"], "type", max_len=8)
    if kind not in ROUTE_TYPES:
        fail("type", "must be http or tcp")
    return kind


def route_create(value: Any) -> RouteSpec:
    body = obj(value, "")
    kind = _route_type(body)
    obj(body, "", HTTP_FIELDS if kind == "http" else TCP_FIELDS)
    spec = RouteSpec(type=kind)
    if body.get("service") is not None:
        spec.service = service(body["service"])
    if "leader" in body:
        spec.leader = boolean(body["leader"], "leader")
    if kind == "tcp":
        if body.get("port") is not None:
            spec.port = tcp_port(body["port"])
        return spec
    if "domain" not in body:
        fail("domain", "is required")
    spec.domain = domain(body["domain"])
    if body.get("path") is not None:
        spec.path = path_prefix(body["path"])
    if "sticky" in body:
        spec.sticky = boolean(body["sticky"], "sticky")
    if "https_redirect" in body:
        spec.https_redirect = boolean(body["https_redirect"], "https_redirect")
    if body.get("certificate") is not None:
        spec.certificate = certificate(body["certificate"])
    return spec


def route_update(value: Any, kind: str) -> RouteUpdate:
    """A PUT body for a route of type ``kind``: the fields given replace the stored ones."""
    body = obj(value, "", HTTP_FIELDS if kind == "http" else TCP_FIELDS)
    if "type" in body and body["type"] != kind:
        fail("type", f"a {kind} route cannot become another type")
    upd = RouteUpdate(present=set(body) - {"type"})
    for name in upd.present:
        raw = body[name]
        if raw is None and name != "certificate":
            fail(name, "must not be null")
    if "service" in body:
        upd.service = service(body["service"])
    if "leader" in body:
        upd.leader = boolean(body["leader"], "leader")
    if "port" in body:
        upd.port = tcp_port(body["port"])
    if "domain" in body:
        upd.domain = domain(body["domain"])
    if "path" in body:
        upd.path = path_prefix(body["path"])
    if "sticky" in body:
        upd.sticky = boolean(body["sticky"], "sticky")
    if "https_redirect" in body:
        upd.https_redirect = boolean(body["https_redirect"], "https_redirect")
    if body.get("certificate") is not None:
        upd.certificate = certificate(body["certificate"])
    return upd


def route_ref(kind: str, rid: str) -> tuple[str, str]:
    """``(type, uuid)`` of the path ``/apps/:app/routes/:type/:uuid``; 404 for anything else."""
    if kind not in ROUTE_TYPES or not UUID_RE.fullmatch(rid):
        raise NotFound(f"route {kind[:8]}/{rid[:40]} not found")
    return kind, rid
