"""Validation of job configs (PUT /host/jobs/:id bodies): every bad field is a one-line 4xx."""

from __future__ import annotations

from typing import Any

import pytest

from flynn.host.jobs.spec import DEFAULT_MEMORY, RESERVED_ENV, SpecError, parse_job

SHA = "ab" * 32


def config(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "host1-3f1c2d4e-0000-4000-8000-000000000001",
        "app_id": "5d8a7a1e-1111-4111-8111-111111111111",
        "app_name": "myapp",
        "release_id": "9e2b1c3d-2222-4222-8222-222222222222",
        "type": "web",
        "artifact": {"id": "a1", "type": "tarball", "uri": "http://blob/slug.tgz", "sha256": SHA},
        "args": ["python3", "app.py"],
        "env": {"K": "V"},
        "service": "myapp-web",
        "check": {"type": "tcp"},
        "resources": {"memory": {"limit": 268435456}, "cpu": {"limit": 1500}},
        "attach": False,
        "stop_timeout": 10,
        "meta": {"k": "v"},
    }
    body.update(over)
    return body


def test_the_documented_config_is_accepted() -> None:
    spec = parse_job(config(), "host1", "host1-3f1c2d4e-0000-4000-8000-000000000001")
    assert spec.args == ("python3", "app.py")
    assert spec.memory == 268435456
    assert spec.cpu_weight == 150
    assert spec.artifact is not None
    assert spec.artifact.sha256 == SHA
    assert spec.check is not None
    assert spec.check.type == "tcp"
    assert spec.check.timeout == 60
    assert spec.log_identifier == "myapp-web"
    assert dict(spec.env) == {"K": "V"}


def test_minimal_config_gets_defaults() -> None:
    spec = parse_job({"args": ["sleep", "1"]}, "host1", "host1-x")
    assert spec.id == "host1-x"
    assert spec.memory == DEFAULT_MEMORY == 1 << 30
    assert spec.cpu_weight is None
    assert spec.artifact is None
    assert spec.service is None
    assert spec.check is None
    assert spec.stop_timeout == 10


def test_a_service_without_check_gets_a_tcp_check() -> None:
    spec = parse_job(config(check=None), "host1")
    assert spec.check is not None
    assert spec.check.type == "tcp"


def test_the_controllers_whole_artifact_object_is_accepted() -> None:
    art = {
        "id": "a1",
        "type": "tarball",
        "uri": "https://x/y",
        "meta": {},
        "size": 3,
        "sha256": None,
        "created_at": "t",
    }
    spec = parse_job(config(artifact=art), "host1")
    assert spec.artifact is not None
    assert spec.artifact.sha256 is None


@pytest.mark.parametrize(
    ("milli", "weight"),
    [(1, 1), (4, 1), (5, 1), (15, 2), (1000, 100), (1004, 100), (1005, 101), (1500, 150), (100_000, 10_000)],
)
def test_cpu_weight_is_milli_over_ten_rounded_half_up_within_range(milli: int, weight: int) -> None:
    spec = parse_job(config(resources={"cpu": {"limit": milli}}), "host1")
    assert spec.cpu_weight == weight


def test_a_foreign_hosts_job_id_is_409() -> None:
    with pytest.raises(SpecError) as err:
        parse_job(config(id="host2-abc"), "host1")
    assert err.value.status == 409
    assert "host2" in str(err.value)


def test_body_id_must_match_the_path() -> None:
    with pytest.raises(SpecError) as err:
        parse_job(config(id="host1-a"), "host1", "host1-b")
    assert err.value.status == 400
    assert err.value.field == "id"


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"id": "host1"}, "id"),
        ({"id": "host1-"}, "id"),
        ({"id": "host1-a/b"}, "id"),
        ({"id": "host1-" + "a" * 65}, "id"),
        ({"id": 7}, "id"),
        ({"args": []}, "args"),
        ({"args": "python3 app.py"}, "args"),
        ({"args": ["ok", 3]}, "args"),
        ({"args": ["bad\0arg"]}, "args"),
        ({"args": [""]}, "args"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"env": {"A=B": "x"}}, "env"),
        ({"env": {"K": 1}}, "env"),
        ({"env": {"K": "nul\0"}}, "env"),
        ({"env": {"K": "x" * (32 * 1024 + 1)}}, "env"),
        ({"env": {f"V{i}": "x" for i in range(257)}}, "env"),
        ({"env": []}, "env"),
        ({"app_name": "My_App"}, "app_name"),
        ({"type": "Web!"}, "type"),
        ({"service": "Bad Service"}, "service"),
        ({"artifact": {"id": "a1", "uri": "ftp://x/y"}}, "artifact.uri"),
        ({"artifact": {"id": "a1", "uri": "http://x/y z"}}, "artifact.uri"),
        ({"artifact": {"id": "../etc", "uri": "http://x/y"}}, "artifact.id"),
        ({"artifact": {"id": "a1", "uri": "http://x/y", "sha256": "xyz"}}, "artifact.sha256"),
        ({"artifact": {"id": "a1", "uri": "http://x/y", "type": "docker"}}, "artifact.type"),
        ({"artifact": {"id": "a1", "uri": "http://x/y", "bogus": 1}}, "artifact"),
        ({"artifact": "http://x/y"}, "artifact"),
        ({"check": {"type": "udp"}}, "check.type"),
        ({"check": {"type": "http", "path": "no-slash"}}, "check.path"),
        ({"check": {"type": "http", "status": 99}}, "check.status"),
        ({"check": {"type": "tcp", "path": "/"}}, "check"),
        ({"check": {"type": "tcp", "timeout": 0}}, "check.timeout"),
        ({"resources": {"memory": {"limit": 1024}}}, "resources.memory.limit"),
        ({"resources": {"memory": {"limit": "1G"}}}, "resources.memory.limit"),
        ({"resources": {"cpu": {"limit": 0}}}, "resources.cpu.limit"),
        ({"resources": {"cpu": {"limit": 100_001}}}, "resources.cpu.limit"),
        ({"resources": {"cpu": {"limit": True}}}, "resources.cpu.limit"),
        ({"resources": {"disk": {"limit": 1}}}, "resources"),
        ({"resources": {"memory": 5}}, "resources.memory"),
        ({"attach": "yes"}, "attach"),
        ({"stop_timeout": 0}, "stop_timeout"),
        ({"stop_timeout": 3601}, "stop_timeout"),
        ({"meta": {"bad key": "v"}}, "meta"),
        ({"meta": {"k": 1}}, "meta"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_fields_are_400_naming_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_job(config(**over), "host1")
    assert err.value.status == 400
    assert err.value.field == field, str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(RESERVED_ENV))
def test_callers_may_not_set_the_hosts_variables(name: str) -> None:
    with pytest.raises(SpecError, match=name):
        parse_job(config(env={name: "1"}), "host1")


def test_an_env_value_is_never_echoed_in_an_error() -> None:
    secret = "s3cr3t-value-" + "x" * 40000
    with pytest.raises(SpecError) as err:
        parse_job(config(env={"TOKEN": secret}), "host1")
    assert "s3cr3t" not in str(err.value)


def test_a_non_object_body_is_refused() -> None:
    with pytest.raises(SpecError):
        parse_job(["args"], "host1")


def test_the_record_form_holds_no_env_and_round_trips() -> None:
    spec = parse_job(config(env={"SECRET": "hunter2"}), "host1")
    record = spec.to_record()
    assert "env" not in record
    assert "hunter2" not in repr(record)
    assert "hunter2" not in repr(spec)
    again = type(spec).from_record(record)
    assert again.to_record() == record


def test_app_mode_defaults_to_artifact_and_build_is_kept_in_the_record() -> None:
    assert parse_job(config(), "host1").app_mode == "artifact"
    spec = parse_job(config(artifact=None, app_mode="build"), "host1")
    assert spec.app_mode == "build"
    assert type(spec).from_record(spec.to_record()).app_mode == "build"


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"artifact": None, "app_mode": "rw"}, "app_mode 'rw' is not one of artifact, build"),
        ({"artifact": None, "app_mode": True}, "app_mode True is not one of"),
        ({"app_mode": "build"}, "app_mode build takes no artifact"),
    ],
)
def test_bad_app_modes_are_400(over: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        parse_job(config(**over), "host1")
    assert err.value.status == 400
    assert err.value.field == "app_mode"
