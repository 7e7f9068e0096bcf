"""The deployment of a built release, followed until it is complete or failed.

``POST /apps/:app/deploy`` hands the release to the controller's deployer (strategy and timeout
are the app's); its deployment events are relayed to the push (each job of the new release
starting, up, crashed), and a failed deployment (the deployer has rolled the formation back to
the previous release) fails the push with the controller's reason.

An app's first release is deployed instantly (there is nothing to replace) and, as on Heroku, gets
one ``web`` process when the app has never had a formation; the push then waits until that job
is up. If it does not come up (5 crashes or failures, or the deploy timeout), the formation is
removed again, so the next push starts over the same way, and the push fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from flynn.common.errors import APIError
from flynn.controller.client import FINAL_JOB_STATES, App, AsyncClient, Deployment
from flynn.gitreceive.output import Output

MAX_FAILURES = 5  # as the deployer's limit
GRACE = 30.0  # beyond the deploy timeout, before the push stops waiting for the deployer


class DeployError(Exception):
    """The release was not deployed; the message says why (the previous release keeps running)."""


@dataclass(frozen=True)
class Deployed:
    deployment: Deployment
    scaled_web: bool  # the first release: web=1 was added


def _job_line(data: dict[str, object]) -> str | None:
    job_type, job_state, job_id = data.get("job_type"), data.get("job_state"), data.get("job_id")
    if isinstance(job_type, str) and isinstance(job_state, str):
        return f"{job_type} {job_id} {job_state}" if isinstance(job_id, str) else f"{job_type} {job_state}"
    return None


async def deploy(client: AsyncClient, app: App, release_id: str, out: Output) -> Deployed:
    since = await client.last_event_id(object_types=["deployment"])
    try:
        deployment = await client.deploy(app["id"], release_id)
    except APIError as exc:
        raise DeployError(f"The controller refused the deployment: {exc.message}") from None
    if deployment["status"] not in ("complete", "failed"):
        out.step(f"Deploying release {release_id} ({deployment['strategy']})")
        deployment = await _follow(client, app, deployment, since, out)
    if deployment["status"] == "failed":
        raise DeployError(
            f"Deployment of release {release_id} failed: {deployment.get('error') or 'no reason given'}"
        )
    if deployment["status"] != "complete":
        raise DeployError(f"The deployment of release {release_id} did not finish in time")
    return Deployed(deployment, await _first_web(client, app, release_id, out))


async def _follow(
    client: AsyncClient, app: App, deployment: Deployment, since: int, out: Output
) -> Deployment:
    wait = float(deployment.get("deploy_timeout") or app.get("deploy_timeout") or 120) + GRACE
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            async for event in client.events(
                app_id=app["id"], object_types=["deployment"], object_id=deployment["id"], since_id=since
            ):
                data = event.get("data")
                if not isinstance(data, dict):
                    continue
                line = _job_line(data)
                if line:
                    out.info(line)
                if data.get("status") in ("complete", "failed"):
                    break
    return await client.get_deployment(deployment["id"])


async def _has_formation(client: AsyncClient, app: App) -> bool:
    return bool(await client.list_formations(app["id"]))


async def _first_web(client: AsyncClient, app: App, release_id: str, out: Output) -> bool:
    """Scale ``web`` to 1 for an app that never had a formation; wait until the job is up."""
    if await _has_formation(client, app):
        return False
    release = await client.get_release(release_id)
    if "web" not in release["processes"]:
        return False
    out.step("Scaling web to 1 (the app's first release)")
    since = await client.last_event_id(object_types=["job"])
    await client.put_formation(app["id"], release_id, {"web": 1})
    failures = 0
    reason = f"timed out after {app['deploy_timeout']}s"
    try:
        async with asyncio.timeout(float(app.get("deploy_timeout") or 120)):
            async for event in client.events(app_id=app["id"], object_types=["job"], since_id=since):
                job = event.get("data")
                if (
                    not isinstance(job, dict)
                    or job.get("release_id") != release_id
                    or job.get("type") != "web"
                ):
                    continue
                state = job.get("state")
                out.info(f"web {job.get('id')} {state}")
                if state == "up":
                    return True
                if state in FINAL_JOB_STATES and state != "down":
                    failures += 1
                    if failures >= MAX_FAILURES:
                        reason = f"{failures} web jobs crashed or failed (limit {MAX_FAILURES})"
                        break
    except TimeoutError:
        pass
    with contextlib.suppress(APIError):
        await client.request("DELETE", f"/apps/{app['id']}/formations/{release_id}")
    raise DeployError(f"The first release's web process did not come up: {reason}")
