"""The build's output: relayed to the push as it comes, except the ``FLYNN-SLUG {...}`` line.

flynn-slugbuilder's last stdout line on success is ``FLYNN-SLUG {"sha256", "size",
"processes": {TYPE: COMMAND}}`` (docs/gitreceive.md); :class:`Relay` passes every other byte on
at once (a partial line too, unless it may be the start of that line, so progress output without
a newline still shows) and keeps the slug line for :func:`parse_slug`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

PREFIX = b"FLYNN-SLUG "
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
TYPE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,29})$")  # the controller's process type names
RESERVED_TYPES = frozenset({"slugbuilder"})  # holds the build's limits (flynn limit set slugbuilder)
MAX_LINE = 1 << 20


class SlugError(Exception):
    """The build's FLYNN-SLUG line is missing or malformed."""


@dataclass(frozen=True)
class Slug:
    sha256: str
    size: int
    processes: dict[str, str]


def parse_slug(line: str) -> Slug:
    if not line.startswith(PREFIX.decode()):
        raise SlugError("the build printed no FLYNN-SLUG line")
    try:
        data = json.loads(line[len(PREFIX) :])
    except json.JSONDecodeError:
        raise SlugError("the build's FLYNN-SLUG line is not JSON") from None
    if not isinstance(data, dict):
        raise SlugError("the build's FLYNN-SLUG line is not a JSON object")
    sha, size, processes = data.get("sha256"), data.get("size"), data.get("processes")
    if not isinstance(sha, str) or not SHA256_RE.match(sha):
        raise SlugError("the build's FLYNN-SLUG line has no valid sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise SlugError("the build's FLYNN-SLUG line has no valid size")
    if not isinstance(processes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in processes.items()
    ):
        raise SlugError("the build's FLYNN-SLUG processes are not {TYPE: COMMAND}")
    if not processes:
        raise SlugError("the app declares no process types: add a Procfile (web: COMMAND)")
    for name, command in processes.items():
        if not TYPE_RE.match(name):
            raise SlugError(f"process type {name[:40]!r} is not a valid name (a-z, 0-9, '-', up to 30)")
        if name in RESERVED_TYPES:
            raise SlugError(f"process type {name!r} is reserved (it holds the build's limits)")
        if not command.strip():
            raise SlugError(f"process type {name!r} has an empty command")
    return Slug(sha, size, dict(processes))


class Relay:
    """Feed it the build's stdout bytes; ``write`` gets everything but the slug line."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write
        self.slug_line: str | None = None
        self._pending = b""  # a line start that may be PREFIX
        self._in_slug = False
        self._slug = b""
        self._at_line_start = True

    def feed(self, data: bytes) -> None:
        while data:
            if self._in_slug:
                end = data.find(b"\n")
                if end < 0:
                    self._slug = (self._slug + data)[:MAX_LINE]
                    return
                self._slug = (self._slug + data[:end])[:MAX_LINE]
                self.slug_line = self._slug.decode(errors="replace").rstrip("\r")
                self._in_slug, self._slug = False, b""
                data = data[end + 1 :]
                continue
            if self._pending or self._at_line_start:
                head = self._pending + data
                if len(head) < len(PREFIX) and PREFIX.startswith(head):
                    self._pending, data = head, b""
                    return
                self._pending = b""
                if head.startswith(PREFIX):
                    self._in_slug = True
                    data = head[len(PREFIX) :]
                    self._slug = PREFIX
                    continue
                data = head
            end = data.find(b"\n")
            if end < 0:
                self.write(data)
                self._at_line_start = False
                return
            self.write(data[: end + 1])
            self._at_line_start = True
            data = data[end + 1 :]

    def close(self) -> None:
        """The output ended: a held partial line is written, an unterminated slug line kept."""
        if self._pending:
            self.write(self._pending)
            self._pending = b""
        if self._in_slug:
            self.slug_line = self._slug.decode(errors="replace").rstrip("\r")
            self._in_slug = False
