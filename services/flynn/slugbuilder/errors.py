"""The one exception a build fails with: its message is the one-line reason printed at the end."""

from __future__ import annotations


class BuildError(Exception):
    """The build cannot go on; ``str()`` is a one-line reason without secrets."""


class Cancelled(BaseException):
    """A signal (SIGTERM from ``systemctl stop``, SIGINT, SIGHUP) asked the build to stop."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame
