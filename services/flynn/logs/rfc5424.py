"""Syslog messages for sinks: RFC 5424 with octet-counted framing (RFC 6587 §3.4.1, RFC 5425 §4.3).

One line becomes::

    LEN SP <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - [flynn@32473 app_id="..." job_id="..."
    type="..." stream="..." release_id="..."] BOM MSG

* PRI: facility user (1) and the line's priority as severity (stdout 6, stderr 3).
* TIMESTAMP: journald's time of the line, UTC with microseconds. HOSTNAME: the host id.
  APP-NAME: the app's name, PROCID: ``TYPE.JOBID`` (Flynn's form). MSGID: ``-``.
* Header fields are printable US-ASCII (other characters become ``_``) cut to their RFC limits;
  ``-`` stands for an empty field. In the structured data ``"``, ``\\`` and ``]`` are escaped.
  ``32473`` is IANA's example enterprise number (RFC 5612): the project has none of its own.
* MSG is UTF-8 and so starts with a BOM, as §6.4 asks.
"""

from __future__ import annotations

from flynn.logs.model import Line, timestamp

FACILITY_USER = 1
SD_ID = "flynn@32473"
BOM = b"\xef\xbb\xbf"
MAX_HOSTNAME, MAX_APP_NAME, MAX_PROCID = 255, 48, 128


def header_field(value: str | None, limit: int) -> str:
    if not value:
        return "-"
    clean = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value[:limit])
    return clean or "-"


def sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def structured_data(line: Line) -> str:
    params = [
        ("app_id", line.app_id),
        ("job_id", line.job_id),
        ("type", line.type),
        ("stream", line.stream),
        ("release_id", line.release_id),
    ]
    body = "".join(f' {name}="{sd_escape(value)}"' for name, value in params if value)
    return f"[{SD_ID}{body}]"


def message(line: Line) -> bytes:
    """The SYSLOG-MSG of a line (without framing)."""
    pri = FACILITY_USER * 8 + max(0, min(7, line.priority))
    procid = f"{line.type}.{line.job_id}" if line.type else line.job_id
    head = " ".join(
        (
            f"<{pri}>1",
            timestamp(line.ts),
            header_field(line.host_id, MAX_HOSTNAME),
            header_field(line.app_name, MAX_APP_NAME),
            header_field(procid, MAX_PROCID),
            "-",
            structured_data(line),
        )
    )
    return head.encode() + b" " + BOM + line.msg.encode("utf-8", errors="replace")


def frame(msg: bytes) -> bytes:
    """Octet counting: the message's length in bytes, a space, the message."""
    return str(len(msg)).encode() + b" " + msg
