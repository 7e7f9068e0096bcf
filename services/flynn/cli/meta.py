"""``flynn meta``: the app's metadata (string keys and values)."""

from __future__ import annotations

import click

from flynn.cli.context import app_and_client, app_options, fail
from flynn.cli.env import parse_pairs
from flynn.cli.output import print_json, table


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@app_options()
@click.pass_context
def meta(ctx: click.Context, as_json: bool) -> None:
    """Show the app's metadata."""
    if ctx.invoked_subcommand is not None:
        return
    name, client = app_and_client()
    values = client.get_app_meta(name)
    if as_json:
        print_json(values)
        return
    table(["KEY", "VALUE"], [[k, values[k]] for k in sorted(values)])


@meta.command("set")
@app_options()
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
def set_(pairs: tuple[str, ...]) -> None:
    """Set metadata keys."""
    changes = parse_pairs(pairs)
    name, client = app_and_client()
    values = client.get_app_meta(name)
    values.update(changes)
    client.set_app_meta(name, values)
    click.echo("Updated metadata: " + ", ".join(sorted(changes)))


@meta.command("unset")
@app_options()
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
def unset(keys: tuple[str, ...]) -> None:
    """Remove metadata keys."""
    name, client = app_and_client()
    values = client.get_app_meta(name)
    missing = [k for k in keys if k not in values]
    if missing:
        fail(f"{missing[0]} is not set: nothing changed")
    for key in keys:
        values.pop(key, None)
    client.set_app_meta(name, values)
    click.echo("Removed metadata: " + ", ".join(sorted(set(keys))))


def register(group: click.Group) -> None:
    group.add_command(meta)
