"""``python -m flynn.router``: run the router, in one process or several sharing the ports.

Workers: each is a whole router (its own event loop, route table, pools and counters) with its
listening sockets opened with ``SO_REUSEPORT``, so the kernel spreads new connections over
them. One Python process uses at most one core, so the default is one worker per CPU
(``ROUTER_WORKERS``); more than that only adds context switches, and on a host whose cores are
shared with app jobs fewer may be better. Each worker would follow the control plane on its
own (the later controller/discoverd watchers), which keeps workers independent at the price of
N watches per host.

Until the control plane exists, routes and backends can come from a JSON file (``--routes``):

    {"http": [{"domain": "a.example.com", "service": "a-web", "path": "/",
               "sticky": false, "https_redirect": false,
               "tls_cert_file": "...", "tls_key_file": "..."}],
     "tcp": [{"port": 3000, "service": "db"}],
     "backends": {"a-web": ["10.0.0.5:8080"], "db": ["10.0.0.6:5432"]}}

Environment: ``ROUTER_*`` (see :class:`~flynn.router.config.RouterConfig`), ``TLSCERT`` /
``TLSKEY`` (the default certificate: PEM text or a file path), ``ERROR_503_PAGE_URL`` (fetched
once at start: the body of "no backend" answers), ``ROUTER_WORKERS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

from flynn.common import sdnotify
from flynn.common.config import env_int
from flynn.common.errors import ConfigError
from flynn.common.log import setup_logging
from flynn.router.config import RouterConfig
from flynn.router.routes import RouteTable
from flynn.router.server import Router
from flynn.router.tls import CertStore

log = logging.getLogger(__name__)


def _pem(value: str, what: str) -> str:
    if value.lstrip().startswith("-----BEGIN"):
        return value
    try:
        return Path(value).read_text()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {value}: {exc.strerror}") from None


def load_routes(table: RouteTable, path: Path) -> None:
    """Fill ``table`` from a routes file (format in the module docstring)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"routes file {path}: {exc}") from None
    try:
        for r in doc.get("http", []):
            cert = _pem(r["tls_cert_file"], "tls_cert_file") if r.get("tls_cert_file") else None
            key = _pem(r["tls_key_file"], "tls_key_file") if r.get("tls_key_file") else None
            table.add_http_route(
                r["domain"],
                r["service"],
                path=r.get("path", "/"),
                route_id=r.get("id", ""),
                sticky=bool(r.get("sticky", False)),
                https_redirect=bool(r.get("https_redirect", False)),
                tls_cert=cert,
                tls_key=key,
            )
        for r in doc.get("tcp", []):
            table.set_tcp_route(int(r["port"]), r["service"], route_id=r.get("id", ""))
        for service, addrs in doc.get("backends", {}).items():
            table.set_backends(service, addrs)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"routes file {path}: {exc!r}") from None


def fetch_503_page(url: str, timeout: float = 5.0) -> bytes | None:
    if not url.startswith(("http://", "https://", "file:")):
        raise ConfigError(f"ERROR_503_PAGE_URL={url!r} is not an http(s) or file URL")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - scheme checked
            return bytes(resp.read(1 << 20))
    except OSError as exc:
        log.warning("cannot fetch ERROR_503_PAGE_URL %s: %s (plain 503 answers instead)", url, exc)
        return None


def build(args: argparse.Namespace) -> tuple[RouteTable, RouterConfig, CertStore]:
    config = RouterConfig.from_env()
    page_url = os.environ.get("ERROR_503_PAGE_URL", "")
    if page_url:
        config = dataclasses.replace(config, error_503_page=fetch_503_page(page_url))
    certs = CertStore()
    cert = os.environ.get("TLSCERT", "")
    key = os.environ.get("TLSKEY", "")
    if cert and key:
        try:
            certs.set_default(_pem(cert, "TLSCERT"), _pem(key, "TLSKEY"))
        except ValueError as exc:
            raise ConfigError(f"TLSCERT/TLSKEY: {exc}") from None
    elif config.https_ports:
        log.warning("no TLSCERT/TLSKEY: HTTPS serves only route certificates")
    table = RouteTable()
    if args.routes:
        load_routes(table, Path(args.routes))
    return table, config, certs


async def serve(table: RouteTable, config: RouterConfig, certs: CertStore, ready_fd: int | None) -> None:
    router = Router(table, config, certs)
    await router.start()
    log.info(
        "router %d serving http %s https %s, %d routes",
        os.getpid(),
        router.http_ports,
        router.https_ports,
        len(table.routes()),
    )
    if ready_fd is not None:
        os.write(ready_fd, b"r")
        os.close(ready_fd)
    else:
        sdnotify.ready(f"serving http {router.http_ports} https {router.https_ports}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: log.info("status %s", json.dumps(router.status(), sort_keys=True))
    )
    try:
        await stop.wait()
    finally:
        await router.stop()


def _run_worker(table: RouteTable, config: RouterConfig, certs: CertStore, ready_fd: int | None) -> None:
    import uvloop

    uvloop.run(serve(table, config, certs, ready_fd))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flynn-router", description="Flynn's HTTP/HTTPS/TCP router")
    p.add_argument("--routes", help="JSON file of routes and backends (until the control plane exists)")
    p.add_argument("--workers", type=int, help="worker processes (default ROUTER_WORKERS or the CPU count)")
    args = p.parse_args(argv)
    setup_logging("router")
    try:
        table, config, certs = build(args)
        workers = args.workers or env_int("ROUTER_WORKERS", os.cpu_count() or 1, minimum=1, maximum=256)
    except ConfigError as exc:
        print(f"flynn-router: {exc}", file=sys.stderr)
        return 2
    if workers == 1:
        _run_worker(table, config, certs, None)
        return 0
    return _supervise(table, config, certs, workers)


def _supervise(table: RouteTable, config: RouterConfig, certs: CertStore, workers: int) -> int:
    """Fork ``workers`` routers sharing the ports; stop them all when one dies or on SIGTERM."""
    read_fd, write_fd = os.pipe()
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_fd)
            try:
                _run_worker(table, config, certs, write_fd)
            finally:
                os._exit(0)
        children.append(pid)
    os.close(write_fd)

    def forward(sig: int, _frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGUSR1, forward)
    started = 0
    while started < workers:
        chunk = os.read(read_fd, workers)
        if not chunk:
            break
        started += len(chunk)
    os.close(read_fd)
    if started == workers:
        sdnotify.ready(f"{workers} workers serving")
    status = 0
    remaining = set(children)
    while remaining:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        remaining.discard(pid)
        if code != 0:
            status = 1
        forward(signal.SIGTERM, None)  # one worker gone: stop the others, systemd restarts us
    return status
