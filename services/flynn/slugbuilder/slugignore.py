"""``.slugignore``: gitignore-like patterns of files removed from the source before compiling.

One pattern per line; blank lines and ``#`` comments are skipped, ``\\`` escapes the next
character. A pattern without a slash (other than a trailing one) matches a name at any depth
(``*.psd``); one with a slash is relative to the app's root (``/docs``, ``spec/fixtures``); a
trailing ``/`` matches directories only; ``*`` and ``?`` do not cross ``/``, ``**`` does, ``[...]``
is a character class; ``!`` re-includes what an earlier pattern removed (the last matching pattern
wins), except inside a removed directory, which goes whole.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern[str]
    dir_only: bool
    negate: bool
    text: str

    def matches(self, rel: str, is_dir: bool) -> bool:
        return (is_dir or not self.dir_only) and self.regex.match(rel) is not None


def _translate(glob: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
            continue
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := glob.find("]", i + 2)) != -1:
            body = glob[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def parse(text: str) -> list[Pattern]:
    patterns: list[Pattern] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        body = line[1:] if negate else line
        dir_only = body.endswith("/")
        body = body.rstrip("/")
        anchored = "/" in body
        body = body.lstrip("/")
        if not body:
            continue
        regex = _translate(body)
        regex = f"^{regex}$" if anchored else f"^(?:.*/)?{regex}$"
        try:
            compiled = re.compile(regex)
        except re.error:
            continue  # a malformed class: matches nothing, like git
        patterns.append(Pattern(compiled, dir_only, negate, line))
    return patterns


def ignored(patterns: list[Pattern], rel: str, is_dir: bool) -> bool:
    result = False
    for pattern in patterns:
        if pattern.matches(rel, is_dir):
            result = not pattern.negate
    return result


def apply(root: Path, patterns: list[Pattern]) -> list[str]:
    """Remove what ``patterns`` match under ``root``; returns the removed paths (relative)."""
    removed: list[str] = []
    if not patterns:
        return removed
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in sorted(dirnames):
            path = base / name
            rel = path.relative_to(root).as_posix()
            is_dir = not path.is_symlink()
            if ignored(patterns, rel, is_dir):
                if is_dir:
                    shutil.rmtree(path)
                else:
                    path.unlink()
                dirnames.remove(name)
                removed.append(rel + ("/" if is_dir else ""))
        for name in sorted(filenames):
            path = base / name
            rel = path.relative_to(root).as_posix()
            if ignored(patterns, rel, False):
                path.unlink()
                removed.append(rel)
    return removed
