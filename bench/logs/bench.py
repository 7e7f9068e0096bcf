"""Log throughput end to end (run it with bench/logs/run).

Boots its own bootstrapped cluster ("lgbnch", ``--hosts`` hosts, 1 by default: the machine has
two cores, and every extra host runs a whole platform), deploys tests/apps/log-lines and, per
round, starts one job (``flynn run -d -- python3 /app/burst.py TAG N``) that writes ``--lines``
numbered lines as fast as it can, while two readers that were started before it count them:

* ``flynn log -f -r`` on this machine: journald on the job's host -> ``flynn-host``'s
  ``GET /host/logs`` -> a log aggregator -> the controller -> the CLI (what is measured);
* ``journalctl -f -o cat`` on the job's host, reading the same journal directly (the peer: what
  journald itself delivers to a follower on the same host, no network, no Python).

For each reader: lines/s from its first to its last line of the job, and how long after the job
wrote its last line (journald's own timestamp of it) the reader had it. Also the job's own write
rate into journald (its first and last line's journal timestamps). Prints every round, the
medians and the ratio ``flynn log -f`` / ``journalctl -f``. A benchmark measures: it never fails
on a figure. The cluster is removed at the end (``--keep`` leaves it up).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "services"), str(REPO / "scripts")]
from flynn_dev.benchkit import cluster_command  # noqa: E402 - after the path set-up above

CLUSTER = "lgbnch"
SUBNET = "192.168.242.0/24"
ENV = {**os.environ, "FLYNN_DEV_CLUSTER": CLUSTER, "FLYNN_DEV_SUBNET": SUBNET}
FLYNN = str(REPO / ".venv/bin/flynn")
APP = "logbench"


def cluster(*args: str, timeout: float = 900) -> str:
    return cluster_command(ENV, *args, timeout=timeout)


def flynn(rc: Path, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run(
        [FLYNN, *args],
        env={**ENV, "FLYNNRC": str(rc)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"bench: flynn {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Reader:
    """Counts the lines of one tag a follower prints, with the time each count was reached."""

    name: str
    proc: subprocess.Popen[str]
    tag: str = ""
    want: int = 0
    first: float | None = None
    last: float | None = None
    count: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            if not self.tag or not line.startswith(self.tag + " "):
                continue
            now = time.time()
            if self.first is None:
                self.first = now
            self.count += 1
            self.last = now
            if self.count >= self.want:
                self.done.set()

    def expect(self, tag: str, want: int) -> None:
        self.tag, self.want, self.count, self.first, self.last = tag, want, 0, None, None
        self.done.clear()

    def wait_all(self, quiet: float) -> bool:
        """Until every line came (True) or none came for ``quiet`` seconds (False)."""
        seen, since = self.count, time.monotonic()
        while not self.done.wait(0.5):
            if self.count != seen:
                seen, since = self.count, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return False
        return True

    def rate(self) -> float:
        if self.first is None or self.last is None or self.last <= self.first:
            return float("nan")
        return (self.count - 1) / (self.last - self.first)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def tarball(directory: Path) -> Path:
    src = REPO / "tests/apps/log-lines"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
    out = directory / "log-lines.tar.gz"
    out.write_bytes(buf.getvalue())
    return out


def journal_span(job_id: str, host: str) -> tuple[float, float, int]:
    """The job's first and last line's journal timestamps (s) and its number of lines."""
    out = cluster(
        "exec",
        host,
        "--",
        "journalctl",
        "-o",
        "json",
        f"FLYNN_JOB_ID={job_id}",
        "--output-fields=__REALTIME_TIMESTAMP",
        timeout=300,
    )
    stamps = [int(json.loads(x)["__REALTIME_TIMESTAMP"]) / 1e6 for x in out.splitlines() if x.strip()]
    return (min(stamps), max(stamps), len(stamps)) if stamps else (float("nan"), float("nan"), 0)


def report_round(row: dict[str, Any]) -> None:
    print(
        f"round {row['round']}: job wrote {row['written']} lines "
        f"at {row['write_rate']:,.0f}/s into journald; "
        f"journalctl -f {row['journalctl_rate']:,.0f} lines/s (last +{row['journalctl_lag']:.2f}s, "
        f"{row['journalctl_seen']} seen); "
        f"flynn log -f {row['flynn_rate']:,.0f} lines/s (last +{row['flynn_lag']:.2f}s, "
        f"{row['flynn_seen']} seen); run to last line {row['total']:.1f}s",
        flush=True,
    )


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    def med(key: str) -> float:
        return float(statistics.median(float(r[key]) for r in rows))

    print()
    print(f"lines per round: {args.lines}, rounds: {args.rounds}, hosts: {args.hosts}")
    print(f"{'':28}{'lines/s (median)':>18}{'last line after (s)':>22}")
    print(f"{'job -> journald':28}{med('write_rate'):>18,.0f}{'':>22}")
    print(f"{'journalctl -f (peer)':28}{med('journalctl_rate'):>18,.0f}{med('journalctl_lag'):>22.2f}")
    print(f"{'flynn log -f (end to end)':28}{med('flynn_rate'):>18,.0f}{med('flynn_lag'):>22.2f}")
    print(f"ratio flynn log -f / journalctl -f: {med('flynn_rate') / med('journalctl_rate'):.2f}")


def main() -> None:  # noqa: PLR0915 - the bench's one sequence, in order
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hosts", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="leave the cluster up")
    args = p.parse_args()

    from flynn_dev import netns  # scripts/flynn_dev: the subnet's machine-side address

    os.environ.update(FLYNN_DEV_SUBNET=SUBNET)
    gateway = netns.Subnet.from_env().gateway
    print(f"bench: booting and bootstrapping {args.hosts} host(s) (cluster {CLUSTER})", flush=True)
    t0 = time.monotonic()
    cluster("down", "--wipe")
    readers: list[Reader] = []
    server = None
    try:
        cluster("up", str(args.hosts))
        print(f"bench: cluster up in {time.monotonic() - t0:.0f}s", flush=True)
        import tempfile

        from tests.integration.test_apps import TarballServer

        work = Path(tempfile.mkdtemp(prefix="logbench-"))
        server = TarballServer(tarball(work).parent, gateway)
        creds = json.loads(cluster("exec", "host1", "--", "cat", "/etc/flynn/bootstrap.json"))
        rc = work / "flynnrc"
        flynn(rc, "cluster", "add", "-d", "bench", creds["controller_url"], creds["key"])
        flynn(rc, "create", APP)
        release = work / "release.json"
        release.write_text(json.dumps({"processes": {"printer": {"args": ["python3", "/app/lines.py"]}}}))
        flynn(rc, "-a", APP, "release", "add", "-f", str(release), f"{server.base}/log-lines.tar.gz")
        hosts = [f"host{k}" for k in range(1, args.hosts + 1)]
        log_f = Reader(
            "flynn log -f",
            subprocess.Popen(
                [FLYNN, "-a", APP, "log", "-f", "-r", "-n", "0"],
                env={**ENV, "FLYNNRC": str(rc)},
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            ),
        )
        readers.append(log_f)
        journal_f = {
            h: Reader(
                "journalctl -f",
                subprocess.Popen(
                    [
                        str(REPO / "scripts/cluster"),
                        "exec",
                        h,
                        "--",
                        "journalctl",
                        "-f",
                        "-n",
                        "0",
                        "-o",
                        "cat",
                        "_SYSTEMD_SLICE=flynn-jobs.slice",
                    ],
                    env=ENV,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                ),
            )
            for h in hosts
        }
        readers += journal_f.values()
        for r in readers:
            r.start()
        time.sleep(3)  # both followers are open
        rows: list[dict[str, Any]] = []
        for rnd in range(1, args.rounds + 1):
            tag = f"R{rnd}x{os.getpid()}"
            for r in readers:
                r.expect(tag, args.lines)
            started = time.time()
            job = flynn(
                rc, "-a", APP, "run", "-d", "--", "python3", "/app/burst.py", tag, str(args.lines)
            ).strip()
            host = job.split("-", 1)[0]
            jr = journal_f[host]
            for r in (log_f, jr):
                if not r.wait_all(quiet=15):
                    print(f"bench: {r.name} saw {r.count} of {args.lines} lines (none for 15s)", flush=True)
            first, last, written = journal_span(job, host)
            row = {
                "round": rnd,
                "written": written,
                "write_rate": (written - 1) / (last - first) if last > first else float("nan"),
                "journalctl_seen": jr.count,
                "journalctl_rate": jr.rate(),
                "journalctl_lag": (jr.last or float("nan")) - last,
                "flynn_rate": log_f.rate(),
                "flynn_lag": (log_f.last or float("nan")) - last,
                "flynn_seen": log_f.count,
                "total": (log_f.last or float("nan")) - started,
            }
            rows.append(row)
            report_round(row)
            time.sleep(2)
        report(rows, args)
    finally:
        for r in readers:
            r.stop()
        if server is not None:
            server.close()
        if not args.keep:
            cluster("down", "--wipe")


if __name__ == "__main__":
    main()
