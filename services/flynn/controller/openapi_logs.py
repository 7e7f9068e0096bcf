"""The OpenAPI entries of the log endpoints (merged into openapi.document)."""

from __future__ import annotations

from flynn.controller import openapi as o
from flynn.controller import sinkschema as ss
from flynn.controller.schema import PROC_TYPE_RE

J = o.J

SINK_URL: J = {"type": "string", "maxLength": ss.MAX_URL, "pattern": r"^syslog(\+tls)?://[^\s/?#@]+/?$"}
STATUS: J = o.obj(
    {
        "connected": {"type": "boolean"},
        "delivered": {"type": "integer", "minimum": 0},
        "dropped": {"type": "integer", "minimum": 0},
        "buffered": {"type": "integer", "minimum": 0},
        "error": o.nullable({"type": "string"}),
    },
    ["connected", "delivered", "dropped", "buffered", "error"],
)

SCHEMAS: J = {
    "Sink": o.obj(
        {
            "id": o.UUID,
            "kind": {"enum": list(ss.KINDS)},
            "url": {"type": "string", "pattern": r"^syslog(\+tls)?://"},
            "use_tls": {"type": "boolean"},
            "ca_cert": o.nullable({"type": "string"}),
            "created_at": o.TIME,
            "status": o.nullable(STATUS),
        },
        ["id", "kind", "url", "use_tls", "ca_cert", "created_at"],
    ),
    "SinkCreate": o.obj(
        {
            "id": o.nullable(o.UUID),
            "kind": {"enum": list(ss.KINDS)},
            "url": SINK_URL,
            "use_tls": o.nullable({"type": "boolean"}),
            "ca_cert": o.nullable({"type": "string", "maxLength": ss.MAX_PEM}),
        },
        ["url"],
    ),
    "LogLine": o.obj(
        {
            "ts": {"type": "integer", "minimum": 0, "description": "µs since the epoch"},
            "timestamp": {"type": "string"},
            "host_id": {"type": "string"},
            "app_id": o.nullable({"type": "string"}),
            "app_name": o.nullable({"type": "string"}),
            "job_id": {"type": "string"},
            "type": o.nullable({"type": "string"}),
            "release_id": o.nullable({"type": "string"}),
            "stream": {"type": "string"},
            "priority": {"type": "integer", "minimum": 0, "maximum": 7},
            "msg": {"type": "string"},
        },
        ["ts", "timestamp", "host_id", "job_id", "stream", "priority", "msg"],
    ),
}

SINK = o._param("id", description="sink id")


def paths() -> J:
    return {
        "/apps/{app}/log": {
            "parameters": [o.APP],
            "get": o._op(
                "the app's last lines (up to 10,000) from a log aggregator, oldest first, as"
                " newline-delimited JSON; with follow=true new lines follow as they come",
                {
                    "200": {
                        "description": "one LogLine object per line",
                        "content": {"application/x-ndjson": {"schema": o.ref("LogLine")}},
                    },
                    **o._errors(400, *o.READ),
                },
                params=[
                    o._param(
                        "lines", "query", {"type": "integer", "minimum": 0, "maximum": ss.MAX_LOG_LINES}
                    ),
                    o._param("follow", "query", o.BOOL),
                    o._param("process_type", "query", {"type": "string", "pattern": PROC_TYPE_RE.pattern}),
                    o._param(
                        "job_id",
                        "query",
                        {"type": "string", "pattern": ss.LOG_JOB_ID_RE.pattern, "maxLength": 128},
                    ),
                ],
            ),
        },
        "/sinks": {
            "get": o._op("the log sinks, newest first", {**o._ok(o._list("Sink")), **o._errors(401, 503)}),
            "post": o._op(
                "add a log sink", {**o._ok(o.ref("Sink"), 201), **o._errors(*o.WRITE, 409)}, body="SinkCreate"
            ),
        },
        "/sinks/{id}": {
            "parameters": [SINK],
            "get": o._op("a log sink", {**o._ok(o.ref("Sink")), **o._errors(*o.READ)}),
            "delete": o._op("remove a log sink", {**o._ok(o.ref("Sink")), **o._errors(*o.READ)}),
        },
    }
