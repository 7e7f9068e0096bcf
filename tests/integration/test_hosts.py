"""Foundation acceptance: real systemd hosts, the host API across hosts, the cluster script.

Tests that disturb the cluster (kill, stop, partition) come last in this module and leave every
host running again.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from tests.integration.conftest import CLUSTER, ClusterHandle


def test_every_host_boots_to_running_with_flynn_host_active(cluster: ClusterHandle) -> None:
    for host in cluster.hosts:
        assert cluster.exec(host, "systemctl", "is-system-running").out.strip() == "running"
        assert cluster.exec(host, "systemctl", "is-active", "flynn-host.service").out.strip() == "active"


def test_systemd_is_pid_1_inside_each_host(cluster: ClusterHandle) -> None:
    for host in cluster.hosts:
        assert cluster.exec(host, "cat", "/proc/1/comm").out.strip() == "systemd"


def test_host_api_across_hosts_by_name(cluster: ClusterHandle) -> None:
    for src in cluster.hosts:
        for dst in cluster.hosts:
            res = cluster.exec(src, "curl", "-sS", "-w", "\n%{http_code}", f"http://{dst}:1113/host/status")
            body, code = res.out.rsplit("\n", 1)
            assert code == "200", f"{src} -> {dst}: {res.err}"
            status = json.loads(body)
            assert status["id"] == dst
            assert {"address": cluster.ip(dst), "family": "inet", "interface": "host0"} in status["addresses"]


def test_hosts_resolve_each_other_by_name(cluster: ClusterHandle) -> None:
    for src in cluster.hosts:
        for dst in cluster.hosts:
            res = cluster.exec(src, "getent", "hosts", dst)
            assert res.out.split()[0] == cluster.ip(dst)


def test_machine_reaches_every_host(cluster: ClusterHandle) -> None:
    for host in cluster.hosts:
        with urllib.request.urlopen(f"http://{cluster.ip(host)}:1113/host/status", timeout=5) as resp:
            assert json.load(resp)["id"] == host


def test_journal_and_systemctl_reachable_from_outside(cluster: ClusterHandle) -> None:
    res = cluster.exec("host2", "journalctl", "-u", "flynn-host", "--no-pager", "-o", "cat")
    assert res.rc == 0
    assert "host host2 serving the host API on 0.0.0.0:1113" in res.out
    res = cluster.exec("host2", "systemctl", "status", "flynn-host", "--no-pager")
    assert "Active: active (running)" in res.out


def test_flynn_host_unit_is_notify_hardened_and_verified(cluster: ClusterHandle) -> None:
    props = cluster.exec(
        "host1", "systemctl", "show", "flynn-host.service",
        "-p", "Type,NoNewPrivileges,ProtectSystem,PrivateTmp,WatchdogUSec,Slice,CapabilityBoundingSet",
    ).out  # fmt: skip
    shown = dict(line.split("=", 1) for line in props.splitlines())
    assert shown["Type"] == "notify"
    assert shown["NoNewPrivileges"] == "yes"
    assert shown["ProtectSystem"] == "strict"
    assert shown["PrivateTmp"] == "yes"
    assert shown["Slice"] == "flynn.slice"
    assert shown["CapabilityBoundingSet"] == ""
    assert shown["WatchdogUSec"] == "30s"
    verify = cluster.exec("host1", "systemd-analyze", "verify", "flynn-host.service", "flynn.slice")
    assert verify.rc == 0, verify.err
    exposure = cluster.exec("host1", "systemd-analyze", "security", "flynn-host.service", "--no-pager").out
    score = float(exposure.rsplit("Overall exposure level for flynn-host.service:", 1)[1].split()[0])
    assert score <= 2.5, exposure[-500:]


def test_host_cli_inside_host(cluster: ClusterHandle) -> None:
    res = cluster.exec("host3", "/opt/flynn/venv/bin/flynn-host", "status", "--json")
    assert res.rc == 0, res.err
    assert json.loads(res.out)["id"] == "host3"
    res = cluster.exec(
        "host3", "/opt/flynn/venv/bin/flynn-host", "status", "--host", "127.0.0.1", "--port", "1"
    )
    assert res.rc == 1
    assert res.err.startswith("flynn-host: cannot reach http://127.0.0.1:1")


def test_exec_passes_exit_code_and_stdin(cluster: ClusterHandle) -> None:
    assert cluster.exec("host1", "sh", "-c", "exit 7").rc == 7
    proc = subprocess.run(
        [*CLUSTER, "exec", "host2", "cat"],
        input="piped\n",
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.stdout == "piped\n"


def test_status_lists_hosts_with_memory(cluster: ClusterHandle) -> None:
    hosts = {h["host"]: h for h in cluster.status()["hosts"]}
    assert set(hosts) == set(cluster.hosts)
    for h in hosts.values():
        assert h["state"] == "running"
        assert h["system"] == "running"
        assert h["flynn_host"] == "active"
        assert isinstance(h["memory"], int)
        assert h["memory"] > 1 << 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("up", "0"), "host count must be 1-50, got 0"),
        (("up", "3"), "cluster is already up (host1 host2 host3)"),
        (("exec", "nosuchhost", "true"), "no such host: nosuchhost (hosts: host1 host2 host3)"),
        (("start", "host1"), "host1 is already running"),
        (("exec", "host1"), "exec needs a command"),
    ],
)
def test_bad_input_is_refused_and_destroys_nothing(
    cluster: ClusterHandle, args: tuple[str, ...], message: str
) -> None:
    before = {h["host"]: h["pid"] for h in cluster.status()["hosts"]}
    res = cluster.cli(*args)
    assert res.rc == 1
    assert res.err.strip() == f"cluster: {message}" or res.err.strip().startswith(f"cluster: {message}")
    assert len(res.err.strip().splitlines()) == 1
    after = {h["host"]: h["pid"] for h in cluster.status()["hosts"]}
    assert after == before  # same PID 1 in every host: nothing was restarted or stopped


def test_restarting_flynn_host_keeps_the_identity(cluster: ClusterHandle) -> None:
    before = cluster.host_status("host1")
    assert cluster.exec("host1", "systemctl", "restart", "flynn-host").rc == 0
    after = cluster.host_status("host1")
    assert (after["id"], after["created_at"]) == (before["id"], before["created_at"])
    assert after["daemon_uptime"] < before["daemon_uptime"] + 1


@pytest.mark.destructive
def test_power_cut_and_start_keeps_host_state(cluster: ClusterHandle) -> None:
    before = cluster.host_status("host3")
    marker = cluster.exec("host3", "sh", "-c", "echo kept > /var/lib/flynn/marker && sync")
    assert marker.rc == 0
    # what a build job cut off by the power leaves: its StateDirectory and systemd's symlink
    build = "/var/lib/private/flynn-build/job1"
    stale = cluster.exec(
        "host3",
        "sh",
        "-c",
        f"mkdir -p -m 0700 {build}/app && echo x > {build}/app/f && mkdir -p /var/lib/flynn-build"
        " && ln -s ../private/flynn-build/job1 /var/lib/flynn-build/job1 && sync",
    )
    assert stale.rc == 0, stale.err
    res = cluster.cli("kill", "host3")
    assert res.rc == 0, res.err
    assert cluster.exec("host1", "curl", "-s", "-m", "2", "http://host3:1113/host/status").rc != 0
    assert {h["host"]: h["state"] for h in cluster.status()["hosts"]}["host3"] == "stopped"
    res = cluster.cli("start", "host3")
    assert res.rc == 0, res.err
    after = cluster.host_status("host3")
    assert after["id"] == before["id"] == "host3"
    assert after["created_at"] == before["created_at"]  # host.json survived the power cut
    assert after["machine_id"] == before["machine_id"]
    assert after["booted_at"] > before["booted_at"]  # and it really rebooted
    assert cluster.exec("host3", "cat", "/var/lib/flynn/marker").out == "kept\n"
    # the leftover build directory went at boot, before flynn-host could start a job
    left = cluster.exec("host3", "ls", "-A", "/var/lib/private", "/var/lib")
    assert "flynn-build" not in left.out, left.out
    cleanup = cluster.exec("host3", "systemctl", "show", "-p", "Result,ActiveState", "flynn-build-cleanup")
    assert sorted(cleanup.out.split()) == ["ActiveState=active", "Result=success"], cleanup.out
    # the other hosts reach it again
    status = cluster.exec("host1", "curl", "-sf", "http://host3:1113/host/status")
    assert json.loads(status.out)["id"] == "host3"


@pytest.mark.destructive
def test_orderly_stop_and_start(cluster: ClusterHandle) -> None:
    before = cluster.host_status("host2")
    assert cluster.cli("stop", "host2").rc == 0
    assert cluster.cli("stop", "host2").err.strip() == "cluster: host2 is not running"
    assert cluster.cli("start", "host2").rc == 0
    after = cluster.host_status("host2")
    assert after["created_at"] == before["created_at"]
    assert after["booted_at"] > before["booted_at"]
    # an orderly shutdown leaves a clean journal: the previous boot is listed
    boots = cluster.exec("host2", "journalctl", "--list-boots", "--no-pager").out.strip().splitlines()
    assert len(boots) >= 3  # header + at least two boots


@pytest.mark.destructive
def test_partition_and_heal(cluster: ClusterHandle) -> None:
    assert cluster.cli("partition", "host2").rc == 0
    assert cluster.status()["hosts"][1]["state"] == "partitioned"
    assert cluster.exec("host1", "curl", "-s", "-m", "2", "http://host2:1113/host/status").rc != 0
    assert cluster.exec("host2", "curl", "-s", "-m", "2", "http://host1:1113/host/status").rc != 0
    assert cluster.exec("host2", "curl", "-sf", "http://127.0.0.1:1113/host/status").rc == 0  # still alive
    assert cluster.cli("heal", "host2").rc == 0
    cluster.wait_for(
        "host1 to reach host2 again",
        lambda: cluster.exec("host1", "curl", "-sf", "-m", "2", "http://host2:1113/host/status").rc == 0,
        timeout=20,
    )
