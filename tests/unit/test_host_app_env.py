"""System app env overlays: ``/etc/flynn/NAME.app.env`` written through the host API, the unit
restarted only when a variable that is not live changed its effective value; env files read back."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flynn.common.envfile import digest, parse_env, render_env
from tests.unit.test_host_jobs_api import Env, _client


@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True),
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0\r")),
        max_size=8,
    )
)
def test_env_files_read_back_what_was_written(env: dict[str, str]) -> None:
    assert parse_env(render_env(env)) == env
    assert digest(env) == digest(dict(reversed(list(env.items()))))


def test_parse_env_refuses_other_forms() -> None:
    for text in ("A=unquoted\n", 'A="open\n', "not a line\n", 'A="x"'):
        with pytest.raises(ValueError, match="NAME"):
            parse_env(text)


@pytest.fixture
async def env(tmp_path: Path) -> Env:
    e = Env(tmp_path)
    e.systemd.installed.add("flynn-scheduler.service")
    e.systemd.installed.add("flynn-controller.service")
    return e


async def test_overlay_restarts_only_for_changed_non_live_values(
    aiohttp_client: Any, env: Env, tmp_path: Path
) -> None:
    client = await _client(aiohttp_client, env)
    resp = await client.put("/host/platform/scheduler", json={"env": {"CONTROLLER_KEY": "old", "X": "1"}})
    assert resp.status == 200
    assert env.systemd.restarted == ["flynn-scheduler.service"]
    # the same value as the base env: written, but nothing to restart for
    resp = await client.put("/host/platform/scheduler/app-env", json={"env": {"CONTROLLER_KEY": "old"}})
    body = await resp.json()
    assert resp.status == 200, body
    assert (body["changed"], body["restarted"]) == ([], False)
    path = tmp_path / "etc/scheduler.app.env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert parse_env(path.read_text()) == {"CONTROLLER_KEY": "old"}
    # a new key: restarted once, answered with a digest and names but never the values
    resp = await client.put("/host/platform/scheduler/app-env", json={"env": {"CONTROLLER_KEY": "new"}})
    body = await resp.json()
    assert (body["changed"], body["restarted"], body["result"]) == (["CONTROLLER_KEY"], True, "done")
    assert env.systemd.restarted == ["flynn-scheduler.service"] * 2
    assert "new" not in str(body)
    got = await (await client.get("/host/platform/scheduler/app-env")).json()
    assert got == {
        "name": "scheduler",
        "sha256": digest({"CONTROLLER_KEY": "new"}),
        "keys": ["CONTROLLER_KEY"],
    }


async def test_live_variables_and_stopped_units_need_no_restart(aiohttp_client: Any, env: Env) -> None:
    client = await _client(aiohttp_client, env)
    await client.put("/host/platform/controller", json={"env": {"AUTH_KEY": "a"}})
    body = {"env": {"AUTH_KEY": "b,a"}, "live": ["AUTH_KEY"]}
    resp = await client.put("/host/platform/controller/app-env", json=body)
    answer = await resp.json()
    assert (answer["changed"], answer["restarted"]) == (["AUTH_KEY"], False)
    assert env.systemd.restarted == ["flynn-controller.service"]  # only bootstrap's start
    # a service that does not run on this host gets the file, and is not started
    env.systemd.units.pop("flynn-scheduler.service", None)
    resp = await client.put("/host/platform/scheduler/app-env", json={"env": {"CONTROLLER_KEY": "k"}})
    assert (await resp.json())["restarted"] is False
    assert "flynn-scheduler.service" not in env.systemd.restarted


async def test_bad_app_env_requests_change_nothing(aiohttp_client: Any, env: Env, tmp_path: Path) -> None:
    client = await _client(aiohttp_client, env)
    for name, body, status in [
        ("nosuch", {"env": {}}, 404),
        ("scheduler", {"env": {"BAD NAME": "x"}}, 400),
        ("scheduler", {"env": {"A": 1}}, 400),
        ("scheduler", {"env": {}, "live": "AUTH_KEY"}, 400),
        ("scheduler", {"env": {}, "other": 1}, 400),
        ("scheduler", [], 400),
    ]:
        resp = await client.put(f"/host/platform/{name}/app-env", json=body)
        assert resp.status == status, (name, body, await resp.text())
        assert "error" in await resp.json()
    assert not (tmp_path / "etc/scheduler.app.env").exists()
    assert (await client.get("/host/platform/nosuch/app-env")).status == 404
