"""One test host: a systemd-nspawn container booting systemd as PID 1 from the layered image.

Each host's persistent state is its overlay upper directory (``cluster/<host>/upper``): files,
enabled units, machine id and journal survive ``kill`` (power cut) and ``start``.

Process layout and cgroups follow ../shared/recipes/nspawn-cluster.md: the launcher joins its own
cgroup (``flynn-<cluster>.slice/<host>.scope``) before exec'ing nsenter+nspawn, because nspawn
``--keep-unit`` splits its *current* cgroup into payload/ and supervisor/. On a machine whose PID 1
is systemd the launcher runs as a transient service with ``Delegate=yes`` instead (not exercised in
CI: the CI machines have no systemd PID 1).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from flynn_dev import netns
from flynn_dev.util import DevError, run

CGROUP_ROOT = Path("/sys/fs/cgroup")
SLICE = f"flynn-{netns.NAME}.slice"
BIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def systemd_is_pid1() -> bool:
    return Path("/run/systemd/system").is_dir()


def cgroup_dirs(host: str) -> list[Path]:
    """The cgroup directories a host's launcher joins on a machine without systemd as PID 1."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():  # pure cgroup2
        return [CGROUP_ROOT / SLICE / f"{host}.scope"]
    dirs = [CGROUP_ROOT / h / SLICE / f"{host}.scope" for h in ("systemd", "unified")]
    memory = CGROUP_ROOT / "memory"
    if memory.is_dir():  # v1 memory accounting, used by `status` for the host's memory figure
        dirs.append(memory / SLICE / f"{host}.scope")
    return [d for d in dirs if d.parents[1].is_dir()]


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Host:
    name: str
    index: int
    state_dir: Path
    ip: str

    @property
    def upper(self) -> Path:
        return self.state_dir / "upper"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "pid"

    @property
    def console_log(self) -> Path:
        return self.state_dir / "console.log"

    # -- process state -------------------------------------------------------------------------

    def launcher_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def leader_pid(self) -> int | None:
        """PID (in the machine's namespace) of the host's PID 1: systemd."""
        nspawn = self.launcher_pid()
        if nspawn is None:
            return None
        try:
            children = Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split()
        except OSError:
            return None
        for child in children:
            if _pid_alive(int(child)):
                return int(child)
        return None

    def running(self) -> bool:
        return self.leader_pid() is not None

    # -- commands inside the host ----------------------------------------------------------------

    def nsenter_argv(self, argv: list[str], *, env: dict[str, str] | None = None) -> list[str]:
        leader = self.leader_pid()
        if leader is None:
            raise DevError(f"{self.name} is not running")
        base_env = {
            "PATH": BIN_PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "SYSTEMD_PAGER": "",
            "TERM": os.environ.get("TERM", "dumb"),
        }
        base_env.update(env or {})
        return [
            "nsenter",
            "-t",
            str(leader),
            "-a",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in base_env.items()),
            *argv,
        ]

    def run(
        self, argv: list[str], *, check: bool = False, timeout: float = 30, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run(self.nsenter_argv(argv), check=check, timeout=timeout, input=input)

    def system_state(self) -> str:
        if not self.running():
            return "-"
        try:
            proc = self.run(["systemctl", "is-system-running"], timeout=10)
        except DevError:
            return "unknown"
        return proc.stdout.strip() or "unknown"

    def unit_state(self, unit: str) -> str:
        if not self.running():
            return "-"
        try:
            return self.run(["systemctl", "is-active", unit], timeout=10).stdout.strip() or "unknown"
        except DevError:
            return "unknown"

    def memory_bytes(self) -> int | None:
        """Memory charged to the host's cgroup (page cache included), when the machine accounts it."""
        for d in cgroup_dirs(self.name):
            for name in ("memory.current", "memory.usage_in_bytes"):
                f = d / name
                if f.exists():
                    with contextlib.suppress(OSError, ValueError):
                        return int(f.read_text())
        return None

    # -- lifecycle -----------------------------------------------------------------------------

    def write_network(self, prefixlen: int) -> Path:
        path = self.state_dir / "host0.network"
        path.write_text(
            "[Match]\nName=host0\n\n[Network]\n"
            f"Address={self.ip}/{prefixlen}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
        return path

    def start(self, *, base: Path, app: Path, hosts_file: Path, prefixlen: int) -> None:
        if self.running():
            raise DevError(f"{self.name} is already running")
        self.upper.mkdir(parents=True, exist_ok=True)
        for stale in self.state_dir.glob(".#upper*"):  # overlay workdir left by a power cut
            run(["rm", "-rf", stale])
        network = self.write_network(prefixlen)
        nspawn = [
            "systemd-nspawn",
            "--quiet",
            "--keep-unit",
            "--register=no",
            "--console=read-only",
            "--boot",
            f"--machine={self.name}",
            f"--directory={base}",
            f"--overlay={base}:{app}:{self.upper}:/",
            f"--network-bridge={netns.BRIDGE}",
            "--link-journal=no",
            "--resolv-conf=off",
            f"--bind-ro={network}:/etc/systemd/network/10-host0.network",
            f"--bind-ro={hosts_file}:/etc/hosts",
            *os.environ.get("FLYNN_DEV_NSPAWN_EXTRA", "").split(),
        ]
        argv = ["nsenter", f"--net=/run/netns/{netns.NETNS}", *nspawn]
        env = {"PATH": BIN_PATH, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1", "LANG": "C.UTF-8"}
        log = open(self.console_log, "ab")  # noqa: SIM115 - handed to the detached child
        try:
            if systemd_is_pid1():
                unit = f"flynn-{netns.NAME}-{self.name}"
                run(["systemctl", "reset-failed", f"{unit}.service"], check=False)
                run(
                    [
                        "systemd-run",
                        f"--unit={unit}",
                        f"--slice={SLICE}",
                        "--property=Delegate=yes",
                        "--property=KillMode=mixed",
                        "--collect",
                        *(f"--setenv={k}={v}" for k, v in env.items()),
                        *argv,
                    ]
                )
                pid = run(["systemctl", "show", "-P", "MainPID", f"{unit}.service"]).stdout.strip()
                self.pid_file.write_text(pid + "\n")
            else:
                dirs = cgroup_dirs(self.name)
                for d in dirs:
                    d.mkdir(parents=True, exist_ok=True)

                def join_cgroups() -> None:
                    me = str(os.getpid())
                    for d in dirs:
                        (d / "cgroup.procs").write_text(me)

                child = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=join_cgroups,  # noqa: PLW1509
                )
                self.pid_file.write_text(f"{child.pid}\n")
        finally:
            log.close()
        (self.state_dir / "started_at").write_text(f"{time.time()}\n")

    def wait_booted(self, timeout: float, units: tuple[str, ...] = ()) -> float:
        """Block until systemd in the host reports running and ``units`` are active; returns seconds."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        state = ""
        while time.monotonic() < deadline:
            launcher = self.launcher_pid()
            if launcher is None:
                raise DevError(f"{self.name} exited while booting; see {self.console_log}")
            if self.leader_pid() is not None:
                state = self.system_state()
                if state == "running":
                    break
                if state == "degraded":
                    failed = self.run(["systemctl", "--failed", "--plain", "--no-legend"]).stdout
                    names = " ".join(line.split()[0] for line in failed.splitlines() if line.strip())
                    raise DevError(f"{self.name} booted degraded: failed units: {names or '?'}")
            time.sleep(0.1)
        else:
            raise DevError(f"{self.name} not running after {timeout:g}s (state {state or 'none'})")
        for unit in units:
            while time.monotonic() < deadline:
                state = self.unit_state(unit)
                if state == "active":
                    break
                if state == "failed":
                    raise DevError(f"{self.name}: {unit} failed; see `journalctl -u {unit}` in the host")
                time.sleep(0.1)
            else:
                raise DevError(f"{self.name}: {unit} not active after {timeout:g}s ({state})")
        self.register_machine()
        return time.monotonic() - t0

    def register_machine(self) -> None:
        """Let `systemctl -M host` reach the host (the "dev" cluster only, and only without a systemd
        PID 1, where machined does not exist to do it)."""
        if systemd_is_pid1() or netns.NAME != "dev":
            return
        leader = self.leader_pid()
        if leader is None:
            return
        machines = Path("/run/systemd/machines")
        machines.mkdir(parents=True, exist_ok=True)
        (machines / self.name).write_text(f"LEADER={leader}\nCLASS=container\n")

    def unregister_machine(self) -> None:
        if not systemd_is_pid1() and netns.NAME == "dev":
            with contextlib.suppress(FileNotFoundError):
                (Path("/run/systemd/machines") / self.name).unlink()

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 30) -> None:
        """Orderly poweroff: nspawn forwards SIGTERM to the host's systemd as SIGRTMIN+3."""
        pid = self.launcher_pid()
        if pid is None:
            raise DevError(f"{self.name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            self.kill()
            return
        self.unregister_machine()

    def kill(self) -> None:
        """Power cut: SIGKILL the host's PID 1 (never nspawn itself, which would orphan the host)."""
        pid = self.launcher_pid()
        leader = self.leader_pid()
        if pid is None:
            raise DevError(f"{self.name} is not running")
        if leader is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(leader, signal.SIGKILL)
        if not self._wait_exit(pid, 15):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 5)
        self.unregister_machine()

    def remove_cgroups(self) -> None:
        for d in cgroup_dirs(self.name):
            if d.is_dir():
                for sub in sorted(d.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if sub.is_dir():
                        with contextlib.suppress(OSError):
                            sub.rmdir()
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):  # the slice, once its last host is gone
                d.parent.rmdir()
