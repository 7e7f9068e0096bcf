"""systemd readiness and watchdog notifications (``Type=notify`` units).

Uses systemd-python's ``systemd.daemon.notify`` (Debian's python3-systemd) when it is importable
and otherwise speaks the sd_notify datagram protocol itself, so services also run outside systemd
(tests, a developer's shell) where ``NOTIFY_SOCKET`` is unset and every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

NotifyFn = Callable[[str], bool]


def _socket_notify(state: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True


def _load_notify() -> NotifyFn:
    try:
        from systemd import daemon
    except ImportError:
        return _socket_notify

    def notify(state: str) -> bool:
        return bool(daemon.notify(state))

    return notify


_notify: NotifyFn = _load_notify()


def notify(state: str) -> bool:
    """Send one sd_notify state string; returns False when not supervised by systemd."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    return _notify(state)


def ready(status: str = "") -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog_interval() -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, the interval to ping at, or None when not enabled."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


async def watchdog_loop(healthy: Callable[[], bool] = lambda: True) -> None:
    """Ping the systemd watchdog while ``healthy()`` holds; returns at once when not enabled."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        if healthy():
            notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def start_watchdog(healthy: Callable[[], bool] = lambda: True) -> asyncio.Task[None] | None:
    if watchdog_interval() is None:
        return None
    return asyncio.get_running_loop().create_task(watchdog_loop(healthy), name="sd-watchdog")


async def cancel(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
