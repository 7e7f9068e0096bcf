"""flynn.host.client against the real jobs API served over HTTP (fake systemd behind it)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from flynn.common.errors import APIError
from flynn.host.api import make_app
from flynn.host.client import HostClient, JobExistsError, SyncHostClient, host_of_job, host_url
from flynn.host.identity import HostIdentity
from tests.unit.host_fakes import FakeLogs, FakeSystemd, make_manager, wait_state


@pytest.fixture
async def served(aiohttp_server: Any, tmp_path: Path) -> Any:
    systemd = FakeSystemd()
    manager = make_manager(tmp_path, backend=systemd)
    logs = FakeLogs()
    server = await aiohttp_server(
        make_app(HostIdentity("host1", 1.0), build_file=tmp_path / "B", jobs=manager, logs=logs)
    )
    return str(server.make_url("")).rstrip("/"), manager, systemd, logs


def test_host_url_and_host_of_job() -> None:
    assert host_url("10.0.0.1") == "http://10.0.0.1:1113"
    assert host_url("10.0.0.1:1113") == "http://10.0.0.1:1113"
    assert host_url("[fd00::1]:1113") == "http://[fd00::1]:1113"
    assert host_url("fd00::1") == "http://[fd00::1]:1113"
    assert host_url("http://h:1/") == "http://h:1"
    assert host_of_job("host1-abc-def") == "host1"
    with pytest.raises(ValueError, match="HOSTID-ID"):
        host_of_job("nodash")


async def test_async_client_start_get_list_signal_stop(served: Any) -> None:
    url, manager, systemd, _ = served
    async with HostClient(url) as client:
        assert (await client.status())["id"] == "host1"
        job = await client.start_job({"id": "host1-a", "args": ["sleep", "100"]})
        assert job["state"] == "starting"
        await wait_state(manager, "host1-a", "up")
        assert (await client.get_job("host1-a"))["state"] == "up"
        assert [j["id"] for j in await client.list_jobs()] == ["host1-a"]
        with pytest.raises(JobExistsError) as exists:
            await client.start_job({"id": "host1-a", "args": ["x"]})
        assert exists.value.status == 409
        assert exists.value.job["id"] == "host1-a"
        await client.signal_job("host1-a", "SIGHUP")
        assert systemd.kills[-1][1] == 1
        assert (await client.stop_job("host1-a"))["state"] == "stopping"
        await wait_state(manager, "host1-a", "down")
        assert await client.list_jobs() == []
        assert [j["id"] for j in await client.list_jobs(all=True)] == ["host1-a"]
        with pytest.raises(APIError) as missing:
            await client.get_job("host1-zzz")
        assert missing.value.status == 404
        assert "no job" in missing.value.message
        with pytest.raises(APIError) as bad:
            await client.start_job({"id": "host1-b", "args": []})
        assert bad.value.status == 400
        assert not isinstance(bad.value, JobExistsError)


async def test_unreachable_host_is_status_0() -> None:
    async with HostClient("http://127.0.0.1:1", timeout=2) as client:
        with pytest.raises(APIError) as err:
            await client.status()
    assert err.value.status == 0
    assert "cannot reach" in err.value.message


async def test_watch_reconnects_and_reports_jobs_that_ended_meanwhile(served: Any) -> None:
    url, manager, systemd, _ = served
    async with HostClient(url) as client:
        await client.start_job({"id": "host1-a", "args": ["sleep", "100"]})
        await wait_state(manager, "host1-a", "up")
        watch = client.watch_jobs()
        seen: list[tuple[str, str]] = []

        async def consume() -> None:
            async for job in watch:
                seen.append((job["id"], job["state"]))
                if ("host1-b", "up") in seen and ("host1-a", "crashed") in seen:
                    return

        task = asyncio.get_running_loop().create_task(consume())
        async with asyncio.timeout(5):
            await watch.connected.wait()
        assert seen == [("host1-a", "up")]
        manager.hub.close()  # every stream ends: the watch reconnects
        systemd.exit("flynn-job-host1-a.service", 2)  # ...and this happens while it is away
        await wait_state(manager, "host1-a", "crashed")
        await client.start_job({"id": "host1-b", "args": ["sleep", "100"]})
        async with asyncio.timeout(5):
            await task
        assert watch.reconnects == 1
        assert seen[0] == ("host1-a", "up")


async def test_async_log(served: Any) -> None:
    url, _manager, _, logs = served
    async with HostClient(url) as client:
        await client.start_job({"id": "host1-l", "args": ["sleep", "100"]})
        logs.lines_by_job["host1-l"] = ["a", "b", "c"]
        assert [line async for line in client.job_log("host1-l", lines=2)] == ["b", "c"]
        with pytest.raises(APIError):
            async for _ in client.job_log("host1-none"):
                pass


async def test_sync_client(served: Any) -> None:
    url, manager, _, logs = served

    def use() -> None:
        client = SyncHostClient(url)
        job = client.start_job({"id": "host1-s", "args": ["sleep", "100"]})
        assert job["port"] is not None
        with pytest.raises(JobExistsError) as exists:
            client.start_job({"id": "host1-s", "args": ["sleep", "100"]})
        assert exists.value.job["id"] == "host1-s"
        with pytest.raises(APIError) as foreign:
            client.start_job({"id": "host9-s", "args": ["sleep", "100"]})
        assert foreign.value.status == 409
        assert not isinstance(foreign.value, JobExistsError)
        assert client.get_job("host1-s")["id"] == "host1-s"
        logs.lines_by_job["host1-s"] = ["x", "y"]
        assert list(client.job_log("host1-s")) == ["x", "y"]
        assert list(client.job_log("host1-s", lines=1)) == ["y"]
        with pytest.raises(APIError) as none:
            list(client.job_log("host1-none"))
        assert none.value.status == 404
        assert client.stop_job("host1-s")["state"] in ("stopping", "down")

    await asyncio.to_thread(use)
    await wait_state(manager, "host1-s", "down")
    assert [j["id"] for j in await asyncio.to_thread(SyncHostClient(url).list_jobs, True)] == ["host1-s"]
