"""One-off jobs (host picked from discoverd's flynn-host instances), stopping jobs through their
host, and the attach WebSocket proxy, against fake hosts speaking the host API over HTTP."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import aiohttp
import pytest

from flynn.common.errors import APIError
from flynn.controller.repo.jobs import ONEOFF_META

if TYPE_CHECKING:
    from tests.unit.controller_fixtures import ControllerHandle

pytest_plugins = ("tests.unit.controller_fixtures",)


def setup(handle: ControllerHandle) -> dict[str, object]:
    api = handle.client()
    api.post("/apps", {"name": "runner"})
    rel = handle.make_release("runner", env={"GLOBAL": "1", "SHARED": "release"})
    api.post("/apps/runner/deploy", {"id": rel["id"]})
    return rel


def err(call: object, *args: object) -> APIError:
    with pytest.raises(APIError) as info:
        call(*args)  # type: ignore[operator]
    return info.value


def test_one_off_job_goes_to_the_host_with_fewest_jobs(controller: ControllerHandle) -> None:
    api = controller.client()
    rel = setup(controller)
    # host1 already runs a job
    controller.report_job("runner", str(rel["id"]), "web", "up", host_id="host1")
    job = api.post("/apps/runner/jobs", {"args": ["echo", "hi"], "env": {"SHARED": "job"}})
    assert job["host_id"] == "host2"
    assert job["state"] == "starting"
    assert job["type"] == "run"
    assert job["meta"][ONEOFF_META] == "true"
    cfg = controller.hosts["host2"].configs[job["id"]]
    assert cfg["args"] == ["echo", "hi"]
    assert cfg["env"] == {"GLOBAL": "1", "SHARED": "job"}
    assert cfg["artifact"]["id"] == rel["artifacts"][0]  # type: ignore[index]
    assert cfg["app_name"] == "runner"
    assert cfg["attach"] is False
    assert cfg["service"] is None
    assert cfg["resources"] == {"memory": {"limit": 1 << 30}}
    assert api.get(f"/apps/runner/jobs/{job['id']}") == job
    second = api.post("/apps/runner/jobs", {"args": ["true"], "type": "web"})
    assert second["host_id"] in ("host1", "host2")
    web_cfg = controller.hosts[second["host_id"]].configs[second["id"]]
    assert web_cfg["type"] == "web"


def test_one_off_job_failures(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "norel"})
    assert err(api.post, "/apps/norel/jobs", {"args": ["x"]}).status == 400  # no release
    setup(controller)
    for body, field in [
        ({}, "args"),
        ({"args": []}, "args"),
        ({"args": ["x"], "env": {"PORT": "1"}}, "env.PORT"),
        ({"args": ["x"], "env": {"A=B": "1"}}, "env.A=B"),
        ({"args": ["x"], "attach": "yes"}, "attach"),
        ({"args": ["x"], "release_id": "00000000-0000-4000-8000-000000000000"}, "release_id"),
    ]:
        e = err(api.post, "/apps/runner/jobs", body)
        assert e.status == 400, (body, e)
        assert field in e.message, (body, e)
    assert all(not h.configs for h in controller.hosts.values())
    controller.hosts["host1"].refuse = 500
    job = api.post("/apps/runner/jobs", {"args": ["x"]})
    assert job["host_id"] == "host2"  # a broken host is skipped
    controller.hosts["host2"].refuse = 503
    e = err(api.post, "/apps/runner/jobs", {"args": ["x"]})
    assert e.status == 503
    assert "no host could start the job" in e.message
    controller.hosts["host2"].refuse = 400
    controller.hosts["host1"].refuse = 400
    assert "refused the job" in err(api.post, "/apps/runner/jobs", {"args": ["x"]}).message
    controller.cluster.remove_host("host1")
    controller.cluster.remove_host("host2")
    e = err(api.post, "/apps/runner/jobs", {"args": ["x"]})
    assert e.status == 503
    assert "no host" in e.message
    controller.cluster.discoverd.down = True
    assert err(api.post, "/apps/runner/jobs", {"args": ["x"]}).status == 503
    assert [j["id"] for j in api.get("/apps/runner/jobs")] == [job["id"]]


def test_delete_job_asks_its_host(controller: ControllerHandle) -> None:
    api = controller.client()
    rel = setup(controller)
    job = api.post("/apps/runner/jobs", {"args": ["sleep", "100"]})
    host = controller.hosts[job["host_id"]]
    stopped = api.delete(f"/apps/runner/jobs/{job['id']}")
    assert host.stopped == [job["id"]]
    assert stopped["state"] == "stopping"
    evs = api.get("/events", params={"object_types": "job", "object_id": job["id"]})
    assert evs[0]["data"]["state"] == "stopping"
    api.put(f"/apps/runner/jobs/{job['id']}", {"state": "down"})
    assert api.delete(f"/apps/runner/jobs/{job['id']}")["state"] == "down"  # final: nothing to do
    assert host.stopped == [job["id"]]
    # a job its host never heard of is down
    ghost = controller.report_job("runner", str(rel["id"]), "web", "up", host_id="host1")
    assert api.delete(f"/apps/runner/jobs/{ghost['id']}")["state"] == "down"
    lost = controller.report_job("runner", str(rel["id"]), "web", "up", host_id="host9")
    e = err(api.delete, f"/apps/runner/jobs/{lost['id']}")
    assert e.status == 503
    assert "host9" in e.message
    assert api.get(f"/apps/runner/jobs/{lost['id']}")["state"] == "up"
    assert err(api.delete, "/apps/runner/jobs/host1-00000000-0000-4000-8000-000000000000").status == 404


async def test_attach_proxies_the_hosts_websocket(controller: ControllerHandle) -> None:
    api = controller.client()
    setup(controller)
    job = api.post("/apps/runner/jobs", {"args": ["cat"], "attach": True})
    assert controller.hosts[job["host_id"]].configs[job["id"]]["attach"] is True
    url = f"{controller.url}/apps/runner/jobs/{job['id']}/attach"
    async with aiohttp.ClientSession(headers=controller.auth_header()) as s:
        async with s.ws_connect(url) as ws:
            first = await ws.receive_bytes(timeout=5)
            assert first == b"\x02attached\n"
            await ws.send_bytes(b"hello\n")
            assert await ws.receive_bytes(timeout=5) == b"\x01hello\n"
            await ws.send_str(json.dumps({"eof": True}))
            assert json.loads(await ws.receive_str(timeout=5)) == {"exit": 0}
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        async with s.get(url) as resp:  # not a WebSocket upgrade
            assert resp.status == 400
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(
                f"{controller.url}/apps/runner/jobs/host1-00000000-0000-4000-8000-000000000000/attach"
            )
        assert info.value.status == 404
    async with aiohttp.ClientSession() as anon:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await anon.ws_connect(url)
        assert info.value.status == 401
    assert controller.hosts[job["host_id"]].attached == [job["id"]]
