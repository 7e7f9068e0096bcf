"""The drain delay of flynn-host's stop path (issue 6): a job registered in discoverd is
deregistered, then gets ``drain_delay`` seconds (the routers drop it and finish its requests in
flight) before its unit is asked to stop; a job without a registration is stopped at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flynn.common.errors import ConfigError
from flynn.host.config import HostConfig
from flynn.host.jobs.ports import PortAllocator
from flynn.host.jobs.spec import parse_job
from tests.unit.host_fakes import FakeRegistrar, FakeSystemd, make_manager, wait_state


async def test_a_registered_job_is_stopped_after_the_drain_delay(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    events: list[tuple[str, str]] = []
    manager = make_manager(
        tmp_path,
        backend=FakeSystemd(events),
        registrar=FakeRegistrar(events),
        events=events,
        ports=PortAllocator(port, port, is_free=lambda _p: True),
    )
    manager.drain_delay = 1.0
    try:
        await manager.create(parse_job({"args": ["sleep", "100"], "service": "app-web"}, "host1", "host1-d"))
        await wait_state(manager, "host1-d", "up")
        job = await manager.stop("host1-d")
        assert str(job.state) == "stopping"  # answered at once, before the drain
        assert ("deregister", "host1-d") in events
        assert ("stop", "flynn-job-host1-d.service") not in events  # no SIGTERM yet: draining
        await wait_state(manager, "host1-d", "down", timeout=10)
        order = [e for e in events if e[0] in ("deregister", "stop")]
        assert order == [("deregister", "host1-d"), ("stop", "flynn-job-host1-d.service")]
        assert manager.get("host1-d") is not None
        again = await manager.stop("host1-d")  # a final job is answered as it is
        assert str(again.state) == "down"
    finally:
        server.close()


async def test_a_job_without_registration_is_stopped_at_once(tmp_path: Path) -> None:
    events: list[tuple[str, str]] = []
    manager = make_manager(tmp_path, backend=FakeSystemd(events), events=events)
    manager.drain_delay = 30.0
    await manager.create(parse_job({"args": ["sleep", "100"]}, "host1", "host1-n"))
    await wait_state(manager, "host1-n", "up")
    await manager.stop("host1-n")
    assert ("stop", "flynn-job-host1-n.service") in events
    await wait_state(manager, "host1-n", "down")


def test_drain_delay_setting() -> None:
    assert HostConfig.from_env({}).drain_delay == 2.0
    assert HostConfig.from_env({"FLYNN_HOST_DRAIN_DELAY": "0.5"}).drain_delay == 0.5
    assert HostConfig.from_env({"FLYNN_HOST_DRAIN_DELAY": "0"}).drain_delay == 0.0
    for bad in ("-1", "soon", "61"):
        with pytest.raises(ConfigError):
            HostConfig.from_env({"FLYNN_HOST_DRAIN_DELAY": bad})
