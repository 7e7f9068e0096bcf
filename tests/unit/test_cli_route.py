"""``flynn route`` (the real command, a subprocess) against a real controller on a real PostgreSQL:
the listing as Flynn prints it, add http/tcp, update, remove, and refusals that change nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.unit import controller_fixtures
from tests.unit.controller_fixtures import KEY, ControllerHandle
from tests.unit.test_cli_controller import Flynn
from tests.unit.test_controller_routes import make_cert

pg_server = controller_fixtures.pg_server
controllers = controller_fixtures.controllers
controller = controller_fixtures.controller

ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
def flynn(tmp_path: Path, controller: ControllerHandle) -> Flynn:
    cli = Flynn(tmp_path)
    cli.ok("cluster", "add", "test", controller.url, KEY)
    controller.client().post("/apps", {"name": "web"})
    return cli


def rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def test_list_add_update_remove(flynn: Flynn, controller: ControllerHandle, tmp_path: Path) -> None:
    assert rows(flynn.ok("-a", "web", "route")) == [["ROUTE", "SERVICE", "ID", "STICKY", "LEADER", "PATH"]]
    plain = flynn.ok("-a", "web", "route", "add", "http", "www.example.com").strip()
    assert re.fullmatch(rf"http/{ID}", plain), plain
    admin = flynn.ok(
        "-a",
        "web",
        "route",
        "add",
        "http",
        "--sticky",
        "--leader",
        "-s",
        "web-admin-web",
        "-p",
        "/admin",
        "admin.example.com",
    ).strip()
    cert, key, _fp = make_cert("secure.example.com")
    (tmp_path / "cert.pem").write_text(cert)
    (tmp_path / "key.pem").write_text(key)
    secure = flynn.ok(
        "-a",
        "web",
        "route",
        "add",
        "http",
        "-c",
        str(tmp_path / "cert.pem"),
        "-k",
        str(tmp_path / "key.pem"),
        "secure.example.com",
    ).strip()
    from_stdin = flynn.ok(
        "-a",
        "web",
        "route",
        "add",
        "http",
        "--tls-cert",
        "-",
        "--tls-key",
        "-",
        "bundle.example.com",
        stdin=key + cert,  # one bundle: its certificate and key blocks are picked out
    ).strip()
    tcp = flynn.ok("-a", "web", "route", "add", "tcp").strip()
    assert re.fullmatch(rf"tcp/{ID} listening on port 3000", tcp), tcp
    tcp_id = tcp.split()[0]
    assert (
        flynn.ok("-a", "web", "route", "add", "tcp", "-p", "3100", "-s", "web-db")
        .strip()
        .endswith("port 3100")
    )

    listing = flynn.ok("-a", "web", "route")
    assert key not in listing
    assert rows(listing) == [
        ["ROUTE", "SERVICE", "ID", "STICKY", "LEADER", "PATH"],
        ["http:www.example.com", "web-web", plain, "false", "false", "/"],
        ["http:admin.example.com", "web-admin-web", admin, "true", "true", "/admin"],
        ["https:secure.example.com", "web-web", secure, "false", "false", "/"],
        ["https:bundle.example.com", "web-web", from_stdin, "false", "false", "/"],
        ["tcp:3000", "web-web", tcp_id, "false", "false"],
        [rows(listing)[6][0], "web-db", rows(listing)[6][2], "false", "false"],
    ]
    stored = controller.client().get(f"/apps/web/routes/{from_stdin}")
    assert stored["certificate"]["key"].strip() == key.strip()
    assert stored["certificate"]["cert"].strip() == cert.strip()
    as_json = json.loads(flynn.ok("-a", "web", "route", "--json"))
    assert [r["id"] for r in as_json][:2] == [plain, admin]
    assert "key" not in as_json[2]["certificate"]

    assert flynn.ok("-a", "web", "route", "update", plain, "--sticky", "-p", "/app").strip() == (
        f"Route {plain} updated."
    )
    changed = controller.client().get(f"/apps/web/routes/{plain}")
    assert (changed["sticky"], changed["path"], changed["domain"]) == (True, "/app", "www.example.com")
    flynn.ok("-a", "web", "route", "update", secure, "--no-tls")
    assert controller.client().get(f"/apps/web/routes/{secure}")["certificate"] is None
    flynn.ok("-a", "web", "route", "update", tcp_id, "-p", "3200", "--leader")
    moved = controller.client().get(f"/apps/web/routes/{tcp_id}")
    assert (moved["port"], moved["leader"]) == (3200, True)

    assert flynn.ok("-a", "web", "route", "remove", admin).strip() == f"Route {admin} removed."
    flynn.refused("-a", "web", "route", "remove", admin, fragment="not found")
    assert admin not in flynn.ok("-a", "web", "route")


def test_refusals_change_nothing(flynn: Flynn, controller: ControllerHandle, tmp_path: Path) -> None:
    taken = flynn.ok("-a", "web", "route", "add", "http", "taken.example.com").strip()
    tcp = flynn.ok("-a", "web", "route", "add", "tcp").strip().split()[0]
    before = controller.client().get("/routes")
    cert, _key, _ = make_cert("x.example.com")
    _cert2, other_key, _ = make_cert("y.example.com")
    (tmp_path / "cert.pem").write_text(cert)
    (tmp_path / "other.pem").write_text(other_key)
    for args, fragment in [
        (("route", "add", "http", "taken.example.com"), "already routed"),
        (("route", "add", "http", "bad domain"), "not a domain name"),
        (("route", "add", "http", "-p", "no-slash", "p.example.com"), "path"),
        (("route", "add", "http", "-c", str(tmp_path / "cert.pem"), "n.example.com"), "go together"),
        (
            ("route", "add", "http", "-c", str(tmp_path / "nope.pem"), "-k", "x", "n.example.com"),
            "cannot read",
        ),
        (
            (
                "route",
                "add",
                "http",
                "-c",
                str(tmp_path / "cert.pem"),
                "-k",
                str(tmp_path / "other.pem"),
                "n.example.com",
            ),
            "does not belong",
        ),
        (
            ("route", "add", "http", "-c", "-", "-k", "-", "n.example.com"),
            "no PEM certificate found on stdin",
        ),
        (("route", "add", "tcp", "-s", "Bad_Name"), "service"),
        (("route", "update", "http/nope", "--sticky"), "is not a route id"),
        (("route", "update", tcp, "--sticky"), "is for http routes"),
        (("route", "update", tcp, "-p", "80"), "3000-3500"),
        (("route", "update", taken), "nothing to change"),
        (("route", "update", taken, "--no-tls", "-c", str(tmp_path / "cert.pem"), "-k", "x"), "contradict"),
        (("route", "remove", "tcp"), "is not a route id"),
        (("route", "remove", taken.replace("http/", "tcp/")), "not found"),
    ]:
        line = flynn.refused("-a", "web", *args, fragment=fragment, stdin="")
        assert other_key not in line
    flynn.refused("-a", "web", "route", "add", "tcp", "-p", "80", code=2, fragment="3000")  # a usage error
    flynn.refused("-a", "nosuchapp", "route", fragment="not found")
    assert controller.client().get("/routes") == before
