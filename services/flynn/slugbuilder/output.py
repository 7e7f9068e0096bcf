"""The build log, in Heroku's style: ``-----> step`` headings, indented details, `` !     `` warnings.

Everything goes to stdout and is flushed at once (the log is relayed to ``git push`` as it
happens); children write to the same descriptors directly. Only the final failure reason goes to
stderr. Nothing printed here ever contains an env value.
"""

from __future__ import annotations

import sys


def step(message: str) -> None:
    print(f"-----> {message}", flush=True)


def info(message: str) -> None:
    print(f"       {message}", flush=True)


def warn(message: str) -> None:
    print(f" !     {message}", flush=True)


def fail(reason: str) -> None:
    sys.stdout.flush()
    print(f"flynn-slugbuilder: {reason}", file=sys.stderr, flush=True)


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns
