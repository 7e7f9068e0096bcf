"""Deployments through the real deployer: all-at-once, one-by-one, rollback after 5 failures or the
deploy timeout, and two controllers on one database (each deployment claimed exactly once)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest

from flynn.common.errors import APIError
from flynn.controller.deployer import Step, plan

if TYPE_CHECKING:
    from tests.unit.controller_fixtures import ControllerHandle, Controllers

pytest_plugins = ("tests.unit.controller_fixtures",)


def setup_app(
    handle: ControllerHandle, name: str, strategy: str = "all-at-once", **app: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An app running release v1 with web=3 worker=1 (jobs up), and a release v2 not deployed."""
    api = handle.client()
    api.post("/apps", {"name": name, "strategy": strategy, **app})
    v1 = handle.make_release(name, processes={"web": ["w"], "worker": ["k"]})
    api.post(f"/apps/{name}/deploy", {"id": v1["id"]})
    api.put(f"/apps/{name}/formations/{v1['id']}", {"processes": {"web": 3, "worker": 1}})
    handle.scheduler.start()
    handle.wait_for(
        "v1 up", lambda: len([j for j in api.get(f"/apps/{name}/jobs") if j["state"] == "up"]) == 4
    )
    v2 = handle.make_release(name, processes={"web": ["w2"], "worker": ["k2"]})
    return v1, v2


def steps(handle: ControllerHandle, dep_id: str) -> list[dict[str, Any]]:
    evs = handle.client().get(
        "/events", params={"object_types": "deployment", "object_id": dep_id, "count": "1000"}
    )
    return [e["data"] for e in reversed(evs)]


def test_all_at_once(controller: ControllerHandle) -> None:
    api = controller.client()
    v1, v2 = setup_app(controller, "aao")
    dep = api.post("/apps/aao/deploy", {"id": v2["id"]})
    assert dep["status"] == "pending"
    assert dep["processes"] == {"web": 3, "worker": 1}
    assert dep["old_release_id"] == v1["id"]
    done = controller.wait_deployment(dep["id"])
    assert done["status"] == "complete", done
    assert api.get("/apps/aao")["release_id"] == v2["id"]
    assert api.get(f"/apps/aao/formations/{v2['id']}")["processes"] == {"web": 3, "worker": 1}
    assert api.get(f"/apps/aao/formations/{v1['id']}")["processes"] == {"web": 0, "worker": 0}
    data = steps(controller, dep["id"])
    assert [d["status"] for d in data][:2] == ["pending", "running"]
    assert data[-1]["status"] == "complete"
    scale = [d for d in data if d.get("step")]
    assert [(d["step"], d["processes"]) for d in scale] == [("scale_new", {"web": 3, "worker": 1})]
    ups = [d for d in data if d["job_state"] == "up"]
    assert sorted(d["job_type"] for d in ups) == ["web", "web", "web", "worker"]
    controller.wait_for(
        "v1 jobs down", lambda: {j["release_id"] for j in api.get("/apps/aao/jobs")} == {v2["id"]}
    )


def test_one_by_one(controller: ControllerHandle) -> None:
    api = controller.client()
    _, v2 = setup_app(controller, "obo", strategy="one-by-one")
    dep = api.post("/apps/obo/deploy", {"id": v2["id"]})
    assert controller.wait_deployment(dep["id"])["status"] == "complete"
    scale = [
        (d["step"], d["job_type"], d["processes"]) for d in steps(controller, dep["id"]) if d.get("step")
    ]
    assert scale == [
        ("scale_new", "web", {"web": 1, "worker": 0}),
        ("scale_old", "web", {"web": 2, "worker": 1}),
        ("scale_new", "web", {"web": 2, "worker": 0}),
        ("scale_old", "web", {"web": 1, "worker": 1}),
        ("scale_new", "web", {"web": 3, "worker": 0}),
        ("scale_old", "web", {"web": 0, "worker": 1}),
        ("scale_new", "worker", {"web": 3, "worker": 1}),
        ("scale_old", "worker", {"web": 0, "worker": 0}),
    ]
    assert api.get("/apps/obo")["release_id"] == v2["id"]


def test_rollback_after_five_failures(controller: ControllerHandle) -> None:
    api = controller.client()
    v1, v2 = setup_app(controller, "crashy")
    controller.scheduler.crash_releases.add(v2["id"])
    dep = api.post("/apps/crashy/deploy", {"id": v2["id"]})
    done = controller.wait_deployment(dep["id"])
    assert done["status"] == "failed"
    m = re.fullmatch(r"(\d+) jobs of the new release crashed or failed \(limit 5\)", done["error"])
    assert m is not None, done["error"]
    assert int(m.group(1)) >= 5, done["error"]
    assert api.get("/apps/crashy")["release_id"] == v1["id"]
    assert api.get("/apps/crashy/formations") == [api.get(f"/apps/crashy/formations/{v1['id']}")]
    assert api.get(f"/apps/crashy/formations/{v1['id']}")["processes"] == {"web": 3, "worker": 1}
    assert steps(controller, dep["id"])[-1]["error"] == done["error"]


def test_rollback_on_timeout(controller: ControllerHandle) -> None:
    api = controller.client()
    v1, v2 = setup_app(controller, "slow", deploy_timeout=1)
    controller.scheduler.hold_releases.add(v2["id"])  # its jobs never come up
    dep = api.post("/apps/slow/deploy", {"id": v2["id"]})
    done = controller.wait_deployment(dep["id"], timeout=20)
    assert done["status"] == "failed"
    assert done["error"].startswith("timed out after 1s"), done["error"]
    assert api.get("/apps/slow")["release_id"] == v1["id"]
    assert api.get(f"/apps/slow/formations/{v1['id']}")["processes"] == {"web": 3, "worker": 1}


def test_one_deployment_at_a_time(controller: ControllerHandle) -> None:
    api = controller.client()
    _, v2 = setup_app(controller, "busy")
    controller.scheduler.hold_releases.add(v2["id"])
    v3 = controller.make_release("busy", processes={"web": ["w3"]})
    api.post("/apps/busy/deploy", {"id": v2["id"]})
    with pytest.raises(APIError) as info:
        api.post("/apps/busy/deploy", {"id": v3["id"]})
    assert info.value.status == 409
    assert "in progress" in info.value.message


def test_two_controllers_claim_each_deployment_once(controllers: Controllers) -> None:
    a = controllers.start()
    b = controllers.start(db_url=a.db_url)
    api_a, api_b = a.client(), b.client()
    deployments = []
    for i in range(4):
        name = f"two{i}"
        setup_app(a, name)
        v2 = a.make_release(name, processes={"web": ["w2"], "worker": ["k2"]})
        api = api_a if i % 2 else api_b
        deployments.append(api.post(f"/apps/{name}/deploy", {"id": v2["id"]})["id"])
    for dep_id in deployments:
        assert a.wait_deployment(dep_id)["status"] == "complete"
    ran_a, ran_b = set(a.controller.deployer.ran), set(b.controller.deployer.ran)
    assert ran_a | ran_b == set(deployments)
    assert not ran_a & ran_b, "a deployment was run by both controllers"
    for dep_id in deployments:
        running = [
            d
            for d in steps(a, dep_id)
            if d["status"] == "running" and not d.get("job_id") and not d.get("step")
        ]
        assert len(running) == 1, running  # claimed once
    print(f"controller A ran {len(ran_a)}, controller B ran {len(ran_b)}")


def test_a_stale_claim_is_taken_over(controllers: Controllers) -> None:
    a = controllers.start(claim_timeout=1.0)
    api = a.client()
    _, v2 = setup_app(a, "orphan")
    a.scheduler.hold_releases.add(v2["id"])
    dep = api.post("/apps/orphan/deploy", {"id": v2["id"]})
    a.wait_for("claimed", lambda: dep["id"] in a.controller.deployer.ran)
    a.run(a.controller.deployer.close())  # the claimer dies mid-deployment
    b = controllers.start(db_url=a.db_url, claim_timeout=1.0)
    a.scheduler.hold_releases.clear()
    assert b.wait_deployment(dep["id"])["status"] == "complete"
    assert dep["id"] in b.controller.deployer.ran
    assert api.get("/apps/orphan")["release_id"] == v2["id"]


def test_plan_one_by_one_resumes_from_any_point() -> None:
    target = {"web": 2}
    # fresh
    assert plan("one-by-one", target, {}, {"web": 2}, {}) == Step("scale_new", {"web": 1}, "web")
    # new job not up yet: wait, never scale old down first
    assert plan("one-by-one", target, {"web": 1}, {"web": 2}, {}).kind == "wait"
    assert plan("one-by-one", target, {"web": 1}, {"web": 2}, {"web": 1}) == Step(
        "scale_old", {"web": 1}, "web"
    )
    assert plan("one-by-one", target, {"web": 1}, {"web": 1}, {"web": 1}) == Step(
        "scale_new", {"web": 2}, "web"
    )
    assert plan("one-by-one", target, {"web": 2}, {"web": 0}, {"web": 2}) == Step("done")
    # all-at-once
    assert plan("all-at-once", target, {}, {"web": 2}, {}) == Step("scale_new", {"web": 2})
    assert plan("all-at-once", target, {"web": 2}, {"web": 2}, {"web": 1}).kind == "wait"
    assert plan("all-at-once", target, {"web": 2}, {"web": 2}, {"web": 2}) == Step("done")
