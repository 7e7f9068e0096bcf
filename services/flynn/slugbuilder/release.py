"""The output of ``bin/release``: YAML, of which only ``default_process_types`` is used.

No YAML library is installed on hosts, and buildpacks print a small, fixed shape::

    ---
    addons: []
    config_vars: {}
    default_process_types:
      web: python app.py
      worker: "python worker.py"

so this reads exactly that: top-level ``key: value`` lines, the indented block (or ``{}``, ``~``,
``null``, nothing) under ``default_process_types``, plain, single- or double-quoted values, and
comments. Anything else in that block is a one-line error naming the line; other keys' blocks are
skipped.
"""

from __future__ import annotations

import json
import re

from flynn.slugbuilder.errors import BuildError

KEY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\s*:(?:\s+(.*))?$")
EMPTY = ("", "{}", "~", "null")


def scalar(text: str, where: str) -> str:
    text = text.strip()
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'"):
            raise BuildError(f"{where}: unterminated single-quoted value")
        return text[1:-1].replace("''", "'")
    if text.startswith('"'):
        try:
            value = json.loads(text)
        except ValueError:
            raise BuildError(f"{where}: malformed double-quoted value") from None
        if not isinstance(value, str):
            raise BuildError(f"{where}: malformed double-quoted value")
        return value
    comment = re.search(r"\s#", text)
    return (text[: comment.start()] if comment else text).strip()


def parse(text: str, who: str = "bin/release") -> dict[str, str]:
    """``default_process_types`` as ``{TYPE: COMMAND}`` (empty when there are none)."""
    processes: dict[str, str] = {}
    section: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{who} output line {number}"
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        if not line[0].isspace():
            match = KEY_RE.match(line)
            if match is None:
                raise BuildError(f"{where}: expected 'key: value', got {stripped[:60]!r}")
            section = match.group(1)
            value = (match.group(2) or "").strip()
            if section == "default_process_types" and scalar(value, where) not in EMPTY:
                raise BuildError(f"{where}: default_process_types must be a block of 'TYPE: COMMAND' lines")
            continue
        if section != "default_process_types":
            continue  # addons, config_vars, ...: not used
        match = KEY_RE.match(stripped)
        if match is None:
            raise BuildError(f"{where}: expected 'TYPE: COMMAND', got {stripped[:60]!r}")
        name = scalar(match.group(1), where)
        command = scalar(match.group(2) or "", where)
        if not command:
            raise BuildError(f"{where}: process type {name!r} has no command")
        processes[name] = command
    return processes
