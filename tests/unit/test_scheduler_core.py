"""The scheduler's loop and leader gate against the in-memory cluster, controller and gate."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from flynn.common.errors import APIError
from flynn.scheduler.core import Role, Scheduler, Settings
from flynn.scheduler.interfaces import HostEvent
from flynn.scheduler.memory import MemoryCluster, MemoryController, MemoryGate, expanded
from flynn.scheduler.model import FormationKey, JobState
from flynn.scheduler.state import HOST_LOST, JOB_VANISHED

pytestmark = pytest.mark.timeout(60)

KEY = FormationKey("app1", "rel1", "web")


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


async def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for ``check`` (a bound for a hung test, not a duration being tested)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def settle() -> None:
    """Let every ready task run until nothing is left to do (in-memory fakes: no real I/O)."""
    for _ in range(50):
        await asyncio.sleep(0)


class Rig:
    def __init__(self, *, hosts: int = 3, leader: bool = True, counts: dict[str, int] | None = None) -> None:
        self.clock = FakeClock()
        self.cluster = MemoryCluster()
        for n in range(1, hosts + 1):
            self.cluster.add_host(f"h{n}")
        self.controller = MemoryController()
        self.controller.expanded = [expanded("app1", "rel1", counts or {"web": 3})]
        self.gate = MemoryGate(leader)
        ids = itertools.count(1)
        self.scheduler = Scheduler(
            self.cluster,
            self.controller,
            self.gate,
            clock=self.clock,
            settings=Settings(retry_min=0.01, retry_max=0.05, term_restart_delay=0.01),
            new_uuid=lambda: f"u{next(ids)}",
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.scheduler.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self.task

    def live(self, type_: str = "web") -> list[dict[str, Any]]:
        return [j for j in self.cluster.live_jobs() if j["type"] == type_]

    def starts(self) -> list[tuple[str, str, str]]:
        return [c for c in self.cluster.calls if c[0] == "start"]

    def started(self, count: int) -> Callable[[], bool]:
        return lambda: len(self.starts()) == count

    def poke(self) -> None:
        term = self.scheduler.term
        assert term is not None
        term.poke()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    r.start()
    yield r
    await r.stop()


# -- leadership ------------------------------------------------------------------------------------


async def test_a_follower_acts_on_nothing_and_a_new_leader_reads_everything_fresh() -> None:
    r = Rig(leader=False)
    orphan = {"id": "h1-orphan", "app_id": "gone", "release_id": "r0", "type": "web", "state": "up"}
    r.cluster.add_job("h1", orphan)
    r.start()
    try:
        await asyncio.sleep(0.2)  # every chance for a follower to act
        assert r.scheduler.role is Role.FOLLOWER
        assert r.cluster.calls == []
        assert r.controller.reads == 0
        assert r.controller.reports == []

        r.gate.set_leader(True)
        await eventually(lambda: len(r.live()) == 3, "3 web jobs")
        assert ("stop", "h1", "h1-orphan") in r.cluster.calls
        assert sorted(j["host_id"] for j in r.live()) == ["h1", "h2", "h3"]

        r.gate.set_leader(False)
        await eventually(lambda: r.scheduler.term is None, "the term to end")
        assert r.scheduler.role is Role.FOLLOWER
        calls = list(r.cluster.calls)
        r.cluster.set_state(r.live()[0]["id"], JobState.CRASHED, exit_status=1)
        await asyncio.sleep(0.2)
        assert r.cluster.calls == calls  # a follower does not replace the crashed job
        assert len(r.live()) == 2

        r.gate.set_leader(True)
        await eventually(lambda: len(r.live()) == 3, "the crashed job replaced by the next term")
        assert r.scheduler.terms == 2
    finally:
        await r.stop()


async def test_an_action_is_not_carried_out_once_leadership_is_gone() -> None:
    r = Rig()
    r.start()
    try:
        await eventually(lambda: len(r.live()) == 3, "3 web jobs")
        r.gate._leader = False  # lost, and the change not yet delivered: a pass in flight checks it
        r.controller.set_formations([expanded("app1", "rel1", {"web": 5})])
        await asyncio.sleep(0.2)
        assert len(r.starts()) == 3
    finally:
        await r.stop()


async def test_a_failing_term_starts_over_fresh() -> None:
    class Flaky(MemoryCluster):
        failures = 1

        async def watch_hosts(self) -> AsyncIterator[HostEvent]:
            if self.failures:
                self.failures -= 1
                raise APIError(404, "no such service")
            async for event in super().watch_hosts():
                yield event

    r = Rig()
    flaky = Flaky()
    for h in ("h1", "h2"):
        flaky.add_host(h)
    r.cluster = flaky
    r.scheduler.cluster = flaky
    r.start()
    try:
        await eventually(lambda: len(r.live()) == 3, "3 web jobs after a restarted term")
        assert r.scheduler.terms == 2
    finally:
        await r.stop()


# -- crashes, kills, lost and refusing hosts ---------------------------------------------------------


async def test_crashed_jobs_restart_at_once_then_with_growing_backoff(rig: Rig) -> None:
    await eventually(lambda: len(rig.live()) == 3, "3 web jobs")
    victim = rig.live()[0]["id"]
    rig.cluster.set_state(victim, JobState.CRASHED, exit_status=1)
    await eventually(lambda: len(rig.live()) == 3, "the first crash replaced at once")
    assert len(rig.starts()) == 4

    replacement = rig.starts()[-1][2]
    rig.cluster.set_state(replacement, JobState.CRASHED, exit_status=1)
    term = rig.scheduler.term
    assert term is not None
    await eventually(
        lambda: (
            term.last_plan is not None and [s.reason for s in term.last_plan.shortfalls] == ["crash backoff"]
        ),
        "the type held back",
    )
    await asyncio.sleep(0.1)
    assert len(rig.starts()) == 4
    assert len(rig.live()) == 2
    rig.clock.advance(0.99)
    rig.poke()
    await asyncio.sleep(0.1)
    assert len(rig.starts()) == 4
    rig.clock.advance(0.01)  # 1 s after the second crash
    rig.poke()
    await eventually(lambda: len(rig.live()) == 3, "the restart after 1 s")
    record = rig.scheduler.term.state.backoff.get(KEY) if rig.scheduler.term else None
    assert record is not None
    assert record.crashes == 2


async def test_jobs_killed_on_request_are_replaced_at_once_without_backoff(rig: Rig) -> None:
    await eventually(lambda: len(rig.live()) == 3, "3 web jobs")
    for n in range(4):
        victim = rig.live()[0]["id"]
        # what `flynn kill` does through the controller: DELETE on the job's host
        rig.cluster.set_state(victim, JobState.STOPPING)
        rig.cluster.set_state(victim, JobState.DOWN)
        await eventually(rig.started(4 + n), f"replacement {n + 1}")
        await eventually(lambda: len(rig.live()) == 3, "3 web jobs")
    term = rig.scheduler.term
    assert term is not None
    assert term.state.backoff.get(KEY) is None
    await eventually(lambda: rig.controller.jobs().get(victim) == "down", "the kill reported")


async def test_a_lost_hosts_jobs_are_reported_down_and_replaced_on_the_others(rig: Rig) -> None:
    await eventually(lambda: len(rig.live()) == 3, "3 web jobs")
    lost = [j["id"] for j in rig.live() if j["host_id"] == "h3"]
    rig.cluster.lose_host("h3")
    await eventually(lambda: len(rig.live()) == 3, "replacements on h1/h2")
    assert sorted(j["host_id"] for j in rig.live()) == ["h1", "h1", "h2"] or sorted(
        j["host_id"] for j in rig.live()
    ) == ["h1", "h2", "h2"]
    await eventually(lambda: all(rig.controller.jobs().get(j) == "down" for j in lost), "lost jobs down")
    (report,) = [r for r in rig.controller.reports if r.job_id == lost[0] and r.state == "down"]
    assert report.body["host_error"] == HOST_LOST


async def test_a_refusing_host_is_skipped_and_the_job_placed_elsewhere(rig: Rig) -> None:
    await eventually(lambda: len(rig.live()) == 3, "3 web jobs")
    rig.cluster.hosts["h1"].refuse = APIError(500, "artifact fetch failed")
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 6})])
    await eventually(lambda: len(rig.live()) == 6, "6 web jobs")
    starts_on_h1 = [c for c in rig.starts() if c[1] == "h1"]
    assert len(starts_on_h1) == 2  # the first placement and the refused one; then h1 is skipped
    assert sorted(j["host_id"] for j in rig.live()) == ["h1", "h2", "h2", "h2", "h3", "h3"]

    rig.cluster.hosts["h1"].refuse = None
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 7})])
    await eventually(lambda: len(rig.live()) == 7, "7 web jobs")
    assert [c[1] for c in rig.starts()][-1] != "h1"  # still skipped: 10 s have not passed
    rig.clock.advance(10)
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 8})])
    await eventually(lambda: len(rig.live()) == 8, "8 web jobs")
    assert rig.starts()[-1][1] == "h1"


async def test_a_broken_job_stream_resyncs_and_a_job_gone_meanwhile_is_replaced(rig: Rig) -> None:
    await eventually(lambda: len(rig.live()) == 3, "3 web jobs")
    gone = next(j["id"] for j in rig.live() if j["host_id"] == "h2")
    del rig.cluster.hosts["h2"].jobs[gone]  # ended without the stream telling us, then a reconnect
    rig.cluster.break_stream("h2")
    await eventually(lambda: rig.controller.jobs().get(gone) == "down", "the vanished job reported down")
    (report,) = [r for r in rig.controller.reports if r.job_id == gone and r.state == "down"]
    assert report.body["host_error"] == JOB_VANISHED
    await eventually(lambda: len(rig.live()) == 3, "its replacement")


async def test_a_crash_missed_during_a_stream_outage_is_found_and_backed_off(rig: Rig) -> None:
    await eventually(lambda: len(rig.live()) == 3, "3 web jobs")
    victim = next(j["id"] for j in rig.live() if j["host_id"] == "h1")
    rig.cluster.break_stream(
        "h1", during=lambda: rig.cluster.set_state(victim, JobState.CRASHED, exit_status=3)
    )
    await eventually(lambda: rig.controller.jobs().get(victim) == "crashed", "the missed crash reported")
    await eventually(lambda: len(rig.live()) == 3, "its replacement")
    term = rig.scheduler.term
    assert term is not None
    record = term.state.backoff.get(KEY)
    assert record is not None
    assert record.crashes == 1


# -- formations ------------------------------------------------------------------------------------


async def test_formation_changes_scale_replace_and_stop(rig: Rig) -> None:
    await eventually(lambda: len(rig.live()) == 3, "3 web jobs")
    first = {j["id"]: j["created_at"] for j in rig.live()}
    rig.controller.set_formations([expanded("app1", "rel1", {"web": 1, "worker": 1})])
    await eventually(lambda: len(rig.live()) == 1 and len(rig.live("worker")) == 1, "scaled down")
    (kept,) = rig.live()
    assert kept["created_at"] == min(first.values())  # the newest were stopped

    rig.controller.set_formations([expanded("app1", "rel2", {"web": 2})])  # a deploy's end state
    await eventually(
        lambda: sorted(j["release_id"] for j in rig.cluster.live_jobs()) == ["rel2", "rel2"], "rel2 only"
    )
    rig.controller.set_formations([])  # the app deleted
    await eventually(lambda: rig.cluster.live_jobs() == [], "nothing left")


async def test_an_unreachable_controller_stops_nothing_and_crashes_are_still_handled(rig: Rig) -> None:
    await eventually(lambda: len(rig.live()) == 3, "3 web jobs")
    rig.controller.fail = APIError(0, "cannot reach the controller")
    reads = rig.controller.reads
    rig.controller.emit("formation")
    await eventually(lambda: rig.controller.reads > reads + 1, "failed re-reads")
    assert len(rig.live()) == 3
    victim = rig.live()[0]["id"]
    rig.cluster.set_state(victim, JobState.CRASHED, exit_status=2)
    await eventually(lambda: len(rig.live()) == 3, "the crash handled with the last formations")
    assert not [c for c in rig.cluster.calls if c[0] == "stop"]
    # reports queued meanwhile reach the controller once it answers again
    rig.controller.fail = None
    await eventually(lambda: rig.controller.jobs().get(victim) == "crashed", "the crash reported late")


async def test_nothing_is_done_before_the_formations_were_read_once() -> None:
    r = Rig()
    r.controller.fail = APIError(503, "database unavailable")
    orphan = {"id": "h1-x", "app_id": "app1", "release_id": "rel0", "type": "web", "state": "up"}
    r.cluster.add_job("h1", orphan)
    r.start()
    try:
        await eventually(lambda: r.controller.reads >= 3, "retried reads")
        assert r.cluster.calls == []
        r.controller.fail = None
        await eventually(lambda: ("stop", "h1", "h1-x") in r.cluster.calls, "the stale job stopped")
        await eventually(lambda: len(r.live()) == 3, "3 web jobs")
    finally:
        await r.stop()


async def test_every_job_state_reaches_the_controller(rig: Rig) -> None:
    await eventually(lambda: len(rig.live()) == 3, "3 web jobs")
    job_id = rig.live()[0]["id"]
    rig.cluster.set_state(job_id, JobState.UP)
    await eventually(lambda: rig.controller.jobs().get(job_id) == "up", "up reported")
    states = [r.state for r in rig.controller.reports if r.job_id == job_id]
    assert states == ["starting", "up"]
    await settle()
    assert {r.job_id for r in rig.controller.reports} == {j["id"] for j in rig.live()}
