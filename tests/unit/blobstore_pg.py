"""Helpers of the blobstore tests: a migrated backend on a fresh database, and the real daemon.

The database server is tests/pg.py's throwaway PostgreSQL 15 (one per test module); every test
gets its own database. :class:`BlobstoreProcess` runs ``python -m flynn.blobstore.daemon`` as a
child process with a ``NOTIFY_SOCKET`` of its own, so readiness is the daemon's real sd_notify
``READY=1``, and measures its memory from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from flynn.blobstore.backends.postgres import PostgresBackend
from tests.pg import PostgresServer, free_port

REPO = Path(__file__).resolve().parents[2]
ROLE = "blobstore"
T = TypeVar("T")


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


@contextlib.asynccontextmanager
async def fresh_backend(pg: PostgresServer, **kw: Any) -> AsyncIterator[PostgresBackend]:
    """A started (migrated) backend on a new empty database."""
    url = pg.create_database()
    backend = PostgresBackend(url, **{"pool_size": 10, **kw})
    await backend.start(wait=10)
    try:
        yield backend
    finally:
        await backend.stop()


def count_rows(pg: PostgresServer, url: str) -> tuple[int, int]:
    """(files, chunks) as committed, seen from a separate superuser session."""
    with pg.superuser(dbname(url)) as conn:
        files = conn.execute("SELECT count(*) FROM files").fetchone()
        chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()
    assert files is not None
    assert chunks is not None
    return int(str(files[0])), int(str(chunks[0]))


async def settled(pg: PostgresServer, url: str, expected: tuple[int, int]) -> None:
    """Wait for the sweeper to have removed deleted versions: (files, chunks) == expected."""
    await wait_until(
        lambda: count_rows(pg, url) == expected, f"(files, chunks) == {expected} after the sweep"
    )


def writing_sessions(pg: PostgresServer, url: str) -> int:
    """Sessions of the database inside a transaction that has written something (has an xid)."""
    with pg.superuser() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_xid IS NOT NULL"
            " AND pid <> pg_backend_pid()",
            (dbname(url),),
        ).fetchone()
    assert row is not None
    return int(str(row[0]))


def open_reading_cursors(pg: PostgresServer, url: str) -> int:
    """Sessions of the database inside a transaction whose last statement read chunks."""
    with pg.superuser() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND xact_start IS NOT NULL"
            " AND (query ILIKE 'FETCH%%' OR query ILIKE 'DECLARE%%')",
            (dbname(url),),
        ).fetchone()
    assert row is not None
    return int(str(row[0]))


def sessions(pg: PostgresServer, url: str) -> list[tuple[object, ...]]:
    """(pid, state, wait event, waiting for pids, query) of every session of the database."""
    with pg.superuser() as conn:
        return list(
            conn.execute(
                "SELECT pid, state, wait_event_type || ':' || wait_event, pg_blocking_pids(pid),"
                " left(query, 100) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname(url),),
            )
        )


async def within(aw: Awaitable[T], pg: PostgresServer, url: str, what: str, timeout: float = 60.0) -> T:
    """``await aw``; after ``timeout`` s fail with what the database sessions and the tasks were
    doing at that moment (taken before ``aw`` is cancelled)."""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait([task], timeout=timeout)
    if task in done:
        return task.result()
    stacks = []
    for other in asyncio.all_tasks():
        frames = other.get_stack()
        where = " -> ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames)
        stacks.append(f"  {other.get_name()}: {where}")
    lines = "\n".join(f"  {row}" for row in sessions(pg, url))
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise AssertionError(
        f"{what} not done after {timeout}s\nsessions:\n{lines}\ntasks:\n" + "\n".join(stacks)
    )


async def wait_until(check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` s (a bound, not a claim)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS``/``VmHWM``... of a process, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def reset_peak_rss(pid: int) -> None:
    """Reset the process's peak RSS (VmHWM) to its current RSS (``clear_refs`` mode 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class BlobstoreProcess:
    """``flynn-blobstore`` as a child process, ready when it has sent READY=1."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.port = int(env.get("BLOBSTORE_PORT") or free_port())
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("BACKEND_", "BLOBSTORE_", "DISCOVERD"))
            },
            "BLOBSTORE_PORT": str(self.port),
            "BLOBSTORE_LISTEN_IP": "127.0.0.1",
            "PYTHONPATH": str(REPO / "services"),
            **env,
        }
        self.env.pop("JOURNAL_STREAM", None)
        self.env.pop("INVOCATION_ID", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None
        self.stderr_path = tmp / f"blobstore-{self.port}.log"
        self.notifications: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        sock_path = self.tmp / f"notify-{self.port}.sock"
        sock_path.unlink(missing_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(sock_path))
        self.notify.setblocking(False)
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flynn.blobstore.daemon"],
                env={**self.env, "NOTIFY_SOCKET": str(sock_path)},
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=self.tmp,
            )

    def _drain_notify(self) -> None:
        assert self.notify is not None
        while True:
            try:
                data = self.notify.recv(4096)
            except BlockingIOError:
                return
            self.notifications.extend(data.decode().splitlines())

    async def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            self._drain_notify()
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"blobstore exited with {self.proc.returncode}: {self.log()[-2000:]}")
            return "READY=1" in self.notifications

        await wait_until(ready, "READY=1 from flynn-blobstore", timeout)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        proc = self.proc
        await wait_until(lambda: proc.poll() is not None, "flynn-blobstore to exit", timeout)
        return int(proc.returncode)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.notify is not None:
            self.notify.close()
            self.notify = None
