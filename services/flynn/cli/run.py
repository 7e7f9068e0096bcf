"""``flynn run``: a one-off job, attached (streams, exit code, signals) or detached (``-d``).

Attached, the job is started with ``attach: true`` (the host starts it only once the attach
WebSocket connects) and this process becomes its terminal: stdin is sent as it is read (EOF
closes the job's stdin), stdout and stderr are written as they arrive, and the job's exit
status is this command's. Ctrl-C (SIGINT) and SIGTERM are sent to the job; a third Ctrl-C sends
SIGKILL. The host API has no TTY mode, so the job sees pipes even from a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, BinaryIO

import click

from flynn.cli.context import app_and_client, app_options, fail, state
from flynn.cli.env import parse_pairs

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from flynn.cli.rcfile import Cluster
    from flynn.controller.client import Attachment, NewJob

KILL_AFTER_INTERRUPTS = 3


def exit_code(status: int) -> int:
    """A job's exit status as this process's (a negative status is a signal: 128 + signal)."""
    if status < 0:
        return min(128 + -status, 255)
    return min(status, 255)


class _StdinPump:
    """Reads stdin in a daemon thread (works for ttys, pipes and files alike) into the loop."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._fd = fd
        self._loop = loop
        threading.Thread(target=self._read, name="flynn-run-stdin", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError:
                data = b""
            with contextlib.suppress(RuntimeError):  # the loop is gone: the job is over
                self._loop.call_soon_threadsafe(self.queue.put_nowait, data)
            if not data:
                return


async def stream_job(
    att: Attachment,
    *,
    stdin_fd: int | None,
    stdout: BinaryIO,
    stderr: BinaryIO,
    handle_signals: bool = True,
) -> int | None:
    """Connect a job's attach stream to local stdio; the job's exit status (None if never told)."""
    loop = asyncio.get_running_loop()
    interrupts = 0
    pending: set[asyncio.Task[None]] = set()

    def send_signal(name: str) -> None:
        task = loop.create_task(_quiet(lambda: att.signal(name)))
        pending.add(task)
        task.add_done_callback(pending.discard)

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        send_signal("SIGKILL" if interrupts >= KILL_AFTER_INTERRUPTS else "SIGINT")

    async def pump_stdin() -> None:
        if stdin_fd is None:
            await att.close_stdin()
            return
        pump = _StdinPump(stdin_fd, loop)
        while True:
            data = await pump.queue.get()
            if not data:
                await att.close_stdin()
                return
            await att.write(data)

    installed: list[signal.Signals] = []
    if handle_signals:
        for sig, handler in ((signal.SIGINT, on_interrupt), (signal.SIGTERM, lambda: send_signal("SIGTERM"))):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
    stdin_task = loop.create_task(_quiet(pump_stdin))
    try:
        async for chunk in att:
            out = stdout if chunk.stream == 1 else stderr
            with contextlib.suppress(BrokenPipeError):
                out.write(chunk.data)
                out.flush()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        stdin_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stdin_task
        await att.close()
    return att.exit_status


async def _quiet(send: Callable[[], Awaitable[None]]) -> None:
    """Send on the WebSocket, ignoring that it closed meanwhile (the job ended). The coroutine is
    made here, so a task cancelled before it ran leaves no coroutine never awaited."""
    with contextlib.suppress(ConnectionError, RuntimeError):
        await send()


async def _attached(cluster: Cluster, app_id: str, job_id: str) -> int | None:
    from flynn.controller.client import AsyncClient

    async with AsyncClient(
        cluster.controller_url, cluster.key, tls_pin=cluster.tls_pin or None, timeout=60.0
    ) as client:
        att = await client.attach(app_id, job_id)
        return await stream_job(att, stdin_fd=_stdin_fd(), stdout=sys.stdout.buffer, stderr=sys.stderr.buffer)


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno() if sys.stdin is not None else None
    except (OSError, ValueError):
        return None


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-d", "--detached", is_flag=True, help="start the job and print its id")
@click.option(
    "-r", "--release", "release_id", metavar="RELEASE", help="the release (default: the current one)"
)
@click.option(
    "-e", "--env", "env_pairs", multiple=True, metavar="KEY=VALUE", help="extra environment (repeatable)"
)
@app_options()
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="[--] CMD [ARG]...")
@click.pass_context
def run(
    ctx: click.Context,
    detached: bool,
    release_id: str | None,
    env_pairs: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Run a one-off job of the app."""
    args = list(command)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        fail("no command given: flynn run [--] CMD [ARG]...")
    extra_env = parse_pairs(env_pairs)
    name, client = app_and_client()
    app = client.get_app(name)
    job: NewJob = {"args": args, "attach": not detached}
    if release_id:
        job["release_id"] = release_id
    if extra_env:
        job["env"] = extra_env
    started = client.run_job(app["id"], job)
    if detached:
        click.echo(started["id"])
        return
    status = asyncio.run(_attached(state().cluster(), app["id"], started["id"]))
    if status is None:
        fail(f"lost the connection to job {started['id']} before it exited")
    ctx.exit(exit_code(status))


def register(group: click.Group) -> None:
    group.add_command(run)
