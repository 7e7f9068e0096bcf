"""A small, streaming client of the blobstore (docs/blobstore.md) for gitreceive.

Bodies are never held whole in memory: uploads are read from an async iterator of chunks or a
file, downloads are written to a file as they arrive. A connection error moves to the next
blobstore URL (every instance serves every blob); an HTTP error does not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from flynn.common.errors import APIError

CHUNK = 1 << 16


@dataclass(frozen=True)
class Stored:
    url: str  # the blob's URL on the instance that stored it
    size: int
    sha256: str


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


class Blobstore:
    def __init__(self, urls: Sequence[str], session: aiohttp.ClientSession, *, timeout: float = 600) -> None:
        if not urls:
            raise ValueError("no blobstore URL given")
        self.urls = [u.rstrip("/") for u in urls]
        self.session = session
        self.timeout = timeout

    def url(self, path: str) -> str:
        """The URL of ``path`` on the first (preferred) instance."""
        return f"{self.urls[0]}/{path.lstrip('/')}"

    async def put(self, path: str, body: AsyncIterator[bytes], *, content_type: str) -> Stored:
        """PUT a streamed body (chunked) to the first instance; a half-sent body cannot be retried."""
        url = self.url(path)
        try:
            async with self.session.put(
                url,
                data=body,
                headers={"Content-Type": content_type},
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=10),
            ) as resp:
                data = await resp.json(content_type=None) if resp.status < 500 else None
                if resp.status >= 300:
                    raise APIError(resp.status, _reason(data, resp), url=url)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise APIError(0, f"cannot store {path} in the blobstore: {exc or type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise APIError(502, f"the blobstore answered no JSON for {path}", url=url)
        return Stored(url, int(data.get("size") or 0), str(data.get("sha256") or ""))

    async def put_file(self, path: str, source: Path, *, content_type: str) -> Stored:
        return await self.put(path, _file_chunks(source), content_type=content_type)

    async def head(self, path: str) -> str | None:
        """The blob's sha256 (None when there is no such blob)."""
        resp = await self._request("HEAD", path)
        if resp is None:
            return None
        return resp.headers.get("X-Blob-Sha256") or resp.headers.get("ETag", "").strip('"') or ""

    async def download(self, path: str, dest: Path) -> str | None:
        """Write the blob to ``dest`` (0600); its sha256, or None when there is no such blob."""
        last = APIError(0, "no blobstore URL")
        for base in self.urls:
            url = f"{base}/{path.lstrip('/')}"
            try:
                async with self.session.get(
                    url, timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=10)
                ) as resp:
                    if resp.status == 404:
                        return None
                    if resp.status >= 400:
                        raise APIError(resp.status, f"blobstore GET {path}: HTTP {resp.status}", url=url)
                    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    written = 0
                    with os.fdopen(fd, "wb") as out:
                        async for chunk in resp.content.iter_chunked(CHUNK):
                            out.write(chunk)
                            written += len(chunk)
                    if resp.content_length is not None and written != resp.content_length:
                        raise APIError(502, f"blobstore GET {path}: the body was cut short", url=url)
                    return resp.headers.get("X-Blob-Sha256") or resp.headers.get("ETag", "").strip('"')
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = APIError(0, f"cannot read {path} from the blobstore: {exc or type(exc).__name__}")
        raise last

    async def delete(self, path: str) -> None:
        with contextlib.suppress(APIError):
            await self._request("DELETE", path)

    async def _request(self, method: str, path: str) -> aiohttp.ClientResponse | None:
        last = APIError(0, "no blobstore URL")
        for base in self.urls:
            url = f"{base}/{path.lstrip('/')}"
            try:
                async with self.session.request(
                    method, url, timeout=aiohttp.ClientTimeout(total=30, sock_connect=10)
                ) as resp:
                    await resp.read()
                    if resp.status == 404:
                        return None
                    if resp.status >= 400:
                        raise APIError(resp.status, f"blobstore {method} {path}: HTTP {resp.status}", url=url)
                    return resp
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = APIError(0, f"cannot reach the blobstore for {path}: {exc or type(exc).__name__}")
        raise last


def _reason(data: Any, resp: aiohttp.ClientResponse) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return f"blobstore: {data['error']}"
    return f"blobstore: HTTP {resp.status}"
