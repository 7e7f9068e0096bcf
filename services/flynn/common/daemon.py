"""The entry point every platform daemon shares: read the configuration, run on uvloop.

A bad configuration ends the process with exit code 1 and one line on stderr (``NAME: reason``),
which systemd puts in the journal; otherwise the daemon's ``serve`` coroutine runs on uvloop
(plain asyncio if uvloop is missing) and its return value, if any, is the exit code.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

from flynn.common.errors import ConfigError

C = TypeVar("C")


def run_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to completion on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_daemon(
    name: str, load: Callable[[], C], serve: Callable[[C], Coroutine[Any, Any, int | None]]
) -> NoReturn:
    try:
        cfg = load()
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(run_loop(serve(cfg)) or 0)


def stop_event() -> asyncio.Event:
    """An event set on SIGTERM (systemd stopping the unit) or SIGINT; call it in the running loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
