"""``flynn ps`` and ``flynn kill``."""

from __future__ import annotations

import shlex

import click

from flynn.cli.context import app_and_client, app_options
from flynn.cli.output import ago, print_json, table


@click.command()
@click.option("-a", "--all", "all_jobs", is_flag=True, help="include finished jobs")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@app_options(short_app=False)
def ps(all_jobs: bool, as_json: bool) -> None:
    """List the app's jobs."""
    name, client = app_and_client()
    jobs = client.list_jobs(name, all_jobs=all_jobs)
    if as_json:
        print_json(jobs)
        return
    if not all_jobs:
        jobs = sorted(jobs, key=lambda j: (j.get("type") or "", j.get("created_at") or ""))
    rows = [
        [
            j["id"],
            j.get("type") or "",
            j.get("state", ""),
            ago(j.get("created_at")),
            j.get("release_id") or "",
            shlex.join(j.get("args") or []),
        ]
        for j in jobs
    ]
    table(["ID", "TYPE", "STATE", "CREATED", "RELEASE", "COMMAND"], rows)


@click.command()
@app_options()
@click.argument("job")
def kill(job: str) -> None:
    """Stop a job (the scheduler replaces it if its formation still wants it)."""
    name, client = app_and_client()
    client.delete_job(name, job)
    click.echo(f"Job {job} killed.")


def register(group: click.Group) -> None:
    group.add_command(ps)
    group.add_command(kill)
