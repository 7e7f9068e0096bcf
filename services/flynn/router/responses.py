"""Answers the router makes itself: errors (plain text), the 503 page, redirects to HTTPS."""

from __future__ import annotations

from http import HTTPStatus

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}

MESSAGES: dict[int, bytes] = {
    400: b"bad request",
    404: b"no route for this host and path",
    405: b"method not allowed",
    408: b"request timeout",
    413: b"request body too large",
    414: b"request target too long",
    417: b"expectation failed",
    431: b"request header fields too large",
    500: b"internal router error",
    501: b"transfer coding not implemented",
    502: b"bad gateway: the backend failed",
    503: b"service unavailable: no backend",
    504: b"gateway timeout",
    505: b"HTTP version not supported",
}


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, reason(status))


class Answer:
    """A complete response of the router's own: status, extra header fields, body."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes | None = None,
        *,
        content_type: bytes = b"text/plain; charset=utf-8",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status = status
        self.body = body if body is not None else MESSAGES.get(status, reason(status).lower()) + b"\n"
        self.content_type = content_type
        self.headers = headers or []

    def http1(self, *, close: bool, head_only: bool = False, request_id: bytes | None = None) -> bytes:
        parts = [
            status_line(self.status),
            b"Content-Type: ",
            self.content_type,
            b"\r\nContent-Length: %d\r\n" % len(self.body),
        ]
        for name, value in self.headers:
            parts += (name, b": ", value, b"\r\n")
        if request_id is not None:
            parts += (b"X-Request-Id: ", request_id, b"\r\n")
        parts.append(b"Connection: close\r\n\r\n" if close else b"\r\n")
        if not head_only:
            parts.append(self.body)
        return b"".join(parts)

    def h2_headers(self, request_id: bytes | None = None) -> list[tuple[bytes, bytes]]:
        out = [
            (b":status", b"%d" % self.status),
            (b"content-type", self.content_type),
            (b"content-length", b"%d" % len(self.body)),
        ]
        out += [(n.lower(), v) for n, v in self.headers]
        if request_id is not None:
            out.append((b"x-request-id", request_id))
        return out


def redirect(location: bytes, method: bytes) -> Answer:
    """301 for GET/HEAD (what browsers expect), 308 otherwise (keeps the method and body)."""
    status = 301 if method in (b"GET", b"HEAD") else 308
    return Answer(status, b"", headers=[(b"Location", location)])
