"""``flynn log``: an app's lines from every host, in time order (docs/logs.md).

Each line prints as Flynn prints it, ``TIMESTAMP APP[TYPE.JOBID]: MSG``, with ``stderr`` before
the colon for what the job wrote to stderr (``--split-stderr`` writes those to stderr instead);
``--raw-output`` prints the messages only. ``-f`` keeps following until Ctrl-C (exit 130); if the
server ends the stream (its log aggregator went away) it says so and exits 1.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from flynn.cli.context import app_and_client, app_options, fail

if TYPE_CHECKING:
    from flynn.controller.client import LogLine


def render(line: LogLine, *, raw: bool = False) -> str:
    if raw:
        return line["msg"]
    marker = " stderr" if line.get("stream") == "stderr" else ""
    where = f"{line.get('type') or 'job'}.{line['job_id']}"
    return f"{line['timestamp']} {line.get('app_name') or '-'}[{where}]{marker}: {line['msg']}"


@click.command()
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines until Ctrl-C")
@click.option(
    "-n",
    "--number",
    "lines",
    type=click.IntRange(0, 10_000),
    metavar="LINES",
    help="only the last LINES lines",
)
@click.option("-t", "--type", "process_type", metavar="TYPE", help="only lines of this process type")
@click.option("-j", "--job", "job_id", metavar="JOB", help="only lines of this job")
@click.option("-r", "--raw-output", "raw", is_flag=True, help="print the messages only")
@click.option("-s", "--split-stderr", is_flag=True, help="write the jobs' stderr lines to stderr")
@app_options()
def log(
    follow: bool,
    lines: int | None,
    process_type: str | None,
    job_id: str | None,
    raw: bool,
    split_stderr: bool,
) -> None:
    """Show the app's log (the last 10,000 lines at most), from every host, oldest first."""
    name, client = app_and_client()
    try:
        for line in client.app_log(
            name, lines=lines, follow=follow, process_type=process_type, job_id=job_id
        ):
            # click.echo flushes each line: a follower sees it at once
            click.echo(render(line, raw=raw), err=split_stderr and line.get("stream") == "stderr")
    except KeyboardInterrupt:
        sys.exit(130)
    if follow:  # the server ended the stream (a log aggregator went away): say so, lines may be missed
        fail("the log stream ended; run 'flynn log -f' again")


def register(group: click.Group) -> None:
    group.add_command(log)
