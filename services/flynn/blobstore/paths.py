"""Blob paths: ``/``-separated segments of ``[A-Za-z0-9._-]``, no ``.``/``..`` segments, ≤ 1024 bytes.

Paths are stored and answered in their canonical form, with one leading ``/`` (``/slugs/a/b.tgz``).
The HTTP layer hands over the percent-decoded request path; anything outside the alphabet (NUL,
``%``, spaces, non-ASCII), empty segments (``//``, a trailing ``/``) and dot segments are refused,
so a path can never name a "directory" or climb out of one. ``/status`` is the health check and
is reserved.
"""

from __future__ import annotations

import re

MAX_PATH_BYTES = 1024
RESERVED = frozenset({"/status"})
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_PREFIX = re.compile(r"[A-Za-z0-9._/-]*")


class InvalidPath(ValueError):
    """The path is not a valid blob path; the message says why (one line, safe to show)."""


def validate_path(path: str) -> str:
    """The canonical form of ``path`` (leading ``/``), or :class:`InvalidPath`."""
    if not path.startswith("/"):
        raise InvalidPath("a blob path starts with /")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidPath(f"a blob path is at most {MAX_PATH_BYTES} bytes")
    segments = path[1:].split("/")
    for segment in segments:
        if not segment:
            raise InvalidPath("a blob path has no empty segment (no // and no trailing /)")
        if _SEGMENT.fullmatch(segment) is None:
            raise InvalidPath("a blob path segment is made of A-Z a-z 0-9 . _ - only")
        if segment in (".", ".."):
            raise InvalidPath("a blob path has no . or .. segment")
    if path in RESERVED:
        raise InvalidPath(f"{path} is reserved")
    return path


def validate_prefix(prefix: str) -> str:
    """A listing prefix in canonical form: ``""`` or ``"/"`` list everything; ``a/b`` means ``/a/b``."""
    if not prefix.startswith("/"):
        prefix = "/" + prefix
    if len(prefix.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidPath(f"a prefix is at most {MAX_PATH_BYTES} bytes")
    if _PREFIX.fullmatch(prefix) is None:
        raise InvalidPath("a prefix is made of A-Z a-z 0-9 . _ - / only")
    return prefix
