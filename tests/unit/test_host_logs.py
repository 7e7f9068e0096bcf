"""``GET /host/logs`` (flynn.host.logs) over real HTTP, on a journal in memory (journal_fake), and
its client, flynn.host.logstream (reconnects resume by cursor)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from flynn.host import logs
from flynn.host.client import HostClient
from flynn.host.logs import HostLogs, JobIdentity, parse_query, to_line
from flynn.host.logstream import LIVE, LogEvent
from tests.unit.journal_fake import FakeJournal

RECORDS = {
    "host1-j1": JobIdentity("app1", "one", "rel1", "web"),
    "host1-j2": JobIdentity("app2", "two", "rel2", "worker"),
}


def lookup(job_id: str) -> JobIdentity | None:
    return RECORDS.get(job_id)


async def serve(journal: FakeJournal) -> tuple[web.AppRunner, str]:
    app = web.Application()
    logs.add_routes(app, HostLogs("host1", lookup, journal.reader))
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def host() -> AsyncIterator[tuple[FakeJournal, str]]:
    journal = FakeJournal()
    runner, url = await serve(journal)
    yield journal, url
    await runner.cleanup()


async def sse(url: str, params: dict[str, str], *, until: int | None = None) -> list[tuple[str, Any]]:
    """(event, data) of a /host/logs stream; stops after ``until`` line events (or at its end)."""
    out: list[tuple[str, Any]] = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/host/logs", params=params, timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == "text/event-stream"
        event, data = "", ""
        async for raw in resp.content:
            text = raw.decode().rstrip("\n")
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: "):
                data = text[6:]
            elif text == "" and event:
                out.append((event, json.loads(data)))
                event = ""
                if until is not None and sum(1 for e, _ in out if e == "line") >= until:
                    return out
    return out


def msgs(events: list[tuple[str, Any]]) -> list[str]:
    return [d["msg"] if e == "line" else "LIVE" for e, d in events]


# -- entries to lines ------------------------------------------------------------------------------


def raw(**fields: Any) -> dict[str, Any]:
    return {"__CURSOR": "c1", "__REALTIME": 1_000_000, **fields}


def test_a_job_line_gets_its_identity_from_the_unit_and_the_hosts_record() -> None:
    entry = raw(
        _SYSTEMD_UNIT="flynn-job-host1-j1.service",
        _TRANSPORT="stdout",
        PRIORITY="3",
        MESSAGE="boom",
        FLYNN_APP_ID="app2",  # forged through native logging: the host's record wins
    )
    line = to_line(entry, "host1", lookup)
    assert line == {
        "cursor": "c1",
        "ts": 1_000_000,
        "host_id": "host1",
        "system": False,
        "stream": "stderr",
        "priority": 3,
        "msg": "boom",
        "app_id": "app1",
        "app_name": "one",
        "job_id": "host1-j1",
        "type": "web",
        "release_id": "rel1",
    }


def test_streams_and_unknown_jobs() -> None:
    unit = "flynn-job-host1-j1.service"
    out = to_line(raw(_SYSTEMD_UNIT=unit, _TRANSPORT="stdout", PRIORITY="6"), "h", lookup)
    assert out is not None
    assert out["stream"] == "stdout"
    own = to_line(raw(_SYSTEMD_UNIT=unit, _TRANSPORT="syslog", PRIORITY="3"), "h", lookup)
    assert own is not None
    assert own["stream"] == "syslog"
    gone = to_line(
        raw(_SYSTEMD_UNIT="flynn-job-host1-old.service", FLYNN_APP_ID="a9", FLYNN_PROCESS_TYPE="web"),
        "h",
        lookup,
    )
    assert gone is not None
    assert (gone["app_id"], gone["type"]) == ("a9", "web")


def test_platform_units_and_others() -> None:
    ctl = raw(_SYSTEMD_UNIT="flynn-controller.service", _TRANSPORT="journal", PRIORITY="4")
    line = to_line(ctl, "h1", lookup)
    assert line is not None
    assert (line["system"], line["app_name"], line["job_id"], line["type"]) == (
        True,
        "controller",
        "h1-controller",
        "service",
    )
    assert to_line(raw(_SYSTEMD_UNIT="cron.service"), "h1", lookup) is None
    assert to_line(raw(), "h1", lookup) is None


@pytest.mark.parametrize(
    "query",
    [
        {"lines": "x"},
        {"lines": "100001"},
        {"app_id": "bad id"},
        {"job_id": "nohost"},
        {"follow": "maybe"},
        {"cursor": "a b"},
        {"cursor": "s=fake;q=1", "lines": "3"},
        {"platform": "true", "app_id": "app1"},
    ],
)
def test_bad_queries(query: dict[str, str]) -> None:
    with pytest.raises(logs.BadQuery):
        parse_query(query)


# -- over HTTP -------------------------------------------------------------------------------------


async def test_bad_input_is_a_400_json(host: tuple[FakeJournal, str]) -> None:
    _, url = host
    async with aiohttp.ClientSession() as s, s.get(url + "/host/logs", params={"lines": "-1"}) as resp:
        assert resp.status == 400
        body = await resp.json()
        assert body["code"] == 400
        assert "lines" in body["error"]
    async with aiohttp.ClientSession() as s, s.get(url + "/host/logs", params={"cursor": "s=other"}) as resp:
        assert resp.status == 400  # the journal cannot seek to it
        assert "cannot read the journal" in (await resp.json())["error"]


async def test_last_lines_then_live_then_follow(host: tuple[FakeJournal, str]) -> None:
    journal, url = host
    for i in range(5):
        journal.job_line("host1-j1", f"l{i}")
    journal.append(_SYSTEMD_UNIT="cron.service", MESSAGE="not a job")
    got = await sse(url, {"lines": "3"})
    assert msgs(got) == ["l2", "l3", "l4", "LIVE"]
    assert got[-1][1]["cursor"] == journal.entries[-2]["__CURSOR"]  # following continues after l4

    async def later() -> None:
        await asyncio.sleep(0.2)
        journal.job_line("host1-j1", "new", prio=3)

    task = asyncio.ensure_future(later())
    got = await sse(url, {"lines": "1", "follow": "true"}, until=2)
    await task
    assert msgs(got) == ["l4", "LIVE", "new"]
    assert got[-1][1]["stream"] == "stderr"


async def test_per_app_backlog_merges_apps_in_time_order(host: tuple[FakeJournal, str]) -> None:
    journal, url = host
    for i in range(4):
        journal.job_line("host1-j1", f"a{i}", app="app1")
        journal.job_line("host1-j2", f"b{i}", app="app2")
    journal.append(_SYSTEMD_UNIT="flynn-controller.service", _SYSTEMD_SLICE="flynn.slice", MESSAGE="ctl")
    got = await sse(url, {"lines": "2", "per_app": "true"})
    assert msgs(got) == ["a2", "b2", "a3", "b3", "LIVE"]  # the last 2 of each, not the last 4
    got = await sse(url, {"lines": "1", "per_app": "true", "platform": "true"})
    assert msgs(got) == ["a3", "b3", "ctl", "LIVE"]
    assert got[2][1]["system"] is True
    got = await sse(url, {"lines": "10", "app_id": "app2"})
    assert msgs(got) == ["b0", "b1", "b2", "b3", "LIVE"]


async def test_filters_and_forged_fields(host: tuple[FakeJournal, str]) -> None:
    journal, url = host
    journal.job_line("host1-j1", "mine", app="app1")
    journal.job_line("host1-j2", "forged", app="app1", _TRANSPORT="journal")  # app2's job claims app1
    journal.job_line("host1-j2", "theirs", app="app2")
    assert msgs(await sse(url, {"lines": "10", "app_id": "app1"})) == ["mine", "LIVE"]
    assert msgs(await sse(url, {"lines": "10", "job_id": "host1-j2"})) == ["forged", "theirs", "LIVE"]


async def test_cursor_resumes_exactly_after_the_entry(host: tuple[FakeJournal, str]) -> None:
    journal, url = host
    cursors = [journal.job_line("host1-j1", f"l{i}") for i in range(4)]
    assert msgs(await sse(url, {"cursor": cursors[1]})) == ["LIVE", "l2", "l3"]
    journal.vacuum(cursors[1])  # its entry is gone: the next one is new, not skipped
    assert msgs(await sse(url, {"cursor": cursors[1]})) == ["LIVE", "l2", "l3"]
    assert msgs(await sse(url, {"cursor": cursors[3]})) == ["LIVE"]


async def test_an_empty_journal(host: tuple[FakeJournal, str]) -> None:
    _, url = host
    got = await sse(url, {"lines": "10"})
    assert got == [("live", {"cursor": None})]


async def test_keepalive_comments(host: tuple[FakeJournal, str], monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = host
    monkeypatch.setattr(logs, "KEEPALIVE", 0.05)
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/host/logs", params={"lines": "0", "follow": "true"}) as resp,
    ):
        seen = b""
        while b": keepalive" not in seen:
            seen += await asyncio.wait_for(resp.content.readline(), 2)


# -- the client: reconnects resume by cursor ---------------------------------------------------------


async def test_the_stream_resumes_after_a_lost_connection() -> None:
    journal = FakeJournal()
    for i in range(3):
        journal.job_line("host1-j1", f"old{i}")
    runner, url = await serve(journal)
    port = int(url.rsplit(":", 1)[1])
    client = HostClient(url, timeout=2)
    stream = client.follow_logs(lines=2, per_app=True)
    events: list[LogEvent] = []
    it = aiter(stream)
    try:
        for _ in range(3):
            events.append(await asyncio.wait_for(anext(it), 5))
        assert [e.line["msg"] if e.line else "LIVE" for e in events] == ["old1", "old2", "LIVE"]
        assert events[2] is LIVE
        assert [e.live for e in events] == [False, False, True]
        # the host goes away; lines written meanwhile come once it is back, live, none twice
        await runner.cleanup()
        journal.job_line("host1-j1", "during1")
        journal.job_line("host1-j1", "during2")
        app = web.Application()
        logs.add_routes(app, HostLogs("host1", lookup, journal.reader))
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        more = [await asyncio.wait_for(anext(it), 10) for _ in range(2)]
        assert [(e.line or {}).get("msg") for e in more] == ["during1", "during2"]
        assert all(e.live for e in more)
        assert stream.reconnects >= 1
        journal.job_line("host1-j1", "after")
        last = await asyncio.wait_for(anext(it), 5)
        assert last.line is not None
        assert last.line["msg"] == "after"
    finally:
        await it.aclose()  # type: ignore[attr-defined]
        await client.close()
        await runner.cleanup()


def test_sse_blocks_are_parsed_whatever_the_chunking() -> None:
    from flynn.host.logstream import parse_block

    msg = parse_block(b'id: c1\nevent: line\ndata: {"a":\ndata: 1}')
    assert msg is not None
    assert (msg.id, msg.event, msg.data) == ("c1", "line", ['{"a":', "1}"])
    assert parse_block(b": keepalive") is None
    crlf = parse_block(b"event: live\r\ndata: {}\r")
    assert crlf is not None
    assert (crlf.event, crlf.data) == ("live", ["{}"])


async def test_a_stream_cut_anywhere_parses_the_same() -> None:
    from flynn.host.logstream import sse_blocks

    body = b"".join(f'id: c{i}\nevent: line\ndata: {{"n": {i}}}\n\n'.encode() for i in range(50))
    body += b": keepalive\n\n"

    class Chunks:
        def __init__(self, size: int) -> None:
            self.size = size

        async def iter_any(self) -> AsyncIterator[bytes]:
            for i in range(0, len(body), self.size):
                yield body[i : i + self.size]

    class Resp:
        def __init__(self, size: int) -> None:
            self.content = Chunks(size)

    for size in (1, 7, 64, len(body)):
        got = [json.loads(m.data[0])["n"] async for m in sse_blocks(Resp(size))]  # type: ignore[arg-type]
        assert got == list(range(50)), size
