"""The blobstore HTTP API (aiohttp): PUT/GET/HEAD/DELETE of paths, listing, status.

Bodies are streamed both ways: a PUT hands the request's body stream to the backend as it
arrives, a GET writes the backend's chunks as it reads them (``StreamResponse.write`` waits for the
client, so a slow reader slows the database reads down instead of filling memory). Errors are
``{"error", "code"}`` JSON (flynn.common.http) and a failed request changes nothing.

Once a GET has sent its headers an error can no longer become a JSON answer: the connection is
aborted instead, so the client sees fewer bytes than ``Content-Length`` announced and knows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from flynn.blobstore.backends.base import Backend, BackendUnavailable, BlobInfo, BlobNotFound, BlobReader
from flynn.blobstore.paths import InvalidPath, validate_path, validate_prefix
from flynn.common.web import error_middleware, json_error

log = logging.getLogger(__name__)

BACKEND: web.AppKey[Backend] = web.AppKey("backend", Backend)
LIMITS: web.AppKey[Limits] = web.AppKey("limits")
MAX_LIST = 1000
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class Limits:
    max_bytes: int


class BodyTooLarge(Exception):
    pass


class RangeNotSatisfiable(Exception):
    pass


# -- helpers ---------------------------------------------------------------------------------------


def _path(request: web.Request) -> str:
    try:
        return validate_path(request.path)
    except InvalidPath as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


def _unavailable(exc: BackendUnavailable) -> web.HTTPServiceUnavailable:
    return web.HTTPServiceUnavailable(text=str(exc) or "backend unavailable")


def _too_large(max_bytes: int) -> web.Response:
    return json_error(413, f"blob larger than {max_bytes} bytes")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` → ``(start, end)`` (end exclusive); None: serve it whole.

    One range only: a header that is not a single byte range is ignored (RFC 9110 allows it), a
    syntactically valid range that starts past the end raises :class:`RangeNotSatisfiable`.
    """
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    first, last = m.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0:
            raise RangeNotSatisfiable
        return (max(0, size - length), size)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise RangeNotSatisfiable
    end = size if not last else min(int(last) + 1, size)
    return (start, end)


def _etag_matches(header: str, etag: str) -> bool:
    """``If-None-Match``: weak comparison against any listed tag, or ``*``."""
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


def _headers(info: BlobInfo) -> dict[str, str]:
    return {
        "ETag": info.etag,
        "Last-Modified": email.utils.format_datetime(
            info.updated_at.astimezone(dt.UTC).replace(microsecond=0), usegmt=True
        ),
        "Accept-Ranges": "bytes",
        "X-Blob-Sha256": info.sha256,
    }


def _if_range_ok(header: str | None, info: BlobInfo) -> bool:
    """``If-Range``: the range applies only if the validator still names this version."""
    if header is None:
        return True
    header = header.strip()
    if header.startswith(('"', "W/")):
        return header == info.etag
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False
    return when.tzinfo is not None and int(when.timestamp()) == int(info.updated_at.timestamp())


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def _limited(request: web.Request, max_bytes: int) -> AsyncIterator[bytes]:
    total = 0
    async for piece in request.content.iter_any():
        total += len(piece)
        if total > max_bytes:
            raise BodyTooLarge
        yield piece


# -- handlers --------------------------------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    if await backend.ping():
        return web.json_response({"status": "healthy", "backend": backend.kind, "name": backend.name})
    return web.json_response(
        {
            "error": f"backend {backend.name} unavailable",
            "code": 503,
            "status": "unhealthy",
            "backend": backend.kind,
            "name": backend.name,
        },
        status=503,
    )


async def list_blobs(request: web.Request) -> web.Response:
    query = request.query
    try:
        prefix = validate_prefix(query.get("prefix", ""))
        after = validate_prefix(query["after"]) if query.get("after") else ""
    except InvalidPath as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    raw_limit = query.get("limit", str(MAX_LIST))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIST:
        raise web.HTTPBadRequest(text=f"limit must be 1-{MAX_LIST}")
    try:
        blobs = await request.app[BACKEND].list(prefix, after=after, limit=int(raw_limit))
    except BackendUnavailable as exc:
        raise _unavailable(exc) from None
    return web.json_response([b.to_json() for b in blobs])


async def expect_put(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: refuse a bad path or an oversized body before it is sent."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        return json_error(417, "only Expect: 100-continue is understood")
    try:
        validate_path(request.path)
    except InvalidPath as exc:
        return json_error(400, str(exc))
    max_bytes = request.app[LIMITS].max_bytes
    if request.content_length is not None and request.content_length > max_bytes:
        return _too_large(max_bytes)
    if request.version >= aiohttp.HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
    return None


async def put_blob(request: web.Request) -> web.Response:
    path = _path(request)
    max_bytes = request.app[LIMITS].max_bytes
    if request.content_length is not None and request.content_length > max_bytes:
        resp = _too_large(max_bytes)
        resp.force_close()
        return resp
    try:
        info = await request.app[BACKEND].put(path, _limited(request, max_bytes))
    except BodyTooLarge:
        resp = _too_large(max_bytes)
        resp.force_close()
        return resp
    except BackendUnavailable as exc:
        raise _unavailable(exc) from None
    except (aiohttp.ClientPayloadError, ConnectionError) as exc:
        # the client went away or sent a malformed body: nothing was stored (rolled back)
        log.info("PUT %s: body incomplete (%s); nothing stored", path, type(exc).__name__)
        resp = json_error(400, "request body incomplete; nothing stored")
        resp.force_close()
        return resp
    log.info("stored %s (%d bytes, sha256 %s)", path, info.size, info.sha256)
    body = {"path": info.path, "size": info.size, "sha256": info.sha256, "etag": info.etag}
    return web.json_response(body, status=201, headers={"ETag": info.etag})


async def head_blob(request: web.Request) -> web.StreamResponse:
    path = _path(request)
    try:
        info = await request.app[BACKEND].head(path)
    except BackendUnavailable as exc:
        raise _unavailable(exc) from None
    if info is None:
        raise web.HTTPNotFound(text=f"no blob at {path}")
    headers = _headers(info)
    inm = request.headers.get("If-None-Match")
    if inm is not None and _etag_matches(inm, info.etag):
        return web.Response(status=304, headers=headers)
    resp = web.StreamResponse(headers=headers)
    resp.content_type = "application/octet-stream"
    resp.content_length = info.size
    await resp.prepare(request)
    await resp.write_eof()
    return resp


async def get_blob(request: web.Request) -> web.StreamResponse:
    path = _path(request)
    backend = request.app[BACKEND]
    try:
        async with backend.open(path) as blob:
            return await _send(request, blob)
    except BlobNotFound:
        raise web.HTTPNotFound(text=f"no blob at {path}") from None
    except BackendUnavailable as exc:
        raise _unavailable(exc) from None


async def _send(request: web.Request, blob: BlobReader) -> web.StreamResponse:
    info = blob.info
    headers = _headers(info)
    inm = request.headers.get("If-None-Match")
    if inm is not None and _etag_matches(inm, info.etag):
        return web.Response(status=304, headers=headers)
    try:
        rng = parse_range(request.headers.get("Range"), info.size)
    except RangeNotSatisfiable:
        refused = json_error(416, f"range not satisfiable (size {info.size})")
        refused.headers["Content-Range"] = f"bytes */{info.size}"
        return refused
    if rng is not None and not _if_range_ok(request.headers.get("If-Range"), info):
        rng = None
    start, end = rng if rng is not None else (0, info.size)
    resp = web.StreamResponse(status=206 if rng is not None else 200, headers=headers)
    resp.content_type = "application/octet-stream"
    resp.content_length = end - start
    if rng is not None:
        resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
    await resp.prepare(request)
    try:
        async with contextlib.aclosing(blob.read(start, end)) as chunks:
            async for piece in chunks:
                await resp.write(piece)
        await resp.write_eof()
    except ConnectionError:
        log.debug("GET %s: client went away", info.path)
        _abort(request)
    except Exception as exc:
        # the headers are out: the only honest signal left is a short body
        log.error("GET %s failed after %s: %s; aborting the connection", info.path, resp.status, exc)
        _abort(request)
    return resp


async def delete_blob(request: web.Request) -> web.Response:
    path = _path(request)
    try:
        found = await request.app[BACKEND].delete(path)
    except BackendUnavailable as exc:
        raise _unavailable(exc) from None
    if not found:
        raise web.HTTPNotFound(text=f"no blob at {path}")
    log.info("deleted %s", path)
    return web.json_response({"path": path})


def make_app(backend: Backend, *, max_bytes: int) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[BACKEND] = backend
    app[LIMITS] = Limits(max_bytes=max_bytes)
    app.router.add_get("/status", status)
    app.router.add_get("/", list_blobs)
    app.router.add_route("PUT", "/{path:.+}", put_blob, expect_handler=expect_put)
    app.router.add_get("/{path:.+}", get_blob, allow_head=False)
    app.router.add_route("HEAD", "/{path:.+}", head_blob)
    app.router.add_delete("/{path:.+}", delete_blob)
    return app
