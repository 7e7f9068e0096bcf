"""The aggregator as it runs (flynn.logs.daemon.Aggregator): a real discoverd node
(tests.unit.discoverd_local), three hosts' real ``GET /host/logs`` (flynn.host.logs on journals in
memory, tests.unit.journal_fake) registered as ``flynn-host``, the aggregator's HTTP API, and a
real syslog receiver for the sink. Covers the rebuild from the journals at start (and after a
restart), the merge across hosts, following, resuming a host that left discoverd, and that only
live lines (not the rebuilt backlog) are shipped to sinks."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from flynn.discoverd.client import Client as DiscoverdClient
from flynn.discoverd.client import Registration
from flynn.host import logs as host_logs
from flynn.host.logs import HostLogs, JobIdentity
from flynn.logs import daemon, sinks
from flynn.logs.config import AggregatorConfig
from flynn.logs.daemon import Aggregator
from flynn.logs.sinks import SinkConfig
from tests.syslog_receiver import SyslogReceiver
from tests.unit.discoverd_local import LocalCluster, free_port_pair
from tests.unit.journal_fake import FakeJournal

APP = "7d2a1a8e-1111-4c4c-9d9d-000000000001"
OTHER = "7d2a1a8e-2222-4c4c-9d9d-000000000002"


@dataclass
class Host:
    id: str
    journal: FakeJournal = field(default_factory=FakeJournal)
    runner: web.AppRunner | None = None
    url: str = ""
    reg: Registration | None = None

    @property
    def job(self) -> str:
        return f"{self.id}-job"

    def lookup(self, job_id: str) -> JobIdentity | None:
        if job_id == self.job:
            return JobIdentity(APP, "myapp", "rel1", "web")
        if job_id == f"{self.id}-other":
            return JobIdentity(OTHER, "other", "rel2", "worker")
        return None

    async def start(self) -> None:
        app = web.Application()
        host_logs.add_routes(app, HostLogs(self.id, self.lookup, self.journal.reader))
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"127.0.0.1:{self.runner.addresses[0][1]}"

    async def register(self, discoverd: DiscoverdClient) -> None:
        self.reg = await discoverd.register(
            "flynn-host", self.url, iid=self.id, meta={"id": self.id}, interval=0.5
        )


@dataclass
class World:
    discoverd: DiscoverdClient
    hosts: list[Host]
    cfg: AggregatorConfig
    clock: list[int] = field(default_factory=lambda: [1_700_000_000_000_000])

    def write(self, host: Host, msg: str, *, job: str | None = None, app: str = APP, prio: int = 6) -> None:
        """A job line with a cluster-wide increasing timestamp (as the hosts' shared clock)."""
        self.clock[0] += 7
        host.journal.job_line(job or host.job, msg, app=app, prio=prio, ts=self.clock[0])


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    raft, http = free_port_pair()
    cluster = LocalCluster(tmp_path, raft, http, ttl=10.0)
    await cluster.start(1)
    discoverd = DiscoverdClient(cluster.urls(), retry_for=5)
    hosts = [Host(f"host{k}") for k in (1, 2, 3)]
    for h in hosts:
        await h.start()
        await h.register(discoverd)
    cfg = AggregatorConfig(
        addr="127.0.0.1", controller_key="k" * 16, port=0, lines=100, discoverd_urls=tuple(cluster.urls())
    )
    w = World(discoverd, hosts, cfg)
    try:
        yield w
    finally:
        for h in hosts:
            if h.reg is not None:
                await h.reg.close()
            if h.runner is not None:
                await h.runner.cleanup()
        await discoverd.close()
        await cluster.stop()


async def started(cfg: AggregatorConfig) -> Aggregator:
    agg = Aggregator(cfg)
    await asyncio.wait_for(agg.start(), 30)
    return agg


async def get_log(agg: Aggregator, key: str = APP, **params: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://{agg.announce}/apps/{key}/log", params=params) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        return [json.loads(x) for x in (await resp.text()).splitlines() if x.strip()]


async def eventually(what: str, check: Any, timeout: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_rebuilt_from_the_journals_merged_in_time_order(world: World) -> None:
    h1, h2, _ = world.hosts
    for i in range(60):  # 180 lines of the app over three hosts; the buffer keeps 100
        for h in world.hosts:
            world.write(h, f"{h.id} line {i}", prio=3 if i % 10 == 0 else 6)
    for i in range(5):
        world.write(h2, f"other {i}", job="host2-other", app=OTHER)
    h1.journal.append(
        _SYSTEMD_UNIT="flynn-controller.service", _SYSTEMD_SLICE="flynn.slice", MESSAGE="ctl up"
    )
    agg = await started(world.cfg)
    try:
        assert agg.ready

        async def leads() -> bool:
            return agg.leader  # the only instance

        await eventually("the leadership", leads)
        lines = await get_log(agg)
        assert len(lines) == 100  # the last 100 of 180, across the hosts
        assert [x["ts"] for x in lines] == sorted(x["ts"] for x in lines)
        assert lines[-1]["msg"] == "host3 line 59"
        for h in world.hosts:  # each job's lines in its journal's order
            nums = [int(x["msg"].split()[-1]) for x in lines if x["job_id"] == h.job]
            assert nums == sorted(nums)
            assert len(nums) >= 33
        stderr = [x for x in lines if x["stream"] == "stderr"]
        assert stderr
        assert {x["msg"].split(" ", 1)[1] for x in stderr} == {"line 30", "line 40", "line 50"}
        assert [x["msg"] for x in await get_log(agg, OTHER)] == [f"other {i}" for i in range(5)]
        assert [x["msg"] for x in await get_log(agg, "controller")] == ["ctl up"]
        assert [x["msg"] for x in await get_log(agg, APP, lines="2", job_id="host1-job")] == [
            "host1 line 58",
            "host1 line 59",
        ]
        assert len(await get_log(agg, APP, process_type="worker")) == 0
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://{agg.announce}/apps/{APP}/log?lines=x") as resp,
        ):
            assert resp.status == 400
        status = agg.status()
        assert set(status["hosts"]) == {"host1", "host2", "host3"}
        assert all(h["live"] and h["connected"] for h in status["hosts"].values())
    finally:
        await agg.close()

    # a restart: a new instance serves the same lines, read again from the journals
    agg = await started(world.cfg)
    try:
        again = await get_log(agg)
        assert [(x["job_id"], x["msg"]) for x in again] == [(x["job_id"], x["msg"]) for x in lines]
    finally:
        await agg.close()


async def test_follow_and_sinks_get_live_lines_only(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks, "MIN_DELAY", 0.05)
    monkeypatch.setattr(sinks, "MAX_DELAY", 0.2)
    h1, h2, _ = world.hosts
    world.write(h1, "old news")
    receiver = SyslogReceiver().start()
    agg = await started(world.cfg)
    try:
        await agg.sinks.configure(
            [
                SinkConfig.from_api(
                    {"id": "s1", "kind": "syslog", "url": f"syslog://127.0.0.1:{receiver.port}"}
                )
            ]
        )
        got: list[dict[str, Any]] = []

        async def follow() -> None:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://{agg.announce}/apps/{APP}/log", params={"follow": "true"}) as resp,
            ):
                async for raw in resp.content:
                    if raw.strip():
                        got.append(json.loads(raw))

        task = asyncio.ensure_future(follow())

        async def has(n: int) -> bool:
            return len(got) >= n

        await eventually("the old line", lambda: has(1))
        world.write(h2, "fresh 1")
        world.write(h1, "fresh 2", prio=3)
        await eventually("the live lines", lambda: has(3))
        assert [x["msg"] for x in got] == ["old news", "fresh 1", "fresh 2"]
        assert got[2]["stream"] == "stderr"

        async def shipped() -> bool:
            return receiver.count() >= 2

        await eventually("the sink", shipped)
        msgs = [m.msg for m in receiver.messages]
        assert msgs == ["fresh 1", "fresh 2"]  # not the backlog the aggregator rebuilt
        first = receiver.messages[0]
        assert first.app_name == "myapp"
        assert first.procid == "web.host2-job"
        assert first.sd["flynn@32473"]["app_id"] == APP
        assert receiver.messages[1].pri == 11  # user.err: the job's stderr
        task.cancel()
    finally:
        await agg.close()
        receiver.stop()


async def test_a_host_that_leaves_discoverd_is_resumed_where_it_was(world: World) -> None:
    _, h2, _ = world.hosts
    world.write(h2, "before")
    agg = await started(world.cfg)
    try:
        assert h2.reg is not None
        await h2.reg.close()  # deregistered: gone from discoverd

        async def gone() -> bool:
            return not agg.followers.status()["host2"]["connected"]

        await eventually("host2 to be dropped", gone)
        world.write(h2, "while away 1")
        world.write(h2, "while away 2")
        await h2.register(world.discoverd)

        async def back() -> bool:
            return [x["msg"] for x in await get_log(agg)] == ["before", "while away 1", "while away 2"]

        await eventually("the lines written while it was away, once each", back)
    finally:
        await agg.close()


@dataclass
class Pair:
    """Two aggregators on the same discoverd (the first leads), both with one sink."""

    first: Aggregator
    second: Aggregator
    receiver: SyslogReceiver
    first_closed: bool = False

    async def close_first(self) -> None:
        await self.first.close()
        self.first_closed = True


@contextlib.asynccontextmanager
async def two_aggregators_with_a_sink(world: World, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Pair]:
    monkeypatch.setattr(sinks, "MIN_DELAY", 0.05)
    monkeypatch.setattr(sinks, "MAX_DELAY", 0.2)
    monkeypatch.setattr(daemon, "PUBLISH_EVERY", 0.05)
    receiver = SyslogReceiver().start()
    sink = [SinkConfig.from_api({"id": "s1", "kind": "syslog", "url": f"syslog://127.0.0.1:{receiver.port}"})]
    pair = Pair(await started(world.cfg), await started(world.cfg), receiver)
    try:
        for agg in (pair.first, pair.second):
            await agg.sinks.configure(sink)
        yield pair
    finally:
        if not pair.first_closed:
            await pair.first.close()
        await pair.second.close()
        receiver.stop()


async def test_a_new_leader_ships_what_the_old_one_had_not(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    h1, h2, h3 = world.hosts
    world.write(h1, "backlog")  # before any leader: never this sink's
    async with two_aggregators_with_a_sink(world, monkeypatch) as pair:
        first, second, receiver = pair.first, pair.second, pair.receiver
        assert first.leader
        assert not second.leader
        world.write(h1, "l1")
        world.write(h2, "l2")

        async def shipped(n: int) -> bool:
            return receiver.count() >= n

        await eventually("the first lines", lambda: shipped(2))

        async def published() -> bool:
            meta = await world.discoverd.get_meta("logaggregator")
            hosts = ((meta.get("data") or {}).get("sinks") or {}).get("s1", {}).get("hosts", {})
            return set(hosts) == {"host1", "host2"}

        await eventually("the positions in discoverd", published)
        # the leader stops shipping (as a crashed one does) while lines keep coming, from a host
        # it never delivered from too; only then does the other instance lead
        await first.sinks.activate(False)
        world.write(h2, "l3")
        world.write(h3, "l4")
        await eventually("the lines in the other buffers", lambda: has_lines(second, 4))
        await pair.close_first()

        async def took_over() -> bool:
            return second.leader and receiver.count() >= 4

        await eventually("the new leader to ship the lines", took_over)
        world.write(h1, "l5")
        await eventually("a live line after them", lambda: shipped(5))
        await asyncio.sleep(0.3)
        assert [m.msg for m in receiver.messages] == ["l1", "l2", "l3", "l4", "l5"]  # once each, in order
        assert second.sinks.status()[0]["replayed"] == 2


async def has_lines(agg: Aggregator, n: int) -> bool:
    return len(await get_log(agg)) >= n + 1  # + the backlog line


async def test_an_orderly_handoff_ships_nothing_twice(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    h1, _, _ = world.hosts
    async with two_aggregators_with_a_sink(world, monkeypatch) as pair:
        second, receiver = pair.second, pair.receiver
        world.write(h1, "l1")

        async def published(msgs: int) -> bool:
            meta = await world.discoverd.get_meta("logaggregator")
            return bool(((meta.get("data") or {}).get("sinks") or {}).get("s1", {}).get("hosts")) and (
                receiver.count() >= msgs
            )

        await eventually("l1 delivered and its position published", lambda: published(1))
        monkeypatch.setattr(daemon, "PUBLISH_EVERY", 60.0)  # no periodic publication from now on
        await asyncio.sleep(0.2)
        world.write(h1, "l2")

        async def delivered() -> bool:
            return receiver.count() >= 2

        await eventually("l2 delivered", delivered)
        await pair.close_first()  # SIGTERM: the last positions go out before it deregisters
        world.write(h1, "l3")

        async def shipped() -> bool:
            return second.leader and receiver.count() >= 3

        await eventually("the new leader to ship l3", shipped)
        await asyncio.sleep(0.3)
        assert [m.msg for m in receiver.messages] == ["l1", "l2", "l3"]
