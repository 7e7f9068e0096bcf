"""GET /apps through the real controller vs. a minimal aiohttp handler doing the same query.

Both servers run as their own processes on uvloop, pinned to one CPU, with wrk on the other:
* ``controller``: ``flynn-controller`` itself (auth middleware, JSON errors, rendering), HTTP Basic.
* ``baseline``: one aiohttp route, no middleware, the same ``SELECT * FROM apps`` through the same
  pool (:class:`flynn.controller.db.Database`, same size and checks), ``json.dumps`` of the rows.
The ratio controller/baseline is what the controller's own layers cost. Figures are printed, never
judged.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "services")]

from tests.pg import PostgresServer, free_port  # noqa: E402

KEY = "bench-key-0123456789abcdef"
POOL = 10


def baseline_main(db_url: str, port: int) -> None:
    """The peer: one handler, same pool class and size, same query."""
    import uvloop
    from aiohttp import web

    from flynn.controller.db import Database

    async def serve() -> None:
        db = Database(db_url, max_size=POOL)
        await db.open()

        async def apps(request: web.Request) -> web.Response:
            async with db.read() as tx:
                rows = await tx.all("SELECT * FROM apps ORDER BY created_at, id")
            return web.json_response(rows, dumps=lambda v: json.dumps(v, default=str))

        app = web.Application()
        app.router.add_get("/apps", apps)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio_forever()

    uvloop.run(serve())


async def asyncio_forever() -> None:
    import asyncio

    await asyncio.Event().wait()


def wait_http(url: str, headers: dict[str, str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def taskset(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def wrk(url: str, headers: dict[str, str], duration: int, connections: int) -> dict[str, float]:
    cmd = [*taskset("0"), "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)

    def ms(m: Any) -> float:
        if m is None:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    return {
        "rps": rps,
        "p50_ms": ms(p50),
        "p99_ms": ms(p99),
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--apps", type=int, default=20, help="apps in the list")
    ap.add_argument("--baseline-serve", nargs=2, metavar=("DB_URL", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_serve:
        baseline_main(args.baseline_serve[0], int(args.baseline_serve[1]))
        return
    procs: list[subprocess.Popen[bytes]] = []
    with PostgresServer() as pg:
        db_url = pg.create_database("controller")
        ctl_port, base_port = free_port(), free_port()
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "AUTH_KEY": KEY,
            "CONTROLLER_PORT": str(ctl_port),
            "CONTROLLER_LISTEN_IP": "127.0.0.1",
            "CONTROLLER_DB_POOL_SIZE": str(POOL),
            "FLYNN_LOG_LEVEL": "WARNING",
        }
        env.pop("CONTROLLER_ADDR", None)
        auth = {"Authorization": "Basic " + base64.b64encode(f":{KEY}".encode()).decode()}
        try:
            procs.append(subprocess.Popen([*taskset("1"), str(REPO / ".venv/bin/flynn-controller")], env=env))
            wait_http(f"http://127.0.0.1:{ctl_port}/status", {})
            for i in range(args.apps):
                req = urllib.request.Request(
                    f"http://127.0.0.1:{ctl_port}/apps",
                    data=json.dumps({"name": f"bench{i}", "meta": {"team": "perf"}}).encode(),
                    headers={**auth, "Content-Type": "application/json"},
                )
                urllib.request.urlopen(req, timeout=5).close()  # noqa: S310
            procs.append(
                subprocess.Popen(
                    [*taskset("1"), sys.executable, __file__, "--baseline-serve", db_url, str(base_port)],
                    env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'services'}"},
                )
            )
            wait_http(f"http://127.0.0.1:{base_port}/apps", {})
            targets = {
                "controller": (f"http://127.0.0.1:{ctl_port}/apps", auth),
                "baseline": (f"http://127.0.0.1:{base_port}/apps", {}),
            }
            results: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
            for url, headers in targets.values():  # warm-up
                wrk(url, headers, 1, args.connections)
            for r in range(args.rounds):
                for name, (url, headers) in targets.items():
                    res = wrk(url, headers, args.duration, args.connections)
                    results[name].append(res)
                    print(
                        f"round {r + 1} {name:10s} {res['rps']:8.0f} req/s  p50 {res['p50_ms']:.2f} ms"
                        f"  p99 {res['p99_ms']:.2f} ms  non-2xx {res['errors']:.0f}",
                        flush=True,
                    )
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    best = {k: max(v, key=lambda x: x["rps"]) for k, v in results.items()}
    median = {k: sorted(x["rps"] for x in v)[len(v) // 2] for k, v in results.items()}
    print()
    print(
        f"GET /apps ({args.apps} apps, {args.connections} connections, pool {POOL},"
        " wrk on CPU0, servers on CPU1, PostgreSQL unpinned)"
    )
    print(f"{'':12s}{'median req/s':>14s}{'best req/s':>12s}{'p50 ms':>9s}{'p99 ms':>9s}")
    for k in results:
        print(
            f"{k:12s}{median[k]:14.0f}{best[k]['rps']:12.0f}{best[k]['p50_ms']:9.2f}{best[k]['p99_ms']:9.2f}"
        )
    print(f"ratio controller/baseline (median): {median['controller'] / median['baseline']:.2f}")


if __name__ == "__main__":
    main()
