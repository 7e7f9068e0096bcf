"""Header handling shared by the HTTP/1.1 and HTTP/2 frontends and the upstream side.

Names are compared lower-cased; values stay bytes end to end (no decoding on the hot path).
"""

from __future__ import annotations

import itertools
import os
import re

# Classes of request header fields (values of REQUEST_FIELDS); anything else is forwarded as is.
H_HOST = 1
H_CONTENT_LENGTH = 2
H_TRANSFER_ENCODING = 3
H_CONNECTION = 4
H_DROP = 5  # hop-by-hop, or replaced by the router's own value
H_UPGRADE = 6
H_XFF = 7
H_REQUEST_ID = 8
H_COOKIE = 9

REQUEST_FIELDS: dict[bytes, int] = {
    b"host": H_HOST,
    b"content-length": H_CONTENT_LENGTH,
    b"transfer-encoding": H_TRANSFER_ENCODING,
    b"connection": H_CONNECTION,
    b"keep-alive": H_DROP,
    b"proxy-connection": H_DROP,
    b"proxy-authorization": H_DROP,
    b"te": H_DROP,
    b"trailer": H_DROP,
    b"http2-settings": H_DROP,
    b"x-forwarded-proto": H_DROP,
    b"x-forwarded-port": H_DROP,
    b"upgrade": H_UPGRADE,
    b"x-forwarded-for": H_XFF,
    b"x-request-id": H_REQUEST_ID,
    b"cookie": H_COOKIE,
}

# Classes of response header fields from upstreams.
R_CONTENT_LENGTH = 1
R_TRANSFER_ENCODING = 2
R_DROP = 3
R_CONNECTION = 4
R_UPGRADE = 5

RESPONSE_FIELDS: dict[bytes, int] = {
    b"content-length": R_CONTENT_LENGTH,
    b"transfer-encoding": R_TRANSFER_ENCODING,
    b"connection": R_CONNECTION,
    b"keep-alive": R_DROP,
    b"proxy-connection": R_DROP,
    b"proxy-authenticate": R_DROP,
    b"trailer": R_DROP,
    b"upgrade": R_UPGRADE,
    b"te": R_DROP,
}

# Methods that may be sent again after a connection broke (RFC 9110 9.2.2), when bodiless.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_REQUEST_ID_OK = re.compile(rb"[A-Za-z0-9+/=._:-]{1,200}").fullmatch


class RequestIds:
    """Request ids: 16 random hex digits per process, then a 16-digit counter. Unique without a
    system call per request; not secret (they are logged and echoed to backends)."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex().encode()
        self._counter = itertools.count(1)

    def next(self) -> bytes:
        return b"%s%016x" % (self._prefix, next(self._counter))


def valid_request_id(value: bytes) -> bool:
    return _REQUEST_ID_OK(value) is not None


def normalize_host(raw: bytes) -> bytes | None:
    """Lower-cased host without port or trailing dot; ``None`` when it is not a host."""
    host = raw.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        if end < 0:
            return None
        rest = host[end + 1 :]
        if rest and not (rest[:1] == b":" and rest[1:].isdigit()):
            return None
        return host[: end + 1]
    colon = host.rfind(b":")
    if colon >= 0:
        port = host[colon + 1 :]
        if port and not port.isdigit():
            return None
        host = host[:colon]
    if host.endswith(b"."):
        host = host[:-1]
    if (
        not host
        or host.find(b"/") >= 0
        or host.find(b" ") >= 0
        or host.find(b"@") >= 0
        or host.find(b"\\") >= 0
    ):
        return None
    return host


def connection_tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def cookie_value(cookies: list[bytes], name: bytes) -> bytes | None:
    """The value of cookie ``name`` in the request's Cookie header fields, if any."""
    needle = name + b"="
    for header in cookies:
        if header.find(needle) < 0:  # (not "in": bytes.__contains__ tries an int first)
            continue
        for raw in header.split(b";"):
            part = raw.strip()
            if part.startswith(needle):
                return part[len(needle) :].strip(b'"')
    return None


def sticky_set_cookie(name: bytes, token: bytes) -> bytes:
    return name + b"=" + token + b"; Path=/; HttpOnly; SameSite=Lax"


def https_location(host: bytes, target: bytes) -> bytes:
    """``Location`` for a redirect to HTTPS: same host (port dropped) and target."""
    h = host
    if not h.startswith(b"["):
        colon = h.rfind(b":")
        if colon >= 0:
            h = h[:colon]
    else:
        end = h.find(b"]")
        h = h[: end + 1]
    if not target.startswith(b"/"):
        target = b"/"
    return b"https://" + h + target
