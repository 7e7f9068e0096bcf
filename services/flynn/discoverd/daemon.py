"""``flynn-discoverd``: the Raft registry, its HTTP API and DNS server, run by flynn-discoverd.service."""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from flynn.common import sdnotify
from flynn.common.daemon import run_daemon, stop_event
from flynn.common.log import register_secret, setup_logging
from flynn.discoverd.api import make_app
from flynn.discoverd.config import DiscoverdConfig
from flynn.discoverd.dns import DNSServer, upstreams_from_resolv_conf
from flynn.discoverd.membership import Membership
from flynn.discoverd.raft import RaftSettings
from flynn.discoverd.store import RoleFile, Store


async def serve(cfg: DiscoverdConfig) -> None:
    log = setup_logging("discoverd")
    register_secret(cfg.secret)
    settings = RaftSettings(ip=cfg.addr, secret=cfg.secret, data_dir=cfg.data_dir, port=cfg.raft_port)
    holder: dict[str, Any] = {}

    def invalidate(service: str | None) -> None:
        dns = holder.get("dns")
        if dns is not None:
            dns.invalidate(service)

    async def forward(leader: str, ages: list[tuple[str, str, float]]) -> None:
        await holder["membership"].forward_heartbeats(leader, ages)

    store = Store(settings, ttl=cfg.ttl, invalidate=invalidate, forward_heartbeats=forward)
    membership = Membership(store, cfg.http_port)
    holder["membership"] = membership
    saved = RoleFile.load(store.role_file)
    if saved is not None:
        role, peers = saved.role, saved.peers
    else:
        role, peers = ("peer" if cfg.addr in cfg.peers else "proxy"), cfg.peers
    store.start(role, peers)
    membership.start()

    runner = web.AppRunner(
        make_app(store, membership), access_log=None, handle_signals=False, shutdown_timeout=5
    )
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", cfg.http_port, reuse_address=True).start()  # noqa: S104
    dns: DNSServer | None = None
    if cfg.dns_port:
        upstreams = list(cfg.recursors) if cfg.recursors is not None else upstreams_from_resolv_conf()
        dns = DNSServer(store, host=cfg.dns_addr, port=cfg.dns_port, upstreams=upstreams, ttl=5)
        await dns.start()
        holder["dns"] = dns
    log.info(
        "discoverd %s on %s: API :%d, DNS :%d, Raft %s:%d (peers %s)",
        role,
        cfg.addr,
        cfg.http_port,
        cfg.dns_port,
        cfg.addr,
        cfg.raft_port,
        ", ".join(peers),
    )
    sdnotify.ready(f"{role}; API :{cfg.http_port}")
    watchdog = sdnotify.start_watchdog()

    stop = stop_event()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        sdnotify.stopping()
        await sdnotify.cancel(watchdog)
        if dns is not None:
            with contextlib.suppress(Exception):
                await dns.stop()
        store.close_watches()
        with contextlib.suppress(Exception):
            await runner.cleanup()
        await membership.stop()
        await store.stop()


def main() -> None:
    run_daemon("flynn-discoverd", DiscoverdConfig.from_env, serve)


if __name__ == "__main__":
    main()
