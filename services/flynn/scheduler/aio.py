"""asyncio helpers.

Python 3.11's :func:`asyncio.wait_for` can swallow a cancellation that arrives just as the awaited
future completes (fixed in 3.12, cpython gh-86296): a loop around it then never ends and a
TaskGroup cancelling it hangs. Waits here use :func:`asyncio.timeout`, which counts
cancellations correctly.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds``; True when it is set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
