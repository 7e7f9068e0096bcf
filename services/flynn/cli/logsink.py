"""``flynn cluster log-sink``: the cluster's syslog sinks (docs/logs.md).

    flynn cluster log-sink                                       list, with delivered/dropped counts
    flynn cluster log-sink add syslog [--use-tls] [--ca-cert FILE] URL
    flynn cluster log-sink remove ID

``URL`` is ``syslog://HOST[:PORT]`` (``--use-tls`` or ``syslog+tls://`` for TLS; ``--ca-cert``
names the PEM the sink's certificate is verified against instead of the system CAs). The
controller checks it; a refused sink is not added.
"""

from __future__ import annotations

from pathlib import Path

import click

from flynn.cli.context import fail, state
from flynn.cli.output import table


@click.group("log-sink", invoke_without_command=True)
@click.pass_context
def log_sink(ctx: click.Context) -> None:
    """Manage the log sinks (without a subcommand: list them)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = []
    for sink in state().client().list_sinks():
        status = sink.get("status")
        if status is None:
            counts = ["-", "-", "-", "unknown (no aggregator leader answered)"]
        else:
            connected = "connected" if status["connected"] else f"not connected: {status['error'] or '-'}"
            counts = [str(status["delivered"]), str(status["dropped"]), str(status["buffered"]), connected]
        rows.append([sink["id"], sink["kind"], sink["url"], *counts])
    table(["ID", "KIND", "URL", "DELIVERED", "DROPPED", "BUFFERED", "STATUS"], rows)


@log_sink.command("add")
@click.option("--use-tls", is_flag=True, help="connect with TLS (as a syslog+tls:// URL does)")
@click.option(
    "--ca-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM file to verify the sink's certificate with (default: the system CAs)",
)
@click.argument("kind", type=click.Choice(["syslog"]))
@click.argument("url")
def add(kind: str, url: str, use_tls: bool, ca_cert: Path | None) -> None:
    """Ship every app's lines to a syslog receiver (RFC 5424 over TCP, octet-counted)."""
    pem = None
    if ca_cert is not None:
        try:
            pem = ca_cert.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {ca_cert}: {exc}")
    sink = state().client().create_sink(url, use_tls=True if use_tls else None, ca_cert=pem)
    click.echo(f"Created sink {sink['id']} ({sink['url']}).")


@log_sink.command("remove")
@click.argument("sink_id", metavar="ID")
def remove(sink_id: str) -> None:
    """Remove a log sink."""
    sink = state().client().delete_sink(sink_id)
    click.echo(f"Removed sink {sink['id']} ({sink['url']}).")


def register(group: click.Group) -> None:
    cluster = group.commands.get("cluster")
    if not isinstance(cluster, click.Group):
        raise RuntimeError("flynn.cli.cluster must be registered before flynn.cli.logsink")
    cluster.add_command(log_sink)
