"""flynn-host jobs on real systemd hosts: transient units started over D-Bus, followed from D-Bus
signals, artifacts served over HTTP from this machine, health checks, discoverd registration,
stop/crash/failure, the journal, attach, the event stream, a daemon restart, the platform endpoint.

Tests run in file order on one cluster (discoverd only, no bootstrap).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import io
import json
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from flynn.common.errors import APIError
from flynn.host.client import HostClient, SyncHostClient
from tests.integration.conftest import ClusterHandle

pytestmark = pytest.mark.slow

HOST = "host1"
FLYNN_HOST = "/opt/flynn/venv/bin/flynn-host"
SECRET = "s3cr3t-" + uuid.uuid4().hex  # an env value that must never show up in answers or logs

APP_PY = r"""
import http.server, json, os, signal, sys, time, urllib.error, urllib.request

JOB = os.environ["FLYNN_JOB_ID"]
SERVICE = os.environ.get("SERVICE", "")


def registered():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:1111/services/{SERVICE}/instances", timeout=3) as r:
            return any(i["id"] == JOB for i in json.load(r))
    except urllib.error.HTTPError as e:
        return False if e.code == 404 else f"error {e.code}"


def on_term(signum, frame):
    print("registered-at-sigterm:", registered(), flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
print(f"env FOO={os.environ.get('FOO')} PORT={os.environ['PORT']} FLYNN_JOB_ID={JOB}", flush=True)
time.sleep(float(os.environ.get("DELAY", "0")))


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k: os.environ.get(k) for k in ("FOO", "PORT", "FLYNN_JOB_ID", "HOME")}
                          | {"uid": os.getuid(), "cwd": os.getcwd()}).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


print("listening", flush=True)
http.server.HTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever(poll_interval=0.2)
"""


def _tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, mode in (
            ("./app.py", APP_PY.encode(), 0o644),
            ("./bin/web", b'#!/bin/sh\nexec python3 /app/app.py "$@"\n', 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Artifacts:
    """Tarballs served over HTTP from this machine, on the cluster's gateway address."""

    base: str
    blobs: dict[str, bytes] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def artifact(self, name: str, *, sha256: str | None = None) -> dict[str, Any]:
        data = self.blobs[name]
        return {
            "id": f"{name}-{hashlib.sha256(data).hexdigest()[:12]}",
            "type": "tarball",
            "uri": f"{self.base}/{name}",
            "sha256": sha256 if sha256 is not None else hashlib.sha256(data).hexdigest(),
        }


@pytest.fixture(scope="module")
def artifacts(cluster: ClusterHandle) -> Iterator[Artifacts]:
    from flynn_dev import netns

    gateway = netns.Subnet.from_env().gateway
    served = Artifacts(base="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            served.hits.append(name)
            data = served.blobs.get(name)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((gateway, 0), Handler)
    served.base = f"http://{gateway}:{server.server_address[1]}"
    served.blobs["app.tgz"] = _tarball()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def api(cluster: ClusterHandle) -> SyncHostClient:
    return SyncHostClient(f"http://{cluster.ip(HOST)}:1113", timeout=15)


class Recorder:
    """HostClient.watch_jobs in a thread of its own: every (job, state) the host streamed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[str, str]] = []
        self.reconnects = 0
        self.loop = asyncio.new_event_loop()
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),), daemon=True)
        self.thread.start()
        assert self.connected.wait(15), "the event stream did not connect"

    async def _run(self) -> None:
        self.stop_event = asyncio.Event()
        async with HostClient(self.url) as client:
            watch = client.watch_jobs()

            async def consume() -> None:
                async for job in watch:
                    self.seen.append((job["id"], job["state"]))
                    self.reconnects = watch.reconnects
                    if watch.connected.is_set():
                        self.connected.set()

            task = asyncio.get_running_loop().create_task(consume())
            async with asyncio.timeout(15):
                await watch.connected.wait()
            self.connected.set()
            await self.stop_event.wait()
            task.cancel()

    def states(self, job_id: str) -> list[str]:
        out: list[str] = []
        for jid, state in list(self.seen):
            if jid == job_id and (not out or out[-1] != state):
                out.append(state)
        return out

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)


@pytest.fixture(scope="module")
def events(cluster: ClusterHandle) -> Iterator[Recorder]:
    rec = Recorder(f"http://{cluster.ip(HOST)}:1113")
    try:
        yield rec
    finally:
        rec.close()


def job_id() -> str:
    return f"{HOST}-{uuid.uuid4()}"


def wait_job(
    cluster: ClusterHandle, api: SyncHostClient, jid: str, states: set[str], timeout: float = 60
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def check() -> bool:
        found.update(api.get_job(jid))
        return found["state"] in states

    cluster.wait_for(f"job {jid} in {states}", check, timeout=timeout, interval=0.1)
    return found


def show(cluster: ClusterHandle, unit: str, *props: str) -> dict[str, str]:
    res = cluster.exec(HOST, "systemctl", "show", unit, "-p", ",".join(props))
    assert res.rc == 0, res.err
    return dict(line.split("=", 1) for line in res.out.splitlines() if "=" in line)


def instances(cluster: ClusterHandle, service: str) -> list[dict[str, Any]]:
    try:
        return list(cluster.api(HOST).get(f"/services/{service}/instances"))
    except APIError as exc:
        if exc.status == 404:
            return []
        raise


def web_config(jid: str, art: dict[str, Any], **over: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "id": jid,
        "app_id": str(uuid.uuid4()),
        "app_name": "jobsapp",
        "release_id": str(uuid.uuid4()),
        "type": "web",
        "artifact": art,
        "args": ["web"],
        "env": {"FOO": "foo-value", "SERVICE": "jobsapp-web", "DELAY": "2", "API_TOKEN": SECRET},
        "service": "jobsapp-web",
        "check": {"type": "http", "path": "/", "status": 200},
        "resources": {"memory": {"limit": 268435456}, "cpu": {"limit": 1500}},
        "stop_timeout": 5,
    }
    config.update(over)
    return config


STATE: dict[str, Any] = {}  # what earlier tests started, for the later ones


def test_web_job_starts_from_a_tarball_checks_then_registers(
    cluster: ClusterHandle, api: SyncHostClient, artifacts: Artifacts, events: Recorder
) -> None:
    jid = job_id()
    t0 = time.monotonic()
    job = api.start_job(web_config(jid, artifacts.artifact("app.tgz")))
    assert job["state"] == "starting"
    assert 49152 <= job["port"] <= 65535
    assert SECRET not in json.dumps(job)
    # the app sleeps 2 s before listening: meanwhile the job is starting and not in discoverd
    time.sleep(0.8)
    assert api.get_job(jid)["state"] == "starting"
    assert instances(cluster, "jobsapp-web") == []
    up = wait_job(cluster, api, jid, {"up", "failed", "crashed"})
    took = time.monotonic() - t0
    assert up["state"] == "up", up
    print(f"web job with a tarball artifact: PUT -> up in {took:.2f}s (includes the app's 2 s delay)")
    assert artifacts.hits.count("app.tgz") == 1
    regs = instances(cluster, "jobsapp-web")
    assert [r["id"] for r in regs] == [jid]
    assert regs[0]["addr"] == f"{cluster.ip(HOST)}:{job['port']}"
    assert regs[0]["meta"]["FLYNN_JOB_ID"] == jid
    assert cluster.dig("host2", "jobsapp-web.discoverd") == [cluster.ip(HOST)]
    STATE["web"] = up


def test_the_unit_has_the_limits_and_the_sandbox(cluster: ClusterHandle) -> None:
    job = STATE["web"]
    props = show(
        cluster, job["unit"], "MemoryMax", "CPUWeight", "DynamicUser", "Slice", "TasksMax", "ProtectSystem",
        "PrivateTmp", "NoNewPrivileges", "CapabilityBoundingSet", "KillMode", "TimeoutStopUSec", "Type",
        "WorkingDirectory", "SyslogIdentifier", "ActiveState", "SubState",
    )  # fmt: skip
    assert props["MemoryMax"] == "268435456"
    assert props["CPUWeight"] == "150"
    assert props["DynamicUser"] == "yes"
    assert props["Slice"] == "flynn-jobs.slice"
    assert props["TasksMax"] == "512"
    assert props["ProtectSystem"] == "strict"
    assert props["PrivateTmp"] == "yes"
    assert props["NoNewPrivileges"] == "yes"
    assert props["CapabilityBoundingSet"] == ""
    assert props["KillMode"] == "mixed"
    assert props["TimeoutStopUSec"] == "5s"
    assert props["Type"] == "exec"
    assert props["WorkingDirectory"] == "/app"
    assert props["SyslogIdentifier"] == "jobsapp-web"
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    exposure = cluster.exec(HOST, "systemd-analyze", "security", job["unit"], "--no-pager").out
    score = float(exposure.rsplit(f"Overall exposure level for {job['unit']}:", 1)[1].split()[0])
    print(f"systemd-analyze security of a job unit: {score}")
    assert score <= 4.0, exposure[-800:]


def test_the_process_sees_its_env_and_runs_sandboxed(cluster: ClusterHandle, api: SyncHostClient) -> None:
    job = STATE["web"]
    res = cluster.exec("host2", "curl", "-sf", f"http://{cluster.ip(HOST)}:{job['port']}/")
    assert res.rc == 0, res.err
    seen = json.loads(res.out)
    assert seen["FOO"] == "foo-value"
    assert seen["PORT"] == str(job["port"])
    assert seen["FLYNN_JOB_ID"] == job["id"]
    assert seen["HOME"] == "/app"
    assert seen["cwd"] == "/app"
    assert 61184 <= seen["uid"] <= 65519  # a dynamic user
    lines = list(api.job_log(job["id"]))
    assert f"env FOO=foo-value PORT={job['port']} FLYNN_JOB_ID={job['id']}" in lines


def test_bad_input_is_4xx_json_and_starts_nothing(cluster: ClusterHandle, api: SyncHostClient) -> None:
    before = cluster.exec(
        HOST, "systemctl", "list-units", "--all", "--plain", "--no-legend", "flynn-job-*"
    ).out
    cases: list[tuple[str, Any, int]] = [
        (job_id(), {"args": []}, 400),
        (job_id(), {"args": ["x"], "env": {"PORT": "1"}}, 400),
        (job_id(), {"args": ["x"], "resources": {"memory": {"limit": 1}}}, 400),
        (job_id(), {"args": ["x"], "bogus": 1}, 400),
        (job_id(), {"args": ["x"], "artifact": {"id": "a", "uri": "file:///etc/passwd"}}, 400),
        ("host2-" + str(uuid.uuid4()), {"args": ["sleep", "1"]}, 409),
        (STATE["web"]["id"], {"args": ["sleep", "1"]}, 409),
    ]
    url = f"http://{cluster.ip(HOST)}:1113"
    for jid, body, status in cases:
        res = cluster.exec(
            "host2", "curl", "-s", "-X", "PUT", "-H", "Content-Type: application/json",
            "-d", json.dumps(body), "-w", "\n%{http_code}", f"{url}/host/jobs/{jid}",
        )  # fmt: skip
        payload, code = res.out.rsplit("\n", 1)
        assert int(code) == status, (body, res.out)
        answer = json.loads(payload)
        assert answer["code"] == status
        assert isinstance(answer["error"], str)
        assert "\n" not in answer["error"]
    for path, status in (
        ("/host/jobs/host1-nope", 404),
        ("/host/jobs?all=maybe", 400),
        ("/host/jobs/host1-nope/log", 404),
    ):
        res = cluster.exec("host2", "curl", "-s", "-w", "\n%{http_code}", url + path)
        assert res.out.rsplit("\n", 1)[1] == str(status), path
    res = cluster.exec(
        "host2",
        "curl",
        "-s",
        "-X",
        "PUT",
        "-d",
        "{not json",
        "-H",
        "Content-Type: application/json",
        f"{url}/host/jobs/{job_id()}",
    )
    assert json.loads(res.out)["code"] == 400
    after = cluster.exec(
        HOST, "systemctl", "list-units", "--all", "--plain", "--no-legend", "flynn-job-*"
    ).out
    assert after == before


def test_a_crash_is_crashed_with_its_exit_status(
    cluster: ClusterHandle, api: SyncHostClient, artifacts: Artifacts, events: Recorder
) -> None:
    jid = job_id()
    api.start_job(
        {"id": jid, "app_name": "jobsapp", "type": "worker", "artifact": artifacts.artifact("app.tgz"),
         "args": ["sh", "-c", "echo dying now; sleep 0.5; exit 7"]}
    )  # fmt: skip
    job = wait_job(cluster, api, jid, {"crashed", "down", "failed"})
    assert job["state"] == "crashed", job
    assert job["exit_status"] == 7
    assert job["error"] == "exited with status 7"
    assert job["finished_at"]
    assert artifacts.hits.count("app.tgz") == 1  # the cached artifact is reused
    STATE["crashed"] = job
    cluster.wait_for("the crash in the event stream", lambda: "crashed" in events.states(jid), timeout=10)
    assert events.states(jid)[0] == "starting"


def test_ps_a_lists_the_exited_job_and_log_prints_its_output(cluster: ClusterHandle) -> None:
    crashed = STATE["crashed"]
    res = cluster.exec(HOST, FLYNN_HOST, "ps")
    assert res.rc == 0, res.err
    assert STATE["web"]["id"] in res.out
    assert crashed["id"] not in res.out
    res = cluster.exec(HOST, FLYNN_HOST, "ps", "-a")
    assert res.rc == 0, res.err
    row = next(line for line in res.out.splitlines() if line.startswith(crashed["id"]))
    assert row.split()[1:4] == ["jobsapp", "worker", "crashed"]
    assert "(7)" in row
    res = cluster.exec(HOST, FLYNN_HOST, "log", crashed["id"])
    assert res.rc == 0, res.err
    assert res.out.strip().splitlines() == ["dying now"]
    res = cluster.exec(HOST, FLYNN_HOST, "inspect", crashed["id"])
    assert "EXIT_STATUS  7" in res.out
    res = cluster.exec(HOST, FLYNN_HOST, "log", "host1-nope")
    assert res.rc == 1
    assert res.err.startswith("flynn-host: no job 'host1-nope' on this host")


def test_log_last_lines_and_follow_until_the_job_ends(cluster: ClusterHandle, api: SyncHostClient) -> None:
    jid = job_id()
    script = "for i in 1 2 3; do echo line$i; sleep 1.5; done; echo last >&2"
    api.start_job({"id": jid, "args": ["sh", "-c", script]})
    wait_job(cluster, api, jid, {"up"})
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        everything = pool.submit(cluster.exec, HOST, FLYNN_HOST, "log", "-f", jid, timeout=60)
        cluster.wait_for(
            "the first line", lambda: "line1" in list(api.job_log(jid)), timeout=10, interval=0.1
        )
        tail = pool.submit(cluster.exec, HOST, FLYNN_HOST, "log", "-f", "-n", "1", jid, timeout=60)
        res, res_tail = everything.result(), tail.result()  # both return once the job ended
    print(f"log -f of a 4.5 s job returned after {time.monotonic() - t0:.2f}s")
    assert res.rc == 0, res.err
    assert res.out.splitlines() == ["line1", "line2", "line3", "last"]
    assert res_tail.rc == 0, res_tail.err
    assert res_tail.out.splitlines() == ["line1", "line2", "line3", "last"]  # the last 1, then new ones
    assert api.get_job(jid)["state"] == "down"
    res = cluster.exec(HOST, FLYNN_HOST, "log", "-n", "2", jid)
    assert res.out.splitlines() == ["line3", "last"]
    res = cluster.exec(HOST, FLYNN_HOST, "log", "-n", "0", jid)
    assert res.out == ""


def test_a_checksum_mismatch_is_failed(
    cluster: ClusterHandle, api: SyncHostClient, artifacts: Artifacts
) -> None:
    artifacts.blobs["other.tgz"] = artifacts.blobs["app.tgz"] + b""  # a new id, same bytes
    art = artifacts.artifact("other.tgz", sha256="0" * 64)
    jid = job_id()
    api.start_job({"id": jid, "artifact": art, "args": ["web"]})
    job = wait_job(cluster, api, jid, {"failed", "up", "crashed"})
    assert job["state"] == "failed"
    assert "sha256 mismatch" in job["error"]
    assert job["started_at"] is None  # no unit was ever started
    res = cluster.exec(HOST, "ls", "/var/lib/flynn/artifacts")
    assert art["id"] not in res.out.split()  # nothing of it is kept
    missing = job_id()
    api.start_job(
        {"id": missing, "artifact": {"id": "nope", "uri": f"{artifacts.base}/nope.tgz"}, "args": ["web"]}
    )
    job = wait_job(cluster, api, missing, {"failed", "up", "crashed"})
    assert job["state"] == "failed"
    assert "HTTP 404" in job["error"]


def test_attach_streams_stdin_and_stdout_and_passes_the_exit_code(
    cluster: ClusterHandle, api: SyncHostClient
) -> None:
    jid = job_id()
    url = f"http://{cluster.ip(HOST)}:1113"

    async def attach() -> list[Any]:
        frames: list[Any] = []
        async with HostClient(url) as client:
            await client.start_job(
                {
                    "id": jid,
                    "attach": True,
                    "args": ["sh", "-c", 'read line; echo "echo:$line"; echo err >&2; exit 3'],
                }
            )
            await asyncio.sleep(1)  # the unit waits for the client
            assert (await client.get_job(jid))["started_at"] is None
            async with aiohttp.ClientSession() as session, session.ws_connect(client.attach_url(jid)) as ws:
                await ws.send_bytes(b"hello host\n")
                async with asyncio.timeout(30):
                    async for msg in ws:
                        frames.append(msg.data)
        return frames

    frames = asyncio.run(attach())
    stdout = b"".join(f[1:] for f in frames if isinstance(f, bytes) and f[:1] == b"\x01")
    stderr = b"".join(f[1:] for f in frames if isinstance(f, bytes) and f[:1] == b"\x02")
    assert stdout == b"echo:hello host\n"
    assert stderr == b"err\n"
    assert json.loads(frames[-1]) == {"exit": 3}
    job = api.get_job(jid)
    assert job["state"] == "crashed"
    assert job["exit_status"] == 3


def test_signal(cluster: ClusterHandle, api: SyncHostClient) -> None:
    jid = job_id()
    t0 = time.monotonic()
    api.start_job(
        {"id": jid, "args": ["sh", "-c", "trap 'echo got-usr1; exit 0' USR1; while :; do sleep 0.1; done"]}
    )
    wait_job(cluster, api, jid, {"up"})
    print(f"job without artifact or check: PUT -> up in {time.monotonic() - t0:.2f}s (polled every 0.1 s)")
    time.sleep(0.5)  # the shell has installed its trap
    api.signal_job(jid, "SIGUSR1")
    job = wait_job(cluster, api, jid, {"down", "crashed"})
    assert job["state"] == "down"
    assert "got-usr1" in list(api.job_log(jid))
    with pytest.raises(APIError) as err:
        api.signal_job(jid, "SIGUSR1")
    assert err.value.status == 409


def test_flynn_host_restart_keeps_a_running_job(
    cluster: ClusterHandle, api: SyncHostClient, events: Recorder
) -> None:
    job = STATE["web"]
    pid = show(cluster, job["unit"], "MainPID")["MainPID"]
    t0 = time.monotonic()
    assert cluster.exec(HOST, "systemctl", "restart", "flynn-host").rc == 0
    cluster.wait_for("the host API", lambda: _answers(api), timeout=30)
    print(f"flynn-host restart: API back in {time.monotonic() - t0:.2f}s")
    again = api.get_job(job["id"])
    assert again["state"] == "up"
    assert again["port"] == job["port"]
    assert show(cluster, job["unit"], "MainPID")["MainPID"] == pid
    assert [r["id"] for r in instances(cluster, "jobsapp-web")] == [job["id"]]
    assert job["id"] in [j["id"] for j in api.list_jobs()]
    cluster.wait_for("the event stream to reconnect", lambda: events.reconnects >= 1, timeout=20)


def _answers(api: SyncHostClient) -> bool:
    try:
        api.status()
    except APIError:
        return False
    return True


def test_stop_deregisters_before_the_process_gets_sigterm(
    cluster: ClusterHandle, api: SyncHostClient, events: Recorder
) -> None:
    job = STATE["web"]  # recovered by the restarted daemon: it still follows the unit
    stopped = api.stop_job(job["id"])
    assert stopped["state"] == "stopping"
    done = wait_job(cluster, api, job["id"], {"down", "crashed"}, timeout=30)
    assert done["state"] == "down"
    assert done["error"] is None
    assert instances(cluster, "jobsapp-web") == []
    # the app asked discoverd from its SIGTERM handler whether it was still registered
    assert "registered-at-sigterm: False" in list(api.job_log(job["id"]))
    assert show(cluster, job["unit"], "LoadState")["LoadState"] == "not-found"  # the unit is gone
    cluster.wait_for("down in the event stream", lambda: "down" in events.states(job["id"]), timeout=10)
    states = events.states(job["id"])
    assert states[:2] == ["starting", "up"]
    assert states[-2:] == ["stopping", "down"]


def test_env_never_reaches_the_daemons_log(cluster: ClusterHandle) -> None:
    res = cluster.exec(HOST, "journalctl", "-u", "flynn-host", "--no-pager", "-o", "cat")
    assert res.rc == 0
    assert "starting" in res.out
    assert SECRET not in res.out
    res = cluster.exec(HOST, "sh", "-c", "cat /var/lib/flynn/jobs/*.json")
    assert SECRET not in res.out


def test_platform_endpoint_writes_env_and_restarts_the_service(
    cluster: ClusterHandle, api: SyncHostClient
) -> None:
    env_file = cluster.exec(HOST, "cat", "/etc/flynn/discoverd.env").out
    env = dict(line.split("=", 1) for line in env_file.splitlines() if "=" in line)
    secret = cluster.exec(HOST, "cat", "/etc/flynn/discoverd.secret").out.strip()
    before = show(cluster, "flynn-discoverd.service", "MainPID")["MainPID"]
    answer = api.configure_platform("discoverd", env, secret=secret)
    assert answer["unit"] == "flynn-discoverd.service"
    assert answer["result"] == "done"
    assert answer["state"] == "active"
    assert show(cluster, "flynn-discoverd.service", "MainPID")["MainPID"] != before
    for name in ("discoverd.env", "discoverd.secret"):
        assert cluster.exec(HOST, "stat", "-c", "%a", f"/etc/flynn/{name}").out.strip() == "600"
    assert cluster.exec(HOST, "cat", "/etc/flynn/discoverd.secret").out == secret + "\n"
    assert cluster.exec(HOST, "systemctl", "is-enabled", "flynn-discoverd.service").out.strip() == "enabled"
    cluster.wait_for("discoverd back", lambda: cluster.raft_status(HOST) is not None, timeout=30)
    for name, body, status in (("nope", {"env": {}}, 404), ("discoverd", {"env": {"1BAD": "x"}}, 400)):
        with pytest.raises(APIError) as err:
            api.http.put(f"/host/platform/{name}", body)
        assert err.value.status == status
    assert cluster.exec(HOST, "cat", "/etc/flynn/discoverd.env").out == answer_env(env)


def answer_env(env: dict[str, str]) -> str:
    from flynn.common.envfile import render_env

    return render_env(env)


def test_units_verify(cluster: ClusterHandle) -> None:
    res = cluster.exec(
        HOST,
        "systemd-analyze",
        "verify",
        "flynn-host.service",
        "flynn-jobs.slice",
        "flynn-build-cleanup.service",
    )
    assert res.rc == 0, res.err
    assert (
        cluster.exec(HOST, "systemctl", "show", "flynn-jobs.slice", "-p", "LoadState").out.strip()
        == "LoadState=loaded"
    )
