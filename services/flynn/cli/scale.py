"""``flynn scale``: show or change the formation of a release, and wait for the jobs.

``scale web=3`` merges the counts into the release's formation and PUTs it. Unless ``-n``, it
then follows the app's job events (from just before the change, so none is missed) until every
type it was asked about has exactly that many jobs ``up`` and none starting or stopping,
printing each job event as Flynn does (``15:04:05.000 ==> web host1-... up``). A job of those
types that crashes or fails, or ``--timeout`` passing, exits 1.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import click

from flynn.cli.context import app_and_client, app_options, fail
from flynn.cli.output import clock

if TYPE_CHECKING:
    from flynn.controller.client import App, Client, Release

MAX_COUNT = 1000
_COUNT = re.compile(r"^[0-9]+$")
_TRANSIENT = frozenset({"pending", "starting", "stopping"})


def parse_counts(args: tuple[str, ...], release: Release) -> dict[str, int]:
    known = set(release.get("processes") or {})
    out: dict[str, int] = {}
    for arg in args:
        typ, sep, raw = arg.partition("=")
        if not sep or not typ:
            fail(f"{arg!r} is not TYPE=COUNT")
        if not _COUNT.match(raw.strip()) or int(raw) > MAX_COUNT:
            fail(f"invalid count {raw!r} for {typ}: must be a whole number 0-{MAX_COUNT}")
        if typ not in known:
            listed = ", ".join(sorted(known)) or "none"
            fail(f"release {release['id']} has no process type {typ!r} (it has: {listed})")
        if typ in out:
            fail(f"{typ} is given twice")
        out[typ] = int(raw)
    return out


def resolve_release(client: Client, app: App, release_id: str | None) -> Release:
    if release_id:
        release = client.get_release(release_id)
        if release["app_id"] != app["id"]:
            fail(f"release {release_id} is not a release of {app['name']}")
        return release
    current = client.get_app_release(app["id"])
    if current is None:
        fail(f"{app['name']} has no release yet: add one first, or give -r RELEASE")
    return current


@click.command()
@click.option("-n", "--no-wait", is_flag=True, help="do not wait for the jobs")
@click.option(
    "-r", "--release", "release_id", metavar="RELEASE", help="the release (default: the current one)"
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="seconds to wait for the jobs",
)
@app_options()
@click.argument("counts", nargs=-1, metavar="[TYPE=COUNT]...")
def scale(no_wait: bool, release_id: str | None, timeout: float, counts: tuple[str, ...]) -> None:
    """Show the formation, or scale process types (TYPE=COUNT)."""
    name, client = app_and_client()
    app = client.get_app(name)
    release = resolve_release(client, app, release_id)
    formation = client.get_formation(app["id"], release["id"])
    current = dict(formation["processes"]) if formation else {}
    types = sorted(release.get("processes") or {})
    if not counts:
        click.echo(" ".join(f"{t}={current.get(t, 0)}" for t in types))
        return
    wanted = parse_counts(counts, release)
    changes = [f"{t}: {current.get(t, 0)}=>{n}" for t, n in sorted(wanted.items()) if current.get(t, 0) != n]
    merged = {**current, **wanted}
    since = client.last_event_id(app_id=app["id"])
    if changes:
        client.put_formation(app["id"], release["id"], merged)
        click.echo(f"scaling {', '.join(changes)}")
    else:
        click.echo("requested scale equals current scale")
    if no_wait:
        return
    wait_for_jobs(client, app, release["id"], wanted, since, timeout)


def wait_for_jobs(
    client: Client, app: App, release_id: str, wanted: dict[str, int], since: int, timeout: float
) -> None:
    start = time.monotonic()
    states: dict[str, tuple[str, str]] = {}
    for job in client.list_jobs(app["id"]):
        if job.get("release_id") == release_id:
            states[job["id"]] = (job["type"], job["state"])

    def progress() -> list[str]:
        short = []
        for typ, count in sorted(wanted.items()):
            up = sum(1 for t, s in states.values() if t == typ and s == "up")
            moving = sum(1 for t, s in states.values() if t == typ and s in _TRANSIENT)
            if up != count or moving:
                short.append(f"{typ} {up} of {count} up")
        return short

    if progress():
        click.echo("")
        try:
            for event in client.stream_events(
                app_id=app["id"], object_types=["job"], since_id=since, deadline=start + timeout
            ):
                job = event.get("data")
                if not isinstance(job, dict) or job.get("release_id") != release_id:
                    continue
                job_id = str(job.get("id") or event.get("object_id"))
                typ, state = str(job.get("type", "")), str(job.get("state", ""))
                if states.get(job_id) == (typ, state):
                    continue
                states[job_id] = (typ, state)
                if typ not in wanted:
                    continue
                click.echo(f"{clock()} ==> {typ} {job_id} {state}")
                if state in ("crashed", "failed"):
                    detail = job.get("host_error") or (
                        f"exit status {job['exit_status']}" if job.get("exit_status") is not None else ""
                    )
                    fail(f"job {job_id} ({typ}) {state}" + (f": {detail}" if detail else ""))
                if not progress():
                    break
        except TimeoutError:
            fail(f"timed out after {timeout:g}s waiting for the jobs ({', '.join(progress())})")
    click.echo(f"\nscale completed in {time.monotonic() - start:.3f}s")


def register(group: click.Group) -> None:
    group.add_command(scale)
