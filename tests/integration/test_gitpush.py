"""Issue 5 acceptance on a real 3-host cluster: ``git push`` with the real git client of this
machine into flynn-gitreceive (git smart HTTP, direct on :1220 as ``flynn cluster add --git-url``
names it, and once through a router's HTTPS at ``git.DOMAIN``), builds by flynn-slugbuilder in
build jobs, slugs in the blobstore, deployments by the controller, requests through a host's
router (``APP.DOMAIN`` on :80).

The example apps are tests/apps/* (the slugbuilder's); their packages come from this machine
(hosts have no route out): a PEP 503 index and a static npm registry on the cluster network's
gateway, named to gitreceive with ``flynn -a gitreceive env set BUILD_ENV_...`` (with
``SSH_CLIENT_KEY``/``SSH_CLIENT_HOSTS``, seed 000, for a buildpack cloned over SSH from a real
sshd on the gateway). Tests run in file order on one cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.buildfakes import BlobServer
from tests.integration.conftest import REPO, ClusterHandle
from tests.integration.test_builds import SshGit, gateway, serve_packages, ssh_git
from tests.unit.gitreceive_fakes import git_env as unit_git_env

BOOTSTRAP = True
pytestmark = pytest.mark.slow
FLYNN = str(REPO / ".venv/bin/flynn")
APPS = REPO / "tests/apps"
CANCEL_BOUND = 2.0
__all__ = ["gateway", "ssh_git"]  # fixtures of test_builds used here


def git_env(home: Path, rc: Path, **extra: str) -> dict[str, str]:
    """The unit tests' clean environment for the real `git` (tests/unit/gitreceive_fakes.py)
    plus the CLI's rc file."""
    return {**unit_git_env(home), "FLYNNRC": str(rc), **extra}


@dataclass
class Env:
    work: Path
    rc: Path
    domain: str
    ips: list[str]
    key: str
    ca: Path
    pushes: dict[str, str] = field(default_factory=dict)  # app -> output of its last push

    def environ(self) -> dict[str, str]:
        return git_env(self.work / "home", self.rc)

    def run(
        self, *argv: str, cwd: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            list(argv), cwd=cwd or self.work, env=self.environ(), capture_output=True, text=True,
            timeout=timeout, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert self.key not in out.stdout + out.stderr, "the cluster key was printed"
        return out

    def flynn(self, *args: str, cwd: Path | None = None, timeout: float = 300) -> str:
        out = self.run(FLYNN, *args, cwd=cwd, timeout=timeout)
        assert out.returncode == 0, f"flynn {' '.join(args)}: {out.stderr or out.stdout}"
        return out.stdout

    def push(self, repo: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        out = self.run("git", "push", *(args or ("flynn", "main")), cwd=repo, timeout=timeout)
        print(out.stdout + out.stderr)
        return out

    def get(self, app: str, host: int = 0, timeout: float = 5) -> tuple[int, str]:
        """GET / of the app through a host's router (``Host: APP.DOMAIN``)."""
        req = urllib.request.Request(f"http://{self.ips[host]}/", headers={"Host": f"{app}.{self.domain}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - a Request object
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")


def wait_for(what: str, check: Any, timeout: float = 60, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def make_repo(env: Env, name: str, app_dir: Path | None = None, files: dict[str, str] | None = None) -> Path:
    """A git work tree of an example app (or of ``files``), committed, with ``flynn create`` run in it."""
    repo = env.work / name
    if app_dir is not None:
        shutil.copytree(app_dir, repo)
    else:
        repo.mkdir()
    for rel, content in (files or {}).items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        if "/bin/" in f"/{rel}":
            path.chmod(0o755)
    for argv in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "v1"],
    ):
        assert env.run(*argv, cwd=repo).returncode == 0
    out = env.flynn("create", name, cwd=repo)
    assert f"Added git remote flynn (http://{env.ips[0]}:1220/{name}.git)" in out
    return repo


def host_jobs(cluster: ClusterHandle, env: Env, app: str) -> list[dict[str, Any]]:
    """Every job of ``app`` on every host (with history), from the hosts' APIs."""
    found = []
    for ip in env.ips:
        with urllib.request.urlopen(f"http://{ip}:1113/host/jobs?all=true", timeout=10) as resp:
            found += [j for j in json.load(resp) if j.get("app_name") == app]
    return found


def releases(env: Env, app: str) -> list[dict[str, Any]]:
    return list(json.loads(env.flynn("-a", app, "release", "--json")))


# -- the cluster, the CLI and gitreceive's build env ------------------------------------------------


@pytest.fixture(scope="module")
def env(cluster: ClusterHandle, creds: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Env:
    work = tmp_path_factory.mktemp("gitpush")
    (work / "home").mkdir()
    (work / "ca.pem").write_text(creds["ca_cert"])
    e = Env(
        work,
        work / "flynnrc",
        creds["domain"],
        [cluster.ip(h) for h in cluster.hosts],
        creds["key"],
        work / "ca.pem",
    )
    # the direct form bootstrap prints: the controller and gitreceive on host1's own ports
    assert creds["git_url"] == f"http://{e.ips[0]}:1220"
    out = subprocess.run(
        [FLYNN, "cluster", "add", "--git-url", creds["git_url"], "default", creds["controller_url"], "-"],
        input=creds["key"], env=e.environ(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return e


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory, gateway: str) -> Iterator[dict[str, str]]:
    """The example apps' packages, fetched by this machine and served on the gateway (the
    slugbuilder's tests do the same, tests/integration/test_builds.py)."""
    server = BlobServer(tmp_path_factory.mktemp("packages"), host=gateway)
    yield {f"BUILD_ENV_{k}": v for k, v in serve_packages(tmp_path_factory, server, gateway).items()}
    server.close()


def invocations(cluster: ClusterHandle) -> dict[str, str]:
    out = {}
    for host in cluster.hosts:
        res = cluster.exec(host, "systemctl", "show", "-P", "InvocationID", "flynn-gitreceive")
        out[host] = res.out.strip()
    return out


@pytest.fixture(scope="module")
def configured(cluster: ClusterHandle, env: Env, packages: dict[str, str], ssh_git: SshGit) -> Env:
    """gitreceive configured as an operator does it: its system app's env (seed 000 for the SSH
    key); the scheduler leader writes it to every host and each gitreceive restarts with it."""
    before = invocations(cluster)
    pairs = [f"{k}={v}" for k, v in packages.items()]
    pairs += [f"SSH_CLIENT_KEY={ssh_git.client_key}", f"SSH_CLIENT_HOSTS={ssh_git.known_hosts}"]
    env.flynn("-a", "gitreceive", "env", "set", *pairs)

    def restarted() -> bool:
        now = invocations(cluster)
        return all(now[h] and now[h] != before[h] for h in cluster.hosts) and all(
            cluster.exec(h, "systemctl", "is-active", "flynn-gitreceive").out.strip() == "active"
            for h in cluster.hosts
        )

    wait_for("every gitreceive to restart with its system app's env", restarted, 90, 0.5)
    for host in cluster.hosts:
        overlay = cluster.exec(host, "cat", "/etc/flynn/gitreceive.app.env").out
        assert "BUILD_ENV_PIP_INDEX_URL=" in overlay
        assert "SSH_CLIENT_KEY=" in overlay
    wait_for(
        "3 gitreceive instances in discoverd",
        lambda: len(cluster.api("host1").get("/services/gitreceive/instances")) == 3,
        30,
    )
    return env


# -- the example apps ------------------------------------------------------------------------------

EXAMPLES = [
    ("pyweb", "python-web", "python-web ok: bottle 0.13.4", "-----> Python app detected"),
    ("nodeweb", "node-web", "node-web ok: &lt;node&gt; on v18.", "-----> Node.js app detected"),
    ("staticsite", "static-site", "<h1>static-site ok</h1>", "-----> Static app detected"),
    ("multibp", "multi-buildpack", "two.txt", "buildpack two: marked"),
]


@pytest.mark.parametrize(("app", "example", "page", "build_line"), EXAMPLES, ids=[e[1] for e in EXAMPLES])
def test_git_push_deploys_the_example_app(
    cluster: ClusterHandle, configured: Env, app: str, example: str, page: str, build_line: str
) -> None:
    env = configured
    repo = make_repo(env, app, APPS / example)
    t0 = time.monotonic()
    out = env.push(repo)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    env.pushes[app] = text
    assert f"remote: -----> Building {app} (commit" in text
    assert f"remote: {build_line}" in text or f"remote:        {build_line}" in text, text
    assert f"remote: =====> Application {app} deployed (web scaled to 1)" in text
    assert "main -> main" in text

    def served() -> str | None:
        status, body = env.get(app)
        return body if status == 200 else None

    body = wait_for(f"{app} through the routers", served, 60)
    print(f"{app}: push -> 200 in {time.monotonic() - t0:.1f}s")
    assert page in body, body
    for host in range(3):  # every host's router serves it
        assert env.get(app, host)[0] == 200
    jobs = json.loads(env.flynn("-a", app, "ps", "--json"))
    assert [j["type"] for j in jobs] == ["web"]
    assert jobs[0]["state"] == "up"


def test_the_ssh_client_key_reaches_the_builds(
    cluster: ClusterHandle, configured: Env, ssh_git: SshGit
) -> None:
    """Seed 000: with SSH_CLIENT_KEY/SSH_CLIENT_HOSTS on gitreceive, a buildpack is cloned over SSH."""
    env = configured
    files = {".buildpacks": f"{ssh_git.url}/bp.git#v1\n", "Procfile": "web: python3 -m http.server $PORT\n"}
    repo = make_repo(env, "sshbp", files=files)
    out = env.push(repo)
    assert out.returncode == 0, out.stderr
    assert "remote: -----> git over SSH: the SSH_CLIENT_KEY key, 1 known host key(s)" in out.stderr
    assert "remote:        cloned over ssh" in out.stderr
    assert "Accepted publickey for postgres" in ssh_git.log.read_text()
    assert "PRIVATE KEY" not in out.stdout + out.stderr


# -- a second version under load, with zero failed requests ---------------------------------------


class Load:
    """GETs in a loop through the hosts' routers (round robin) until stopped."""

    def __init__(self, env: Env, app: str) -> None:
        self.env, self.app = env, app
        self.ok = 0
        self.failures: list[str] = []
        self.bodies: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                status, body = self.env.get(self.app, n % 3, timeout=10)
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            else:
                if status == 200:
                    self.ok += 1
                    self.bodies.add(body.split(":")[0])
                else:
                    self.failures.append(f"HTTP {status}: {body[:200]}")
            n += 1
            time.sleep(0.01)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def test_a_second_version_deploys_with_zero_failed_requests(configured: Env) -> None:
    env = configured
    repo = env.work / "pyweb"
    script = repo / "pyweb.py"
    script.write_text(script.read_text().replace('f"python-web ok:', 'f"python-web v2 ok:'))
    assert env.run("git", "commit", "-q", "-am", "v2", cwd=repo).returncode == 0
    with Load(env, "pyweb") as load:
        time.sleep(1)
        out = env.push(repo)
        assert out.returncode == 0, out.stderr
        wait_for("v2 through the routers", lambda: env.get("pyweb")[1].startswith("python-web v2 ok"), 30)
        time.sleep(1)
    print(f"load during the deployment: {load.ok} OK, {len(load.failures)} failed")
    assert "remote: -----> Deploying release" in out.stderr
    assert "(all-at-once)" in out.stderr
    assert load.failures == [], load.failures[:5]
    assert load.ok >= 50  # the loop ran through the whole deployment
    assert load.bodies == {"python-web ok", "python-web v2 ok"}  # old, then new, nothing else


def test_another_gitreceive_continues_the_same_repository(configured: Env) -> None:
    """host2's gitreceive never saw this app: it restores the repository from the blobstore, so the
    push is a fast-forward of the same history."""
    env = configured
    repo = env.work / "pyweb"
    script = repo / "pyweb.py"
    script.write_text(script.read_text().replace("python-web v2 ok", "python-web v3 ok"))
    assert env.run("git", "commit", "-q", "-am", "v3", cwd=repo).returncode == 0
    old = env.run("git", "rev-parse", "HEAD~1", cwd=repo).stdout.strip()
    out = env.push(repo, f"http://flynn:{env.key}@{env.ips[1]}:1220/pyweb.git", "main")  # git hides the key
    assert out.returncode == 0, out.stderr
    assert f"{old[:7]}.." in out.stderr  # old..new: the restored branch was v2's
    wait_for("v3", lambda: env.get("pyweb")[1].startswith("python-web v3 ok"), 30)


def test_a_push_through_the_routers_https(configured: Env) -> None:
    """git.DOMAIN through a router (TLS with the cluster's certificate), as the routed git URL."""
    env = configured
    repo = env.work / "staticsite"
    (repo / "index.html").write_text("<h1>static-site via the router</h1>\n")
    assert env.run("git", "commit", "-q", "-am", "v2", cwd=repo).returncode == 0
    url = f"https://flynn:{env.key}@git.{env.domain}/staticsite.git"
    out = subprocess.run(
        ["git", "-c", f"http.curloptResolve=git.{env.domain}:443:{env.ips[2]}", "push", url, "main"],
        cwd=repo, env={**env.environ(), "GIT_SSL_CAINFO": str(env.ca)},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.replace(env.key, "KEY")
    assert "remote: =====> Application staticsite deployed" in out.stderr
    wait_for("the new page", lambda: "via the router" in env.get("staticsite")[1], 30)


# -- failures ----------------------------------------------------------------------------------------


def test_a_push_whose_web_crashes_fails_and_the_old_release_keeps_serving(configured: Env) -> None:
    env = configured
    repo = env.work / "pyweb"
    before = releases(env, "pyweb")
    current = json.loads(env.flynn("-a", "pyweb", "release", "show", "--json"))["id"]
    (repo / "Procfile").write_text("web: python -c 'import sys; print(\"crashing\"); sys.exit(3)'\n")
    assert env.run("git", "commit", "-q", "-am", "crash", cwd=repo).returncode == 0
    with Load(env, "pyweb") as load:
        out = env.push(repo)
    assert out.returncode != 0
    assert "remote:  !     Deployment of release" in out.stderr, out.stderr
    assert "failed: " in out.stderr
    assert "the previous release keeps running" in out.stderr
    assert "! [remote rejected] main -> main (pre-receive hook declined)" in out.stderr
    assert load.failures == [], load.failures[:5]  # the old release served throughout
    assert json.loads(env.flynn("-a", "pyweb", "release", "show", "--json"))["id"] == current
    assert len(releases(env, "pyweb")) == len(before) + 1  # the failed release exists, not current
    status, body = env.get("pyweb")
    assert (status, body.startswith("python-web v3 ok")) == (200, True)

    def only_old() -> bool:
        jobs = json.loads(env.flynn("-a", "pyweb", "ps", "--json"))
        return bool(jobs) and all(j["release_id"] == current and j["state"] == "up" for j in jobs)

    wait_for("flynn ps to show only the old release's jobs", only_old, 60)
    # gitreceive's branch did not move either: it is still v3's commit
    v3 = env.run("git", "rev-parse", "HEAD~1", cwd=repo).stdout.strip()
    assert env.run("git", "ls-remote", "flynn", "refs/heads/main", cwd=repo).stdout.split()[0] == v3


def test_ctrl_c_during_compile_stops_the_build_at_once(cluster: ClusterHandle, configured: Env) -> None:
    env = configured
    slow = {
        ".buildpacks": "./bp\n",
        "Procfile": "web: python3 -m http.server $PORT\n",
        "bp/bin/detect": "#!/bin/sh\necho Slow\n",
        "bp/bin/compile": "#!/bin/sh\necho '       compiling'\nsleep 600 &\nwait\n",
    }
    repo = make_repo(env, "slowbuild", files=slow)
    proc = subprocess.Popen(
        ["git", "push", "flynn", "main"], cwd=repo, env=env.environ(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )  # fmt: skip
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + 120
    while b"compiling" not in seen:
        assert time.monotonic() < deadline, seen.decode()
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, seen.decode()
        seen += chunk
    builds = [j for j in host_jobs(cluster, env, "slowbuild") if j.get("app_mode") == "build"]
    assert len(builds) == 1, builds
    job = builds[0]
    assert job["state"] == "up"
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the push's process group
    proc.wait(timeout=30)
    host_api = f"http://{env.ips[cluster.hosts.index(job['host_id'])]}:1113/host/jobs/{job['id']}"

    def final() -> bool:
        with urllib.request.urlopen(host_api, timeout=5) as resp:
            return json.load(resp)["state"] in ("down", "crashed", "failed")

    wait_for("the build job to end", final, 10, 0.02)
    took = time.monotonic() - t0
    active = cluster.exec(job["host_id"], "systemctl", "is-active", str(job["unit"])).out.strip()
    print(f"Ctrl-C -> build job final in {took:.2f}s (unit {active})")
    assert active in ("inactive", "failed", "unknown"), active
    assert took <= CANCEL_BOUND, f"the build ran {took:.2f}s after Ctrl-C"
    time.sleep(2)
    assert releases(env, "slowbuild") == []  # nothing was released or deployed


def test_a_push_to_another_branch_is_rejected_and_nothing_is_built(
    cluster: ClusterHandle, configured: Env
) -> None:
    env = configured
    repo = env.work / "nodeweb"
    (repo / "README").write_text("a branch\n")
    assert env.run("git", "add", "README", cwd=repo).returncode == 0
    assert env.run("git", "commit", "-q", "-m", "feature", cwd=repo).returncode == 0
    builds = len(host_jobs(cluster, env, "nodeweb"))
    before = releases(env, "nodeweb")
    out = env.push(repo, "flynn", "main:feature")
    assert out.returncode != 0
    assert (
        "remote:  !     Push rejected: pushed branch feature: only the main or master branch is deployed"
        " (git push flynn feature:main deploys it)"
    ) in out.stderr
    assert "! [remote rejected] main -> feature (pre-receive hook declined)" in out.stderr
    assert len(host_jobs(cluster, env, "nodeweb")) == builds  # no build job was started
    assert releases(env, "nodeweb") == before


def test_a_wrong_key_is_401_and_nothing_is_stored(cluster: ClusterHandle, configured: Env) -> None:
    env = configured
    repo = make_repo(env, "wrongkey", files={"Procfile": "web: python3 -m http.server $PORT\n"})
    out = env.push(repo, f"http://flynn:not-the-key@{env.ips[0]}:1220/wrongkey.git", "main")
    assert out.returncode != 0
    assert "remote: invalid key: use the cluster key (flynn git-credentials)" in out.stderr
    assert "Authentication failed" in out.stderr
    for host in cluster.hosts:
        listing = cluster.exec(host, "ls", "-a", "/var/lib/flynn/gitreceive/repos").out.split()
        assert not any("wrongkey" in name for name in listing), listing
    with urllib.request.urlopen(f"http://{env.ips[0]}:1210/?prefix=/repos/wrongkey", timeout=10) as resp:
        assert json.load(resp) == []
    assert host_jobs(cluster, env, "wrongkey") == []
    assert releases(env, "wrongkey") == []
