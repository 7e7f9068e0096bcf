"""The real ``flynn`` command (a subprocess of .venv/bin/flynn) against a real controller on a
real PostgreSQL (tests/unit/controller_fixtures.py).

What the fixtures fake is what this machine has no test hosts for: the scheduler (FakeScheduler
reports jobs through the controller's API exactly as the scheduler does) and the hosts' API (the
controller's attach proxy reaches a FakeHost). Every output is checked to never hold the key.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.unit import controller_fixtures
from tests.unit.controller_fixtures import KEY, ControllerHandle

# the fixtures this module uses (a real controller on a throwaway PostgreSQL)
pg_server = controller_fixtures.pg_server
controllers = controller_fixtures.controllers
controller = controller_fixtures.controller

FLYNN = Path(sys.executable).with_name("flynn")


class Flynn:
    """Runs ``flynn`` with its own rc file, outside any git repository."""

    def __init__(self, tmp: Path, key: str = KEY) -> None:
        self.rc = tmp / "flynnrc"
        self.cwd = tmp / "work"
        self.cwd.mkdir(exist_ok=True)
        self.key = key

    def __call__(
        self, *args: str, stdin: str | None = None, timeout: float = 60, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FLYNNRC": str(self.rc)}
        for name in ("FLYNN_APP", "FLYNN_CLUSTER"):
            env.pop(name, None)
        out = subprocess.run(
            [str(FLYNN), *args],
            env=env,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=cwd or self.cwd,
        )
        assert self.key not in out.stdout
        assert self.key not in out.stderr
        return out

    def ok(self, *args: str, **kw: Any) -> str:
        out = self(*args, **kw)
        assert out.returncode == 0, f"flynn {' '.join(args)}: exit {out.returncode}: {out.stderr}{out.stdout}"
        return out.stdout

    def refused(self, *args: str, fragment: str = "", code: int = 1, **kw: Any) -> str:
        out = self(*args, **kw)
        assert out.returncode == code, f"flynn {' '.join(args)}: exit {out.returncode}: {out.stdout}"
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert lines[0].startswith("flynn: "), out.stderr
        assert fragment in lines[0], out.stderr
        return lines[0]


@pytest.fixture
def flynn(tmp_path: Path, controller: ControllerHandle) -> Flynn:
    cli = Flynn(tmp_path)
    cli.ok("cluster", "add", "test", controller.url, KEY)
    return cli


def current_release(controller: ControllerHandle, app: str) -> dict[str, Any]:
    return dict(controller.client().get(f"/apps/{app}/release"))


def app_with_release(controller: ControllerHandle, name: str, **kw: Any) -> dict[str, Any]:
    controller.client().post("/apps", {"name": name})
    release = controller.make_release(name, **kw)
    controller.client().put(f"/apps/{name}/release", {"id": release["id"]})
    return release


# -- clusters --------------------------------------------------------------------------------------


def test_cluster_add_checks_the_key_before_saving(tmp_path: Path, controller: ControllerHandle) -> None:
    cli = Flynn(tmp_path)
    line = cli.refused(
        "cluster", "add", "test", controller.url, "wrong-key-0123456789", fragment="rejected the key"
    )
    assert "nothing was saved" in line
    assert not cli.rc.exists()
    cli.refused("cluster", "add", "test", "http://127.0.0.1:1", KEY, fragment="cannot reach")
    assert not cli.rc.exists()

    out = cli.ok("cluster", "add", "test", controller.url, KEY)
    assert "added and set as default" in out
    data = tomllib.loads(cli.rc.read_text())
    assert data["default"] == "test"
    assert data["cluster"] == [
        {
            "Name": "test",
            "Key": KEY,
            "TLSPin": "",
            "ControllerURL": controller.url,
            "GitURL": "",
            "DockerPushURL": "",
        }
    ]
    assert stat.S_IMODE(cli.rc.stat().st_mode) == 0o600
    before = cli.rc.read_bytes()
    cli.refused("cluster", "add", "test", controller.url, KEY, fragment="already exists")
    cli.refused("cluster", "add", "-f", "test", controller.url, "wrong-key-0123456789", fragment="rejected")
    assert cli.rc.read_bytes() == before  # a failed replace keeps the old entry
    cli.ok("cluster", "add", "-f", "-d", "test", controller.url, "-", stdin=KEY + "\n")  # key from stdin
    assert tomllib.loads(cli.rc.read_text())["cluster"][0]["Key"] == KEY
    listed = cli.ok("cluster")
    assert "test" in listed
    assert controller.url in listed


# -- apps ------------------------------------------------------------------------------------------


def test_create_apps_info_delete(flynn: Flynn, controller: ControllerHandle) -> None:
    assert flynn.ok("create", "web1").strip() == "Created web1"
    generated = flynn.ok("create").strip().removeprefix("Created ")
    assert generated
    flynn.refused("create", "web1", fragment="web1")  # name taken (409)
    flynn.refused("create", "Bad_Name", fragment="name")

    table = flynn.ok("apps").splitlines()
    assert table[0].split() == ["ID", "NAME"]
    names = {line.split()[1] for line in table[1:]}
    assert {"web1", generated} <= names
    listed = json.loads(flynn.ok("apps", "--json"))
    app = next(a for a in listed if a["name"] == "web1")

    info = flynn.ok("-a", "web1", "info").splitlines()
    assert info[0] == "=== web1"
    assert f"ID:       {app['id']}" in info
    assert "Release:  (none)" in info
    assert flynn.ok("info", "-a", app["id"]).splitlines()[0] == "=== web1"  # after the command, by id

    flynn.refused("-a", "nosuchapp", "info", fragment="not found")
    flynn.refused("-a", "web1", "delete", fragment="confirm by typing its name")
    flynn.refused("-a", "web1", "delete", stdin="other\n", fragment="confirm by typing its name")
    assert controller.client().get("/apps/web1")["name"] == "web1"  # still there
    assert flynn.ok("-a", "web1", "delete", stdin="web1\n").strip().endswith("Deleted web1")
    flynn.ok("-a", generated, "delete", "-y")
    remaining = {a["name"] for a in controller.client().get("/apps")}
    assert "web1" not in remaining
    assert generated not in remaining


def test_app_from_the_git_remote(tmp_path: Path, controller: ControllerHandle) -> None:
    cli = Flynn(tmp_path)
    cli.ok("cluster", "add", "--git-url", "https://git.test.example", "test", controller.url, KEY)
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    out = cli.ok("create", "gitapp", cwd=repo)
    assert "Added git remote flynn (https://git.test.example/gitapp.git)" in out
    remote = subprocess.run(
        ["git", "-C", str(repo), "remote", "get-url", "flynn"], capture_output=True, text=True, check=True
    )
    assert remote.stdout.strip() == "https://git.test.example/gitapp.git"
    assert cli.ok("info", cwd=repo).splitlines()[0] == "=== gitapp"  # no -a: the remote names it
    assert "Git URL:  https://git.test.example/gitapp.git" in cli.ok("info", cwd=repo)
    cli.refused("info", fragment="no app given")  # outside the repo: no app

    before = len(controller.client().get("/apps"))
    cli.refused("create", "second", cwd=repo, fragment="already a git remote called flynn")
    assert len(controller.client().get("/apps")) == before  # refused before creating anything
    cli.ok("create", "second", "-r", "staging", cwd=repo)
    assert cli.ok("-a", "staging", "info", cwd=repo).splitlines()[0] == "=== second"  # -a REMOTE, as Flynn

    assert "removed git remote flynn" in cli.ok("delete", "-y", cwd=repo)
    gone = subprocess.run(["git", "-C", str(repo), "remote"], capture_output=True, text=True, check=True)
    assert gone.stdout.split() == ["staging"]


# -- env -------------------------------------------------------------------------------------------


def test_env_set_get_unset(flynn: Flynn, controller: ControllerHandle) -> None:
    app_with_release(controller, "envapp", processes={"web": ["python3", "app.py"], "worker": ["w"]})
    out = flynn.ok("-a", "envapp", "env", "set", "FOO=bar", "EQ=a=b")
    assert out.startswith("Created release ")
    assert "Deployed release" in out
    release = current_release(controller, "envapp")
    assert release["env"] == {"FOO": "bar", "EQ": "a=b"}
    assert out.splitlines()[0] == f"Created release {release['id']}"
    assert flynn.ok("-a", "envapp", "env", "get", "FOO") == "bar\n"
    assert flynn.ok("-a", "envapp", "env").splitlines() == ["EQ=a=b", "FOO=bar"]
    assert json.loads(flynn.ok("env", "--json", "-a", "envapp")) == {"EQ": "a=b", "FOO": "bar"}

    flynn.ok("-a", "envapp", "env", "set", "-t", "web", "ONLYWEB=1")
    release = current_release(controller, "envapp")
    assert release["processes"]["web"]["env"] == {"ONLYWEB": "1"}
    assert release["processes"]["worker"].get("env", {}) == {}
    assert "ONLYWEB" not in release["env"]
    assert flynn.ok("-a", "envapp", "env", "get", "-t", "web", "ONLYWEB") == "1\n"
    assert flynn.ok("-a", "envapp", "env", "-t", "web") == "ONLYWEB=1\n"
    assert flynn.ok("-a", "envapp", "env", "-t", "web", "get", "ONLYWEB") == "1\n"  # -t before the subcommand
    flynn.refused("-a", "envapp", "env", "get", "ONLYWEB", fragment="ONLYWEB is not set")

    flynn.ok("-a", "envapp", "env", "unset", "FOO")
    assert current_release(controller, "envapp")["env"] == {"EQ": "a=b"}
    flynn.ok("-a", "envapp", "env", "unset", "-t", "web", "ONLYWEB")
    assert current_release(controller, "envapp")["processes"]["web"].get("env", {}) == {}

    # bad input: one line, exit 1, no new release
    unchanged = current_release(controller, "envapp")["id"]
    flynn.refused("-a", "envapp", "env", "set", "FOO", fragment="'FOO' is not KEY=VALUE")
    flynn.refused("-a", "envapp", "env", "set", "A=1", "BAD NAME=x", fragment="BAD NAME")
    flynn.refused("-a", "envapp", "env", "unset", "NOPE", fragment="NOPE is not set")
    flynn.refused("-a", "envapp", "env", "set", "-t", "db", "A=1", fragment="no process type 'db'")
    flynn.refused("-a", "nosuchapp", "env", "set", "A=1", fragment="not found")
    flynn.refused("-a", "envapp", "env", "set", code=2, fragment="Missing argument")
    assert current_release(controller, "envapp")["id"] == unchanged
    assert len(controller.client().get("/apps/envapp/releases")) == 5


def test_env_set_deploys_and_prints_the_steps(flynn: Flynn, controller: ControllerHandle) -> None:
    release = app_with_release(controller, "deployed", processes={"web": ["srv"]})
    controller.client().put(f"/apps/deployed/formations/{release['id']}", {"processes": {"web": 2}})
    controller.scheduler.start()
    out = flynn.ok("-a", "deployed", "env", "set", "V=2", timeout=90)
    new = current_release(controller, "deployed")
    assert new["env"] == {"V": "2"}
    lines = out.splitlines()
    assert lines[0] == f"Created release {new['id']}"
    assert any(" ==> web host1-" in line and line.endswith(" up") for line in lines), out
    assert lines[-1] == f"Deployed release {new['id']}"
    assert controller.client().get(f"/apps/deployed/formations/{new['id']}")["processes"] == {"web": 2}


def test_failed_deployment_exits_1(flynn: Flynn, controller: ControllerHandle) -> None:
    release = app_with_release(controller, "crashy", processes={"web": ["srv"]})
    controller.client().post("/apps/crashy", {"deploy_timeout": 5})
    controller.client().put(f"/apps/crashy/formations/{release['id']}", {"processes": {"web": 1}})
    controller.scheduler.start()
    controller.wait_for("the web job", lambda: controller.client().get("/apps/crashy/jobs"))
    # the scheduler reports every job of a release other than the first one as crashed
    stop = threading.Event()

    def crash_new_releases() -> None:
        while not stop.is_set():
            for r in controller.client().get("/apps/crashy/releases"):
                if r["id"] != release["id"]:
                    controller.scheduler.crash_releases.add(r["id"])
            stop.wait(0.02)

    thread = threading.Thread(target=crash_new_releases, daemon=True)
    thread.start()
    try:
        line = flynn.refused("-a", "crashy", "env", "set", "BROKEN=1", fragment="failed", timeout=90)
    finally:
        stop.set()
        thread.join()
    assert "deployment of release" in line
    assert current_release(controller, "crashy")["id"] == release["id"]  # the old release stays


# -- meta ------------------------------------------------------------------------------------------


def test_meta(flynn: Flynn, controller: ControllerHandle) -> None:
    controller.client().post("/apps", {"name": "metaapp"})
    flynn.ok("-a", "metaapp", "meta", "set", "owner=ops", "tier=gold")
    assert controller.client().get("/apps/metaapp/meta") == {"owner": "ops", "tier": "gold"}
    table = flynn.ok("-a", "metaapp", "meta").splitlines()
    assert table == ["KEY    VALUE", "owner  ops", "tier   gold"]
    assert json.loads(flynn.ok("-a", "metaapp", "meta", "--json")) == {"owner": "ops", "tier": "gold"}
    flynn.ok("-a", "metaapp", "meta", "unset", "tier")
    assert controller.client().get("/apps/metaapp/meta") == {"owner": "ops"}
    flynn.refused("-a", "metaapp", "meta", "unset", "tier", fragment="tier is not set")
    flynn.refused("-a", "metaapp", "meta", "set", "novalue", fragment="is not KEY=VALUE")
    flynn.refused("-a", "metaapp", "meta", "set", "bad key!=1", fragment="")
    assert controller.client().get("/apps/metaapp/meta") == {"owner": "ops"}


# -- limits ----------------------------------------------------------------------------------------


def test_limit_set_makes_a_release_with_the_resources(flynn: Flynn, controller: ControllerHandle) -> None:
    app_with_release(controller, "limited", processes={"web": ["srv"], "worker": ["w"]})
    out = flynn.ok("-a", "limited", "limit", "set", "web", "memory=256MB", "cpu=1500")
    assert out.startswith("Created release ")
    release = current_release(controller, "limited")
    assert release["processes"]["web"]["resources"]["memory"]["limit"] == 268435456
    assert release["processes"]["web"]["resources"]["cpu"]["limit"] == 1500
    listing = flynn.ok("-a", "limited", "limit").splitlines()
    assert listing[0] == "web:     cpu=1500  memory=256MB"
    assert listing[1].startswith("worker:  ")
    assert "memory=1GB" in listing[1]  # the controller's default, Flynn's
    only_web = flynn.ok("-a", "limited", "limit", "-t", "web").splitlines()
    assert only_web == ["web:  cpu=1500  memory=256MB"]
    flynn.ok("-a", "limited", "limit", "set", "worker", "memory=1.5GB")
    assert (
        current_release(controller, "limited")["processes"]["worker"]["resources"]["memory"]["limit"]
        == 3 << 29
    )

    unchanged = current_release(controller, "limited")["id"]
    flynn.refused("-a", "limited", "limit", "set", "web", "memory=lots", fragment="invalid memory limit")
    flynn.refused("-a", "limited", "limit", "set", "web", "cpu=0", fragment="invalid cpu limit")
    flynn.refused("-a", "limited", "limit", "set", "web", "disk=1GB", fragment="unknown resource")
    flynn.refused("-a", "limited", "limit", "set", "web", "memory", fragment="is not RESOURCE=VALUE")
    flynn.refused("-a", "limited", "limit", "set", "db", "memory=1GB", fragment="no process type 'db'")
    assert current_release(controller, "limited")["id"] == unchanged


# -- releases --------------------------------------------------------------------------------------


def test_release_add_show_list_rollback(flynn: Flynn, controller: ControllerHandle, tmp_path: Path) -> None:
    controller.client().post("/apps", {"name": "rel"})
    spec = tmp_path / "release.json"
    spec.write_text(
        json.dumps({"processes": {"web": {"args": ["python3", "/app/app.py"]}}, "env": {"A": "1"}})
    )
    out = flynn.ok("-a", "rel", "release", "add", "-f", str(spec), "https://example.com/one.tgz")
    first = current_release(controller, "rel")
    assert out.splitlines()[0] == f"Created release {first['id']}"
    assert first["processes"]["web"]["args"] == ["python3", "/app/app.py"]
    assert first["env"] == {"A": "1"}
    artifact = controller.client().get(f"/artifacts/{first['artifacts'][0]}")
    assert (artifact["type"], artifact["uri"]) == ("tarball", "https://example.com/one.tgz")

    procfile = tmp_path / "Procfile"
    procfile.write_text("# comment\nweb: ./server --port $PORT\nworker: ./work\n")
    flynn.ok("-a", "rel", "release", "add", "--procfile", str(procfile), "https://example.com/two.tgz")
    second = current_release(controller, "rel")
    assert second["processes"]["web"]["args"] == ["/bin/sh", "-c", "./server --port $PORT"]
    assert set(second["processes"]) == {"web", "worker"}
    assert second["env"] == {"A": "1"}  # copied from the current release

    shown = json.loads(flynn.ok("-a", "rel", "release", "show", "--json"))
    assert shown["id"] == second["id"]
    human = flynn.ok("-a", "rel", "release", "show", first["id"])
    fields = [line.split(None, 1) for line in human.splitlines()]
    assert ["ID:", first["id"]] in fields
    assert ["ENV[A]:", "1"] in fields
    assert "https://example.com/one.tgz" in human
    listed = flynn.ok("-a", "rel", "release").splitlines()
    assert listed[1].startswith(second["id"])
    assert listed[1].endswith("(current)")
    assert listed[2].startswith(first["id"])
    assert [r["id"] for r in json.loads(flynn.ok("-a", "rel", "release", "--json"))] == [
        second["id"],
        first["id"],
    ]

    flynn.refused("-a", "rel", "release", "rollback", fragment="confirm with y")
    assert current_release(controller, "rel")["id"] == second["id"]
    flynn.ok("-a", "rel", "release", "rollback", stdin="y\n")
    assert current_release(controller, "rel")["id"] == first["id"]
    flynn.ok("-a", "rel", "release", "rollback", "-y", second["id"])
    assert current_release(controller, "rel")["id"] == second["id"]

    bad = tmp_path / "bad.json"
    for content, fragment in [
        ("{oops", "invalid JSON"),
        ('{"web": {"args": ["x"]}}', 'expected a JSON object with "processes"'),
        ('{"processes": {"web": {"args": []}}}', "args"),
    ]:
        bad.write_text(content)
        flynn.refused(
            "-a", "rel", "release", "add", "-f", str(bad), "https://example.com/x.tgz", fragment=fragment
        )
    flynn.refused(
        "-a", "rel", "release", "add", "-f", str(spec), "ftp://example.com/x", fragment="invalid artifact URI"
    )
    flynn.refused("-a", "rel", "release", "rollback", "-y", "not-a-release", fragment="")
    assert current_release(controller, "rel")["id"] == second["id"]
    assert len(controller.client().get("/apps/rel/releases")) == 2


# -- scale, ps, kill -------------------------------------------------------------------------------


def test_scale_writes_the_formation_and_waits(flynn: Flynn, controller: ControllerHandle) -> None:
    release = app_with_release(controller, "scaled", processes={"web": ["srv"], "worker": ["w"]})
    assert flynn.ok("-a", "scaled", "scale").strip() == "web=0 worker=0"
    controller.scheduler.start()
    out = flynn.ok("-a", "scaled", "scale", "web=2", timeout=90)
    assert out.splitlines()[0] == "scaling web: 0=>2"
    ups = [line for line in out.splitlines() if "==> web host1-" in line and line.endswith(" up")]
    assert len(ups) == 2, out
    assert "scale completed in" in out
    formation = controller.client().get(f"/apps/scaled/formations/{release['id']}")
    assert formation["processes"] == {"web": 2}
    assert flynn.ok("-a", "scaled", "scale").strip() == "web=2 worker=0"

    # merged with what is there; scale down waits for the jobs to go down
    out = flynn.ok("-a", "scaled", "scale", "web=1", "worker=1", timeout=90)
    assert out.splitlines()[0] == "scaling web: 2=>1, worker: 0=>1"
    assert any(line.endswith(" down") for line in out.splitlines()), out
    assert controller.client().get(f"/apps/scaled/formations/{release['id']}")["processes"] == {
        "web": 1,
        "worker": 1,
    }
    up = [j for j in controller.client().get("/apps/scaled/jobs") if j["state"] == "up"]
    assert sorted(j["type"] for j in up) == ["web", "worker"]

    # -n: the formation is written, nothing is waited for
    controller.scheduler.stop()
    assert flynn.ok("-a", "scaled", "scale", "-n", "worker=3").strip() == "scaling worker: 1=>3"
    formation = controller.client().get(f"/apps/scaled/formations/{release['id']}")
    assert formation["processes"] == {"web": 1, "worker": 3}


def test_scale_failures(flynn: Flynn, controller: ControllerHandle) -> None:
    release = app_with_release(controller, "stuck", processes={"web": ["srv"]})
    controller.scheduler.hold_releases.add(release["id"])
    controller.scheduler.start()
    flynn.refused(
        "-a", "stuck", "scale", "--timeout", "2", "web=1", fragment="timed out after 2s waiting for the jobs"
    )
    controller.scheduler.hold_releases.clear()
    controller.scheduler.crash_releases.add(release["id"])
    line = flynn.refused("-a", "stuck", "scale", "web=2", fragment="crashed", timeout=90)
    assert line.startswith("flynn: job host1-")

    before = controller.client().get(f"/apps/stuck/formations/{release['id']}")["processes"]
    for args, fragment in [
        (("web=-1",), "invalid count '-1' for web"),
        (("FOO",), "'FOO' is not TYPE=COUNT"),
        (("db=1",), "no process type 'db'"),
        (("web=1", "web=2"), "given twice"),
    ]:
        flynn.refused("-a", "stuck", "scale", *args, fragment=fragment)
    flynn.refused(
        "-a", "stuck", "scale", "-r", "00000000-0000-4000-8000-000000000000", "web=1", fragment="not found"
    )
    assert controller.client().get(f"/apps/stuck/formations/{release['id']}")["processes"] == before
    controller.client().post("/apps", {"name": "norelease"})
    flynn.refused("-a", "norelease", "scale", "web=1", fragment="has no release yet")


def test_ps_and_kill(flynn: Flynn, controller: ControllerHandle) -> None:
    release = app_with_release(controller, "jobs", processes={"web": ["python3", "app.py"]})
    controller.client().put(f"/apps/jobs/formations/{release['id']}", {"processes": {"web": 2}})
    controller.scheduler.start()

    def two_up() -> list[dict[str, Any]] | None:
        up = [j for j in controller.client().get("/apps/jobs/jobs") if j["state"] == "up"]
        return up if len(up) == 2 else None

    jobs = controller.wait_for("two web jobs up", two_up)
    table = flynn.ok("-a", "jobs", "ps").splitlines()
    assert table[0].split() == ["ID", "TYPE", "STATE", "CREATED", "RELEASE", "COMMAND"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert set(rows) == {j["id"] for j in jobs}
    for line in rows.values():
        assert " web " in line
        assert " up " in line
        assert release["id"] in line
        assert "ago" in line
    listed = json.loads(flynn.ok("ps", "--app", "jobs", "--json"))
    assert {j["id"] for j in listed} == {j["id"] for j in jobs}

    victim = jobs[0]["id"]
    assert flynn.ok("-a", "jobs", "kill", victim).strip() == f"Job {victim} killed."
    state = controller.client().get(f"/apps/jobs/jobs/{victim}")["state"]
    assert state in ("stopping", "down")
    flynn.refused("-a", "jobs", "kill", "host1-00000000-0000-4000-8000-000000000000", fragment="not found")
    assert len(json.loads(flynn.ok("-a", "jobs", "ps", "-a", "--json"))) >= 2


# -- run (through the controller's attach proxy to a fake host) ------------------------------------


def test_run_attached_through_the_controller(flynn: Flynn, controller: ControllerHandle) -> None:
    app_with_release(controller, "runner", processes={"web": ["srv"]})
    out = flynn("-a", "runner", "run", "--", "cat", stdin="hello\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello\n"  # the fake host echoes stdin on stdout
    assert out.stderr == "attached\n"  # and says hello on stderr
    attached = [j for h in controller.hosts.values() for j in h.attached]
    assert len(attached) == 1
    configs = {j: c for h in controller.hosts.values() for j, c in h.configs.items()}
    assert configs[attached[0]]["args"] == ["cat"]
    assert configs[attached[0]]["attach"] is True

    job_id = flynn.ok("-a", "runner", "run", "-d", "--", "sleep", "1").strip()
    configs = {j: c for h in controller.hosts.values() for j, c in h.configs.items()}
    assert configs[job_id]["attach"] is False
    assert configs[job_id]["args"] == ["sleep", "1"]

    controller.client().post("/apps", {"name": "empty"})
    flynn.refused("-a", "empty", "run", "true", fragment="has no release")


# -- unreachable -----------------------------------------------------------------------------------


def test_unreachable_controller(tmp_path: Path, controller: ControllerHandle) -> None:
    cli = Flynn(tmp_path)
    cli.ok("cluster", "add", "test", controller.url, KEY)
    controller.stop()
    cli.refused("apps", fragment=f"cannot reach {controller.url}")
