"""Routes in the controller (issue 6) against a real controller on a real PostgreSQL: ids, defaults,
the default route of new apps, validation, uniqueness, certificates, updates, events (without the
TLS key), deletion with the app. A refused request must change nothing."""

from __future__ import annotations

import datetime
import re
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from flynn.common.errors import APIError
from flynn.common.http import Client
from flynn.controller.client import Client as ControllerClient

if TYPE_CHECKING:
    from tests.unit.controller_fixtures import ControllerHandle, Controllers

pytest_plugins = ("tests.unit.controller_fixtures",)

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def err(call: Any, *args: Any, **kw: Any) -> APIError:
    with pytest.raises(APIError) as info:
        call(*args, **kw)
    return info.value


def make_cert(*names: str, key_type: str = "ec") -> tuple[str, str, str]:
    """A self-signed certificate for ``names``: (cert PEM, key PEM, sha256 of its DER)."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    key = (
        ec.generate_private_key(ec.SECP256R1()) if key_type == "ec" else rsa.generate_private_key(65537, 2048)
    )
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return (
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem,
        cert.fingerprint(hashes.SHA256()).hex(),
    )


def route_events(api: Client) -> list[dict[str, Any]]:
    return list(api.get("/events", params={"object_types": "route", "count": "1000"}))


def state(api: Client) -> tuple[list[Any], int]:
    """Every route and the number of route events: what a refused request must leave alone."""
    return api.get("/routes"), len(route_events(api))


def test_http_route_lifecycle(controller: ControllerHandle) -> None:
    api = controller.client()
    app = api.post("/apps", {"name": "web1"})
    assert api.get("/apps/web1/routes") == []  # no CLUSTER_DOMAIN in this controller: no default route
    route = api.post("/apps/web1/routes", {"type": "http", "domain": "WWW.Example.COM."})
    assert route["id"].startswith("http/")
    assert re.fullmatch(rf"http/{UUID_RE}", route["id"]), route["id"]
    assert route == {
        **route,
        "type": "http",
        "app_id": app["id"],
        "service": "web1-web",
        "domain": "www.example.com",
        "path": "/",
        "sticky": False,
        "leader": False,
        "https_redirect": False,
        "certificate": None,
    }
    assert set(route) == {
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
    }
    assert api.get(f"/apps/web1/routes/{route['id']}") == route
    assert api.get(f"/apps/{app['id']}/routes/{route['id']}") == route  # app by id or name
    assert api.get("/apps/web1/routes") == [route]
    assert api.get("/routes") == [route]
    ev = route_events(api)
    assert [(e["op"], e["object_id"], e["app_id"]) for e in ev] == [("create", route["id"], app["id"])]
    assert ev[0]["data"] == route

    other = api.post(
        "/apps/web1/routes",
        {
            "type": "http",
            "domain": "www.example.com",
            "path": "/api/",
            "service": "web1-admin-web",
            "sticky": True,
            "leader": True,
            "https_redirect": True,
        },
    )
    assert (other["path"], other["service"], other["sticky"], other["leader"], other["https_redirect"]) == (
        "/api",
        "web1-admin-web",
        True,
        True,
        True,
    )
    assert [r["id"] for r in api.get("/apps/web1/routes")] == [route["id"], other["id"]]

    changed = api.put(f"/apps/web1/routes/{route['id']}", {"sticky": True, "service": "web1-web"})
    assert changed["sticky"] is True
    assert changed["domain"] == "www.example.com"
    assert changed["created_at"] == route["created_at"]
    assert route_events(api)[0]["op"] == "update"
    n = len(route_events(api))
    assert api.put(f"/apps/web1/routes/{route['id']}", {"sticky": True}) == changed
    assert len(route_events(api)) == n  # nothing changed: no event

    gone = api.delete(f"/apps/web1/routes/{route['id']}")
    assert gone["id"] == route["id"]
    assert err(api.get, f"/apps/web1/routes/{route['id']}").status == 404
    assert err(api.delete, f"/apps/web1/routes/{route['id']}").status == 404
    last = route_events(api)[0]
    assert (last["op"], last["object_id"]) == ("delete", route["id"])
    assert [r["id"] for r in api.get("/routes")] == [other["id"]]


def test_domain_path_and_service_validation(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "v"})
    ok = api.post("/apps/v/routes", {"type": "http", "domain": "*.wild.example.com"})
    assert ok["domain"] == "*.wild.example.com"
    assert api.post("/apps/v/routes", {"type": "http", "domain": "localhost"})["domain"] == "localhost"
    before = state(api)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"domain": "www.example.com"}, "type"),
        ({"type": "udp", "domain": "x.com"}, "type"),
        ({"type": "http"}, "domain"),
        ({"type": "http", "domain": ""}, "domain"),
        ({"type": "http", "domain": "a..b.com"}, "domain"),
        ({"type": "http", "domain": "-a.com"}, "domain"),
        ({"type": "http", "domain": "a_b.com"}, "domain"),
        ({"type": "http", "domain": "a.com:8080"}, "domain"),
        ({"type": "http", "domain": "a.*.com"}, "domain"),
        ({"type": "http", "domain": "*"}, "domain"),
        ({"type": "http", "domain": "bücher.example"}, "domain"),
        ({"type": "http", "domain": "a" * 64 + ".com"}, "domain"),
        ({"type": "http", "domain": ("a" * 60 + ".") * 5 + "com"}, "domain"),
        ({"type": "http", "domain": 7}, "domain"),
        ({"type": "http", "domain": "p.com", "path": "api"}, "path"),
        ({"type": "http", "domain": "p.com", "path": "/a b"}, "path"),
        ({"type": "http", "domain": "p.com", "path": "/a?q"}, "path"),
        ({"type": "http", "domain": "p.com", "path": "/a#f"}, "path"),
        ({"type": "http", "domain": "p.com", "path": "/" + "x" * 1024}, "path"),
        ({"type": "http", "domain": "p.com", "service": "Bad_Service"}, "service"),
        ({"type": "http", "domain": "p.com", "service": ""}, "service"),
        ({"type": "http", "domain": "p.com", "sticky": "yes"}, "sticky"),
        ({"type": "http", "domain": "p.com", "leader": 1}, "leader"),
        ({"type": "http", "domain": "p.com", "https_redirect": None}, "https_redirect"),
        ({"type": "http", "domain": "p.com", "port": 3000}, "port"),
        ({"type": "http", "domain": "p.com", "bogus": 1}, "bogus"),
        ({"type": "tcp", "domain": "p.com"}, "domain"),
        ({"type": "tcp", "port": 2999}, "port"),
        ({"type": "tcp", "port": 3501}, "port"),
        ({"type": "tcp", "port": 80}, "port"),
        ({"type": "tcp", "port": "3000"}, "port"),
        ({"type": "tcp", "sticky": True}, "sticky"),
    ]
    for body, field in bad:
        e = err(api.post, "/apps/v/routes", body)
        assert e.status == 400, (body, e)
        assert field in e.message, (body, e.message)
    raw: Any
    for raw in ([], "x", None, 3):
        assert err(api.post, "/apps/v/routes", raw).status == 400
    assert err(api.post, "/apps/nosuchapp/routes", {"type": "http", "domain": "n.com"}).status == 404
    assert state(api) == before


def test_uniqueness_is_409_and_changes_nothing(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "u1"})
    api.post("/apps", {"name": "u2"})
    first = api.post("/apps/u1/routes", {"type": "http", "domain": "shop.example.com"})
    api.post("/apps/u1/routes", {"type": "http", "domain": "shop.example.com", "path": "/api"})
    before = state(api)
    for body in (
        {"type": "http", "domain": "shop.example.com"},
        {"type": "http", "domain": "SHOP.example.com.", "path": "/"},
        {"type": "http", "domain": "shop.example.com", "path": "/api/"},
    ):
        e = err(api.post, "/apps/u2/routes", body)
        assert e.status == 409, (body, e)
        assert "already routed" in e.message
        assert "app u1" in e.message
        assert "shop.example.com" in e.message
    assert state(api) == before
    # the same domain elsewhere, another path: fine
    api.post("/apps/u2/routes", {"type": "http", "domain": "shop.example.com", "path": "/blog"})
    # moving a route onto a taken place is refused too
    second = api.post("/apps/u2/routes", {"type": "http", "domain": "other.example.com"})
    before = state(api)
    e = err(api.put, f"/apps/u2/routes/{second['id']}", {"domain": "shop.example.com"})
    assert e.status == 409
    assert state(api) == before
    # a route may be "moved" onto its own place
    assert api.put(f"/apps/u1/routes/{first['id']}", {"domain": "shop.example.com"})["id"] == first["id"]


def test_tcp_routes_ports(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "db"})
    a = api.post("/apps/db/routes", {"type": "tcp"})
    b = api.post("/apps/db/routes", {"type": "tcp", "service": "db-pg", "leader": True})
    assert (a["port"], b["port"]) == (3000, 3001)
    assert set(a) == {"id", "type", "app_id", "service", "leader", "port", "created_at", "updated_at"}
    assert a["id"].startswith("tcp/")
    assert a["service"] == "db-web"
    assert b["leader"] is True
    assert b["service"] == "db-pg"
    c = api.post("/apps/db/routes", {"type": "tcp", "port": 3500})
    assert c["port"] == 3500
    before = state(api)
    e = err(api.post, "/apps/db/routes", {"type": "tcp", "port": 3000})
    assert e.status == 409
    assert "3000" in e.message
    e = err(api.put, f"/apps/db/routes/{c['id']}", {"port": 3001})
    assert e.status == 409
    assert err(api.put, f"/apps/db/routes/{c['id']}", {"domain": "x.com"}).status == 400
    assert err(api.put, f"/apps/db/routes/{c['id']}", {"type": "http"}).status == 400
    assert err(api.put, f"/apps/db/routes/{c['id']}", {"port": None}).status == 400
    assert state(api) == before
    api.delete(f"/apps/db/routes/{a['id']}")
    assert api.post("/apps/db/routes", {"type": "tcp"})["port"] == 3000  # the lowest free port
    moved = api.put(f"/apps/db/routes/{c['id']}", {"port": 3499})
    assert moved["port"] == 3499


def test_tcp_ports_run_out_with_409(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "many"})
    app_id = api.get("/apps/many")["id"]
    # fill 3000-3499 directly, then take the last port through the API
    with_db = controller.controller.db

    async def fill() -> None:
        async with with_db.transaction() as tx:
            for port in range(3000, 3500):
                await tx.run(
                    "INSERT INTO routes (id, type, app_id, service, port)"
                    " VALUES (gen_random_uuid(), 'tcp', %s, 's', %s)",
                    (app_id, port),
                )

    controller.run(fill())
    assert api.post("/apps/many/routes", {"type": "tcp"})["port"] == 3500
    before = state(api)
    e = err(api.post, "/apps/many/routes", {"type": "tcp"})
    assert e.status == 409
    assert "3000-3500" in e.message
    assert state(api) == before


def test_certificates(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "tls"})
    cert, key, fp = make_cert("secure.example.com")
    route = api.post(
        "/apps/tls/routes",
        {"type": "http", "domain": "secure.example.com", "certificate": {"cert": cert, "key": key}},
    )
    assert route["certificate"] == {"id": fp, "cert": cert, "key": key}
    assert api.get(f"/apps/tls/routes/{route['id']}")["certificate"]["key"] == key
    assert api.get("/routes")[0]["certificate"]["key"] == key  # the routers need it
    # the key is never in an event
    ev = route_events(api)[0]
    assert ev["data"]["certificate"] == {"id": fp, "cert": cert}
    assert "PRIVATE KEY" not in str(api.get("/events", params={"count": "1000"}))

    other_cert, other_key, _ = make_cert("other.example.com", key_type="rsa")
    encrypted = (
        serialization.load_pem_private_key(key.encode(), None)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        .decode()
    )
    before = state(api)
    for certificate, field, fragment in [
        ({"cert": cert, "key": other_key}, "certificate.key", "does not belong"),
        ({"cert": other_cert, "key": key}, "certificate.key", "does not belong"),
        ({"cert": "not a pem", "key": key}, "certificate.cert", "PEM"),
        (
            {"cert": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "key": key},
            "certificate.cert",
            "",
        ),
        (
            {"cert": cert, "key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
            "certificate.key",
            "",
        ),
        ({"cert": cert, "key": encrypted}, "certificate.key", "encrypted"),
        ({"cert": cert}, "certificate.key", "required"),
        ({"key": key}, "certificate.cert", "required"),
        ({"cert": cert, "key": key, "chain": "x"}, "certificate.chain", "unknown"),
        ("PEM", "certificate", ""),
    ]:
        for send in (
            lambda c: api.post(
                "/apps/tls/routes", {"type": "http", "domain": "n.example.com", "certificate": c}
            ),
            lambda c: api.put(f"/apps/tls/routes/{route['id']}", {"certificate": c}),
        ):
            e = err(send, certificate)
            assert e.status == 400, (certificate, e)
            assert field in e.message, e.message
            assert fragment in e.message, e.message
            assert "PRIVATE KEY" not in e.message
            assert key not in e.message
    assert state(api) == before

    # a chain: leaf + another certificate; RSA keys work too
    chained = api.put(
        f"/apps/tls/routes/{route['id']}", {"certificate": {"cert": other_cert + cert, "key": other_key}}
    )
    assert chained["certificate"]["cert"] == other_cert + cert
    removed = api.put(f"/apps/tls/routes/{route['id']}", {"certificate": None})
    assert removed["certificate"] is None
    assert route_events(api)[0]["data"]["certificate"] is None


def test_route_ids_in_paths(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "ida"})
    api.post("/apps", {"name": "idb"})
    route = api.post("/apps/ida/routes", {"type": "http", "domain": "ida.example.com"})
    rid = route["id"].split("/")[1]
    for path in (
        f"/apps/ida/routes/tcp/{rid}",  # the right uuid under the wrong type
        f"/apps/idb/routes/http/{rid}",  # another app's route
        "/apps/ida/routes/http/not-a-uuid",
        f"/apps/ida/routes/ftp/{rid}",
        f"/apps/nosuchapp/routes/http/{rid}",
    ):
        assert err(api.get, path).status == 404, path
        assert err(api.delete, path).status == 404, path
        assert err(api.put, path, {"service": "ida-web"}).status == 404, path
    # the typed client splits the id into its two segments
    typed = ControllerClient(controller.url, controller.key)
    assert typed.get_route("ida", route["id"]) == route
    assert typed.list_routes("ida") == [route]
    assert err(typed.get_route, "ida", f"http%2F{rid}").status == 404


def test_deleting_an_app_deletes_its_routes_with_events(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "gone"})
    api.post("/apps", {"name": "stays"})
    r1 = api.post("/apps/gone/routes", {"type": "http", "domain": "gone.example.com"})
    r2 = api.post("/apps/gone/routes", {"type": "tcp"})
    kept = api.post("/apps/stays/routes", {"type": "http", "domain": "stays.example.com"})
    api.delete("/apps/gone")
    assert api.get("/routes") == [kept]
    deletes = [e for e in route_events(api) if e["op"] == "delete"]
    assert sorted(e["object_id"] for e in deletes) == sorted([r1["id"], r2["id"]])
    # the place is free again
    api.post("/apps/stays/routes", {"type": "http", "domain": "gone.example.com"})
    # a system app keeps its routes (it cannot be deleted)
    api.post("/apps", {"name": "sys", "system": True})
    api.post("/apps/sys/routes", {"type": "http", "domain": "sys.example.com"})
    assert err(api.delete, "/apps/sys").status == 400
    assert len(api.get("/apps/sys/routes")) == 1


def test_default_route_with_a_cluster_domain(controllers: Controllers) -> None:
    handle = controllers.start(cluster_domain="dev.example.test")
    api = handle.client()
    app = api.post("/apps", {"name": "shop"})
    routes = api.get("/apps/shop/routes")
    assert [(r["type"], r["domain"], r["path"], r["service"]) for r in routes] == [
        ("http", "shop.dev.example.test", "/", "shop-web")
    ]
    ev = api.get("/events", params={"app_id": app["id"], "count": "100"})
    assert [e["object_type"] for e in reversed(ev)] == ["app", "route"]
    # a generated name gets its route too
    generated = api.post("/apps", {})
    assert api.get(f"/apps/{generated['id']}/routes")[0]["domain"] == f"{generated['name']}.dev.example.test"
    # system apps get none (bootstrap adds controller.DOMAIN and git.DOMAIN itself)
    api.post("/apps", {"name": "controller", "system": True})
    assert api.get("/apps/controller/routes") == []
    api.post(
        "/apps/controller/routes", {"type": "http", "domain": "git.dev.example.test", "service": "gitreceive"}
    )
    # an app whose default domain is taken is refused, and not created
    n_apps = len(api.get("/apps"))
    e = err(api.post, "/apps", {"name": "git"})
    assert e.status == 409
    assert "git.dev.example.test" in e.message
    assert len(api.get("/apps")) == n_apps
    assert err(api.get, "/apps/git").status == 404


def test_config_cluster_domain() -> None:
    from flynn.common.errors import ConfigError
    from flynn.controller.config import ControllerConfig

    base = {"DATABASE_URL": "postgresql://u:p@h/db", "AUTH_KEY": "k"}
    assert ControllerConfig.from_env(base).cluster_domain is None
    assert ControllerConfig.from_env({**base, "CLUSTER_DOMAIN": "Dev.Example.COM."}).cluster_domain == (
        "dev.example.com"
    )
    for bad in ("a..b", "a b.com", "x_y.com", "-a.com"):
        with pytest.raises(ConfigError):
            ControllerConfig.from_env({**base, "CLUSTER_DOMAIN": bad})
