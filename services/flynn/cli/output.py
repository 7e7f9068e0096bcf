"""Output helpers: aligned tables as Flynn prints them, JSON, relative times."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

import click


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Columns padded to their widest cell, two spaces apart, the last one not padded."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
        click.echo("  ".join(padded).rstrip())


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed


def ago(value: str | None, now: datetime.datetime | None = None) -> str:
    """``"6 seconds ago"`` for an RFC 3339 time (the raw string when it does not parse)."""
    when = parse_time(value)
    if when is None:
        return value or ""
    now = now or datetime.datetime.now(datetime.UTC)
    seconds = int((now - when).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return f"{seconds} second{'s' if seconds != 1 else ''} ago"


def clock() -> str:
    """The local time as Flynn prints it before event lines: ``15:04:05.000``."""
    now = datetime.datetime.now()
    return now.strftime("%H:%M:%S.") + f"{now.microsecond // 1000:03d}"
