"""A restarted flynn-host recovers its jobs from the records and systemd's units."""

from __future__ import annotations

import asyncio
from pathlib import Path

from flynn.host.jobs.spec import parse_job
from flynn.host.jobs.state import JobState
from tests.unit.host_fakes import FakeRegistrar, FakeSystemd, make_manager, wait_state


async def test_jobs_survive_a_daemon_restart(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    events: list[tuple[str, str]] = []
    systemd = FakeSystemd(events)
    from flynn.host.jobs.ports import PortAllocator

    first = make_manager(
        tmp_path, backend=systemd, events=events, ports=PortAllocator(port, port + 3, is_free=lambda _p: True)
    )
    try:
        for name, extra in (("keep", {"service": "app-web"}), ("gone", {}), ("dies", {})):
            await first.create(parse_job({"args": ["sleep", "100"], **extra}, "host1", f"host1-{name}"))
            await wait_state(first, f"host1-{name}", "up")
        await first.close()  # the daemon stops; units keep running
        assert ("release", "host1-keep") in events
        assert ("deregister", "host1-keep") not in events

        # while no daemon runs: one unit vanished (exited 0, collected), one crashed, one orphan appeared
        del systemd.units["flynn-job-host1-gone.service"]
        systemd.units["flynn-job-host1-dies.service"].update(
            ActiveState="failed", SubState="failed", ExecMainCode=1, ExecMainStatus=4, Result="exit-code"
        )
        systemd.units["flynn-job-host1-orphan.service"] = {"ActiveState": "active", "SubState": "running"}

        events.clear()
        registrar = FakeRegistrar(events)
        second = make_manager(
            tmp_path,
            backend=systemd,
            registrar=registrar,
            events=events,
            ports=PortAllocator(port, port + 3, is_free=lambda _p: True),
        )
        await second.recover()
        keep = second.get("host1-keep")
        assert keep is not None
        assert keep.state is JobState.UP
        assert keep.port == port
        for _ in range(100):
            if "host1-keep" in registrar.registered:
                break
            await asyncio.sleep(0.01)
        assert registrar.registered["host1-keep"][1] == f"10.0.0.1:{port}"
        gone = second.get("host1-gone")
        assert gone is not None
        assert gone.state is JobState.DOWN
        assert gone.error == "ended while flynn-host was not running"
        dies = second.get("host1-dies")
        assert dies is not None
        assert dies.state is JobState.CRASHED
        assert dies.exit_status == 4
        assert ("stop", "flynn-job-host1-orphan.service") in events
        # the kept job's port is still held: a new job gets another one
        new = await second.create(parse_job({"args": ["sleep", "1"]}, "host1", "host1-new"))
        assert new.port != port
        # and it is still followed from unit changes
        systemd.exit("flynn-job-host1-keep.service", 1)
        await wait_state(second, "host1-keep", "crashed")
        await second.close()
    finally:
        server.close()


async def test_a_job_whose_unit_never_started_fails_on_recovery(tmp_path: Path) -> None:
    events: list[tuple[str, str]] = []
    systemd = FakeSystemd(events)
    first = make_manager(tmp_path, backend=systemd, events=events, attach_wait=30)
    await first.create(parse_job({"args": ["sleep", "1"], "attach": True}, "host1", "host1-att"))
    await first.close()
    second = make_manager(tmp_path, backend=systemd, events=events)
    await second.recover()
    job = second.get("host1-att")
    assert job is not None
    assert job.state is JobState.FAILED
    assert job.error == "flynn-host restarted before the job's unit started"


async def test_a_stopping_job_is_stopped_again_after_a_restart(tmp_path: Path) -> None:
    events: list[tuple[str, str]] = []
    systemd = FakeSystemd(events)
    first = make_manager(tmp_path, backend=systemd, events=events)
    await first.create(parse_job({"args": ["sleep", "100"]}, "host1", "host1-s"))
    await wait_state(first, "host1-s", "up")
    job = first.get("host1-s")
    assert job is not None
    job.stop_requested = True
    job.transition(JobState.STOPPING)
    first.store.save(job)  # the daemon died between recording "stopping" and systemd's answer
    await first.close()
    events.clear()
    second = make_manager(tmp_path, backend=systemd, events=events)
    await second.recover()
    assert ("stop", "flynn-job-host1-s.service") in events
    await wait_state(second, "host1-s", "down")


async def test_history_is_pruned_to_the_newest_finished(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    manager.store.keep_finished = 3
    for i in range(5):
        await manager.create(parse_job({"args": ["no-such-cmd-x"]}, "host1", f"host1-j{i}"))
        await wait_state(manager, f"host1-j{i}", "failed")
        await asyncio.sleep(0.002)  # distinct finished_at
    kept = sorted(p.stem for p in manager.store.dir.glob("*.json"))
    assert kept == ["host1-j2", "host1-j3", "host1-j4"]
    assert sorted(j.id for j in manager.listing(include_finished=True)) == kept


async def test_a_corrupt_record_is_moved_aside(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    manager.store.dir.mkdir(parents=True)
    (manager.store.dir / "host1-bad.json").write_text("{not json")
    await manager.recover()
    assert manager.listing(include_finished=True) == []
    assert (manager.store.dir / "host1-bad.json.corrupt").exists()
