"""What gitreceive's tests run against, real where it can be on one machine.

* :class:`BuildHost`: a host API for build jobs over real HTTP (``PUT``/``GET``/``DELETE
  /host/jobs/:id`` and the attach WebSocket with docs/host.md's frames) that runs the job's
  command as a local process once the attach client connects: the real ``flynn-slugbuilder``
  (``python -m flynn.slugbuilder.main --build-dir TMP``) with the job's env. Stopping the job
  (DELETE, or the attach client hanging up) sends SIGTERM, as the host does.
* :class:`Blobstore`: the real blobstore API on a fresh PostgreSQL database.
* :class:`Gitreceive`: the real gitreceive routes (``flynn.gitreceive.api``) with the real
  ``git http-backend`` and the real hooks (``python -m flynn.gitreceive.daemon hook ...``).
* :func:`git`: the real ``git`` client on this machine, with a clean configuration.

The controller is the real one (tests/unit/controller_fixtures.py) with its fake scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from flynn.blobstore.api import make_app as blobstore_app
from flynn.blobstore.backends.postgres import PostgresBackend
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.gitreceive.api import make_app as gitreceive_app
from flynn.gitreceive.cluster import Cluster
from flynn.gitreceive.config import GitreceiveConfig
from flynn.gitreceive.daemon import make_context, write_hooks
from tests.pg import PostgresServer

REPO = Path(__file__).resolve().parents[2]


async def serve(app: web.Application, **kw: Any) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1, **kw)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


# -- a host that runs build jobs ---------------------------------------------------------------


@dataclass
class BuildJob:
    config: dict[str, Any]
    state: str = "starting"
    exit_status: int | None = None
    proc: asyncio.subprocess.Process | None = None
    stop_requested_at: float | None = None
    hung_up_at: float | None = None
    ended_at: float | None = None
    output: bytearray = field(default_factory=bytearray)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def answer(self, host_id: str) -> dict[str, Any]:
        return {
            "id": self.config["id"],
            "host_id": host_id,
            "app_mode": self.config.get("app_mode", "artifact"),
            "state": self.state,
            "exit_status": self.exit_status,
            "error": None,
        }


class BuildHost:
    """``jobs`` holds every job it was sent; ``slugbuilder`` is the command that replaces the
    job's ``args[0]`` (the host image's flynn-slugbuilder)."""

    def __init__(self, host_id: str = "buildhost", work: Path | None = None) -> None:
        self.id = host_id
        self.work = work or Path(tempfile.mkdtemp(prefix="buildhost-"))
        self.jobs: dict[str, BuildJob] = {}
        self.slugbuilder = [sys.executable, "-m", "flynn.slugbuilder.main"]
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> BuildHost:
        app = web.Application()
        app.router.add_put("/host/jobs/{id}", self._put)
        app.router.add_get("/host/jobs/{id}", self._get)
        app.router.add_delete("/host/jobs/{id}", self._delete)
        app.router.add_get("/host/jobs/{id}/attach", self._attach)
        self.runner, self.url = await serve(app)
        return self

    async def stop(self) -> None:
        for job in self.jobs.values():
            if job.proc is not None and job.proc.returncode is None:
                job.proc.kill()
                await job.proc.wait()
        if self.runner is not None:
            await self.runner.cleanup()

    def instance(self) -> dict[str, Any]:
        """Its discoverd instance as ``flynn-host``."""
        return {
            "id": self.id,
            "addr": self.url.removeprefix("http://"),
            "proto": "tcp",
            "meta": {"id": self.id},
        }

    async def _put(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        if not job_id.startswith(self.id + "-"):
            return web.json_response({"error": "job id of another host", "code": 409}, status=409)
        config = await request.json()
        if config.get("app_mode") != "build" or config.get("attach") is not True or "artifact" in config:
            return web.json_response({"error": "not a build job", "code": 400}, status=400)
        self.jobs[job_id] = BuildJob(config)
        return web.json_response(self.jobs[job_id].answer(self.id), status=201)

    async def _get(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return web.json_response({"error": "no such job", "code": 404}, status=404)
        return web.json_response(job.answer(self.id))

    async def _delete(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return web.json_response({"error": "no such job", "code": 404}, status=404)
        job.stop_requested_at = time.monotonic()
        self._terminate(job)
        return web.json_response(job.answer(self.id))

    def _terminate(self, job: BuildJob) -> None:
        if job.state in ("down", "crashed", "failed"):
            return
        job.state = "stopping"
        if job.proc is not None and job.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.proc.pid, signal.SIGTERM)

    def _argv(self, job: BuildJob, build_dir: Path) -> list[str]:
        args = list(job.config["args"])
        return [*self.slugbuilder, *args[1:], "--build-dir", str(build_dir)]

    async def _attach(self, request: web.Request) -> web.StreamResponse:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return web.json_response({"error": "no such job", "code": 404}, status=404)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        build_dir = self.work / job.config["id"]
        build_dir.mkdir(parents=True)
        home = self.work / "home"
        home.mkdir(exist_ok=True)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "PIP_CONFIG_FILE": "/dev/null",
            "PYTHONPATH": str(REPO / "services"),
            **job.config.get("env", {}),
        }
        job.proc = await asyncio.create_subprocess_exec(
            *self._argv(job, build_dir),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        job.state = "up"
        proc = job.proc
        assert proc.stdout is not None
        assert proc.stderr is not None

        async def pump(stream: asyncio.StreamReader, tag: bytes) -> None:
            while chunk := await stream.read(4096):
                job.output += chunk
                with contextlib.suppress(ConnectionResetError, RuntimeError):
                    await ws.send_bytes(tag + chunk)

        async def hangup() -> None:
            async for _msg in ws:
                pass
            if proc.returncode is None:  # the client went away before the exit: stop the job
                job.hung_up_at = time.monotonic()
                self._terminate(job)

        watcher = asyncio.ensure_future(hangup())
        await asyncio.gather(pump(proc.stdout, b"\x01"), pump(proc.stderr, b"\x02"))
        code = await proc.wait()
        job.ended_at = time.monotonic()
        job.ended.set()
        job.exit_status = code if code >= 0 else 128 - code
        job.state = "down" if code == 0 or job.stop_requested_at or job.hung_up_at else "crashed"
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await ws.send_str(json.dumps({"exit": job.exit_status}))
            await ws.close()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        return ws


# -- the blobstore -----------------------------------------------------------------------------


class Blobstore:
    def __init__(self, pg: PostgresServer) -> None:
        self.pg = pg
        self.db_url = pg.create_database()
        self.backend = PostgresBackend(self.db_url, pool_size=5)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> Blobstore:
        await self.backend.start(wait=10)
        self.runner, self.url = await serve(blobstore_app(self.backend, max_bytes=1 << 30))
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        await self.backend.stop()

    async def paths(self) -> list[str]:
        async with aiohttp.ClientSession() as session, session.get(self.url + "/") as resp:
            return [str(item["path"]) for item in await resp.json()]

    async def read(self, path: str) -> bytes:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as resp:
            assert resp.status == 200, f"GET {path}: {resp.status}"
            return await resp.read()


# -- gitreceive ----------------------------------------------------------------------------------


class Gitreceive:
    """The routes and hooks of one gitreceive instance, configured by ``env`` (as the unit's
    environment files would): its repositories live in ``state/repos``."""

    def __init__(self, state: Path, env: Mapping[str, str]) -> None:
        self.environ = {**os.environ, "GITRECEIVE_REPOS": str(state / "repos"), **env}
        self.cfg = GitreceiveConfig.from_env(self.environ)
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> Gitreceive:
        self.cfg.repos.mkdir(parents=True, exist_ok=True)
        write_hooks(self.cfg.state_dir / "hooks", self.cfg.hook_command)
        self.session = aiohttp.ClientSession()
        cluster = Cluster(
            DiscoverdClient(list(self.cfg.discoverd_urls), session=self.session, retry_for=1),
            controller_url=self.cfg.controller_url,
            blobstore_url=self.cfg.blobstore_url,
        )
        self.ctx = make_context(self.cfg, self.session, cluster, self.environ)
        self.runner, self.url = await serve(gitreceive_app(self.ctx), handler_cancellation=True)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    def remote(self, app: str, key: str, user: str = "flynn") -> str:
        return self.url.replace("http://", f"http://{user}:{key}@") + f"/{app}.git"

    def repo(self, app: str) -> Path:
        return self.cfg.repos / f"{app}.git"


# -- the git client ------------------------------------------------------------------------------


@dataclass
class GitResult:
    rc: int
    out: str

    def remote_lines(self) -> list[str]:
        return [
            line.removeprefix("remote: ").rstrip()
            for line in self.out.splitlines()
            if line.startswith("remote:")
        ]


def git_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "LANG": "C",
    }


async def git(cwd: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> GitResult:
    """Run the real git (output and errors together, as a terminal shows them)."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=dict(env or git_env(cwd.parent)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(timeout):
        out, _ = await proc.communicate()
    return GitResult(proc.returncode if proc.returncode is not None else -1, out.decode(errors="replace"))


async def make_repo(path: Path, files: Mapping[str, str | bytes], *, branch: str = "main") -> str:
    """A work tree with ``files`` committed; returns the commit id."""
    os.makedirs(path)
    assert (await git(path, "init", "-q", "-b", branch)).rc == 0
    return await commit(path, files)


async def commit(path: Path, files: Mapping[str, str | bytes], message: str = "change") -> str:
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        if name.startswith("bin/") or "/bin/" in name:
            target.chmod(0o755)
    assert (await git(path, "add", "-A")).rc == 0
    res = await git(path, "commit", "-q", "-m", message)
    assert res.rc == 0, res.out
    return (await git(path, "rev-parse", "HEAD")).out.strip()


async def stream_lines(proc: asyncio.subprocess.Process) -> AsyncIterator[str]:
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        yield line.decode(errors="replace")
