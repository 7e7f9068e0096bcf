"""The host's persistent identity: chosen once, kept in the state directory across reboots.

``/var/lib/flynn/host.json`` holds the host id and when the host first joined. The id defaults to
the hostname with everything but letters and digits removed (as Flynn did: ``ip-10-0-2-237`` becomes
``ip1002237``), because job ids are ``HOSTID-UUID`` and must split on the first dash. Once written,
the stored id wins; a conflicting configured id is refused rather than silently renaming a host.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from flynn.common.errors import ConfigError

_ID_RE = re.compile(r"^[A-Za-z0-9]{1,63}$")
STATE_FILE = "host.json"


@dataclass(frozen=True)
class HostIdentity:
    id: str
    created_at: float


def id_from_hostname(hostname: str | None = None) -> str:
    name = (hostname or socket.gethostname()).split(".", 1)[0]
    cleaned = re.sub(r"[^A-Za-z0-9]", "", name)[:63]
    if not cleaned:
        raise ConfigError(f"cannot derive a host id from hostname {name!r}; set FLYNN_HOST_ID")
    return cleaned


def validate_id(host_id: str) -> str:
    if not _ID_RE.match(host_id):
        raise ConfigError(f"host id {host_id!r} must be 1-63 letters or digits (no dashes)")
    return host_id


def load_or_create(state_dir: Path, configured_id: str | None = None) -> HostIdentity:
    path = state_dir / STATE_FILE
    if path.exists():
        try:
            data = json.loads(path.read_text())
            identity = HostIdentity(id=validate_id(str(data["id"])), created_at=float(data["created_at"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is unreadable or corrupt ({exc}); move it away to re-create") from None
        if configured_id and configured_id != identity.id:
            raise ConfigError(
                f"{path} belongs to host {identity.id!r}, refusing to start as {configured_id!r}"
            )
        return identity
    identity = HostIdentity(
        id=validate_id(configured_id) if configured_id else id_from_hostname(), created_at=time.time()
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump({"id": identity.id, "created_at": identity.created_at}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return identity
