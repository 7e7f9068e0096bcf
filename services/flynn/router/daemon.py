"""``flynn-router`` (``python -m flynn.router``): the router daemon of flynn-router.service.

One process per worker (``ROUTER_WORKERS``, default the CPU count): each is a whole router (its
own event loop, route table, pools, counters and control plane) with its listening sockets opened
with ``SO_REUSEPORT``, so the kernel spreads new connections over them. One Python process uses
at most one core, so more workers than cores only adds context switches; on a host whose cores
are shared with app jobs fewer may be better. With several workers a parent process supervises
them (:mod:`flynn.router.workers`); with one, that process does it all.

Routes and backends come from the control plane (:mod:`flynn.router.controlplane`) when
``CONTROLLER_KEY`` is set: the controller's routes (found through discoverd, or
``CONTROLLER_URL``), discoverd watches for the backends. Without it (benchmarks, tests) they can
come from a JSON file (``--routes``)::

    {"http": [{"domain": "a.example.com", "service": "a-web", "path": "/",
               "sticky": false, "https_redirect": false,
               "tls_cert_file": "...", "tls_key_file": "..."}],
     "tcp": [{"port": 3000, "service": "db"}],
     "backends": {"a-web": ["10.0.0.5:8080"], "db": ["10.0.0.6:5432"]}}

Environment: ``ROUTER_*`` (data plane, see :class:`~flynn.router.config.RouterConfig`), ``TLSCERT``
/ ``TLSKEY`` (the default certificate: PEM text or a file path), ``ERROR_503_PAGE_URL`` (fetched
once at start: the body of "no backend" answers), ``ROUTER_WORKERS``; ``CONTROLLER_KEY``,
``CONTROLLER_URL``, ``DISCOVERD``, ``ROUTER_ADDR``, ``ROUTER_STATUS_IP``/``ROUTER_STATUS_PORT``,
``CLUSTER_DOMAIN`` (see :class:`~flynn.router.settings.DaemonSettings`).
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
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

from flynn.common import sdnotify
from flynn.common.config import env_int
from flynn.common.errors import ConfigError
from flynn.common.log import register_secret, setup_logging
from flynn.router.config import RouterConfig
from flynn.router.controlplane import ControlPlane
from flynn.router.instance import Instance
from flynn.router.routes import RouteTable
from flynn.router.server import Router
from flynn.router.settings import DaemonSettings
from flynn.router.tls import CertStore
from flynn.router.workers import (
    Forked,
    answer_status,
    fork_workers,
    reap,
    signal_all,
    stop_workers,
    unwatch_exits,
    wait_ready,
    watch_exits,
)

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
        key_pem = _pem(key, "TLSKEY")
        register_secret(key_pem)  # never in a log line, whatever fails
        try:
            certs.set_default(_pem(cert, "TLSCERT"), key_pem)
        except ValueError as exc:
            raise ConfigError(f"TLSCERT/TLSKEY: {exc}") from None
    elif config.https_ports:
        log.warning("no TLSCERT/TLSKEY: HTTPS serves only route certificates")
    table = RouteTable()
    if args.routes:
        load_routes(table, Path(args.routes))
    return table, config, certs


class Worker:
    """One router process: the data plane and, with ``CONTROLLER_KEY``, its control plane."""

    def __init__(
        self, table: RouteTable, config: RouterConfig, certs: CertStore, settings: DaemonSettings
    ) -> None:
        self.router = Router(table, config, certs)
        self.plane = ControlPlane(table, settings, certs=certs) if settings.control_plane else None

    async def start(self) -> None:
        await self.router.start()
        if self.plane is not None:
            await self.plane.start()
        log.info(
            "router %d serving http %s https %s, %d routes%s",
            os.getpid(),
            self.router.http_ports,
            self.router.https_ports,
            len(self.router.table.routes()),
            "; following the controller" if self.plane is not None else "",
        )

    def status(self) -> dict[str, Any]:
        out = self.router.status()
        out["pid"] = os.getpid()
        out["control_plane"] = self.plane.status() if self.plane is not None else None
        return out

    async def stop(self) -> None:
        if self.plane is not None:
            await self.plane.close()
        await self.router.stop()


def _stop_event(worker: Worker | None = None) -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if worker is not None:
        loop.add_signal_handler(
            signal.SIGUSR1, lambda: log.info("status %s", json.dumps(worker.status(), sort_keys=True))
        )
    return stop


async def serve_single(
    table: RouteTable, config: RouterConfig, certs: CertStore, settings: DaemonSettings
) -> None:
    """One worker, which is also the instance (status API, registration, systemd)."""
    worker = Worker(table, config, certs, settings)
    stop = _stop_event(worker)
    await worker.start()
    router = worker.router

    async def local() -> dict[str, Any]:
        return worker.status()

    instance = Instance(
        settings,
        [local],
        http_port=router.http_ports[0] if router.http_ports else 80,
        https_port=router.https_ports[0] if router.https_ports else None,
    )
    try:
        await instance.start()
        sdnotify.ready(f"serving http {router.http_ports} https {router.https_ports}")
        await stop.wait()
    finally:
        sdnotify.stopping()
        await instance.close()
        await worker.stop()


async def serve_worker(
    table: RouteTable,
    config: RouterConfig,
    certs: CertStore,
    settings: DaemonSettings,
    channel: socket.socket,
    ready_fd: int,
) -> None:
    """A forked worker: serve, say so on ``ready_fd``, answer status queries on ``channel``."""
    worker = Worker(table, config, certs, settings)
    stop = _stop_event(worker)
    await worker.start()
    os.write(ready_fd, b"r")
    os.close(ready_fd)
    answering = asyncio.get_running_loop().create_task(answer_status(channel, worker.status, stop.set))
    try:
        await stop.wait()
    finally:
        answering.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await answering
        await worker.stop()


async def supervise(forked: Forked, settings: DaemonSettings, config: RouterConfig) -> int:
    """The parent of several workers: see :mod:`flynn.router.workers`."""
    loop = asyncio.get_running_loop()
    workers = forked.workers
    died = asyncio.Event()
    stop = asyncio.Event()

    def on_child() -> None:
        for w in reap(workers):
            if not stop.is_set():
                log.error("router worker %d exited with status %s", w.pid, w.exit_code)
                died.set()

    watch_exits(workers, on_child)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: signal_all(workers, signal.SIGUSR1))
    on_child()  # a worker may have died before the handler was installed
    instance: Instance | None = None
    try:
        if not await wait_ready(forked, died):
            return 1
        instance = Instance(
            settings,
            [w.channel.query for w in workers],
            http_port=config.http_ports[0] if config.http_ports else 80,
            https_port=config.https_ports[0] if config.https_ports else None,
        )
        await instance.start()
        sdnotify.ready(f"{len(workers)} workers serving")
        waiters = [loop.create_task(stop.wait()), loop.create_task(died.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in waiters:
            task.cancel()
        return 1 if died.is_set() else 0
    finally:
        sdnotify.stopping()
        if instance is not None:
            await instance.close()
        await stop_workers(workers)
        unwatch_exits(workers)
        for w in workers:
            w.channel.close()


def _run(coro: Any) -> Any:
    import uvloop

    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flynn-router", description="Flynn's HTTP/HTTPS/TCP router")
    p.add_argument("--routes", help="JSON file of routes and backends (without a control plane)")
    p.add_argument("--workers", type=int, help="worker processes (default ROUTER_WORKERS or the CPU count)")
    args = p.parse_args(argv)
    setup_logging("router")
    try:
        table, config, certs = build(args)
        settings = DaemonSettings.from_env()
        workers = args.workers or env_int("ROUTER_WORKERS", os.cpu_count() or 1, minimum=1, maximum=256)
    except ConfigError as exc:
        print(f"flynn-router: {exc}", file=sys.stderr)
        return 2
    if settings.controller_key is not None:
        register_secret(settings.controller_key)
    try:
        if workers == 1:
            _run(serve_single(table, config, certs, settings))
            return 0

        def run_worker(channel: socket.socket, ready_fd: int) -> None:  # pragma: no cover - a child
            _run(serve_worker(table, config, certs, settings, channel, ready_fd))

        forked = fork_workers(workers, run_worker)
        return int(_run(supervise(forked, settings, config)))
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"flynn-router: cannot listen: {reason}", file=sys.stderr)
        return 1
