"""The blobstore benchmark (run it with bench/blobstore/run).

One file of ``--size-mb`` random megabytes (default 100 MB = 100,000,000 bytes) on disk, stored and
fetched whole, in one run, through:

* flynn-blobstore: the real daemon (``python -m flynn.blobstore.daemon``, uvloop) on its
  PostgreSQL backend, a throwaway PostgreSQL 15 from tests/pg.py (fsync off, as in the tests);
* nginx: one worker, WebDAV ``PUT`` (written to a temporary file, renamed into place) and static
  ``GET`` (sendfile) of the same file from a directory — a C server doing the least a blob server
  can do, the peer to compare with.

Both are driven by the same client, curl (one transfer at a time, ``Expect:`` off), pinned to CPU 0;
the servers (nginx; the blobstore and PostgreSQL together) are pinned to CPU 1, so each side has the
same core (``--no-pin`` lets the kernel place them). Every round measures each server once
(alternating which goes first) and the table shows the median with the min-max spread, plus the
servers' own CPU time (user+system from /proc, every process of the server) per transfer, which is
steadier than MB/s on a shared machine. Each PUT replaces the previous round's blob; the
blobstore removes the replaced version's chunks after answering (its sweeper): the bench waits
for that before the GET and counts its CPU in the PUT's, not its time (the client had its answer).
After the rounds both copies are fetched again and compared (sha256) with the source file, and the
blobstore's peak RSS growth is printed.

Nothing here is a test: it measures and prints; it never fails on a figure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "services")]

from tests.pg import PostgresServer, free_port  # noqa: E402 - after the path set-up above

PY = REPO / ".venv/bin/python"
CLIENT_CPU = "0"
SERVER_CPU = "1"
MB = 1_000_000
TICK = os.sysconf("SC_CLK_TCK")


def nginx_conf(d: Path, port: int, root: Path) -> str:
    return f"""
user www-data www-data;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx.err warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {root}/.tmp;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{
      dav_methods PUT DELETE;
      create_full_put_path on;
      client_max_body_size 0;
      client_body_buffer_size 1m;
    }}
  }}
}}
"""


def tree_cpu_seconds(roots: set[int]) -> float:
    """user+system CPU of these live processes and all their live descendants.

    By process tree, not process group: PostgreSQL's children call setsid() and leave the group.
    """
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])
    total = 0
    for pid, t in ticks.items():
        p = pid
        while p > 1 and p not in roots:
            p = parent.get(p, 0)
        if p in roots:
            total += t
    return total / TICK


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def pin(pid: int, cpu: str) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], check=True, capture_output=True)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        subprocess.run(["taskset", "-a", "-p", "-c", cpu, child], check=False, capture_output=True)


def wait_http(url: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own local URL
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return  # it answers (nginx: 403/404 for the directory)
            time.sleep(0.1)
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"bench: {url} does not answer")


@dataclass
class Target:
    name: str
    url: str  # of the blob
    roots: set[int]  # pids whose process trees are the server
    settle: Callable[[], None] = lambda: None  # waits for work a PUT leaves behind (the sweep)
    put_mbs: list[float] = field(default_factory=list)
    get_mbs: list[float] = field(default_factory=list)
    put_cpu: list[float] = field(default_factory=list)
    get_cpu: list[float] = field(default_factory=list)


def curl(args: list[str], pinned: bool) -> tuple[int, float]:
    prefix = ["taskset", "-c", CLIENT_CPU] if pinned else []
    out = subprocess.run(
        [
            *prefix,
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_total}",
            "-H",
            "Expect:",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"bench: curl failed: {out.stderr.strip()}")
    code, seconds = out.stdout.split()
    return int(code), float(seconds)


def measure(target: Target, blob: Path, size: int, pinned: bool) -> None:
    cpu0 = tree_cpu_seconds(target.roots)
    code, seconds = curl(["-T", str(blob), target.url], pinned)
    target.settle()  # its CPU counts for the PUT; its time does not (the client has its answer)
    cpu1 = tree_cpu_seconds(target.roots)
    if code not in (200, 201, 204):
        raise SystemExit(f"bench: PUT to {target.name} answered {code}")
    target.put_mbs.append(size / MB / seconds)
    target.put_cpu.append(cpu1 - cpu0)
    code, seconds = curl([target.url], pinned)
    cpu2 = tree_cpu_seconds(target.roots)
    if code != 200:
        raise SystemExit(f"bench: GET from {target.name} answered {code}")
    target.get_mbs.append(size / MB / seconds)
    target.get_cpu.append(cpu2 - cpu1)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fetch_sha(url: str) -> str:
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - our own local URL
        while chunk := resp.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"


class Servers:
    """PostgreSQL + flynn-blobstore and nginx, started in ``tmp``; stopped by :meth:`stop`."""

    def __init__(self, tmp: Path, pinned: bool) -> None:
        self.tmp = tmp
        self.prefix = ["taskset", "-c", SERVER_CPU] if pinned else []
        self.pinned = pinned
        self.pg = PostgresServer(role="blobstore")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.blob_port, self.nginx_port = free_port(), free_port()

    def start(self) -> list[Target]:
        self.pg.start()
        assert self.pg.proc is not None
        if self.pinned:
            pin(self.pg.proc.pid, SERVER_CPU)
        url = self.pg.create_database("blobstore")
        self.dbname = "blobstore"
        with (self.tmp / "blobstore.log").open("wb") as log:
            self.daemon = self._spawn(
                [str(PY), "-m", "flynn.blobstore.daemon"],
                log,
                {
                    "DATABASE_URL": url,
                    "BLOBSTORE_PORT": str(self.blob_port),
                    "BLOBSTORE_LISTEN_IP": "127.0.0.1",
                    "PYTHONPATH": str(REPO / "services"),
                },
            )
        dav = self.tmp / "dav"
        (dav / ".tmp").mkdir(parents=True)
        shutil.chown(dav, "www-data", "www-data")
        shutil.chown(dav / ".tmp", "www-data", "www-data")
        (self.tmp / "nginx.conf").write_text(nginx_conf(self.tmp, self.nginx_port, dav))
        nginx = self._spawn(["nginx", "-c", str(self.tmp / "nginx.conf"), "-p", str(self.tmp)], None, {})
        wait_http(f"http://127.0.0.1:{self.blob_port}/status")
        wait_http(f"http://127.0.0.1:{self.nginx_port}/")
        return [
            Target(
                "flynn-blobstore",
                f"http://127.0.0.1:{self.blob_port}/bench/blob.bin",
                {self.daemon.pid, self.pg.proc.pid},
                self.wait_swept,
            ),
            Target("nginx", f"http://127.0.0.1:{self.nginx_port}/bench/blob.bin", {nginx.pid}),
        ]

    def wait_swept(self, limit: float = 120.0) -> None:
        """Until the replaced version's chunks are gone (the daemon's sweeper runs after a PUT)."""
        deadline = time.monotonic() + limit
        with self.pg.superuser(self.dbname) as conn:
            while time.monotonic() < deadline:
                row = conn.execute("SELECT count(*) FROM files WHERE deleted_at IS NOT NULL").fetchone()
                if row is not None and row[0] == 0:
                    return
                time.sleep(0.02)
        raise SystemExit("bench: the sweeper did not finish")

    def _spawn(self, argv: list[str], log: IO[bytes] | None, env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*self.prefix, *argv],
            env={**os.environ, **env},
            stdout=log if log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.pg.stop()


def report(targets: list[Target], rss_growth_kib: int, checks: dict[str, bool]) -> None:
    print()
    head = f"{'PUT MB/s (min-max)':>24} {'GET MB/s (min-max)':>24} {'CPU s/PUT':>10} {'CPU s/GET':>10}"
    print(f"{'target':16} {head}")
    for t in targets:
        print(
            f"{t.name:16} {spread(t.put_mbs):>24} {spread(t.get_mbs):>24}"
            f" {statistics.median(t.put_cpu):10.2f} {statistics.median(t.get_cpu):10.2f}"
        )
    blob_t, nginx_t = targets
    med = statistics.median
    print()
    put_ratio = med(blob_t.put_mbs) / med(nginx_t.put_mbs)
    get_ratio = med(blob_t.get_mbs) / med(nginx_t.get_mbs)
    print(f"ratio flynn-blobstore / nginx (medians): PUT {put_ratio:.2f}, GET {get_ratio:.2f}")
    floor = 1 / TICK
    print(
        "server CPU per transfer, flynn-blobstore / nginx: "
        f"PUT {med(blob_t.put_cpu) / max(med(nginx_t.put_cpu), floor):.1f}x, "
        f"GET {med(blob_t.get_cpu) / max(med(nginx_t.get_cpu), floor):.1f}x"
        " (the blobstore's includes PostgreSQL's)"
    )
    print(f"flynn-blobstore peak RSS growth over the rounds: {rss_growth_kib / 1024:.1f} MiB")
    verdicts = ", ".join(f"{k} {'ok' if v else 'MISMATCH'}" for k, v in checks.items())
    print(f"content check (sha256 of a final GET = the source file): {verdicts}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--no-pin", action="store_true", help="do not pin client and servers to CPUs")
    args = ap.parse_args()
    for tool in ("nginx", "curl", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is missing (bench/blobstore/run installs it)")
    pinned = not args.no_pin and (os.cpu_count() or 1) >= 2
    size = args.size_mb * MB
    tmp = Path(tempfile.mkdtemp(prefix="flynn-blobstore-bench-"))
    tmp.chmod(0o755)
    blob = tmp / "blob.bin"
    with blob.open("wb") as f:
        for _ in range(args.size_mb):
            f.write(os.urandom(MB))
    source_sha = sha256_file(blob)
    servers = Servers(tmp, pinned)
    try:
        targets = servers.start()
        where = f"client on CPU {CLIENT_CPU}, servers on CPU {SERVER_CPU}" if pinned else "not pinned"
        print(f"bench: {args.size_mb} MB blob, {args.rounds} rounds, {where}", flush=True)
        for t in targets:  # warm-up (code paths, caches, a first version to replace)
            measure(t, blob, size, pinned)
            for series in (t.put_mbs, t.get_mbs, t.put_cpu, t.get_cpu):
                series.clear()
        pid = servers.daemon.pid
        rss_base = status_kb(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        for r in range(args.rounds):
            for t in targets if r % 2 == 0 else targets[::-1]:
                measure(t, blob, size, pinned)
            line = ", ".join(
                f"{t.name} PUT {t.put_mbs[-1]:.0f} GET {t.get_mbs[-1]:.0f} MB/s" for t in targets
            )
            print(f"  round {r + 1}: {line}", flush=True)
        rss_growth = status_kb(pid, "VmHWM") - rss_base
        checks = {t.name: fetch_sha(t.url) == source_sha for t in targets}
    finally:
        servers.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report(targets, rss_growth, checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
