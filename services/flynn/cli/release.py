"""``flynn release``: list, add (artifact + processes), show, rollback."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from flynn.cli.context import app_and_client, app_options, fail
from flynn.cli.deploy import create_and_deploy, deploy, release_from
from flynn.cli.output import ago, print_json, table

if TYPE_CHECKING:
    from flynn.controller.client import ProcessType, Release

_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def read_procfile(path: Path) -> dict[str, ProcessType]:
    """``web: cmd`` lines as processes running ``/bin/sh -c cmd``."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
    processes: dict[str, ProcessType] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _PROCFILE_LINE.match(stripped)
        if not match:
            fail(f"{path} line {number}: expected 'TYPE: COMMAND'")
        typ, command = match.groups()
        if typ in processes:
            fail(f"{path} line {number}: process type {typ!r} defined twice")
        processes[typ] = {"args": ["/bin/sh", "-c", command.strip()]}
    if not processes:
        fail(f"{path} defines no process type")
    return processes


def read_release_file(path: Path) -> dict[str, Any]:
    """Flynn's release file: ``{"processes": {...}, "env"?: {...}, "meta"?: {...}}``."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"{path}: invalid JSON: {exc}")
    if not isinstance(data, dict) or not isinstance(data.get("processes"), dict):
        fail(f'{path}: expected a JSON object with "processes" (and optionally "env", "meta")')
    for key in ("env", "meta"):
        if key in data and not isinstance(data[key], dict):
            fail(f"{path}: {key} must be an object")
    unknown = sorted(set(data) - {"processes", "env", "meta"})
    if unknown:
        fail(f"{path}: unknown key {unknown[0]!r}")
    for typ, spec in data["processes"].items():
        if not isinstance(spec, dict):
            fail(f"{path}: process type {typ!r} must be an object")
    return data


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@app_options()
@click.pass_context
def release(ctx: click.Context, as_json: bool) -> None:
    """List the app's releases (newest first)."""
    if ctx.invoked_subcommand is not None:
        return
    name, client = app_and_client()
    app = client.get_app(name)
    releases = client.list_releases(app["id"])
    if as_json:
        print_json(releases)
        return
    current = app.get("release_id")
    rows = [[r["id"], ago(r.get("created_at")), "(current)" if r["id"] == current else ""] for r in releases]
    table(["ID", "CREATED", ""], rows)


@release.command("add")
@click.option("-f", "--file", "release_file", type=click.Path(path_type=Path), help="release JSON file")
@click.option("--procfile", type=click.Path(path_type=Path), help="a Procfile (TYPE: COMMAND lines)")
@click.option("--sha256", metavar="HEX", help="the tarball's sha256 (hosts verify it)")
@app_options()
@click.argument("uri")
def add(release_file: Path | None, procfile: Path | None, sha256: str | None, uri: str) -> None:
    """Add a release from a tarball URI and deploy it (env copied from the current release)."""
    if release_file is not None and procfile is not None:
        fail("give -f FILE or --procfile FILE, not both")
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(f"invalid artifact URI {uri!r}: use an http(s) URL of a tarball")
    if sha256 is not None and not _SHA256.match(sha256.lower()):
        fail("--sha256 must be 64 hexadecimal digits")
    spec = read_release_file(release_file) if release_file is not None else None
    processes = read_procfile(procfile) if procfile is not None else None
    name, client = app_and_client()
    app = client.get_app(name)
    current = client.get_app_release(app["id"])
    new = release_from(app, current)
    if spec is not None:
        new["processes"] = spec["processes"]
        new["env"] = {**new.get("env", {}), **spec.get("env", {})}
        if "meta" in spec:
            new["meta"] = spec["meta"]
    elif processes is not None:
        new["processes"] = processes
    elif not new.get("processes"):
        fail("no process types: give -f FILE or --procfile FILE")
    artifact = client.create_artifact(uri, sha256=sha256.lower() if sha256 else None)
    new["artifacts"] = [artifact["id"]]
    create_and_deploy(client, app, new)


@release.command("show")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@app_options()
@click.argument("release_id", metavar="[ID]", required=False)
def show(as_json: bool, release_id: str | None) -> None:
    """Show a release (default: the current one)."""
    name, client = app_and_client()
    found: Release | None
    if release_id:
        found = client.get_release(release_id)
    else:
        found = client.get_app_release(name)
        if found is None:
            fail(f"{name} has no release yet")
    if as_json:
        print_json(found)
        return
    rows: list[tuple[str, str]] = [("ID", found["id"])]
    for artifact_id in found.get("artifacts") or []:
        artifact = client.get_artifact(artifact_id)
        rows.append(("Artifact", f"{artifact['id']} ({artifact.get('type')}) {artifact.get('uri')}"))
    rows.append(("Process Types", ", ".join(sorted(found.get("processes") or {})) or "(none)"))
    rows.append(("Created", str(found.get("created_at") or "")))
    for key, value in sorted((found.get("env") or {}).items()):
        rows.append((f"ENV[{key}]", value))
    width = max(len(k) for k, _ in rows) + 3
    for key, value in rows:
        click.echo(f"{(key + ':').ljust(width)}{value}")


@release.command("rollback")
@click.option("-y", "--yes", is_flag=True, help="do not ask for confirmation")
@app_options()
@click.argument("release_id", metavar="[ID]", required=False)
def rollback(yes: bool, release_id: str | None) -> None:
    """Deploy the previous release (or release ID) again."""
    name, client = app_and_client()
    app = client.get_app(name)
    current = app.get("release_id")
    if release_id is None:
        releases = client.list_releases(app["id"])
        ids = [r["id"] for r in releases]
        if current not in ids or ids.index(current) + 1 >= len(ids):
            fail(f"{app['name']} has no release before the current one to roll back to")
        release_id = ids[ids.index(current) + 1]
    else:
        target = client.get_release(release_id)
        if target["app_id"] != app["id"]:
            fail(f"release {release_id} is not a release of {app['name']}")
    if release_id == current:
        fail(f"release {release_id} is already the current release")
    if not yes:
        click.echo(f"Roll {app['name']} back to release {release_id}? [y/N] ", nl=False)
        answer = sys.stdin.readline().strip().lower() if sys.stdin is not None else ""
        if answer not in ("y", "yes"):
            fail("not rolling back: confirm with y, or use -y")
    if app.get("system"):
        client.set_app_release(app["id"], release_id)  # system apps: no deployment (docs/controller.md)
        click.echo(f"Release {release_id} is now current")
        return
    deploy(client, app, release_id)


def register(group: click.Group) -> None:
    group.add_command(release)
