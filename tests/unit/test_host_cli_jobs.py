"""`flynn-host ps/log/stop/inspect` against the jobs API served over HTTP (fake systemd behind)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flynn.host.api import make_app
from flynn.host.cli import _age, main
from flynn.host.identity import HostIdentity
from flynn.host.jobs.spec import parse_job
from tests.unit.host_fakes import FakeLogs, FakeSystemd, make_manager, wait_state


@pytest.fixture
async def served(aiohttp_server: Any, tmp_path: Path) -> Any:
    systemd = FakeSystemd()
    manager = make_manager(tmp_path, backend=systemd)
    logs = FakeLogs()
    server = await aiohttp_server(
        make_app(HostIdentity("host1", 1.0), build_file=tmp_path / "B", jobs=manager, logs=logs)
    )
    return ["--host", server.host, "--port", str(server.port)], manager, systemd, logs


async def cli(*args: str) -> Any:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


def test_age() -> None:
    assert _age(None) == "-"
    assert _age("1970-01-01T00:00:10.000Z", now=15) == "5s ago"
    assert _age("1970-01-01T00:00:00.000Z", now=7200) == "2h ago"
    assert _age("1970-01-01T00:00:00.000Z", now=3 * 86400 + 5) == "3d ago"


async def test_ps_lists_running_jobs_and_with_a_the_finished(served: Any) -> None:
    where, manager, systemd, _ = served
    await manager.create(
        parse_job({"args": ["sleep", "1"], "app_name": "myapp", "type": "web"}, "host1", "host1-up")
    )
    await manager.create(parse_job({"args": ["sleep", "1"]}, "host1", "host1-crash"))
    await wait_state(manager, "host1-crash", "up")
    systemd.exit("flynn-job-host1-crash.service", 3)
    await wait_state(manager, "host1-crash", "crashed")
    res = await cli("ps", *where)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["JOB", "ID", "APP", "TYPE", "STATE", "STARTED"]
    assert lines[1].split()[:4] == ["host1-up", "myapp", "web", "up"]
    assert "host1-crash" not in res.output
    res = await cli("ps", "-a", *where)
    assert "host1-crash" in res.output
    assert "crashed (3)" in res.output
    res = await cli("ps", "--json", *where)
    assert [j["id"] for j in json.loads(res.output)] == ["host1-up"]


async def test_inspect_stop_and_log(served: Any) -> None:
    where, manager, _, logs = served
    await manager.create(
        parse_job({"args": ["sleep", "1"], "env": {"SECRET": "hunter2"}}, "host1", "host1-j")
    )
    await wait_state(manager, "host1-j", "up")
    res = await cli("inspect", *where, "host1-j")
    assert res.exit_code == 0
    assert "STATE        up" in res.output
    assert "UNIT         flynn-job-host1-j.service" in res.output
    assert "hunter2" not in res.output
    logs.lines_by_job["host1-j"] = ["first", "second"]
    res = await cli("log", *where, "-n", "1", "host1-j")
    assert res.exit_code == 0
    assert res.output == "second\n"
    res = await cli("stop", *where, "host1-j")
    assert res.exit_code == 0
    assert res.output.strip() == "host1-j stopping"
    await wait_state(manager, "host1-j", "down")


async def test_errors_are_one_line_and_exit_1(served: Any) -> None:
    where, *_ = served
    for args in (
        ("inspect", *where, "host1-nope"),
        ("stop", *where, "host1-nope"),
        ("log", *where, "host1-nope"),
    ):
        res = await cli(*args)
        assert res.exit_code == 1, args
        assert res.output.startswith("flynn-host: no job 'host1-nope' on this host (HTTP 404)")
        assert res.output.count("\n") == 1
    res = await cli("ps", "--port", "1")
    assert res.exit_code == 1
    assert "cannot reach http://127.0.0.1:1" in res.output
