"""HTTP Basic auth of git requests, checked against the controller.

A request carries ``Authorization: Basic base64(USER:KEY)`` (any user; git's credential helper
``flynn git-credentials`` answers the cluster key). The key is valid when the controller accepts
it: ``GET /apps/APP`` with it answers the app (200), a wrong key 401, an unknown app 404. One
request checks both, and its answer is cached for a few seconds per (key digest, app), so a git
operation's several requests cost one controller round trip and a rotated key applies quickly.
Keys are only ever held as SHA-256 digests in the cache and never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from flynn.common.errors import APIError

# (key, app) -> the app (dict) | raises APIError (401, 404, 503)
Lookup = Callable[[str, str], Awaitable[dict[str, Any]]]
MAX_CACHE = 10_000


@dataclass(frozen=True)
class Credentials:
    user: str
    key: str


def parse_basic(header: str | None) -> Credentials | None:
    """The credentials of an ``Authorization: Basic ...`` header (None when absent or malformed)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, key = decoded.partition(":")
    if not sep or not key:
        return None
    return Credentials(user, key)


class AuthError(Exception):
    """The request is refused: ``status`` 401 (no or wrong key), 404 (no such app), 503."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Verifier:
    def __init__(
        self, lookup: Lookup, *, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lookup = lookup
        self.ttl = ttl
        self.clock = clock
        self.lookups = 0  # controller round trips made (tests read it)
        # (key digest, app) -> (expires, app or None, status of a refusal)
        self._cache: dict[tuple[str, str], tuple[float, dict[str, Any] | None, int]] = {}

    async def check(self, creds: Credentials | None, app: str) -> dict[str, Any]:
        """The app, when ``creds`` carry a key the controller accepts; else :class:`AuthError`."""
        if creds is None:
            raise AuthError(401, "authentication required: use the cluster key (flynn git-credentials)")
        digest = hashlib.sha256(creds.key.encode()).hexdigest()
        now = self.clock()
        cached = self._cache.get((digest, app))
        if cached is not None and cached[0] > now:
            return self._answer(cached[1], cached[2], app)
        self.lookups += 1
        try:
            found: dict[str, Any] | None = await self.lookup(creds.key, app)
            status = 200
        except APIError as exc:
            if exc.status not in (401, 404):
                raise AuthError(503, f"cannot check the key with the controller: {exc.message}") from None
            found, status = None, exc.status
        if self.ttl > 0 and status != 404:  # an app may be created right after a 404: not cached
            if len(self._cache) >= MAX_CACHE:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= MAX_CACHE:
                    self._cache.clear()
            self._cache[(digest, app)] = (now + self.ttl, found, status)
        return self._answer(found, status, app)

    @staticmethod
    def _answer(found: dict[str, Any] | None, status: int, app: str) -> dict[str, Any]:
        if found is not None:
            return found
        if status == 404:
            raise AuthError(404, f"app {app} not found (flynn create {app})")
        raise AuthError(401, "invalid key: use the cluster key (flynn git-credentials)")
