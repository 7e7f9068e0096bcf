"""Real clusters of systemd hosts (systemd-nspawn) for the integration tests: one per test module.

It runs as cluster "test" (its own network namespace, subnet and state directory), so a developer's
cluster from scripts/up can stay up meanwhile. Booting 3 hosts and bootstrapping discoverd takes a
few seconds, so each module gets a fresh cluster; teardown powers everything off, wipes the state
and checks that no host, namespace, mount or cgroup is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flynn.common.errors import APIError
from flynn.common.http import Client

os.environ.setdefault("FLYNN_DEV_CLUSTER", "test")
REPO = Path(__file__).resolve().parents[2]
CLUSTER = [str(REPO / "scripts/cluster")]
HOSTS = ("host1", "host2", "host3")


@dataclass
class Result:
    rc: int
    out: str
    err: str


@dataclass
class ClusterHandle:
    hosts: tuple[str, ...]

    def cli(self, *args: str, timeout: float = 300) -> Result:
        proc = subprocess.run(
            [*CLUSTER, *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def exec(self, host: str, *cmd: str, timeout: float = 60) -> Result:
        return self.cli("exec", host, "--", *cmd, timeout=timeout)

    def ip(self, host: str) -> str:
        res = self.cli("ip", host)
        assert res.rc == 0, res.err
        return res.out.strip()

    def status(self) -> dict[str, Any]:
        res = self.cli("status", "--json")
        assert res.rc == 0, res.err
        return dict(json.loads(res.out))

    def host_status(self, host: str) -> dict[str, Any]:
        """The host's own /host/status, asked from inside the host."""
        res = self.exec(host, "curl", "-sf", "http://127.0.0.1:1113/host/status")
        assert res.rc == 0, res.err
        return dict(json.loads(res.out))

    def wait_for(self, what: str, check: Any, timeout: float = 60, interval: float = 0.25) -> float:
        """Poll ``check`` until it is true; returns the seconds it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if check():
                return time.monotonic() - t0
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def api(self, host: str, timeout: float = 10) -> Client:
        """The discoverd API of a host, reached from this machine."""
        return Client(f"http://{self.ip(host)}:1111", timeout=timeout)

    def raft_status(self, host: str) -> dict[str, Any] | None:
        try:
            return dict(self.api(host, timeout=1).get("/raft/status"))
        except APIError:
            return None

    def dig(self, host: str, name: str, qtype: str = "A") -> list[str]:
        """Answers of the real `dig` asked at a host's DNS server (sorted)."""
        proc = subprocess.run(
            ["dig", "+short", "+time=1", "+tries=2", f"@{self.ip(host)}", name, qtype],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        return sorted(line for line in proc.stdout.splitlines() if line and not line.startswith(";"))


def leftovers() -> list[str]:
    """Everything of the test cluster that must be gone after `down --wipe`."""
    from flynn_dev import netns

    found = []
    if Path(f"/run/netns/{netns.NETNS}").exists():
        found.append(f"netns {netns.NETNS}")
    if subprocess.run(["ip", "link", "show", netns.VETH], check=False, capture_output=True).returncode == 0:
        found.append(f"link {netns.VETH}")
    for line in Path("/proc/mounts").read_text().splitlines():
        if f"cluster-{netns.NAME}" in line:
            found.append("mount " + line.split()[1])
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "systemd-nspawn" in cmd and f"cluster-{netns.NAME}/" in cmd:
            stat = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if stat != "Z":
                found.append(f"process {pid_dir.name}")
    for cg in Path("/sys/fs/cgroup").glob(f"*/flynn-{netns.NAME}.slice"):
        found.append(f"cgroup {cg}")
    return found


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[ClusterHandle]:
    """A fresh cluster for the module. A module that sets ``BOOTSTRAP = True`` gets the whole platform
    (`flynn-host bootstrap`: PostgreSQL, controllers, schedulers); the others only discoverd."""
    c = ClusterHandle(HOSTS)
    pre = c.cli("status", "--json")
    if pre.rc == 0 and json.loads(pre.out)["hosts"]:
        # a previous run that was cut off: running hosts, or stopped ones whose state `up` would
        # start again instead of making a fresh cluster
        c.cli("down", "--wipe")
    mode = [] if getattr(request.module, "BOOTSTRAP", False) else ["--discoverd-only"]
    res = c.cli("up", str(len(HOSTS)), *mode, timeout=1800)
    assert res.rc == 0, f"cluster up failed: {res.err or res.out}"
    print(res.out)
    try:
        yield c
    finally:
        down = c.cli("down", "--wipe", timeout=300)
        assert down.rc == 0, down.err
        deadline = time.monotonic() + 10  # exiting nspawn processes may take a moment to be reaped
        while (left := leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"left behind after down --wipe: {left}"


@pytest.fixture(scope="module")
def creds(cluster: ClusterHandle) -> dict[str, Any]:
    """What `flynn-host bootstrap` wrote for the operator (controller URL and key, domain, CA, pin)."""
    res = cluster.exec("host1", "cat", "/etc/flynn/bootstrap.json")
    assert res.rc == 0, res.err
    return dict(json.loads(res.out))
