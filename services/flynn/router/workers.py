"""Worker processes of one router and the supervising parent (``ROUTER_WORKERS`` > 1).

The parent forks the workers first (before it has an event loop), giving each one end of a
``socketpair`` (its status channel) and the write end of a shared readiness pipe. Each worker is
a whole router (:func:`flynn.router.daemon.serve_worker`): it writes one byte on the pipe once
its listeners are open and answers each query on its channel (a sequence number) with that
number and its status as one JSON line; a late answer to a query that timed out is skipped by
its number. A worker whose channel closes (the parent is gone) stops.

The parent then runs an event loop of its own: it waits for every worker's byte, serves
``GET /status`` summing the channels' answers, registers the router in discoverd, tells systemd
``READY=1`` and pings the watchdog (:class:`flynn.router.instance.Instance`). SIGTERM/SIGINT are
passed to the workers, which stop their routers; SIGUSR1 too (each logs its status). When one
worker dies the others are stopped and the parent exits non-zero, so systemd restarts the unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

STREAM_LIMIT = 16 << 20  # one status line may list many services and backends
STOP_WAIT = 20.0  # seconds the workers get to stop before SIGKILL


class StatusChannel:
    """The parent's end of a worker's status channel."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = asyncio.Lock()
        self._seq = 0
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def query(self) -> dict[str, Any] | None:
        async with self._lock:
            if self._streams is None:
                self._streams = await asyncio.open_connection(sock=self.sock, limit=STREAM_LIMIT)
            reader, writer = self._streams
            self._seq += 1
            writer.write(b"%d\n" % self._seq)
            await writer.drain()
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionResetError("the worker closed its status channel")
                data = json.loads(line)
                if isinstance(data, dict) and data.get("seq") == self._seq:
                    status = data.get("status")
                    return status if isinstance(status, dict) else None
                # the answer to an earlier query that timed out: skip it

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
        else:
            self.sock.close()


async def answer_status(
    sock: socket.socket, status: Callable[[], dict[str, Any]], on_close: Callable[[], None]
) -> None:
    """The worker's end: answer every query with ``status()``; ``on_close()`` when the parent
    closes the channel (it exited)."""
    reader, writer = await asyncio.open_connection(sock=sock, limit=STREAM_LIMIT)
    try:
        while line := await reader.readline():
            try:
                seq = int(line)
            except ValueError:
                continue
            answer = {"seq": seq, "status": status()}
            writer.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
    on_close()


@dataclass
class Worker:
    pid: int
    channel: StatusChannel
    exit_code: int | None = None
    pidfd: int | None = None  # readable once the process has exited


def watch_exits(workers: list[Worker], on_exit: Callable[[], None]) -> None:
    """Call ``on_exit`` on the running loop when a worker exits (pidfds: uvloop keeps SIGCHLD)."""
    loop = asyncio.get_running_loop()
    for w in workers:
        try:
            w.pidfd = os.pidfd_open(w.pid)
        except ProcessLookupError:
            continue  # gone already: reap() finds it
        loop.add_reader(w.pidfd, on_exit)


def unwatch_exits(workers: list[Worker]) -> None:
    loop = asyncio.get_running_loop()
    for w in workers:
        if w.pidfd is not None:
            loop.remove_reader(w.pidfd)
            os.close(w.pidfd)
            w.pidfd = None


@dataclass
class Forked:
    workers: list[Worker]
    ready_fd: int  # read end: one byte per worker that is serving


def fork_workers(n: int, run_worker: Callable[[socket.socket, int], None]) -> Forked:
    """Fork ``n`` workers; each runs ``run_worker(status_sock, ready_write_fd)`` and exits."""
    read_fd, write_fd = os.pipe()
    workers: list[Worker] = []
    for _ in range(n):
        parent_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_fd)
            parent_end.close()
            for w in workers:
                w.channel.sock.close()
            code = 0
            try:
                run_worker(child_end, write_fd)
            except BaseException:
                log.exception("router worker %d failed", os.getpid())
                code = 1
            finally:
                os._exit(code)
        child_end.close()
        workers.append(Worker(pid, StatusChannel(parent_end)))
    os.close(write_fd)
    return Forked(workers, read_fd)


def signal_all(workers: list[Worker], sig: int) -> None:
    for w in workers:
        if w.exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, sig)


def reap(workers: list[Worker]) -> list[Worker]:
    """Collect exited workers (non-blocking); returns those that just exited."""
    ended: list[Worker] = []
    for w in workers:
        if w.exit_code is not None:
            continue
        try:
            pid, status = os.waitpid(w.pid, os.WNOHANG)
        except ChildProcessError:
            w.exit_code = 1
            ended.append(w)
            continue
        if pid == 0:
            continue
        w.exit_code = os.waitstatus_to_exitcode(status)
        ended.append(w)
        if w.pidfd is not None:
            asyncio.get_running_loop().remove_reader(w.pidfd)
    return ended


async def wait_ready(forked: Forked, died: asyncio.Event) -> bool:
    """Wait for one byte per worker on the readiness pipe; False if a worker died first."""
    loop = asyncio.get_running_loop()
    got = 0
    changed = asyncio.Event()

    def readable() -> None:
        nonlocal got
        try:
            chunk = os.read(forked.ready_fd, 64)
        except BlockingIOError:
            return
        if not chunk:
            loop.remove_reader(forked.ready_fd)
        got += len(chunk)
        changed.set()

    os.set_blocking(forked.ready_fd, False)
    loop.add_reader(forked.ready_fd, readable)
    try:
        while got < len(forked.workers):
            if died.is_set():
                return False
            changed.clear()
            waiter = loop.create_task(changed.wait())
            dier = loop.create_task(died.wait())
            await asyncio.wait({waiter, dier}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            dier.cancel()
        return True
    finally:
        loop.remove_reader(forked.ready_fd)
        os.close(forked.ready_fd)


async def stop_workers(workers: list[Worker], sig: int = signal.SIGTERM) -> None:
    signal_all(workers, sig)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOP_WAIT
    while any(w.exit_code is None for w in workers):
        reap(workers)
        if loop.time() > deadline:
            log.warning("router workers did not stop within %gs: killing them", STOP_WAIT)
            signal_all(workers, signal.SIGKILL)
            deadline = loop.time() + 5
        await asyncio.sleep(0.05)
