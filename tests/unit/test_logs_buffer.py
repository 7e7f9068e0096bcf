"""The aggregator's buffers (flynn.logs.buffer) and lines (flynn.logs.model): the ring per app,
the merge across hosts in time order with each host's journal order kept, subscriptions."""

from __future__ import annotations

import random

import pytest

from flynn.logs import buffer
from flynn.logs.buffer import AppBuffer, Buffers
from flynn.logs.model import BadLine, Line, timestamp


def line(ts: int, host: str = "host1", job: str = "host1-j1", msg: str = "", **kw: object) -> Line:
    fields: dict[str, object] = {
        "ts": ts,
        "host_id": host,
        "app_id": "app1",
        "app_name": "one",
        "job_id": job,
        "type": "web",
        "release_id": None,
        "stream": "stdout",
        "priority": 6,
        "msg": msg or f"{host}@{ts}",
    }
    fields.update(kw)
    return Line(**fields)  # type: ignore[arg-type]


def test_the_ring_keeps_the_newest_lines() -> None:
    buf = Buffers(capacity=100)
    for i in range(250):
        buf.add(line(1000 + i, msg=str(i)))
    kept = buf.last("app1")
    assert [x.msg for x in kept] == [str(i) for i in range(150, 250)]
    assert [x.msg for x in buf.last("app1", 3)] == ["247", "248", "249"]
    assert buf.last("app1", 0) == []
    assert buf.last("nope") == []
    assert buf.total() == 100


def test_hosts_merge_in_time_order_whatever_the_arrival_order() -> None:
    buf = Buffers()
    a = [line(t, "host1", "host1-a") for t in range(0, 3000, 3)]
    b = [line(t, "host2", "host2-b") for t in range(1, 3000, 3)]
    c = [line(t, "host3", "host3-c") for t in range(2, 3000, 3)]
    # each host's lines come in order, but the hosts interleave at random (and in bursts)
    rng = random.Random(7)
    queues = [list(a), list(b), list(c)]
    while any(queues):
        q = rng.choice([q for q in queues if q])
        for _ in range(rng.randint(1, 50)):
            if q:
                buf.add(q.pop(0))
    assert [x.ts for x in buf.last("app1")] == list(range(3000))


def test_a_hosts_own_order_is_kept_when_its_clock_steps_back() -> None:
    buf = Buffers()
    buf.add(line(100, "host1", msg="first"))
    buf.add(line(200, "host1", msg="second"))
    buf.add(line(150, "host1", msg="third"))  # the clock stepped back: still after "second"
    buf.add(line(160, "host2", msg="other"))
    assert [x.msg for x in buf.last("app1")] == ["first", "other", "second", "third"]


def test_a_late_old_line_does_not_push_out_newer_ones() -> None:
    ring = AppBuffer(capacity=3)
    for i, t in enumerate((10, 20, 30)):
        assert ring.insert((t, i, line(t)))
    assert not ring.insert((5, 9, line(5)))  # older than all of a full ring: not kept
    assert ring.insert((25, 10, line(25)))
    assert [e[0] for e in ring.entries] == [20, 25, 30]


def test_filters_take_the_last_n_matching() -> None:
    buf = Buffers()
    for i in range(20):
        buf.add(line(i, job="host1-a" if i % 2 else "host1-b", type="web" if i % 4 < 2 else "worker"))
    odd = buf.last("app1", 3, lambda x: x.job_id == "host1-a")
    assert [x.ts for x in odd] == [15, 17, 19]
    workers = buf.last("app1", None, lambda x: x.type == "worker")
    assert [x.ts for x in workers] == [i for i in range(20) if i % 4 >= 2]


def test_platform_lines_are_kept_under_their_service_and_orphans_nowhere() -> None:
    buf = Buffers()
    assert buf.add(line(1, app_id=None, app_name="controller", system=True))
    assert not buf.add(line(2, app_id=None, app_name=None))
    assert [x.ts for x in buf.last("controller")] == [1]


async def test_subscribers_get_live_lines_only_and_a_slow_one_is_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buf = Buffers()
    sub = buf.subscribe("app1")
    other = buf.subscribe("app2")
    buf.add(line(1), live=False)  # a host's backlog: history, not news
    buf.add(line(2))
    assert sub.queue.qsize() == 1
    assert (await sub.queue.get()) == line(2)
    assert other.queue.empty()
    monkeypatch.setattr(buffer, "QUEUE_LIMIT", 3)
    slow = buf.subscribe("app1")
    for t in range(10, 20):
        buf.add(line(t))
    got = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
    assert got[-1] is None  # ended rather than kept growing
    assert len(got) == 4
    sub.close()
    slow.close()
    other.close()
    assert buf.subs == {}


def test_lines_from_hosts_are_checked() -> None:
    good = {
        "ts": 5,
        "host_id": "h1",
        "job_id": "h1-j",
        "app_id": "a",
        "msg": "hi",
        "stream": "stderr",
        "priority": 3,
    }
    parsed = Line.from_host(good, "h1")
    assert (parsed.ts, parsed.stream, parsed.priority, parsed.key) == (5, "stderr", 3, "a")
    for bad in (
        {**good, "host_id": "h2"},  # a host speaks for itself only
        {**good, "ts": "5"},
        {**good, "ts": True},
        {**good, "stream": "bogus"},
        {**good, "priority": 9},
        {**good, "msg": 1},
        {**good, "job_id": None},
        {**good, "app_id": "x" * 300},
        "not an object",
    ):
        with pytest.raises(BadLine):
            Line.from_host(bad, "h1")


def test_timestamps_are_rfc3339_with_microseconds() -> None:
    assert timestamp(1_700_000_000_123_456) == "2023-11-14T22:13:20.123456Z"
    assert line(1_700_000_000_000_001).to_json()["timestamp"] == "2023-11-14T22:13:20.000001Z"
