"""The OpenAPI 3.1 document of the controller API, served at ``GET /openapi.json``.

Kept in code next to the validation it describes (schema.py): the patterns and limits here are the
ones the API enforces. tests/unit/test_controller_openapi.py validates real responses of every
route against it, and schemathesis fuzzes the API from it.
"""

from __future__ import annotations

from typing import Any

from flynn.controller import schema as s

J = dict[str, Any]


def ref(name: str) -> J:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(sch: J) -> J:
    return {"oneOf": [sch, {"type": "null"}]}


def obj(props: J, required: list[str] | None = None, *, additional: bool = False) -> J:
    out: J = {"type": "object", "properties": props, "additionalProperties": additional}
    if required:
        out["required"] = required
    return out


def strmap(key_pattern: str, max_props: int, max_len: int) -> J:
    return {
        "type": "object",
        "maxProperties": max_props,
        "propertyNames": {"pattern": key_pattern},
        "additionalProperties": {"type": "string", "maxLength": max_len},
    }


UUID: J = {"type": "string", "pattern": s.UUID_RE.pattern}
TIME: J = {"type": "string", "format": "date-time"}
APP_NAME: J = {"type": "string", "pattern": s.APP_NAME_RE.pattern, "maxLength": 63}
PROC_TYPE: J = {"type": "string", "pattern": s.PROC_TYPE_RE.pattern}
COUNTS: J = {
    "type": "object",
    "propertyNames": {"pattern": s.PROC_TYPE_RE.pattern},
    "additionalProperties": {"type": "integer", "minimum": 0, "maximum": s.MAX_COUNT},
}
ARGS: J = {
    "type": "array",
    "minItems": 1,
    "maxItems": s.MAX_ARGS,
    "items": {"type": "string", "minLength": 1},
}

CHECK: J = {
    "oneOf": [
        obj({"type": {"const": "tcp"}}, ["type"]),
        obj(
            {
                "type": {"const": "http"},
                "path": {"type": "string", "pattern": "^/[^\\s]*$", "maxLength": 1024},
                "status": {"type": "integer", "minimum": 100, "maximum": 599},
            },
            ["type"],
        ),
    ]
}
RESOURCES_IN: J = obj(
    {
        "memory": nullable(
            obj({"limit": {"type": "integer", "minimum": s.MIN_MEMORY, "maximum": s.MAX_MEMORY}})
        ),
        "cpu": nullable(obj({"limit": {"type": "integer", "minimum": 1, "maximum": s.MAX_CPU}})),
    }
)
RESOURCES_OUT: J = obj(
    {
        "memory": obj({"limit": {"type": "integer"}}, ["limit"]),
        "cpu": obj({"limit": {"type": "integer"}}, ["limit"]),
    },
    ["memory"],
)

SCHEMAS: J = {
    "Error": obj(
        {"error": {"type": "string"}, "code": {"type": "integer"}, "field": {"type": "string"}},
        ["error", "code"],
    ),
    "Meta": strmap(s.META_KEY_RE.pattern, s.MAX_META_KEYS, s.MAX_META_VALUE),
    "Env": strmap(s.ENV_NAME_RE.pattern, s.MAX_ENV_VARS, s.MAX_ENV_VALUE),
    "Status": obj(
        {
            "status": {"enum": ["healthy", "unhealthy"]},
            "database": {"enum": ["ok", "unavailable"]},
            "version": {"type": "string"},
        },
        ["status", "database", "version"],
    ),
    "App": obj(
        {
            "id": UUID,
            "name": APP_NAME,
            "meta": ref("Meta"),
            "strategy": {"enum": list(s.STRATEGIES)},
            "deploy_timeout": {"type": "integer", "minimum": 1, "maximum": 3600},
            "release_id": nullable(UUID),
            "system": {"type": "boolean"},
            "created_at": TIME,
            "updated_at": TIME,
        },
        [
            "id",
            "name",
            "meta",
            "strategy",
            "deploy_timeout",
            "release_id",
            "system",
            "created_at",
            "updated_at",
        ],
    ),
    "AppCreate": obj(
        {
            "id": nullable(UUID),
            "name": nullable(APP_NAME),
            "meta": ref("Meta"),
            "strategy": {"enum": list(s.STRATEGIES)},
            "deploy_timeout": {"type": "integer", "minimum": 1, "maximum": 3600},
            "system": {"type": "boolean"},
        }
    ),
    "AppUpdate": obj(
        {
            "meta": ref("Meta"),
            "strategy": {"enum": list(s.STRATEGIES)},
            "deploy_timeout": {"type": "integer", "minimum": 1, "maximum": 3600},
        }
    ),
    "Deleted": obj({"id": UUID}, ["id"]),
    "IdBody": obj({"id": UUID}, ["id"]),
    "Artifact": obj(
        {
            "id": UUID,
            "type": {"enum": list(s.ARTIFACT_TYPES)},
            "uri": {"type": "string"},
            "meta": ref("Meta"),
            "size": nullable({"type": "integer", "minimum": 0}),
            "sha256": nullable({"type": "string", "pattern": s.SHA256_RE.pattern}),
            "created_at": TIME,
        },
        ["id", "type", "uri", "meta", "size", "sha256", "created_at"],
    ),
    "ArtifactCreate": obj(
        {
            "id": nullable(UUID),
            "type": {"enum": list(s.ARTIFACT_TYPES)},
            "uri": {"type": "string", "pattern": "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\\s]*)?$"},
            "meta": ref("Meta"),
            "size": nullable({"type": "integer", "minimum": 0, "maximum": s.MAX_SIZE}),
            "sha256": nullable({"type": "string", "pattern": s.SHA256_RE.pattern}),
        },
        ["uri"],
    ),
    "ProcessIn": obj(
        {
            "args": ARGS,
            "env": ref("Env"),
            "omni": {"type": "boolean"},
            "service": nullable({"type": "string", "pattern": s.SERVICE_RE.pattern}),
            "check": nullable(CHECK),
            "resources": nullable(RESOURCES_IN),
        },
        ["args"],
    ),
    "Process": obj(
        {
            "args": {"type": "array", "items": {"type": "string"}},
            "env": ref("Env"),
            "omni": {"type": "boolean"},
            "service": nullable({"type": "string"}),
            "check": nullable(CHECK),
            "resources": RESOURCES_OUT,
        },
        ["args", "env", "omni", "service", "check", "resources"],
    ),
    "Release": obj(
        {
            "id": UUID,
            "app_id": UUID,
            "artifacts": {"type": "array", "items": UUID},
            "env": ref("Env"),
            "meta": ref("Meta"),
            "processes": {"type": "object", "additionalProperties": ref("Process")},
            "created_at": TIME,
        },
        ["id", "app_id", "artifacts", "env", "meta", "processes", "created_at"],
    ),
    "ReleaseCreate": obj(
        {
            "id": nullable(UUID),
            "app_id": {"type": "string", "description": "app id or name"},
            "artifacts": {"type": "array", "maxItems": s.MAX_ARTIFACTS, "uniqueItems": True, "items": UUID},
            "env": ref("Env"),
            "meta": ref("Meta"),
            "processes": {
                "type": "object",
                "maxProperties": s.MAX_PROCESS_TYPES,
                "propertyNames": {"pattern": s.PROC_TYPE_RE.pattern},
                "additionalProperties": ref("ProcessIn"),
            },
        },
        ["app_id"],
    ),
    "Formation": obj(
        {"app_id": UUID, "release_id": UUID, "processes": COUNTS, "created_at": TIME, "updated_at": TIME},
        ["app_id", "release_id", "processes", "created_at", "updated_at"],
    ),
    "FormationPut": obj({"processes": COUNTS}),
    "ExpandedFormation": obj(
        {
            "app": ref("App"),
            "release": ref("Release"),
            "artifacts": {"type": "array", "items": ref("Artifact")},
            "processes": COUNTS,
            "updated_at": TIME,
        },
        ["app", "release", "artifacts", "processes", "updated_at"],
    ),
    "Job": obj(
        {
            "id": {"type": "string"},
            "uuid": UUID,
            "host_id": {"type": "string"},
            "app_id": UUID,
            "release_id": UUID,
            "type": {"type": "string"},
            "state": {"enum": list(s.JOB_STATES)},
            "args": {"type": "array", "items": {"type": "string"}},
            "exit_status": nullable({"type": "integer"}),
            "host_error": nullable({"type": "string"}),
            "restarts": {"type": "integer", "minimum": 0},
            "meta": ref("Meta"),
            "created_at": TIME,
            "updated_at": TIME,
        },
        [
            "id",
            "uuid",
            "host_id",
            "app_id",
            "release_id",
            "type",
            "state",
            "args",
            "exit_status",
            "host_error",
            "restarts",
            "meta",
            "created_at",
            "updated_at",
        ],
    ),
    "JobPut": obj(
        {
            "release_id": nullable(UUID),
            "type": nullable(PROC_TYPE),
            "state": {"enum": list(s.JOB_STATES)},
            "args": nullable({"type": "array", "maxItems": s.MAX_ARGS, "items": {"type": "string"}}),
            "exit_status": nullable({"type": "integer", "minimum": -s.INT32 - 1, "maximum": s.INT32}),
            "host_error": nullable({"type": "string", "maxLength": s.MAX_TEXT}),
            "restarts": nullable({"type": "integer", "minimum": 0, "maximum": s.INT32}),
            "meta": nullable(ref("Meta")),
            # the job's identity, optional: must match the path when given
            "app_id": nullable({"type": "string", "maxLength": 64}),
            "host_id": nullable({"type": "string", "maxLength": 64}),
            "uuid": nullable({"type": "string", "maxLength": 64}),
        },
        ["state"],
    ),
    "JobRun": obj(
        {
            "args": ARGS,
            "release_id": nullable(UUID),
            "env": ref("Env"),
            "attach": {"type": "boolean"},
            "type": PROC_TYPE,
            "meta": ref("Meta"),
        },
        ["args"],
    ),
    "Deployment": obj(
        {
            "id": UUID,
            "app_id": UUID,
            "old_release_id": nullable(UUID),
            "new_release_id": UUID,
            "strategy": {"enum": list(s.STRATEGIES)},
            "status": {"enum": ["pending", "running", "complete", "failed"]},
            "error": nullable({"type": "string"}),
            "processes": COUNTS,
            "deploy_timeout": {"type": "integer"},
            "created_at": TIME,
            "finished_at": nullable(TIME),
        },
        [
            "id",
            "app_id",
            "old_release_id",
            "new_release_id",
            "strategy",
            "status",
            "error",
            "processes",
            "deploy_timeout",
            "created_at",
            "finished_at",
        ],
    ),
    "Event": obj(
        {
            "id": {"type": "integer", "minimum": 1},
            "app_id": nullable(UUID),
            "object_type": {"enum": list(s.OBJECT_TYPES)},
            "object_id": {"type": "string"},
            "op": {"enum": ["create", "update", "delete"]},
            "data": {},
            "created_at": TIME,
        },
        ["id", "app_id", "object_type", "object_id", "op", "data", "created_at"],
    ),
    "Key": obj(
        {
            "id": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "fingerprint": {"type": "string", "pattern": "^SHA256:[A-Za-z0-9+/]{43}$"},
            "type": {"type": "string"},
            "key": {"type": "string"},
            "comment": {"type": "string"},
            "created_at": TIME,
        },
        ["id", "fingerprint", "type", "key", "comment", "created_at"],
    ),
    "KeyCreate": obj({"key": {"type": "string", "maxLength": 16384}}, ["key"]),
}

ERROR_TEXT = {
    400: "bad input (the field is named in `field` when one is to blame)",
    401: "no or wrong key",
    404: "unknown object",
    409: "conflict (name or id taken, deployment in progress)",
    413: "request body over 1 MiB",
    415: "request body is not JSON",
    502: "a host answered something unusable",
    503: "database or hosts unavailable",
}


def _errors(*codes: int) -> J:
    return {
        str(c): {"description": ERROR_TEXT[c], "content": {"application/json": {"schema": ref("Error")}}}
        for c in codes
    }


def _ok(schema: J | None, status: int = 200, description: str = "OK") -> J:
    if schema is None:
        return {str(status): {"description": description}}
    return {str(status): {"description": description, "content": {"application/json": {"schema": schema}}}}


def _list(name: str) -> J:
    return {"type": "array", "items": ref(name)}


def _body(name: str) -> J:
    return {"required": True, "content": {"application/json": {"schema": ref(name)}}}


def _param(name: str, where: str = "path", schema: J | None = None, description: str = "") -> J:
    out: J = {"name": name, "in": where, "required": where == "path", "schema": schema or {"type": "string"}}
    if description:
        out["description"] = description
    return out


APP = _param("app", description="app id or name")
RELEASE = _param("release", description="release id")
JOB = _param("job", description="job id (HOSTID-UUID)")
ID = _param("id")
BOOL: J = {"type": "string", "enum": ["true", "false"]}

READ = (401, 404, 503)
WRITE = (400, 401, 404, 413, 415, 503)


def _op(
    summary: str, responses: J, *, body: str | None = None, params: list[J] | None = None, **kw: Any
) -> J:
    out: J = {"summary": summary, "responses": responses}
    if body:
        out["requestBody"] = _body(body)
    if params:
        out["parameters"] = params
    out.update(kw)
    return out


def paths() -> J:
    public: J = {"security": []}
    pem: J = {"type": "string"}
    return {
        "/status": {
            "get": _op(
                "health of the controller and its database",
                {**_ok(ref("Status")), **_ok(ref("Status"), 503, "database unavailable")},
                **public,
            )
        },
        "/openapi.json": {"get": _op("this document", _ok({"type": "object"}), **public)},
        "/ca-cert": {
            "get": _op(
                "the cluster CA certificate (PEM), for git and browsers to trust the routers",
                {
                    "200": {"description": "OK", "content": {"application/x-pem-file": {"schema": pem}}},
                    **_errors(404),
                },
                **public,
            )
        },
        "/apps": {
            "get": _op("every app, oldest first", {**_ok(_list("App")), **_errors(401, 503)}),
            "post": _op("create an app", {**_ok(ref("App"), 201), **_errors(*WRITE, 409)}, body="AppCreate"),
        },
        "/apps/{app}": {
            "parameters": [APP],
            "get": _op("an app", {**_ok(ref("App")), **_errors(*READ)}),
            "post": _op(
                "update meta, strategy, deploy_timeout",
                {**_ok(ref("App")), **_errors(*WRITE)},
                body="AppUpdate",
            ),
            "delete": _op("delete an app (not a system app)", {**_ok(ref("Deleted")), **_errors(400, *READ)}),
        },
        "/apps/{app}/meta": {
            "parameters": [APP],
            "get": _op("the app's meta", {**_ok(ref("Meta")), **_errors(*READ)}),
            "put": _op("replace the app's meta", {**_ok(ref("Meta")), **_errors(*WRITE)}, body="Meta"),
        },
        "/apps/{app}/release": {
            "parameters": [APP],
            "get": _op("the app's current release", {**_ok(ref("Release")), **_errors(*READ)}),
            "put": _op(
                "set the current release without a deployment",
                {**_ok(ref("Release")), **_errors(*WRITE)},
                body="IdBody",
            ),
        },
        "/apps/{app}/releases": {
            "parameters": [APP],
            "get": _op("the app's releases, newest first", {**_ok(_list("Release")), **_errors(*READ)}),
        },
        "/apps/{app}/formations": {
            "parameters": [APP],
            "get": _op("the app's formations", {**_ok(_list("Formation")), **_errors(*READ)}),
        },
        "/apps/{app}/formations/{release}": {
            "parameters": [APP, RELEASE],
            "get": _op(
                "a formation (expanded with ?expand=true)",
                {**_ok({"oneOf": [ref("Formation"), ref("ExpandedFormation")]}), **_errors(400, *READ)},
                params=[_param("expand", "query", BOOL)],
            ),
            "put": _op(
                "create or replace a formation",
                {**_ok(ref("Formation")), **_errors(*WRITE)},
                body="FormationPut",
            ),
            "delete": _op("delete a formation", {**_ok(ref("Formation")), **_errors(*READ)}),
        },
        "/formations": {
            "get": _op(
                "every formation; ?active=true: those with a non-zero count, expanded",
                {
                    **_ok({"oneOf": [_list("Formation"), _list("ExpandedFormation")]}),
                    **_errors(400, 401, 503),
                },
                params=[_param("active", "query", BOOL)],
            )
        },
        "/apps/{app}/jobs": {
            "parameters": [APP],
            "get": _op(
                "jobs not in a final state (?all=true: every job, last 1000), newest first",
                {**_ok(_list("Job")), **_errors(400, *READ)},
                params=[_param("all", "query", BOOL)],
            ),
            "post": _op(
                "start a one-off job on the host with the fewest jobs",
                {**_ok(ref("Job"), 201), **_errors(*WRITE)},
                body="JobRun",
            ),
        },
        "/apps/{app}/jobs/{job}": {
            "parameters": [APP, JOB],
            "get": _op("a job", {**_ok(ref("Job")), **_errors(*READ)}),
            "put": _op(
                "report a job's state (the scheduler)",
                {**_ok(ref("Job")), **_ok(ref("Job"), 201, "created"), **_errors(*WRITE)},
                body="JobPut",
            ),
            "delete": _op("stop a job (through its host)", {**_ok(ref("Job")), **_errors(*READ, 502)}),
        },
        "/apps/{app}/jobs/{job}/attach": {
            "parameters": [APP, JOB],
            "get": _op(
                "WebSocket to the job's stdin/stdout/stderr (proxied to its host)",
                {"101": {"description": "switching protocols"}, **_errors(400, *READ, 502)},
            ),
        },
        "/apps/{app}/deploy": {
            "parameters": [APP],
            "post": _op(
                "deploy a release of the app",
                {**_ok(ref("Deployment"), 201), **_errors(*WRITE, 409)},
                body="IdBody",
            ),
        },
        "/apps/{app}/deployments": {
            "parameters": [APP],
            "get": _op("the app's deployments, newest first", {**_ok(_list("Deployment")), **_errors(*READ)}),
        },
        "/deployments/{id}": {
            "parameters": [ID],
            "get": _op("a deployment", {**_ok(ref("Deployment")), **_errors(*READ)}),
        },
        "/artifacts": {
            "get": _op("artifacts, newest first", {**_ok(_list("Artifact")), **_errors(401, 503)}),
            "post": _op(
                "create an artifact",
                {**_ok(ref("Artifact"), 201), **_errors(*WRITE, 409)},
                body="ArtifactCreate",
            ),
        },
        "/artifacts/{id}": {
            "parameters": [ID],
            "get": _op("an artifact", {**_ok(ref("Artifact")), **_errors(*READ)}),
        },
        "/releases": {
            "post": _op(
                "create a release (does not deploy)",
                {**_ok(ref("Release"), 201), **_errors(*WRITE, 409)},
                body="ReleaseCreate",
            ),
        },
        "/releases/{id}": {
            "parameters": [ID],
            "get": _op("a release", {**_ok(ref("Release")), **_errors(*READ)}),
        },
        "/events": {
            "get": _op(
                "past events (newest first), or with Accept: text/event-stream an SSE stream",
                {
                    "200": {
                        "description": "events",
                        "content": {
                            "application/json": {"schema": _list("Event")},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(400, 401, 503),
                },
                params=[
                    _param("app_id", "query", description="app id (or name of an existing app)"),
                    _param("object_types", "query", description="comma-separated object types"),
                    _param("object_id", "query"),
                    _param("past", "query", BOOL),
                    _param("count", "query", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    _param("since_id", "query", {"type": "integer", "minimum": 0}),
                ],
            )
        },
        "/events/{id}": {"parameters": [ID], "get": _op("an event", {**_ok(ref("Event")), **_errors(*READ)})},
        "/keys": {
            "get": _op("SSH public keys", {**_ok(_list("Key")), **_errors(401, 503)}),
            "post": _op(
                "add an SSH public key", {**_ok(ref("Key"), 201), **_errors(*WRITE, 409)}, body="KeyCreate"
            ),
        },
        "/keys/{id}": {
            "parameters": [ID],
            "delete": _op("remove an SSH public key", {**_ok(ref("Key")), **_errors(*READ)}),
        },
    }


def document(version: str) -> J:
    from flynn.controller import openapi_logs, openapi_routes  # they build on the helpers above

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Flynn controller",
            "version": version,
            "description": "The platform's REST API (docs/controller.md)."
            " HTTP Basic: any user name, a key as the password.",
        },
        "components": {
            "schemas": {**SCHEMAS, **openapi_routes.SCHEMAS, **openapi_logs.SCHEMAS},
            "securitySchemes": {"basicAuth": {"type": "http", "scheme": "basic"}},
        },
        "security": [{"basicAuth": []}],
        "paths": {**paths(), **openapi_routes.paths(), **openapi_logs.paths()},
    }
