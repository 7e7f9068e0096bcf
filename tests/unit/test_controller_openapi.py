"""The served OpenAPI document against the real API: every route's real responses validate against
it (jsonschema_rs), and schemathesis fuzzes every operation from it with no 5xx answer."""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import TYPE_CHECKING, Any

import hypothesis
import hypothesis.errors
import jsonschema_rs
import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

if TYPE_CHECKING:
    from tests.unit.controller_fixtures import ControllerHandle

pytest_plugins = ("tests.unit.controller_fixtures",)

METHODS = ("get", "put", "post", "delete", "patch")
# examples per operation and mode: small in the unit tier (a few hundred requests in all)
FUZZ_EXAMPLES = int(os.environ.get("FLYNN_FUZZ_EXAMPLES", "5"))


class Checker:
    """Validates responses against the document and records which operations were seen."""

    def __init__(self, handle: ControllerHandle) -> None:
        self.handle = handle
        self.doc = requests.get(f"{handle.url}/openapi.json", timeout=10).json()
        self.seen: set[tuple[str, str]] = set()
        self.session = requests.Session()
        self.session.headers.update(handle.auth_header())
        self.templates = [
            (p, re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$")) for p in self.doc["paths"]
        ]

    def template_of(self, path: str) -> str:
        matches = [t for t, rx in self.templates if rx.match(path)]
        assert matches, f"{path} is not in the document"
        return str(min(matches, key=lambda t: t.count("{")))  # /apps/x/meta beats /apps/{app}/...

    def call(self, method: str, path: str, body: Any = None, status: int = 200, **kw: Any) -> Any:
        resp = self.session.request(method, self.handle.url + path, json=body, timeout=10, **kw)
        assert resp.status_code == status, (method, path, resp.status_code, resp.text)
        template = self.template_of(path.split("?", maxsplit=1)[0])
        op = self.doc["paths"][template].get(method.lower())
        assert op is not None, f"{method} {template} is not documented"
        self.seen.add((method.lower(), template))
        documented = op["responses"].get(str(status))
        assert documented is not None, f"{method} {template}: status {status} not documented"
        if "content" not in documented:
            return None
        ctype = resp.headers["Content-Type"].split(";")[0]
        assert ctype in documented["content"], (method, template, ctype)
        schema = {**documented["content"][ctype]["schema"], "components": self.doc["components"]}
        data: Any
        if ctype == "application/x-ndjson":  # one document per line: each is checked
            data = [json.loads(line) for line in resp.text.splitlines() if line.strip()]
            schema = {"type": "array", "items": documented["content"][ctype]["schema"]}
            schema["components"] = self.doc["components"]
        elif ctype == "application/x-pem-file":
            data = resp.text
        else:
            data = resp.json()
        validator = jsonschema_rs.validator_for(schema, validate_formats=True)
        errors = [str(e) for e in validator.iter_errors(data)]
        assert not errors, (method, template, status, errors[:3], json.dumps(data)[:500])
        return data

    def undocumented(self) -> set[tuple[str, str]]:
        ops = {(m, p) for p, item in self.doc["paths"].items() for m in METHODS if m in item}
        return ops - self.seen


def test_every_route_answers_what_the_document_says(controller: ControllerHandle) -> None:
    c = Checker(controller)
    assert c.doc["openapi"] == "3.1.0"
    missing = str(uuid.uuid4())
    c.call("GET", "/status")
    c.call("GET", "/openapi.json")
    c.call("GET", "/ca-cert", status=404)  # this controller has no CA_CERT (200: test_controller_api)
    app = c.call("POST", "/apps", {"name": "doc", "meta": {"k": "v"}}, 201)
    c.call("POST", "/apps", {"name": "doc"}, 409)
    c.call("POST", "/apps", {"name": "BAD"}, 400)
    c.call("GET", "/apps")
    c.call("GET", "/apps/doc")
    c.call("GET", f"/apps/{missing}", status=404)
    c.call("POST", "/apps/doc", {"strategy": "one-by-one"})
    c.call("GET", "/apps/doc/meta")
    c.call("PUT", "/apps/doc/meta", {"a": "b"})
    art = c.call("POST", "/artifacts", {"uri": "https://blob/x.tgz", "sha256": "0" * 64}, 201)
    c.call("GET", "/artifacts")
    c.call("GET", f"/artifacts/{art['id']}")
    c.call("GET", f"/artifacts/{missing}", status=404)
    body = {
        "app_id": "doc",
        "artifacts": [art["id"]],
        "env": {"A": "1"},
        "processes": {
            "web": {"args": ["w"], "check": {"type": "http", "path": "/"}},
            "worker": {"args": ["k"]},
        },
    }
    rel = c.call("POST", "/releases", body, 201)
    c.call("POST", "/releases", {**body, "env": {"A=": "x"}}, 400)
    c.call("GET", f"/releases/{rel['id']}")
    c.call("GET", "/apps/doc/releases")
    c.call("GET", "/apps/doc/release", status=404)
    c.call("PUT", "/apps/doc/release", {"id": rel["id"]})
    c.call("GET", "/apps/doc/release")
    c.call("PUT", f"/apps/doc/formations/{rel['id']}", {"processes": {"web": 1}})
    c.call("PUT", f"/apps/doc/formations/{rel['id']}", {"processes": {"web": -1}}, 400)
    c.call("GET", f"/apps/doc/formations/{rel['id']}")
    c.call("GET", f"/apps/doc/formations/{rel['id']}?expand=true")
    c.call("GET", "/apps/doc/formations")
    c.call("GET", "/formations")
    c.call("GET", "/formations?active=true")
    job_id = f"host1-{uuid.uuid4()}"
    c.call("PUT", f"/apps/doc/jobs/{job_id}", {"release_id": rel["id"], "type": "web", "state": "up"}, 201)
    c.call("PUT", f"/apps/doc/jobs/{job_id}", {"state": "up", "exit_status": None})
    c.call("GET", f"/apps/doc/jobs/{job_id}")
    c.call("GET", "/apps/doc/jobs")
    c.call("GET", "/apps/doc/jobs?all=true")
    run = c.call("POST", "/apps/doc/jobs", {"args": ["true"], "attach": True}, 201)
    c.call("GET", f"/apps/doc/jobs/{run['id']}/attach", status=400)  # not a WebSocket upgrade
    c.call("DELETE", f"/apps/doc/jobs/{run['id']}")
    rel2 = c.call("POST", "/releases", {**body, "env": {"A": "2"}}, 201)
    dep = c.call("POST", "/apps/doc/deploy", {"id": rel2["id"]}, 201)
    c.call("POST", "/apps/doc/deploy", {"id": rel2["id"]}, 409)
    c.call("GET", f"/deployments/{dep['id']}")
    c.call("GET", "/apps/doc/deployments")
    c.call("DELETE", f"/apps/doc/formations/{rel['id']}")
    c.call("DELETE", f"/apps/doc/formations/{rel['id']}", status=404)
    events = c.call("GET", "/events?count=1000")
    c.call("GET", f"/events/{events[0]['id']}")
    c.call("GET", "/events?object_types=nope", status=400)
    key = c.call("POST", "/keys", {"key": new_ssh_key()}, 201)
    c.call("GET", "/keys")
    c.call("DELETE", f"/keys/{key['id']}")
    route = c.call("POST", "/apps/doc/routes", {"type": "http", "domain": "doc.example.com"}, 201)
    c.call("POST", "/apps/doc/routes", {"type": "http", "domain": "doc.example.com"}, 409)
    c.call("POST", "/apps/doc/routes", {"type": "http", "domain": "bad domain"}, 400)
    tcp = c.call("POST", "/apps/doc/routes", {"type": "tcp"}, 201)
    c.call("GET", "/apps/doc/routes")
    c.call("GET", f"/apps/doc/routes/{route['id']}")
    c.call("GET", f"/apps/doc/routes/{tcp['id']}")
    c.call("GET", f"/apps/doc/routes/http/{missing}", status=404)
    c.call("PUT", f"/apps/doc/routes/{route['id']}", {"sticky": True, "path": "/x"})
    c.call("PUT", f"/apps/doc/routes/{tcp['id']}", {"port": 3400})
    c.call("GET", "/routes")
    c.call("DELETE", f"/apps/doc/routes/{tcp['id']}")
    agg = c.handle.cluster.aggregator
    agg.add(app["id"], f"host1-{uuid.uuid4()}", "hello", ts=1_700_000_000_000_000)
    agg.add(app["id"], f"host2-{uuid.uuid4()}", "oops", ts=1_700_000_000_000_001, stream="stderr")
    assert len(c.call("GET", "/apps/doc/log")) == 2
    c.call("GET", "/apps/doc/log?lines=1&process_type=web")
    c.call("GET", "/apps/doc/log?lines=x", status=400)
    c.call("GET", f"/apps/{missing}/log", status=404)
    sink = c.call("POST", "/sinks", {"kind": "syslog", "url": "syslog://logs.example.com:514"}, 201)
    c.call("POST", "/sinks", {"url": "syslog://LOGS.example.com"}, 409)
    c.call("POST", "/sinks", {"url": "http://logs.example.com"}, 400)
    c.call("GET", "/sinks")
    c.call("GET", f"/sinks/{sink['id']}")
    c.call("GET", f"/sinks/{missing}", status=404)
    c.call("DELETE", f"/sinks/{sink['id']}")
    c.call("DELETE", f"/apps/{app['id']}")
    assert c.undocumented() == set()


def new_ssh_key() -> str:
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + " doc@example"


def test_schemathesis_finds_no_server_error(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "fuzz"})
    rel = controller.make_release("fuzz")
    api.put(f"/apps/fuzz/formations/{rel['id']}", {"processes": {"web": 1}})
    schema = schemathesis.openapi.from_url(f"{controller.url}/openapi.json")
    headers = {**controller.auth_header(), "Accept": "application/json"}  # never the SSE stream
    session = requests.Session()
    stats: dict[str, int] = {}
    failures: list[str] = []
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]

    def exercise(case: Any) -> None:
        if case.path.endswith("/log") and case.query:
            case.query.pop("follow", None)  # a followed log never ends (test_logs_controller.py)
        resp = case.call(session=session, headers=headers, timeout=10)
        bucket = f"{resp.status_code // 100}xx"
        stats[bucket] = stats.get(bucket, 0) + 1
        if resp.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} -> {resp.status_code} {resp.text[:200]}")
        case.validate_response(resp, checks=checks, headers=headers)

    n_ops = 0
    no_negative: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        op = result.ok()
        if op.path.endswith("/attach"):
            continue  # a WebSocket; its non-upgrade answer is covered above
        n_ops += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
                phases=[hypothesis.Phase.generate],
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                exercise(case)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE, op.label
                no_negative.append(op.label)  # nothing to get wrong (no parameters or body)
    total = sum(stats.values())
    print(f"schemathesis: {total} requests over {n_ops} operations: {stats}; no negative case: {no_negative}")
    assert failures == []
    assert stats.get("5xx", 0) == 0
    assert total >= 200, stats
