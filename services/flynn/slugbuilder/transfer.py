"""HTTP GET to a file and PUT from a file, streamed in 1 MiB chunks (slugs and caches can be large).

Plain http(s) with the standard library: the blobstore needs no auth on the cluster network
(docs/blobstore.md). A URL is shown in messages without its user-info or query (they may hold
credentials).
"""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from flynn.slugbuilder.errors import BuildError

CHUNK = 1 << 20
TIMEOUT = 120.0  # per socket operation, not for the whole transfer


def shown(url: str) -> str:
    """``url`` without user-info, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<invalid URL>"
    return f"{parts.scheme}://{host}{parts.path}"


def _connect(url: str) -> tuple[http.client.HTTPConnection, str, SplitResult]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BuildError(f"invalid URL {shown(url)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BuildError(f"not an http(s) URL: {shown(url)}")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname, port, timeout=TIMEOUT, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=TIMEOUT)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return conn, target, parts


def download(url: str, dest: Path, *, missing_ok: bool = False) -> int | None:
    """GET ``url`` into ``dest``; the number of bytes, or None for a 404 when ``missing_ok``."""
    conn, target, _ = _connect(url)
    try:
        conn.request("GET", target, headers={"Accept-Encoding": "identity"})
        resp = conn.getresponse()
        if resp.status == 404 and missing_ok:
            return None
        if resp.status != 200:
            raise BuildError(f"GET {shown(url)}: {resp.status} {resp.reason}")
        expected = resp.getheader("Content-Length")
        with dest.open("wb") as out:
            shutil.copyfileobj(resp, out, CHUNK)
            written = out.tell()
        if expected is not None and expected.isdigit() and int(expected) != written:
            raise BuildError(f"GET {shown(url)}: got {written} of {expected} bytes")
        return written
    except (OSError, http.client.HTTPException) as exc:
        raise BuildError(f"GET {shown(url)}: {_reason(exc)}") from None
    finally:
        conn.close()


def upload(url: str, src: Path, content_type: str = "application/octet-stream") -> None:
    """PUT the file ``src`` to ``url`` (with its Content-Length, read in chunks)."""
    conn, target, _ = _connect(url)
    try:
        size = src.stat().st_size
        conn.putrequest("PUT", target, skip_accept_encoding=True)
        conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        with src.open("rb") as body:
            while chunk := body.read(CHUNK):
                conn.send(chunk)
        resp = conn.getresponse()
        resp.read()
        if resp.status not in (200, 201, 204):
            raise BuildError(f"PUT {shown(url)}: {resp.status} {resp.reason}")
    except (OSError, http.client.HTTPException) as exc:
        raise BuildError(f"PUT {shown(url)}: {_reason(exc)}") from None
    finally:
        conn.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"timed out after {TIMEOUT:g}s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
