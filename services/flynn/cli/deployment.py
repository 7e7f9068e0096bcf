"""``flynn deployment``: the app's deployments, and ``flynn deployment timeout [SECONDS]``.

The timeout is the app's ``deploy_timeout`` (1-3600 s, default 120): how long a deployment may
take until its new jobs are up before the deployer rolls the formation back (docs/controller.md);
``git push`` deploys with it too.
"""

from __future__ import annotations

import click

from flynn.cli.context import app_and_client, app_options, fail
from flynn.cli.output import ago, print_json, table

MAX_TIMEOUT = 3600


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@app_options()
@click.pass_context
def deployment(ctx: click.Context, as_json: bool) -> None:
    """List the app's deployments (newest first)."""
    if ctx.invoked_subcommand is not None:
        return
    name, client = app_and_client()
    deployments = client.list_deployments(name)
    if as_json:
        print_json(deployments)
        return
    rows = [
        [d["id"], d["status"], d["strategy"], d["new_release_id"], ago(d["created_at"]), d["error"] or ""]
        for d in deployments
    ]
    table(["ID", "STATUS", "STRATEGY", "RELEASE", "CREATED", "ERROR"], rows)


@deployment.command("timeout")
@app_options()
@click.argument("seconds", required=False)
def timeout(seconds: str | None) -> None:
    """Show the deploy timeout, or set it (whole seconds, 1-3600)."""
    if seconds is not None:
        try:
            value = int(seconds, 10)
        except ValueError:
            fail(f"invalid timeout {seconds!r}: give whole seconds, 1-{MAX_TIMEOUT}")
        if not 1 <= value <= MAX_TIMEOUT:
            fail(f"invalid timeout {seconds!r}: give whole seconds, 1-{MAX_TIMEOUT}")
    name, client = app_and_client()
    if seconds is None:
        click.echo(str(client.get_app(name)["deploy_timeout"]))
        return
    app = client.update_app(name, deploy_timeout=value)
    click.echo(f"Deploy timeout of {app['name']} set to {app['deploy_timeout']}s")


def register(group: click.Group) -> None:
    group.add_command(deployment)
