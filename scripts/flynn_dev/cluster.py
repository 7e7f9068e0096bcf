"""``scripts/cluster``: a local cluster of systemd hosts (systemd-nspawn) for development and tests.

    scripts/cluster up N            build/refresh the image, boot host1..hostN, wait for them
    scripts/cluster down [--wipe]   power every host off, remove the network; --wipe drops host state
    scripts/cluster add             boot one more host (hostN+1) into the running cluster
    scripts/cluster status          one line per host
    scripts/cluster exec HOST CMD…  run CMD inside HOST (stdin/stdout/exit code passed through)
    scripts/cluster start|stop|kill HOST     boot | orderly poweroff | power cut
    scripts/cluster partition|heal HOST      unplug | replug the host's network link
    scripts/cluster ip HOST         print the host's address
    scripts/cluster image [--rebuild]        build the image layers only

Errors are one line on stderr with exit status 1 (2 for usage errors), and a failing command never
destroys anything: only ``down`` stops hosts and only ``down --wipe`` deletes their state.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flynn_dev import etchosts, image, netns
from flynn_dev.hosts import Host
from flynn_dev.util import DevError, dev_home, human_bytes

MAX_HOSTS = 50
BOOT_TIMEOUT = float(os.environ.get("FLYNN_DEV_BOOT_TIMEOUT", "120"))
READY_UNITS = ("flynn-host.service",)
ETC_HOSTS_CLUSTER = "dev"  # the developer's cluster (scripts/up): its names go into /etc/hosts
APP_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # the controller's app names


@dataclass
class ClusterState:
    hosts: list[str] = field(default_factory=list)
    base: str = ""
    app: str = ""
    build_id: str = ""
    subnet: str = ""
    peers: list[str] = field(default_factory=list)  # bootstrap Raft peers (addresses)
    published: list[str] = field(default_factory=list)  # app names in the dev /etc/hosts block

    @classmethod
    def load(cls, path: Path) -> ClusterState | None:
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise DevError(f"{path} is corrupt ({exc}); run `scripts/cluster down --wipe`") from None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)


class Cluster:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or dev_home() / f"cluster-{netns.NAME}"
        self.state_file = self.root / "cluster.json"
        self.hosts_file = self.root / "hosts"
        self.subnet = netns.Subnet.from_env()

    # -- state ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DevError("another scripts/cluster command is running on this cluster") from None
            yield

    def state(self) -> ClusterState | None:
        return ClusterState.load(self.state_file)

    def host(self, name: str, state: ClusterState | None = None) -> Host:
        st = state or self.state()
        if st is None or name not in st.hosts:
            known = " ".join(st.hosts) if st and st.hosts else "none; run `scripts/cluster up N`"
            raise DevError(f"no such host: {name} (hosts: {known})")
        return self._host(name)

    def _host(self, name: str) -> Host:
        if not name.startswith("host") or not name[4:].isdigit():
            raise DevError(f"bad host name {name!r}")
        index = int(name[4:])
        return Host(name=name, index=index, state_dir=self.root / name, ip=self.subnet.host_ip(index))

    def all_hosts(self) -> list[Host]:
        st = self.state()
        return [self._host(n) for n in (st.hosts if st else [])]

    def write_hosts_file(self, names: list[str]) -> None:
        lines = [
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            f"{self.subnet.gateway}\tflynn-dev-machine",
        ]
        lines += [f"{self._host(n).ip}\t{n}" for n in names]
        text = "\n".join(lines) + "\n"
        # rewrite in place: running hosts bind-mount this very inode
        mode = "r+" if self.hosts_file.exists() else "w"
        with open(self.hosts_file, mode) as f:
            f.seek(0)
            f.write(text)
            f.truncate()

    # -- commands ------------------------------------------------------------------------------

    def up(self, count: int, *, discoverd_only: bool = False) -> None:
        if not 1 <= count <= MAX_HOSTS:
            raise DevError(f"host count must be 1-{MAX_HOSTS}, got {count}")
        with self.locked():
            names = [f"host{i}" for i in range(1, count + 1)]
            state = self.state()
            kept: ClusterState | None = None  # a cluster `down` stopped without --wipe
            if state is not None:
                running = [h.name for h in self.all_hosts() if h.running()]
                if running:
                    raise DevError(
                        f"cluster is already up ({' '.join(running)}); run `scripts/cluster down` first"
                    )
                if state.hosts and state.hosts != names:
                    raise DevError(
                        f"the stopped cluster kept {len(state.hosts)} host(s): `scripts/cluster up "
                        f"{len(state.hosts)}` starts them again, `scripts/cluster down --wipe` deletes them"
                    )
                kept = state if state.hosts else None
            image.check_tools()
            t0 = time.monotonic()
            img = image.ensure()
            print(f"cluster: image {img.build_id} ready ({time.monotonic() - t0:.1f}s)", flush=True)
            state = ClusterState(
                hosts=names,
                base=str(img.base),
                app=str(img.app),
                build_id=img.build_id,
                subnet=str(self.subnet.network),
                published=kept.published if kept is not None else [],
            )
            state.peers = [self._host(n).ip for n in names]
            state.save(self.state_file)
            self.write_hosts_file(names)
            netns.setup(self.subnet)
            self._boot([self._host(n) for n in names], state)
            if kept is not None and self._bootstrapped():
                # the kept hosts hold the platform already: its units start it again from disk
                self._wait_platform(self._host("host1"))
                self._publish_names(state)
            elif discoverd_only:
                self._init_discoverd([self._host(n) for n in names], state)
            else:
                self._bootstrap([self._host(n) for n in names], state)
                self._publish_names(state)

    def _bootstrapped(self) -> bool:
        return self._host("host1").run(["test", "-f", "/etc/flynn/bootstrap.json"]).returncode == 0

    def _wait_platform(self, host: Host, limit: float = 240.0) -> None:
        """After a restart of a bootstrapped cluster: until the controller answers through the
        host's router (what the CLI and git use)."""
        t0 = time.monotonic()
        name = f"controller.{self.domain}"
        probe = ["curl", "-sfk", "-o", "/dev/null", "-m", "2", "--resolve", f"{name}:443:127.0.0.1"]
        while host.run([*probe, f"https://{name}/status"]).returncode != 0:
            if time.monotonic() - t0 > limit:
                raise DevError(
                    f"the restarted platform did not answer at https://{name}/ within {limit:.0f}s"
                )
            time.sleep(0.5)
        print(f"cluster: kept state: the platform is back in {time.monotonic() - t0:.1f}s", flush=True)

    @property
    def domain(self) -> str:
        return f"{netns.NAME}.flynn.test"  # .test: reserved for testing (RFC 6761), never resolves outside

    def _bootstrap(self, hosts: list[Host], state: ClusterState) -> None:
        """`flynn-host bootstrap` on the first host: discoverd, PostgreSQL, controllers, schedulers."""
        t0 = time.monotonic()
        argv = [
            "/opt/flynn/venv/bin/flynn-host",
            "bootstrap",
            "--hosts",
            ",".join(state.peers),
            "--domain",
            self.domain,
            "--raft-secret-file",
            "-",
        ]
        proc = hosts[0].run(argv, timeout=600, input=self.secret() + "\n")
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise DevError(f"flynn-host bootstrap failed: {lines[-1] if lines else proc.returncode}")
        for line in proc.stdout.strip().splitlines():
            print(f"cluster: {line}", flush=True)
        print(f"cluster: bootstrapped in {time.monotonic() - t0:.1f}s", flush=True)

    def _publish_names(self, state: ClusterState) -> None:
        """The developer's cluster only: controller.DOMAIN, git.DOMAIN and the published apps'
        APP.DOMAIN in the machine's /etc/hosts (a managed block, removed by `down`), for
        `flynn cluster add ... DOMAIN KEY` and for opening apps by name."""
        if netns.NAME != ETC_HOSTS_CLUSTER:
            return
        names = [f"{n}.{self.domain}" for n in ("controller", "git", *state.published)]
        etchosts.install(netns.NAME, {ip: names for ip in state.peers})
        print(f"cluster: {' '.join(names)} -> the routers, in /etc/hosts", flush=True)

    def publish(self, apps: list[str]) -> None:
        """Add APP.DOMAIN of each app to the dev cluster's /etc/hosts block (names, not wildcards:
        /etc/hosts has none)."""
        if netns.NAME != ETC_HOSTS_CLUSTER:
            raise DevError(
                f"only the {ETC_HOSTS_CLUSTER} cluster writes /etc/hosts; use FLYNN_RESOLVE or curl --resolve"
            )
        for app in apps:
            if not APP_NAME_RE.match(app):
                raise DevError(f"{app!r} is not an app name")
        with self.locked():
            state = self.state()
            if state is None or not state.peers:
                raise DevError("cluster is not up; run `scripts/cluster up N` first")
            state.published = sorted(set(state.published) | set(apps))
            state.save(self.state_file)
            self._publish_names(state)

    def bootstrap_result(self) -> dict[str, Any]:
        """What `flynn-host bootstrap` wrote on host1 (key, TLS pin, controller URL)."""
        proc = self._host("host1").run(["cat", "/etc/flynn/bootstrap.json"])
        if proc.returncode != 0:
            raise DevError("the cluster is not bootstrapped (no /etc/flynn/bootstrap.json on host1)")
        return dict(json.loads(proc.stdout))

    def _boot(self, hosts: list[Host], state: ClusterState) -> None:
        t0 = time.monotonic()
        for h in hosts:
            h.start(
                base=Path(state.base),
                app=Path(state.app),
                hosts_file=self.hosts_file,
                prefixlen=self.subnet.prefixlen,
            )
        errors: list[str] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            futures = {pool.submit(h.wait_booted, BOOT_TIMEOUT, READY_UNITS): h for h in hosts}
            for fut in concurrent.futures.as_completed(futures):
                h = futures[fut]
                try:
                    took = fut.result()
                    print(f"cluster: {h.name} up at {h.ip} in {took:.1f}s", flush=True)
                except DevError as exc:
                    errors.append(str(exc))
        if errors:
            raise DevError("; ".join(sorted(errors)))
        print(f"cluster: {len(hosts)} host(s) up in {time.monotonic() - t0:.1f}s", flush=True)

    def add(self) -> str:
        with self.locked():
            state = self.state()
            if state is None or not any(h.running() for h in self.all_hosts()):
                raise DevError("cluster is not up; run `scripts/cluster up N` first")
            if len(state.hosts) >= MAX_HOSTS:
                raise DevError(f"cluster already has {MAX_HOSTS} hosts")
            name = f"host{max(int(n[4:]) for n in state.hosts) + 1}"
            state.hosts.append(name)
            state.save(self.state_file)
            self.write_hosts_file(state.hosts)
            self._boot([self._host(name)], state)
            self._init_discoverd([self._host(name)], state)
            return name

    def secret(self) -> str:
        """The cluster's Raft secret, created once per cluster (kept until ``down --wipe``)."""
        path = self.root / "raft.secret"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        return path.read_text().strip()

    def _init_discoverd(self, hosts: list[Host], state: ClusterState) -> None:
        """`flynn-host init` on each host (peers: the bootstrap hosts), then wait for a Raft leader."""
        if not state.peers:
            return
        t0 = time.monotonic()
        secret = self.secret()
        argv = [
            "/opt/flynn/venv/bin/flynn-host",
            "init",
            "--peers",
            ",".join(state.peers),
            "--secret-file",
            "-",
        ]

        def init(h: Host) -> str:
            proc = h.run([*argv, "--addr", h.ip], timeout=60, input=secret + "\n")
            if proc.returncode != 0:
                lines = (proc.stderr or proc.stdout).strip().splitlines()
                raise DevError(f"{h.name}: flynn-host init failed: {lines[-1] if lines else proc.returncode}")
            return proc.stdout.strip().splitlines()[-1]

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            for h, line in zip(hosts, pool.map(init, hosts), strict=True):
                print(f"cluster: {h.name}: {line}", flush=True)
        leader = self._wait_raft_leader(state.peers[0], 30)
        self._wait_registered(state.peers[0], {h.ip for h in hosts}, 30)
        print(f"cluster: discoverd up, Raft leader {leader} ({time.monotonic() - t0:.1f}s)", flush=True)

    def _wait_registered(self, ip: str, addrs: set[str], timeout: float) -> None:
        """Wait until every host in ``addrs`` has announced itself as ``flynn-host`` in discoverd."""
        deadline = time.monotonic() + timeout
        url = f"http://{ip}:1111/services/flynn-host/instances"
        seen: set[str] = set()
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    seen = {str(i["addr"]).rsplit(":", 1)[0] for i in json.load(resp)}
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if addrs <= seen:
                return
            time.sleep(0.2)
        raise DevError(
            f"hosts not registered in discoverd after {timeout:g}s: {', '.join(sorted(addrs - seen))}"
        )

    @staticmethod
    def raft_status(ip: str, timeout: float = 2) -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(f"http://{ip}:1111/raft/status", timeout=timeout) as resp:
                return dict(json.load(resp))
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def _wait_raft_leader(self, ip: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.raft_status(ip)
            if status and status.get("leader"):
                return str(status["leader"])
            time.sleep(0.2)
        raise DevError(f"no Raft leader among {ip}'s peers after {timeout:g}s")

    def down(self, wipe: bool) -> None:
        with self.locked():
            hosts = self.all_hosts()
            running = [h for h in hosts if h.launcher_pid() is not None]
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
                list(pool.map(lambda h: h.stop(), running))
            for h in hosts:
                h.unregister_machine()
                h.remove_cgroups()
            netns.teardown()
            if netns.NAME == ETC_HOSTS_CLUSTER:
                etchosts.remove(netns.NAME)
            if wipe:
                for h in hosts:
                    _rmtree(h.state_dir)
                for f in (self.state_file, self.hosts_file, self.root / "raft.secret"):
                    with contextlib.suppress(FileNotFoundError):
                        f.unlink()
            print(f"cluster: down ({len(running)} host(s) stopped{', state wiped' if wipe else ''})")

    def start(self, name: str) -> None:
        with self.locked():
            state = self.state()
            h = self.host(name, state)
            if state is None:  # host() already refused unknown names; this narrows the type
                raise DevError("cluster is not up")
            if h.running():
                raise DevError(f"{name} is already running")
            netns.setup(self.subnet)
            self._boot([h], state)

    def stop(self, name: str) -> None:
        with self.locked():
            h = self.host(name)
            h.stop()
            h.remove_cgroups()
            print(f"cluster: {name} stopped")

    def kill(self, name: str) -> None:
        with self.locked():
            h = self.host(name)
            h.kill()
            h.remove_cgroups()
            print(f"cluster: {name} killed (power cut)")

    def partition(self, name: str, heal: bool) -> None:
        h = self.host(name)
        if not h.running():
            raise DevError(f"{name} is not running")
        netns.set_link(name, up=heal)
        print(f"cluster: {name} {'healed' if heal else 'partitioned'}")

    def _raft_column(self, h: Host) -> str:
        status = self.raft_status(h.ip, timeout=1)
        if status is None:
            return "-"
        role = str(status.get("role"))
        return f"{role} (leader)" if status.get("state") == "leader" else role

    def status(self, as_json: bool) -> None:
        state = self.state()
        rows: list[dict[str, object]] = []
        for h in self.all_hosts():
            running = h.running()
            mem = h.memory_bytes() if running else None
            rows.append(
                {
                    "host": h.name,
                    "address": h.ip,
                    "state": ("running" if netns.link_is_up(h.name) else "partitioned")
                    if running
                    else "stopped",
                    "system": h.system_state(),
                    "flynn_host": h.unit_state("flynn-host.service"),
                    "raft": self._raft_column(h) if running else "-",
                    "memory": mem,
                    "pid": h.leader_pid(),
                }
            )
        if as_json:
            print(
                json.dumps(
                    {"cluster": netns.NAME, "build": state.build_id if state else None, "hosts": rows},
                    indent=2,
                )
            )
            return
        if not rows:
            print("cluster: no hosts (run `scripts/cluster up N`)")
            return
        print(f"{'HOST':8} {'ADDRESS':16} {'STATE':12} {'SYSTEM':12} {'FLYNN-HOST':11} {'RAFT':14} MEMORY")
        for r in rows:
            memory = r["memory"]
            shown = human_bytes(memory) if isinstance(memory, int) else "-"
            cols = (f"{r['host']:8}", f"{r['address']:16}", f"{r['state']:12}", f"{r['system']:12}")
            print(" ".join(cols), f"{r['flynn_host']:11}", f"{r['raft']:14}", shown)


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/cluster", description="Local cluster of systemd hosts.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="boot N hosts and bootstrap the cluster on them")
    up.add_argument("count", metavar="N")
    up.add_argument(
        "--discoverd-only", action="store_true", help="start only discoverd on the hosts (no bootstrap)"
    )
    down = sub.add_parser("down", help="power off every host and remove the network")
    down.add_argument("--wipe", action="store_true", help="also delete the hosts' state")
    sub.add_parser("add", help="boot one more host")
    st = sub.add_parser("status", help="show the hosts")
    st.add_argument("--json", action="store_true")
    ex = sub.add_parser("exec", help="run a command inside a host")
    ex.add_argument("host")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    for name in ("start", "stop", "kill", "partition", "heal", "ip"):
        sp = sub.add_parser(name)
        sp.add_argument("host")
    pub = sub.add_parser("publish", help="dev cluster: add APP.DOMAIN names to this machine's /etc/hosts")
    pub.add_argument("apps", nargs="+", metavar="APP")
    im = sub.add_parser("image", help="build the image layers")
    im.add_argument("--rebuild", action="store_true", help="rebuild even when cached")
    return p.parse_args(argv)


def _exec(cluster: Cluster, args: argparse.Namespace) -> None:
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        raise DevError("exec needs a command: scripts/cluster exec HOST CMD...")
    argv = cluster.host(args.host).nsenter_argv(cmd)
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - replaces this process: exit code and stdio pass through


def _up(cluster: Cluster, args: argparse.Namespace) -> None:
    try:
        count = int(args.count)
    except ValueError:
        raise DevError(f"host count must be a number, got {args.count!r}") from None
    cluster.up(count, discoverd_only=args.discoverd_only)


def _image(cluster: Cluster, args: argparse.Namespace) -> None:
    img = image.ensure(force=args.rebuild)
    print(f"base  {img.base}\napp   {img.app}\nbuild {img.build_id}")


COMMANDS: dict[str, Callable[[Cluster, argparse.Namespace], object]] = {
    "up": _up,
    "down": lambda c, a: c.down(a.wipe),
    "add": lambda c, a: print(c.add()),
    "status": lambda c, a: c.status(a.json),
    "exec": _exec,
    "start": lambda c, a: c.start(a.host),
    "stop": lambda c, a: c.stop(a.host),
    "kill": lambda c, a: c.kill(a.host),
    "partition": lambda c, a: c.partition(a.host, heal=False),
    "heal": lambda c, a: c.partition(a.host, heal=True),
    "ip": lambda c, a: print(c.host(a.host).ip),
    "publish": lambda c, a: c.publish(a.apps),
    "image": _image,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("PIP_CONFIG_FILE", "/dev/null")
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    try:
        if os.geteuid() != 0:
            raise DevError("must run as root (network namespaces, mounts, nspawn)")
        COMMANDS[args.cmd](Cluster(), args)
    except DevError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cluster: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
