"""discoverd's replicated state machine: services, instances, meta and leaders.

Deterministic: applying the same commands in the same order gives the same state, indexes and
events on every node. Nothing here reads a clock or does I/O; the leader's expiry decisions arrive
as ``expire`` commands. Commands and the snapshot are plain dicts (they travel through pysyncobj's
pickle transport and dump file), validated by :mod:`flynn.discoverd.validate` before they are
proposed and checked again here, because a command is applied on every node.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal["up", "update", "down", "leader", "meta"]
LeaderType = Literal["oldest", "manual"]
LEADER_TYPES: tuple[str, ...] = ("oldest", "manual")


class CommandError(Exception):
    """A command that cannot apply to the current state (unknown service, stale meta index...).

    ``status`` is the HTTP status the API answers with.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Instance:
    id: str
    service: str
    addr: str
    proto: str
    meta: dict[str, str]
    index: int  # state index of the first registration: the instance's age
    updated: int  # state index of the last change

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "addr": self.addr,
            "proto": self.proto,
            "meta": dict(self.meta),
            "index": self.index,
            "updated": self.updated,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instance:
        return cls(
            id=d["id"],
            service=d["service"],
            addr=d["addr"],
            proto=d["proto"],
            meta=dict(d["meta"]),
            index=int(d["index"]),
            updated=int(d["updated"]),
        )

    @property
    def host(self) -> str:
        return self.addr.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])


@dataclass
class Service:
    name: str
    leader_type: str = "oldest"
    manual_leader: str | None = None
    meta: Any = None
    meta_index: int = 0  # 0: no meta set yet
    instances: dict[str, Instance] = field(default_factory=dict)

    def leader(self) -> Instance | None:
        if self.leader_type == "manual":
            return self.instances.get(self.manual_leader) if self.manual_leader else None
        if not self.instances:
            return None
        return min(self.instances.values(), key=lambda i: (i.index, i.id))

    def sorted_instances(self) -> list[Instance]:
        return sorted(self.instances.values(), key=lambda i: (i.index, i.id))


@dataclass(frozen=True)
class Event:
    index: int
    seq: int  # position among the events of one command
    kind: str
    service: str
    instance: Instance | None = None
    data: Any = None  # meta events: {"data", "index"}

    @property
    def id(self) -> str:
        return f"{self.index}:{self.seq}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "service": self.service, "index": self.index}
        if self.instance is not None:
            out["instance"] = self.instance.to_dict()
        elif self.kind == "leader":
            out["instance"] = None
        if self.kind == "meta":
            out["meta"] = self.data
        return out


class State:
    """The replicated data. Not thread-safe: the Raft wrapper serialises access."""

    def __init__(self) -> None:
        self.index = 0
        # highest Raft term whose leader has committed its term marker: a node that has applied
        # the marker of its current term has applied everything committed before that term
        self.term = 0
        self.services: dict[str, Service] = {}

    # -- reads ---------------------------------------------------------------------------------

    def service(self, name: str) -> Service:
        svc = self.services.get(name)
        if svc is None:
            raise CommandError(404, f"unknown service {name!r}")
        return svc

    def leader(self, name: str) -> Instance | None:
        return self.service(name).leader()

    # -- commands ------------------------------------------------------------------------------

    def apply(self, cmd: dict[str, Any]) -> tuple[Any, list[Event]]:
        """Apply one command; returns (result, events). A CommandError leaves the state unchanged
        but still consumes an index, so every node's index stays equal."""
        self.index += 1
        op = cmd.get("op")
        handler = _HANDLERS.get(op) if isinstance(op, str) else None
        if handler is None:
            raise CommandError(400, f"unknown command {op!r}")
        emitter = _Emitter(self.index)
        result = handler(self, cmd, emitter)
        return result, emitter.events

    def _add_service(self, cmd: dict[str, Any], ev: _Emitter) -> dict[str, Any]:
        name = cmd["service"]
        leader_type = cmd.get("leader_type", "oldest")
        if leader_type not in LEADER_TYPES:
            raise CommandError(400, f"leader_type must be one of {', '.join(LEADER_TYPES)}")
        svc = self.services.get(name)
        if svc is not None:
            if svc.leader_type != leader_type:
                raise CommandError(409, f"service {name!r} exists with leader_type {svc.leader_type}")
            return {"created": False}
        self.services[name] = Service(name=name, leader_type=leader_type)
        return {"created": True}

    def _remove_service(self, cmd: dict[str, Any], ev: _Emitter) -> dict[str, Any]:
        svc = self.service(cmd["service"])
        old_leader = svc.leader()
        for inst in svc.sorted_instances():
            ev.emit("down", svc.name, inst)
        if old_leader is not None:
            ev.emit("leader", svc.name, None)
        del self.services[svc.name]
        return {"removed": True}

    def _register(self, cmd: dict[str, Any], ev: _Emitter) -> dict[str, Any]:
        svc = self.service(cmd["service"])
        before = svc.leader()
        old = svc.instances.get(cmd["id"])
        meta = dict(cmd.get("meta") or {})
        if old is not None and (old.addr, old.proto, old.meta) == (cmd["addr"], cmd["proto"], meta):
            return {"instance": old.to_dict(), "changed": False}
        inst = Instance(
            id=cmd["id"],
            service=svc.name,
            addr=cmd["addr"],
            proto=cmd["proto"],
            meta=meta,
            index=old.index if old is not None else self.index,
            updated=self.index,
        )
        svc.instances[inst.id] = inst
        ev.emit("update" if old is not None else "up", svc.name, inst)
        self._leader_changed(svc, before, ev)
        return {"instance": inst.to_dict(), "changed": True}

    def _deregister(self, cmd: dict[str, Any], ev: _Emitter) -> dict[str, Any]:
        svc = self.service(cmd["service"])
        inst = svc.instances.get(cmd["id"])
        if inst is None:
            raise CommandError(404, f"unknown instance {cmd['id']!r} of service {svc.name!r}")
        before = svc.leader()
        del svc.instances[inst.id]
        ev.emit("down", svc.name, inst)
        self._leader_changed(svc, before, ev)
        return {"removed": True}

    def _expire(self, cmd: dict[str, Any], ev: _Emitter) -> dict[str, Any]:
        """Remove instances the Raft leader found silent. Each entry names the instance's
        ``updated`` index, so an instance re-registered meanwhile is not removed by a stale decision."""
        expired = []
        for entry in cmd["instances"]:
            svc = self.services.get(entry["service"])
            if svc is None:
                continue
            inst = svc.instances.get(entry["id"])
            if inst is None or inst.updated != entry["updated"]:
                continue
            before = svc.leader()
            del svc.instances[inst.id]
            ev.emit("down", svc.name, inst)
            self._leader_changed(svc, before, ev)
            expired.append(f"{svc.name}/{inst.id}")
        return {"expired": expired}

    def _set_meta(self, cmd: dict[str, Any], ev: _Emitter) -> dict[str, Any]:
        svc = self.service(cmd["service"])
        expected = int(cmd["index"])
        if expected != svc.meta_index:
            what = "does not exist yet" if svc.meta_index == 0 else f"is at index {svc.meta_index}"
            raise CommandError(409, f"meta of {svc.name!r} {what}, not {expected}")
        svc.meta = copy.deepcopy(cmd["data"])
        svc.meta_index = self.index
        meta = {"data": svc.meta, "index": svc.meta_index}
        ev.emit("meta", svc.name, None, meta)
        return meta

    def _set_leader(self, cmd: dict[str, Any], ev: _Emitter) -> dict[str, Any]:
        svc = self.service(cmd["service"])
        if svc.leader_type != "manual":
            raise CommandError(409, f"service {svc.name!r} elects its oldest instance (leader_type oldest)")
        if cmd["id"] not in svc.instances:
            raise CommandError(404, f"unknown instance {cmd['id']!r} of service {svc.name!r}")
        before = svc.leader()
        svc.manual_leader = cmd["id"]
        self._leader_changed(svc, before, ev)
        leader = svc.leader()
        return {"leader": leader.to_dict() if leader else None}

    def _term(self, cmd: dict[str, Any], ev: _Emitter) -> dict[str, Any]:
        self.term = max(self.term, int(cmd["term"]))
        return {"term": self.term}

    @staticmethod
    def _leader_changed(svc: Service, before: Instance | None, ev: _Emitter) -> None:
        after = svc.leader()
        if (before.id if before else None) != (after.id if after else None):
            ev.emit("leader", svc.name, after)

    # -- snapshots -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "term": self.term,
            "services": {
                name: {
                    "leader_type": s.leader_type,
                    "manual_leader": s.manual_leader,
                    "meta": s.meta,
                    "meta_index": s.meta_index,
                    "instances": [i.to_dict() for i in s.sorted_instances()],
                }
                for name, s in sorted(self.services.items())
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> State:
        st = cls()
        st.index = int(d["index"])
        st.term = int(d.get("term", 0))  # snapshots written before term markers existed
        for name, s in d["services"].items():
            svc = Service(
                name=name,
                leader_type=s["leader_type"],
                manual_leader=s["manual_leader"],
                meta=s["meta"],
                meta_index=int(s["meta_index"]),
            )
            for i in s["instances"]:
                inst = Instance.from_dict(i)
                svc.instances[inst.id] = inst
            st.services[name] = svc
        return st


class _Emitter:
    def __init__(self, index: int) -> None:
        self.index = index
        self.events: list[Event] = []

    def emit(self, kind: str, service: str, instance: Instance | None, data: Any = None) -> None:
        self.events.append(Event(self.index, len(self.events), kind, service, instance, data))


_HANDLERS = {
    "term": State._term,
    "add_service": State._add_service,
    "remove_service": State._remove_service,
    "register": State._register,
    "deregister": State._deregister,
    "expire": State._expire,
    "set_meta": State._set_meta,
    "set_leader": State._set_leader,
}


def diff(old: State, new: State) -> list[Event]:
    """Events that turn a watcher's view of ``old`` into ``new`` (used when a node replaces its
    copy of the state wholesale: a snapshot install or a role switch). They carry ``new.index``."""
    ev = _Emitter(new.index)
    for name in sorted(set(old.services) | set(new.services)):
        o, n = old.services.get(name), new.services.get(name)
        o_inst = o.instances if o else {}
        n_inst = n.instances if n else {}
        for iid in sorted(o_inst.keys() - n_inst.keys()):
            ev.emit("down", name, o_inst[iid])
        for iid in sorted(n_inst):
            if iid not in o_inst:
                ev.emit("up", name, n_inst[iid])
            elif n_inst[iid] != o_inst[iid]:
                ev.emit("update", name, n_inst[iid])
        o_lead, n_lead = (o.leader() if o else None), (n.leader() if n else None)
        if (o_lead.id if o_lead else None) != (n_lead.id if n_lead else None):
            ev.emit("leader", name, n_lead)
        if n is not None and (o is None or o.meta_index != n.meta_index):
            ev.emit("meta", name, None, {"data": n.meta, "index": n.meta_index})
    return ev.events
