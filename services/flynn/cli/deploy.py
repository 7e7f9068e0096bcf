"""New releases and their deployment, as ``env set``, ``limit set`` and ``release`` make them.

A change makes a new release from the current one (releases are immutable), deploys it
(``POST /apps/:app/deploy``) and follows the deployment's events until it is complete or
failed, printing each step. A failed deployment exits 1 with the controller's reason (the
deployer has then restored the old release).
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

import click

from flynn.cli.context import fail
from flynn.cli.output import clock

if TYPE_CHECKING:
    from flynn.controller.client import App, Client, Deployment, NewRelease, Release

#: Added to the app's deploy_timeout before the CLI stops waiting for the deployer.
GRACE = 30.0


def release_from(app: App, current: Release | None) -> NewRelease:
    """A copy of ``current`` to change and create as the app's next release."""
    if current is None:
        return {"app_id": app["id"], "artifacts": [], "env": {}, "meta": {}, "processes": {}}
    return {
        "app_id": app["id"],
        "artifacts": list(current.get("artifacts", [])),
        "env": dict(current.get("env") or {}),
        "meta": dict(current.get("meta") or {}),
        "processes": copy.deepcopy(dict(current.get("processes") or {})),
    }


def create_and_deploy(client: Client, app: App, release: NewRelease) -> Release:
    created = client.create_release(release)
    click.echo(f"Created release {created['id']}")
    deploy(client, app, created["id"])
    return created


def _step(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    job_type, job_state, job_id = data.get("job_type"), data.get("job_state"), data.get("job_id")
    if job_type and job_state:
        return f"{clock()} ==> {job_type} {job_id + ' ' if job_id else ''}{job_state}"
    return None


def deploy(client: Client, app: App, release_id: str) -> Deployment:
    since = client.last_event_id(app_id=app["id"])
    deployment = client.deploy(app["id"], release_id)
    if deployment["status"] not in ("complete", "failed"):
        click.echo(f"Deploying release {release_id} ({deployment.get('strategy', app['strategy'])})")
        timeout = float(deployment.get("deploy_timeout") or app.get("deploy_timeout") or 120) + GRACE
        deadline = time.monotonic() + timeout
        try:
            for event in client.stream_events(
                app_id=app["id"],
                object_types=["deployment"],
                object_id=deployment["id"],
                since_id=since,
                deadline=deadline,
            ):
                line = _step(event.get("data"))
                if line:
                    click.echo(line)
                data = event.get("data")
                if isinstance(data, dict) and data.get("status") in ("complete", "failed"):
                    break
        except TimeoutError:
            pass
        deployment = client.get_deployment(deployment["id"])
    if deployment["status"] == "failed":
        fail(f"deployment of release {release_id} failed: {deployment.get('error') or 'no reason given'}")
    if deployment["status"] != "complete":
        fail(f"timed out waiting for the deployment of release {release_id} (still {deployment['status']})")
    click.echo(f"Deployed release {release_id}")
    return deployment
