"""What every command shares: the rc file, the chosen cluster and app, the controller client.

Selection rules (docs/cli.md):

* cluster: ``-c NAME``, else ``$FLYNN_CLUSTER``, else the cluster of the app's git remote, else
  the rc file's default, else the first cluster.
* app: ``-a APP`` (when APP is the name of a git remote pointing at a configured cluster, the app
  and cluster of that remote, as Flynn does), else ``$FLYNN_APP``, else the git remote ``flynn``.

The client is imported only when a command needs it, so ``flynn --help`` and ``flynn version``
stay fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from flynn.cli import git
from flynn.cli.rcfile import Cluster, RcFile
from flynn.common.errors import FlynnError

if TYPE_CHECKING:
    from flynn.controller.client import Client

F = TypeVar("F", bound=Callable[..., Any])


class CLIError(FlynnError):
    """A one-line reason the command refused or failed; printed as ``flynn: REASON``, exit 1."""


def fail(message: str) -> NoReturn:
    raise CLIError(message)


@dataclass
class State:
    app_flag: str | None = None
    cluster_flag: str | None = None
    _rc: RcFile | None = None
    _cluster: Cluster | None = None
    _app: str | None = None
    _clients: dict[str, Client] = field(default_factory=dict)

    @property
    def rc(self) -> RcFile:
        if self._rc is None:
            self._rc = RcFile.load()
        return self._rc

    def _explicit_cluster(self) -> str | None:
        return self.cluster_flag or os.environ.get("FLYNN_CLUSTER") or None

    def _remote_app(self, remote: str) -> tuple[Cluster, str] | None:
        url = git.remote_url(remote)
        if url is None:
            return None
        for cluster in self.rc.clusters:
            app = git.app_of_url(cluster.git_url, url)
            if app is not None:
                return cluster, app
        return None

    def cluster(self) -> Cluster:
        if self._cluster is not None:
            return self._cluster
        rc = self.rc
        if not rc.clusters:
            fail("no cluster configured: run 'flynn cluster add NAME DOMAIN|URL KEY'")
        name = self._explicit_cluster() or rc.default
        if name:
            found = rc.get(name)
            if found is None:
                fail(f"unknown cluster {name!r} (see 'flynn cluster')")
            self._cluster = found
        else:
            self._cluster = rc.clusters[0]
        return self._cluster

    def app(self) -> str:
        """The app the command is about (and, through its git remote, maybe the cluster)."""
        if self._app is not None:
            return self._app
        explicit = self._explicit_cluster()
        if self.app_flag:
            app = self.app_flag
            found = self._remote_app(app) if self.rc.clusters else None
            if found is not None and (explicit is None or found[0].name == explicit):
                self._cluster, app = found
            self._app = app
            return app
        env_app = os.environ.get("FLYNN_APP")
        if env_app:
            self._app = env_app
            return env_app
        found = self._remote_app(git.DEFAULT_REMOTE) if self.rc.clusters else None
        if found is None:
            fail("no app given: use -a APP, set $FLYNN_APP, or run in a repository with a flynn remote")
        cluster, app = found
        if explicit is not None and cluster.name != explicit:
            fail(f"the flynn remote points at cluster {cluster.name!r}, not {explicit!r}: use -a APP")
        self._cluster = cluster
        self._app = app
        return app

    def client(self, cluster: Cluster | None = None) -> Client:
        cluster = cluster or self.cluster()
        if cluster.name not in self._clients:
            self._clients[cluster.name] = make_client(cluster)
        return self._clients[cluster.name]


def make_client(cluster: Cluster, *, timeout: float = 30.0) -> Client:
    from flynn.controller.client import Client

    try:
        return Client(cluster.controller_url, cluster.key, tls_pin=cluster.tls_pin or None, timeout=timeout)
    except ValueError as exc:
        fail(f"cluster {cluster.name!r}: {exc}")


def state() -> State:
    ctx = click.get_current_context()
    obj = ctx.find_object(State)
    if obj is None:
        obj = ctx.ensure_object(State)
    return obj


def app_and_client() -> tuple[str, Client]:
    st = state()
    app = st.app()  # first: the app's git remote may choose the cluster
    return app, st.client()


def _set_app(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(State).app_flag = value


def _set_cluster(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(State).cluster_flag = value


def app_options(
    *, short_app: bool = True, with_app: bool = True, short_cluster: bool = True
) -> Callable[[F], F]:
    """``-a APP`` / ``-c CLUSTER`` accepted after the command too (``flynn env -a myapp``);
    ``short_cluster=False`` for commands whose own ``-c`` means something else (``route add``)."""

    def decorate(f: F) -> F:
        f = click.option(
            *(["-c", "--cluster"] if short_cluster else ["--cluster"]),
            metavar="CLUSTER",
            expose_value=False,
            callback=_set_cluster,
            help="the cluster (default: the rc file's default)",
        )(f)
        if not with_app:
            return f
        app_decls = ["-a", "--app"] if short_app else ["--app"]
        return click.option(*app_decls, metavar="APP", expose_value=False, callback=_set_app, help="the app")(
            f
        )

    return decorate
