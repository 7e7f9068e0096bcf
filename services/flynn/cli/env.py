"""``flynn env``: the release environment (``-t TYPE``: a process type's own env).

Each change creates a release and deploys it. Arguments are checked before anything is sent:
``KEY=VALUE`` (the value may hold ``=``), keys given once; the controller checks names and sizes
and refuses a bad release before it exists, so a refused change changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from flynn.cli.context import app_and_client, app_options, fail
from flynn.cli.deploy import create_and_deploy, release_from
from flynn.cli.output import print_json

if TYPE_CHECKING:
    from flynn.controller.client import NewRelease, Release

type_option = click.option("-t", "--process-type", "proc", metavar="TYPE", help="a process type's env")


def parse_pairs(pairs: tuple[str, ...], what: str = "KEY=VALUE") -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"{pair!r} is not {what}")
        if not key:
            fail(f"{pair!r} has an empty name")
        if key in out:
            fail(f"{key} is given twice")
        out[key] = value
    return out


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@type_option
@app_options()
@click.pass_context
def env(ctx: click.Context, as_json: bool, proc: str | None) -> None:
    """Show the app's environment (subcommands change it)."""
    if ctx.invoked_subcommand is not None:
        ctx.meta["flynn.env.type"] = proc
        return
    name, client = app_and_client()
    release = client.get_app_release(name)
    values = _env_of(release, proc)
    if as_json:
        print_json(values)
        return
    for key in sorted(values):
        click.echo(f"{key}={values[key]}")


def _env_of(release: Release | None, proc: str | None) -> dict[str, str]:
    if release is None:
        if proc:
            fail(f"the app has no release, so no process type {proc!r}")
        return {}
    if proc:
        processes = release.get("processes") or {}
        if proc not in processes:
            fail(f"the current release has no process type {proc!r}")
        return dict(processes[proc].get("env") or {})
    return dict(release.get("env") or {})


def _proc(ctx: click.Context, proc: str | None) -> str | None:
    """``-t`` given to the subcommand, or to ``env`` before it (``ctx.meta`` is shared)."""
    given: str | None = ctx.meta.get("flynn.env.type")
    return proc or given


@env.command("get")
@type_option
@app_options()
@click.argument("key")
@click.pass_context
def get(ctx: click.Context, proc: str | None, key: str) -> None:
    """Print the value of KEY."""
    proc = _proc(ctx, proc)
    name, client = app_and_client()
    values = _env_of(client.get_app_release(name), proc)
    if key not in values:
        fail(f"{key} is not set" + (f" for {proc}" if proc else ""))
    click.echo(values[key])


@env.command("set")
@type_option
@app_options()
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.pass_context
def set_(ctx: click.Context, proc: str | None, pairs: tuple[str, ...]) -> None:
    """Set variables: a new release, deployed."""
    proc = _proc(ctx, proc)
    changes = parse_pairs(pairs)
    name, client = app_and_client()
    app = client.get_app(name)
    current = client.get_app_release(app["id"])
    new = release_from(app, current)
    _target(new, proc).update(changes)
    create_and_deploy(client, app, new)


@env.command("unset")
@type_option
@app_options()
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
@click.pass_context
def unset(ctx: click.Context, proc: str | None, keys: tuple[str, ...]) -> None:
    """Remove variables: a new release, deployed."""
    proc = _proc(ctx, proc)
    name, client = app_and_client()
    app = client.get_app(name)
    current = client.get_app_release(app["id"])
    new = release_from(app, current)
    target = _target(new, proc)
    missing = [k for k in keys if k not in target]
    if missing:
        fail(f"{missing[0]} is not set" + (f" for {proc}" if proc else "") + ": nothing changed")
    for key in keys:
        target.pop(key, None)
    create_and_deploy(client, app, new)


def _target(release: NewRelease, proc: str | None) -> dict[str, str]:
    if not proc:
        return release.setdefault("env", {})
    processes = release.setdefault("processes", {})
    if proc not in processes:
        fail(f"the current release has no process type {proc!r}")
    return processes[proc].setdefault("env", {})


def register(group: click.Group) -> None:
    group.add_command(env)
