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

from flynn.slugbuilder.errors import BuildError

_running: set[subprocess.Popen[bytes]] = set()


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
    try:
        proc = subprocess.Popen(
            [str(a) for a in argv],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            start_new_session=True,
        )
    except OSError as exc:
        raise BuildError(f"cannot run {argv[0]}: {exc.strerror}") from None
    _running.add(proc)
    try:
        out, _ = proc.communicate()
    finally:
        _running.discard(proc)
    return Result(proc.returncode, out.decode(errors="replace") if out else "")


def kill_all() -> None:
    """SIGKILL every running child's process group (from a signal handler: no locks, no waits)."""
    for proc in list(_running):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
