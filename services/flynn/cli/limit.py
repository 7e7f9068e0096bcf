"""``flynn limit``: process types' memory and CPU limits (each change is a new release)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from flynn.cli.context import app_and_client, app_options, fail
from flynn.cli.deploy import create_and_deploy, release_from
from flynn.cli.units import LimitError, format_limit, parse_limit

if TYPE_CHECKING:
    from flynn.controller.client import ProcessType

RESOURCES = ("cpu", "memory")
# `limit set slugbuilder memory=4GB`: a process type that only holds git push builds' limits
SLUGBUILDER = "slugbuilder"
SLUGBUILDER_ARGS = "/opt/flynn/venv/bin/flynn-slugbuilder"


def _line(proc: str, spec: ProcessType, width: int) -> str:
    limits = spec.get("resources") or {}
    parts = [
        f"{name}={format_limit(name, int(limits[name]['limit']))}"
        for name in RESOURCES
        if isinstance(limits.get(name), dict) and limits[name].get("limit") is not None
    ]
    return f"{(proc + ':').ljust(width)}{'  '.join(parts) if parts else '(defaults)'}"


@click.group(invoke_without_command=True)
@click.option("-t", "--process-type", "proc", metavar="TYPE", help="only this process type")
@app_options()
@click.pass_context
def limit(ctx: click.Context, proc: str | None) -> None:
    """Show resource limits (memory, cpu) per process type."""
    if ctx.invoked_subcommand is not None:
        return
    name, client = app_and_client()
    release = client.get_app_release(name)
    processes = dict(release.get("processes") or {}) if release else {}
    if proc is not None:
        if proc not in processes:
            fail(f"the current release has no process type {proc!r}")
        processes = {proc: processes[proc]}
    width = max((len(p) for p in processes), default=0) + 3
    for typ in sorted(processes):
        click.echo(_line(typ, processes[typ], width))


@limit.command("set")
@app_options()
@click.argument("proc", metavar="TYPE")
@click.argument("pairs", nargs=-1, required=True, metavar="RESOURCE=VALUE...")
def set_(proc: str, pairs: tuple[str, ...]) -> None:
    """Set limits, e.g. memory=256MB cpu=1500 (memory in binary units, cpu in milliCPU)."""
    values: dict[str, int] = {}
    for pair in pairs:
        resource, sep, raw = pair.partition("=")
        if not sep:
            fail(f"{pair!r} is not RESOURCE=VALUE (memory=256MB, cpu=1500)")
        try:
            values[resource] = parse_limit(resource, raw)
        except LimitError as exc:
            fail(str(exc))
    name, client = app_and_client()
    app = client.get_app(name)
    current = client.get_app_release(app["id"])
    new = release_from(app, current)
    processes = new.setdefault("processes", {})
    if proc == SLUGBUILDER and proc not in processes:  # the build's limits (docs/gitreceive.md)
        processes[proc] = {"args": [SLUGBUILDER_ARGS]}
    if proc not in processes:
        fail(f"the current release has no process type {proc!r}")
    resources = processes[proc].setdefault("resources", {})
    for resource, value in values.items():
        resources[resource] = {"limit": value}
    create_and_deploy(client, app, new)


def register(group: click.Group) -> None:
    group.add_command(limit)
