"""Header handling shared by the HTTP/1.1 and HTTP/2 frontends and the upstream side.

Names are compared lower-cased (request names are first looked up as sent, see
``field_class``); values stay bytes end to end (no decoding on the hot path).
"""

from __future__ import annotations

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

# Field names as clients spell them, to their class without lower-casing each name first (a
# method call per field): the names above and common ones forwarded as they are (H_PASS), in
# lower case and in Canonical-Case. A name not found here is lower-cased and looked up above.
H_PASS = 0
_COMMON = (
    b"accept",
    b"accept-encoding",
    b"accept-language",
    b"authorization",
    b"cache-control",
    b"content-type",
    b"if-modified-since",
    b"if-none-match",
    b"origin",
    b"pragma",
    b"referer",
    b"user-agent",
    b"x-requested-with",
    b"sec-fetch-dest",
    b"sec-fetch-mode",
    b"sec-fetch-site",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
    b"upgrade-insecure-requests",
)


def _canonical(name: bytes) -> bytes:
    return b"-".join([part[:1].upper() + part[1:] for part in name.split(b"-")])


REQUEST_FIELDS_AS_SENT: dict[bytes, int] = {}
for _name, _code in [*REQUEST_FIELDS.items(), *[(n, H_PASS) for n in _COMMON]]:
    REQUEST_FIELDS_AS_SENT[_name] = _code
    REQUEST_FIELDS_AS_SENT[_canonical(_name)] = _code
REQUEST_FIELDS_AS_SENT[b"X-Request-ID"] = H_REQUEST_ID
REQUEST_FIELDS_AS_SENT[b"TE"] = H_DROP
REQUEST_FIELDS_AS_SENT[b"HTTP2-Settings"] = H_DROP


def field_class(name: bytes) -> int:
    """The class of request field ``name`` (H_PASS when it is forwarded as it is).

    The fields of nearly every request are compared first (a length check and a ``memcmp``
    compiled): a dict lookup hashes the new name object, ~500 instructions."""
    if name == b"Host" or name == b"host":  # noqa: PLR1714 - a set would hash the name
        return H_HOST
    if name == b"User-Agent" or name == b"user-agent" or name == b"Accept" or name == b"accept":  # noqa: PLR1714
        return H_PASS
    code = REQUEST_FIELDS_AS_SENT.get(name)
    if code is None:
        code = REQUEST_FIELDS.get(name.lower(), H_PASS)
    return code


# Methods that may be sent again after a connection broke (RFC 9110 9.2.2), when bodiless.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_REQUEST_ID_OK = re.compile(rb"[A-Za-z0-9+/=._:-]{1,200}").fullmatch


class RequestIds:
    """Request ids: 16 random hex digits per process, then a 16-digit counter. Unique without a
    system call per request; not secret (they are logged and echoed to backends).

    Formatting the counter cost more than the rest of a request's id handling, so the last three
    hex digits come from a table and the rest is formatted once per 4096 ids."""

    __slots__ = ("_counter", "_high", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex().encode()
        self._counter = 0
        self._high = b""

    def next(self) -> bytes:
        n = self._counter + 1
        self._counter = n
        low = n & 0xFFF
        if low == 0 or not self._high:
            self._high = b"%s%013x" % (self._prefix, n >> 12)
        return self._high + _LOW3[low]


_LOW3: list[bytes] = [b"%03x" % i for i in range(4096)]


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
