"""systemd ``EnvironmentFile=`` files as the platform writes them, and reads them back.

Every value is double-quoted with ``\\ " ` $`` escaped (systemd keeps newlines inside quotes as
part of the value), one ``NAME="value"`` per variable, sorted by name. :func:`parse_env` reads
exactly that form back (it is not a general shell parser), and :func:`digest` identifies an env
without revealing it: the host API answers digests, never values (they hold secrets).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

_NEEDS_ESCAPE = re.compile(r'(["\\`$])')
_LINE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"\n', re.DOTALL)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def quote_env_value(value: str) -> str:
    return '"' + _NEEDS_ESCAPE.sub(r"\\\1", value) + '"'


def render_env(env: Mapping[str, str]) -> str:
    return "".join(f"{name}={quote_env_value(value)}\n" for name, value in sorted(env.items()))


def parse_env(text: str) -> dict[str, str]:
    """The variables of a file written by :func:`render_env`; ValueError on anything else."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _LINE.match(text, pos)
        if m is None:
            line = text[pos:].split("\n", 1)[0]
            raise ValueError(f'not a NAME="value" line: {line[:60]!r}')
        out[m.group(1)] = _UNESCAPE.sub(r"\1", m.group(2))
        pos = m.end()
    return out


def digest(env: Mapping[str, str]) -> str:
    """sha256 of the rendered env: equal envs, equal digests."""
    return hashlib.sha256(render_env(env).encode()).hexdigest()
