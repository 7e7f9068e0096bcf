"""Instructions per proxied request: flynn-router against HAProxy, each run under valgrind's
callgrind (run it with bench/router/instructions).

CPU time per request on a shared 2-core machine moves by +-20 % between runs; the number of
instructions a proxy executes for a request does not. Each proxy is started under callgrind with
instrumentation off, warmed up (``h2load --h1 -n 2000 -c 64``: connections open, pools full),
then instrumentation is switched on for ``-n N`` more requests over 64 new kept-alive
connections (mode h2: HTTP/2 over 8 connections of 8 concurrent streams, as in bench.py) and off
again. Reported per request: all instructions, the TLS handshakes' share (64 per measurement, 8
for h2, from ``SSL_do_handshake``) and what is left (the steady state a kept-alive
client sees), by library. The same backend and configurations as bench/router/bench.py.

Instructions are not time: Python code retires fewer instructions per cycle than HAProxy's C
(see docs/router.md, "Performance"). This measures the work, the other benchmark the speed.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) in sys.path:  # bench.py here would hide the package
    sys.path.remove(str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.router import bench  # the sibling module, for its configurations

ROUTER_PORTS = (18210, 18211)
HAPROXY_PORTS = (18220, 18221)
WARM = 2000


def start(argv: list[str], out: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *argv],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=out.with_suffix(".log").open("wb"),
        start_new_session=True,
    )


def h2load(url: str, n: int, clients: int = 64, http2: bool = False) -> None:
    """``n`` requests over ``clients`` connections: HTTP/1.1, or HTTP/2 with 8 streams each."""
    proto = ["-m", "8"] if http2 else ["--h1"]
    out = subprocess.run(
        ["h2load", *proto, "-n", str(n), "-c", str(clients), url],
        capture_output=True,
        text=True,
        check=False,  # judged by its own report below
    ).stdout
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    if not done or int(done.group(1)) != n:
        raise SystemExit(f"bench: h2load against {url} did not succeed:\n{out}")


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, check=True)


def measure(proc: subprocess.Popen[bytes], out: Path, url: str, n: int, http2: bool) -> dict[str, float]:
    clients = 8 if http2 else 64
    try:
        deadline = time.monotonic() + 180  # the router imports its modules under valgrind: slow
        while True:
            try:
                h2load(url, 1, clients=1)
                break
            except SystemExit:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"bench: nothing answers at {url}") from None
                time.sleep(1)
        h2load(url, WARM, clients, http2)
        control(proc.pid, "-i", "on")
        h2load(url, n, clients, http2)
        control(proc.pid, "-i", "off")
        control(proc.pid, "-d")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    dumps = sorted(out.parent.glob(out.name + ".*"))
    if not dumps:
        raise SystemExit(f"bench: callgrind wrote no dump for {url}")
    return per_library(dumps[0], n)


def annotate(dump: Path, *flags: str) -> str:
    argv = ["callgrind_annotate", "--auto=no", "--threshold=100", *flags, str(dump)]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def per_library(dump: Path, n: int) -> dict[str, float]:
    flat = annotate(dump)
    inclusive = annotate(dump, "--inclusive=yes")
    row = re.compile(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)")
    libs: collections.Counter[str] = collections.Counter()
    total = 0
    for line in flat.splitlines():
        m = row.match(line)
        if not m:
            continue
        value = int(m.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in m.group(2):
            total = value
            continue
        lib = re.search(r"\[([^\]]+)\]\s*$", m.group(2))
        name = Path(lib.group(1)).name if lib else "(inlined, no object named)"
        libs[_group(name)] += value
    handshake = 0
    for line in inclusive.splitlines():
        m = row.match(line)
        if m and ":SSL_do_handshake " in m.group(2):
            handshake = int(m.group(1).replace(",", ""))
            break
    result = {"total": total / n, "handshakes": handshake / n, "steady": (total - handshake) / n}
    result.update({f"lib {k}": v / n for k, v in libs.items()})
    return result


_GROUPS = (
    ("python3", "CPython"),
    ("router__mypyc", "router (compiled)"),
    ("(inlined", "inlined code (no object named)"),
    ("parser.cpython", "httptools/llhttp"),
    ("loop.cpython", "uvloop/libuv"),
    ("libcrypto", "OpenSSL libcrypto"),
    ("libssl", "OpenSSL libssl"),
    ("libc.so", "libc"),
    ("haproxy", "haproxy"),
    ("_ssl.cpython", "CPython _ssl"),
)


def _group(name: str) -> str:
    return next((group for prefix, group in _GROUPS if name.startswith(prefix)), "other")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=5000, help="measured requests per target and mode")
    ap.add_argument("--modes", default="plain,tls,h2", help="comma-separated: plain, tls, h2")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flynn-router-instr-"))
    cert, key, both = bench.make_cert(tmp)
    (tmp / "backend.conf").write_text(bench.backend_conf(tmp, cert, key))
    hap = bench.haproxy_conf(both)
    for old, new in zip(bench.PORTS["haproxy"], HAPROXY_PORTS, strict=True):
        hap = hap.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    (tmp / "haproxy.cfg").write_text(hap)
    backend = subprocess.Popen(
        ["nginx", "-c", str(tmp / "backend.conf"), "-p", str(tmp)], start_new_session=True
    )
    rows: dict[tuple[str, str], dict[str, float]] = {}
    try:
        bench.wait_port(bench.BACKEND_PORT)
        for port in (*ROUTER_PORTS, *HAPROXY_PORTS):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    raise SystemExit(f"bench: something already listens on 127.0.0.1:{port}")
        routes = bench.router_routes(tmp)
        for mode in args.modes.split(","):
            scheme, idx = ("http", 0) if mode == "plain" else ("https", 1)
            for name in ("flynn-router", "haproxy"):
                out = tmp / f"cg-{name}-{mode}.out"
                if name == "haproxy":
                    proc = start(["haproxy", "-db", "-f", str(tmp / "haproxy.cfg")], out)
                    port = HAPROXY_PORTS[idx]
                else:
                    argv = [str(bench.PY), "-m", "flynn.router", "--workers", "1", "--routes", str(routes)]
                    env = {
                        "ROUTER_LISTEN_IP": "127.0.0.1",
                        "ROUTER_HTTP_PORTS": str(ROUTER_PORTS[0]),
                        "ROUTER_HTTPS_PORTS": str(ROUTER_PORTS[1]),
                        "TLSCERT": str(cert),
                        "TLSKEY": str(key),
                        "ROUTER_STATUS_PORT": "0",
                        "FLYNN_LOG_LEVEL": "WARNING",
                        "PYTHONPATH": str(bench.REPO / "services"),
                    }
                    proc = start(argv, out, env)
                    port = ROUTER_PORTS[idx]
                print(f"bench: {name} {mode} under callgrind ...", file=sys.stderr)
                rows[(mode, name)] = measure(proc, out, f"{scheme}://127.0.0.1:{port}/", args.n, mode == "h2")
    finally:
        os.killpg(backend.pid, signal.SIGTERM)
        backend.wait(10)
    print(
        f"\nInstructions per request (callgrind, {args.n} requests over 64 kept-alive connections;"
        " h2: 8 connections of 8 streams)"
    )
    for mode in args.modes.split(","):
        r, h = rows[(mode, "flynn-router")], rows[(mode, "haproxy")]
        print(f"\n{mode}: {'':24}{'flynn-router':>14}{'haproxy':>14}")
        for row in ("total", "handshakes", "steady"):
            print(f"  {row:32}{r[row]:14,.0f}{h[row]:14,.0f}")
        print(f"  {'steady, router / haproxy':32}{r['steady'] / h['steady']:14.2f}x")
        libs = sorted(
            {k for k in (*r, *h) if k.startswith("lib ")}, key=lambda k: -(r.get(k, 0) + h.get(k, 0))
        )
        print("  by library (handshakes included):")
        for k in libs:
            print(f"    {k[4:]:30}{r.get(k, 0):14,.0f}{h.get(k, 0):14,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
