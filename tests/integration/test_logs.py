"""Issue 7 acceptance on a real bootstrapped 3-host cluster: job output in journald (two streams,
fields, priorities), ``flynn log`` across hosts through the controller and the log aggregators,
``-f``, filters, ``flynn-host log`` / ``ps -a`` on a host, a syslog sink (a small RFC 5424
receiver on this machine, tests/syslog_receiver.py) that is killed for 10 s, and a restart of
every aggregator.

The app is tests/apps/log-lines: ``printer`` jobs write 1,000 numbered lines each (every 100th
also on stderr) and then stay up silently; one-off jobs (``flynn run``) write the other lines.
Tests run in file order on one cluster.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flynn.common.http import Client
from tests.integration.conftest import REPO, ClusterHandle
from tests.integration.test_apps import FLYNN, TarballServer, flynn, ok
from tests.syslog_receiver import SyslogReceiver

pytestmark = pytest.mark.slow

BOOTSTRAP = True  # the whole platform (see conftest.cluster)
APP_DIR = REPO / "tests/apps/log-lines"
APP = "loglines"
LINES = 1000
SECRET = "s3cr3t-" + uuid.uuid4().hex  # in the release env: it must not reach any platform log
SINK_BUFFER = 10_000


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory, creds: dict[str, Any]) -> Path:
    path = tmp_path_factory.mktemp("flynn") / "flynnrc"
    out = flynn(path, "cluster", "add", "-d", "logs", creds["controller_url"], creds["key"])
    assert out.returncode == 0, out.stderr
    return path


@pytest.fixture(scope="module")
def api(creds: dict[str, Any]) -> Client:
    return Client(creds["controller_url"], key=creds["key"], timeout=30)


@pytest.fixture(scope="module")
def gateway() -> str:
    from flynn_dev import netns

    return netns.Subnet.from_env().gateway


@pytest.fixture(scope="module")
def tarball_url(tmp_path_factory: pytest.TempPathFactory, gateway: str) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("artifacts")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(APP_DIR.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(APP_DIR)), recursive=False)
    (directory / "log-lines.tar.gz").write_bytes(buf.getvalue())
    server = TarballServer(directory, gateway)
    yield f"{server.base}/log-lines.tar.gz"
    server.close()


def log_lines(rc: Path, *args: str) -> list[str]:
    return ok(rc, "-a", APP, "log", *args, timeout=120).splitlines()


def jobs(rc: Path, state: str | None = None) -> list[dict[str, Any]]:
    listed = json.loads(ok(rc, "-a", APP, "ps", "-a", "--json"))
    return [j for j in listed if state is None or j["state"] == state]


def printers(rc: Path) -> list[dict[str, Any]]:
    return [j for j in jobs(rc, "up") if j["type"] == "printer"]


def wait_until(what: str, check: Any, timeout: float = 60, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_detached(rc: Path, *cmd: str) -> str:
    return ok(rc, "-a", APP, "run", "-d", "--", *cmd).strip()


def job_done(rc: Path, job_id: str) -> bool:
    return any(j["id"] == job_id and j["state"] in ("down", "crashed", "failed") for j in jobs(rc))


# -- jobs' output into journald and out through `flynn log` ------------------------------------------


def test_1000_lines_from_3_jobs_on_3_hosts_come_in_order(
    cluster: ClusterHandle, rc: Path, tarball_url: str
) -> None:
    ok(rc, "create", APP)
    release = rc.parent / "release.json"
    release.write_text(
        json.dumps(
            {"env": {"LOG_SECRET": SECRET}, "processes": {"printer": {"args": ["python3", "/app/lines.py"]}}}
        )
    )
    ok(rc, "-a", APP, "release", "add", "-f", str(release), tarball_url)
    ok(rc, "-a", APP, "scale", "printer=3", timeout=240)
    up = printers(rc)
    assert {j["host_id"] for j in up} == {"host1", "host2", "host3"}
    want = 3 * (LINES + LINES // 100)

    def complete() -> list[str] | None:
        out = log_lines(rc)
        return out if len(out) >= want else None

    out = wait_until("every job's 1,000 lines in `flynn log`", complete, 60)
    assert len(out) == want
    stamps = [line.split(" ", 1)[0] for line in out]
    assert stamps == sorted(stamps)  # across hosts, in time order
    for job in up:
        prefix = f"{APP}[printer.{job['id']}]"
        mine = [line for line in out if f" {prefix}" in line]
        stdout = [line for line in mine if f"{prefix}: " in line]
        stderr = [line for line in mine if f"{prefix} stderr: " in line]
        assert [line.rsplit(" ", 1)[1] for line in stdout] == [str(i) for i in range(1, LINES + 1)]
        assert all(f"{job['id']} line " in line for line in stdout)
        assert [line.rsplit(" ", 1)[1] for line in stderr] == [str(i) for i in range(100, LINES + 1, 100)]
        assert all(f"{job['id']} err " in line for line in stderr)  # stderr lines are marked


def test_the_journal_has_the_fields_and_priorities(cluster: ClusterHandle, rc: Path) -> None:
    job = printers(rc)[0]
    res = cluster.exec(job["host_id"], "journalctl", "-o", "json", f"FLYNN_JOB_ID={job['id']}", timeout=60)
    assert res.rc == 0, res.err
    entries = [json.loads(x) for x in res.out.splitlines()]
    assert len(entries) == LINES + LINES // 100
    for e in entries:
        assert e["_SYSTEMD_UNIT"] == f"flynn-job-{job['id']}.service"
        assert e["FLYNN_APP_ID"] == job["app_id"]
        assert e["FLYNN_RELEASE_ID"] == job["release_id"]
        assert e["FLYNN_PROCESS_TYPE"] == "printer"
        assert e["FLYNN_APP_NAME"] == APP
        assert e["SYSLOG_IDENTIFIER"] == f"{APP}-printer"
        assert e["PRIORITY"] == ("3" if " err " in e["MESSAGE"] else "6")


def test_platform_services_log_with_the_same_fields_and_show_in_flynn_log(
    cluster: ClusterHandle, rc: Path
) -> None:
    res = cluster.exec("host1", "journalctl", "-o", "json", "FLYNN_APP_NAME=controller", timeout=60)
    entries = [json.loads(x) for x in res.out.splitlines()]
    assert entries, res.err
    assert {e["_SYSTEMD_UNIT"] for e in entries} == {"flynn-controller.service"}
    out = ok(rc, "-a", "blobstore", "log")  # seed 000: "check the logs with flynn -a blobstore log"
    hosts = {
        line.split("[service.", 1)[1].split("-", 1)[0] for line in out.splitlines() if "[service." in line
    }
    assert hosts == {"host1", "host2", "host3"}
    assert all(line.split(" ", 2)[1].startswith("blobstore[service.") for line in out.splitlines())


def test_attached_jobs_are_unaffected(rc: Path) -> None:
    out = flynn(rc, "-a", APP, "run", "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 4", timeout=120)
    assert out.returncode == 4
    assert "to-out" in out.stdout
    assert "to-err" in out.stderr
    assert "to-err" not in out.stdout


def test_follow_shows_a_new_line_within_1s(rc: Path) -> None:
    proc = subprocess.Popen(
        [FLYNN, "-a", APP, "log", "-f", "-r", "-n", "0"],
        env={**os.environ, "FLYNNRC": str(rc)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append((time.time(), line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        time.sleep(2)  # the follow is open
        run_detached(rc, "python3", "/app/tick.py", "10", "0.3")
        wait_until("10 ticks", lambda: sum(1 for _, x in seen if x.startswith("tick ")) >= 10, 60, 0.1)
    finally:
        proc.terminate()
        proc.wait(10)
    # the hosts are containers on this machine's kernel: one realtime clock for writer and reader
    delays = [arrived - float(line.split()[2]) for arrived, line in seen if line.startswith("tick ")]
    print("flynn log -f delay per line (s):", " ".join(f"{d:.3f}" for d in delays))
    print(f"median {statistics.median(delays):.3f}s, max {max(delays):.3f}s")
    assert statistics.median(delays) <= 1.0


def test_filters_by_type_and_job(rc: Path) -> None:
    ticks = log_lines(rc, "-t", "run", "-r")
    assert [x.split()[1] for x in ticks if x.startswith("tick ")] == [str(i) for i in range(10)]
    assert not any(" line " in x for x in ticks)
    job = printers(rc)[1]
    only = log_lines(rc, "-j", job["id"])
    assert len(only) == LINES + LINES // 100
    assert all(f"[printer.{job['id']}]" in x for x in only)
    assert len(log_lines(rc, "-t", "printer", "-n", "5")) == 5
    assert log_lines(rc, "-t", "nosuchtype") == []
    bad = flynn(rc, "-a", APP, "log", "-t", "Bad Type")
    assert bad.returncode == 1
    assert bad.stderr.startswith("flynn: process_type")


def test_flynn_host_log_and_ps_a_on_the_jobs_host(cluster: ClusterHandle, rc: Path) -> None:
    job = printers(rc)[2]
    res = cluster.exec(job["host_id"], "/opt/flynn/venv/bin/flynn-host", "log", job["id"], timeout=60)
    assert res.rc == 0, res.err
    lines = res.out.splitlines()
    assert [x for x in lines if " line " in x] == [f"{job['id']} line {i}" for i in range(1, LINES + 1)]
    assert len([x for x in lines if " err " in x]) == LINES // 100
    crashed = run_detached(rc, "sh", "-c", "echo goodbye; exit 3")
    wait_until("the one-off job to exit", lambda: job_done(rc, crashed), 60)
    host = crashed.split("-", 1)[0]
    ps = cluster.exec(host, "/opt/flynn/venv/bin/flynn-host", "ps", "-a")
    assert ps.rc == 0, ps.err
    row = next(x for x in ps.out.splitlines() if x.startswith(crashed))
    assert "crashed (3)" in row
    assert cluster.exec(host, "/opt/flynn/venv/bin/flynn-host", "log", crashed).out.strip() == "goodbye"
    assert crashed not in cluster.exec(host, "/opt/flynn/venv/bin/flynn-host", "ps").out  # finished: -a only


# -- a syslog sink -----------------------------------------------------------------------------------


def sink_status(api: Client, sink_id: str) -> dict[str, Any]:
    status = api.get(f"/sinks/{sink_id}")["status"]
    return dict(status) if status else {}


def add_sink(rc: Path, api: Client, url: str) -> str:
    """`flynn cluster log-sink add syslog URL`, once the aggregator leader is connected to it."""
    sink_id = ok(rc, "cluster", "log-sink", "add", "syslog", url).split()[2]
    wait_until("the aggregator leader to connect", lambda: sink_status(api, sink_id).get("connected"), 60)
    return sink_id


def burst_lines(receiver: SyslogReceiver, tag: str) -> list[int]:
    return [int(m.msg.split()[1]) for m in list(receiver.messages) if m.msg.startswith(f"{tag} ")]


def test_a_syslog_sink_gets_every_line_and_survives_its_receiver_dying(
    rc: Path, api: Client, gateway: str
) -> None:
    receiver = SyslogReceiver(host=gateway).start()
    try:
        sink_id = add_sink(rc, api, f"syslog://{gateway}:{receiver.port}")
        job = run_detached(rc, "python3", "/app/burst.py", "A", "500")
        wait_until("500 lines at the receiver", lambda: len(burst_lines(receiver, "A")) >= 500, 60)
        assert burst_lines(receiver, "A") == list(range(500))
        msg = next(m for m in receiver.messages if m.msg == "A 0")
        sd = msg.sd["flynn@32473"]
        assert sd["job_id"] == job
        assert sd["type"] == "run"
        assert sd["stream"] == "stdout"
        assert msg.app_name == APP
        assert msg.procid == f"run.{job}"
        assert msg.hostname == job.split("-", 1)[0]
        assert receiver.errors == []

        # killed for 10 s while the app writes: lines wait in the sink's buffer, then arrive
        receiver.stop()
        t0 = time.monotonic()
        job_b = run_detached(rc, "python3", "/app/burst.py", "B", "3000")
        wait_until("the burst to end", lambda: job_done(rc, job_b), 60)
        wait_until("3000 lines buffered", lambda: sink_status(api, sink_id).get("buffered", 0) >= 3000, 60)
        assert not sink_status(api, sink_id)["connected"]
        time.sleep(max(0.0, 10 - (time.monotonic() - t0)))
        receiver.start()
        wait_until("the lines written meanwhile", lambda: len(burst_lines(receiver, "B")) >= 3000, 60)
        assert burst_lines(receiver, "B") == list(range(3000))
        assert sink_status(api, sink_id)["dropped"] == 0

        # more than the buffer holds while it is down: the oldest are dropped, and reported
        receiver.stop()
        extra = 2000
        job_c = run_detached(rc, "python3", "/app/burst.py", "C", str(SINK_BUFFER + extra))
        wait_until("the big burst to end", lambda: job_done(rc, job_c), 120)
        wait_until("the buffer to fill", lambda: sink_status(api, sink_id).get("dropped", 0) >= extra, 60)
        receiver.start()
        wait_until("the buffered lines", lambda: sink_status(api, sink_id).get("buffered", 1) == 0, 60)
        # "buffered" is 0 once the lines are written to the socket: the receiver may still be
        # reading them
        wait_until("the receiver to read them", lambda: len(burst_lines(receiver, "C")) >= SINK_BUFFER, 60)
        status = sink_status(api, sink_id)
        assert status["dropped"] == extra
        got = burst_lines(receiver, "C")
        assert got == list(range(extra, SINK_BUFFER + extra))  # the newest 10,000, in order
        listing = ok(rc, "cluster", "log-sink").splitlines()
        row = next(x for x in listing if x.startswith(sink_id)).split()
        assert row[4] == str(extra)  # DROPPED, as the CLI reports it
        assert receiver.errors == []
        ok(rc, "cluster", "log-sink", "remove", sink_id)
    finally:
        receiver.stop()


def test_a_crashed_sink_leader_is_succeeded_without_losing_lines(
    cluster: ClusterHandle, rc: Path, api: Client, gateway: str
) -> None:
    receiver = SyslogReceiver(host=gateway).start()
    try:
        sink_id = add_sink(rc, api, f"syslog://{gateway}:{receiver.port}")
        job = run_detached(rc, "python3", "/app/burst.py", "D", "200")
        wait_until("the first lines", lambda: len(set(burst_lines(receiver, "D"))) >= 200, 60)
        leader = cluster.api("host1").get("/services/logaggregator/leader")
        host = next(h for h in cluster.hosts if leader["addr"].startswith(cluster.ip(h) + ":"))
        # the leader's process dies (a crash) and the app goes on writing: nobody ships until
        # another instance leads (discoverd expires the dead one) or the restarted process
        # (Restart=always, the same instance id) registers again and leads; either starts with
        # empty shippers and must resume from the positions the dead one published
        res = cluster.exec(host, "systemctl", "kill", "--signal=KILL", "flynn-logaggregator.service")
        assert res.rc == 0, res.err
        job = run_detached(rc, "python3", "/app/burst.py", "E", "3000")
        wait_until("the burst to end", lambda: job_done(rc, job), 60)
        t0 = time.monotonic()
        wait_until("every line written meanwhile", lambda: len(set(burst_lines(receiver, "E"))) >= 3000, 120)
        print(f"every line of the burst at the receiver {time.monotonic() - t0:.1f}s after it ended")
        got = burst_lines(receiver, "E")
        assert sorted(set(got)) == list(range(3000))
        assert got == sorted(got)  # in order (a line may come twice: at least once)
        assert sorted(set(burst_lines(receiver, "D"))) == list(range(200))
        print(f"duplicates: {len(got) - 3000} of E, {len(burst_lines(receiver, 'D')) - 200} of D")
        assert receiver.errors == []
        ok(rc, "cluster", "log-sink", "remove", sink_id)
    finally:
        receiver.stop()


# -- the aggregators restart -------------------------------------------------------------------------


def test_restarting_every_aggregator_keeps_the_last_10000_lines(cluster: ClusterHandle, rc: Path) -> None:
    before = log_lines(rc)
    assert len(before) == 10_000  # the app wrote more than that: the buffer is full
    t0 = time.monotonic()
    for host in cluster.hosts:
        res = cluster.exec(host, "systemctl", "restart", "flynn-logaggregator.service", timeout=240)
        assert res.rc == 0, res.err
    print(f"3 aggregators restarted (each reading the journals back) in {time.monotonic() - t0:.1f}s")

    def registered() -> bool:
        try:
            return len(cluster.api("host1").get("/services/logaggregator/instances")) == 3
        except Exception:
            return False

    wait_until("3 aggregators registered again", registered, 120)
    after = log_lines(rc)
    assert len(after) == 10_000
    assert sorted(after) == sorted(before)  # the same lines (ties in time may order apart)
    for line in before[:3]:
        assert line in after


def test_no_secret_reached_a_platform_log(cluster: ClusterHandle) -> None:
    for host in cluster.hosts:
        res = cluster.exec(
            host, "sh", "-c", f"journalctl -u 'flynn-*' -o cat | grep -c {SECRET} || true", timeout=60
        )
        assert res.out.strip() == "0", f"{host}: {res.out}"


# -- the whole cluster stopped and started again (last: it restarts every host) -------------------


@pytest.mark.destructive
def test_down_and_up_again_brings_the_platform_and_the_app_back(cluster: ClusterHandle, rc: Path) -> None:
    before = cluster.host_status("host1")
    res = cluster.cli("down")  # without --wipe: the hosts' state is kept
    assert res.rc == 0, res.err
    res = cluster.cli("up", "2")
    assert res.rc != 0
    assert "kept 3 host(s)" in res.err, res.err  # not another cluster over the kept one
    res = cluster.cli("up", "3", timeout=900)
    assert res.rc == 0, res.err or res.out
    assert "kept state: the platform is back" in res.out, res.out
    assert "bootstrap" not in res.out  # not bootstrapped a second time
    after = cluster.host_status("host1")
    assert after["created_at"] == before["created_at"]
    assert after["booted_at"] > before["booted_at"]
    assert APP in ok(rc, "apps")
    wait_until(
        "the app's lines, read back from the journals", lambda: len(log_lines(rc, "-n", "5")) == 5, 120
    )
