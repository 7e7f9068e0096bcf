"""DNS benchmark: discoverd's DNS server against dnsmasq answering the same records (run: bench/dns/run).

Both servers listen on 127.0.0.1 high ports and are pinned to one CPU, dnsperf to the other. The
record set (SERVICES services x INSTANCES instances, leader = oldest instance) is written once as
JSON for our server and as a hosts file + srv-host lines for dnsmasq (no upstream). Before measuring,
every query of the query file is asked of both with dig and the answers compared (names, types,
data, TTL; order ignored); a mismatch stops the run. Each repeat runs dnsperf for the same duration
with the same query file against each server (alternating which goes first), and reads the server's
CPU time from /proc/PID/stat (utime + stime) before and after. Prints queries/s and CPU time per
query per run, then the median, the spread (min-max) and the ratios to dnsmasq. Never fails on a
figure: a benchmark measures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    server: str
    qps: float
    completed: int
    lost: int
    cpu_s: float
    rcodes: str
    other_busy: float  # share of the two CPUs' time used by anything but the server and dnsperf

    @property
    def disturbed(self) -> bool:
        return self.other_busy > 0.05

    @property
    def cpu_per_query_us(self) -> float:
        return self.cpu_s / self.completed * 1e6 if self.completed else float("nan")


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def addr_label(ip: str) -> str:
    return ip.replace(".", "-")


def make_records(services: int, instances: int) -> dict[str, dict[str, object]]:
    records: dict[str, dict[str, object]] = {}
    for i in range(services):
        insts = [[f"10.{i // 250}.{i % 250}.{k + 1}", 5000 + k] for k in range(instances)]
        records[f"svc-{i:03d}"] = {"instances": insts, "leader": insts[0]}
    return records


def write_dnsmasq_config(workdir: Path, records: dict[str, dict[str, object]], port: int) -> Path:
    hosts: list[str] = []
    srv: list[str] = []
    for name, rec in records.items():
        insts = rec["instances"]
        leader = rec["leader"]
        assert isinstance(insts, list)
        assert isinstance(leader, list)
        for ip, inst_port in insts:
            hosts.append(f"{ip} {name}.discoverd")
            hosts.append(f"{ip} {addr_label(ip)}.addr.discoverd")
            srv.append(f"srv-host=_{name}._tcp.discoverd,{addr_label(ip)}.addr.discoverd,{inst_port},1,1")
        hosts.append(f"{leader[0]} leader.{name}.discoverd")
    hosts_file = workdir / "hosts"
    hosts_file.write_text("\n".join(hosts) + "\n")
    conf = workdir / "dnsmasq.conf"
    conf.write_text(
        "\n".join(
            [
                f"port={port}",
                "listen-address=127.0.0.1",
                "bind-interfaces",
                "no-resolv",
                "no-hosts",
                "no-poll",
                f"addn-hosts={hosts_file}",
                "local=/discoverd/",
                "local-ttl=5",
                "cache-size=10000",
                "pid-file=",
                "user=root",
                *srv,
            ]
        )
        + "\n"
    )
    for path in (workdir, hosts_file, conf):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return conf


def write_queries(workdir: Path, records: dict[str, dict[str, object]]) -> Path:
    lines: list[str] = []
    for name in records:
        lines += [f"{name}.discoverd A", f"_{name}._tcp.discoverd SRV", f"leader.{name}.discoverd A"]
    random.Random(7).shuffle(lines)
    path = workdir / "queries.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def dig(port: int, name: str, qtype: str) -> tuple[str, list[str], list[str]]:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=2", "+noedns", name, qtype],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    status = re.search(r"status: (\w+)", out)
    sections: dict[str, list[str]] = {"ANSWER": [], "ADDITIONAL": []}
    current = ""
    for line in out.splitlines():
        m = re.match(r";; (\w+) SECTION:", line)
        if m:
            current = m.group(1)
            continue
        if current in sections and line and not line.startswith(";"):
            sections[current].append(" ".join(line.split()).lower())
    return (
        (status.group(1) if status else "NO ANSWER"),
        sorted(sections["ANSWER"]),
        sorted(sections["ADDITIONAL"]),
    )


def compare_answers(ours: int, theirs: int, queries: Path) -> int:
    """Number of answer + additional records compared, or -1 if any query is answered differently."""
    mismatches = compared = 0
    for line in queries.read_text().split("\n"):
        if not line:
            continue
        name, qtype = line.split()
        a, b = dig(ours, name, qtype), dig(theirs, name, qtype)
        compared += len(a[1]) + len(a[2])
        if a != b or a[0] != "NOERROR" or not a[1]:
            mismatches += 1
            if mismatches <= 3:
                print(f"  MISMATCH {name} {qtype}:\n    ours:    {a}\n    dnsmasq: {b}")
    return -1 if mismatches else compared


def wait_ready(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if dig(port, "svc-000.discoverd", "A")[0] == "NOERROR":
            return
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not answer")


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # after "pid (comm) ": state is field 3, utime field 14, stime field 15 (1-based, man proc)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def dnsperf(port: int, queries: Path, args: argparse.Namespace, duration: int) -> dict[str, str]:
    argv = ["taskset", "-c", str(args.client_cpu), "dnsperf", "-s", "127.0.0.1", "-p", str(port)]
    argv += ["-d", str(queries), "-l", str(duration), "-q", str(args.outstanding), "-t", "2"]
    argv += ["-e"] if args.edns else []
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    result: dict[str, str] = {}
    for key in ("Queries completed", "Queries lost", "Queries per second", "Response codes"):
        m = re.search(rf"{key}:\s+(.*)", out)
        result[key] = m.group(1).strip() if m else ""
    return result


def cpu_jiffies(cpus: tuple[int, ...]) -> tuple[int, int]:
    """(busy, total) jiffies of these CPUs since boot, from /proc/stat."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(v) for v in values[:8]]
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]  # minus idle and iowait
    return busy, total


def measure(name: str, pid: int, port: int, args: argparse.Namespace, queries: Path) -> Run:
    cpus = (args.server_cpu, args.client_cpu)
    before = cpu_seconds(pid)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, total0 = cpu_jiffies(cpus)
    res = dnsperf(port, queries, args, args.duration)
    busy1, total1 = cpu_jiffies(cpus)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = cpu_seconds(pid) - before
    client = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    other = ((busy1 - busy0) / CLK_TCK - used - client) / max((total1 - total0) / CLK_TCK, 1e-9)
    return Run(
        server=name,
        qps=float(res["Queries per second"] or 0),
        completed=int(res["Queries completed"].split()[0] or 0),
        lost=int(res["Queries lost"].split()[0] or 0),
        cpu_s=used,
        rcodes=res["Response codes"],
        other_busy=max(other, 0.0),
    )


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):,.1f}  (min {min(values):,.1f}, max {max(values):,.1f})"


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=10)
            return out
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    return ""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dnsperf: discoverd DNS vs dnsmasq")
    parser.add_argument("--duration", type=int, default=10, help="seconds of dnsperf per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--edns", action="store_true", help="dnsperf -e: queries carry an EDNS OPT record")
    parser.add_argument("--profile", help="run our server under cProfile, stats to this file")
    return parser.parse_args()


def run_repeats(args: argparse.Namespace, targets: list[tuple[str, int, int]], queries: Path) -> list[Run]:
    # warm-up: fill caches, let the CPU frequency settle
    for _, _, port in targets:
        dnsperf(port, queries, args, 2)
    runs: list[Run] = []
    for rep in range(args.repeats):
        order = targets if rep % 2 == 0 else targets[::-1]
        for name, pid, port in order:
            run = measure(name, pid, port, args, queries)
            runs.append(run)
            print(
                f"  run {rep + 1} {name:9s} {run.qps:9,.0f} q/s  {run.cpu_per_query_us:5.2f} us CPU/query"
                f"  server CPU {run.cpu_s / args.duration:4.0%}  other work {run.other_busy:4.0%}"
                f"{' (disturbed)' if run.disturbed else ''}  lost {run.lost}  {run.rcodes}"
            )
    return runs


def report(runs: list[Run], title: str) -> None:
    print(title)
    summary: dict[str, tuple[float, float]] = {}
    for name in ("discoverd", "dnsmasq"):
        mine = [r for r in runs if r.server == name]
        if not mine:
            print(f"  {name}: no run")
            return
        qps = [r.qps for r in mine]
        cpq = [r.cpu_per_query_us for r in mine]
        summary[name] = (statistics.median(qps), statistics.median(cpq))
        print(f"  {name:9s} q/s:          {spread(qps)}  ({len(mine)} runs)")
        print(f"  {'':9s} us CPU/query: {spread(cpq)}")
    ratio_qps = summary["discoverd"][0] / summary["dnsmasq"][0]
    ratio_cpu = summary["dnsmasq"][1] / summary["discoverd"][1]
    print(
        f"  ratio to dnsmasq (medians): throughput {ratio_qps:.2f}x, "
        f"CPU efficiency {ratio_cpu:.2f}x (dnsmasq CPU/query / ours)"
    )


def main() -> int:
    args = parse_args()
    for tool in ("dnsperf", "dig", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing (bench/dns/run installs it)", file=sys.stderr)
            return 2
    dnsmasq_bin = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    workdir = Path(tempfile.mkdtemp(prefix="flynn-dns-bench-"))
    records = make_records(args.services, args.instances)
    (workdir / "records.json").write_text(json.dumps(records))
    queries = write_queries(workdir, records)
    our_port, their_port = free_port(), free_port()
    conf = write_dnsmasq_config(workdir, records, their_port)

    cpu = str(args.server_cpu)
    serve_cmd = ["taskset", "-c", cpu, str(PYTHON), str(HERE / "serve.py")]
    serve_cmd += ["--records", str(workdir / "records.json"), "--port", str(our_port)]
    serve_cmd += ["--profile", args.profile] if args.profile else []
    ours = subprocess.Popen(serve_cmd, stdout=subprocess.PIPE, text=True)
    theirs = subprocess.Popen(
        ["taskset", "-c", cpu, dnsmasq_bin, "--keep-in-foreground", f"--conf-file={conf}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    stats: list[str] = []
    try:
        wait_ready(our_port, ours)
        wait_ready(their_port, theirs)
        print(
            f"records: {args.services} services x {args.instances} instances; "
            f"{len(queries.read_text().split()) // 2} distinct queries (A, SRV, leader A; shuffled)"
        )
        print(
            f"dnsperf -l {args.duration} -q {args.outstanding} on CPU {args.client_cpu}; servers on CPU {cpu}"
        )
        compared = compare_answers(our_port, their_port, queries)
        if compared < 0:
            print("bench: the servers answer differently: not comparing unlike answers")
            return 1
        print(f"answers: identical for every query of the file ({compared} records compared; order ignored)")
        print(f"load average before: {loadavg()}")
        runs = run_repeats(
            args, [("discoverd", ours.pid, our_port), ("dnsmasq", theirs.pid, their_port)], queries
        )
        print(
            "(other work: CPU time on the two CPUs used by neither the server nor dnsperf; above 5 % the"
            f" run is marked disturbed: its q/s says little, its CPU/query still holds)\n"
            f"load average after:  {loadavg()}\n"
        )
        report(runs, "all runs:")
        quiet = [r for r in runs if not r.disturbed]
        if len(quiet) < len(runs):
            report(quiet, "undisturbed runs only:")
    finally:
        stats = stop(ours).strip().splitlines()
        stop(theirs)
        shutil.rmtree(workdir, ignore_errors=True)
    if stats:
        counters = json.loads(stats[-1])
        print(
            "our server's counters: queries {queries:,}, cache hits {cache_hits:,}, misses {cache_misses:,},"
            " errors {errors}".format(**counters)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
