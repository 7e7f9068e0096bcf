"""Leader failover of discoverd's Raft on real systemd hosts (run: bench/discoverd/run).

Boots its own cluster ("bench", 3 hosts), then repeats: find the Raft leader, power-cut its host
(`scripts/cluster kill`: SIGKILL of the host's PID 1), poll the survivors' `/raft/status` every
20 ms until they agree on a new leader, record the time, boot the killed host again and wait until
it has caught up. Prints every trial, the median and the maximum. A benchmark measures: it never
fails on a figure. The cluster is removed at the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from flynn_dev.benchkit import cluster_command  # noqa: E402 - after the path set-up above

ENV = {**os.environ, "FLYNN_DEV_CLUSTER": "bench", "FLYNN_DEV_SUBNET": "192.168.247.0/24"}


def cluster(*args: str, timeout: float = 300) -> str:
    return cluster_command(ENV, *args, timeout=timeout)


def raft_status(ip: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{ip}:1111/raft/status", timeout=0.5) as resp:
            return dict(json.load(resp))
    except (OSError, urllib.error.URLError, ValueError):
        return None


def hosts() -> dict[str, str]:
    status = json.loads(cluster("status", "--json"))
    return {h["host"]: h["address"] for h in status["hosts"]}


def agreed_leader(ips: list[str]) -> str | None:
    leaders = {(raft_status(ip) or {}).get("leader") for ip in ips}
    if len(leaders) == 1:
        leader = leaders.pop()
        return str(leader) if leader else None
    return None


def linked(a: str, b: str) -> bool:
    """Whether the Raft connection between peers a and b is up, as a sees it."""
    return bool(((raft_status(a) or {}).get("connected") or {}).get(b))


def trial(addrs: dict[str, str]) -> tuple[float, bool]:
    """One power cut of the leader: (seconds to an agreed new leader, whether the survivors' own
    Raft link was up at the cut; without it they cannot elect until it is re-established)."""
    ips = list(addrs.values())
    while (leader := agreed_leader(ips)) is None:
        time.sleep(0.1)
    name = next(h for h, ip in addrs.items() if ip == leader)
    survivors = [ip for ip in ips if ip != leader]
    was_linked = linked(survivors[0], survivors[1]) and linked(survivors[1], survivors[0])
    cluster("kill", name)
    t0 = time.monotonic()
    while True:
        new = agreed_leader(survivors)
        if new is not None and new != leader:
            took = time.monotonic() - t0
            break
        if time.monotonic() - t0 > 60:
            sys.exit("bench: no new leader within 60 s")
        time.sleep(0.02)
    cluster("start", name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        mine, other = raft_status(leader), raft_status(survivors[0])
        # caught up: the same log index as a survivor (so every peer can win the next election)
        if mine and other and mine.get("leader") and mine["index"] >= other["index"]:
            break
        time.sleep(0.2)
    link = "" if was_linked else " (survivors were not yet linked to each other)"
    print(f"  killed {name} (leader): new leader {new} after {took * 1000:.0f} ms{link}", flush=True)
    return took, was_linked


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=10)
    args = p.parse_args()
    try:
        print("bench: booting 3 hosts (cluster 'bench')", flush=True)
        cluster("up", "3", "--discoverd-only", timeout=900)  # discoverd alone: what is measured
        addrs = hosts()
        trials = [trial(addrs) for _ in range(args.kills)]
        times = [t for t, _ in trials]
        print(
            f"\ndiscoverd leader failover over {len(times)} power cuts of the leader host: "
            f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms, "
            f"min {min(times) * 1000:.0f} ms (polling every 20 ms); "
            f"{sum(not ok for _, ok in trials)} cut(s) with the survivors not yet linked"
        )
    finally:
        subprocess.run([str(REPO / "scripts/cluster"), "down", "--wipe"], env=ENV, check=False)


if __name__ == "__main__":
    main()
