"""The buildpack API's ``ENV_DIR``: one file per variable of the app's env, named after it.

The build job's environment is the app's release env plus gitreceive's build env
(docs/gitreceive.md); what the host or systemd set for the job itself, and the SSH client key,
are not app config and stay out. Values are written, never printed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

NOT_APP_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "PORT",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
        "TERM",
        "TMPDIR",
        "INVOCATION_ID",
        "JOURNAL_STREAM",
        "SYSTEMD_EXEC_PID",
        "STATE_DIRECTORY",
        "SSH_CLIENT_KEY",
        "SSH_CLIENT_HOSTS",
    }
)
SECRET_ONLY = frozenset({"SSH_CLIENT_KEY", "SSH_CLIENT_HOSTS"})  # for the slugbuilder, not buildpacks


def app_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in NOT_APP_ENV and not k.startswith("FLYNN_")}


def write(dest: Path, environ: Mapping[str, str]) -> list[str]:
    """Fill the (new) directory ``dest``; returns the names written."""
    dest.mkdir(mode=0o700)
    names = sorted(app_env(environ))
    for name in names:
        fd = os.open(dest / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(environ[name])
    return names


def buildpack_env(environ: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The environment buildpack scripts run with: ours without the SSH secrets, plus ``extra``."""
    env = {k: v for k, v in environ.items() if k not in SECRET_ONLY}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(extra)
    return env
