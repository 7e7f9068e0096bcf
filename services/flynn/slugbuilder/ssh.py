"""``SSH_CLIENT_KEY`` / ``SSH_CLIENT_HOSTS`` (seed 000): git over SSH during the build.

The key and the known hosts go to a private directory of the build's temporary space (0700, files
0600), never into ``/app`` (which becomes the slug) nor the log, and ``GIT_SSH_COMMAND`` points ssh
at them, with strict host key checking and no prompts. ``~/.ssh`` is not used: ssh takes it from
the passwd entry, and a job's dynamic user has ``/`` as its home.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def setup(environ: Mapping[str, str], workdir: Path) -> tuple[dict[str, str], str | None]:
    """The env for git (``GIT_SSH_COMMAND``) and a log line saying what was set up (no values)."""
    key = environ.get("SSH_CLIENT_KEY", "").replace("\r\n", "\n").strip()
    hosts = environ.get("SSH_CLIENT_HOSTS", "").replace("\r\n", "\n").strip()
    if not key and not hosts:
        return {}, None
    directory = workdir / "ssh"
    directory.mkdir(mode=0o700)
    known_hosts = directory / "known_hosts"
    _write_private(known_hosts, hosts + "\n" if hosts else "")
    command = [
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
    ]
    if key:
        identity = directory / "id"
        _write_private(identity, key + "\n")  # ssh refuses a key without its final newline
        command += ["-o", "IdentitiesOnly=yes", "-i", str(identity)]
    count = sum(1 for ln in hosts.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))
    note = f"git over SSH: {'the SSH_CLIENT_KEY key, ' if key else ''}{count} known host key(s)"
    return {"GIT_SSH_COMMAND": shlex.join(command)}, note
