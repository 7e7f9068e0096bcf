"""Validation of log sink bodies and of ``GET /apps/:app/log`` parameters (docs/logs.md).

A sink body is ``{"kind": "syslog", "url": "syslog://HOST[:PORT]" | "syslog+tls://HOST[:PORT]",
"use_tls"?: bool, "ca_cert"?: PEM, "id"?: UUID}``. ``use_tls: true`` turns a ``syslog://`` URL
into ``syslog+tls://``; the stored URL is canonical (lower-case host, explicit port: 514 plain,
6514 TLS), so the same sink cannot be added twice under two spellings. ``ca_cert`` (TLS only)
holds the PEM certificate(s) the sink's certificate is verified against instead of the system
CAs.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flynn.controller.schema import (
    PROC_TYPE_RE,
    boolean,
    fail,
    obj,
    query_bool,
    query_int,
    string,
    uuid_str,
)

KINDS = ("syslog",)
SCHEMES = {"syslog": 514, "syslog+tls": 6514}
MAX_URL = 2048
MAX_PEM = 64 * 1024
MAX_LOG_LINES = 10_000
SINK_FIELDS = frozenset({"kind", "url", "use_tls", "ca_cert", "id"})
_HOST_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
LOG_JOB_ID_RE = re.compile(r"^[A-Za-z0-9]{1,63}-[A-Za-z0-9][A-Za-z0-9-]{0,63}$")


@dataclass(frozen=True)
class SinkSpec:
    id: str | None
    kind: str
    url: str
    ca_cert: str | None


def _host(raw: str) -> str:
    """A DNS name or an IP address (IPv6 in brackets in the URL), lower case."""
    host = raw.lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
            fail("url", f"{raw[:80]!r} is not a host name or IP address")
        return host.rstrip(".")
    return f"[{ip}]" if ip.version == 6 else str(ip)


def sink_url(raw: str, use_tls: bool | None) -> str:
    if any(c.isspace() for c in raw):
        fail("url", "must not contain whitespace")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        fail("url", "is not a valid URL (bad host or port)")
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        fail("url", "must be syslog://HOST[:PORT] or syslog+tls://HOST[:PORT]")
    if parts.username is not None or parts.password is not None:
        fail("url", "must not contain credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        fail("url", "must be just a host and port (no path, query or fragment)")
    if not parts.hostname:
        fail("url", "has no host")
    if use_tls is True:
        scheme = "syslog+tls"
    elif use_tls is False and scheme == "syslog+tls":
        fail("use_tls", "is false but the URL is syslog+tls://")
    if port == 0:
        fail("url", "port 0 is not a port")
    return f"{scheme}://{_host(parts.hostname)}:{port or SCHEMES[scheme]}"


def check_ca(pem: str) -> str:
    from cryptography import x509

    if len(pem.encode()) > MAX_PEM:
        fail("ca_cert", f"longer than {MAX_PEM} bytes")
    if "-----BEGIN CERTIFICATE-----" not in pem:
        fail("ca_cert", "holds no PEM CERTIFICATE block")
    try:
        x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        fail("ca_cert", "is not a valid PEM certificate")
    return pem


def sink_create(value: Any) -> SinkSpec:
    body = obj(value, "", SINK_FIELDS)
    kind = string(body.get("kind", "syslog"), "kind", max_len=16)
    if kind not in KINDS:
        fail("kind", f"must be one of {', '.join(KINDS)}")
    if "url" not in body:
        fail("url", "is required")
    use_tls = None if body.get("use_tls") is None else boolean(body["use_tls"], "use_tls")
    url = sink_url(string(body["url"], "url", max_len=MAX_URL), use_tls)
    ca = None
    if body.get("ca_cert") is not None:
        ca = check_ca(string(body["ca_cert"], "ca_cert", max_len=MAX_PEM))
        if not url.startswith("syslog+tls://"):
            fail("ca_cert", "is only for a TLS sink (use_tls or syslog+tls://)")
    sink_id = uuid_str(body["id"], "id") if body.get("id") is not None else None
    return SinkSpec(sink_id, kind, url, ca)


@dataclass(frozen=True)
class LogQuery:
    lines: int | None
    follow: bool
    process_type: str | None
    job_id: str | None

    def params(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.lines is not None:
            out["lines"] = str(self.lines)
        if self.follow:
            out["follow"] = "true"
        if self.process_type:
            out["process_type"] = self.process_type
        if self.job_id:
            out["job_id"] = self.job_id
        return out


def log_query(query: Any) -> LogQuery:
    lines = query_int(query, "lines", None, 0, MAX_LOG_LINES)
    ptype = query.get("process_type") or None
    if ptype is not None:
        string(ptype, "process_type", max_len=30, pattern=PROC_TYPE_RE, what="a process type")
    job_id = query.get("job_id") or None
    if job_id is not None:
        string(job_id, "job_id", max_len=128, pattern=LOG_JOB_ID_RE, what="a job id (HOSTID-ID)")
    return LogQuery(lines, query_bool(query, "follow"), ptype, job_id)
