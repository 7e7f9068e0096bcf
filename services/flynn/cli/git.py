"""The little of git the CLI needs: the ``flynn`` remote of the current repository."""

from __future__ import annotations

import subprocess

from flynn.common.errors import FlynnError

DEFAULT_REMOTE = "flynn"


class GitError(FlynnError):
    """A git command failed."""


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError:
        return subprocess.CompletedProcess(["git", *args], 127, "", "git is not installed")
    except subprocess.TimeoutExpired:
        raise GitError(f"git {' '.join(args)} timed out") from None


def in_repo() -> bool:
    return _git("rev-parse", "--git-dir").returncode == 0


def remote_url(name: str = DEFAULT_REMOTE) -> str | None:
    """The URL of remote ``name`` in the current repository (None outside one or without it)."""
    res = _git("config", "--get", f"remote.{name}.url")
    url = res.stdout.strip()
    return url if res.returncode == 0 and url else None


def set_remote(name: str, url: str) -> None:
    """Add remote ``name`` (or point an existing one at ``url``)."""
    verb = "set-url" if remote_url(name) is not None else "add"
    res = _git("remote", verb, name, url)
    if res.returncode != 0:
        raise GitError(f"git remote {verb} {name}: {_last_line(res.stderr)}")


def _set_config(key: str, value: str) -> None:
    res = _git("config", "--replace-all", key, value)
    if res.returncode != 0:
        raise GitError(f"git config {key}: {_last_line(res.stderr)}")


def set_credential_helper(git_url: str, helper: str) -> None:
    """``credential.GITURL.helper`` in the current repository (git asks it for that URL's key)."""
    _set_config(f"credential.{git_url.rstrip('/')}.helper", helper)


def set_ca_info(git_url: str, ca_file: str) -> None:
    """``http.GITURL/.sslCAInfo`` in the current repository: git trusts the cluster CA for that
    URL only (the routers' certificate is signed by it, not by a public CA)."""
    _set_config(f"http.{git_url.rstrip('/')}/.sslCAInfo", ca_file)


def remove_remote(name: str) -> None:
    res = _git("remote", "remove", name)
    if res.returncode != 0:
        raise GitError(f"git remote remove {name}: {_last_line(res.stderr)}")


def app_url(git_url: str, app: str) -> str:
    return f"{git_url.rstrip('/')}/{app}.git"


def app_of_url(git_url: str, url: str) -> str | None:
    """The app a remote URL names on a cluster whose git URL is ``git_url``, if it is one."""
    if not git_url:
        return None
    prefix = git_url.rstrip("/") + "/"
    if not url.startswith(prefix) or not url.endswith(".git"):
        return None
    app = url[len(prefix) : -len(".git")]
    return app if app and "/" not in app else None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "failed"
