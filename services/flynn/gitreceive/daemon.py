"""``flynn-gitreceive``: git smart HTTP for ``git push`` deploys, run by flynn-gitreceive.service.

* ``flynn-gitreceive`` (no arguments): the service. Read the configuration (a bad one is one line
  and exit 1), write the hooks directory, serve HTTP on ``GITRECEIVE_PORT`` (1220), tell systemd
  READY=1, then register in discoverd as ``gitreceive`` when ``GITRECEIVE_ADDR`` is set (in the
  background, retrying). SIGTERM: deregister, let requests in flight finish (10 s), exit.
* ``flynn-gitreceive hook pre-receive|post-receive``: the hooks git runs (:mod:`.hook`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from flynn.common import sdnotify
from flynn.common.daemon import run_daemon, stop_event
from flynn.common.log import register_secret, setup_logging
from flynn.common.web import serve_app
from flynn.controller.client import AsyncClient
from flynn.discoverd.client import Announcement
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.gitreceive import hook
from flynn.gitreceive.api import Context, make_app
from flynn.gitreceive.auth import Verifier
from flynn.gitreceive.blobs import Blobstore
from flynn.gitreceive.cluster import Cluster
from flynn.gitreceive.config import SERVICE, GitreceiveConfig

log = logging.getLogger("flynn.gitreceive")

# the service manager's own variables: not for git and the hooks
_NOT_PASSED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def write_hooks(directory: Path, command: tuple[str, ...]) -> None:
    """``pre-receive`` and ``post-receive`` scripts that run ``COMMAND hook KIND``."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for kind in hook.KINDS:
        script = directory / kind
        tmp = script.with_suffix(".tmp")
        tmp.write_text(f"#!/bin/sh\nexec {shlex.join(command)} hook {kind}\n")
        tmp.chmod(0o700)
        tmp.replace(script)


def base_env(cfg: GitreceiveConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What git and its hooks run with: this process's environment (the configuration)."""
    src = os.environ if environ is None else environ
    env = {k: v for k, v in src.items() if k not in _NOT_PASSED}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = str(cfg.state_dir)
    env.setdefault("LANG", "C.UTF-8")
    return env


def make_context(
    cfg: GitreceiveConfig,
    session: aiohttp.ClientSession,
    cluster: Cluster,
    environ: Mapping[str, str] | None = None,
) -> Context:
    """The routes' context; ``environ`` is what the configuration was read from (default: ours)."""

    async def lookup(key: str, app: str) -> dict[str, Any]:
        client = AsyncClient(await cluster.controller_urls(), key, timeout=10, session=session)
        return dict(await client.get_app(app))

    async def blobstore() -> Blobstore:
        return Blobstore(await cluster.blobstore_urls(), session)

    return Context(
        repos=cfg.repos,
        hooks_dir=cfg.state_dir / "hooks",
        verifier=Verifier(lookup, ttl=cfg.auth_cache_seconds),
        blobstore=blobstore,
        base_env=base_env(cfg, environ),
    )


async def start_http(cfg: GitreceiveConfig, ctx: Context) -> web.AppRunner | None:
    # handler_cancellation: the pusher went away, so the build stops (backend.serve)
    return await serve_app(make_app(ctx), cfg.listen_ip, cfg.port, handler_cancellation=True)


async def serve(cfg: GitreceiveConfig) -> int:
    setup_logging("gitreceive")
    for secret in cfg.secrets():
        register_secret(secret)
    try:
        cfg.repos.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_hooks(cfg.state_dir / "hooks", cfg.hook_command)
    except OSError as exc:
        log.error("cannot prepare %s: %s", cfg.state_dir, exc.strerror or exc)
        return 1
    async with aiohttp.ClientSession() as session:
        discoverd = DiscoverdClient(list(cfg.discoverd_urls), session=session, retry_for=5)
        local_ip = cfg.addr.rsplit(":", 1)[0] if cfg.addr else None
        cluster = Cluster(
            discoverd, local_ip=local_ip, controller_url=cfg.controller_url, blobstore_url=cfg.blobstore_url
        )
        runner = await start_http(cfg, make_context(cfg, session, cluster))
        if runner is None:
            return 1
        log.info("gitreceive on %s:%d, repositories in %s", cfg.listen_ip, cfg.port, cfg.repos)
        sdnotify.ready(f"serving :{cfg.port}")
        watchdog = sdnotify.start_watchdog()
        announcement = None
        if cfg.addr is not None:
            announcement = Announcement(discoverd, SERVICE, cfg.addr)
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
            with contextlib.suppress(Exception):
                await runner.cleanup()
    return 0


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "hook":
        sys.exit(hook.main(args[1:]))
    if args:
        print("usage: flynn-gitreceive [hook pre-receive|post-receive]", file=sys.stderr)
        sys.exit(2)
    run_daemon("flynn-gitreceive", GitreceiveConfig.from_env, serve)


if __name__ == "__main__":
    main()
