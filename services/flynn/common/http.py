"""The synchronous JSON client shared by the CLIs and services: :class:`Client`, on ``http.client``
(fast to import: the CLIs never load aiohttp for it), raising :class:`~flynn.common.errors.APIError`
with the server's one-line message. The server side (JSON errors, body parsing) is
:mod:`flynn.common.web`.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from flynn.common import resolve
from flynn.common.errors import APIError

log = logging.getLogger(__name__)

JSON = Any


class Client:
    """Synchronous JSON-over-HTTP client (one connection per request, no pooling needed in CLIs)."""

    def __init__(
        self,
        base_url: str,
        *,
        key: str | None = None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._ssl = ssl_context
        self._headers = dict(headers or {})
        if key is not None:
            token = base64.b64encode(f":{key}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._scheme == "https":
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        resolve.patch_connection(conn)  # FLYNN_RESOLVE: an explicit address for this host
        return conn

    def request(
        self,
        method: str,
        path: str,
        body: JSON = None,
        *,
        params: Mapping[str, str] | None = None,
        expect_json: bool = True,
    ) -> JSON:
        url = self._prefix + path + (("?" + urlencode(params)) if params else "")
        headers = dict(self._headers)
        payload: bytes | None = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            conn.request(method, url, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if isinstance(exc, socket.timeout | TimeoutError):
                reason = f"timed out after {self._timeout:g}s"
            raise APIError(0, f"cannot reach {self.base_url}: {reason}", url=url) from None
        finally:
            conn.close()
        if resp.status >= 400:
            message = resp.reason
            try:
                parsed = json.loads(data)
                if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
                    message = parsed["error"]
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
            raise APIError(resp.status, message, url=url)
        if not expect_json:
            return data.decode(errors="replace")
        if not data:
            return None
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise APIError(resp.status, f"invalid JSON from {self.base_url}{url}", url=url) from None

    def get(self, path: str, **kw: Any) -> JSON:
        return self.request("GET", path, **kw)

    def put(self, path: str, body: JSON = None, **kw: Any) -> JSON:
        return self.request("PUT", path, body, **kw)

    def post(self, path: str, body: JSON = None, **kw: Any) -> JSON:
        return self.request("POST", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> JSON:
        return self.request("DELETE", path, **kw)
