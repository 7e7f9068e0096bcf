"""A journal in memory with the reader semantics of systemd's ``sd_journal`` that flynn.host.logs
relies on: matches (fields and'ed, values of one field or'ed, groups or'ed by a disjunction),
seeks whose first move lands on the sought entry (a cursor is inclusive both ways), a tail that
``previous`` reads back from, ``query_unique``, and a file descriptor that turns readable when
entries are appended (as the journal's inotify descriptor does). Real journals are read on real
hosts in tests/integration/test_logs.py."""

from __future__ import annotations

import os
from typing import Any

from flynn.host.logs import Raw


class FakeJournal:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.readers: list[FakeReader] = []
        self.seq = 0
        self.clock = 1_700_000_000_000_000

    def append(self, **fields: Any) -> str:
        self.seq += 1
        self.clock += fields.pop("dt", 10)
        entry = {"__CURSOR": f"s=fake;q={self.seq}", "__REALTIME": fields.pop("ts", self.clock), **fields}
        self.entries.append(entry)
        for reader in self.readers:
            reader.poke()
        return str(entry["__CURSOR"])

    def job_line(self, job: str, msg: str, *, app: str = "app1", prio: int = 6, **extra: Any) -> str:
        fields = {
            "_SYSTEMD_UNIT": f"flynn-job-{job}.service",
            "_SYSTEMD_SLICE": "flynn-jobs.slice",
            "_TRANSPORT": "stdout",
            "PRIORITY": str(prio),
            "MESSAGE": msg,
            "FLYNN_APP_ID": app,
            "FLYNN_JOB_ID": job,
            **extra,
        }
        return self.append(**fields)

    def vacuum(self, cursor: str) -> None:
        self.entries = [e for e in self.entries if e["__CURSOR"] != cursor]

    def reader(self) -> FakeReader:
        r = FakeReader(self)
        self.readers.append(r)
        return r


class FakeReader:
    def __init__(self, journal: FakeJournal) -> None:
        self.journal = journal
        self.groups: list[dict[str, set[str]]] = [{}]
        self.pos: float = -0.5  # between entries: before the first one
        self.seek: str | None = None  # "cursor" right after a seek_cursor
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        self.closed = False

    def poke(self) -> None:
        if not self.closed:
            os.write(self.wfd, b"x")

    # -- the Reader protocol ---------------------------------------------------------------------

    def fileno(self) -> int:
        return self.rfd

    def process(self) -> None:
        try:
            while os.read(self.rfd, 4096):
                pass
        except BlockingIOError:
            pass

    def add_match(self, match: str) -> None:
        name, _, value = match.partition("=")
        self.groups[-1].setdefault(name, set()).add(value)

    def add_disjunction(self) -> None:
        self.groups.append({})

    def _matches(self, entry: dict[str, Any]) -> bool:
        groups = [g for g in self.groups if g]
        if not groups:
            return True
        return any(all(entry.get(k) in vals for k, vals in g.items()) for g in groups)

    def _index(self, cursor: str) -> float:
        seq = int(cursor.rsplit("q=", 1)[1])
        for i, e in enumerate(self.journal.entries):
            s = int(str(e["__CURSOR"]).rsplit("q=", 1)[1])
            if s == seq:
                return i
            if s > seq:
                return i - 0.5  # gone: between its neighbours
        return len(self.journal.entries) - 0.5

    def seek_tail(self) -> None:
        self.pos = len(self.journal.entries) - 0.5
        self.seek = None

    def seek_cursor(self, cursor: str) -> None:
        if not cursor.startswith("s=fake;q="):
            raise OSError(22, "Invalid argument")
        self.pos = self._index(cursor)
        self.seek = cursor

    def test_cursor(self, cursor: str) -> bool:
        i = int(self.pos)
        entries = self.journal.entries
        return self.pos == i and 0 <= i < len(entries) and entries[i]["__CURSOR"] == cursor

    def _move(self, step: int) -> Raw | None:
        entries = self.journal.entries
        start = self.pos
        if self.seek is not None and start == int(start):
            i = int(start)  # the first move after a seek may land on the sought entry
        else:
            i = int(start + 0.5) if step > 0 else int(start - 0.5)
            if start == int(start):
                i = int(start) + step
        self.seek = None
        while 0 <= i < len(entries):
            if self._matches(entries[i]):
                self.pos = i
                return dict(entries[i])
            i += step
        return None

    def next(self) -> Raw | None:
        return self._move(1)

    def previous(self) -> Raw | None:
        return self._move(-1)

    def unique(self, field: str) -> set[str]:
        return {str(e[field]) for e in self.journal.entries if field in e}

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.rfd)
            os.close(self.wfd)
