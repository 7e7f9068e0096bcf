"""The ``flynn-host`` command: the daemon and the operator's tools on a host."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

import flynn
from flynn.common.errors import APIError, ConfigError
from flynn.common.http import Client
from flynn.host.config import DEFAULT_PORT, HostConfig


def _fail(message: str) -> None:
    click.echo(f"flynn-host: {message}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Manage a Flynn host."""


@main.command()
@click.option("--listen-ip", help="address to bind the host API (default 0.0.0.0)")
@click.option("--port", type=click.IntRange(1, 65535), help=f"host API port (default {DEFAULT_PORT})")
@click.option("--id", "host_id", help="host id (default: hostname without punctuation)")
@click.option("--state-dir", type=click.Path(path_type=Path), help="state directory (default /var/lib/flynn)")
def daemon(listen_ip: str | None, port: int | None, host_id: str | None, state_dir: Path | None) -> None:
    """Run the host daemon (normally started by flynn-host.service)."""
    from flynn.host.daemon import run

    try:
        config = HostConfig.from_env()
        overrides = {
            "listen_ip": listen_ip,
            "port": port,
            "host_id": host_id,
            "state_dir": state_dir,
        }
        config = HostConfig(**{**config.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
        run(config)
    except ConfigError as exc:
        _fail(str(exc))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="host to ask")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON")
def status(host: str, port: int, as_json: bool) -> None:
    """Show a host's status from its host API."""
    try:
        data = Client(f"http://{host}:{port}", timeout=5).get("/host/status")
    except (APIError, ValueError) as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    addrs = ", ".join(a["address"] for a in data.get("addresses", []))
    click.echo(f"ID       {data['id']}")
    click.echo(f"VERSION  {data['version']} ({data['build']})")
    click.echo(f"UPTIME   {data['uptime']:.0f}s")
    click.echo(f"ADDRS    {addrs}")


@main.command()
def version() -> None:
    """Print the installed version."""
    click.echo(flynn.__version__)
