"""``flynn-host daemon``: run the host agent until SIGTERM, speaking sd_notify to systemd."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from flynn.common import sdnotify
from flynn.common.daemon import run_loop, stop_event
from flynn.common.errors import APIError, ConfigError
from flynn.common.log import setup_logging
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.discoverd.client import Registration
from flynn.host import sysinfo
from flynn.host.api import make_app
from flynn.host.config import HostConfig
from flynn.host.identity import load_or_create
from flynn.host.jobs.artifacts import ArtifactStore
from flynn.host.jobs.dbus import Systemd
from flynn.host.jobs.manager import JobManager
from flynn.host.jobs.platform import Platform
from flynn.host.jobs.store import JobStore


async def register_host(host_id: str, addr: str, port: int) -> Registration:
    """Announce this host in discoverd as service ``flynn-host`` (instance id = host id), retrying
    until discoverd is configured and reachable; heartbeats keep it registered afterwards."""
    log = logging.getLogger("flynn.host")
    client = DiscoverdClient(["http://127.0.0.1:1111"], retry_for=2)
    delay = 1.0
    while True:
        try:
            reg = await client.register("flynn-host", f"{addr}:{port}", iid=host_id, meta={"id": host_id})
            log.info("registered in discoverd as flynn-host/%s at %s:%d", host_id, addr, port)
            return reg
        except APIError as exc:
            log.debug("discoverd not ready (%s); retrying in %gs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)  # local discoverd: polling it is cheap


def primary_ip() -> str | None:
    return next((a["address"] for a in sysinfo.addresses() if a["family"] == "inet"), None)


async def start_jobs(
    config: HostConfig, host_id: str, addr: str | None, registrar: DiscoverdClient
) -> tuple[JobManager, Systemd, Platform]:
    """Connect to systemd, and recover the jobs that ran before this daemon started."""
    systemd = Systemd()
    try:
        systemd.open()
    except Exception as exc:  # no system bus, no pystemd: nothing can run here
        raise ConfigError(f"cannot talk to systemd over D-Bus: {exc}") from None
    manager = JobManager(
        host_id=host_id,
        addr=addr,
        backend=systemd,
        store=JobStore(config.state_dir / "jobs"),
        artifacts=ArtifactStore(config.state_dir / "artifacts"),
        registrar=registrar,
        drain_delay=config.drain_delay,
    )
    await manager.recover()
    return manager, systemd, Platform(systemd, config.etc_dir)


async def serve(config: HostConfig) -> None:
    log = setup_logging("host")
    identity = load_or_create(config.state_dir, config.host_id)
    addr = config.addr or primary_ip()
    job_discoverd = DiscoverdClient(["http://127.0.0.1:1111"], retry_for=5)
    manager, systemd, platform = await start_jobs(config, identity.id, addr, job_discoverd)
    pruning = asyncio.get_running_loop().create_task(manager.prune_loop(), name="artifact-prune")
    app = make_app(identity, build_file=config.build_file, jobs=manager, platform=platform)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, config.listen_ip, config.port, reuse_address=True)
    await site.start()
    log.info("host %s serving the host API on %s:%d", identity.id, config.listen_ip, config.port)
    sdnotify.ready(f"host {identity.id} serving on :{config.port}")
    watchdog = sdnotify.start_watchdog()
    registering: asyncio.Task[Registration] | None = None
    if addr is not None:
        registering = asyncio.get_running_loop().create_task(register_host(identity.id, addr, config.port))

    stop = stop_event()
    systemd.on_broken = stop.set  # exit; systemd restarts the daemon, which reconnects and recovers
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        sdnotify.stopping()
        await sdnotify.cancel(watchdog)
        if registering is not None:
            if registering.done() and not registering.cancelled() and registering.exception() is None:
                with contextlib.suppress(Exception):
                    await registering.result().close()
                await registering.result().client.close()
            else:
                registering.cancel()
        pruning.cancel()
        await manager.close()  # jobs keep running; the next daemon recovers them
        await job_discoverd.close()
        with contextlib.suppress(Exception):
            await runner.cleanup()
        systemd.close()


def run(config: HostConfig) -> None:
    run_loop(serve(config))
