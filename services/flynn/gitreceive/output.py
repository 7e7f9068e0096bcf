"""What a hook prints, which ``git push`` shows as ``remote: ...`` lines (Heroku's style).

A hook's stdout goes to ``git receive-pack``, which relays it to the client on the sideband as it
comes, so everything is written unbuffered. When the client has gone away, receive-pack is gone
too and a write fails with EPIPE: :class:`Output` then calls ``on_gone`` (the hook cancels the
build) instead of raising, and drops whatever is written after.
"""

from __future__ import annotations

import os
from collections.abc import Callable


class Output:
    def __init__(self, fd: int = 1, on_gone: Callable[[], object] | None = None) -> None:
        self.fd = fd
        self.on_gone = on_gone
        self.gone = False

    def write(self, data: bytes) -> None:
        if self.gone or not data:
            return
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.gone = True
            if self.on_gone is not None:
                self.on_gone()

    def line(self, text: str) -> None:
        self.write((text + "\n").encode())

    def step(self, text: str) -> None:
        self.line(f"-----> {text}")

    def info(self, text: str) -> None:
        self.line(f"       {text}")

    def done(self, text: str) -> None:
        self.line(f"=====> {text}")

    def fail(self, text: str) -> None:
        self.line(f" !     {text}")
