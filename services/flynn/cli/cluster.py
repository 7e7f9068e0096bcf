"""``flynn cluster``: the clusters of the rc file.

``cluster add`` checks the key against the controller (``GET /apps``) before anything is saved,
so a wrong key, URL or pin leaves the rc file as it was.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import click

from flynn.cli.context import fail, make_client, state
from flynn.cli.output import table
from flynn.cli.rcfile import Cluster, ca_cert_path
from flynn.common.errors import APIError

if TYPE_CHECKING:
    from flynn.controller.client import Client as ControllerClient

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def urls_for(target: str) -> tuple[str, str]:
    """(ControllerURL, GitURL) for a ``DOMAIN`` or an http(s) URL given to ``cluster add``."""
    if "://" in target:
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            fail(f"invalid controller URL {target!r}: use http(s)://HOST[:PORT]")
        if parts.username is not None or parts.password is not None:
            fail("the controller URL must not contain credentials: give the key as KEY")
        if parts.query or parts.fragment:
            fail(f"invalid controller URL {target!r}: no query or fragment allowed")
        try:
            _ = parts.port
        except ValueError:
            fail(f"invalid controller URL {target!r}: bad port")
        return target.rstrip("/"), ""
    host, _, port = target.partition(":")
    labels = host.rstrip(".").split(".")
    if not host or not all(_LABEL.match(label) for label in labels) or (port and not port.isdigit()):
        fail(f"invalid domain {target!r}: give a DOMAIN like flynn.example.com or a URL")
    suffix = f"{host.rstrip('.')}" + (f":{port}" if port else "")
    return f"https://controller.{suffix}", f"https://git.{suffix}"


@click.group(invoke_without_command=True)
@click.pass_context
def cluster(ctx: click.Context) -> None:
    """Manage clusters (without a subcommand: list them)."""
    if ctx.invoked_subcommand is not None:
        return
    rc = state().rc
    default = rc.default or (rc.clusters[0].name if rc.clusters else "")
    rows = [
        [c.name, c.controller_url, c.git_url or "-", "(default)" if c.name == default else ""]
        for c in rc.clusters
    ]
    table(["NAME", "CONTROLLER URL", "GIT URL", ""], rows)


@cluster.command("add")
@click.option(
    "-p", "--tls-pin", "pin", metavar="PIN", help="base64 sha256 of the controller's TLS certificate"
)
@click.option("-f", "--force", is_flag=True, help="replace a cluster of the same name")
@click.option("-d", "--default", "make_default", is_flag=True, help="make it the default cluster")
@click.option("--git-url", metavar="URL", help="the cluster's git URL (default: https://git.DOMAIN)")
@click.argument("name")
@click.argument("target", metavar="DOMAIN|URL")
@click.argument("key")
def add(
    name: str, target: str, key: str, pin: str | None, force: bool, make_default: bool, git_url: str | None
) -> None:
    """Add a cluster: NAME, its DOMAIN (or controller URL) and KEY ('-' reads it from stdin)."""
    from flynn.controller.client import parse_pin

    if not _NAME.match(name):
        fail(f"invalid cluster name {name!r}: letters, digits, '.', '_' and '-'")
    if key == "-":
        key = sys.stdin.readline().strip()
    if not key:
        fail("the key is empty")
    if pin:
        try:
            parse_pin(pin)
        except ValueError as exc:
            fail(str(exc))
    controller_url, default_git = urls_for(target)
    if git_url is not None and git_url and urlsplit(git_url).scheme not in ("http", "https"):
        fail(f"invalid git URL {git_url!r}: use http(s)://...")
    st = state()
    rc = st.rc
    if rc.get(name) is not None and not force:
        fail(f"cluster {name!r} already exists (use -f to replace it)")
    new = Cluster(
        name=name,
        key=key,
        controller_url=controller_url,
        git_url=default_git if git_url is None else git_url.rstrip("/"),
        tls_pin=pin or "",
    )
    client = make_client(new)
    try:
        client.list_apps()
    except APIError as exc:
        if exc.status == 401:
            fail(f"the controller at {controller_url} rejected the key (nothing was saved)")
        fail(f"{exc.message} (nothing was saved)")
    ca_pem = _fetch_ca(client, new) if pin else None
    old = rc.get(name)
    if old is not None:
        new.extra = dict(old.extra)
    rc.add(new, replace=force)
    if make_default or not rc.default or rc.get(rc.default) is None:
        rc.default = name
    rc.save()
    ca_file = ca_cert_path(rc.path, name)
    _keep_ca(ca_file, ca_pem)
    click.echo(f"Cluster {name!r} added" + (" and set as default." if rc.default == name else "."))
    if ca_pem is not None:
        click.echo(f"Its CA is in {ca_file}; 'flynn create' makes git trust it for {new.git_url}.")


def _fetch_ca(client: ControllerClient, cluster: Cluster) -> str | None:
    """The cluster CA, fetched over the pinned connection (so it is the cluster's own), when git
    goes over HTTPS; None when git does not need it or the controller has none."""
    if not cluster.git_url.startswith("https://"):
        return None
    try:
        pem = client.ca_cert()
    except APIError as exc:
        if exc.status == 404:
            return None
        fail(f"cannot fetch the cluster CA: {exc.message} (nothing was saved)")
    if "-----BEGIN CERTIFICATE-----" not in pem:
        fail("the controller's /ca-cert is not a PEM certificate (nothing was saved)")
    return pem


def _keep_ca(path: Path, pem: str | None) -> None:
    """Write the cluster's CA file, or remove it (a replaced cluster's CA must not linger)."""
    if pem is None:
        path.unlink(missing_ok=True)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(pem)
        tmp.replace(path)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")


@cluster.command("default")
@click.argument("name", required=False)
def default_cmd(name: str | None) -> None:
    """Show the default cluster, or make NAME the default."""
    rc = state().rc
    if name is None:
        current = rc.default or (rc.clusters[0].name if rc.clusters else "")
        if not current:
            fail("no cluster configured: run 'flynn cluster add NAME DOMAIN|URL KEY'")
        click.echo(current)
        return
    if rc.get(name) is None:
        fail(f"unknown cluster {name!r} (see 'flynn cluster')")
    rc.default = name
    rc.save()
    click.echo(f"{name!r} is now the default cluster.")


@cluster.command("remove")
@click.argument("name")
def remove(name: str) -> None:
    """Remove cluster NAME from the rc file."""
    rc = state().rc
    if rc.get(name) is None:
        fail(f"unknown cluster {name!r} (see 'flynn cluster')")
    rc.remove(name)
    rc.save()
    ca_cert_path(rc.path, name).unlink(missing_ok=True)
    click.echo(f"Cluster {name!r} removed.")


def register(group: click.Group) -> None:
    group.add_command(cluster)
