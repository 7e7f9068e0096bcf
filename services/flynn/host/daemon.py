"""``flynn-host daemon``: run the host agent until SIGTERM, speaking sd_notify to systemd."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from aiohttp import web

from flynn.common import sdnotify
from flynn.common.log import setup_logging
from flynn.host.api import make_app
from flynn.host.config import HostConfig
from flynn.host.identity import load_or_create


async def serve(config: HostConfig) -> None:
    log = setup_logging("host")
    identity = load_or_create(config.state_dir, config.host_id)
    app = make_app(identity, build_file=config.build_file)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.listen_ip, config.port, reuse_address=True)
    await site.start()
    log.info("host %s serving the host API on %s:%d", identity.id, config.listen_ip, config.port)
    sdnotify.ready(f"host {identity.id} serving on :{config.port}")
    watchdog = sdnotify.start_watchdog()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        sdnotify.stopping()
        await sdnotify.cancel(watchdog)
        with contextlib.suppress(Exception):
            await runner.cleanup()


def run(config: HostConfig) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
