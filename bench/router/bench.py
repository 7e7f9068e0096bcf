"""The router benchmark (run it with bench/router/run).

One backend, four ways to reach it, in one run, all on 127.0.0.1:

* backend: nginx answering a fixed 44-byte body from memory (``return 200``). A backend in C
  that costs a few microseconds per request keeps the proxy's own cost in the foreground; a
  Python backend would cost as much as the proxy and hide the differences.
* direct: the client talks to the backend itself (its own TLS listener for the TLS rows);
* flynn-router (one worker; its data plane compiled with mypyc when built, see docs/router.md)
  and flynn-router-py (the same, FLYNN_ROUTER_PURE=1: interpreted), HAProxy (nbthread 1) and
  nginx (one worker process) in front,
  configured for the same work: keep-alive to the backend with a pool, X-Forwarded-For/Proto/Port
  and a request id added to every request, TLS 1.2+ with ALPN h2/http1.1 on the TLS port.

Clients: wrk (HTTP/1.1, 64 connections, one thread) and h2load (HTTP/2 over TLS, 8 connections
of 8 concurrent streams = 64 requests in flight). The client is pinned to CPU 0, backend and
proxy share CPU 1, as in shared/recipes/measured-choices.md. Every measurement is repeated
(``--rounds``, targets interleaved within a round so drifting load on the machine spreads over
all of them) and reported as the median with the min-max spread; ``x HAP/rnd`` is the median of
the round-by-round ratios to HAProxy, ``p99 /rnd`` the same for p99 (below 1: a shorter tail).
``cpu/req`` is the proxy's own CPU time (user+system, from /proc) per request: steadier than
req/s on a busy machine.

Nothing here is a test: it measures and prints; it never fails on a figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
PY = REPO / ".venv/bin/python"
HOST = "bench.test"
BODY = "hello from the backend, a small static body\n"
CLIENT_CPU = "0"
SERVER_CPU = "1"

PORTS = {
    "direct": (18100, 18101),
    "flynn-router": (18110, 18111),
    "flynn-router-py": (18140, 18141),  # the same router with FLYNN_ROUTER_PURE=1: interpreted
    "haproxy": (18120, 18121),
    "nginx": (18130, 18131),
}
BACKEND_PORT = PORTS["direct"][0]


@dataclass
class Sample:
    rps: float
    p99_ms: float
    cpu_us: float | None


@dataclass
class Series:
    samples: list[Sample] = field(default_factory=list)

    def med(self, attr: str) -> float:
        values = [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]
        return statistics.median(values) if values else float("nan")

    def spread(self, attr: str) -> tuple[float, float]:
        values = [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]
        return (min(values), max(values)) if values else (float("nan"), float("nan"))


def make_cert(directory: Path) -> tuple[Path, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_path, key_path, both = directory / "cert.pem", directory / "key.pem", directory / "both.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    both.write_bytes(cert_pem + key_pem)
    return cert_path, key_path, both


def backend_conf(d: Path, cert: Path, key: Path) -> str:
    plain, tls = PORTS["direct"]
    return f"""
worker_processes 1;
daemon off;
pid {d}/backend.pid;
error_log {d}/backend.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{plain} backlog=4096;
    listen 127.0.0.1:{tls} ssl http2 backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ default_type text/plain; return 200 "{BODY.strip()}\\n"; }}
  }}
}}
"""


def nginx_proxy_conf(d: Path, cert: Path, key: Path) -> str:
    plain, tls = PORTS["nginx"]
    return f"""
worker_processes 1;
daemon off;
pid {d}/nginx-proxy.pid;
error_log {d}/nginx-proxy.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 60s;
  upstream backend {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{plain} backlog=4096;
    listen 127.0.0.1:{tls} ssl http2 backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header X-Request-Id $request_id;
      proxy_buffering off;
    }}
  }}
}}
"""


def haproxy_conf(both: Path) -> str:
    plain, tls = PORTS["haproxy"]
    return f"""
global
  nbthread 1
  maxconn 4096
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 3s
  timeout client 60s
  timeout server 60s
  timeout http-request 10s
  timeout http-keep-alive 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{plain}
  bind 127.0.0.1:{tls} ssl crt {both} alpn h2,http/1.1
  option forwardfor
  http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
  http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
  http-request set-header X-Forwarded-Port %[dst_port]
  unique-id-format %{{+X}}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
  unique-id-header X-Request-Id
  default_backend be
backend be
  server s1 127.0.0.1:{BACKEND_PORT}
"""


def router_routes(d: Path) -> Path:
    path = d / "routes.json"
    path.write_text(
        json.dumps(
            {
                "http": [{"domain": "127.0.0.1", "service": "web"}, {"domain": HOST, "service": "web"}],
                "backends": {"web": [f"127.0.0.1:{BACKEND_PORT}"]},
            }
        )
    )
    return path


class Procs:
    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, log: Path | None = None
    ) -> None:
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *argv],
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def pid(self, name: str) -> int:
        """The pid doing the work (HAProxy and nginx fork a worker under the master)."""
        top = self.procs[name].pid
        children = Path(f"/proc/{top}/task/{top}/children")
        kids = children.read_text().split() if children.exists() else []
        return int(kids[-1]) if kids else top

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def wait_port(port: int, limit: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"bench: nothing listens on 127.0.0.1:{port}")


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port: int, tls: bool, duration: int) -> tuple[float, float, int]:
    scheme = "https" if tls else "http"
    out = subprocess.run(
        ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", "-c64", f"-d{duration}s", "--latency",
         "-H", f"Host: {HOST}", f"{scheme}://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"  ! {errors.group(1)} non-2xx answers", file=sys.stderr)
    return rps, _ms(m.group(1), m.group(2)) if m else float("nan"), total


def run_h2load(port: int, duration: int, tmp: Path) -> tuple[float, float, int]:
    log = tmp / "h2load.log"
    log.unlink(missing_ok=True)
    out = subprocess.run(
        ["taskset", "-c", CLIENT_CPU, "h2load", "-c8", "-m8", "-t1", f"-D{duration}", "--warm-up-time=1",
         "-H", f":authority: {HOST}", "--log-file", str(log), f"https://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    ok = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out)
    if ok and int(ok.group(3)):
        print(f"  ! h2load: {ok.group(3)} failed requests", file=sys.stderr)
    if "h2" not in out.split("Application protocol:")[-1][:8]:
        print("  ! h2load did not negotiate h2", file=sys.stderr)
    times = sorted(int(line.split()[2]) for line in log.read_text().splitlines() if line.strip())
    p99 = times[int(len(times) * 0.99) - 1] / 1000.0 if times else float("nan")  # µs -> ms
    return rps, p99, len(times)


def start_router(procs: Procs, name: str, pure: str, tmp: Path, cert: Path, key: Path) -> None:
    """flynn-router on the ports of *name*; FLYNN_ROUTER_PURE=*pure* (1: interpreted)."""
    impl = subprocess.run(
        [
            str(PY),
            "-W",
            "ignore",
            "-c",
            "import flynn.router._native as n; print(n.state, '-', n.reason)",
        ],
        env={**os.environ, "FLYNN_ROUTER_PURE": pure, "PYTHONPATH": str(REPO / "services")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"bench: {name}: data plane {impl}", file=sys.stderr)
    plain, tls = PORTS[name]
    procs.start(
        name,
        [str(PY), "-m", "flynn.router", "--workers", "1", "--routes", str(router_routes(tmp))],
        env={
            "ROUTER_LISTEN_IP": "127.0.0.1",
            "ROUTER_HTTP_PORTS": str(plain),
            "ROUTER_HTTPS_PORTS": str(tls),
            "TLSCERT": str(cert),
            "TLSKEY": str(key),
            "ROUTER_STATUS_PORT": "0",  # its status API on any free port: nothing else collides
            "FLYNN_LOG_LEVEL": "WARNING",
            "FLYNN_ROUTER_PURE": pure,
            "PYTHONPATH": str(REPO / "services"),
        },
        log=tmp / f"{name}.log",
    )


def check_machine() -> None:
    for tool in ("wrk", "h2load", "haproxy", "nginx", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is missing (bench/router/run installs it)")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench: needs 2 CPUs (client on one, servers on the other)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated targets (direct,flynn-router,flynn-router-py,haproxy,nginx)",
    )
    ap.add_argument("--modes", default="plain,tls,h2", help="comma-separated: plain, tls, h2")
    args = ap.parse_args()
    check_machine()
    targets = [t for t in PORTS if not args.only or t in args.only.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="flynn-router-bench-"))
    cert, key, both = make_cert(tmp)
    (tmp / "backend.conf").write_text(backend_conf(tmp, cert, key))
    (tmp / "nginx-proxy.conf").write_text(nginx_proxy_conf(tmp, cert, key))
    (tmp / "haproxy.cfg").write_text(haproxy_conf(both))
    procs = Procs()
    try:
        procs.start("direct", ["nginx", "-c", str(tmp / "backend.conf"), "-p", str(tmp)])
        procs.start("nginx", ["nginx", "-c", str(tmp / "nginx-proxy.conf"), "-p", str(tmp)])
        procs.start("haproxy", ["haproxy", "-f", str(tmp / "haproxy.cfg"), "-db"], log=tmp / "haproxy.log")
        for name, pure in (("flynn-router", "0"), ("flynn-router-py", "1")):
            start_router(procs, name, pure, tmp, cert, key)
        for ports in PORTS.values():
            for port in ports:
                wait_port(port)
        chosen = args.modes.split(",")
        modes = [
            (mode, tool, use_tls)
            for key, mode, tool, use_tls in (
                ("plain", "HTTP/1.1 plain", "wrk", False),
                ("tls", "HTTP/1.1 TLS", "wrk", True),
                ("h2", "HTTP/2 TLS", "h2load", True),
            )
            if key in chosen
        ]
        results: dict[tuple[str, str], Series] = {}
        print(f"bench: {args.rounds} rounds x {args.duration}s; files in {tmp}", file=sys.stderr)
        # warm up every path once (TLS session caches, pools, Python caches)
        for name in targets:
            run_wrk(PORTS[name][0], False, 2)
        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for mode, tool, use_tls in modes:
                for name in order:
                    port = PORTS[name][1 if use_tls else 0]
                    pid = procs.pid(name)
                    t0 = cpu_ticks(pid)
                    if tool == "wrk":
                        rps, p99, total = run_wrk(port, use_tls, args.duration)
                    else:
                        rps, p99, total = run_h2load(port, args.duration, tmp)
                    ticks = cpu_ticks(pid) - t0
                    cpu = (
                        ticks / os.sysconf("SC_CLK_TCK") * 1e6 / total if name != "direct" and total else None
                    )
                    results.setdefault((mode, name), Series()).samples.append(Sample(rps, p99, cpu))
                    print(
                        f"  round {rnd + 1} {mode:15} {name:13} {rps:9.0f} req/s  p99 {p99:7.2f} ms",
                        file=sys.stderr,
                    )
        print_table(results, modes, targets, args)
    finally:
        procs.stop_all()
    return 0


def print_table(
    results: dict[tuple[str, str], Series], modes: list[tuple[str, str, bool]], targets: list[str],
    args: argparse.Namespace,
) -> None:  # fmt: skip
    print()
    print(f"Router benchmark: median of {args.rounds} runs of {args.duration}s [min-max]; 127.0.0.1;")
    print(f"client on CPU {CLIENT_CPU}, backend + proxy on CPU {SERVER_CPU}; wrk -t1 -c64; h2load -c8 -m8")
    line = f"{'mode':15} {'target':13} {'req/s':>8} {'[min-max]':>17} {'p99 ms':>7} {'[min-max]':>15}"
    line += f" {'x HAProxy':>9} {'x HAP/rnd':>9} {'p99 x HAP':>9} {'p99 /rnd':>8} {'cpu/req':>8}"
    print(line)
    print("-" * len(line))
    for mode, _tool, _tls in modes:
        hap = results.get((mode, "haproxy"))
        for name in targets:
            s = results.get((mode, name))
            if s is None:
                continue
            lo, hi = s.spread("rps")
            plo, phi = s.spread("p99_ms")
            ratio = s.med("rps") / hap.med("rps") if hap else float("nan")
            # the same ratio taken round by round (HAProxy measured minutes apart at most), then
            # the median: the machine's drifting load cancels out better than in the ratio of medians;
            # p99 paired the same way (each round's p99 over HAProxy's p99 of that round)
            pairs = list(zip(s.samples, hap.samples, strict=False)) if hap else []
            nan = float("nan")
            rratio = statistics.median([a.rps / b.rps for a, b in pairs]) if pairs else nan
            prratio = statistics.median([a.p99_ms / b.p99_ms for a, b in pairs]) if pairs else nan
            pratio = s.med("p99_ms") / hap.med("p99_ms") if hap else nan
            cpu = s.med("cpu_us")
            cpu_s = "     -  " if math.isnan(cpu) else f"{cpu:6.1f}us"
            print(
                f"{mode:15} {name:13} {s.med('rps'):8.0f} {f'[{lo:.0f}-{hi:.0f}]':>17} {s.med('p99_ms'):7.2f}"
                f" {f'[{plo:.2f}-{phi:.2f}]':>15} {ratio:9.2f} {rratio:9.2f} {pratio:9.2f} {prratio:8.2f}"
                f" {cpu_s:>8}"
            )
        print()


if __name__ == "__main__":
    sys.exit(main())
