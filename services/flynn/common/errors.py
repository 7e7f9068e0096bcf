"""Error types shared by services and clients."""

from __future__ import annotations


class FlynnError(Exception):
    """Base class of errors that carry a one-line, user-facing reason."""


class ConfigError(FlynnError):
    """A setting (flag, environment variable, file) is missing or invalid."""


class APIError(FlynnError):
    """An HTTP API answered with an error status.

    ``status`` is the HTTP status (0 when the server could not be reached) and ``message`` the
    server's one-line reason, taken from its JSON ``{"error": ...}`` body when it sent one.
    """

    def __init__(self, status: int, message: str, *, url: str = "") -> None:
        self.status = status
        self.message = message
        self.url = url
        super().__init__(f"{message} (HTTP {status})" if status else message)
