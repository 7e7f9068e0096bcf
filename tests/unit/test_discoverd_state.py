"""The replicated state machine: commands, events, leaders, meta CAS, snapshots, determinism."""

import contextlib
import random
from typing import Any

import pytest

from flynn.discoverd import validate
from flynn.discoverd.state import CommandError, State, diff


def reg(state: State, iid: str, addr: str = "10.0.0.1:80", service: str = "web", **meta: str) -> Any:
    return state.apply(
        {"op": "register", "service": service, "id": iid, "addr": addr, "proto": "tcp", "meta": meta}
    )


def kinds(events: list[Any]) -> list[tuple[str, str | None]]:
    return [(e.kind, e.instance.id if e.instance else None) for e in events]


def test_register_update_deregister_events_and_leader() -> None:
    st = State()
    st.apply({"op": "add_service", "service": "web"})
    _, ev = reg(st, "a")
    assert kinds(ev) == [("up", "a"), ("leader", "a")]
    _, ev = reg(st, "b", "10.0.0.2:80")
    assert kinds(ev) == [("up", "b")]  # a stays the (oldest) leader
    result, ev = reg(st, "b", "10.0.0.2:80")
    assert ev == []
    assert result["changed"] is False
    _, ev = reg(st, "b", "10.0.0.2:81")
    assert kinds(ev) == [("update", "b")]
    assert st.leader("web").id == "a"  # type: ignore[union-attr]
    _, ev = st.apply({"op": "deregister", "service": "web", "id": "a"})
    assert kinds(ev) == [("down", "a"), ("leader", "b")]
    assert all(e.index == st.index for e in ev)
    assert [e.seq for e in ev] == [0, 1]


def test_updated_instance_keeps_its_age() -> None:
    st = State()
    st.apply({"op": "add_service", "service": "web"})
    reg(st, "a")
    reg(st, "b", "10.0.0.2:80")
    first = st.services["web"].instances["a"].index
    reg(st, "a", meta="changed")
    assert st.services["web"].instances["a"].index == first
    assert st.leader("web").id == "a"  # type: ignore[union-attr]


def test_manual_leader() -> None:
    st = State()
    st.apply({"op": "add_service", "service": "db", "leader_type": "manual"})
    reg(st, "a", service="db")
    reg(st, "b", "10.0.0.2:80", service="db")
    assert st.leader("db") is None
    _, ev = st.apply({"op": "set_leader", "service": "db", "id": "b"})
    assert kinds(ev) == [("leader", "b")]
    _, ev = st.apply({"op": "deregister", "service": "db", "id": "b"})
    assert kinds(ev) == [("down", "b"), ("leader", None)]
    st.apply({"op": "add_service", "service": "web"})
    reg(st, "a", service="web")
    with pytest.raises(CommandError, match="oldest"):
        st.apply({"op": "set_leader", "service": "web", "id": "a"})


def test_meta_compare_and_set() -> None:
    st = State()
    st.apply({"op": "add_service", "service": "pg"})
    meta, ev = st.apply({"op": "set_meta", "service": "pg", "data": {"primary": "a"}, "index": 0})
    assert ev[0].kind == "meta"
    assert meta["data"] == {"primary": "a"}
    with pytest.raises(CommandError) as info:
        st.apply({"op": "set_meta", "service": "pg", "data": {"primary": "b"}, "index": 0})
    assert info.value.status == 409
    meta2, _ = st.apply({"op": "set_meta", "service": "pg", "data": {"primary": "b"}, "index": meta["index"]})
    assert meta2["index"] > meta["index"]
    assert st.services["pg"].meta == {"primary": "b"}


def test_errors_consume_an_index_and_change_nothing() -> None:
    st = State()
    before = st.to_dict()
    with pytest.raises(CommandError) as info:
        reg(st, "a", service="nope")
    assert info.value.status == 404
    assert st.index == before["index"] + 1
    assert st.to_dict()["services"] == before["services"]
    with pytest.raises(CommandError):
        st.apply({"op": "frobnicate"})


def test_expire_skips_instances_registered_again_meanwhile() -> None:
    st = State()
    st.apply({"op": "add_service", "service": "web"})
    reg(st, "a")
    stale = st.services["web"].instances["a"].updated
    reg(st, "a", meta="new")  # re-registered after the leader decided
    result, ev = st.apply({"op": "expire", "instances": [{"service": "web", "id": "a", "updated": stale}]})
    assert result["expired"] == []
    assert ev == []
    current = st.services["web"].instances["a"].updated
    result, ev = st.apply({"op": "expire", "instances": [{"service": "web", "id": "a", "updated": current}]})
    assert result["expired"] == ["web/a"]
    assert kinds(ev) == [("down", "a"), ("leader", None)]


def test_remove_service_emits_downs() -> None:
    st = State()
    st.apply({"op": "add_service", "service": "web"})
    reg(st, "a")
    reg(st, "b", "10.0.0.2:80")
    _, ev = st.apply({"op": "remove_service", "service": "web"})
    assert kinds(ev) == [("down", "a"), ("down", "b"), ("leader", None)]
    assert "web" not in st.services


def random_commands(rng: random.Random, n: int) -> list[dict[str, Any]]:
    services = ["web", "db", "api"]
    cmds: list[dict[str, Any]] = []
    for _ in range(n):
        s = rng.choice(services)
        op = rng.choice(["add_service", "register", "register", "deregister", "set_meta", "expire"])
        iid = rng.choice("abcde")
        if op == "add_service":
            cmds.append({"op": op, "service": s})
        elif op == "register":
            cmds.append(
                {
                    "op": op,
                    "service": s,
                    "id": iid,
                    "addr": f"10.0.0.{rng.randint(1, 3)}:80",
                    "proto": "tcp",
                    "meta": {},
                }
            )
        elif op == "deregister":
            cmds.append({"op": op, "service": s, "id": iid})
        elif op == "set_meta":
            cmds.append({"op": op, "service": s, "data": rng.random(), "index": rng.choice([0, 5, 9])})
        else:
            cmds.append({"op": op, "instances": [{"service": s, "id": iid, "updated": rng.randint(0, 40)}]})
    return cmds


def run(cmds: list[dict[str, Any]]) -> tuple[State, list[str]]:
    st = State()
    log = []
    for c in cmds:
        try:
            _, ev = st.apply(c)
            log += [f"{e.id} {e.kind} {e.service} {e.instance.id if e.instance else '-'}" for e in ev]
        except CommandError as exc:
            log.append(f"error {exc.status}")
    return st, log


def test_deterministic_and_snapshot_round_trip() -> None:
    rng = random.Random(7)
    cmds = random_commands(rng, 400)
    a, log_a = run(cmds)
    b, log_b = run(cmds)
    assert log_a == log_b
    assert a.to_dict() == b.to_dict()
    # restore a snapshot taken half way and apply the rest: same state
    half, _ = run(cmds[:200])
    restored = State.from_dict(half.to_dict())
    for c in cmds[200:]:
        with contextlib.suppress(CommandError):
            restored.apply(c)
    assert restored.to_dict() == a.to_dict()
    assert diff(a, restored) == []


def test_term_marker_only_moves_forward_and_survives_a_snapshot() -> None:
    st = State()
    assert st.apply({"op": "term", "term": 3}) == ({"term": 3}, [])
    assert st.apply({"op": "term", "term": 2}) == ({"term": 3}, [])  # a late marker of an old term
    assert st.index == 2  # markers are log entries like any other: every node counts them
    assert State.from_dict(st.to_dict()).term == 3
    old = st.to_dict()
    del old["term"]  # a snapshot written before markers existed
    assert State.from_dict(old).term == 0


def test_diff_describes_the_change() -> None:
    old = State()
    old.apply({"op": "add_service", "service": "web"})
    reg(old, "a")
    reg(old, "b", "10.0.0.2:80")
    new = State.from_dict(old.to_dict())
    new.apply({"op": "deregister", "service": "web", "id": "a"})
    reg(new, "c", "10.0.0.3:80")
    assert kinds(diff(old, new)) == [("down", "a"), ("up", "c"), ("leader", "b")]


@pytest.mark.parametrize(
    ("func", "value"),
    [
        (validate.service_name, "Web"),
        (validate.service_name, "-web"),
        (validate.service_name, "w" * 64),
        (validate.service_name, "web\x00"),
        (validate.instance_id, "a/b"),
        (validate.instance_id, ""),
        (validate.addr, "10.0.0.1"),
        (validate.addr, "10.0.0.1:0"),
        (validate.addr, "host:80"),
        (validate.addr, 80),
        (validate.peer_addr, "node1"),
        (validate.peer_addr, "10.0.0.1:99999"),
    ],
)
def test_validation_rejects(func: Any, value: Any) -> None:
    with pytest.raises(validate.ValidationError):
        func(value)


def test_validation_normalises() -> None:
    assert validate.addr("[::1]:80") == "[::1]:80"
    assert validate.addr("10.0.0.1:0080") == "10.0.0.1:80"
    assert validate.peer_addr("10.0.0.1:1112") == "10.0.0.1"
    body = validate.instance_body({"addr": "10.0.0.1:80", "meta": {"k": "v"}})
    assert body == {"addr": "10.0.0.1:80", "proto": "tcp", "meta": {"k": "v"}}
    with pytest.raises(validate.ValidationError) as info:
        validate.instance_body({"addr": "10.0.0.1:80", "meta": {f"k{i}": "v" for i in range(65)}})
    assert info.value.status == 413
    with pytest.raises(validate.ValidationError) as info:
        validate.service_meta({"data": "x" * 70_000, "index": 0})
    assert info.value.status == 413
