"""Logging setup: journald with structured fields under systemd, plain stderr elsewhere.

Secrets never reach a log: :class:`RedactingFilter` masks values of known secret names and any
string registered with :func:`register_secret` (keys, passwords) before a record is emitted.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable

_SECRET_NAMES = re.compile(r"(?i)\b([A-Z0-9_]*(?:KEY|SECRET|PASSWORD|TOKEN|PASS|CREDENTIALS?))=([^\s,;]+)")
_secrets_lock = threading.Lock()
_secrets: set[str] = set()
# platform services that are also system apps of the controller (flynn -a NAME log)
SYSTEM_APP_SERVICES = frozenset(
    {"controller", "scheduler", "router", "blobstore", "gitreceive", "logaggregator"}
)


def register_secret(value: str) -> None:
    """Mask ``value`` wherever it would appear in a log line (values shorter than 4 are ignored)."""
    if len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    text = _SECRET_NAMES.sub(lambda m: f"{m.group(1)}=<redacted>", text)
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, "<redacted>")
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


def _journal_handler(component: str, extra_fields: dict[str, str]) -> logging.Handler | None:
    if not os.environ.get("JOURNAL_STREAM") and not os.environ.get("INVOCATION_ID"):
        return None
    try:
        from systemd import journal
    except ImportError:
        return None
    fields = {"SYSLOG_IDENTIFIER": f"flynn-{component}", "FLYNN_COMPONENT": component}
    if component in SYSTEM_APP_SERVICES:  # the field a job's lines carry too (docs/logs.md)
        fields["FLYNN_APP_NAME"] = component
    fields.update({k.upper(): v for k, v in extra_fields.items()})
    handler: logging.Handler = journal.JournalHandler(**fields)
    return handler


def setup_logging(
    component: str,
    *,
    level: str | int | None = None,
    extra_fields: dict[str, str] | None = None,
    quiet_loggers: Iterable[str] = ("aiohttp.access",),
) -> logging.Logger:
    """Configure the root logger once for a service process and return the component's logger."""
    resolved = level if level is not None else os.environ.get("FLYNN_LOG_LEVEL", "INFO").upper()
    root = logging.getLogger()
    root.handlers.clear()
    handler = _journal_handler(component, extra_fields or {})
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(resolved)
    for name in quiet_loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    return logging.getLogger(f"flynn.{component}")
