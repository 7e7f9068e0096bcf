"""gitreceive's HTTP routes: git's smart HTTP protocol for ``/APP.git``, and ``GET /status``.

| method | path | |
|---|---|---|
| GET | ``/APP.git/info/refs?service=git-upload-pack\\|git-receive-pack`` | the ref advertisement |
| POST | ``/APP.git/git-upload-pack``, ``/APP.git/git-receive-pack`` | fetch, push |
| GET | ``/status`` | ``{"status": "healthy", "repos": N}`` (no auth) |

Every git request needs HTTP Basic auth with a key the controller accepts (:mod:`.auth`); the app
must exist and not be a system app. Refusals are one ``text/plain`` line, which git shows to the
user as ``remote: ...``: 401 (with ``WWW-Authenticate``, so git asks its credential helper), 403,
404 ``app NAME not found (flynn create NAME)``, 400 for anything but the smart protocol, 503 when
the controller or blobstore cannot be reached. Nothing is written for a refused request: the
repository is created (or restored from the blobstore) only after the request was accepted.
Requests for one app are served one at a time on an instance (a push holds the app until its
build and deployment are over).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from flynn.common.errors import APIError, FlynnError
from flynn.gitreceive import backend, repos
from flynn.gitreceive.auth import AuthError, Verifier, parse_basic
from flynn.gitreceive.blobs import Blobstore
from flynn.gitreceive.config import APP_VAR

log = logging.getLogger(__name__)

SERVICES = ("git-upload-pack", "git-receive-pack")
REPO_RE = re.compile(r"^/(?P<app>[^/]+)\.git/(?P<rest>info/refs|git-upload-pack|git-receive-pack)$")
REALM = 'Basic realm="flynn"'

BlobstoreFactory = Callable[[], Awaitable[Blobstore]]


@dataclass
class Context:
    repos: Path
    hooks_dir: Path
    verifier: Verifier
    blobstore: BlobstoreFactory
    base_env: Mapping[str, str]
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    pushes: int = 0  # receive-pack requests served (tests and /status read it)

    def lock(self, app: str) -> asyncio.Lock:
        return self.locks.setdefault(app, asyncio.Lock())


CONTEXT = web.AppKey("gitreceive", Context)


def refuse(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": REALM} if status == 401 else {}
    return web.Response(status=status, text=message + "\n", content_type="text/plain", headers=headers)


def _service(request: web.Request, rest: str) -> str | None:
    if rest == "info/refs":
        if request.method != "GET":
            return None
        name = request.query.get("service", "")
        return name if name in SERVICES else None
    if request.method != "POST":
        return None
    return rest


def git_env(ctx: Context, app: dict[str, Any]) -> dict[str, str]:
    env = dict(ctx.base_env)
    env.update(
        {
            APP_VAR: str(app["name"]),
            # hooks come from gitreceive's own directory, never from a repository
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "core.hooksPath",
            "GIT_CONFIG_VALUE_0": str(ctx.hooks_dir),
        }
    )
    return env


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _accept(ctx: Context, request: web.Request) -> tuple[dict[str, Any], str, str]:
    """(app, git service path, user) of an acceptable request, else :class:`Refused`."""
    match = REPO_RE.match(request.path)
    if match is None:
        raise Refused(404, f"not a repository path: {request.path[:200]} (use GITURL/APP.git)")
    name, rest = match.group("app"), match.group("rest")
    if _service(request, rest) is None:
        raise Refused(400, "only git's smart HTTP protocol is served (git 1.6.6 or later)")
    if not repos.APP_RE.match(name):
        raise Refused(404, f"app {name[:64]} not found (an app name is a DNS label)")
    creds = parse_basic(request.headers.get("Authorization"))
    try:
        app = await ctx.verifier.check(creds, name)
    except AuthError as exc:
        raise Refused(exc.status, exc.message) from None
    if app.get("system"):
        raise Refused(403, f"app {name} is a system app: it is not deployed by git push")
    return app, rest, (creds.user if creds else "") or "flynn"


async def _repository(ctx: Context, name: str) -> Path:
    try:
        return await repos.ensure(ctx.repos, name, await ctx.blobstore())
    except APIError as exc:
        log.warning("%s: blobstore unavailable: %s", name, exc)
        raise Refused(503, f"the blobstore is unavailable: {exc.message}") from None
    except FlynnError as exc:
        log.error("%s: %s", name, exc)
        raise Refused(503, str(exc)) from None


async def handle_git(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    try:
        app, rest, user = await _accept(ctx, request)
        name = str(app["name"])
        async with ctx.lock(name):
            path = await _repository(ctx, name)
            if rest == "git-receive-pack":
                ctx.pushes += 1
                log.info("push to %s from %s", name, request.remote)
            env = backend.cgi_env(
                request,
                git_env(ctx, app),
                project_root=str(ctx.repos),
                path_info=f"/{path.name}/{rest}",
                remote_user=user,
            )
            return await backend.serve(request, env, what=f"{name} {rest}")
    except Refused as exc:
        return refuse(exc.status, exc.message)


async def handle_status(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    count = sum(1 for _ in ctx.repos.glob("*.git")) if ctx.repos.is_dir() else 0
    return web.json_response({"status": "healthy", "repos": count, "pushes": ctx.pushes})


def make_app(ctx: Context) -> web.Application:
    app = web.Application()
    app[CONTEXT] = ctx
    app.router.add_get("/status", handle_status)
    app.router.add_route("*", "/{tail:.*}", handle_git)
    return app
