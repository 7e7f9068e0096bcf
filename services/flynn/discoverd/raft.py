"""The Raft node: pysyncobj carrying :class:`~flynn.discoverd.state.State` commands.

pysyncobj runs its own thread. Commands are proposed from asyncio through :meth:`RaftNode.submit`,
which turns pysyncobj's callback into an awaitable; applied commands hand their events to a
``sink`` callable while the state lock is held, so events leave in index order.

A *peer* node votes; a *proxy* is a pysyncobj read-only node (``selfNode=None``): it receives and
applies the log without voting, and pysyncobj forwards its proposals to the leader.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated

from flynn.discoverd.state import CommandError, Event, State

log = logging.getLogger(__name__)

Role = Literal["peer", "proxy"]
RAFT_PORT = 1112

_FAIL_NAMES = {
    FAIL_REASON.QUEUE_FULL: "command queue full",
    FAIL_REASON.MISSING_LEADER: "no Raft leader",
    FAIL_REASON.DISCARDED: "discarded by a new Raft leader",
    FAIL_REASON.NOT_LEADER: "Raft leader changed before commit",
    FAIL_REASON.LEADER_CHANGED: "Raft leader changed before commit",
    FAIL_REASON.REQUEST_DENIED: "denied by the Raft leader",
    FAIL_REASON.UNKNOWN_OUTCOME: "unknown outcome (Raft leader changed)",
}

EventSink = Callable[["StateMachine", list[Event]], None]
ResetSink = Callable[["StateMachine", State, State], None]


# pysyncobj failures after which the command certainly did not commit, and those whose outcome
# is unknown (it may still commit under the new leader)
NOT_COMMITTED = frozenset(
    {FAIL_REASON.QUEUE_FULL, FAIL_REASON.MISSING_LEADER, FAIL_REASON.DISCARDED, FAIL_REASON.NOT_LEADER}
)
OUTCOME_UNKNOWN = frozenset({FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME})
# commands that may be applied twice with the same result as once
IDEMPOTENT_OPS = frozenset({"add_service", "register", "set_leader", "expire", "term"})
RETRY_DELAY = 0.2


class Unavailable(Exception):
    """The cluster could not commit a command (no leader, no quorum, timeout): HTTP 503."""

    def __init__(self, message: str, reason: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason  # pysyncobj's FAIL_REASON, when the failure came from it


class StateMachine(SyncObjConsumer):  # type: ignore[misc]
    """The replicated consumer. Everything set before ``super().__init__`` is left out of
    pysyncobj's own serialisation; snapshots go through :meth:`_serialize` instead."""

    def __init__(self, sink: EventSink, on_reset: ResetSink) -> None:
        self.lock = threading.RLock()
        self.state = State()
        self._sink = sink
        self._on_reset = on_reset
        super().__init__()

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, cmd: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            try:
                result, events = self.state.apply(cmd)
            except CommandError as exc:
                return {"error": exc.message, "status": exc.status}
            except (KeyError, TypeError, ValueError) as exc:  # validated before proposing; never expected
                log.error("malformed command %s: %r", cmd.get("op"), exc)
                return {"error": f"malformed command: {exc!r}", "status": 400}
            self._sink(self, events)
        return {"result": result}

    def _serialize(self) -> dict[str, Any]:
        with self.lock:
            return {"v": 1, "state": self.state.to_dict()}

    def _deserialize(self, data: dict[str, Any]) -> None:
        new = State.from_dict(data["state"])
        with self.lock:
            old, self.state = self.state, new
            self._on_reset(self, old, new)


@dataclass(frozen=True)
class RaftSettings:
    ip: str  # this host's cluster address: the Raft port binds here only
    secret: str
    data_dir: Path
    port: int = RAFT_PORT
    commit_timeout: float = 5.0

    def node(self, ip: str) -> str:
        return f"{ip}:{self.port}"

    @property
    def journal(self) -> Path:
        return self.data_dir / "raft.journal"

    @property
    def dump(self) -> Path:
        return self.data_dir / "raft.dump"


def ip_of(node: Any) -> str | None:
    """The IP of a pysyncobj node (or 'ip:port' string)."""
    if node is None:
        return None
    address = getattr(node, "address", node)
    return str(address).rsplit(":", 1)[0]


class RaftNode:
    def __init__(
        self,
        role: Role,
        peers: list[str],
        settings: RaftSettings,
        loop: asyncio.AbstractEventLoop,
        sink: EventSink,
        on_reset: ResetSink,
        on_state_changed: Callable[[int, int], None] | None = None,
    ) -> None:
        self.role = role
        self.settings = settings
        self._loop = loop
        self.sm = StateMachine(sink, on_reset)
        conf: dict[str, Any] = {
            "password": settings.secret,
            "dynamicMembershipChange": True,
            "appendEntriesUseBatch": False,  # measured: 10 -> ~800 committed writes/s
            "useFork": False,  # never fork a process that runs an event loop and threads
            "raftMinTimeout": 0.4,
            "raftMaxTimeout": 1.4,
            "leaderFallbackTimeout": 2.0,  # a leader cut off from the majority steps down fast
            "connectionTimeout": 3.5,
            # Between two peers only the one with the higher address dials, and pysyncobj's default
            # is to redial every 5 s: a peer that restarted stayed cut off from a higher-addressed
            # peer for up to 5 s after it listened again (refused dials meanwhile), and a leader
            # lost in that window could not be replaced until the link came back (failovers of
            # 2.5-3.7 s). A dial is one SYN on the cluster network.
            "connectionRetryTime": 0.5,
            "commandsWaitLeader": True,  # proposals ride through an election (bounded by our timeout)
            "onStateChanged": on_state_changed,
        }
        others = [settings.node(p) for p in peers if p != settings.ip]
        if role == "peer":
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            conf["journalFile"] = str(settings.journal)
            conf["fullDumpFile"] = str(settings.dump)
            # pysyncobj binds 0.0.0.0 unless told: its pickle transport must listen on the
            # cluster address only
            conf["bindAddress"] = settings.node(settings.ip)
            self_node: str | None = settings.node(settings.ip)
        else:
            self_node = None
        log.info("starting Raft %s node (peers: %s)", role, ", ".join(peers) or "none")
        self.obj = SyncObj(self_node, others, SyncObjConf(**conf), consumers=[self.sm])

    # -- proposals -----------------------------------------------------------------------------

    def _future(self) -> tuple[asyncio.Future[Any], Callable[[Any, int], None]]:
        fut: asyncio.Future[Any] = self._loop.create_future()

        def done(result: Any, error: int) -> None:
            def settle() -> None:
                if fut.done():
                    return
                if error == FAIL_REASON.SUCCESS:
                    fut.set_result(result)
                else:
                    fut.set_exception(Unavailable(_FAIL_NAMES.get(error, f"Raft error {error}"), error))

            self._loop.call_soon_threadsafe(settle)

        return fut, done

    async def _wait(self, fut: asyncio.Future[Any], what: str, within: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(fut, self.settings.commit_timeout if within is None else within)
        except TimeoutError:
            raise Unavailable(
                f"{what} not committed within {self.settings.commit_timeout:g}s (no Raft quorum?)"
            ) from None

    async def submit(self, cmd: dict[str, Any]) -> Any:
        """Propose a command and wait until it is applied; raises CommandError or Unavailable.

        A proposal that failed because leadership was moving is proposed again until the commit
        timeout: always when it certainly did not commit, and for idempotent commands also when
        its outcome is unknown (so a write during a failover waits for the new leader instead of
        failing)."""
        loop = self._loop
        deadline = loop.time() + self.settings.commit_timeout
        op = str(cmd.get("op", "command"))
        while True:
            fut, done = self._future()
            self.sm.apply(cmd, callback=done)
            try:
                out = await self._wait(fut, op, deadline - loop.time())
            except Unavailable as exc:
                retry = exc.reason in NOT_COMMITTED or (
                    exc.reason in OUTCOME_UNKNOWN and op in IDEMPOTENT_OPS
                )
                if not retry or loop.time() + RETRY_DELAY >= deadline:
                    raise
                await asyncio.sleep(RETRY_DELAY)
                continue
            if "error" in out:
                raise CommandError(int(out["status"]), str(out["error"]))
            return out["result"]

    async def add_peer(self, ip: str) -> None:
        fut, done = self._future()
        self.obj.addNodeToCluster(self.settings.node(ip), callback=done)
        await self._wait(fut, f"adding peer {ip}")

    async def remove_peer(self, ip: str) -> None:
        fut, done = self._future()
        self.obj.removeNodeFromCluster(self.settings.node(ip), callback=done)
        await self._wait(fut, f"removing peer {ip}")

    async def transfer_leadership(self, ip: str | None = None) -> None:
        fut, done = self._future()
        self.obj.transferLeadership(self.settings.node(ip) if ip else None, callback=done)
        await self._wait(fut, "leadership transfer")

    # -- views ---------------------------------------------------------------------------------

    def leader(self) -> str | None:
        return ip_of(self.obj._getLeader())

    def term(self) -> int:
        return int(self.obj._getTerm())

    def is_leader(self) -> bool:
        return self.role == "peer" and bool(self.obj._isLeader())

    def is_ready(self) -> bool:
        return bool(self.obj.isReady())

    def peers(self) -> list[str]:
        """Voting members as this node sees them (a proxy: the peers it follows)."""
        ips = {ip_of(n) for n in self.obj.otherNodes}
        if self.role == "peer":
            ips.add(self.settings.ip)
        return sorted(ip for ip in ips if ip)

    def status(self) -> dict[str, Any]:
        raw = self.obj.getStatus()
        state = {0: "follower", 1: "candidate", 2: "leader"}.get(raw.get("state", 0), "unknown")
        connected = {
            ip_of(key.removeprefix("partner_node_status_server_")): value == 2
            for key, value in raw.items()
            if key.startswith("partner_node_status_server_")
        }
        return {
            "role": self.role,
            "addr": self.settings.ip,
            "state": state if self.role == "peer" else "proxy",
            "leader": ip_of(raw.get("leader")),
            "term": raw.get("raft_term"),
            "commit_index": raw.get("commit_idx"),
            "last_applied": raw.get("last_applied"),
            "has_quorum": bool(raw.get("has_quorum")),
            "ready": self.is_ready(),
            "peers": self.peers(),
            "connected": {ip: ok for ip, ok in connected.items() if ip},
            "proxies_connected": raw.get("readonly_nodes_count", 0),
        }

    def destroy(self) -> None:
        """Stop the node and wait for its thread (blocking: call it from a worker thread)."""
        self.obj.destroy_synchronous()
