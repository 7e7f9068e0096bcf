"""Validation of everything a client can send to discoverd; each failure is a one-line reason."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
META_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
PROTOS = ("tcp", "udp")
MAX_INSTANCE_META_KEYS = 64
MAX_INSTANCE_META_BYTES = 16 * 1024
MAX_SERVICE_META_BYTES = 64 * 1024


class ValidationError(ValueError):
    """Bad input; ``status`` is 400 or 413."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def service_name(name: str) -> str:
    if not SERVICE_RE.match(name):
        raise ValidationError(
            f"invalid service name {name[:80]!r}: 1-63 lowercase letters, digits or '-', "
            "starting with a letter or digit"
        )
    return name


def instance_id(iid: str) -> str:
    if not INSTANCE_ID_RE.match(iid):
        raise ValidationError(f"invalid instance id {iid[:80]!r}: 1-128 of A-Z a-z 0-9 _ . : -")
    return iid


def addr(value: Any) -> str:
    """``IP:PORT`` or ``[IPv6]:PORT``, normalised."""
    if not isinstance(value, str) or ":" not in value:
        raise ValidationError("addr must be a string 'IP:PORT'")
    host, _, port_s = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValidationError(f"addr {value[:80]!r}: {host[:60]!r} is not an IP address") from None
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValidationError(f"addr {value[:80]!r}: port must be 1-65535")
    return f"[{ip}]:{int(port_s)}" if ip.version == 6 else f"{ip}:{int(port_s)}"


def instance_body(body: Any) -> dict[str, Any]:
    """The JSON body of ``PUT /services/:s/instances/:id``."""
    if not isinstance(body, dict):
        raise ValidationError("instance must be a JSON object")
    unknown = set(body) - {"addr", "proto", "meta", "id", "service", "index", "updated"}
    if unknown:
        raise ValidationError(f"unknown instance field(s): {', '.join(sorted(unknown))}")
    proto = body.get("proto", "tcp")
    if proto not in PROTOS:
        raise ValidationError(f"proto must be one of {', '.join(PROTOS)}")
    meta = body.get("meta") or {}
    if not isinstance(meta, dict):
        raise ValidationError("meta must be an object of string values")
    if len(meta) > MAX_INSTANCE_META_KEYS:
        raise ValidationError(f"meta has more than {MAX_INSTANCE_META_KEYS} keys", 413)
    for k, v in meta.items():
        if not META_KEY_RE.match(k):
            raise ValidationError(f"invalid meta key {k[:80]!r}")
        if not isinstance(v, str):
            raise ValidationError(f"meta value of {k!r} must be a string")
    if len(json.dumps(meta)) > MAX_INSTANCE_META_BYTES:
        raise ValidationError(f"meta is larger than {MAX_INSTANCE_META_BYTES} bytes", 413)
    return {"addr": addr(body.get("addr")), "proto": proto, "meta": meta}


def service_meta(body: Any) -> tuple[Any, int]:
    """``{"data": <json>, "index": N}`` for a compare-and-set of service meta."""
    if not isinstance(body, dict) or "data" not in body:
        raise ValidationError('meta must be {"data": ..., "index": N}')
    index = body.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValidationError("index must be a non-negative integer (0: create)")
    if len(json.dumps(body["data"])) > MAX_SERVICE_META_BYTES:
        raise ValidationError(f"service meta is larger than {MAX_SERVICE_META_BYTES} bytes", 413)
    return body["data"], index


def peer_addr(value: str) -> str:
    """A Raft peer given by an operator: an IP (the Raft port is implied) or IP:PORT."""
    host, sep, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    try:
        ip = ipaddress.ip_address(host if sep else value)
    except ValueError:
        raise ValidationError(f"invalid peer address {value[:80]!r}: expected an IP address") from None
    if sep and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValidationError(f"invalid peer address {value[:80]!r}: bad port")
    return str(ip)
