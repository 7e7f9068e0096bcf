"""``flynn-gitreceive hook pre-receive|post-receive``: what git runs for every push.

gitreceive points ``core.hooksPath`` of every ``git receive-pack`` it starts at a directory whose
``pre-receive`` and ``post-receive`` run this (see :mod:`.backend`); the hook inherits the
daemon's environment (its configuration) plus ``FLYNN_GITRECEIVE_APP``, the app the
authenticated request was for, and runs in the repository.

* pre-receive: :class:`~flynn.gitreceive.prereceive.PreReceive` (the build and deployment).
  SIGTERM, SIGINT, SIGHUP (gitreceive stops the request when the pusher goes away) or a broken
  output cancel it: the build job is stopped before the hook exits.
* post-receive (the branch has moved): ``HEAD`` follows the pushed branch, and the repository is
  stored as the blobstore's ``/repos/APP.git.tar`` (:func:`flynn.gitreceive.repos.save`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

import aiohttp

from flynn.common.errors import APIError, ConfigError, FlynnError
from flynn.common.log import register_secret, setup_logging
from flynn.controller.client import AsyncClient
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.gitreceive import refs, repos
from flynn.gitreceive.blobs import Blobstore
from flynn.gitreceive.cluster import Cluster
from flynn.gitreceive.config import APP_VAR, GitreceiveConfig
from flynn.gitreceive.output import Output
from flynn.gitreceive.prereceive import PreReceive

KINDS = ("pre-receive", "post-receive")
CANCEL_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

log = logging.getLogger("flynn.gitreceive.hook")


def _cluster(cfg: GitreceiveConfig, session: aiohttp.ClientSession) -> Cluster:
    local_ip = cfg.addr.rsplit(":", 1)[0] if cfg.addr else None
    return Cluster(
        DiscoverdClient(list(cfg.discoverd_urls), session=session, retry_for=5),
        local_ip=local_ip,
        controller_url=cfg.controller_url,
        blobstore_url=cfg.blobstore_url,
    )


async def pre_receive(cfg: GitreceiveConfig, app: str, stdin: str, repo: Path, out: Output) -> int:
    async with aiohttp.ClientSession() as session:
        cluster = _cluster(cfg, session)
        try:
            urls = await cluster.controller_urls()
        except APIError as exc:
            out.fail(f"cannot find the controller: {exc.message}")
            return 1
        controller = AsyncClient(urls, cfg.controller_key, timeout=30, retry_for=10, session=session)
        hook = PreReceive(cfg, app, repo, controller, cluster, session, out)
        return await hook.run(stdin)


async def post_receive(cfg: GitreceiveConfig, app: str, stdin: str, repo: Path, out: Output) -> int:
    try:
        updates = [u for u in refs.parse(stdin) if u.ref in refs.DEPLOY_REFS and set(u.new) != {"0"}]
    except refs.Rejected:
        updates = []
    try:
        if updates:
            await repos.git("symbolic-ref", "HEAD", updates[-1].ref, cwd=repo)
        async with aiohttp.ClientSession() as session:
            cluster = _cluster(cfg, session)
            blobs = Blobstore(await cluster.blobstore_urls(), session)
            await repos.save(cfg.repos, app, blobs)
    except (APIError, FlynnError, OSError) as exc:
        out.fail(f"warning: the repository was not saved in the blobstore ({exc}); the next push retries")
    return 0


async def _run(kind: str, cfg: GitreceiveConfig, app: str, stdin: str) -> int:
    out = Output(1)
    hook = pre_receive if kind == "pre-receive" else post_receive
    task = asyncio.ensure_future(hook(cfg, app, stdin, Path.cwd(), out))
    out.on_gone = task.cancel  # the push went away
    loop = asyncio.get_running_loop()
    for sig in CANCEL_SIGNALS:
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return 1
    finally:
        for sig in CANCEL_SIGNALS:
            loop.remove_signal_handler(sig)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in KINDS:
        print(f"usage: flynn-gitreceive hook {'|'.join(KINDS)}", file=sys.stderr)
        return 2
    setup_logging("gitreceive", level="WARNING")
    try:
        cfg = GitreceiveConfig.from_env()
    except ConfigError as exc:
        print(f" !     gitreceive is misconfigured: {exc}", flush=True)
        return 1
    for secret in cfg.secrets():
        register_secret(secret)
    app = os.environ.get(APP_VAR, "")
    if not repos.APP_RE.match(app):
        print(f" !     {APP_VAR} is not set: this hook runs only under flynn-gitreceive", flush=True)
        return 1
    stdin = sys.stdin.read()
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_run(argv[0], cfg, app, stdin))
    return 1
