"""The pre-receive hook: the whole build and deployment of a push (docs/gitreceive.md).

Running it in pre-receive means the branch only moves when the push was built and deployed;
a failure anywhere exits 1, and git reports ``! [remote rejected] main -> main (pre-receive hook
declined)`` after the reason. Steps:

1. the branch rule (:mod:`.refs`), before anything else;
2. ``git archive`` of the pushed commit, streamed to the blobstore (``/repos/APP/SHA.tar``);
3. the build job on a host (:mod:`.buildjob`), its output relayed live; the build env is the app's
   current release env plus gitreceive's build env (``BUILD_ENV_*``, ``SSH_CLIENT_KEY``/``HOSTS``),
   its limits those of the app's ``slugbuilder`` type or ``SLUGBUILDER_DEFAULT_MEMORY_LIMIT``;
4. the FLYNN-SLUG line parsed (:mod:`.slug`), then the artifact (the slug in the blobstore) and
   the release (:mod:`.release`), then the deployment (:mod:`.deploy`).

Cancelled (the push went away: SIGTERM from gitreceive, EPIPE on the output) during the build,
the build job is stopped at once and nothing is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from flynn.common.errors import APIError
from flynn.controller.client import App, AsyncClient, Release
from flynn.gitreceive import buildjob, refs
from flynn.gitreceive.blobs import Blobstore
from flynn.gitreceive.cluster import Cluster, Host
from flynn.gitreceive.config import GitreceiveConfig
from flynn.gitreceive.deploy import DeployError, deploy
from flynn.gitreceive.output import Output
from flynn.gitreceive.release import SLUGBUILDER_TYPE, build_resources, new_release
from flynn.gitreceive.slug import Slug, SlugError, parse_slug

BUILD_STOP_TIMEOUT = 5  # seconds between SIGTERM and SIGKILL for a build job
HostFactory = Callable[[Host], buildjob.HostAPI]
Archive = Callable[[str, Path], AsyncIterator[bytes]]


class PushFailed(Exception):
    """The push is refused or failed; the message is the reason shown to the pusher."""


async def git_archive(rev: str, repo: Path) -> AsyncIterator[bytes]:
    """A tar of ``rev`` (``git archive``), streamed; a failure raises once the output ends."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        "archive",
        "--format=tar",
        rev,
        cwd=repo,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    if proc.stdout is None or proc.stderr is None:  # pragma: no cover - PIPEs were asked for
        raise PushFailed("git archive was started without pipes")
    try:
        while chunk := await proc.stdout.read(1 << 16):
            yield chunk
        err = await proc.stderr.read()
        if await proc.wait() != 0:
            last = (err.decode(errors="replace").strip().splitlines() or ["failed"])[-1]
            raise PushFailed(f"git archive of {rev[:12]}: {last}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class PreReceive:
    def __init__(
        self,
        cfg: GitreceiveConfig,
        app_name: str,
        repo: Path,
        controller: AsyncClient,
        cluster: Cluster,
        session: aiohttp.ClientSession,
        out: Output,
        *,
        host_api: HostFactory | None = None,
        archive: Archive = git_archive,
    ) -> None:
        self.cfg = cfg
        self.app_name = app_name
        self.repo = repo
        self.controller = controller
        self.cluster = cluster
        self.session = session
        self.out = out
        self.host_api = host_api or self._host_client
        self.archive = archive
        self.created: list[str] = []  # what was created, for tests: "artifact ID", "release ID"
        self.deploying: str | None = None  # the release handed to the deployer

    def _host_client(self, host: Host) -> buildjob.HostAPI:
        from flynn.host.client import HostClient

        return HostClient(host.url, session=self.session, timeout=30)

    async def run(self, stdin: str) -> int:
        """The hook's exit status (0: the push is accepted)."""
        try:
            await self._push(stdin)
        except refs.Rejected as exc:
            self.out.fail(f"Push rejected: {exc}")
            return 1
        except PushFailed as exc:
            self.out.fail(str(exc))
            return 1
        except asyncio.CancelledError:  # the push went away (the hook's task is cancelled)
            if self.deploying is None:
                self.out.fail("Push cancelled: the build was stopped and nothing was deployed")
            else:
                self.out.fail(f"Push cancelled: the deployment of release {self.deploying} goes on")
            return 1
        return 0

    async def _push(self, stdin: str) -> None:
        update = refs.deployable(refs.parse(stdin))
        app, current = await self._app()
        rev = update.new
        self.out.step(f"Building {app['name']} (commit {rev[:7]} on {update.branch})")
        blobs = Blobstore(await self._call("find a blobstore", self.cluster.blobstore_urls()), self.session)
        source = f"/repos/{app['name']}/{rev}.tar"
        try:
            await self._call(
                "store the source",
                blobs.put(source, self.archive(rev, self.repo), content_type="application/x-tar"),
            )
            release_id = str(uuid.uuid4())
            slug_path = f"/slugs/{app['name']}/{release_id}.tgz"
            slug = await self._build(app, current, blobs, source, slug_path, rev)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(blobs.delete(source))
        await self._release_and_deploy(app, current, slug, blobs.url(slug_path), release_id, update)

    async def _call(self, what: str, aw: Awaitable[Any]) -> Any:
        try:
            return await aw
        except APIError as exc:
            raise PushFailed(f"Cannot {what}: {exc.message}") from None

    async def _app(self) -> tuple[App, Release | None]:
        try:
            app = await self.controller.get_app(self.app_name)
            current = await self.controller.get_app_release(app["id"])
        except APIError as exc:
            raise PushFailed(f"Cannot read app {self.app_name} from the controller: {exc.message}") from None
        return app, current

    def job_config(
        self,
        host: Host,
        app: App,
        current: Release | None,
        blobs: Blobstore,
        source: str,
        slug: str,
        rev: str,
    ) -> dict[str, Any]:
        env = dict(current["env"]) if current else {}
        env.update(self.cfg.build_variables())
        return {
            "id": f"{host.id}-build-{uuid.uuid4()}",
            "app_id": app["id"],
            "app_name": app["name"],
            "type": SLUGBUILDER_TYPE,
            "app_mode": "build",
            "attach": True,
            "args": [
                self.cfg.slugbuilder,
                "--source",
                blobs.url(source),
                "--slug",
                blobs.url(slug),
                "--cache",
                blobs.url(f"/caches/{app['name']}.tgz"),
            ],
            "env": env,
            "resources": build_resources(current, self.cfg.slugbuilder_memory),
            "stop_timeout": BUILD_STOP_TIMEOUT,
            "meta": {"flynn-gitreceive.rev": rev},
        }

    async def _build(
        self, app: App, current: Release | None, blobs: Blobstore, source: str, slug_path: str, rev: str
    ) -> Slug:
        hosts = await self._call("find a host to build on", self.cluster.hosts())
        random.shuffle(hosts)
        for n, host in enumerate(hosts, 1):  # a host that cannot take the job: the next one
            config = self.job_config(host, app, current, blobs, source, slug_path, rev)
            try:
                result = await buildjob.run(self.host_api(host), self.session, config, self.out.write)
                break
            except buildjob.StartError as exc:
                if not exc.retry or n == len(hosts):
                    raise PushFailed(f"Build failed: {exc}") from None
                self.out.info(f"host {host.id} did not take the build ({exc}); trying another")
            except buildjob.BuildError as exc:
                raise PushFailed(f"Build failed: {exc}") from None
        if result.exit_status != 0:
            raise PushFailed(f"Build failed (exit status {result.exit_status}): nothing was deployed")
        try:
            return parse_slug(result.slug_line or "")
        except SlugError as exc:
            raise PushFailed(f"Build failed: {exc}") from None

    async def _release_and_deploy(
        self,
        app: App,
        current: Release | None,
        slug: Slug,
        slug_url: str,
        release_id: str,
        update: refs.Update,
    ) -> None:
        self.out.step("Creating release")
        artifact = await self._call(
            "create the artifact",
            self.controller.create_artifact(
                slug_url, sha256=slug.sha256, size=slug.size, meta={"blobstore": "true", "rev": update.new}
            ),
        )
        self.created.append(f"artifact {artifact['id']}")
        body = new_release(app["id"], current, slug, artifact["id"], branch=update.branch, rev=update.new)
        body_with_id: dict[str, Any] = {**body, "id": release_id}  # POST /releases takes an id
        release = await self._call("create the release", self.controller.create_release(body_with_id))  # type: ignore[arg-type]
        self.created.append(f"release {release['id']}")
        self.out.info(f"Release {release['id']}: {', '.join(sorted(slug.processes))}")
        self.deploying = release["id"]
        try:
            deployed = await deploy(self.controller, app, release["id"], self.out)
        except DeployError as exc:
            after = "the previous release keeps running" if current else "nothing runs"
            raise PushFailed(f"{exc}; {after}") from None
        except APIError as exc:
            raise PushFailed(f"Lost track of the deployment: {exc.message}") from None
        what = "deployed (web scaled to 1)" if deployed.scaled_web else "deployed"
        self.out.done(f"Application {app['name']} {what}: release {release['id']}")
