"""``flynn git-credentials get|store|erase``: a git credential helper answering the cluster key.

git runs it (``credential.GITURL.helper``, which ``flynn create`` sets in the repository it adds
the remote to) with the request on stdin as ``key=value`` lines ending with a blank line
(``protocol=http``, ``host=10.0.0.1:1220``, maybe ``path=``). ``get`` answers ``username=flynn``
and ``password=KEY`` for the configured cluster whose ``GitURL`` has that protocol, host and port
(and, if the GitURL has a path, a path under it); for anything else it answers nothing, so git
goes on to its other helpers. ``store`` and ``erase`` change nothing: the key lives in the rc
file, and ``flynn cluster add -f`` replaces it. The key is written only to git's pipe.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click

from flynn.cli.rcfile import Cluster, RcFile

ACTIONS = ("get", "store", "erase")
DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_request(text: str) -> dict[str, str]:
    """git's credential request: ``key=value`` lines up to a blank line (``url=`` expanded)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value
    url = fields.pop("url", "")
    if url:
        parts = urlsplit(url)
        fields.setdefault("protocol", parts.scheme)
        fields.setdefault("host", parts.netloc.rpartition("@")[2])
        if parts.path.strip("/"):
            fields.setdefault("path", parts.path.lstrip("/"))
    return fields


def _host_port(scheme: str, netloc: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname.lower(), port or DEFAULT_PORTS.get(scheme, 0)


def matches(cluster: Cluster, request: dict[str, str]) -> bool:
    """Whether the request is for this cluster's git URL."""
    if not cluster.git_url or not cluster.key:
        return False
    git = urlsplit(cluster.git_url)
    protocol = request.get("protocol", "")
    if protocol != git.scheme:
        return False
    wanted = _host_port(git.scheme, git.netloc)
    asked = _host_port(protocol, request.get("host", ""))
    if wanted is None or wanted != asked:
        return False
    prefix = git.path.strip("/")
    path = request.get("path", "")
    return not prefix or not path or path == prefix or path.startswith(prefix + "/")


def helper_command() -> str:
    """The ``credential.helper`` value that runs this CLI's ``git-credentials``."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "flynn" and argv0.exists():
        command = [str(argv0.resolve())]
    else:
        command = [sys.executable, "-m", "flynn.cli.main"]
    return "!" + shlex.join([*command, "git-credentials"])


@click.command("git-credentials", context_settings={"ignore_unknown_options": True})
@click.argument("action", type=click.Choice(ACTIONS))
def git_credentials(action: str) -> None:
    """Git credential helper: the cluster key for the cluster's git URL (for git's use)."""
    request = parse_request(sys.stdin.read())
    if action != "get":
        return
    for cluster in RcFile.load().clusters:
        if matches(cluster, request):
            sys.stdout.write(f"username=flynn\npassword={cluster.key}\n")
            return


def register(group: click.Group) -> None:
    group.add_command(git_credentials)
