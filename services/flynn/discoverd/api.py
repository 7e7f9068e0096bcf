"""discoverd's HTTP API on :1111 (aiohttp). See docs/discoverd.md for the routes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import web

from flynn.common.web import error_middleware, json_error, read_json
from flynn.discoverd import validate
from flynn.discoverd.membership import Membership
from flynn.discoverd.raft import Unavailable
from flynn.discoverd.state import CommandError, Event, State
from flynn.discoverd.store import RESYNC, EventId, Store, Subscription

log = logging.getLogger(__name__)

STORE: web.AppKey[Store] = web.AppKey("store", Store)
MEMBERSHIP: web.AppKey[Membership] = web.AppKey("membership", Membership)
KEEPALIVE = 15.0
MAX_HEARTBEAT_BATCH = 100_000


@web.middleware
async def domain_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except validate.ValidationError as exc:
        return json_error(exc.status, str(exc))
    except CommandError as exc:
        return json_error(exc.status, exc.message)
    except Unavailable as exc:
        return json_error(503, str(exc))


@web.middleware
async def consistent_reads(request: web.Request, handler: Any) -> web.StreamResponse:
    """Registry requests wait until this node has applied what earlier leaders committed.

    Without it, a node that just saw its leader die could answer 404 for a service whose
    creation was acknowledged (committed, not yet applied here). ``?stale`` skips the wait; a
    node that cannot settle (no leader: majority lost, minority side) serves its last state and
    says so in ``Discoverd-Stale: true``."""
    path = request.path
    if not (path.startswith("/services") or path == "/events") or "stale" in request.query:
        settled = True
    else:
        settled = await request.app[STORE].settle()
    response: web.StreamResponse = await handler(request)
    if not settled and not response.prepared:
        response.headers["Discoverd-Stale"] = "true"
    return response


def _service(request: web.Request) -> str:
    return validate.service_name(request.match_info["service"])


def _wants_stream(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


# -- services ------------------------------------------------------------------------------------


async def list_services(request: web.Request) -> web.Response:
    return web.json_response(request.app[STORE].service_names())


async def put_service(request: web.Request) -> web.Response:
    name = _service(request)
    body = await read_json(request) if request.can_read_body else {}
    if not isinstance(body, dict):
        raise validate.ValidationError("service config must be a JSON object")
    unknown = set(body) - {"leader_type"}
    if unknown:
        raise validate.ValidationError(f"unknown service field(s): {', '.join(sorted(unknown))}")
    leader_type = body.get("leader_type", "oldest")
    result = await request.app[STORE].propose(
        {"op": "add_service", "service": name, "leader_type": leader_type}
    )
    return web.json_response(request.app[STORE].service_info(name), status=201 if result["created"] else 200)


async def get_service(request: web.Request) -> web.Response:
    return web.json_response(request.app[STORE].service_info(_service(request)))


async def delete_service(request: web.Request) -> web.Response:
    name = _service(request)
    await request.app[STORE].propose({"op": "remove_service", "service": name})
    return web.json_response({"removed": name})


# -- instances -----------------------------------------------------------------------------------


async def get_instances(request: web.Request) -> web.StreamResponse:
    name = _service(request)
    store = request.app[STORE]
    if _wants_stream(request):  # a service that does not exist yet may be watched
        return await _stream(request, frozenset([name]), kinds=None)
    return web.json_response([i.to_dict() for i in store.instances(name)])


async def put_instance(request: web.Request) -> web.Response:
    name = _service(request)
    iid = validate.instance_id(request.match_info["id"])
    body = validate.instance_body(await read_json(request, max_bytes=64 * 1024))
    store = request.app[STORE]
    current = store.instance(name, iid)
    if current is not None and (current.addr, current.proto, current.meta) == (
        body["addr"],
        body["proto"],
        body["meta"],
    ):
        store.heartbeat(name, iid)  # unchanged: a heartbeat, not a Raft write
        return web.json_response(current.to_dict())
    result = await store.propose({"op": "register", "service": name, "id": iid, **body})
    return web.json_response(result["instance"], status=201 if result["changed"] else 200)


async def heartbeat_instance(request: web.Request) -> web.Response:
    name = _service(request)
    iid = validate.instance_id(request.match_info["id"])
    store = request.app[STORE]
    if store.instance(name, iid) is None:
        raise CommandError(404, f"unknown instance {iid!r} of service {name!r}")
    store.heartbeat(name, iid)
    return web.json_response({"ok": True})


async def delete_instance(request: web.Request) -> web.Response:
    name = _service(request)
    iid = validate.instance_id(request.match_info["id"])
    await request.app[STORE].propose({"op": "deregister", "service": name, "id": iid})
    return web.json_response({"removed": iid})


# -- meta and leader -----------------------------------------------------------------------------


async def get_meta(request: web.Request) -> web.Response:
    return web.json_response(request.app[STORE].meta(_service(request)))


async def put_meta(request: web.Request) -> web.Response:
    name = _service(request)
    body = await read_json(request, max_bytes=validate.MAX_SERVICE_META_BYTES + 1024)
    data, index = validate.service_meta(body)
    result = await request.app[STORE].propose(
        {"op": "set_meta", "service": name, "data": data, "index": index}
    )
    return web.json_response(result)


async def get_leader(request: web.Request) -> web.StreamResponse:
    name = _service(request)
    store = request.app[STORE]
    if _wants_stream(request):
        return await _stream(request, frozenset([name]), kinds=frozenset(["leader"]))
    leader = store.leader(name)
    if leader is None:
        raise CommandError(404, f"service {name!r} has no leader (no instances)")
    return web.json_response(leader.to_dict())


async def put_leader(request: web.Request) -> web.Response:
    name = _service(request)
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise validate.ValidationError('leader must be {"id": INSTANCE_ID}')
    iid = validate.instance_id(body["id"])
    result = await request.app[STORE].propose({"op": "set_leader", "service": name, "id": iid})
    return web.json_response(result["leader"])


# -- watch streams -------------------------------------------------------------------------------


def parse_event_id(raw: str | None) -> EventId | None:
    if not raw:
        return None
    index, sep, seq = raw.partition(":")
    if not (index.isdigit() and (not sep or seq.isdigit())):
        raise validate.ValidationError(f"bad Last-Event-ID {raw[:40]!r}: expected INDEX:SEQ")
    return (int(index), int(seq or 0))


async def _send(resp: web.StreamResponse, kind: str, data: Any, event_id: str | None = None) -> None:
    head = f"id: {event_id}\n" if event_id else ""
    await resp.write(f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())


def _snapshot_events(snapshot: State, services: frozenset[str] | None) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name in sorted(snapshot.services):
        if services is not None and name not in services:
            continue
        svc = snapshot.services[name]
        for inst in svc.sorted_instances():
            out.append(
                ("up", {"kind": "up", "service": name, "instance": inst.to_dict(), "index": inst.updated})
            )
        leader = svc.leader()
        out.append(
            (
                "leader",
                {"kind": "leader", "service": name, "instance": leader.to_dict() if leader else None},
            )
        )
        if svc.meta_index:
            out.append(
                (
                    "meta",
                    {"kind": "meta", "service": name, "meta": {"data": svc.meta, "index": svc.meta_index}},
                )
            )
    return out


async def _stream(
    request: web.Request, services: frozenset[str] | None, kinds: frozenset[str] | None
) -> web.StreamResponse:
    store = request.app[STORE]
    after = parse_event_id(request.headers.get("Last-Event-ID") or request.query.get("after"))
    sub, replay, snapshot = store.subscribe(services, after)
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    try:
        await resp.prepare(request)
        if replay is not None:
            for e in replay:
                if kinds is None or e.kind in kinds:
                    await _send(resp, e.kind, e.to_dict(), e.id)
            await _send(resp, "current", {"index": snapshot.index}, f"{sub.after[0]}:{sub.after[1]}")
        else:
            resync = after is not None
            sub = await _send_full(
                resp, sub=sub, snapshot=snapshot, services=services, kinds=kinds, resync=resync
            )
        while True:
            try:
                item = await asyncio.wait_for(sub.queue.get(), KEEPALIVE)
            except TimeoutError:
                await resp.write(b": keepalive\n\n")
                continue
            if item is None:
                break
            if item is RESYNC:
                store.unsubscribe(sub)
                sub, _, snapshot = store.subscribe(services, None)
                sub = await _send_full(
                    resp, sub=sub, snapshot=snapshot, services=services, kinds=kinds, resync=True
                )
                continue
            if isinstance(item, Event) and (kinds is None or item.kind in kinds):
                await _send(resp, item.kind, item.to_dict(), item.id)
    except ConnectionResetError:
        pass  # the watcher went away
    finally:
        store.unsubscribe(sub)
        with contextlib.suppress(Exception):
            await resp.write_eof()
    return resp


async def _send_full(
    resp: web.StreamResponse,
    *,
    sub: Subscription,
    snapshot: State,
    services: frozenset[str] | None,
    kinds: frozenset[str] | None,
    resync: bool,
) -> Subscription:
    if resync:
        await _send(resp, "resync", {"index": snapshot.index})
    for kind, data in _snapshot_events(snapshot, services):
        if kinds is None or kind in kinds:
            await _send(resp, kind, data)
    await _send(resp, "current", {"index": snapshot.index}, f"{sub.after[0]}:{sub.after[1]}")
    return sub


async def watch_all(request: web.Request) -> web.StreamResponse:
    names = request.query.getall("service", [])
    services = frozenset(validate.service_name(n) for n in names) if names else None
    return await _stream(request, services, kinds=None)


# -- raft ----------------------------------------------------------------------------------------


async def raft_leader(request: web.Request) -> web.Response:
    leader = request.app[STORE].raft.leader()
    if leader is None:
        raise Unavailable("no Raft leader")
    return web.json_response({"host": leader})


async def raft_peers(request: web.Request) -> web.Response:
    raft = request.app[STORE].raft
    return web.json_response({"peers": raft.peers(), "leader": raft.leader()})


async def raft_status(request: web.Request) -> web.Response:
    store = request.app[STORE]
    status = store.raft.status()
    status["index"] = store.index()
    return web.json_response(status)


def _peer(request: web.Request) -> str:
    return validate.peer_addr(request.match_info["addr"])


async def promote(request: web.Request) -> web.Response:
    return web.json_response(await request.app[MEMBERSHIP].promote(_peer(request)))


async def demote(request: web.Request) -> web.Response:
    force = request.query.get("force", "") in ("1", "true", "yes")
    return web.json_response(await request.app[MEMBERSHIP].demote(_peer(request), force))


async def set_role(request: web.Request) -> web.Response:
    """Internal: the leader tells this node its new role after a membership change."""
    body = await read_json(request)
    if not isinstance(body, dict) or body.get("role") not in ("peer", "proxy"):
        raise validate.ValidationError('body must be {"role": "peer"|"proxy", "peers": [IP, ...]}')
    peers = body.get("peers")
    if not isinstance(peers, list) or not peers or not all(isinstance(p, str) for p in peers):
        raise validate.ValidationError("peers must be a non-empty list of IP addresses")
    peers = [validate.peer_addr(p) for p in peers]
    store = request.app[STORE]
    task = asyncio.get_running_loop().create_task(store.switch_role(body["role"], peers))
    request.app[BACKGROUND].add(task)
    task.add_done_callback(request.app[BACKGROUND].discard)
    return web.json_response({"accepted": body["role"]}, status=202)


async def heartbeats(request: web.Request) -> web.Response:
    """Internal: another node reports how long ago it last heard from instances."""
    body = await read_json(request, max_bytes=16 << 20)
    ages = body.get("ages") if isinstance(body, dict) else None
    if not isinstance(ages, list) or len(ages) > MAX_HEARTBEAT_BATCH:
        raise validate.ValidationError(
            f'body must be {{"ages": [[SERVICE, ID, SECONDS], ...]}} (<= {MAX_HEARTBEAT_BATCH})'
        )
    parsed: list[tuple[str, str, float]] = []
    for entry in ages:
        if (
            not isinstance(entry, list)
            or len(entry) != 3
            or not isinstance(entry[0], str)
            or not isinstance(entry[1], str)
            or not isinstance(entry[2], int | float)
            or isinstance(entry[2], bool)
        ):
            raise validate.ValidationError("each age must be [SERVICE, ID, SECONDS]")
        parsed.append((entry[0], entry[1], float(entry[2])))
    store = request.app[STORE]
    if not store.raft.is_leader():
        raise CommandError(421, "not the Raft leader")
    store.record_ages(parsed)
    return web.json_response({"ok": True})


async def status(request: web.Request) -> web.Response:
    store = request.app[STORE]
    raft = store.raft.status()
    return web.json_response({"ok": raft["leader"] is not None, "raft": raft, "index": store.index()})


BACKGROUND: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("background", set)


async def not_found(request: web.Request) -> web.Response:
    return json_error(404, f"no such endpoint: {request.method} {request.path}")


def make_app(store: Store, membership: Membership) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, domain_errors, consistent_reads], client_max_size=16 << 20
    )
    app[STORE] = store
    app[MEMBERSHIP] = membership
    app[BACKGROUND] = set()
    r = app.router
    r.add_get("/services", list_services)
    r.add_get("/events", watch_all)
    r.add_put("/services/{service}", put_service)
    r.add_get("/services/{service}", get_service)
    r.add_delete("/services/{service}", delete_service)
    r.add_get("/services/{service}/instances", get_instances)
    r.add_put("/services/{service}/instances/{id}", put_instance)
    r.add_delete("/services/{service}/instances/{id}", delete_instance)
    r.add_post("/services/{service}/instances/{id}/heartbeat", heartbeat_instance)
    r.add_get("/services/{service}/meta", get_meta)
    r.add_put("/services/{service}/meta", put_meta)
    r.add_get("/services/{service}/leader", get_leader)
    r.add_put("/services/{service}/leader", put_leader)
    r.add_get("/raft/leader", raft_leader)
    r.add_get("/raft/peers", raft_peers)
    r.add_get("/raft/status", raft_status)
    r.add_put("/raft/peers/{addr}", promote)
    r.add_delete("/raft/peers/{addr}", demote)
    r.add_post("/raft/role", set_role)
    r.add_post("/raft/heartbeats", heartbeats)
    r.add_get("/status", status)
    return app
