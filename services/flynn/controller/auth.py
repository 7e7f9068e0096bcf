"""API keys: HTTP Basic (any user name, the password is a key), checked in constant time.

The key set is ``AUTH_KEY`` from the environment until the system app ``controller`` has a
release; from then on it is that release's ``AUTH_KEY`` with ``processes.web.env.AUTH_KEY`` taking
precedence (so ``flynn -a controller env set -t web AUTH_KEY=new,old`` rotates keys as in Flynn).
A release without any AUTH_KEY falls back to the environment's keys, so a release can never lock
everyone out. Every controller follows the ``app_release`` events of that app and swaps its key
set in place: no restart, and no request fails during a rotation.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from typing import Any

from aiohttp import web

from flynn.common.log import register_secret
from flynn.common.web import Handler
from flynn.controller.db import Database

log = logging.getLogger(__name__)

CONTROLLER_APP = "controller"
PUBLIC_PATHS = frozenset({"/status", "/openapi.json", "/ca-cert"})
REALM = 'Basic realm="flynn"'


def split_keys(raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(k.strip() for k in raw.split(",") if k.strip()))


def keys_of_release(release_env: Any, processes: Any) -> tuple[str, ...]:
    """The keys a release of the controller app names (web's env first), or () for none."""
    if isinstance(processes, dict):
        web_proc = processes.get("web")
        if isinstance(web_proc, dict) and isinstance(web_proc.get("env"), dict):
            raw = web_proc["env"].get("AUTH_KEY")
            if isinstance(raw, str) and split_keys(raw):
                return split_keys(raw)
    if isinstance(release_env, dict):
        raw = release_env.get("AUTH_KEY")
        if isinstance(raw, str) and split_keys(raw):
            return split_keys(raw)
    return ()


class KeySet:
    def __init__(self, env_keys: tuple[str, ...]) -> None:
        if not env_keys:
            raise ValueError("no key")
        for key in env_keys:
            register_secret(key)
        self.env_keys = env_keys
        self._keys: tuple[bytes, ...] = tuple(k.encode() for k in env_keys)
        self.source = "environment"
        self.release_id: str | None = None
        self._lock = asyncio.Lock()

    @property
    def count(self) -> int:
        return len(self._keys)

    def check(self, password: str) -> bool:
        candidate = password.encode("utf-8", "surrogateescape")
        ok = False
        for key in self._keys:  # every key is compared: the time does not tell which one matched
            ok |= hmac.compare_digest(key, candidate)
        return ok

    def set(self, keys: tuple[str, ...], source: str, release_id: str | None) -> None:
        for key in keys:
            register_secret(key)
        self._keys = tuple(k.encode() for k in keys)  # one assignment: requests see old or new
        if (source, release_id) != (self.source, self.release_id):
            log.info("API keys now from %s (%d key%s)", source, len(keys), "" if len(keys) == 1 else "s")
        self.source, self.release_id = source, release_id

    async def refresh(self, db: Database) -> None:
        async with self._lock:
            row = await db.query_one(
                "SELECT r.id, r.env, r.processes FROM apps a JOIN releases r ON r.id = a.release_id"
                " WHERE a.name = %s AND a.system",
                (CONTROLLER_APP,),
            )
            keys = keys_of_release(row["env"], row["processes"]) if row else ()
            if row is not None and keys:
                self.set(keys, f"release {row['id']} of the controller app", str(row["id"]))
            else:
                self.set(self.env_keys, "environment", None)

    async def on_event(self, db: Database, event: dict[str, Any]) -> None:
        if event["object_type"] in ("app_release", "app_deletion"):
            await self.refresh(db)


def password_of(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8", "surrogateescape")
    except (binascii.Error, ValueError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep else None


def unauthorized() -> web.Response:
    return web.json_response(
        {"error": "invalid or missing key", "code": 401},
        status=401,
        headers={"WWW-Authenticate": REALM},
    )


def middleware(keys: KeySet) -> Any:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        password = password_of(request.headers.get("Authorization", ""))
        if password is None or not keys.check(password):
            return unauthorized()
        return await handler(request)

    return auth
