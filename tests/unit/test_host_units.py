"""Job config -> unit properties, and unit properties -> job outcome."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from flynn.host.jobs import logwrap
from flynn.host.jobs.spec import parse_job
from flynn.host.jobs.state import JobState
from flynn.host.jobs.units import (
    CommandNotFound,
    Outcome,
    Stdio,
    UnitStatus,
    attach_exit_code,
    job_env,
    outcome,
    resolve_command,
    unit_properties,
)


def spec(**over: Any):  # type: ignore[no-untyped-def]
    body: dict[str, Any] = {
        "args": ["web", "--flag"],
        "env": {"FOO": "bar"},
        "app_id": "app1",
        "app_name": "myapp",
        "release_id": "rel1",
        "type": "web",
        "resources": {"memory": {"limit": 268435456}, "cpu": {"limit": 1500}},
        "stop_timeout": 7,
    }
    body.update(over)
    return parse_job(body, "host1", "host1-j1")


def props_of(**over: Any) -> dict[str, tuple[str, Any]]:
    props = unit_properties(
        spec(**over), port=49153, app_dir=Path("/var/lib/flynn/artifacts/a1"), exec_path="/app/bin/web"
    )
    names = [p[0] for p in props]
    assert len(names) == len(set(names)), "a property is set twice"
    return {name: (sig, value) for name, sig, value in props}


def test_resources_map_to_memorymax_and_cpuweight() -> None:
    props = props_of()
    assert props["MemoryMax"] == ("t", 268435456)
    assert props["CPUWeight"] == ("t", 150)
    assert props["TasksMax"] == ("t", 512)


def test_default_memory_is_one_gib_and_no_cpu_weight() -> None:
    props = props_of(resources=None)
    assert props["MemoryMax"] == ("t", 1 << 30)
    assert "CPUWeight" not in props


def test_unit_runs_the_args_in_the_jobs_slice_with_the_artifact_at_app() -> None:
    props = props_of()
    assert props["Type"] == ("s", "exec")
    assert props["Slice"] == ("s", "flynn-jobs.slice")
    # through the log wrapper: stdout and stderr become two journal streams (logwrap.py)
    wrapper = os.path.abspath(logwrap.__file__)
    python = sys.executable
    argv = [python, "-I", "-S", wrapper, "myapp-web", "/app/bin/web", "web", "--flag"]
    assert props["ExecStart"] == ("a(sasb)", [(python, argv, False)])
    assert props["WorkingDirectory"] == ("s", "/app")
    assert props["BindReadOnlyPaths"] == ("a(ssbt)", [("/var/lib/flynn/artifacts/a1", "/app", False, 0)])
    assert props["TimeoutStopUSec"] == ("t", 7_000_000)
    assert props["KillMode"] == ("s", "mixed")


def test_sandbox() -> None:
    props = props_of()
    for flag in (
        "DynamicUser", "PrivateTmp", "PrivateDevices", "NoNewPrivileges", "ProtectKernelTunables",
        "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "RestrictSUIDSGID",
        "LockPersonality", "RestrictRealtime", "ProtectClock", "ProtectHostname",
    ):  # fmt: skip
        assert props[flag] == ("b", True), flag
    assert props["ProtectSystem"] == ("s", "strict")
    assert props["ProtectHome"] == ("s", "yes")
    assert props["CapabilityBoundingSet"] == ("t", 0)
    assert props["RestrictNamespaces"] == ("t", 0)
    assert props["InaccessiblePaths"] == ("as", ["-/var/lib/flynn", "-/etc/flynn"])


def test_env_adds_the_hosts_variables() -> None:
    env = job_env(spec(), 49153)
    assert env["FOO"] == "bar"
    assert env["PORT"] == "49153"
    assert env["FLYNN_JOB_ID"] == "host1-j1"
    assert env["FLYNN_APP_ID"] == "app1"
    assert env["FLYNN_APP_NAME"] == "myapp"
    assert env["FLYNN_RELEASE_ID"] == "rel1"
    assert env["FLYNN_PROCESS_TYPE"] == "web"
    assert env["HOME"] == "/app"
    assert env["PATH"] == "/app/bin:/usr/local/bin:/usr/bin:/bin"
    assert "FOO=bar" in props_of()["Environment"][1]


def test_callers_may_set_path() -> None:
    assert job_env(spec(env={"PATH": "/x"}), 1)["PATH"] == "/x"


def test_logs_are_tagged_with_the_job() -> None:
    props = props_of()
    assert props["SyslogIdentifier"] == ("s", "myapp-web")
    fields = props["LogExtraFields"]
    assert fields[0] == "aay"
    assert b"FLYNN_JOB_ID=host1-j1" in fields[1]
    assert b"FLYNN_APP_ID=app1" in fields[1]
    assert props["StandardOutput"] == ("s", "journal")


def test_attached_jobs_get_file_descriptors_instead_of_the_journal() -> None:
    props = unit_properties(
        spec(attach=True), port=1, app_dir=Path("/x"), exec_path="/bin/sh", stdio=Stdio(5, 6, 7)
    )
    named = {p[0]: p[1:] for p in props}
    assert named["StandardInputFileDescriptor"] == ("h", 5)
    assert named["StandardOutputFileDescriptor"] == ("h", 6)
    assert named["StandardErrorFileDescriptor"] == ("h", 7)
    assert "StandardOutput" not in named
    assert named["ExecStart"] == ("a(sasb)", [("/bin/sh", list(spec(attach=True).args), False)])  # no wrapper


def _exe(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)


def test_commands_resolve_through_the_jobs_path(tmp_path: Path) -> None:
    app, root = tmp_path / "app", tmp_path / "root"
    _exe(app / "bin/web")
    _exe(root / "usr/bin/python3")
    _exe(root / "bin/sh")
    _exe(root / "usr/local/bin/sh")
    (app / "bin/notexec").write_text("x")
    assert resolve_command("web", app, root=root) == "/app/bin/web"
    assert resolve_command("python3", app, root=root) == "/usr/bin/python3"
    assert resolve_command("sh", app, root=root) == "/usr/local/bin/sh"  # first in PATH order
    assert resolve_command("./bin/web", app, root=root) == "/app/bin/web"
    assert resolve_command("/usr/bin/python3", app, root=root) == "/usr/bin/python3"
    with pytest.raises(CommandNotFound):
        resolve_command("notexec", app, root=root)
    with pytest.raises(CommandNotFound):
        resolve_command("missing", app, root=root)
    with pytest.raises(CommandNotFound):
        resolve_command("/usr/bin/missing", app, root=root)


def status(**kw: Any) -> UnitStatus:
    return UnitStatus(**{"active_state": "failed", "sub_state": "failed", **kw})


@pytest.mark.parametrize(
    ("unit", "kw", "expected"),
    [
        (status(active_state="inactive", exec_main_code=1, exec_main_status=0), {},
         Outcome(JobState.DOWN, 0)),
        (status(exec_main_code=1, exec_main_status=3, result="exit-code"), {},
         Outcome(JobState.CRASHED, 3, None, "exited with status 3")),
        (status(exec_main_code=2, exec_main_status=9, result="signal"), {},
         Outcome(JobState.CRASHED, None, "SIGKILL", "killed by SIGKILL")),
        (status(exec_main_code=3, exec_main_status=11, result="core-dump"), {},
         Outcome(JobState.CRASHED, None, "SIGSEGV", "killed by SIGSEGV")),
        (status(exec_main_code=2, exec_main_status=10, result="signal"), {"signals_sent": ["SIGUSR1"]},
         Outcome(JobState.DOWN, None, "SIGUSR1")),
        (status(exec_main_code=2, exec_main_status=15), {"stop_requested": True},
         Outcome(JobState.DOWN, None, "SIGTERM")),
        (status(exec_main_code=1, exec_main_status=1), {"stop_requested": True}, Outcome(JobState.DOWN, 1)),
        (status(exec_main_code=1, exec_main_status=203, result="exit-code"), {"reached_running": False},
         Outcome(JobState.FAILED, 203, None, "systemd could not start the process (status 203/EXEC)")),
        (status(exec_main_code=1, exec_main_status=203, result="exit-code"), {"reached_running": True},
         Outcome(JobState.CRASHED, 203, None, "exited with status 203")),
        (status(exec_main_code=0, result="resources"), {},
         Outcome(JobState.FAILED, error="unit failed before the process ran (result: resources)")),
        (status(exec_main_code=2, exec_main_status=9, result="oom-kill"), {},
         Outcome(JobState.CRASHED, None, "SIGKILL", "killed: out of memory")),
    ],
)  # fmt: skip
def test_outcomes(unit: UnitStatus, kw: dict[str, Any], expected: Outcome) -> None:
    args: dict[str, Any] = {"stop_requested": False, "signals_sent": [], "reached_running": True, **kw}
    assert outcome(unit, **args) == expected


def test_unit_status_from_dbus_props() -> None:
    st = UnitStatus.from_props({"ActiveState": b"active", "SubState": "running", "MainPID": 12})
    assert st.running
    assert not st.ended
    assert st.main_pid == 12
    assert UnitStatus.from_props({"ActiveState": "failed"}).ended


@pytest.mark.parametrize(
    ("out", "code"),
    [
        (Outcome(JobState.DOWN, 0), 0),
        (Outcome(JobState.CRASHED, 3), 3),
        (Outcome(JobState.CRASHED, None, "SIGKILL"), 137),
        (Outcome(JobState.DOWN, None, "SIGTERM"), 143),
        (Outcome(JobState.FAILED, error="x"), 1),
    ],
)
def test_attach_exit_codes_are_shell_like(out: Outcome, code: int) -> None:
    assert attach_exit_code(out) == code


def test_a_build_job_gets_a_writable_app_removed_when_it_ends() -> None:
    props = props_of(app_mode="build")
    assert "BindReadOnlyPaths" not in props
    # systemd creates the directory owned by the job's dynamic user (0700 under /var/lib/private)
    assert props["StateDirectory"] == ("as", ["flynn-build/host1-j1"])
    assert props["StateDirectoryMode"] == ("u", 0o700)
    assert props["BindPaths"] == ("a(ssbt)", [("/var/lib/private/flynn-build/host1-j1", "/app", False, 0)])
    sig, [(path, argv, flags)] = props["ExecStopPostEx"]
    assert sig == "a(sasas)"
    assert (path, flags) == ("/bin/rm", ["privileged"])
    assert argv == [
        "/bin/rm", "-rf", "--one-file-system", "--",
        "/proc/1/root/var/lib/private/flynn-build/host1-j1", "/proc/1/root/var/lib/flynn-build/host1-j1",
    ]  # fmt: skip
    # everything else is an ordinary job: its memory limit, sandbox and the job's own writable /app
    assert props["MemoryMax"] == ("t", 268435456)
    assert props["DynamicUser"] == ("b", True)
    assert props["ProtectSystem"] == ("s", "strict")
    assert props["WorkingDirectory"] == ("s", "/app")


def test_an_artifact_job_has_no_build_directory() -> None:
    props = props_of()
    for name in ("StateDirectory", "BindPaths", "ExecStopPostEx"):
        assert name not in props
