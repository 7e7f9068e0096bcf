"""Crash backoff per formation type, as an immutable value updated by pure functions.

Rule (docs/scheduler.md): the first restart after a crash is at once, then 1, 2, 4, ... seconds
after repeated crashes, at most 30 s; the count starts over once a job of the type stayed up for
60 s. "Stayed up" is judged two ways, both without comparing clocks of different machines: the
crashed job's own uptime as its host measured it (``finished_at - up_at``), or 60 s of the
scheduler's clock without another crash of the type after the restart was allowed.

Times are the scheduler's monotonic clock (injected), never the wall clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flynn.scheduler.model import FormationKey

MAX_DELAY = 30.0
RESET_AFTER = 60.0


def delay_after(crashes: int) -> float:
    """Seconds to wait before the restart that follows the ``crashes``-th crash in a row."""
    if crashes <= 1:
        return 0.0
    return min(float(2 ** (crashes - 2)), MAX_DELAY)


@dataclass(frozen=True)
class CrashRecord:
    crashes: int
    last_crash: float

    @property
    def delay(self) -> float:
        return delay_after(self.crashes)

    @property
    def restart_at(self) -> float:
        return self.last_crash + self.delay


@dataclass(frozen=True)
class Backoff:
    records: Mapping[FormationKey, CrashRecord] = field(default_factory=dict)

    def get(self, key: FormationKey) -> CrashRecord | None:
        return self.records.get(key)

    def restart_at(self, key: FormationKey) -> float | None:
        """When the next start of ``key`` is allowed; None when it is not held back at all."""
        record = self.records.get(key)
        if record is None or record.delay == 0:
            return None
        return record.restart_at

    def record_crash(self, key: FormationKey, *, up_for: float, now: float) -> Backoff:
        """A job of ``key`` crashed (or failed, or exited on its own) after ``up_for`` seconds up."""
        previous = self.records.get(key)
        if previous is None or up_for >= RESET_AFTER or now - previous.restart_at >= RESET_AFTER:
            crashes = 1
        else:
            crashes = previous.crashes + 1
        records = dict(self.records)
        records[key] = CrashRecord(crashes, now)
        return Backoff(records)

    def prune(self, now: float, keep: Iterable[FormationKey] | None = None) -> Backoff:
        """Drop records that no longer hold anything back (and, given ``keep``, keys not in it)."""
        wanted = set(keep) if keep is not None else None
        records = {
            key: rec
            for key, rec in self.records.items()
            if now - rec.restart_at < RESET_AFTER and (wanted is None or key in wanted)
        }
        if len(records) == len(self.records):
            return self
        return Backoff(records)
