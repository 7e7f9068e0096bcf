"""``flynn-logaggregator``: run by flynn-logaggregator.service on every bootstrap host.

Start-up: read the configuration (a bad one exits with a one-line reason), serve the API, follow
every host's journal and wait (bounded) until each host known to discoverd has sent its backlog,
so a restarted aggregator answers with everything journald still has; then register in discoverd
as ``logaggregator`` and tell systemd READY=1. The discoverd leader of ``logaggregator`` ships
the lines to the sinks; the others only keep buffers. While it leads it publishes, every
:data:`PUBLISH_EVERY` seconds, how far each sink got (per host, the newest line delivered) as the
``logaggregator`` service meta in discoverd (Raft: it outlives the leader); a new leader resumes
from there (flynn.logs.sinks). SIGTERM deregisters (the next instance leads at once) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
from aiohttp import web

from flynn.common import sdnotify
from flynn.common.daemon import run_daemon, stop_event
from flynn.common.errors import APIError
from flynn.common.log import register_secret, setup_logging
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.discoverd.client import Registration
from flynn.logs.api import LogAPI
from flynn.logs.buffer import Buffers
from flynn.logs.config import SERVICE, AggregatorConfig
from flynn.logs.controller import SinkSource
from flynn.logs.hosts import HostFollowers
from flynn.logs.sinks import SinkSet

log = logging.getLogger("flynn.logaggregator")

PUBLISH_EVERY = 1.0  # seconds between publications of the sinks' positions (when they moved)


async def register(discoverd: DiscoverdClient, addr: str) -> Registration:
    delay = 0.5
    while True:
        try:
            reg = await discoverd.register(SERVICE, addr, meta={"addr": addr})
        except APIError as exc:
            log.info("discoverd not reachable yet (%s); retrying in %gs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        log.info("registered in discoverd as %s/%s at %s", SERVICE, reg.id, addr)
        return reg


class Aggregator:
    """Everything one aggregator process runs (the daemon and the tests start it)."""

    def __init__(self, cfg: AggregatorConfig) -> None:
        self.cfg = cfg
        self.session = aiohttp.ClientSession()
        self.discoverd = DiscoverdClient(list(cfg.discoverd_urls), session=self.session)
        self.buffers = Buffers(cfg.lines)
        self.sinks = SinkSet(cfg.sink_buffer, backlog=self.buffers.lines)
        self.followers = HostFollowers(
            self.discoverd, self.session, self.buffers, self.sinks.offer, lines=cfg.lines
        )
        self.sink_source = SinkSource(self.discoverd, self.session, cfg.controller_key, self.sinks.configure)
        self.registration: Registration | None = None
        self._meta_index = 0  # of the logaggregator service meta (compare-and-set)
        self.ready = False
        self.tasks: list[asyncio.Task[Any]] = []
        api = LogAPI(self.buffers, self.status, self.sink_status)
        self.runner = web.AppRunner(api.make_app(), access_log=None, handle_signals=False, shutdown_timeout=2)
        self.port = 0
        self.announce = cfg.announce

    @property
    def leader(self) -> bool:
        return self.registration is not None and self.registration.is_leader

    def status(self) -> dict[str, Any]:
        return {
            "addr": self.announce,
            "ready": self.ready,
            "leader": self.leader,
            "apps": len(self.buffers.apps),
            "lines": self.buffers.total(),
            "capacity": self.buffers.capacity,
            "hosts": self.followers.status(),
            "sinks": self.sinks.status(),
        }

    def sink_status(self) -> dict[str, Any]:
        return {"addr": self.announce, "leader": self.leader, "sinks": self.sinks.status()}

    async def start(self) -> None:
        await self.runner.setup()
        listen = self.cfg.listen_ip or self.cfg.addr
        await web.TCPSite(self.runner, listen, self.cfg.port, reuse_address=True).start()
        self.port = int(self.runner.addresses[0][1])
        if self.cfg.port == 0:  # tests: an ephemeral port, announced as bound
            self.announce = self.cfg.announce.rsplit(":", 1)[0] + f":{self.port}"
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self.followers.run(), name="hosts"))
        self.tasks.append(loop.create_task(self.sink_source.run(), name="sinks"))
        sdnotify.status("reading the hosts' journals")
        await self.followers.wait_initial(self.cfg.initial_wait)
        self.ready = True
        self.registration = await register(self.discoverd, self.announce)
        self.tasks.append(loop.create_task(self._leadership(self.registration), name="leadership"))

    async def _leadership(self, reg: Registration) -> None:
        active: bool | None = None
        publisher: asyncio.Task[None] | None = None
        try:
            while True:
                now = reg.is_leader
                if now != active:
                    log.info(
                        "%s: %s",
                        "leader: shipping lines to the sinks" if now else "not the leader",
                        self.announce,
                    )
                    if now:
                        meta = await self._read_positions()
                        await self.sinks.activate(True, meta.get("sinks") if meta else None)
                        publisher = asyncio.get_running_loop().create_task(self._publish(), name="positions")
                    else:
                        if publisher is not None:
                            publisher.cancel()
                            publisher = None
                        await self.sinks.activate(False)
                    sdnotify.status(f"{'leader' if now else 'follower'}; API on {self.announce}")
                    active = now
                await reg.wait_leader_change()
        finally:
            if publisher is not None:
                publisher.cancel()

    async def _read_positions(self) -> dict[str, Any] | None:
        """The sinks' positions the previous leader published (None: none, or unreadable)."""
        try:
            async with asyncio.timeout(5):
                meta = await self.discoverd.get_meta(SERVICE)
            self._meta_index = int(meta.get("index") or 0)
        except (APIError, TimeoutError, TypeError, ValueError) as exc:
            log.warning("cannot read the sinks' last positions (%s): shipping from now on", exc)
            return None
        data = meta.get("data")
        return data if isinstance(data, dict) else None

    async def _publish(self) -> None:
        """While leading: the sinks' positions to the service meta, when they moved."""
        last: dict[str, Any] | None = None
        while True:
            await asyncio.sleep(PUBLISH_EVERY)
            record = self.sinks.record()
            if record != last and await self._publish_once(record):
                last = record

    async def _publish_once(self, record: dict[str, Any]) -> bool:
        try:
            meta = await self.discoverd.set_meta(SERVICE, {"sinks": record}, self._meta_index)
            self._meta_index = int(meta.get("index") or 0)
            return True
        except (APIError, TypeError, ValueError) as exc:
            log.info("publishing the sinks' positions: %s", exc)
            if isinstance(exc, APIError) and exc.status == 409:  # an old leader wrote meanwhile
                with contextlib.suppress(APIError, TypeError, ValueError):
                    self._meta_index = int((await self.discoverd.get_meta(SERVICE)).get("index") or 0)
            return False

    async def close(self) -> None:
        leading = self.sinks.active
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.sinks.close()
        if leading:
            # the last positions, so that the next leader (at once: we deregister below) does not
            # ship again what was delivered since the last publication
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._publish_once(self.sinks.record())
        await self.followers.close()
        if self.registration is not None:
            with contextlib.suppress(Exception):
                await self.registration.close()  # deregister: the next instance leads at once
        with contextlib.suppress(Exception):
            await self.runner.cleanup()
        await self.discoverd.close()
        await self.session.close()


async def serve(cfg: AggregatorConfig) -> None:
    setup_logging("logaggregator")
    register_secret(cfg.controller_key)
    loop = asyncio.get_running_loop()
    stop = stop_event()
    agg = Aggregator(cfg)
    starting = loop.create_task(agg.start())
    stopping = loop.create_task(stop.wait())
    watchdog = None
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            sdnotify.ready(
                f"API on {cfg.announce}; {agg.buffers.total()} lines of {len(agg.buffers.apps)} apps"
            )
            watchdog = sdnotify.start_watchdog()
            await stop.wait()
    finally:
        log.info("stopping")
        sdnotify.stopping()
        await sdnotify.cancel(watchdog)
        starting.cancel()
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
        await agg.close()


def main() -> None:
    run_daemon("flynn-logaggregator", AggregatorConfig.from_env, serve)


if __name__ == "__main__":
    main()
