"""The controller's log endpoints and the CLI on top, against a real controller on a real
PostgreSQL (tests/unit/controller_fixtures.py) whose discoverd lists a log aggregator running
the real aggregator API (tests/unit/aggregator_fixture.py): ``/sinks`` (validation, events,
status from the aggregator leader), ``GET /apps/:app/log`` (proxied and streamed, follow
included), ``flynn log`` and ``flynn cluster log-sink``."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from flynn.common.errors import APIError
from flynn.controller.client import Client
from flynn.logs.sinks import SinkConfig
from tests.unit import controller_fixtures
from tests.unit.controller_fixtures import ControllerHandle
from tests.unit.test_cli_controller import Flynn

pg_server = controller_fixtures.pg_server
controllers = controller_fixtures.controllers
controller = controller_fixtures.controller

T0 = 1_800_000_000_000_000


def ctl(controller: ControllerHandle, timeout: float = 10) -> Client:
    """The controller client of flynn.controller.client (what the CLI uses)."""
    return Client(controller.url, controller.key, timeout=timeout)


def err(call: Any, *args: Any) -> APIError:
    with pytest.raises(APIError) as info:
        call(*args)
    return info.value


# -- sinks -------------------------------------------------------------------------------------------


def test_sinks_are_validated_and_stored_canonically(controller: ControllerHandle) -> None:
    api = controller.client()
    plain = api.post("/sinks", {"kind": "syslog", "url": "syslog://LOGS.Example.com."})
    assert plain["url"] == "syslog://logs.example.com:514"
    assert plain["use_tls"] is False
    tls = api.post("/sinks", {"url": "syslog://10.0.0.5:7000", "use_tls": True})
    assert tls["url"] == "syslog+tls://10.0.0.5:7000"
    assert tls["use_tls"] is True
    v6 = api.post("/sinks", {"url": "syslog+tls://[2001:db8::1]"})
    assert v6["url"] == "syslog+tls://[2001:db8::1]:6514"
    assert {s["id"] for s in api.get("/sinks")} == {plain["id"], tls["id"], v6["id"]}
    for body, field in [
        ({"url": "http://logs.example.com"}, "url"),
        ({"url": "syslog://user:pw@logs.example.com"}, "url"),
        ({"url": "syslog://logs.example.com/path"}, "url"),
        ({"url": "syslog://logs.example.com:99999"}, "url"),
        ({"url": "syslog://bad_host!"}, "url"),
        ({"url": "syslog://a b"}, "url"),
        ({"url": "syslog+tls://h", "use_tls": False}, "use_tls"),
        (
            {"url": "syslog://h", "ca_cert": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----"},
            "ca_cert",
        ),
        (
            {
                "url": "syslog+tls://h",
                "ca_cert": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----",
            },
            "ca_cert",
        ),
        ({"url": "syslog://h", "kind": "gelf"}, "kind"),
        ({"url": "syslog://h", "extra": 1}, "extra"),
        ({}, "url"),
    ]:
        e = err(api.post, "/sinks", body)
        assert e.status == 400, body
        assert field in e.message, (body, e.message)
    dup = err(api.post, "/sinks", {"url": "syslog://logs.example.com:514"})
    assert dup.status == 409
    assert len(api.get("/sinks")) == 3  # nothing was added by the refused requests


def test_sink_events_and_delete(controller: ControllerHandle) -> None:
    api = controller.client()
    sink = api.post("/sinks", {"url": "syslog://logs.example.com"})
    assert api.get(f"/sinks/{sink['id']}")["url"] == sink["url"]
    removed = api.delete(f"/sinks/{sink['id']}")
    assert removed["id"] == sink["id"]
    assert err(api.get, f"/sinks/{sink['id']}").status == 404
    assert err(api.delete, f"/sinks/{sink['id']}").status == 404
    assert err(api.get, "/sinks/not-a-uuid").status == 404
    events = api.get("/events", params={"object_types": "sink", "count": "10"})
    assert [(e["op"], e["object_id"]) for e in events] == [("delete", sink["id"]), ("create", sink["id"])]
    assert events[1]["data"]["url"] == "syslog://logs.example.com:514"


def test_sink_status_comes_from_the_aggregator_leader(controller: ControllerHandle) -> None:
    api = controller.client()
    sink = api.post("/sinks", {"url": "syslog://127.0.0.1:9"})
    agg = controller.cluster.aggregator
    controller.run(agg.sinks.configure([SinkConfig.from_api(sink)]))  # as its SinkSource would
    shipper = agg.sinks.shippers[sink["id"]]
    shipper.delivered, shipper.dropped = 7, 3
    listed = api.get("/sinks")[0]
    assert listed["status"] == {
        "connected": False,
        "delivered": 7,
        "dropped": 3,
        "buffered": 0,
        "error": None,
    }
    assert api.get(f"/sinks/{sink['id']}")["status"]["dropped"] == 3
    agg.leader = False  # no aggregator leads: the status is unknown, the sink still listed
    assert api.get("/sinks")[0]["status"] is None


# -- GET /apps/:app/log ------------------------------------------------------------------------------


def test_app_log_is_proxied_in_order_with_filters(controller: ControllerHandle) -> None:
    api = controller.client()
    app = api.post("/apps", {"name": "logged"})
    agg = controller.cluster.aggregator
    web, worker = f"host1-{uuid.uuid4()}", f"host2-{uuid.uuid4()}"
    for i in range(5):
        controller.run(_add(agg, app["id"], web, f"web {i}", T0 + 2 * i))
        controller.run(_add(agg, app["id"], worker, f"worker {i}", T0 + 2 * i + 1, ptype="worker"))
    lines = list(ctl(controller).app_log("logged"))
    assert [x["msg"] for x in lines][:4] == ["web 0", "worker 0", "web 1", "worker 1"]
    assert len(lines) == 10
    assert lines[0]["timestamp"] == "2027-01-15T08:00:00.000000Z"
    assert [x["msg"] for x in api_log(controller, "logged", lines=2)] == ["web 4", "worker 4"]
    assert [x["msg"] for x in api_log(controller, app["id"], process_type="worker", lines=1)] == ["worker 4"]
    assert len(api_log(controller, "logged", job_id=web)) == 5
    for params, field in [
        ({"lines": "-1"}, "lines"),
        ({"process_type": "Bad"}, "process_type"),
        ({"job_id": "x"}, "job_id"),
    ]:
        e = err(lambda p=params: api.get("/apps/logged/log", params=p))
        assert e.status == 400
        assert field in e.message
    assert err(lambda: api.get("/apps/nope/log")).status == 404


async def _add(agg: Any, app_id: str, job: str, msg: str, ts: int, ptype: str = "web") -> None:
    agg.add(app_id, job, msg, ts=ts, ptype=ptype)


def api_log(controller: ControllerHandle, app: str, **params: Any) -> list[dict[str, Any]]:
    return [dict(x) for x in ctl(controller).app_log(app, **params)]


def test_a_system_apps_log_is_its_platform_services(controller: ControllerHandle) -> None:
    controller.client().post("/apps", {"name": "blobstore", "system": True})
    agg = controller.cluster.aggregator
    line = agg.add("ignored", "host1-blobstore", "blobstore up", ts=T0)
    agg.buffers.apps.clear()
    from dataclasses import replace

    agg.buffers.add(replace(line, app_id=None, app_name="blobstore", system=True, type="service"))
    assert [x["msg"] for x in api_log(controller, "blobstore")] == ["blobstore up"]


def test_follow_streams_through_the_controller(controller: ControllerHandle) -> None:
    app = controller.client().post("/apps", {"name": "followed"})
    agg = controller.cluster.aggregator
    controller.run(_add(agg, app["id"], "host1-a", "first", T0))
    got: list[str] = []

    def read() -> None:
        for x in ctl(controller, timeout=30).app_log("followed", follow=True):
            got.append(x["msg"])
            if len(got) == 3:
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    controller.run(_add(agg, app["id"], "host1-a", "second", T0 + 1))
    controller.run(_add(agg, app["id"], "host2-b", "third", T0 + 2))
    t.join(10)
    print(f"followed lines arrived {time.monotonic() - t0:.3f}s after they were added")
    assert got == ["first", "second", "third"]


def test_no_aggregator_is_a_503(controller: ControllerHandle) -> None:
    controller.client().post("/apps", {"name": "lonely"})
    controller.cluster.discoverd.instances.pop("logaggregator")
    e = err(lambda: list(ctl(controller).app_log("lonely")))
    assert e.status == 503
    assert "no log aggregator" in e.message
    assert controller.client().post("/sinks", {"url": "syslog://h"})["url"] == "syslog://h:514"
    assert controller.client().get("/sinks")[0]["status"] is None


# -- the CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def flynn(tmp_path: Path, controller: ControllerHandle) -> Flynn:
    cli = Flynn(tmp_path)
    cli.ok("cluster", "add", "test", controller.url, controller.key)
    return cli


def test_flynn_log_prints_flynns_format_and_marks_stderr(controller: ControllerHandle, flynn: Flynn) -> None:
    app = controller.client().post("/apps", {"name": "cli-log"})
    agg = controller.cluster.aggregator
    agg.add(app["id"], "host1-j1", "hello", ts=T0)
    agg.add(app["id"], "host2-j2", "oops", ts=T0 + 1, stream="stderr", ptype="worker")
    out = flynn.ok("-a", "cli-log", "log")
    assert out.splitlines() == [
        "2027-01-15T08:00:00.000000Z app[web.host1-j1]: hello",
        "2027-01-15T08:00:00.000001Z app[worker.host2-j2] stderr: oops",
    ]
    assert flynn.ok("-a", "cli-log", "log", "--raw-output").splitlines() == ["hello", "oops"]
    assert flynn.ok("-a", "cli-log", "log", "-n", "1", "-r").splitlines() == ["oops"]
    assert flynn.ok("-a", "cli-log", "log", "-t", "web", "-r").splitlines() == ["hello"]
    assert flynn.ok("-a", "cli-log", "log", "-j", "host2-j2", "-r").splitlines() == ["oops"]
    split = flynn("-a", "cli-log", "log", "-r", "-s")
    assert (split.stdout, split.stderr) == ("hello\n", "oops\n")
    flynn.refused("-a", "cli-log", "log", "-t", "Not A Type", fragment="process_type")
    flynn.refused("-a", "nope", "log", fragment="not found")
    flynn.refused("-a", "cli-log", "log", "-n", "20000", code=2)


def test_flynn_log_follow_until_interrupted(controller: ControllerHandle, flynn: Flynn) -> None:
    app = controller.client().post("/apps", {"name": "cli-follow"})
    agg = controller.cluster.aggregator
    agg.add(app["id"], "host1-j1", "old", ts=T0)
    proc = subprocess.Popen(
        [str(controller_fixtures_flynn()), "-a", "cli-follow", "log", "-f", "-r"],
        env={**_env(flynn)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "old\n"
        controller.run(_add(agg, app["id"], "host1-j1", "new", T0 + 5))
        assert proc.stdout.readline() == "new\n"
        proc.send_signal(2)  # Ctrl-C
        assert proc.wait(10) == 130
        assert proc.stderr is not None
        assert proc.stderr.read() == ""
    finally:
        proc.kill()
        proc.wait()


def test_flynn_log_follow_says_when_the_stream_ends(controller: ControllerHandle, flynn: Flynn) -> None:
    app = controller.client().post("/apps", {"name": "cli-ends"})
    agg = controller.cluster.aggregator
    agg.add(app["id"], "host1-j1", "only", ts=T0)
    proc = subprocess.Popen(
        [str(controller_fixtures_flynn()), "-a", "cli-ends", "log", "-f", "-r"],
        env=_env(flynn),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "only\n"
        runner, agg.runner = agg.runner, None
        assert runner is not None
        controller.run(runner.cleanup())  # the aggregator goes away mid-follow
        assert proc.wait(20) == 1
        assert proc.stderr is not None
        assert proc.stderr.read().strip() == "flynn: the log stream ended; run 'flynn log -f' again"
    finally:
        proc.kill()
        proc.wait()


def controller_fixtures_flynn() -> Path:
    from tests.unit.test_cli_controller import FLYNN

    return FLYNN


def _env(flynn: Flynn) -> dict[str, str]:
    import os

    env = {**os.environ, "FLYNNRC": str(flynn.rc)}
    env.pop("FLYNN_APP", None)
    return env


def test_log_sinks_from_the_cli(controller: ControllerHandle, flynn: Flynn, tmp_path: Path) -> None:
    out = flynn.ok("cluster", "log-sink", "add", "syslog", "--use-tls", "syslog://logs.example.com:6514")
    assert out.startswith("Created sink ")
    assert "syslog+tls://logs.example.com:6514" in out
    sink_id = out.split()[2]
    listing = flynn.ok("cluster", "log-sink").splitlines()
    assert listing[0].split() == ["ID", "KIND", "URL", "DELIVERED", "DROPPED", "BUFFERED", "STATUS"]
    assert listing[1].startswith(sink_id)
    flynn.refused("cluster", "log-sink", "add", "syslog", "http://nope", fragment="url")
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nbad\n-----END CERTIFICATE-----\n")
    flynn.refused(
        "cluster", "log-sink", "add", "syslog", "--ca-cert", str(pem), "syslog+tls://h", fragment="ca_cert"
    )
    flynn.refused("cluster", "log-sink", "add", "gelf", "syslog://h", code=2)
    assert len(controller.client().get("/sinks")) == 1  # the refused ones changed nothing
    assert flynn.ok("cluster", "log-sink", "remove", sink_id).startswith(f"Removed sink {sink_id}")
    flynn.refused("cluster", "log-sink", "remove", sink_id, fragment="not found")
    assert flynn.ok("cluster", "log-sink").splitlines()[1:] == []
