"""What the scheduler sends is what the other components accept: their own parsers, not copies.

* a release as the controller normalises it (``flynn.controller.schema.process``), expanded,
  turned into job configs that the host's parser (``flynn.host.jobs.spec.parse_job``) accepts;
* the job reports the scheduler sends pass the controller's ``PUT /apps/:app/jobs/:id`` parser.
"""

from __future__ import annotations

from typing import Any

import pytest

from flynn.scheduler.memory import expanded
from flynn.scheduler.model import Formation, Job, job_config
from flynn.scheduler.state import SchedulerState

APP = "0b6a3b8e-5d37-4c47-9a77-2c1b0f9c1d11"
RELEASE = "1b6a3b8e-5d37-4c47-9a77-2c1b0f9c1d11"
JOB = "host1-2b6a3b8e-5d37-4c47-9a77-2c1b0f9c1d11"


def controller_formation() -> Formation:
    from flynn.controller import schema

    raw = {
        "web": {"args": ["python3", "app.py"], "env": {"MODE": "web"}},
        "worker": {"args": ["/bin/sh", "-c", "worker"], "resources": {"memory": {"limit": 268435456}}},
        "api-web": {
            "args": ["api"],
            "check": {"type": "http", "path": "/health"},
            "resources": {"cpu": {"limit": 1500}},
        },
        "agent": {"args": ["agent"], "omni": True, "service": None},
    }
    processes = {t: schema.process(p, f"processes.{t}", "myapp", t) for t, p in raw.items()}
    return Formation.from_expanded(
        expanded(
            APP, RELEASE, dict.fromkeys(raw, 1), processes=processes, env={"DATABASE_URL": "x", "PORT": "1"}
        )
    )


@pytest.mark.parametrize("type_", ["web", "worker", "api-web", "agent"])
def test_job_configs_from_a_controller_release_pass_the_hosts_parser(type_: str) -> None:
    from flynn.host.jobs.spec import parse_job

    formation = controller_formation()
    config = job_config(formation, type_, JOB)
    spec = parse_job(config, "host1", JOB)
    assert (spec.app_id, spec.release_id, spec.type, spec.args) == (
        APP,
        RELEASE,
        type_,
        formation.processes[type_].args,
    )
    assert spec.service == formation.processes[type_].service
    assert formation.processes["agent"].omni


def reports() -> list[Any]:
    st = SchedulerState()
    st.host_up("host1", "http://h:1113")
    out = []
    base = {"id": JOB, "host_id": "host1", "app_id": APP, "release_id": RELEASE, "type": "web", "args": ["a"]}
    out += st.job_update("host1", Job.from_json({**base, "state": "starting"}), 1)
    out += st.job_update(
        "host1", Job.from_json({**base, "state": "crashed", "exit_status": 137, "error": "killed"}), 2
    )
    other = {**base, "id": "host1-3b6a3b8e-5d37-4c47-9a77-2c1b0f9c1d11", "state": "up"}
    out += st.job_update("host1", Job.from_json(other), 3)
    out += st.host_down("host1", 4)
    return out


def test_job_reports_pass_the_controllers_parser() -> None:
    from flynn.controller import schema

    sent = reports()
    assert [r.state for r in sent] == ["starting", "crashed", "up", "down"]
    for report in sent:
        body = {k: v for k, v in report.body.items() if k != "id"}  # the id is in the path
        parsed = schema.job_put(body)
        parsed.check_identity(report.job_id, report.app_id)
        assert parsed.state == report.state
    assert schema.job_put({k: v for k, v in sent[-1].body.items() if k != "id"}).host_error == "host lost"
