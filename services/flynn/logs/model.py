"""One log line as the aggregator keeps it (from a host's ``GET /host/logs``, docs/logs.md)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

STREAMS = frozenset({"stdout", "stderr", "syslog", "journal", "audit", "driver", "kernel"})
MAX_MSG = 64 * 1024


class BadLine(ValueError):
    pass


def _text(data: dict[str, Any], name: str, *, required: bool = False, limit: int = 256) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise BadLine(f"{name} is missing")
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise BadLine(f"{name} is not a string of at most {limit} characters")
    return sys.intern(value)  # ids and names repeat on every line of a job: keep one copy


@dataclass(frozen=True, slots=True)
class Line:
    ts: int  # µs since the epoch (journald's realtime)
    host_id: str
    app_id: str | None
    app_name: str | None
    job_id: str
    type: str | None
    release_id: str | None
    stream: str
    priority: int
    msg: str
    system: bool = False  # a platform service's line (its app_name is the service)

    @property
    def key(self) -> str | None:
        """The buffer the line belongs to: its app id, or a platform service's name."""
        return self.app_name if self.system else self.app_id

    @classmethod
    def from_host(cls, data: Any, host_id: str) -> Line:
        """A line as a host sends it; its ``host_id`` must be the host it came from."""
        if not isinstance(data, dict):
            raise BadLine("a line must be an object")
        ts = data.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
            raise BadLine("ts is not a timestamp")
        if data.get("host_id") != host_id:
            raise BadLine(f"host_id {str(data.get('host_id'))[:40]!r} is not the host it came from")
        msg = data.get("msg", "")
        if not isinstance(msg, str):
            raise BadLine("msg is not a string")
        stream = data.get("stream", "stdout")
        if stream not in STREAMS:
            raise BadLine(f"stream {str(stream)[:20]!r} is unknown")
        priority = data.get("priority", 6)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 7:
            raise BadLine("priority is not 0-7")
        return cls(
            ts=ts,
            host_id=sys.intern(host_id),
            app_id=_text(data, "app_id"),
            app_name=_text(data, "app_name"),
            job_id=_text(data, "job_id", required=True) or "",
            type=_text(data, "type"),
            release_id=_text(data, "release_id"),
            stream=sys.intern(stream),
            priority=priority,
            msg=msg[:MAX_MSG],
            system=bool(data.get("system", False)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "timestamp": timestamp(self.ts),
            "host_id": self.host_id,
            "app_id": self.app_id,
            "app_name": self.app_name,
            "job_id": self.job_id,
            "type": self.type,
            "release_id": self.release_id,
            "stream": self.stream,
            "priority": self.priority,
            "msg": self.msg,
        }


def timestamp(ts_us: int) -> str:
    """RFC 3339 UTC with microseconds: ``2026-12-01T07:03:44.123456Z``."""
    seconds, micros = divmod(ts_us, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}Z"
