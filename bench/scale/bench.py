"""Scale an app 0 -> N jobs across 3 hosts (run: bench/scale/run).

Boots its own bootstrapped cluster ("bench", 3 hosts), creates an app from tests/apps/env-echo,
then per round: `flynn scale web=N` (which returns once every job is up: started by the scheduler
as transient units, health-checked and registered in discoverd) and back to 0. The peer, measured
in the same run: the same N processes started straight with `systemd-run` on the hosts (N/3 per
host, in parallel), each waited for until its port accepts connections -- what systemd alone costs,
with no controller, scheduler or discoverd. Prints each round, the medians and the ratio.
A benchmark measures: it never fails on a figure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from flynn_dev.benchkit import cluster_command  # noqa: E402 - after the path set-up above

SUBNET = "192.168.247.0/24"
GATEWAY = "192.168.247.1"
ENV = {**os.environ, "FLYNN_DEV_CLUSTER": "bench", "FLYNN_DEV_SUBNET": SUBNET}
FLYNN = str(REPO / ".venv/bin/flynn")


def cluster(*args: str, timeout: float = 900) -> str:
    return cluster_command(ENV, *args, timeout=timeout)


def flynn(rc: Path, *args: str) -> str:
    proc = subprocess.run(
        [FLYNN, *args], env={**os.environ, "FLYNNRC": str(rc)}, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"bench: flynn {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_tarball(directory: Path) -> str:
    buf = io.BytesIO()
    app = REPO / "tests/apps/env-echo"
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(app.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(app)), recursive=False)
    (directory / "app.tgz").write_bytes(buf.getvalue())
    handler = lambda *a: Quiet(*a, directory=str(directory))  # noqa: E731
    httpd = ThreadingHTTPServer((GATEWAY, 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://{GATEWAY}:{httpd.server_address[1]}/app.tgz"


def accepting(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.2):
            return True
    except OSError:
        return False


def systemd_round(hosts: dict[str, str], n: int, app_dir: str, round_no: int) -> float:
    """N plain transient units across the hosts, each running the same app, until all accept."""
    per_host = {h: [i for i in range(n) if i % len(hosts) == k] for k, h in enumerate(sorted(hosts))}

    def start(host: str) -> list[tuple[str, int]]:
        script = " ".join(
            f"systemd-run --quiet --unit=bench-{round_no}-{i} -p DynamicUser=yes -E PORT={50000 + i} "
            f"python3 {app_dir}/app.py &&"
            for i in per_host[host]
        )
        cluster("exec", host, "sh", "-c", script + " true")
        return [(hosts[host], 50000 + i) for i in per_host[host]]

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
        targets = [t for ts in pool.map(start, sorted(hosts)) for t in ts]
    pending = set(targets)
    deadline = t0 + 120
    while pending:
        pending = {t for t in pending if not accepting(*t)}
        if pending and time.monotonic() > deadline:
            sys.exit(f"bench: {len(pending)} systemd-run units never accepted connections")
        if pending:
            time.sleep(0.02)
    took = time.monotonic() - t0
    for host in hosts:
        cluster("exec", host, "sh", "-c", f"systemctl stop 'bench-{round_no}-*'")
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            print("bench: booting and bootstrapping 3 hosts (cluster 'bench')", flush=True)
            cluster("up", "3")
            hosts = {h["host"]: h["address"] for h in json.loads(cluster("status", "--json"))["hosts"]}
            creds = json.loads(cluster("exec", "host1", "cat", "/etc/flynn/bootstrap.json"))
            rc = Path(tmp) / "flynnrc"
            flynn(rc, "cluster", "add", "-d", "bench", creds["controller_url"], creds["key"])
            url = serve_tarball(Path(tmp))
            (Path(tmp) / "release.json").write_text(
                json.dumps({"processes": {"web": {"args": ["python3", "/app/app.py"]}}})
            )
            flynn(rc, "create", "scaleapp")
            flynn(rc, "-a", "scaleapp", "release", "add", "-f", str(Path(tmp) / "release.json"), url)
            # the app's files on every host, for the systemd-run peer
            app_dir = "/srv/bench-app"  # not /var/tmp: DynamicUser units get a private one
            for host in hosts:
                cluster(
                    "exec", host, "sh", "-c", f"mkdir -p {app_dir} && curl -sf {url} | tar xz -C {app_dir}"
                )
            flynn_times, systemd_times = [], []
            for r in range(args.rounds):
                t0 = time.monotonic()
                flynn(rc, "-a", "scaleapp", "scale", f"web={args.jobs}", "--timeout", "300")
                flynn_times.append(time.monotonic() - t0)
                flynn(rc, "-a", "scaleapp", "scale", "web=0", "--timeout", "300")
                systemd_times.append(systemd_round(hosts, args.jobs, app_dir, r))
                print(
                    f"  round {r + 1}: flynn scale 0->{args.jobs} {flynn_times[-1]:.2f}s, "
                    f"systemd-run {args.jobs} units {systemd_times[-1]:.2f}s",
                    flush=True,
                )
            fm, sm = statistics.median(flynn_times), statistics.median(systemd_times)
            print(
                f"\nscale 0->{args.jobs} jobs over 3 hosts, median of {args.rounds}: flynn {fm:.2f}s "
                f"(scheduler + host API + health check + discoverd), systemd-run alone {sm:.2f}s; "
                f"ratio {fm / sm:.2f}x the bare systemd time"
            )
        finally:
            subprocess.run([str(REPO / "scripts/cluster"), "down", "--wipe"], env=ENV, check=False)


if __name__ == "__main__":
    main()
