"""The ``flynn-host`` command: the daemon and the operator's tools on a host."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

import flynn
from flynn.common.errors import APIError, ConfigError
from flynn.common.http import Client
from flynn.host import sysinfo
from flynn.host.bootstrap import bootstrap_command
from flynn.host.client import SyncHostClient
from flynn.host.config import DEFAULT_PORT, HostConfig

DISCOVERD_ENV = Path("/etc/flynn/discoverd.env")
DISCOVERD_SECRET = Path("/etc/flynn/discoverd.secret")


def _fail(message: str) -> None:
    click.echo(f"flynn-host: {message}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Manage a Flynn host."""


@main.command()
@click.option("--listen-ip", help="address to bind the host API (default 0.0.0.0)")
@click.option("--port", type=click.IntRange(1, 65535), help=f"host API port (default {DEFAULT_PORT})")
@click.option("--id", "host_id", help="host id (default: hostname without punctuation)")
@click.option("--state-dir", type=click.Path(path_type=Path), help="state directory (default /var/lib/flynn)")
def daemon(listen_ip: str | None, port: int | None, host_id: str | None, state_dir: Path | None) -> None:
    """Run the host daemon (normally started by flynn-host.service)."""
    from flynn.host.daemon import run

    try:
        config = HostConfig.from_env()
        overrides = {
            "listen_ip": listen_ip,
            "port": port,
            "host_id": host_id,
            "state_dir": state_dir,
        }
        config = HostConfig(**{**config.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
        run(config)
    except ConfigError as exc:
        _fail(str(exc))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="host to ask")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON")
def status(host: str, port: int, as_json: bool) -> None:
    """Show a host's status from its host API."""
    try:
        data = Client(f"http://{host}:{port}", timeout=5).get("/host/status")
    except (APIError, ValueError) as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    addrs = ", ".join(a["address"] for a in data.get("addresses", []))
    click.echo(f"ID       {data['id']}")
    click.echo(f"VERSION  {data['version']} ({data['build']})")
    click.echo(f"UPTIME   {data['uptime']:.0f}s")
    click.echo(f"ADDRS    {addrs}")


@main.command()
def version() -> None:
    """Print the installed version."""
    click.echo(flynn.__version__)


def _discoverd(url: str | None) -> Client:
    base = url or os.environ.get("DISCOVERD", "http://127.0.0.1:1111").split(",")[0]
    try:
        return Client(base, timeout=15)
    except ValueError as exc:
        _fail(str(exc))
        raise


def _call(client: Client, method: str, path: str) -> Any:
    try:
        return client.request(method, path)
    except APIError as exc:
        _fail(str(exc))


discoverd_option = click.option(
    "--discoverd", "discoverd_url", metavar="URL", help="discoverd API (default $DISCOVERD or the local one)"
)


@main.command(name="list")
@discoverd_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_hosts(discoverd_url: str | None, as_json: bool) -> None:
    """List the cluster's hosts with their Raft status (peer/proxy, leader)."""
    client = _discoverd(discoverd_url)
    status = _call(client, "GET", "/raft/status")
    try:
        hosts = client.get("/services/flynn-host/instances")
    except APIError as exc:
        if exc.status != 404:
            _fail(str(exc))
        hosts = []
    peers = set(status["peers"])
    rows: dict[str, dict[str, Any]] = {}
    for inst in hosts:
        ip = inst["addr"].rsplit(":", 1)[0].strip("[]")
        rows[ip] = {"id": inst["meta"].get("id", inst["id"]), "addr": ip, "raft": "proxy"}
    for ip in peers:
        rows.setdefault(ip, {"id": "-", "addr": ip})["raft"] = "peer"
    for row in rows.values():
        row["leader"] = row["addr"] == status["leader"]
    ordered = sorted(
        rows.values(), key=lambda r: tuple(int(x) if x.isdigit() else 0 for x in r["addr"].split("."))
    )
    if as_json:
        click.echo(json.dumps(ordered, indent=2))
        return
    click.echo(f"{'ID':16} {'ADDR':18} RAFT STATUS")
    for r in ordered:
        click.echo(f"{r['id']:16} {r['addr']:18} {r['raft']}{' (leader)' if r['leader'] else ''}")


PROMOTE_CATCH_UP_SECONDS = 30.0


def _caught_up(target: Client, index: int) -> tuple[bool, str]:
    """Whether the node behind *target* votes, follows a leader and has applied *index*."""
    try:
        st = target.get("/raft/status")
    except APIError as exc:
        return False, str(exc)
    if st.get("role") != "peer":
        return False, f"still a {st.get('role')}"
    if not st.get("leader") or not st.get("has_quorum"):
        return False, "not following a leader yet"
    cut_off = sorted(ip for ip, ok in (st.get("connected") or {}).items() if not ok)
    if cut_off:
        return False, f"not connected to {', '.join(cut_off)}"
    applied = int(st.get("last_applied") or 0)
    if applied < index:
        return False, f"applied index {applied} of {index}"
    return True, f"caught up at index {applied}"


@main.command()
@discoverd_option
@click.option(
    "--no-wait", is_flag=True, help="return once the membership change commits, before the new peer caught up"
)
@click.argument("addr")
def promote(discoverd_url: str | None, no_wait: bool, addr: str) -> None:
    """Make the host at ADDR a voting Raft peer.

    Waits until the new peer follows the leader and has applied the log written before it was
    promoted: only then does it add fault tolerance (a peer still catching up cannot vote a new
    leader in or acknowledge writes)."""
    client = _discoverd(discoverd_url)
    out = _call(client, "PUT", f"/raft/peers/{addr}")
    peers = ", ".join(out["peers"])
    if not out.get("changed"):
        click.echo(f"already a peer: {addr}; peers: {peers}")
        return
    if no_wait:
        click.echo(f"promoted {addr}; peers: {peers}")
        return
    index = int(_call(client, "GET", "/raft/status").get("commit_index") or 0)
    port = urlsplit(client.base_url).port or 1111
    host = f"[{addr}]" if ":" in addr else addr
    target = Client(f"http://{host}:{port}", timeout=2)
    deadline = time.monotonic() + PROMOTE_CATCH_UP_SECONDS
    while True:
        ok, why = _caught_up(target, index)
        if ok:
            click.echo(f"promoted {addr} ({why}); peers: {peers}")
            return
        if time.monotonic() >= deadline:
            _fail(f"promoted {addr} but it has not caught up within {PROMOTE_CATCH_UP_SECONDS:g}s ({why})")
        time.sleep(0.2)


@main.command()
@discoverd_option
@click.option("--force", is_flag=True, help="the peer is dead: remove it without contacting it")
@click.argument("addr")
def demote(discoverd_url: str | None, force: bool, addr: str) -> None:
    """Remove the host at ADDR from the Raft peers (it stays a proxy if alive)."""
    path = f"/raft/peers/{addr}" + ("?force=true" if force else "")
    out = _call(_discoverd(discoverd_url), "DELETE", path)
    click.echo(f"demoted {addr}; peers: {', '.join(out['peers'])}")


def _primary_ip() -> str:
    for a in sysinfo.addresses():
        if a["family"] == "inet":
            return a["address"]
    _fail("cannot find this host's address; pass --addr")
    raise AssertionError


@main.command()
@click.option("--peers", required=True, metavar="IP,IP,...", help="the cluster's bootstrap Raft peers")
@click.option("--addr", metavar="IP", help="this host's cluster address (default: its first IPv4 address)")
@click.option(
    "--secret-file",
    type=click.File("r"),
    help="file holding the cluster's Raft secret ('-' for stdin); generated when omitted on a new cluster",
)
@click.option("--ttl", type=click.IntRange(1, 3600), help="instance TTL in seconds (default 10)")
@click.option("--no-start", is_flag=True, help="write the configuration only")
def init(peers: str, addr: str | None, secret_file: Any, ttl: int | None, no_start: bool) -> None:
    """Configure and start discoverd on this host: a Raft peer if ADDR is in --peers, else a proxy."""
    from flynn.common.config import parse_ip
    from flynn.discoverd.validate import ValidationError, peer_addr

    try:
        peer_list = sorted({peer_addr(p.strip()) for p in peers.split(",") if p.strip()})
        me = parse_ip(addr) if addr else _primary_ip()
    except (ValidationError, ConfigError) as exc:
        _fail(str(exc))
        return
    if not peer_list:
        _fail("--peers lists no address")
    if secret_file is not None:
        secret = secret_file.read().strip()
    elif DISCOVERD_SECRET.exists():
        secret = DISCOVERD_SECRET.read_text().strip()
    else:
        secret = secrets.token_hex(32)
    if len(secret) < 16:
        _fail("the Raft secret must be at least 16 characters")
    DISCOVERD_ENV.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(DISCOVERD_SECRET, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    lines = [f"DISCOVERD_ADDR={me}", f"DISCOVERD_PEERS={','.join(peer_list)}"]
    if ttl:
        lines.append(f"DISCOVERD_TTL={ttl}")
    DISCOVERD_ENV.write_text("\n".join(lines) + "\n")
    role = "peer" if me in peer_list else "proxy"
    click.echo(f"discoverd configured on {me} as a Raft {role} (peers {', '.join(peer_list)})")
    if no_start:
        return
    proc = subprocess.run(
        ["systemctl", "enable", "--now", "flynn-discoverd.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        _fail(f"systemctl enable --now flynn-discoverd failed: {proc.stderr.strip().splitlines()[-1:]}")
    client = Client("http://127.0.0.1:1111", timeout=2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            status = client.get("/raft/status")
            click.echo(f"discoverd running as a {status['role']}")
            return
        except APIError:
            time.sleep(0.2)
    _fail("discoverd did not answer on :1111 within 30s; see journalctl -u flynn-discoverd")


# -- jobs (talk to the local host API) -----------------------------------------------------------

host_option = click.option(
    "--host", "api_host", default="127.0.0.1", show_default=True, help="host API to ask"
)
port_option = click.option(
    "--port", "api_port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True
)


def _host_client(host: str, port: int, timeout: float = 10) -> SyncHostClient:
    try:
        return SyncHostClient(f"http://{host}:{port}", timeout=timeout)
    except ValueError as exc:
        _fail(str(exc))
        raise


def _age(stamp: str | None, now: float | None = None) -> str:
    """``12s ago`` for an RFC 3339 time, ``-`` when there is none."""
    if not stamp:
        return "-"
    from datetime import datetime

    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return stamp
    secs = max(0, int((time.time() if now is None else now) - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{secs}s ago"


@main.command()
@host_option
@port_option
@click.option("-a", "--all", "show_all", is_flag=True, help="include finished jobs")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def ps(api_host: str, api_port: int, show_all: bool, as_json: bool) -> None:
    """List this host's jobs (running ones; -a: with the finished ones)."""
    try:
        jobs = _host_client(api_host, api_port).list_jobs(all=show_all)
    except APIError as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps(jobs, indent=2))
        return
    rows = [
        (
            j["id"],
            j.get("app_name") or "-",
            j.get("type") or "-",
            j["state"] + (f" ({j['exit_status']})" if j.get("exit_status") not in (None, 0) else ""),
            _age(j.get("started_at") or j.get("created_at")),
        )
        for j in jobs
    ]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(PS_HEADER)]
    for row in [PS_HEADER, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


PS_HEADER = ("JOB ID", "APP", "TYPE", "STATE", "STARTED")


@main.command()
@host_option
@port_option
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines until the job ends")
@click.option("-n", "--lines", type=click.IntRange(0, 100_000), help="only the last N lines")
@click.argument("job_id", metavar="JOB")
def log(api_host: str, api_port: int, follow: bool, lines: int | None, job_id: str) -> None:
    """Print a job's output (from the journal)."""
    client = _host_client(api_host, api_port, timeout=30)
    try:
        for line in client.job_log(job_id, lines=lines, follow=follow):
            click.echo(line)
    except APIError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


@main.command()
@host_option
@port_option
@click.argument("job_id", metavar="JOB")
def stop(api_host: str, api_port: int, job_id: str) -> None:
    """Stop a job: deregister it, then SIGTERM (SIGKILL after its stop timeout)."""
    try:
        job = _host_client(api_host, api_port).stop_job(job_id)
    except APIError as exc:
        _fail(str(exc))
        return
    click.echo(f"{job['id']} {job['state']}")


@main.command()
@host_option
@port_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.argument("job_id", metavar="JOB")
def inspect(api_host: str, api_port: int, as_json: bool, job_id: str) -> None:
    """Show everything the host knows of a job (never its env)."""
    try:
        job = _host_client(api_host, api_port).get_job(job_id)
    except APIError as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps(job, indent=2))
        return
    for key in INSPECT_KEYS:
        value = job.get(key)
        if isinstance(value, list):
            value = " ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = json.dumps(value) if value else None
        click.echo(f"{key.upper():<12} {'-' if value is None or value == '' else value}")


INSPECT_KEYS = (
    "id",
    "host_id",
    "app_id",
    "app_name",
    "release_id",
    "type",
    "state",
    "unit",
    "port",
    "service",
    "args",
    "artifact",
    "exit_status",
    "signal",
    "error",
    "created_at",
    "started_at",
    "up_at",
    "finished_at",
)

main.add_command(bootstrap_command)
