"""Procfile parsing: ``TYPE: COMMAND`` lines (the command runs with ``/bin/sh -c``).

Process type names follow the controller's rule (``^[a-z0-9][a-z0-9-]{0,29}$``); ``slugbuilder``
is reserved (its ``resources`` hold the build's memory limit, docs/gitreceive.md). Every mistake is
a one-line error naming the line.
"""

from __future__ import annotations

import re

from flynn.slugbuilder.errors import BuildError

TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}$")
LINE_RE = re.compile(r"^([^:\s]+)\s*:\s*(.*)$")
RESERVED = frozenset({"slugbuilder"})


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def check_type(name: str, where: str) -> None:
    if not TYPE_RE.match(name):
        raise BuildError(
            f"{where}: process type {_shown(name)} must be 1-30 lowercase letters, digits or '-', "
            "starting with a letter or digit"
        )
    if name in RESERVED:
        raise BuildError(f"{where}: process type {name!r} is reserved (it holds the build's limits)")


def parse(text: str) -> dict[str, str]:
    processes: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"Procfile line {number}"
        match = LINE_RE.match(line)
        if match is None:
            raise BuildError(f"{where}: expected 'TYPE: COMMAND', got {_shown(line)}")
        name, command = match.group(1), match.group(2).strip()
        check_type(name, where)
        if not command:
            raise BuildError(f"{where}: process type {name!r} has no command")
        if name in processes:
            raise BuildError(f"{where}: process type {name!r} is declared twice")
        processes[name] = command
    return processes
