"""Errors a request can end with; api.py turns each into ``{"error", "code"[, "field"]}`` JSON."""

from __future__ import annotations


class ControllerError(Exception):
    status = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, object]:
        out: dict[str, object] = {"error": self.message, "code": self.status}
        if self.field is not None:
            out["field"] = self.field
        return out


class Invalid(ControllerError):
    """Bad input (400); ``field`` names the offending field, dotted (``processes.web.args``)."""

    status = 400


class NotFound(ControllerError):
    status = 404


class Conflict(ControllerError):
    status = 409


class Unavailable(ControllerError):
    """A collaborator (database, hosts) cannot be reached (503)."""

    status = 503


class BadGateway(ControllerError):
    """A host answered something unusable (502)."""

    status = 502
