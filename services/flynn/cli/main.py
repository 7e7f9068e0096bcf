"""Entry point of the ``flynn`` CLI (docs/cli.md): the root group, global options, errors.

Every failure the user can cause or meet ends as one line on stderr, ``flynn: REASON``, and
exit status 1; usage errors too, with exit status 2 as click gives them (``flynn: Missing
argument 'KEY' (see 'flynn env get --help')``). The cluster key is never printed. Command
modules import only click and the CLI's own small modules at import time: the controller
client (and with it aiohttp) is imported when a command talks to the controller.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

import flynn
import flynn.cli.deployment
import flynn.cli.gitcreds
from flynn.cli import apps, cluster, env, jobs, limit, log, logsink, meta, release, route, run, scale
from flynn.cli.context import State
from flynn.common.errors import APIError, FlynnError


def reason(exc: FlynnError) -> str:
    """One line, the server's message for API errors."""
    if isinstance(exc, APIError):
        text = exc.message if exc.status < 500 or exc.status == 503 else f"{exc.message} (HTTP {exc.status})"
    else:
        text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) or type(exc).__name__


def _usage_line(exc: click.UsageError) -> str:
    message = exc.format_message().strip().rstrip(".")
    where = exc.ctx.command_path if exc.ctx is not None else "flynn"
    return f"flynn: {message} (see '{where} --help')"


class FlynnGroup(click.Group):
    """The root group: every error becomes one ``flynn: REASON`` line (click's usage errors too)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            click.echo(_usage_line(exc), err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"flynn: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("flynn: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlynnError as exc:
            click.echo(f"flynn: {reason(exc)}", err=True)
            ctx.exit(1)
        except BrokenPipeError:
            sys.stderr.close()  # `flynn ps | head`: the reader went away, nothing to say
            ctx.exit(1)


@click.group(
    cls=FlynnGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "-a", "--app", "app", metavar="APP", help="the app (default: $FLYNN_APP or the flynn git remote)"
)
@click.option(
    "-c", "--cluster", "cluster_name", metavar="CLUSTER", help="the cluster (default: $FLYNN_CLUSTER)"
)
@click.pass_context
def cli(ctx: click.Context, app: str | None, cluster_name: str | None) -> None:
    """Flynn command-line client: manage apps on a Flynn cluster."""
    ctx.obj = State(app_flag=app, cluster_flag=cluster_name)


@cli.command()
def version() -> None:
    """Print the client version."""
    click.echo(flynn.__version__)


for module in (cluster, apps, env, scale, jobs, run, limit, meta, release, route):
    module.register(cli)
logsink.register(cli)  # `cluster log-sink`: after `cluster`
log.register(cli)
flynn.cli.deployment.register(cli)
flynn.cli.gitcreds.register(cli)  # git's credential helper


def main() -> None:
    cli.main(prog_name="flynn")
