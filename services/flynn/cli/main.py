"""Entry point of the ``flynn`` CLI. Commands arrive with the controller (see docs/architecture.md)."""

from __future__ import annotations

import click

import flynn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Flynn command-line client."""


@main.command()
def version() -> None:
    """Print the client version."""
    click.echo(flynn.__version__)
