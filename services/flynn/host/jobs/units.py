"""Job config -> transient unit properties, and unit properties -> job outcome. Pure: no D-Bus here.

Every property carries its D-Bus signature explicitly (pystemd's table lacks some, e.g.
``CPUWeight``), so :mod:`.dbus` can marshal the list as is.
"""

from __future__ import annotations

import os
import posixpath
import signal as signals
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flynn.host.jobs import logwrap
from flynn.host.jobs.spec import JobSpec
from flynn.host.jobs.state import JobState

SLICE = "flynn-jobs.slice"
APP_MOUNT = "/app"
SEARCH_PATH = ("/app/bin", "/usr/local/bin", "/usr/bin", "/bin")
TASKS_MAX = 512
# what a job may not see: the host agent's state (other apps' artifacts, job records) and the
# platform's configuration (secrets). "-": ignored when missing.
INACCESSIBLE = ("-/var/lib/flynn", "-/etc/flynn")
# build jobs (app_mode "build"): /app is the unit's StateDirectory=flynn-build/<job id>, which
# systemd creates owned by the job's dynamic user (under /var/lib/private, 0700) and which the
# unit's privileged ExecStopPost removes when the job ends, however it ends
BUILD_STATE_DIR = "flynn-build"

Property = tuple[str, str, Any]  # (name, D-Bus signature, value)

CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
# systemd's own exit codes for a process it could not set up (systemd.exec(5) "Process exit codes")
SYSTEMD_EXIT_NAMES = {
    200: "CHDIR",
    203: "EXEC",
    204: "MEMORY",
    205: "LIMITS",
    206: "OOM_ADJUST",
    207: "SIGNAL_MASK",
    208: "STDIN",
    209: "STDOUT",
    210: "CHROOT",
    214: "SETSCHEDULER",
    216: "GROUP",
    217: "USER",
    218: "CAPABILITIES",
    219: "CGROUP",
    220: "SETSID",
    225: "NAMESPACE",
    226: "NAMESPACE",
    228: "SECCOMP",
    233: "RUNTIME_DIRECTORY",
    238: "STATE_DIRECTORY",
    243: "CREDENTIALS",
}


class CommandNotFound(ValueError):
    pass


def _host_path(job_path: str, app_dir: Path, root: Path) -> Path:
    """Where a path seen inside the job lives on the host (``/app`` is the artifact directory)."""
    if job_path == APP_MOUNT or job_path.startswith(APP_MOUNT + "/"):
        return app_dir / job_path[len(APP_MOUNT) :].lstrip("/")
    return root / job_path.lstrip("/")


def _is_executable(path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def resolve_command(command: str, app_dir: Path, *, root: Path = Path("/")) -> str:
    """The absolute path (as the job sees it) of ``args[0]``: a name is looked up in
    ``/app/bin:/usr/local/bin:/usr/bin:/bin``; a relative path is relative to ``/app``."""
    if "/" in command:
        job_path = posixpath.normpath(posixpath.join(APP_MOUNT, command))
        if not _is_executable(_host_path(job_path, app_dir, root)):
            raise CommandNotFound(f"{command}: no such executable file")
        return job_path
    for directory in SEARCH_PATH:
        job_path = f"{directory}/{command}"
        if _is_executable(_host_path(job_path, app_dir, root)):
            return job_path
    raise CommandNotFound(f"{command}: command not found in {':'.join(SEARCH_PATH)}")


def job_env(spec: JobSpec, port: int) -> dict[str, str]:
    """The caller's env plus what the host adds (callers may not set those, see spec.RESERVED_ENV)."""
    env = {"PATH": ":".join(SEARCH_PATH)}
    env.update(spec.env)
    env.update(
        {
            "PORT": str(port),
            "FLYNN_APP_ID": spec.app_id or "",
            "FLYNN_APP_NAME": spec.app_name or "",
            "FLYNN_RELEASE_ID": spec.release_id or "",
            "FLYNN_PROCESS_TYPE": spec.type or "",
            "FLYNN_JOB_ID": spec.id,
            "HOME": APP_MOUNT,
        }
    )
    return env


def log_fields(spec: JobSpec) -> dict[str, str]:
    """Journal fields on every line the job logs (``LogExtraFields=``)."""
    fields = {"FLYNN_JOB_ID": spec.id}
    for name, value in (
        ("FLYNN_APP_ID", spec.app_id),
        ("FLYNN_APP_NAME", spec.app_name),
        ("FLYNN_RELEASE_ID", spec.release_id),
        ("FLYNN_PROCESS_TYPE", spec.type),
    ):
        if value:
            fields[name] = value
    return fields


def exec_start(spec: JobSpec, exec_path: str, *, journal: bool) -> tuple[str, list[str], bool]:
    """The ``ExecStart=`` entry: a job logging to the journal runs through :mod:`.logwrap` (stdout
    and stderr as two journal streams); an attached job runs its command directly."""
    if not journal:
        return exec_path, list(spec.args), False
    path, argv = logwrap.command(spec.log_identifier, exec_path, list(spec.args))
    return path, argv, False


@dataclass(frozen=True)
class Stdio:
    """File descriptors for an attached job's stdin/stdout/stderr (passed over D-Bus)."""

    stdin: int
    stdout: int
    stderr: int


def unit_properties(
    spec: JobSpec,
    *,
    port: int,
    app_dir: Path,
    exec_path: str,
    stdio: Stdio | None = None,
) -> list[Property]:
    env = job_env(spec, port)
    props: list[Property] = [
        ("Description", "s", f"Flynn job {spec.id} ({spec.log_identifier})"),
        ("Type", "s", "exec"),
        ("Slice", "s", SLICE),
        ("ExecStart", "a(sasb)", [exec_start(spec, exec_path, journal=stdio is None)]),
        ("Environment", "as", [f"{k}={v}" for k, v in sorted(env.items())]),
        ("WorkingDirectory", "s", APP_MOUNT),
        *_app_mount(spec, app_dir),
        ("MemoryMax", "t", spec.memory),
        ("TasksMax", "t", TASKS_MAX),
        ("DynamicUser", "b", True),
        ("ProtectSystem", "s", "strict"),
        ("ProtectHome", "s", "yes"),
        ("PrivateTmp", "b", True),
        ("PrivateDevices", "b", True),
        ("NoNewPrivileges", "b", True),
        ("ProtectKernelTunables", "b", True),
        ("ProtectKernelModules", "b", True),
        ("ProtectKernelLogs", "b", True),
        ("ProtectControlGroups", "b", True),
        ("RestrictSUIDSGID", "b", True),
        ("LockPersonality", "b", True),
        ("RestrictNamespaces", "t", 0),  # no namespace type may be created (= "yes")
        ("RestrictRealtime", "b", True),
        ("ProtectClock", "b", True),
        ("ProtectHostname", "b", True),
        ("ProtectProc", "s", "invisible"),  # other users' processes (other jobs) are hidden
        ("CapabilityBoundingSet", "t", 0),
        ("SystemCallArchitectures", "as", ["native"]),
        ("SystemCallFilter", "(bas)", (True, ["@system-service"])),  # an allow-list
        ("SystemCallErrorNumber", "i", 1),  # EPERM for anything else, rather than a kill
        ("RestrictAddressFamilies", "(bas)", (True, ["AF_UNIX", "AF_INET", "AF_INET6"])),
        ("InaccessiblePaths", "as", list(INACCESSIBLE)),
        ("KillMode", "s", "mixed"),
        ("TimeoutStopUSec", "t", spec.stop_timeout * 1_000_000),
        ("SyslogIdentifier", "s", spec.log_identifier),
        ("LogExtraFields", "aay", [f"{k}={v}".encode() for k, v in log_fields(spec).items()]),
    ]
    if spec.cpu_weight is not None:
        props.append(("CPUWeight", "t", spec.cpu_weight))
    if stdio is None:
        props += [("StandardOutput", "s", "journal"), ("StandardError", "s", "journal")]
    else:
        props += [
            ("StandardInputFileDescriptor", "h", stdio.stdin),
            ("StandardOutputFileDescriptor", "h", stdio.stdout),
            ("StandardErrorFileDescriptor", "h", stdio.stderr),
        ]
    return props


def build_dir(job_id: str) -> str:
    """Where systemd keeps a build job's /app on the host (DynamicUser puts it under private/)."""
    return f"/var/lib/private/{BUILD_STATE_DIR}/{job_id}"


def _app_mount(spec: JobSpec, app_dir: Path) -> list[Property]:
    if spec.app_mode != "build":
        return [("BindReadOnlyPaths", "a(ssbt)", [(str(app_dir), APP_MOUNT, False, 0)])]
    # The job's mount namespace hides /var/lib/private behind an empty tmpfs, and its ExecStopPost
    # runs in that namespace too, so it reaches the real directory (and the symlink systemd made)
    # through PID 1's root. "privileged" = the "+" prefix: root with full capabilities, no sandbox.
    # The job id is [A-Za-z0-9-] only (spec.parse_job_id), so the paths are safe as arguments.
    real = f"/proc/1/root{build_dir(spec.id)}"
    link = f"/proc/1/root/var/lib/{BUILD_STATE_DIR}/{spec.id}"
    remove = ["/bin/rm", "-rf", "--one-file-system", "--", real, link]
    return [
        ("StateDirectory", "as", [f"{BUILD_STATE_DIR}/{spec.id}"]),
        ("StateDirectoryMode", "u", 0o700),
        ("BindPaths", "a(ssbt)", [(build_dir(spec.id), APP_MOUNT, False, 0)]),
        ("ExecStopPostEx", "a(sasas)", [(remove[0], remove, ["privileged"])]),
    ]


# -- unit state -> job outcome -----------------------------------------------------------------


def _str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


@dataclass(frozen=True)
class UnitStatus:
    """The properties of a job unit that decide its job's state (from D-Bus signals or GetAll)."""

    active_state: str = ""
    sub_state: str = ""
    result: str = ""
    exec_main_code: int = 0
    exec_main_status: int = 0
    main_pid: int = 0

    @classmethod
    def from_props(cls, props: dict[str, Any]) -> UnitStatus:
        return cls(
            active_state=_str(props.get("ActiveState")),
            sub_state=_str(props.get("SubState")),
            result=_str(props.get("Result")),
            exec_main_code=int(props.get("ExecMainCode") or 0),
            exec_main_status=int(props.get("ExecMainStatus") or 0),
            main_pid=int(props.get("MainPID") or 0),
        )

    @property
    def running(self) -> bool:
        return self.active_state == "active" and self.sub_state == "running"

    @property
    def ended(self) -> bool:
        return self.active_state in ("inactive", "failed")


def signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"SIG{number}"


@dataclass(frozen=True)
class Outcome:
    state: JobState
    exit_status: int | None = None
    signal: str | None = None
    error: str | None = None


def outcome(  # noqa: PLR0911 - one return per case, in the order they are decided
    status: UnitStatus, *, stop_requested: bool, signals_sent: list[str], reached_running: bool
) -> Outcome:
    """The final state of a job whose unit ended (``status.ended``)."""
    exit_status = status.exec_main_status if status.exec_main_code == CLD_EXITED else None
    sig = signal_name(status.exec_main_status) if status.exec_main_code in (CLD_KILLED, CLD_DUMPED) else None
    if stop_requested:
        return Outcome(JobState.DOWN, exit_status, sig)
    if status.exec_main_code == 0:
        # the main process never ran: systemd refused or could not set up the unit
        return Outcome(JobState.FAILED, error=f"unit failed before the process ran (result: {status.result})")
    if exit_status is not None and exit_status in SYSTEMD_EXIT_NAMES and not reached_running:
        name = SYSTEMD_EXIT_NAMES[exit_status]
        return Outcome(
            JobState.FAILED,
            exit_status,
            error=f"systemd could not start the process (status {exit_status}/{name})",
        )
    if status.result == "oom-kill":
        return Outcome(JobState.CRASHED, exit_status, sig, "killed: out of memory")
    if exit_status == 0:
        return Outcome(JobState.DOWN, 0)
    if sig is not None:
        if sig in signals_sent:
            return Outcome(JobState.DOWN, None, sig)
        return Outcome(JobState.CRASHED, None, sig, f"killed by {sig}")
    return Outcome(JobState.CRASHED, exit_status, error=f"exited with status {exit_status}")


def attach_exit_code(state_outcome: Outcome) -> int:
    """The exit code an attached client passes on: the status, or 128+N for signal N (as a shell)."""
    if state_outcome.exit_status is not None:
        return state_outcome.exit_status
    if state_outcome.signal is not None:
        try:
            return 128 + int(signals.Signals[state_outcome.signal])
        except KeyError:
            return 255
    return 0 if state_outcome.state is JobState.DOWN else 1


def empty_app_dir(base: Path) -> Path:
    """The directory bind-mounted at /app for a job without artifact (created empty, read-only)."""
    path = base / ".empty"
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(path, 0o755)  # noqa: S103 - read by the jobs' dynamic users
    return path
