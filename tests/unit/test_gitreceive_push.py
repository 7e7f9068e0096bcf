"""git push into gitreceive, end to end on one machine: the real git client, gitreceive's routes
with the real ``git http-backend`` and hooks, the real controller (PostgreSQL) with its fake
scheduler, the real blobstore, and a build host running the real flynn-slugbuilder
(tests/unit/gitreceive_fakes.py). The cluster version is tests/integration/test_gitpush.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flynn.cli.rcfile import Cluster, RcFile
from tests.unit.gitreceive_fakes import (
    Blobstore,
    BuildHost,
    Gitreceive,
    commit,
    git,
    git_env,
    make_repo,
)

if TYPE_CHECKING:
    from tests.pg import PostgresServer
    from tests.unit.controller_fixtures import ControllerHandle

pytest_plugins = ("tests.unit.controller_fixtures",)

APP_FILES = {"Procfile": "web: python3 -m http.server $PORT\n", "index.html": "<h1>v1</h1>\n"}
SSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key-but-secret\n-----END OPENSSH PRIVATE KEY-----\n"
)
SLOW_BUILDPACK = {
    ".buildpacks": "./bp\n",
    "bp/bin/detect": "#!/bin/sh\necho slow\n",
    "bp/bin/compile": '#!/bin/sh\necho compiling\nsleep 600 &\necho "sleeper $!"\nwait\n',
    "bp/bin/release": "#!/bin/sh\necho '---'\n",
}


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Stack:
    controller: ControllerHandle
    host: BuildHost
    blobs: Blobstore
    gr: Gitreceive
    work: Path

    def api(self) -> Any:
        return self.controller.client()

    def app(self, name: str) -> dict[str, Any]:
        return dict(self.api().get(f"/apps/{name}"))

    def releases(self, name: str) -> list[dict[str, Any]]:
        return list(self.api().get(f"/apps/{name}/releases"))

    async def push(self, repo: Path, *refspec: str, key: str | None = None, app: str = "web1") -> Any:
        remote = self.gr.remote(app, self.controller.key if key is None else key)
        return await git(repo, "push", remote, *(refspec or ("main",)))


@pytest.fixture
async def stack(
    controller: ControllerHandle, pg_server: PostgresServer, tmp_path: Path
) -> AsyncIterator[Stack]:
    host = await BuildHost(work=tmp_path / "buildhost").start()
    controller.cluster.discoverd.instances["flynn-host"] = {host.id: host.instance()}
    blobs = await Blobstore(pg_server).start()
    env = {
        "CONTROLLER_KEY": controller.key,
        "CONTROLLER_URL": controller.url,
        "BLOBSTORE_URL": blobs.url,
        "DISCOVERD": controller.cluster.discoverd.url,
        "SLUGBUILDER_DEFAULT_MEMORY_LIMIT": "2GB",
        "BUILD_ENV_PIP_INDEX_URL": "http://127.0.0.1:9/simple/",
        "SSH_CLIENT_KEY": SSH_KEY,
        "SSH_CLIENT_HOSTS": "git.example ssh-ed25519 AAAAC3Nz",
    }
    gr = await Gitreceive(tmp_path / "gitreceive", env).start()
    controller.scheduler.start()
    controller.client().post("/apps", {"name": "web1"})
    try:
        yield Stack(controller, host, blobs, gr, tmp_path)
    finally:
        await gr.stop()
        await host.stop()
        await blobs.stop()


async def test_first_push_builds_creates_a_release_and_scales_web(stack: Stack) -> None:
    rev = await make_repo(stack.work / "src", APP_FILES)
    res = await stack.push(stack.work / "src")
    print(res.out)
    assert res.rc == 0, res.out
    lines = res.remote_lines()
    assert f"-----> Building web1 (commit {rev[:7]} on main)" in lines
    assert "-----> Static app detected" in lines, res.out  # the build's own output, relayed
    assert not any(line.startswith("FLYNN-SLUG") for line in lines)  # parsed, not shown
    assert any(line.startswith("=====> Application web1 deployed (web scaled to 1)") for line in lines), (
        res.out
    )
    assert SSH_KEY.splitlines()[1] not in res.out  # secrets never shown
    # the release: the slug as artifact, processes through .flynn/run, meta of the push
    app = stack.app("web1")
    release = stack.api().get(f"/releases/{app['release_id']}")
    assert release["meta"] == {"git": "true", "branch": "main", "rev": rev}
    assert release["processes"]["web"]["args"] == ["/app/.flynn/run", "python3 -m http.server $PORT"]
    artifact = stack.api().get(f"/artifacts/{release['artifacts'][0]}")
    assert artifact["uri"] == f"{stack.blobs.url}/slugs/web1/{release['id']}.tgz"
    slug = await stack.blobs.read(f"/slugs/web1/{release['id']}.tgz")
    import hashlib

    assert artifact["sha256"] == hashlib.sha256(slug).hexdigest()
    assert artifact["size"] == len(slug)
    formation = stack.api().get(f"/apps/web1/formations/{release['id']}")
    assert formation["processes"] == {"web": 1}
    # the build job as gitreceive started it
    (job,) = stack.host.jobs.values()
    cfg = job.config
    assert cfg["app_mode"] == "build"
    assert cfg["type"] == "slugbuilder"
    assert cfg["args"][0] == "/opt/flynn/venv/bin/flynn-slugbuilder"
    assert cfg["args"][1:] == [
        "--source", f"{stack.blobs.url}/repos/web1/{rev}.tar",
        "--slug", f"{stack.blobs.url}/slugs/web1/{release['id']}.tgz",
        "--cache", f"{stack.blobs.url}/caches/web1.tgz",
    ]  # fmt: skip
    assert cfg["resources"] == {"memory": {"limit": 2 << 30}}
    assert cfg["env"]["PIP_INDEX_URL"] == "http://127.0.0.1:9/simple/"
    assert cfg["env"]["SSH_CLIENT_KEY"] == SSH_KEY
    assert cfg["env"]["SSH_CLIENT_HOSTS"] == "git.example ssh-ed25519 AAAAC3Nz"
    # the branch moved, the repository is in the blobstore, the source tarball is gone
    server = await git(stack.gr.repo("web1"), "rev-parse", "refs/heads/main")
    assert server.out.strip() == rev
    paths = await stack.blobs.paths()
    assert "/repos/web1.git.tar" in paths
    assert f"/repos/web1/{rev}.tar" not in paths
    assert "/caches/web1.tgz" in paths


async def test_a_second_push_deploys_keeping_env_and_limits(stack: Stack) -> None:
    src = stack.work / "src"
    await make_repo(src, APP_FILES)
    assert (await stack.push(src)).rc == 0
    api = stack.api()
    first = stack.app("web1")["release_id"]
    # what `flynn env set` and `flynn limit set web memory=256MB` leave behind
    current = api.get(f"/releases/{first}")
    current["processes"]["web"]["resources"] = {"memory": {"limit": 256 << 20}}
    current["processes"]["slugbuilder"] = {
        "args": ["flynn-slugbuilder"],
        "resources": {"memory": {"limit": 4 << 30}},
    }
    changed = api.post(
        "/releases",
        {
            "app_id": "web1",
            "artifacts": current["artifacts"],
            "env": {"FOO": "bar"},
            "processes": current["processes"],
        },
    )
    dep = api.post("/apps/web1/deploy", {"id": changed["id"]})
    assert stack.controller.wait_deployment(dep["id"])["status"] == "complete"

    rev = await commit(
        src,
        {
            "index.html": "<h1>v2</h1>\n",
            "Procfile": "web: python3 -m http.server $PORT\nworker: sleep 1000\n",
        },
    )
    res = await stack.push(src)
    assert res.rc == 0, res.out
    lines = res.remote_lines()
    assert any(line.startswith("-----> Deploying release") and "(all-at-once)" in line for line in lines), (
        res.out
    )
    assert any(line.strip().startswith("web ") and line.endswith(" up") for line in lines), res.out
    release = api.get(f"/releases/{stack.app('web1')['release_id']}")
    assert release["meta"]["rev"] == rev
    assert release["env"] == {"FOO": "bar"}
    assert release["processes"]["web"]["resources"]["memory"]["limit"] == 256 << 20
    assert release["processes"]["worker"]["args"] == ["/app/.flynn/run", "sleep 1000"]
    assert release["processes"]["slugbuilder"]["resources"]["memory"]["limit"] == 4 << 30
    second_job = list(stack.host.jobs.values())[-1].config
    assert second_job["resources"] == {"memory": {"limit": 4 << 30}}  # the slugbuilder type's
    assert second_job["env"]["FOO"] == "bar"  # the app's env reaches the build


async def test_a_push_whose_web_process_crashes_is_rolled_back(stack: Stack) -> None:
    src = stack.work / "src"
    await make_repo(src, APP_FILES)
    assert (await stack.push(src)).rc == 0
    good = stack.app("web1")["release_id"]
    bad_rev = await commit(src, {"Procfile": "web: exit 3\n"})

    async def crash_new_releases() -> None:  # the fake scheduler's jobs of that release crash
        while True:
            for rel in stack.releases("web1"):
                if rel["meta"].get("rev") == bad_rev:
                    stack.controller.scheduler.crash_releases.add(rel["id"])
            await asyncio.sleep(0.02)

    crasher = asyncio.ensure_future(crash_new_releases())
    try:
        res = await stack.push(src)
    finally:
        crasher.cancel()
    print(res.out)
    assert res.rc != 0
    assert "crashed or failed (limit 5); the previous release keeps running" in res.out, res.out
    assert "pre-receive hook declined" in res.out
    assert stack.app("web1")["release_id"] == good
    server = await git(stack.gr.repo("web1"), "rev-parse", "refs/heads/main")
    assert server.out.strip() != bad_rev  # the branch did not move
    forms = {f["release_id"]: f["processes"] for f in stack.api().get("/apps/web1/formations")}
    assert forms[good] == {"web": 1}


async def test_a_failed_build_fails_the_push_with_its_reason(stack: Stack) -> None:
    src = stack.work / "src"
    await make_repo(src, {"Procfile": "web python3 app.py\n"})
    res = await stack.push(src)
    assert res.rc != 0
    assert "flynn-slugbuilder: Procfile line 1: expected 'TYPE: COMMAND', got 'web python3 app.py'" in res.out
    assert "Build failed (exit status 1): nothing was deployed" in res.out
    assert stack.releases("web1") == []
    assert stack.api().get("/artifacts") == []
    assert (await git(stack.gr.repo("web1"), "rev-parse", "--verify", "-q", "refs/heads/main")).rc != 0


@pytest.mark.parametrize(
    ("refspec", "message"),
    [
        ("main:feature", "pushed branch feature: only the main or master branch is deployed"),
        ("main:refs/tags/v1", "pushed tag v1: only the main or master branch is deployed"),
    ],
)
async def test_pushes_to_other_refs_are_rejected_and_nothing_is_built(
    stack: Stack, refspec: str, message: str
) -> None:
    src = stack.work / "src"
    await make_repo(src, APP_FILES)
    res = await stack.push(src, refspec)
    assert res.rc != 0
    assert f" !     Push rejected: {message}" in res.out, res.out
    assert stack.host.jobs == {}
    assert stack.releases("web1") == []
    assert await stack.blobs.paths() == []


async def test_a_wrong_key_is_401_and_stores_nothing(stack: Stack) -> None:
    src = stack.work / "src"
    await make_repo(src, APP_FILES)
    res = await stack.push(src, key="not-the-key")
    assert res.rc != 0
    assert "remote: invalid key: use the cluster key (flynn git-credentials)" in res.out, res.out
    assert "Authentication failed" in res.out
    assert not stack.gr.repo("web1").exists()
    assert await stack.blobs.paths() == []
    assert stack.host.jobs == {}


async def test_an_unknown_app_is_404_with_a_hint(stack: Stack) -> None:
    src = stack.work / "src"
    await make_repo(src, APP_FILES)
    res = await stack.push(src, app="nosuchapp")
    assert res.rc != 0
    assert "remote: app nosuchapp not found (flynn create nosuchapp)" in res.out, res.out
    assert not stack.gr.repo("nosuchapp").exists()


async def test_system_apps_are_not_pushed_to(stack: Stack) -> None:
    stack.api().post("/apps", {"name": "gitreceive", "system": True})
    src = stack.work / "src"
    await make_repo(src, APP_FILES)
    res = await stack.push(src, app="gitreceive")
    assert res.rc != 0
    assert "remote: app gitreceive is a system app: it is not deployed by git push" in res.out


async def test_ctrl_c_on_the_push_stops_the_build_and_creates_nothing(stack: Stack) -> None:
    src = stack.work / "src"
    await make_repo(src, SLOW_BUILDPACK)
    proc = await asyncio.create_subprocess_exec(
        "git", "push", stack.gr.remote("web1", stack.controller.key), "main",
        cwd=src, env=git_env(stack.work), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )  # fmt: skip
    assert proc.stdout is not None
    seen = ""
    async with asyncio.timeout(60):
        while "sleeper " not in seen:
            line = await proc.stdout.readline()
            assert line, seen
            seen += line.decode()
    sleeper = int(seen.split("sleeper ")[1].split()[0])
    (job,) = stack.host.jobs.values()
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
    await proc.wait()
    async with asyncio.timeout(10):
        await job.ended.wait()
    assert job.ended_at is not None
    took = job.ended_at - t0
    assert job.stop_requested_at is not None or job.hung_up_at is not None
    assert took <= 2.0, f"the build ran {took:.2f}s after Ctrl-C"
    assert not alive(sleeper)  # the buildpack's own child is gone too
    await asyncio.sleep(1)  # nothing is created afterwards either
    assert stack.releases("web1") == []
    assert stack.api().get("/artifacts") == []
    assert (await git(stack.gr.repo("web1"), "rev-parse", "--verify", "-q", "refs/heads/main")).rc != 0


async def test_a_pack_larger_than_the_post_buffer_streams_through(stack: Stack) -> None:
    src = stack.work / "src"
    blob = os.urandom(3 << 20)  # incompressible: git sends it chunked (over http.postBuffer, 1 MiB)
    await make_repo(src, {**APP_FILES, "data.bin": blob})
    res = await stack.push(src)
    assert res.rc == 0, res.out
    release = stack.api().get(f"/releases/{stack.app('web1')['release_id']}")
    slug_path = f"/slugs/web1/{release['id']}.tgz"
    slug = stack.work / "slug.tgz"
    slug.write_bytes(await stack.blobs.read(slug_path))
    with tarfile.open(slug) as tar:
        member = tar.extractfile("data.bin")
        assert member is not None
        assert member.read() == blob


async def test_another_instance_restores_the_repository_from_the_blobstore(stack: Stack) -> None:
    src = stack.work / "src"
    first = await make_repo(src, APP_FILES)
    assert (await stack.push(src)).rc == 0
    other = await Gitreceive(
        stack.work / "other", {k: v for k, v in stack.gr.environ.items() if k != "GITRECEIVE_REPOS"}
    ).start()
    try:
        second = await commit(src, {"index.html": "<h1>v2</h1>\n"})
        res = await git(src, "push", other.remote("web1", stack.controller.key), "main")
        assert res.rc == 0, res.out
        assert "main -> main" in res.out  # a fast-forward of the restored history
        history = await git(other.repo("web1"), "rev-list", "refs/heads/main")
        assert history.out.split() == [second, first]
        # and back on the first instance, whose cache is now stale: it restores again
        third = await commit(src, {"index.html": "<h1>v3</h1>\n"})
        res = await stack.push(src)
        assert res.rc == 0, res.out
        history = await git(stack.gr.repo("web1"), "rev-list", "refs/heads/main")
        assert history.out.split() == [third, second, first]
    finally:
        await other.stop()


async def test_a_clone_from_gitreceive_gets_what_was_pushed(stack: Stack) -> None:
    src = stack.work / "src"
    rev = await make_repo(src, APP_FILES)
    assert (await stack.push(src)).rc == 0
    res = await git(stack.work, "clone", "-q", stack.gr.remote("web1", stack.controller.key), "copy")
    assert res.rc == 0, res.out
    assert (await git(stack.work / "copy", "rev-parse", "HEAD")).out.strip() == rev
    assert json.dumps((stack.work / "copy/index.html").read_text()) == json.dumps(APP_FILES["index.html"])


# -- the flynn CLI around git push ---------------------------------------------------------------

FLYNN = Path(sys.executable).with_name("flynn")


async def flynn(stack: Stack, cwd: Path, *args: str, key: str | None = None) -> tuple[int, str]:
    """The real flynn CLI, with an rc file naming the controller and gitreceive's URL."""
    rc = stack.work / "flynnrc"
    if not rc.exists():
        RcFile(
            rc,
            "test",
            [Cluster("test", key or stack.controller.key, stack.controller.url, git_url=stack.gr.url)],
        ).save()
    proc = await asyncio.create_subprocess_exec(
        str(FLYNN), *args, cwd=cwd, env={**git_env(stack.work), "FLYNNRC": str(rc)},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    text = out.decode()
    assert stack.controller.key not in text
    return proc.returncode if proc.returncode is not None else -1, text


async def test_flynn_create_adds_the_remote_and_the_credential_helper(stack: Stack) -> None:
    src = stack.work / "src"
    rev = await make_repo(src, APP_FILES)
    code, out = await flynn(stack, src, "create", "web2")
    assert code == 0, out
    assert f"Added git remote flynn ({stack.gr.url}/web2.git)" in out
    url = await git(src, "remote", "get-url", "flynn")
    assert url.out.strip() == f"{stack.gr.url}/web2.git"  # no key in the URL: the helper answers it
    env = {**git_env(stack.work), "FLYNNRC": str(stack.work / "flynnrc")}
    res = await git(src, "push", "flynn", "main", env=env)  # git asks `flynn git-credentials get`
    assert res.rc == 0, res.out
    assert "=====> Application web2 deployed" in res.out
    assert stack.app("web2")["release_id"] is not None
    assert (await git(stack.gr.repo("web2"), "rev-parse", "main")).out.strip() == rev
    code, out = await flynn(stack, src, "info")  # the app comes from the flynn remote
    assert code == 0, out
    assert "=== web2" in out


async def test_a_wrong_key_in_the_rc_file_fails_the_push_with_401(stack: Stack) -> None:
    src = stack.work / "src"
    await make_repo(src, APP_FILES)
    code, out = await flynn(stack, src, "create", "web3")
    assert code == 0, out
    rc = stack.work / "flynnrc"
    RcFile(rc, "test", [Cluster("test", "wrong-key", stack.controller.url, git_url=stack.gr.url)]).save()
    res = await git(src, "push", "flynn", "main", env={**git_env(stack.work), "FLYNNRC": str(rc)})
    assert res.rc != 0
    assert "remote: invalid key" in res.out
    assert "Authentication failed" in res.out
    assert not stack.gr.repo("web3").exists()


async def test_limit_set_slugbuilder_sets_the_builds_memory(stack: Stack) -> None:
    src = stack.work / "src"
    await make_repo(src, APP_FILES)
    code, out = await flynn(stack, src, "-a", "web1", "limit", "set", "slugbuilder", "memory=3GB")
    assert code == 0, out
    code, out = await flynn(stack, src, "-a", "web1", "limit")
    assert "slugbuilder:  memory=3GB" in out, out
    res = await stack.push(src)
    assert res.rc == 0, res.out
    (job,) = stack.host.jobs.values()
    assert job.config["resources"] == {"memory": {"limit": 3 << 30}}
    release = stack.api().get(f"/releases/{stack.app('web1')['release_id']}")
    assert set(release["processes"]) == {"web", "slugbuilder"}
    formation = stack.api().get(f"/apps/web1/formations/{release['id']}")
    assert formation["processes"] == {"web": 1}  # the first push still scaled web


async def test_flynn_deployment_timeout(stack: Stack) -> None:
    cwd = stack.work
    assert await flynn(stack, cwd, "-a", "web1", "deployment", "timeout") == (0, "120\n")
    code, out = await flynn(stack, cwd, "-a", "web1", "deployment", "timeout", "45")
    assert (code, out) == (0, "Deploy timeout of web1 set to 45s\n")
    assert stack.app("web1")["deploy_timeout"] == 45
    for bad in ("0", "3601", "soon"):
        code, out = await flynn(stack, cwd, "-a", "web1", "deployment", "timeout", bad)
        assert code == 1
        assert out.startswith("flynn: invalid timeout"), out
    assert stack.app("web1")["deploy_timeout"] == 45


async def test_a_host_that_cannot_be_reached_is_skipped_for_another(stack: Stack) -> None:
    dead = {
        f"dead{i}": {"id": f"dead{i}", "addr": "127.0.0.1:9", "proto": "tcp", "meta": {"id": f"dead{i}"}}
        for i in range(3)
    }
    stack.controller.cluster.discoverd.instances["flynn-host"] = dict(dead)
    src = stack.work / "src"
    await make_repo(src, APP_FILES)
    res = await stack.push(src)  # no host takes it: a clear failure, nothing created
    assert res.rc != 0
    assert "Build failed: the host refused the build job: cannot reach http://127.0.0.1:9" in res.out, res.out
    assert stack.releases("web1") == []
    stack.controller.cluster.discoverd.instances["flynn-host"] = {
        **dead,
        stack.host.id: stack.host.instance(),
    }
    res = await stack.push(src)  # hosts are tried in a random order until one takes it
    assert res.rc == 0, res.out
    assert len(stack.host.jobs) == 1  # (each dead host tried first is a "did not take the build" line)
