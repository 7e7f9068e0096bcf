"""Children of the build (buildpack scripts, git) and their cancellation.

Each child runs in its own session (process group), so cancelling kills the whole tree a
``bin/compile`` started (pip, npm, compilers) at once. In a build job systemd would kill what is
left anyway (``KillMode=mixed``); outside one (tests, a developer's shell) nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flynn.slugbuilder.errors import BuildError, Cancelled


class _Children:
    """The running children, and the cancellation. A child can run (and print) before Popen()
    has returned in the parent, so a cancelling signal may come while a child exists that is not
    in ``running`` yet: :func:`cancel` then only records it, and :func:`run` kills the child and
    raises as soon as it is registered."""

    def __init__(self) -> None:
        self.running: set[subprocess.Popen[bytes]] = set()
        self.starting = False
        self.cancelled: str | None = None

    def check(self) -> None:
        """Raise :class:`Cancelled` if a signal asked the build to stop."""
        if self.cancelled is not None:
            raise Cancelled(self.cancelled)


_children = _Children()


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str = ""

    @property
    def how(self) -> str:
        """``exited with status N`` or ``was killed by SIGKILL``."""
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"was killed by {name}"
        return f"exited with status {self.returncode}"


def run(
    argv: Sequence[str | Path],
    *,
    cwd: Path,
    env: Mapping[str, str],
    capture: bool = False,
) -> Result:
    """Run a child with stdin from /dev/null and stderr (and stdout unless ``capture``) passed
    straight through to ours, so its output reaches the log as it is written."""
    children = _children
    children.check()
    children.starting = True
    try:
        proc = subprocess.Popen(
            [str(a) for a in argv],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            start_new_session=True,
        )
        children.running.add(proc)
    except OSError as exc:
        raise BuildError(f"cannot run {argv[0]}: {exc.strerror}") from None
    finally:
        children.starting = False
    if children.cancelled is not None:  # a signal came while it was being started
        kill_all()
        children.running.discard(proc)
        children.check()
    try:
        out, _ = proc.communicate()
    finally:
        children.running.discard(proc)
    return Result(proc.returncode, out.decode(errors="replace") if out else "")


def cancel(signame: str) -> None:
    """From the handler of a cancelling signal: SIGKILL every child's process group and raise
    :class:`Cancelled` where the build is; if a child is being started just now, record the
    cancellation instead (:func:`run` kills it and raises once it is registered)."""
    kill_all()
    if _children.starting:
        _children.cancelled = signame
        return
    raise Cancelled(signame)


def kill_all() -> None:
    """SIGKILL every running child's process group (from a signal handler: no locks, no waits)."""
    for proc in list(_children.running):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
