"""git push -> first 200 OK for the Python example app (run it with bench/gitpush/run).

Flynn: a bootstrapped 3-host cluster of its own ("gpbnch"), warm (one push of the same app under
another name first). Per round: a fresh app (``flynn create``), ``git push flynn main`` with the
real git client over HTTP to gitreceive, and GET / through host1's router (``Host: APP.DOMAIN``)
every 20 ms from the start of the push until it answers 200. The push includes the whole build
(pip install from an index on this machine, the slug, the release, the deployment).

Peer: Piku, if it can be installed with pip. It cannot (``pip download piku`` gets an unrelated
CircuitPython tool, checked and printed in every run; Piku the PaaS is a single piku.py from its
GitHub repository, which this machine cannot reach). What is measured instead, on this machine
and in the same run, is the work Piku itself does for such a push, without a platform around
it: ``git push`` (local transport) into a bare repository whose post-receive hook checks the
tree out, makes a venv, ``pip install -r requirements.txt`` from the same index with an empty
cache, and starts ``python pyweb.py`` on a free port (Piku would run it under uwsgi), polled the
same way until 200. The ratio Flynn / that floor is what the platform adds.

A benchmark measures: it never fails on a figure. The cluster is removed at the end (``--keep``
leaves it up).
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "services"), str(REPO / "scripts")]
from flynn_dev.benchkit import cluster_command  # noqa: E402 - after the path set-up above

CLUSTER = "gpbnch"
SUBNET = "192.168.238.0/24"
ENV = {**os.environ, "FLYNN_DEV_CLUSTER": CLUSTER, "FLYNN_DEV_SUBNET": SUBNET}
FLYNN = str(REPO / ".venv/bin/flynn")
APP_DIR = REPO / "tests/apps/python-web"
PIP_PACKAGES = ("bottle==0.13.4",)
HOSTS = ("host1", "host2", "host3")


def cluster(*args: str, timeout: float = 900) -> str:
    return cluster_command(ENV, *args, timeout=timeout)


def host_exec(host: str, *argv: str) -> str:
    """A command in a host whose exit status does not matter (``systemctl is-active``)."""
    proc = subprocess.run(
        [str(REPO / "scripts/cluster"), "exec", host, "--", *argv],
        env=ENV, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return proc.stdout.strip()


def git_env(home: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
        **extra,
    }


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> str:
    proc = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(argv[:3])} failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout + proc.stderr


def work_tree(dest: Path, env: dict[str, str]) -> Path:
    shutil.copytree(APP_DIR, dest)
    for argv in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "v1"],
    ):
        run(argv, env, dest)
    return dest


def first_200(url: str, host: str | None, deadline: float) -> float:
    """Poll GET every 20 ms; the monotonic time of the first 200."""
    headers = {"Host": host} if host else {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return time.monotonic()
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.02)
    raise SystemExit(f"bench: no 200 from {url} ({host}) in time")


def push_and_wait(
    repo: Path, env: dict[str, str], url: str, host: str | None, remote: str
) -> tuple[float, float, str]:
    """(push seconds, push -> first 200 seconds, the push's output), from the start of ``git push``."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["git", "push", remote, "main"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    ended: list[float] = []
    output: list[bytes] = []

    def wait() -> None:
        output.append(proc.communicate(timeout=600)[0])
        ended.append(time.monotonic())

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    t200 = first_200(url, host, t0 + 600)
    waiter.join(timeout=600)
    if proc.returncode != 0 or not ended:
        raise SystemExit(f"bench: git push failed:\n{b''.join(output).decode(errors='replace')[-3000:]}")
    return ended[0] - t0, t200 - t0, b"".join(output).decode(errors="replace")


# -- Piku -------------------------------------------------------------------------------------


def piku_on_pypi(work: Path) -> str:
    """What ``pip`` installs under the name ``piku`` (its summary line)."""
    dest = work / "piku-dl"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", dest, "piku"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    wheels = sorted(dest.glob("piku-*.whl")) if dest.is_dir() else []
    if proc.returncode != 0 or not wheels:
        return f"pip download piku failed: {(proc.stderr or proc.stdout).strip()[-300:]}"
    with zipfile.ZipFile(wheels[0]) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        parsed = email.parser.Parser().parsestr(z.read(meta).decode())
    version = parsed.get("Version", "?")
    body = str(parsed.get_payload())
    about = next((line for line in body.splitlines() if line.strip() and not line.startswith("#")), "")
    return f"piku {version} on PyPI: {about!r}"


# -- the floor: Piku's own steps, no platform ---------------------------------------------------

HOOK = """#!/bin/sh
# post-receive: what Piku does for a Python app, minus uwsgi: check out, venv, pip, start on $PORT
set -e
read -r old new ref
app={app}
rm -rf "$app" && mkdir -p "$app"
git --work-tree="$app" checkout -f "$new" -- .
python3 -m venv "$app/.venv"
export PIP_CONFIG_FILE=/dev/null PIP_CACHE_DIR={cache}
"$app/.venv/bin/pip" install --quiet --index-url {index} -r "$app/requirements.txt"
cd "$app" && PORT={port} setsid .venv/bin/python pyweb.py > {log} 2>&1 < /dev/null &
echo $! > {pidfile}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def floor_round(work: Path, n: int, index: str) -> tuple[float, float, int]:
    base = work / f"floor{n}"
    base.mkdir()
    env = git_env(base)
    repo = work_tree(base / "src", env)
    bare = base / "server.git"
    run(["git", "init", "-q", "--bare", str(bare)], env, base)
    port = free_port()
    hook = bare / "hooks/post-receive"
    hook.write_text(
        HOOK.format(
            app=base / "app",
            cache=base / "pipcache",
            index=index,
            port=port,
            log=base / "app.log",
            pidfile=base / "app.pid",
        )
    )
    hook.chmod(0o755)
    pushed, to200, _ = push_and_wait(repo, env, f"http://127.0.0.1:{port}/", None, str(bare))
    return pushed, to200, int((base / "app.pid").read_text())


# -- Flynn ------------------------------------------------------------------------------------


def flynn(rc: Path, home: Path, *args: str, cwd: Path | None = None) -> str:
    return run([FLYNN, *args], git_env(home, FLYNNRC=str(rc)), cwd or home)


def configure_gitreceive(rc: Path, home: Path, build_env: list[str]) -> None:
    """``flynn -a gitreceive env set ...``; wait until every host's gitreceive restarted with it."""
    before = {h: host_exec(h, "systemctl", "show", "-P", "InvocationID", "flynn-gitreceive") for h in HOSTS}
    flynn(rc, home, "-a", "gitreceive", "env", "set", *build_env)
    deadline = time.monotonic() + 120
    while True:  # the scheduler leader writes gitreceive's env to every host, which restarts it
        after = {
            h: host_exec(h, "systemctl", "show", "-P", "InvocationID", "flynn-gitreceive") for h in HOSTS
        }
        active = all(host_exec(h, "systemctl", "is-active", "flynn-gitreceive") == "active" for h in HOSTS)
        if active and all(after[h] != before[h] for h in HOSTS):
            break
        if time.monotonic() > deadline:
            raise SystemExit("bench: gitreceive did not restart with its build env")
        time.sleep(0.5)
    time.sleep(2)  # every instance registered in discoverd again


def main() -> None:  # noqa: PLR0915 - the bench's one sequence, in order
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="leave the cluster up")
    args = p.parse_args()
    os.environ.update(FLYNN_DEV_CLUSTER=CLUSTER, FLYNN_DEV_SUBNET=SUBNET)
    from tests.buildfakes import BlobServer, simple_index

    from flynn_dev import netns

    work = Path(tempfile.mkdtemp(prefix="bench-gitpush-"))
    print(f"bench: Piku: {piku_on_pypi(work)}", flush=True)
    downloads = work / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--dest", downloads, *PIP_PACKAGES], check=True, timeout=300,
    )  # fmt: skip
    wheels = sorted(downloads.glob("*.whl"))
    print(f"bench: booting cluster {CLUSTER} ({SUBNET})", flush=True)
    t0 = time.monotonic()
    try:
        cluster("up", "3")
    except SystemExit:
        if not args.keep:
            cluster("down", "--wipe")
        raise
    print(f"bench: cluster up in {time.monotonic() - t0:.1f}s", flush=True)
    gateway = netns.Subnet.from_env().gateway
    index = BlobServer(work / "index", host=gateway)  # the hosts' package index
    simple_index(index.root / "pypi", wheels)
    local = BlobServer(work / "local-index", host="127.0.0.1")  # the same for the floor
    simple_index(local.root / "pypi", wheels)
    rows: list[tuple[float, float]] = []
    builds: list[float] = []
    floor: list[tuple[float, float]] = []
    pids: list[int] = []
    try:
        creds = json.loads(cluster("exec", "host1", "cat", "/etc/flynn/bootstrap.json"))
        home = work / "home"
        home.mkdir()
        rc = work / "flynnrc"
        add = [
            "cluster",
            "add",
            "--git-url",
            creds["git_url"],
            "default",
            creds["controller_url"],
            creds["key"],
        ]
        run([FLYNN, *add], git_env(home, FLYNNRC=str(rc)), home)
        configure_gitreceive(
            rc,
            home,
            [f"BUILD_ENV_PIP_INDEX_URL={index.url('pypi/simple/')}", f"BUILD_ENV_PIP_TRUSTED_HOST={gateway}"],
        )
        ip1 = creds["controller_url"].split("//")[1].split(":")[0]
        for n in range(args.rounds + 1):  # round 0 warms both up; then one of each, alternating
            fpushed, f200, pid = floor_round(work, n, local.url("pypi/simple/"))
            pids.append(pid)
            app = "warmup" if n == 0 else f"pyweb{n}"
            repo = work_tree(work / app, git_env(home))
            flynn(rc, home, "create", app, cwd=repo)
            pushed, to200, out = push_and_wait(
                repo, git_env(home, FLYNNRC=str(rc)), f"http://{ip1}/", f"{app}.{creds['domain']}", "flynn"
            )
            built = re.search(r"Build finished in ([0-9.]+)s", out)  # slugbuilder's own figure
            build = float(built.group(1)) if built else float("nan")
            label = "warm-up" if n == 0 else f"round {n}"
            print(
                f"bench: {label}: flynn push {pushed:.2f}s (build {build:.1f}s), -> 200 {to200:.2f}s;"
                f" floor push {fpushed:.2f}s, -> 200 {f200:.2f}s",
                flush=True,
            )
            if n:
                rows.append((pushed, to200))
                builds.append(build)
                floor.append((fpushed, f200))
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        index.close()
        local.close()
        if not args.keep:
            cluster("down", "--wipe")
        shutil.rmtree(work, ignore_errors=True)

    f200 = statistics.median(r[1] for r in rows)
    b200 = statistics.median(r[1] for r in floor)
    fpush = statistics.median(r[0] for r in rows)
    bpush = statistics.median(r[0] for r in floor)
    print()
    print(
        f"git push -> first 200 OK, python-web (bottle, local index, empty pip cache), {args.rounds} rounds"
    )
    print(f"  flynn (3 hosts, via a router): push {fpush:6.2f}s -> 200 {f200:6.2f}s"
          f"  (the build job: {statistics.median(builds):.1f}s)")  # fmt: skip
    print(f"  floor (Piku's own steps):      push {bpush:6.2f}s -> 200 {b200:6.2f}s")
    print(
        f"  ratio flynn / floor (medians): {f200 / b200:.2f}x (Piku itself: not installable with pip, above)"
    )


if __name__ == "__main__":
    main()
