"""Slug builds on real systemd hosts: build jobs (``app_mode: build``) started through the host API
run the installed ``flynn-slugbuilder`` with the built-in buildpacks, against a small HTTP file
server on this machine standing in for the blobstore; each slug then runs as an ordinary job
(artifact = the slug) and answers HTTP. Build output is read live over the attach WebSocket, as
gitreceive relays it to ``git push``; stopping a build (DELETE, or the attach client going away,
i.e. Ctrl-C on the push) kills it at once.

Test hosts have no route out, so the packages the example apps need are fetched on this machine
(``pip download`` from PyPI, ``npm pack`` from the npm registry) and served from the cluster
network's gateway as a PEP 503 index and a static npm registry. Tests run in file order on one
cluster (discoverd only).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from flynn.host.client import FINAL_STATES, HostClient, SyncHostClient
from tests.buildfakes import BlobServer, buildpack_files, make_tar, npm_registry, simple_index, tar_of_dir
from tests.integration.conftest import REPO, ClusterHandle

pytestmark = pytest.mark.slow

BUILD_HOST, RUN_HOST = "host1", "host2"
SLUGBUILDER = "/opt/flynn/venv/bin/flynn-slugbuilder"
APPS = REPO / "tests/apps"
MEMORY = 4 << 30  # flynn limit set slugbuilder memory=4GB
CANCEL_BOUND = 2.0
PIP_PACKAGES = ("bottle==0.13.4",)
NPM_PACKAGES = (("escape-html", "1.0.3"),)


@dataclass
class Build:
    job_id: str
    exit: int | None
    output: str
    seconds: float

    @property
    def slug(self) -> dict[str, Any]:
        last = self.output.rstrip("\n").splitlines()[-1]
        assert last.startswith("FLYNN-SLUG "), self.output[-3000:]
        return dict(json.loads(last[len("FLYNN-SLUG ") :]))


@pytest.fixture(scope="module")
def gateway(cluster: ClusterHandle) -> str:
    from flynn_dev import netns

    return netns.Subnet.from_env().gateway


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory, gateway: str) -> Iterator[BlobServer]:
    server = BlobServer(tmp_path_factory.mktemp("blobs"), host=gateway)
    yield server
    server.close()


def serve_packages(
    tmp_path_factory: pytest.TempPathFactory, blobs: BlobServer, gateway: str
) -> dict[str, str]:
    """The example apps' packages, fetched from the public registries by this machine (which
    reaches them; the hosts do not) and served by ``blobs`` on the gateway: the build env that
    points pip and npm there."""
    downloads = tmp_path_factory.mktemp("pypi-downloads")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--dest", downloads, *PIP_PACKAGES],
        check=True, timeout=300,
    )  # fmt: skip
    simple_index(blobs.root / "pypi", sorted(downloads.glob("*.whl")))
    packed = tmp_path_factory.mktemp("npm-downloads")
    tarballs = {}
    for name, version in NPM_PACKAGES:
        subprocess.run(
            ["npm", "pack", "--silent", f"{name}@{version}", "--pack-destination", packed],
            check=True, timeout=300, cwd=packed, capture_output=True,
        )  # fmt: skip
        tarballs[(name, version)] = (packed / f"{name}-{version}.tgz").read_bytes()
    return {
        "PIP_INDEX_URL": blobs.url("pypi/simple/"),
        "PIP_TRUSTED_HOST": gateway,  # plain http: pip caches its downloads only from a trusted host
        "NPM_CONFIG_REGISTRY": npm_registry(blobs, tarballs),
    }


@pytest.fixture(scope="module")
def build_env(tmp_path_factory: pytest.TempPathFactory, blobs: BlobServer, gateway: str) -> dict[str, str]:
    """gitreceive's build env for these builds: package indexes on the gateway."""
    return serve_packages(tmp_path_factory, blobs, gateway)


@pytest.fixture(scope="module")
def urls(cluster: ClusterHandle) -> dict[str, str]:
    return {h: f"http://{cluster.ip(h)}:1113" for h in (BUILD_HOST, RUN_HOST)}


def build_config(blobs: BlobServer, app: str, env: dict[str, str], *, attach: bool = True) -> dict[str, Any]:
    """The job gitreceive starts for a push of ``app`` (docs/gitreceive.md, "Host side")."""
    return {
        "id": f"{BUILD_HOST}-build-{uuid.uuid4()}",
        "app_name": app,
        "type": "slugbuilder",
        "app_mode": "build",
        "attach": attach,
        "args": [
            SLUGBUILDER,
            "--source", blobs.url(f"repos/{app}.tar"),
            "--slug", blobs.url(f"slugs/{app}.tgz"),
            "--cache", blobs.url(f"caches/{app}.tgz"),
        ],
        "env": env,
        "resources": {"memory": {"limit": MEMORY}},
    }  # fmt: skip


async def _attached(
    url: str, config: dict[str, Any], until: str | None = None
) -> tuple[int | None, str, float]:
    """Start the job, relay its output (printed as it comes) until it exits, or until a line
    containing ``until`` (then the WebSocket stays open for the caller: see ``cancel``)."""
    out: list[str] = []
    t0 = time.monotonic()
    async with HostClient(url, timeout=30) as client:
        await client.start_job(config)
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(client.attach_url(config["id"])) as ws,
        ):
            async with asyncio.timeout(600):
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        text = msg.data[1:].decode(errors="replace")
                        out.append(text)
                        sys.stdout.write(text)
                        if until is not None and until in "".join(out):
                            return None, "".join(out), time.monotonic() - t0
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        return int(json.loads(msg.data)["exit"]), "".join(out), time.monotonic() - t0
    return None, "".join(out), time.monotonic() - t0


def run_build(urls: dict[str, str], blobs: BlobServer, app: str, source: bytes, env: dict[str, str]) -> Build:
    (blobs.root / "repos").mkdir(exist_ok=True)
    (blobs.root / f"repos/{app}.tar").write_bytes(source)
    config = build_config(blobs, app, env)
    code, output, seconds = asyncio.run(_attached(urls[BUILD_HOST], config))
    print(f"\nbuild of {app}: exit {code} in {seconds:.1f}s")
    return Build(config["id"], code, output, seconds)


def wait_final(api: SyncHostClient, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get_job(job_id)
        if job["state"] in FINAL_STATES:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end within {timeout}s")


def run_slug(cluster: ClusterHandle, urls: dict[str, str], blobs: BlobServer, app: str, build: Build) -> str:
    """The slug as an ordinary job on another host (``/app`` = the slug, read-only); what its web
    process answers on /."""
    slug = build.slug
    api = SyncHostClient(urls[RUN_HOST], timeout=30)
    job_id = f"{RUN_HOST}-{app}-web-{uuid.uuid4()}"
    job = api.start_job(
        {
            "id": job_id,
            "app_name": app,
            "type": "web",
            "artifact": {"id": f"slug-{slug['sha256'][:16]}", "uri": blobs.url(f"slugs/{app}.tgz"),
                         "sha256": slug["sha256"]},
            "args": ["/app/.flynn/run", slug["processes"]["web"]],
            "check": {"type": "http", "path": "/", "timeout": 60},
        }
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while (job := api.get_job(job_id))["state"] == "starting" and time.monotonic() < deadline:
            time.sleep(0.1)
        if job["state"] != "up":
            log = "\n".join(api.job_log(job_id, lines=50))
            raise AssertionError(f"{app} web job is {job['state']}: {job['error']}\n{log}")
        url = f"http://{cluster.ip(RUN_HOST)}:{job['port']}/"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())
    finally:
        api.stop_job(job_id)


def slug_names(blobs: BlobServer, app: str) -> list[str]:
    with tarfile.open(blobs.root / f"slugs/{app}.tgz") as tar:
        return tar.getnames()


# -- the example apps --------------------------------------------------------------------------


def test_python_web(
    cluster: ClusterHandle, urls: dict[str, str], blobs: BlobServer, build_env: dict[str, str]
) -> None:
    build = run_build(urls, blobs, "python-web", tar_of_dir(APPS / "python-web"), build_env)
    assert build.exit == 0, build.output[-3000:]
    assert "-----> Python app detected" in build.output
    assert "Successfully installed bottle-0.13.4" in build.output
    assert build.slug["processes"] == {"web": "python pyweb.py"}
    names = slug_names(blobs, "python-web")
    assert ".venv/bin/python3" in names
    assert "NOTES.md" not in names  # .slugignore
    body = run_slug(cluster, urls, blobs, "python-web", build)
    assert body.startswith("python-web ok: bottle 0.13.4 from /app/.venv/lib/python3.11/site-packages"), body
    # the build job is an ordinary job that ended: its record, and its /app is gone from the host
    api = SyncHostClient(urls[BUILD_HOST])
    job = api.get_job(build.job_id)
    assert (job["state"], job["exit_status"], job["app_mode"]) == ("down", 0, "build")
    gone = cluster.exec(BUILD_HOST, "sh", "-c", f"ls -d /var/lib/private/flynn-build/{build.job_id} "
                        f"/var/lib/flynn-build/{build.job_id} 2>&1; true")  # fmt: skip
    assert gone.out.count("No such file or directory") == 2, gone.out


def test_a_rebuild_restores_the_apps_cache(
    urls: dict[str, str], blobs: BlobServer, build_env: dict[str, str]
) -> None:
    build = run_build(urls, blobs, "python-web", tar_of_dir(APPS / "python-web"), build_env)
    assert build.exit == 0, build.output[-3000:]
    assert "-----> Restored the build cache" in build.output
    assert "Using cached http://" in build.output  # bottle came from the cache, not the index
    wheel = next((blobs.root / "pypi/files").glob("bottle-0.13.4-*.whl")).name
    assert blobs.count("GET", f"/pypi/files/{wheel}") == 1  # only the first build downloaded it


def test_node_web(
    cluster: ClusterHandle, urls: dict[str, str], blobs: BlobServer, build_env: dict[str, str]
) -> None:
    build = run_build(urls, blobs, "node-web", tar_of_dir(APPS / "node-web"), build_env)
    assert build.exit == 0, build.output[-3000:]
    assert "-----> Node.js app detected" in build.output
    assert build.slug["processes"] == {"web": "npm start"}  # no Procfile: the buildpack's default
    assert "node_modules/escape-html/index.js" in slug_names(blobs, "node-web")
    body = run_slug(cluster, urls, blobs, "node-web", build)
    assert body.startswith("node-web ok: &lt;node&gt; on v18."), body  # Debian 12's Node.js


def test_static_site(
    cluster: ClusterHandle, urls: dict[str, str], blobs: BlobServer, build_env: dict[str, str]
) -> None:
    build = run_build(urls, blobs, "static-site", tar_of_dir(APPS / "static-site"), build_env)
    assert build.exit == 0, build.output[-3000:]
    assert "-----> Static app detected" in build.output
    assert "drafts/wip.html" not in slug_names(blobs, "static-site")
    body = run_slug(cluster, urls, blobs, "static-site", build)
    assert "<h1>static-site ok</h1>" in body


def test_multi_buildpack(
    cluster: ClusterHandle, urls: dict[str, str], blobs: BlobServer, build_env: dict[str, str]
) -> None:
    build = run_build(urls, blobs, "multi-buildpack", tar_of_dir(APPS / "multi-buildpack"), build_env)
    assert build.exit == 0, build.output[-3000:]
    assert build.output.index("buildpack one: marked") < build.output.index("buildpack two: marked")
    assert build.slug["processes"]["web"].startswith("python3 -m http.server")  # two's default won
    body = run_slug(cluster, urls, blobs, "multi-buildpack", build)  # the marks directory's listing
    assert "one.txt" in body
    assert "two.txt" in body


def test_a_failed_build_ends_with_its_reason(
    urls: dict[str, str], blobs: BlobServer, build_env: dict[str, str]
) -> None:
    source = make_tar({"Procfile": "web python app.py\n"})
    build = run_build(urls, blobs, "broken", source, build_env)
    assert build.exit == 1
    last = build.output.strip().splitlines()[-1]
    assert last == "flynn-slugbuilder: Procfile line 1: expected 'TYPE: COMMAND', got 'web python app.py'"
    assert not (blobs.root / "slugs/broken.tgz").exists()


@dataclass
class SshGit:
    """A real sshd (Debian's, unpacked from its package) on the gateway serving git repositories
    over SSH to one user and one key, as a git host would."""

    url: str  # ssh://USER@GATEWAY:PORT/DIR
    client_key: str  # the private key the builds get as SSH_CLIENT_KEY
    known_hosts: str  # the line the builds get as SSH_CLIENT_HOSTS
    log: Path


@pytest.fixture(scope="module")
def ssh_git(gateway: str) -> Iterator[SshGit]:
    """sshd cannot run as root without its privilege-separation user (absent here), so it runs as
    the unprivileged ``postgres`` user (Debian's PostgreSQL, installed by scripts/setup; it has a
    shell, which sshd runs git-upload-pack with) and serves only that user."""
    base = Path(tempfile.mkdtemp(prefix="flynn-test-sshd-"))  # not under pytest's 0700 tmp: sshd reads it
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc, served = _start_sshd(base, gateway)
        yield served
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def _start_sshd(base: Path, gateway: str) -> tuple[subprocess.Popen[bytes], SshGit]:
    base.chmod(0o755)
    debs = base / "debs"
    debs.mkdir()
    subprocess.run(
        ["apt-get", "download", "-q", "openssh-server", "libwrap0"],
        cwd=debs, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    unpacked = debs / "root"
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", deb, unpacked], check=True)
    for key in ("host_key", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", base / key], check=True)
    (base / "authorized_keys").write_text((base / "client.pub").read_text())
    work = base / "work"
    (work / "bin").mkdir(parents=True)
    here = '"$(dirname "$0")/.."'
    compile_script = f'echo "       cloned over ssh"; git -C {here} describe --tags > "$1/bp-version"'
    for name, body in (("detect", "echo Ssh"), ("compile", compile_script)):
        (work / "bin" / name).write_text(f"#!/bin/sh\n{body}\n")
        (work / "bin" / name).chmod(0o755)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e", "-C", str(work)]
    subprocess.run(["git", "init", "-q", "-b", "main", work], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "buildpack"], check=True)
    subprocess.run([*git, "tag", "v1"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", work, base / "bp.git"], check=True)
    with socket.socket() as probe:
        probe.bind((gateway, 0))
        port = int(probe.getsockname()[1])
    config = base / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress {gateway}\nHostKey {base}/host_key\n"
        f"AuthorizedKeysFile {base}/authorized_keys\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
        "AllowUsers postgres\nLogLevel VERBOSE\n"
    )
    subprocess.run(["chown", "-R", "postgres:", base], check=True)
    log = base / "sshd.log"
    env = {"LD_LIBRARY_PATH": str(unpacked / "usr/lib/x86_64-linux-gnu"), "PATH": "/usr/bin:/bin"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
             unpacked / "usr/sbin/sshd", "-D", "-e", "-f", config],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((gateway, port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError(f"sshd did not listen: {log.read_text()}") from None
            time.sleep(0.05)
    host_key = " ".join((base / "host_key.pub").read_text().split()[:2])
    served = SshGit(
        url=f"ssh://postgres@{gateway}:{port}{base}",
        client_key=(base / "client").read_text(),
        known_hosts=f"[{gateway}]:{port} {host_key}",
        log=log,
    )
    return proc, served


def test_a_buildpack_is_cloned_over_ssh_with_the_ssh_client_key(
    urls: dict[str, str], blobs: BlobServer, build_env: dict[str, str], ssh_git: SshGit
) -> None:
    """git over SSH from inside the build job's sandbox, as its dynamic user (which needs a passwd
    entry: nss-systemd), with SSH_CLIENT_KEY and SSH_CLIENT_HOSTS (seed 000)."""
    source = make_tar({"Procfile": "web: x"})
    env = {
        **build_env,
        "BUILDPACK_URL": f"{ssh_git.url}/bp.git#v1",
        "SSH_CLIENT_KEY": ssh_git.client_key,
        "SSH_CLIENT_HOSTS": ssh_git.known_hosts,
    }
    build = run_build(urls, blobs, "ssh-clone", source, env)
    assert build.exit == 0, build.output[-3000:]
    assert "-----> git over SSH: the SSH_CLIENT_KEY key, 1 known host key(s)" in build.output
    assert "cloned over ssh" in build.output
    assert "Accepted publickey for postgres" in ssh_git.log.read_text()
    with tarfile.open(blobs.root / "slugs/ssh-clone.tgz") as tar:
        names = tar.getnames()
        f = tar.extractfile("bp-version")
        assert f is not None
        assert f.read().decode().strip() == "v1"
    assert not any("ssh" in n or n.endswith("known_hosts") for n in names)  # the key stayed out
    assert "PRIVATE KEY" not in build.output
    # a host key that is not the server's: ssh refuses (strict checking), and so the build
    other = (
        ssh_git.known_hosts.rsplit(" ", 1)[0]
        + " AAAAC3NzaC1lZDI1NTE5AAAAIBadBadBadBadBadBadBadBadBadBadBadBadBadBadBadBa"
    )
    build = run_build(urls, blobs, "ssh-clone", source, {**env, "SSH_CLIENT_HOSTS": other})
    assert build.exit == 1
    assert "Host key verification failed" in build.output
    assert build.output.strip().splitlines()[-1].endswith(": git clone exited with status 128")


# -- the build job's /app, its limit, and cancelling -------------------------------------------

SLOW = """
echo "uid $(id -u) app owner $(stat -c %u /app) mode $(stat -c %a /app)"
touch /app/written && echo "app writable"
sleep 600 &
echo "compiling (pid $!)"
wait
"""


def cancel(
    cluster: ClusterHandle, urls: dict[str, str], blobs: BlobServer, build_env: dict[str, str], how: str
) -> None:
    app = f"slow-{how}"
    (blobs.root / "repos").mkdir(exist_ok=True)
    files = {".buildpacks": "./bp\n", "Procfile": "web: x", **buildpack_files("bp", compile=SLOW)}
    (blobs.root / f"repos/{app}.tar").write_bytes(make_tar(files))
    config = build_config(blobs, app, build_env)
    job_id, unit = config["id"], f"flynn-job-{config['id']}.service"
    api = SyncHostClient(urls[BUILD_HOST], timeout=30)

    async def go() -> tuple[str, float]:
        async with HostClient(urls[BUILD_HOST], timeout=30) as client:
            await client.start_job(config)
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(client.attach_url(job_id))
                out = ""
                async with asyncio.timeout(120):
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            out += msg.data[1:].decode(errors="replace")
                        if "compiling" in out:
                            break
                checks(out)
                t0 = time.monotonic()
                if how == "delete":
                    await client.stop_job(job_id)  # what gitreceive does when the push goes away
                else:
                    await ws.close()  # the attach client hangs up: the host stops the job
                while (await client.get_job(job_id))["state"] not in FINAL_STATES:  # noqa: ASYNC110 - the API
                    await asyncio.sleep(0.02)
                return out, time.monotonic() - t0

    def checks(out: str) -> None:
        print(out)
        props = cluster.exec(
            BUILD_HOST, "systemctl", "show", "-p", "MemoryMax", "-p", "DynamicUser", unit
        ).out
        assert f"MemoryMax={MEMORY}" in props, props
        assert "DynamicUser=yes" in props
        words = out.split("uid ", 1)[1].split()  # "uid N app owner N mode NNN"
        uid, owner, mode = words[0], words[3], words[5]
        assert uid == owner != "0", out  # /app belongs to the job's dynamic user
        assert mode == "700", out
        assert "app writable" in out
        on_host = cluster.exec(
            BUILD_HOST, "stat", "-c", "%u %a", f"/var/lib/private/flynn-build/{job_id}"
        ).out
        assert on_host.split() == [uid, "700"]

    out, took = asyncio.run(go())
    print(f"build cancelled ({how}): job final, unit ended, /app removed in {took:.2f}s")
    left = cluster.exec(
        BUILD_HOST, "sh", "-c",
        f"systemctl is-active {unit}; ls -d /var/lib/private/flynn-build/{job_id} 2>&1;"
        " pgrep -f 'sleep 600'; true",
    )  # fmt: skip
    assert left.out.split("\n")[0] in ("inactive", "failed", "unknown"), left.out
    assert "No such file or directory" in left.out
    pid = out.split("compiling (pid ")[1].split(")")[0]
    assert pid not in left.out.split("\n")[2:], left.out  # the buildpack's own child was killed too
    assert wait_final(api, job_id)["state"] == "down"
    assert took <= CANCEL_BOUND, f"cancelling took {took:.2f}s"


def test_deleting_a_build_job_kills_the_build_at_once(
    cluster: ClusterHandle, urls: dict[str, str], blobs: BlobServer, build_env: dict[str, str]
) -> None:
    cancel(cluster, urls, blobs, build_env, "delete")


def test_the_push_going_away_kills_the_build_at_once(
    cluster: ClusterHandle, urls: dict[str, str], blobs: BlobServer, build_env: dict[str, str]
) -> None:
    cancel(cluster, urls, blobs, build_env, "hangup")


def test_build_mode_refuses_an_artifact(urls: dict[str, str]) -> None:
    from flynn.common.errors import APIError

    api = SyncHostClient(urls[BUILD_HOST])
    body = {"args": ["true"], "app_mode": "build", "artifact": {"id": "a", "uri": "http://x/y"}}
    with pytest.raises(APIError) as err:
        api.start_job({"id": f"{BUILD_HOST}-{uuid.uuid4()}", **body})
    assert err.value.status == 400
    assert "app_mode build takes no artifact" in str(err.value)
