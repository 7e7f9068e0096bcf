"""``flynn-controller``: the controller API, run by flynn-controller.service (docs/controller.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import flynn
from flynn.common import sdnotify
from flynn.common.daemon import run_daemon, stop_event
from flynn.common.errors import APIError
from flynn.common.log import register_secret, setup_logging
from flynn.controller.config import ControllerConfig, database_password
from flynn.controller.service import Controller
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.discoverd.client import Registration

SERVICE = "controller"


async def register_forever(client: DiscoverdClient, addr: str, holder: list[Registration]) -> None:
    """Register as ``controller`` in discoverd, retrying until it works (discoverd may be starting)."""
    log = logging.getLogger("flynn.controller")
    delay = 0.5
    while True:
        try:
            holder.append(await client.register(SERVICE, addr, meta={"version": _version()}))
            log.info("registered in discoverd as %s at %s", SERVICE, addr)
            return
        except APIError as exc:
            log.warning("cannot register in discoverd yet: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def _version() -> str:
    return flynn.__version__


async def serve(cfg: ControllerConfig) -> None:
    log = setup_logging("controller")
    for key in cfg.auth_keys:
        register_secret(key)
    password = database_password(cfg.database_url)
    if password:
        register_secret(password)
    register_secret(cfg.database_url)
    discoverd = DiscoverdClient(cfg.discoverd_urls)
    controller = Controller(cfg, discoverd=discoverd)
    sdnotify.status("waiting for the database")
    await controller.start()
    registrations: list[Registration] = []
    register_task = None
    if cfg.addr:
        register_task = asyncio.get_running_loop().create_task(
            register_forever(discoverd, cfg.addr, registrations)
        )
    else:
        log.warning("CONTROLLER_ADDR is not set: not registering in discoverd")
    sdnotify.ready(f"serving on :{controller.port}")
    watchdog = sdnotify.start_watchdog()

    stop = stop_event()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        sdnotify.stopping()
        await sdnotify.cancel(watchdog)
        if register_task is not None:
            register_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await register_task
        for reg in registrations:
            await reg.close()
        await controller.stop()
        await discoverd.close()


def main() -> None:
    run_daemon("flynn-controller", ControllerConfig.from_env, serve)


if __name__ == "__main__":
    main()
