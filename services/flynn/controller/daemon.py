"""``flynn-controller``: the controller API, run by flynn-controller.service (docs/controller.md)."""

from __future__ import annotations

import flynn
from flynn.common import sdnotify
from flynn.common.daemon import run_daemon, stop_event
from flynn.common.log import register_secret, setup_logging
from flynn.controller.config import ControllerConfig, database_password
from flynn.controller.service import Controller
from flynn.discoverd.client import Announcement
from flynn.discoverd.client import Client as DiscoverdClient

SERVICE = "controller"


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
    announcement = None
    if cfg.addr:
        announcement = Announcement(discoverd, SERVICE, cfg.addr, meta={"version": _version()})
        announcement.start()
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
        if announcement is not None:
            await announcement.close()
        await controller.stop()
        await discoverd.close()


def main() -> None:
    run_daemon("flynn-controller", ControllerConfig.from_env, serve)


if __name__ == "__main__":
    main()
