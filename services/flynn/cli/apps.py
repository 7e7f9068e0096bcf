"""``flynn create``, ``delete``, ``apps``, ``info``."""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

import click

from flynn.cli import git
from flynn.cli.context import app_and_client, app_options, fail, state
from flynn.cli.gitcreds import helper_command
from flynn.cli.output import print_json, table
from flynn.cli.rcfile import ca_cert_path


def _confirm_replace_remote(remote: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"there is already a git remote called {remote}: use -y to replace it")
    if not click.confirm(f"There is already a git remote called {remote}, replace it?", default=False):
        fail("cancelled: nothing was created")


@click.command()
@click.argument("name", required=False)
@click.option("-r", "--remote", default=git.DEFAULT_REMOTE, show_default=True, help="the git remote to add")
@click.option("-y", "--yes", is_flag=True, help="replace an existing git remote without asking")
@app_options(with_app=False)
def create(name: str | None, remote: str, yes: bool) -> None:
    """Create an app (in a git repository, add a remote for it)."""
    st = state()
    cluster = st.cluster()
    client = st.client()
    repo = git.in_repo()
    if repo and cluster.git_url and git.remote_url(remote) is not None:
        _confirm_replace_remote(remote, yes)  # before the app exists: a refusal changes nothing
    app = client.create_app(name)
    click.echo(f"Created {app['name']}")
    if repo and cluster.git_url:
        git.set_remote(remote, git.app_url(cluster.git_url, app["name"]))
        git.set_credential_helper(cluster.git_url, helper_command())  # flynn git-credentials
        ca_file = ca_cert_path(st.rc.path, cluster.name)
        trust_ca = cluster.git_url.startswith("https://") and ca_file.is_file()
        if trust_ca:
            git.set_ca_info(cluster.git_url, str(ca_file))  # the routers' certificate is the cluster's
        click.echo(f"Added git remote {remote} ({git.app_url(cluster.git_url, app['name'])})")
        if trust_ca and os.environ.get("GIT_SSL_CAINFO"):
            click.echo(
                "warning: GIT_SSL_CAINFO is set and overrides the cluster CA for git: unset it for"
                f" git push (or trust {ca_file} there)",
                err=True,
            )


@click.command()
@click.option("-y", "--yes", is_flag=True, help="do not ask for confirmation")
@app_options()
def delete(yes: bool) -> None:
    """Delete the app, its releases and formations (its jobs are stopped)."""
    name, client = app_and_client()
    app = client.get_app(name)
    if not yes:
        click.echo(
            f"Delete app {app['name']} ({app['id']}) and everything in it? Type its name to confirm: ",
            nl=False,
        )
        answer = sys.stdin.readline().strip() if sys.stdin is not None else ""
        if answer != app["name"]:
            fail(f"not deleting {app['name']}: confirm by typing its name, or use -y")
    client.delete_app(app["id"])
    removed = ""
    cluster = state().cluster()
    if cluster.git_url and git.in_repo():
        for remote in {git.DEFAULT_REMOTE, state().app_flag or git.DEFAULT_REMOTE}:
            url = git.remote_url(remote)
            if url is not None and git.app_of_url(cluster.git_url, url) == app["name"]:
                git.remove_remote(remote)
                removed = f" (removed git remote {remote})"
    click.echo(f"Deleted {app['name']}{removed}")


@click.command("apps")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@app_options(with_app=False)
def list_apps(as_json: bool) -> None:
    """List the apps."""
    apps = state().client().list_apps()
    if as_json:
        print_json(apps)
        return
    table(["ID", "NAME"], [[a["id"], a["name"]] for a in apps])


@click.command()
@app_options()
def info() -> None:
    """Show the app's name, id, git URL and current release."""
    name, client = app_and_client()
    app = client.get_app(name)
    cluster = state().cluster()
    rows = [("ID", app["id"])]
    if cluster.git_url:
        rows.append(("Git URL", git.app_url(cluster.git_url, app["name"])))
    host = urlsplit(cluster.controller_url).hostname or ""
    if host.startswith("controller."):
        rows.append(("Web URL", f"https://{app['name']}.{host.removeprefix('controller.')}"))
    rows.append(("Release", app.get("release_id") or "(none)"))
    click.echo(f"=== {app['name']}")
    for key, value in rows:
        click.echo(f"{(key + ':').ljust(10)}{value}")


def register(group: click.Group) -> None:
    for command in (create, delete, list_apps, info):
        group.add_command(command)
