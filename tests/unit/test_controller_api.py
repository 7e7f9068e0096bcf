"""The controller's REST API against a real controller and a real PostgreSQL: every resource's happy
path and its bad inputs (a failed request must change nothing)."""

from __future__ import annotations

import http.client
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flynn.common.errors import APIError
from flynn.common.http import Client

if TYPE_CHECKING:
    from tests.unit.controller_fixtures import ControllerHandle, Controllers

pytest_plugins = ("tests.unit.controller_fixtures",)


def ssh_keygen(tmp_path: Path, kind: str, bits: int | None = None) -> tuple[str, str]:
    """A fresh public key made by OpenSSH, and its fingerprint as ``ssh-keygen -l`` prints it."""
    path = tmp_path / f"id_{kind}_{bits}"
    cmd = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "user@laptop", "-f", str(path)]
    if bits:
        cmd += ["-b", str(bits)]
    subprocess.run(cmd, check=True, capture_output=True)
    line = Path(f"{path}.pub").read_text().strip()
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{path}.pub"], check=True, capture_output=True, text=True
    )
    return line, out.stdout.split()[1]


def raw(handle: ControllerHandle, method: str, path: str, body: bytes | None = None, **headers: str) -> Any:
    """A request with an exact body and headers; returns (status, parsed JSON or text, headers)."""
    host, port = handle.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        hdrs = {**handle.auth_header(), **headers}
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = data.decode(errors="replace")
    return resp.status, parsed, dict(resp.getheaders())


def err(call: Any, *args: Any, **kw: Any) -> APIError:
    with pytest.raises(APIError) as info:
        call(*args, **kw)
    return info.value


def snapshot(api: Client) -> dict[str, Any]:
    """Everything a bad request must leave unchanged."""
    apps = api.get("/apps")
    out: dict[str, Any] = {"apps": apps, "artifacts": api.get("/artifacts"), "keys": api.get("/keys")}
    for app in apps:
        name = app["name"]
        out[name] = {
            "releases": api.get(f"/apps/{name}/releases"),
            "formations": api.get(f"/apps/{name}/formations"),
            "jobs": api.get(f"/apps/{name}/jobs", params={"all": "true"}),
            "deployments": api.get(f"/apps/{name}/deployments"),
        }
    out["events"] = [e["id"] for e in api.get("/events", params={"count": "1000"})]
    return out


# -- apps ----------------------------------------------------------------------------------------


def test_app_lifecycle(controller: ControllerHandle) -> None:
    api = controller.client()
    app = api.post("/apps", {"name": "myapp", "meta": {"owner": "ops"}, "strategy": "one-by-one"})
    assert app["name"] == "myapp"
    assert app["meta"] == {"owner": "ops"}
    assert app["strategy"] == "one-by-one"
    assert app["deploy_timeout"] == 120
    assert app["release_id"] is None
    assert app["system"] is False
    assert app["created_at"].endswith("Z")
    assert "T" in app["created_at"]
    assert api.get(f"/apps/{app['id']}") == app
    assert api.get("/apps/myapp") == app
    updated = api.post("/apps/myapp", {"deploy_timeout": 30, "meta": {"a": "b"}})
    assert updated["deploy_timeout"] == 30
    assert updated["meta"] == {"a": "b"}
    assert updated["strategy"] == "one-by-one"
    assert api.put("/apps/myapp/meta", {"x": "1"}) == {"x": "1"}
    assert api.get("/apps/myapp/meta") == {"x": "1"}
    second = api.post("/apps", {})
    assert second["name"].count("-") == 2, second["name"]  # adjective-noun-NNNN
    assert [a["name"] for a in api.get("/apps")] == ["myapp", second["name"]]  # oldest first
    assert api.delete("/apps/myapp") == {"id": app["id"]}
    assert err(api.get, "/apps/myapp").status == 404
    types = [e["object_type"] for e in api.get("/events", params={"app_id": app["id"]})]
    assert types[0] == "app_deletion"  # events outlive their app
    assert "app" in types


def test_app_bad_inputs_change_nothing(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "taken"})
    before = snapshot(api)
    cases: list[tuple[Any, str | None, int]] = [
        ({"name": "Bad_Name"}, "name", 400),
        ({"name": "-x"}, "name", 400),
        ({"name": "a" * 64}, "name", 400),
        ({"name": 5}, "name", 400),
        ({"name": "taken"}, "name", 409),
        ({"meta": {"k": 1}}, "meta.k", 400),
        ({"meta": {"bad key": "v"}}, "meta.bad key", 400),
        ({"meta": {f"k{i}": "v" for i in range(65)}}, "meta", 400),
        ({"meta": {"k": "v" * 4097}}, "meta.k", 400),
        ({"meta": []}, "meta", 400),
        ({"strategy": "sometimes"}, "strategy", 400),
        ({"deploy_timeout": 0}, "deploy_timeout", 400),
        ({"deploy_timeout": 3601}, "deploy_timeout", 400),
        ({"deploy_timeout": "10"}, "deploy_timeout", 400),
        ({"deploy_timeout": True}, "deploy_timeout", 400),
        ({"system": "yes"}, "system", 400),
        ({"id": "not-a-uuid"}, "id", 400),
        ({"colour": "red"}, "colour", 400),
        ([], None, 400),
        ("app", None, 400),
    ]
    for body, field, status in cases:
        code, data, _ = raw(
            controller, "POST", "/apps", json.dumps(body).encode(), **{"Content-Type": "application/json"}
        )
        assert code == status, (body, data)
        assert data["code"] == status, data
        assert isinstance(data["error"], str), data
        if field is not None:
            assert data.get("field") == field, (body, data)
            assert field.split(".")[0] in data["error"]
    assert snapshot(api) == before


def test_malformed_oversize_and_wrong_content_type(controller: ControllerHandle) -> None:
    api = controller.client()
    before = snapshot(api)
    status, data, _ = raw(controller, "POST", "/apps", b"{nope", **{"Content-Type": "application/json"})
    assert status == 400
    assert data["error"].startswith("malformed JSON")
    status, data, _ = raw(
        controller, "POST", "/apps", b"x" * (10 << 20), **{"Content-Type": "application/json"}
    )
    assert status == 413
    assert data["code"] == 413
    status, data, _ = raw(
        controller, "POST", "/apps", b"name=x", **{"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 415
    status, data, _ = raw(
        controller, "POST", "/apps", b'{"name": "a\\u0000b"}', **{"Content-Type": "application/json"}
    )
    assert status == 400
    assert "NUL" in data["error"]
    status, data, _ = raw(
        controller, "POST", "/apps", b'{"name": "\\ud800"}', **{"Content-Type": "application/json"}
    )
    assert status == 400
    status, data, _ = raw(
        controller, "POST", "/apps", b'{"deploy_timeout": NaN}', **{"Content-Type": "application/json"}
    )
    assert status == 400
    status, data, _ = raw(controller, "GET", "/nope")
    assert status == 404
    assert data["code"] == 404
    status, data, _ = raw(controller, "PATCH", "/apps")
    assert status == 405
    assert "error" in data
    assert snapshot(api) == before


def test_unknown_app_is_404_everywhere(controller: ControllerHandle) -> None:
    api = controller.client()
    for ref in ("nope", "00000000-0000-4000-8000-000000000000", "UPPER", "a%20b"):
        for method, path in [
            ("GET", f"/apps/{ref}"),
            ("POST", f"/apps/{ref}"),
            ("DELETE", f"/apps/{ref}"),
            ("GET", f"/apps/{ref}/meta"),
            ("GET", f"/apps/{ref}/release"),
            ("GET", f"/apps/{ref}/releases"),
            ("GET", f"/apps/{ref}/formations"),
            ("GET", f"/apps/{ref}/jobs"),
            ("GET", f"/apps/{ref}/deployments"),
        ]:
            body = b"{}" if method == "POST" else None
            status, data, _ = raw(controller, method, path, body, **{"Content-Type": "application/json"})
            assert status == 404, (method, path, data)
            assert "not found" in data["error"]
    assert api.get("/apps") == []


def test_system_app_cannot_be_deleted(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "router", "system": True})
    e = err(api.delete, "/apps/router")
    assert e.status == 400
    assert "system app" in e.message
    assert api.get("/apps/router")["system"] is True


# -- artifacts and releases ----------------------------------------------------------------------


def test_artifacts(controller: ControllerHandle) -> None:
    api = controller.client()
    sha = "ab" * 32
    art = api.post("/artifacts", {"type": "tarball", "uri": "https://blob/x.tgz", "size": 10, "sha256": sha})
    assert art["type"] == "tarball"
    assert art["size"] == 10
    assert art["sha256"] == sha
    assert api.get(f"/artifacts/{art['id']}") == art
    assert api.get("/artifacts") == [art]
    before = snapshot(api)
    for body, field in [
        ({"uri": "ftp://x/y"}, "uri"),
        ({"uri": "file:///etc/passwd"}, "uri"),
        ({"uri": "http://"}, "uri"),
        ({"uri": "https://x/" + "a" * 2048}, "uri"),
        ({}, "uri"),
        ({"uri": "https://x/y", "type": "docker"}, "type"),
        ({"uri": "https://x/y", "size": -1}, "size"),
        ({"uri": "https://x/y", "size": 1 << 64}, "size"),
        ({"uri": "https://x/y", "sha256": "AB" * 32}, "sha256"),
        ({"uri": "https://x/y", "id": art["id"]}, "id"),
    ]:
        e = err(api.post, "/artifacts", body)
        assert e.status in (400, 409), (body, e)
        assert field in e.message, (body, e.message)
    assert err(api.get, "/artifacts/nope").status == 404
    assert snapshot(api) == before


def test_release_defaults_and_validation(controller: ControllerHandle) -> None:
    api = controller.client()
    app = api.post("/apps", {"name": "rel"})
    art = api.post("/artifacts", {"uri": "https://blob/slug.tgz"})
    body = {
        "app_id": "rel",
        "artifacts": [art["id"]],
        "env": {"GREETING": "hi"},
        "processes": {
            "web": {"args": ["python3", "app.py"]},
            "worker": {
                "args": ["/bin/sh", "-c", "work"],
                "resources": {"memory": {"limit": 268435456}, "cpu": {"limit": 1500}},
            },
            "api-web": {"args": ["api"], "check": {"type": "http", "path": "/health"}},
        },
    }
    rel = api.post("/releases", body)
    assert rel["app_id"] == app["id"]
    assert rel["artifacts"] == [art["id"]]
    web, worker, apiweb = rel["processes"]["web"], rel["processes"]["worker"], rel["processes"]["api-web"]
    assert web["service"] == "rel-web"
    assert web["check"] == {"type": "tcp"}
    assert web["resources"] == {"memory": {"limit": 1 << 30}}
    assert worker["service"] is None
    assert worker["check"] is None
    assert worker["resources"] == {"memory": {"limit": 268435456}, "cpu": {"limit": 1500}}
    assert apiweb["service"] == "rel-api-web"
    assert apiweb["check"] == {"type": "http", "path": "/health", "status": 200}
    assert api.get(f"/releases/{rel['id']}") == rel
    assert api.get("/apps/rel/releases") == [rel]
    before = snapshot(api)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"env": {"A=B": "x"}}, "env.A=B"),
        ({"env": {"A\u0000": "x"}}, ""),
        ({"env": {"A": "x\u0000y"}}, "env.A"),
        ({"env": {"A": 1}}, "env.A"),
        ({"env": {"PORT": "80"}}, "env.PORT"),
        ({"env": {"V": "x" * (32 * 1024 + 1)}}, "env.V"),
        ({"env": {f"V{i}": "x" for i in range(257)}}, "env"),
        ({"artifacts": ["00000000-0000-4000-8000-000000000000"]}, "artifacts[0]"),
        ({"artifacts": "x"}, "artifacts"),
        ({"processes": {"Web": {"args": ["x"]}}}, "processes.Web"),
        ({"processes": {"web": {"args": []}}}, "processes.web.args"),
        ({"processes": {"web": {"args": "python app.py"}}}, "processes.web.args"),
        ({"processes": {"web": {"args": [1]}}}, "processes.web.args[0]"),
        ({"processes": {"web": {}}}, "processes.web.args"),
        (
            {"processes": {"web": {"args": ["x"], "resources": {"memory": {"limit": 1024}}}}},
            "processes.web.resources.memory.limit",
        ),
        (
            {"processes": {"web": {"args": ["x"], "resources": {"cpu": {"limit": 0}}}}},
            "processes.web.resources.cpu.limit",
        ),
        ({"processes": {"web": {"args": ["x"], "check": {"type": "udp"}}}}, "processes.web.check.type"),
        ({"processes": {"web": {"args": ["x"], "omni": "yes"}}}, "processes.web.omni"),
        ({"processes": {"web": {"args": ["x"], "env": {"1A": "x"}}}}, "processes.web.env.1A"),
        ({"processes": {f"p{i}": {"args": ["x"]} for i in range(101)}}, "processes"),
        ({"app_id": "nope"}, "app_id"),
        ({"app_id": None}, "app_id"),
    ]
    for change, field in bad:
        e = err(api.post, "/releases", {**body, **change})
        assert e.status == 400, (change, e)
        assert field in e.message, (field, e.message)
    assert err(api.post, "/releases", {"env": {}}).status == 400  # no app_id
    assert snapshot(api) == before


def test_app_release_put_and_get(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "a1"})
    api.post("/apps", {"name": "a2"})
    assert err(api.get, "/apps/a1/release").status == 404
    rel = controller.make_release("a1")
    other = controller.make_release("a2")
    assert api.put("/apps/a1/release", {"id": rel["id"]}) == rel
    assert api.get("/apps/a1/release") == rel
    assert api.get("/apps/a1")["release_id"] == rel["id"]
    e = err(api.put, "/apps/a1/release", {"id": other["id"]})
    assert e.status == 400
    assert "not found in app a1" in e.message
    assert err(api.put, "/apps/a1/release", {"id": 3}).status == 400
    assert err(api.put, "/apps/a1/release", {}).status == 400
    assert api.get("/apps/a1/release") == rel
    events = api.get("/events", params={"object_types": "app_release", "app_id": "a1"})
    assert events[0]["data"]["release"]["id"] == rel["id"]


# -- formations ----------------------------------------------------------------------------------


def test_formations(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "f"})
    rel = controller.make_release("f", processes={"web": ["w"], "worker": ["k"]})
    form = api.put(f"/apps/f/formations/{rel['id']}", {"processes": {"web": 3, "worker": 0}})
    assert form["processes"] == {"web": 3, "worker": 0}
    assert api.get(f"/apps/f/formations/{rel['id']}") == form
    assert api.get("/apps/f/formations") == [form]
    expanded = api.get(f"/apps/f/formations/{rel['id']}", params={"expand": "true"})
    assert expanded["app"]["name"] == "f"
    assert expanded["release"]["id"] == rel["id"]
    assert [a["id"] for a in expanded["artifacts"]] == rel["artifacts"]
    active = api.get("/formations", params={"active": "true"})
    assert [(f["app"]["name"], f["processes"]) for f in active] == [("f", {"web": 3, "worker": 0})]
    assert len(api.get("/formations")) == 1
    before = snapshot(api)
    for body, status, field in [
        ({"processes": {"web": -1}}, 400, "processes.web"),
        ({"processes": {"web": 1001}}, 400, "processes.web"),
        ({"processes": {"web": 10**40}}, 400, "processes.web"),
        ({"processes": {"web": 1.5}}, 400, "processes.web"),
        ({"processes": {"web": "3"}}, 400, "processes.web"),
        ({"processes": {"db": 1}}, 400, "processes.db"),
        ({"processes": []}, 400, "processes"),
        ({"counts": {}}, 400, "counts"),
    ]:
        e = err(api.put, f"/apps/f/formations/{rel['id']}", body)
        assert e.status == status, (body, e)
        assert field in e.message, (body, e)
    assert (
        err(api.put, "/apps/f/formations/00000000-0000-4000-8000-000000000000", {"processes": {}}).status
        == 404
    )
    assert err(api.put, "/apps/f/formations/nope", {"processes": {}}).status == 404
    assert err(api.get, "/formations", params={"active": "maybe"}).status == 400
    assert snapshot(api) == before
    api.put(f"/apps/f/formations/{rel['id']}", {"processes": {"web": 0}})
    assert api.get("/formations", params={"active": "true"}) == []
    assert api.delete(f"/apps/f/formations/{rel['id']}")["release_id"] == rel["id"]
    assert api.get("/apps/f/formations") == []
    assert err(api.delete, f"/apps/f/formations/{rel['id']}").status == 404


def test_delete_app_removes_formations_and_jobs(controller: ControllerHandle) -> None:
    api = controller.client()
    app = api.post("/apps", {"name": "gone"})
    rel = controller.make_release("gone")
    api.put(f"/apps/gone/formations/{rel['id']}", {"processes": {"web": 2}})
    controller.report_job("gone", rel["id"], "web", "up")
    api.delete("/apps/gone")
    assert api.get("/formations", params={"active": "true"}) == []
    assert err(api.get, f"/releases/{rel['id']}").status == 404
    evs = api.get("/events", params={"app_id": app["id"], "count": "3"})
    assert evs[0]["object_type"] == "app_deletion"
    assert evs[0]["data"]["app"]["name"] == "gone"
    assert evs[1]["object_type"] == "formation"
    assert evs[1]["op"] == "delete"


# -- jobs (as the scheduler reports them) ----------------------------------------------------------


def test_job_reports(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "j"})
    rel = controller.make_release("j")
    job = controller.report_job("j", rel["id"], "web", "starting", args=["python3", "app.py"])
    assert job["state"] == "starting"
    assert job["host_id"] == "host1"
    assert job["id"].startswith("host1-")
    assert job["uuid"] == job["id"].split("-", 1)[1]
    n_events = len(api.get("/events", params={"object_types": "job"}))
    same = api.put(f"/apps/j/jobs/{job['id']}", {"state": "starting"})
    assert same == job
    # a reporter may repeat the job's identity (the scheduler sends whole jobs) when it matches
    ident = {"app_id": job["app_id"], "host_id": "host1", "uuid": job["uuid"]}
    assert api.put(f"/apps/j/jobs/{job['id']}", {"state": "starting", **ident}) == job
    assert len(api.get("/events", params={"object_types": "job"})) == n_events  # no change, no event
    up = api.put(f"/apps/j/jobs/{job['id']}", {"state": "up"})
    assert up["state"] == "up"
    assert up["args"] == ["python3", "app.py"]
    assert api.get(f"/apps/j/jobs/{job['id']}") == up
    assert [x["id"] for x in api.get("/apps/j/jobs")] == [job["id"]]
    api.put(f"/apps/j/jobs/{job['id']}", {"state": "crashed", "exit_status": 1, "restarts": 2})
    assert api.get("/apps/j/jobs") == []
    done = api.get("/apps/j/jobs", params={"all": "true"})
    assert done[0]["state"] == "crashed"
    assert done[0]["exit_status"] == 1
    assert done[0]["restarts"] == 2
    before = snapshot(api)
    jid = "host2-00000000-0000-4000-8000-000000000001"
    for path, body, field in [
        (f"/apps/j/jobs/{jid}", {"state": "up"}, "release_id"),
        (f"/apps/j/jobs/{jid}", {"state": "up", "release_id": rel["id"]}, "type"),
        (f"/apps/j/jobs/{jid}", {"state": "sleeping", "release_id": rel["id"], "type": "web"}, "state"),
        (f"/apps/j/jobs/{jid}", {"release_id": rel["id"], "type": "web"}, "state"),
        (f"/apps/j/jobs/{jid}", {"state": "up", "release_id": "x", "type": "web"}, "release_id"),
        (
            f"/apps/j/jobs/{jid}",
            {"state": "up", "release_id": rel["id"], "type": "web", "exit_status": "1"},
            "exit_status",
        ),
        (f"/apps/j/jobs/{jid}", {"state": "up", "release_id": rel["id"], "type": "web", "bogus": 1}, "bogus"),
        (f"/apps/j/jobs/{job['id']}", {"state": "up", "type": "worker"}, "type"),
        (f"/apps/j/jobs/{job['id']}", {"state": "up", "app_id": rel["id"]}, "app_id"),
        (f"/apps/j/jobs/{job['id']}", {"state": "up", "host_id": "host2"}, "host_id"),
        (
            f"/apps/j/jobs/{job['id']}",
            {"state": "up", "uuid": "00000000-0000-4000-8000-000000000009"},
            "uuid",
        ),
    ]:
        e = err(api.put, path, body)
        assert e.status == 400, (body, e)
        assert field in e.message, (body, e)
    for bad_id in ("nodash", "host-1-x", "ho_st-00000000-0000-4000-8000-000000000001"):
        assert err(api.put, f"/apps/j/jobs/{bad_id}", {"state": "up"}).status == 404
    assert err(api.get, f"/apps/j/jobs/{jid}").status == 404
    assert snapshot(api) == before


# -- deployments ---------------------------------------------------------------------------------


def test_first_deploy_is_instant_and_bad_deploys(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "d"})
    api.post("/apps", {"name": "other"})
    rel = controller.make_release("d")
    foreign = controller.make_release("other")
    dep = api.post("/apps/d/deploy", {"id": rel["id"]})
    assert dep["status"] == "complete"
    assert dep["old_release_id"] is None
    assert dep["new_release_id"] == rel["id"]
    assert api.get(f"/deployments/{dep['id']}") == dep
    assert api.get("/apps/d/deployments") == [dep]
    assert api.get("/apps/d")["release_id"] == rel["id"]
    before = snapshot(api)
    e = err(api.post, "/apps/d/deploy", {"id": foreign["id"]})
    assert e.status == 400
    assert e.message.startswith("id:")
    assert err(api.post, "/apps/d/deploy", {"id": "x"}).status == 400
    assert err(api.post, "/apps/d/deploy", {}).status == 400
    assert err(api.get, "/deployments/nope").status == 404
    assert snapshot(api) == before


# -- events (JSON list) ----------------------------------------------------------------------------


def test_event_list_filters_and_bad_params(controller: ControllerHandle) -> None:
    api = controller.client()
    a = api.post("/apps", {"name": "e1"})
    api.post("/apps", {"name": "e2"})
    rel = controller.make_release("e1")
    evs = api.get("/events")
    ids = [e["id"] for e in evs]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert all(e["app_id"] == a["id"] for e in api.get("/events", params={"app_id": "e1"}))
    rels = api.get("/events", params={"object_types": "release"})
    assert [e["object_id"] for e in rels] == [rel["id"]]
    assert api.get(f"/events/{rels[0]['id']}") == rels[0]
    assert len(api.get("/events", params={"count": "2"})) == 2
    assert [e["id"] for e in api.get("/events", params={"since_id": str(ids[1])})] == [ids[0]]
    assert api.get("/events", params={"object_id": a["id"], "object_types": "app"})[0]["object_id"] == a["id"]
    for params, field in [
        ({"count": "0"}, "count"),
        ({"count": "1001"}, "count"),
        ({"count": "x"}, "count"),
        ({"since_id": "-1"}, "since_id"),
        ({"object_types": "app,bogus"}, "object_types"),
        ({"app_id": "nope"}, "app_id"),
        ({"past": "maybe"}, "past"),
    ]:
        e = err(api.get, "/events", params=params)
        assert e.status == 400, (params, e)
        assert field in e.message, (params, e)
    assert err(api.get, "/events/999999").status == 404
    assert err(api.get, "/events/x").status == 404
    assert err(api.get, "/events/%C2%B2").status == 404  # a unicode digit


# -- keys ----------------------------------------------------------------------------------------


def test_ssh_keys(controller: ControllerHandle, tmp_path: Path) -> None:
    api = controller.client()
    added = []
    for kind, bits in (("rsa", 3072), ("ecdsa", 256), ("ecdsa", 521)):
        line, fingerprint = ssh_keygen(tmp_path, kind, bits)
        got = api.post("/keys", {"key": line})
        assert got["fingerprint"] == fingerprint
        added.append(got)
    ed25519, ed_fp = ssh_keygen(tmp_path, "ed25519")
    key = api.post("/keys", {"key": ed25519})
    assert key["fingerprint"] == ed_fp
    assert key["type"] == "ssh-ed25519"
    assert key["comment"] == "user@laptop"
    assert key["key"] == ed25519
    assert len(key["id"]) == 64
    assert {k["id"] for k in api.get("/keys")} == {key["id"], *(k["id"] for k in added)}
    assert err(api.post, "/keys", {"key": ed25519}).status == 409
    weak, _ = ssh_keygen(tmp_path, "rsa", 1024)
    assert "2048 bits" in err(api.post, "/keys", {"key": weak}).message
    for k in added:
        api.delete(f"/keys/{k['id']}")
    before = snapshot(api)
    for text in [
        "ssh-ed25519",
        "ssh-dsa AAAA",
        "ssh-ed25519 !!!notbase64",
        "ssh-rsa " + ed25519.split()[1],  # the blob holds an ed25519 key
        ed25519.split()[0] + " " + ed25519.split()[1][:40],  # truncated
        "ssh-ed25519 AAAA\nssh-ed25519 AAAA",
    ]:
        e = err(api.post, "/keys", {"key": text})
        assert e.status == 400, (text, e)
        assert e.message.startswith("key:"), (text, e)
    assert err(api.post, "/keys", {"key": 1}).status == 400
    assert err(api.post, "/keys", {}).status == 400
    assert snapshot(api) == before
    assert api.delete(f"/keys/{key['id']}")["id"] == key["id"]
    assert api.get("/keys") == []
    assert err(api.delete, f"/keys/{key['id']}").status == 404


# -- status and auth -----------------------------------------------------------------------------


def test_status_and_openapi_need_no_key(controller: ControllerHandle) -> None:
    anon = Client(controller.url)
    assert anon.get("/status") == {
        "status": "healthy",
        "database": "ok",
        "version": anon.get("/status")["version"],
    }
    assert anon.get("/openapi.json")["openapi"] == "3.1.0"


def test_auth_is_required(controller: ControllerHandle) -> None:
    def basic(key: str) -> str:
        return controller.auth_header(key)["Authorization"]

    for header in (
        "",
        basic("wrong"),
        basic(""),
        basic(controller.key[:-1]),
        basic(controller.key + "x"),
        "Bearer " + controller.key,
        "Basic !!!",
        "Basic eA==",  # "x": no colon
        "Basic",
    ):
        status, data, headers = raw(controller, "GET", "/apps", Authorization=header)
        assert status == 401, header
        assert data == {"error": "invalid or missing key", "code": 401}
        assert headers["WWW-Authenticate"] == 'Basic realm="flynn"'
    status, _, _ = raw(
        controller,
        "POST",
        "/apps",
        b'{"name": "x"}',
        Authorization="",
        **{"Content-Type": "application/json"},
    )
    assert status == 401
    assert controller.client().get("/apps") == []  # nothing was created
    assert raw(controller, "GET", "/apps", Authorization="Basic " + "dXNlcjo=")[0] == 401  # "user:" empty key
    status, _, _ = raw(controller, "GET", "/apps", Authorization=basic(controller.key))
    assert status == 200


def _ca_pem() -> str:
    from flynn.host.bootstrap import make_certificates

    return make_certificates("ca.example.test", ["10.0.0.1"])[0]


def test_ca_cert_is_served_without_a_key(controllers: Controllers) -> None:
    pem = _ca_pem()
    handle = controllers.start(ca_cert=pem)
    conn = http.client.HTTPConnection("127.0.0.1", int(handle.url.rsplit(":", 1)[1]), timeout=10)
    conn.request("GET", "/ca-cert")  # no Authorization header: the CA is public
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").startswith("application/x-pem-file")
    assert resp.read().decode() == pem


def test_ca_cert_missing_is_a_json_404(controller: ControllerHandle) -> None:
    e = err(Client(controller.url).get, "/ca-cert")
    assert e.status == 404
    assert "CA_CERT" in e.message


def test_config_ca_cert() -> None:
    from flynn.common.errors import ConfigError
    from flynn.controller.config import ControllerConfig

    base = {"DATABASE_URL": "postgresql://u:p@h/db", "AUTH_KEY": "k"}
    assert ControllerConfig.from_env(base).ca_cert is None
    pem = _ca_pem()
    assert ControllerConfig.from_env({**base, "CA_CERT": pem.strip()}).ca_cert == pem
    with pytest.raises(ConfigError, match="CA_CERT is not a PEM certificate"):
        ControllerConfig.from_env({**base, "CA_CERT": "-----BEGIN CERTIFICATE-----\nnope\n"})
