"""``flynn-blobstore``: the blob HTTP service, run by flynn-blobstore.service.

Start: read the configuration (a bad one is a one-line error and exit 1), register the secrets,
apply the backend's schema (waiting up to ``BLOBSTORE_DB_WAIT`` seconds for the database), serve
HTTP, tell systemd READY=1, then register in discoverd as ``blobstore`` when ``BLOBSTORE_ADDR`` is
set (in the background, retrying: the blobstore serves whether or not discoverd is up).
Stop (SIGTERM/SIGINT): deregister, finish the requests in flight (up to 10 s), close the pool.
"""

from __future__ import annotations

import contextlib
import logging

from aiohttp import web

from flynn.blobstore.api import make_app
from flynn.blobstore.backends import create_backend
from flynn.blobstore.backends.base import Backend, BackendUnavailable
from flynn.blobstore.config import SERVICE, BlobstoreConfig
from flynn.common import sdnotify
from flynn.common.daemon import run_daemon, stop_event
from flynn.common.errors import ConfigError
from flynn.common.log import register_secret, setup_logging
from flynn.common.web import serve_app
from flynn.discoverd.client import Announcement
from flynn.discoverd.client import Client as DiscoverdClient

log = logging.getLogger("flynn.blobstore")


async def start_http(cfg: BlobstoreConfig, backend: Backend) -> web.AppRunner | None:
    return await serve_app(make_app(backend, max_bytes=cfg.max_bytes), cfg.listen_ip, cfg.port)


async def serve(cfg: BlobstoreConfig) -> int:
    setup_logging("blobstore")
    for secret in cfg.secrets():
        register_secret(secret)
    try:
        backend = create_backend(cfg)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    sdnotify.status("applying the schema")
    try:
        await backend.start(wait=cfg.db_wait)
    except BackendUnavailable as exc:
        log.error("backend %s: %s", backend.name, exc)
        await backend.stop()
        return 1
    runner = await start_http(cfg, backend)
    if runner is None:
        await backend.stop()
        return 1
    log.info(
        "blobstore on %s:%d, backend %s (%s), max blob %d bytes",
        cfg.listen_ip,
        cfg.port,
        backend.name,
        backend.kind,
        cfg.max_bytes,
    )
    sdnotify.ready(f"serving :{cfg.port}, backend {backend.name}")
    watchdog = sdnotify.start_watchdog()
    discoverd = DiscoverdClient(cfg.discoverd_urls)
    announcement = None
    if cfg.addr is not None:
        announcement = Announcement(discoverd, SERVICE, cfg.addr, meta={"backend": cfg.default.kind})
        announcement.start()

    stop = stop_event()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        sdnotify.stopping()
        await sdnotify.cancel(watchdog)
        if announcement is not None:
            await announcement.close()
        await discoverd.close()
        with contextlib.suppress(Exception):
            await runner.cleanup()
        await backend.stop()
    return 0


def main() -> None:
    run_daemon("flynn-blobstore", BlobstoreConfig.from_env, serve)


if __name__ == "__main__":
    main()
