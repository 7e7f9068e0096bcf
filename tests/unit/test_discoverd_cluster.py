"""discoverd's distributed behaviour with real pysyncobj nodes and the real HTTP API, in-process.

The same scenarios run again on real systemd hosts in tests/integration/test_discoverd.py; here
they are fast enough to cover the edge cases.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from flynn.common.errors import APIError
from flynn.discoverd.client import Client, WatchEvent
from flynn.discoverd.store import SETTLE_FOR
from tests.unit.discoverd_local import LocalCluster, free_port_pair

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    raft_port, http_port = free_port_pair()
    c = LocalCluster(tmp_path, raft_port, http_port, ttl=2.0)
    await c.start(3)
    try:
        yield c
    finally:
        await c.stop()


async def test_register_on_a_follower_is_seen_everywhere(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = next(ip for ip in cluster.nodes if ip != leader)
    async with Client(cluster.urls(follower)) as client:
        await client.add_service("web")
        await client.register_instance("web", "i1", "10.0.0.1:8080", meta={"v": "1"})
    for node in cluster.nodes.values():

        def replicated(n: Any = node) -> bool:
            return bool(n.store.dns_instances("web") == [("10.0.0.1", 8080)])

        await cluster.wait_for(replicated, 5, "replication")
        assert node.store.dns_leader("web") == ("10.0.0.1", 8080)
        assert node.store.dns_instances("nope") is None


async def test_raft_port_listens_on_the_cluster_address_only(cluster: LocalCluster) -> None:
    # the transport is pickle: it must not be reachable on any other address of the host
    _, writer = await asyncio.open_connection(cluster.ip(1), cluster.raft_port)
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(cluster.ip(9), cluster.raft_port)


async def test_leader_is_the_oldest_instance(cluster: LocalCluster) -> None:
    async with Client(cluster.urls()) as client:
        await client.add_service("web")
        for k in (1, 2, 3):
            await client.register_instance("web", f"i{k}", f"10.0.0.{k}:80")
        assert (await client.leader("web"))["id"] == "i1"  # type: ignore[index]
        await client.deregister("web", "i1")
        assert (await client.leader("web"))["id"] == "i2"  # type: ignore[index]


async def test_silent_instance_expires_and_heartbeats_keep_one_alive(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = next(ip for ip in cluster.nodes if ip != leader)
    async with Client(cluster.urls(follower)) as client:
        await client.add_service("web")
        await client.register_instance("web", "silent", "10.0.0.1:80")
        await client.register_instance("web", "alive", "10.0.0.2:80")

        async def beat() -> None:
            while True:
                await client.heartbeat("web", "alive")
                await asyncio.sleep(0.4)

        beating = asyncio.create_task(beat())
        try:
            node = cluster.nodes[follower]
            took = await cluster.wait_for(
                lambda: node.store.dns_instances("web") == [("10.0.0.2", 80)],
                10,
                "expiry of the silent instance",
            )
            assert took >= 1.0  # nothing is expired before its TTL (2 s, minus our own setup time)
            await asyncio.sleep(3)  # several TTLs: the heartbeating instance stays
            assert node.store.dns_instances("web") == [("10.0.0.2", 80)]
        finally:
            beating.cancel()


async def test_leader_kill_elects_a_new_leader_and_keeps_data(cluster: LocalCluster) -> None:
    async with Client(cluster.urls()) as client:
        await client.add_service("db")
        await client.set_meta("db", {"k": 1}, 0)
    old = cluster.leader()
    assert old is not None
    await cluster.nodes[old].stop()
    took = await cluster.wait_for(lambda: cluster.leader() not in (None, old), 5, "a new leader")
    assert took < 3.0
    survivors = [ip for ip in cluster.nodes if ip != old]
    async with Client(cluster.urls(*survivors)) as client:
        assert (await client.get_meta("db"))["data"] == {"k": 1}
        await client.add_service("after")  # writes continue with 2 of 3


def freeze_commit_index(node: Any, seconds: float | None = None) -> None:
    """Make a node tell the others no newer commit index than it has now (for ``seconds``, or
    for good): they keep receiving and acknowledging entries but never apply them."""
    obj = node.store.raft.obj
    frozen = obj.getStatus()["commit_idx"]
    until = None if seconds is None else time.monotonic() + seconds
    transport = obj._SyncObj__transport
    send = transport.send

    def send_frozen(to: Any, message: dict[str, Any]) -> Any:
        if message.get("type") == "append_entries" and (until is None or time.monotonic() < until):
            message = {**message, "commit_index": min(message["commit_index"], frozen)}
        return send(to, message)

    transport.send = send_frozen


async def test_write_acknowledged_just_before_the_leader_dies_is_read_after_failover(
    cluster: LocalCluster,
) -> None:
    """The followers hold the entries but were never told they committed; the leader dies. Once
    a new leader is known, both survivors must answer with the writes, not 404, even while the
    new leader's commit index reaches the other survivor late (they wait for the new term's
    marker; see Store.settled)."""
    old = cluster.leader()
    assert old is not None
    freeze_commit_index(cluster.nodes[old])
    async with Client(cluster.urls(old)) as client:
        await client.add_service("db")
        await client.set_meta("db", {"k": 1}, 0)
    survivors = [ip for ip in cluster.nodes if ip != old]
    async with aiohttp.ClientSession() as http:
        for ip in survivors:  # the precondition: not applied there
            async with http.get(f"{cluster.nodes[ip].url}/services/db/meta?stale") as resp:
                assert resp.status == 404, await resp.text()
        for ip in survivors:
            freeze_commit_index(cluster.nodes[ip], 1.0)
        await cluster.nodes[old].stop()
        await cluster.wait_for(lambda: cluster.leader() not in (None, old), 10, "a new leader")
        for ip in survivors:
            async with http.get(f"{cluster.nodes[ip].url}/services/db/meta") as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["data"] == {"k": 1}
                assert "Discoverd-Stale" not in resp.headers


async def test_a_node_that_cannot_settle_serves_its_last_state_marked_stale(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No leader in sight (majority lost, minority side): after one bounded wait per unsettled
    spell, reads are served from the local state with ``Discoverd-Stale: true``."""
    async with Client(cluster.urls()) as client:
        await client.add_service("db")
    ip = next(iter(cluster.nodes))
    node = cluster.nodes[ip]
    await cluster.wait_for(lambda: "db" in node.store.service_names(), 5, "db applied")
    monkeypatch.setattr(node.store, "settled", lambda: False)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        url = f"{node.url}/services"
        t0 = loop.time()
        async with http.get(url) as resp:
            assert resp.status == 200
            assert await resp.json() == ["db"]
            assert resp.headers.get("Discoverd-Stale") == "true"
        assert loop.time() - t0 >= SETTLE_FOR  # it did wait (a lower bound, not a timing claim)
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=SETTLE_FOR / 2)) as resp:
            assert resp.status == 200  # no second wait within the same unsettled spell
            assert resp.headers.get("Discoverd-Stale") == "true"
        async with http.get(url + "?stale") as resp:
            assert "Discoverd-Stale" not in resp.headers  # asked for: no wait, no mark
        monkeypatch.undo()
        async with http.get(url) as resp:
            assert "Discoverd-Stale" not in resp.headers
        await asyncio.sleep(0.5)  # settled for a while, nobody reading: the spell is over
        monkeypatch.setattr(node.store, "settled", lambda: False)
        t0 = loop.time()
        async with http.get(url) as resp:  # a new spell: a new wait
            assert resp.headers.get("Discoverd-Stale") == "true"
        assert loop.time() - t0 >= SETTLE_FOR / 2


async def test_a_leader_known_after_a_long_election_gets_its_own_wait(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An election slower than SETTLE_FOR (a loaded machine, split votes): once a leader is known
    again, reads wait for this node to catch up with it instead of being served stale because
    the spell that began with the old leader's loss has run out (CI saw that 404)."""
    node = next(iter(cluster.nodes.values()))
    store = node.store
    raft = store.node
    assert raft is not None
    settled = {"now": False}
    leader: dict[str, str | None] = {"now": None}
    monkeypatch.setattr(store, "settled", lambda: settled["now"])
    monkeypatch.setattr(raft, "leader", lambda: leader["now"])
    loop = asyncio.get_running_loop()
    await asyncio.sleep(SETTLE_FOR + 0.3)  # no leader for longer than the bound
    t0 = loop.time()
    assert await store.settle() is False  # the spell ran out: served stale, at once
    assert loop.time() - t0 < SETTLE_FOR / 2
    leader["now"] = "127.0.0.9"  # a leader at last; its term marker is still on its way
    waiting = asyncio.create_task(store.settle())
    await asyncio.sleep(0.3)
    assert not waiting.done()  # a fresh wait, not the spent one
    settled["now"] = True
    assert await asyncio.wait_for(waiting, 5) is True


async def test_watch_resumes_on_another_node_without_gaps(cluster: LocalCluster) -> None:
    ips = list(cluster.nodes)
    async with Client(cluster.urls(ips[0], ips[1])) as watcher, Client(cluster.urls(ips[2])) as writer:
        await writer.add_service("web")
        watch = watcher.watch("web")
        seen: list[WatchEvent] = []

        async def consume() -> None:
            async for ev in watch:
                seen.append(ev)

        task = asyncio.create_task(consume())
        await asyncio.wait_for(watch.connected.wait(), 5)
        for k in range(5):
            await writer.register_instance("web", f"i{k}", f"10.0.0.{k + 1}:80")
        await cluster.wait_for(lambda: sum(e.kind == "up" for e in seen) == 5, 5, "5 ups")
        await cluster.nodes[ips[0]].stop()  # the node the watcher is connected to goes away
        for k in range(5, 8):
            await writer.register_instance("web", f"i{k}", f"10.0.0.{k + 1}:80")
        await writer.deregister("web", "i0")
        await cluster.wait_for(
            lambda: any(e.kind == "down" for e in seen), 10, "the down event after reconnect"
        )
        task.cancel()
        ups = [e.instance["id"] for e in seen if e.kind == "up" and e.instance]
        assert ups == [f"i{k}" for k in range(8)]  # every up exactly once, in order
        assert [e.instance["id"] for e in seen if e.kind == "down" and e.instance] == ["i0"]
        assert watch.reconnects >= 1


async def test_proxy_promote_and_demote(cluster: LocalCluster) -> None:
    proxy_ip = cluster.ip(4)
    proxy = await cluster.start_node(proxy_ip)  # not in the bootstrap list: a proxy
    assert proxy.store.raft.role == "proxy"
    async with Client(cluster.urls(proxy_ip)) as client:
        await client.add_service("web")  # a write through a proxy
        await client.register_instance("web", "a", "10.0.0.1:80")
        await cluster.wait_for(
            lambda: proxy.store.dns_instances("web") == [("10.0.0.1", 80)], 5, "proxy copy"
        )
        status = await client.raft_status()
        assert status["role"] == "proxy"
        assert status["peers"] == cluster.bootstrap

        out = await client.promote(proxy_ip)
        assert out["peers"] == sorted([*cluster.bootstrap, proxy_ip])
        await cluster.wait_for(lambda: proxy.store.raft.role == "peer", 10, "the proxy to become a peer")
        await cluster.wait_for(
            lambda: proxy.store.dns_instances("web") == [("10.0.0.1", 80)], 10, "state kept"
        )

        victim = next(ip for ip in cluster.bootstrap if ip != cluster.leader())
        out = await client.demote(victim)
        assert victim not in out["peers"]
        assert len(out["peers"]) == 3
        demoted = cluster.nodes[victim]
        await cluster.wait_for(
            lambda: demoted.store.raft.role == "proxy", 10, "the demoted peer to become a proxy"
        )
        await client.register_instance("web", "b", "10.0.0.2:80")
        await cluster.wait_for(
            lambda: len(demoted.store.dns_instances("web") or []) == 2, 10, "demoted node follows"
        )


async def test_demote_leader_hands_over_first(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    assert leader is not None
    async with Client(cluster.urls()) as client:
        out = await client.demote(leader)
    assert leader not in out["peers"]
    await cluster.wait_for(lambda: cluster.leader() not in (None, leader), 10, "another leader")
    await cluster.wait_for(
        lambda: cluster.nodes[leader].store.raft.role == "proxy", 10, "old leader as proxy"
    )


async def test_force_demote_of_a_dead_peer(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    dead = next(ip for ip in cluster.nodes if ip != leader)
    await cluster.nodes[dead].stop()
    alive = [ip for ip in cluster.nodes if ip != dead]
    async with Client(cluster.urls(*alive), retry_for=1) as client:
        with pytest.raises(APIError, match="use --force") as info:
            await client.demote(dead)
        assert info.value.status == 409
        out = await client.demote(dead, force=True)
        assert out["peers"] == sorted(alive)
        # fault tolerance is back: 2 peers, and a write still commits
        await client.add_service("after-force")
    # the dead peer comes back: it finds it is no longer a member and becomes a proxy
    back = await cluster.start_node(dead)
    await cluster.wait_for(
        lambda: back.store.raft.role == "proxy", 15, "the returning node to become a proxy"
    )


async def test_bad_input_gets_clear_errors(cluster: LocalCluster) -> None:
    url = cluster.urls()[0]
    async with aiohttp.ClientSession() as s:

        async def call(method: str, path: str, **kw: object) -> tuple[int, dict[str, object]]:
            async with s.request(method, url + path, **kw) as r:  # type: ignore[arg-type]
                return r.status, await r.json()

        assert (
            await call("PUT", "/services/web", data=b"{oops", headers={"Content-Type": "application/json"})
        )[0] == 400
        status, body = await call("PUT", "/services/Bad_Name")
        assert status == 400
        assert "invalid service name" in str(body["error"])
        status, body = await call("PUT", "/services/ghost/instances/x", json={"addr": "10.0.0.1:80"})
        assert status == 404
        assert "unknown service" in str(body["error"])
        await call("PUT", "/services/web")
        status, _ = await call("PUT", "/services/web/instances/x", json={"addr": "nope"})
        assert status == 400
        status, _ = await call("PUT", "/services/web/meta", json={"data": "x" * 70_000, "index": 0})
        assert status == 413
        status, _ = await call("PUT", "/services/web/meta", json={"data": 1, "index": 0})
        assert status == 200
        status, body = await call("PUT", "/services/web/meta", json={"data": 2, "index": 0})
        assert status == 409
        status, _ = await call(
            "GET", "/services/web/instances", headers={"Last-Event-ID": "x:y", "Accept": "text/event-stream"}
        )
        assert status == 400
        status, _ = await call("PUT", "/raft/peers/not-an-ip")
        assert status == 400
        status, _ = await call("POST", "/raft/heartbeats", json={"ages": [["web", "x", "soon"]]})
        assert status == 400
        assert (await call("GET", "/nope"))[0] == 404
        # nothing of the above changed the state
        assert cluster.nodes[cluster.ip(1)].store.service_names() == ["web"]
