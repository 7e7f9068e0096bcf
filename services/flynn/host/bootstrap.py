"""``flynn-host bootstrap``: from booted hosts to a running cluster (docs/bootstrap.md).

Each step configures platform units through the host APIs (``PUT /host/platform/:name``) and waits
until what it started is healthy before the next one begins, so a failure names the step and the
host. Steps: discoverd on every host, secrets, PostgreSQL on the first host, a controller on every
host, the system apps, a scheduler on every host. The result (the `flynn cluster add` lines, the
key, the TLS pin) is printed and written to ``/etc/flynn/bootstrap.json`` (0600).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import json
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from flynn.common.errors import APIError, FlynnError
from flynn.common.http import Client as SyncClient
from flynn.common.log import register_secret
from flynn.discoverd.client import Client as DiscoverdClient
from flynn.host.client import HostClient, host_url

CONTROLLER_PORT = 1200
GITRECEIVE_PORT = 1220  # git smart HTTP on every host until the routers serve git.DOMAIN
POSTGRES_PORT = 5432
RESULT_FILE = Path("/etc/flynn/bootstrap.json")
DOMAIN_RE = re.compile(r"^(?=.{1,200}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$", re.IGNORECASE)
# Platform apps known to the controller. Their processes are systemd units of units/, not
# scheduled jobs: they get releases (their configuration, e.g. the controller's AUTH_KEY) but no
# formation.
DATABASES = ("controller", "blobstore")  # one PostgreSQL role and database per service
SYSTEM_APPS = ("controller", "scheduler", "router", "blobstore", "gitreceive", "logaggregator", "status")
# (app, label, discoverd service): the routes every cluster has, LABEL.DOMAIN (issue 6)
PLATFORM_ROUTES = (("controller", "controller", "controller"), ("gitreceive", "git", "gitreceive"))
ROUTER_SERVICE = "router-http"  # what every router registers as in discoverd
LIVE_ENV = {"controller": "AUTH_KEY", "router": "TLSCERT,TLSKEY,CONTROLLER_KEY"}  # applied live


class BootstrapError(FlynnError):
    """A step failed; the message names it."""


@dataclass(frozen=True)
class Options:
    hosts: list[str]  # cluster addresses; the first runs PostgreSQL
    domain: str
    force: bool = False
    step_timeout: float = 120.0
    raft_secret: str | None = None  # default: generated


@dataclass
class Secrets:
    auth_key: str
    db_passwords: dict[str, str]  # PostgreSQL role (= database) -> password
    raft_secret: str
    ca_cert: str
    tls_cert: str
    tls_key: str
    tls_pin: str

    @classmethod
    def generate(cls, domain: str, hosts: list[str], raft_secret: str | None = None) -> Secrets:
        ca_cert, tls_cert, tls_key, pin = make_certificates(domain, hosts)
        s = cls(
            auth_key=secrets.token_hex(32),
            db_passwords={role: secrets.token_hex(24) for role in DATABASES},
            raft_secret=raft_secret or secrets.token_hex(32),
            ca_cert=ca_cert,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_pin=pin,
        )
        for value in (s.auth_key, s.raft_secret, s.tls_key, *s.db_passwords.values()):
            register_secret(value)
        return s


@dataclass
class Result:
    domain: str
    controller_url: str
    key: str
    tls_pin: str
    ca_cert: str
    hosts: list[str]
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step
    git_url: str = ""  # gitreceive on the first host, for the direct form (docs/gitreceive.md)

    def commands(self) -> list[str]:
        git = f"--git-url {self.git_url} " if self.git_url else ""
        return [
            f"flynn cluster add -p {self.tls_pin} default {self.domain} {self.key}",
            f"flynn cluster add {git}default {self.controller_url} {self.key}",
        ]


def make_certificates(domain: str, hosts: list[str]) -> tuple[str, str, str, str]:
    """A cluster CA and a certificate for DOMAIN, *.DOMAIN and the host addresses, signed by it.

    Returns (CA cert PEM, TLS cert PEM, TLS key PEM, pin); the pin is Flynn's TLSPin:
    base64(sha256(DER of the leaf certificate))."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Flynn CA for {domain}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(domain), x509.DNSName(f"*.{domain}")]
    names += [x509.IPAddress(ipaddress.ip_address(h)) for h in hosts]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{domain}")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    pin = base64.b64encode(hashlib.sha256(der).digest()).decode()
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem).decode(), cert.public_bytes(pem).decode(), key_pem.decode(), pin


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], within: float) -> None:
    deadline = time.monotonic() + within
    last = ""
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (APIError, OSError) as exc:
            last = f" (last error: {exc})"
        await asyncio.sleep(0.25)
    raise BootstrapError(f"timed out after {within:g}s waiting for {what}{last}")


class Bootstrap:
    """The steps, in order; ``log`` gets one line per step."""

    def __init__(self, opts: Options, log: Callable[[str], None] = print) -> None:
        if not opts.hosts:
            raise BootstrapError("--hosts lists no address")
        self.opts = opts
        self.log = log
        self.hosts = {
            ip: HostClient(host_url(ip), timeout=150) for ip in opts.hosts
        }  # PostgreSQL's first start
        self.discoverd = DiscoverdClient([f"http://{ip}:1111" for ip in opts.hosts], retry_for=10)
        self.steps: dict[str, float] = {}

    async def close(self) -> None:
        for client in self.hosts.values():
            await client.close()
        await self.discoverd.close()

    async def _step(self, name: str, coro: Awaitable[None]) -> None:
        t0 = time.monotonic()
        self.log(f"bootstrap: {name} ...")
        try:
            await coro
        except APIError as exc:
            raise BootstrapError(f"{name}: {exc}") from None
        self.steps[name] = round(time.monotonic() - t0, 2)
        self.log(f"bootstrap: {name} done ({self.steps[name]:.1f}s)")

    async def run(self) -> Result:
        ids = await self._preflight()
        s = Secrets.generate(self.opts.domain, self.opts.hosts, self.opts.raft_secret)
        await self._step("discoverd", self._discoverd(s, ids))
        await self._step("postgres", self._postgres(s))
        await self._step("controller", self._controller(s))
        await self._step("system apps", self._system_apps(s))
        await self._step("blobstore", self._blobstore(s))
        await self._step("scheduler", self._scheduler(s))
        await self._step("gitreceive", self._gitreceive(s))
        await self._step("logaggregator", self._logaggregator(s))
        await self._step("router", self._router(s))
        first = self.opts.hosts[0]
        return Result(
            domain=self.opts.domain,
            controller_url=f"http://{first}:{CONTROLLER_PORT}",
            key=s.auth_key,
            tls_pin=s.tls_pin,
            ca_cert=s.ca_cert,
            hosts=list(self.opts.hosts),
            steps=self.steps,
            git_url=f"http://{first}:{GITRECEIVE_PORT}",
        )

    async def _preflight(self) -> dict[str, str]:
        """Every host answers; the cluster is not bootstrapped yet (unless --force)."""
        ids: dict[str, str] = {}
        for ip, client in self.hosts.items():
            try:
                ids[ip] = str((await client.status())["id"])
            except APIError as exc:
                raise BootstrapError(f"host {ip} does not answer: {exc}") from None
        if not self.opts.force:
            try:
                instances = await self.discoverd.instances("controller")
            except APIError:
                instances = []
            if instances:
                raise BootstrapError("the cluster is already bootstrapped (a controller runs); use --force")
        return ids

    async def _configure(self, name: str, ip: str, env: dict[str, str], secret: str | None = None) -> None:
        await self.hosts[ip].configure_platform(name, env, secret=secret)

    async def _discoverd(self, s: Secrets, ids: dict[str, str]) -> None:
        peers = ",".join(self.opts.hosts)
        await asyncio.gather(
            *(
                self._configure(
                    "discoverd", ip, {"DISCOVERD_ADDR": ip, "DISCOVERD_PEERS": peers}, s.raft_secret
                )
                for ip in self.opts.hosts
            )
        )

        async def leader() -> bool:
            return bool((await self.discoverd.raft_status()).get("leader"))

        await wait_for("a discoverd Raft leader", leader, self.opts.step_timeout)

        async def registered() -> bool:
            found = {str(i["meta"].get("id")) for i in await self.discoverd.instances("flynn-host")}
            return set(ids.values()) <= found

        await wait_for("every host to register in discoverd", registered, self.opts.step_timeout)

    async def _postgres(self, s: Secrets) -> None:
        first = self.opts.hosts[0]
        env = {f"FLYNN_PG_{role.upper()}_PASSWORD": pw for role, pw in s.db_passwords.items()}
        await self._configure("postgres", first, env)

        async def accepting() -> bool:
            import psycopg

            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._database_url(s, "controller"), connect_timeout=3, autocommit=True
                )
            except psycopg.OperationalError:
                return False
            await conn.close()
            return True

        await wait_for(f"PostgreSQL on {first}", accepting, self.opts.step_timeout)

    def _database_url(self, s: Secrets, role: str) -> str:
        password = s.db_passwords[role]
        return f"postgresql://{role}:{password}@{self.opts.hosts[0]}:{POSTGRES_PORT}/{role}"

    async def _controller(self, s: Secrets) -> None:
        for ip in self.opts.hosts:
            env = {
                "DATABASE_URL": self._database_url(s, "controller"),
                "AUTH_KEY": s.auth_key,
                "CLUSTER_DOMAIN": self.opts.domain,
                "CONTROLLER_PORT": str(CONTROLLER_PORT),
                "CONTROLLER_ADDR": ip,
                "CA_CERT": s.ca_cert,  # public: GET /ca-cert, for git and browsers
            }
            await self._configure("controller", ip, env)

        async def all_up() -> bool:
            return len(await self.discoverd.instances("controller")) >= len(self.opts.hosts)

        await wait_for("a controller on every host", all_up, self.opts.step_timeout)

    def controller(self, s: Secrets, ip: str | None = None) -> SyncClient:
        return SyncClient(f"http://{ip or self.opts.hosts[0]}:{CONTROLLER_PORT}", key=s.auth_key, timeout=30)

    async def _system_apps(self, s: Secrets) -> None:
        envs: dict[str, dict[str, str]] = {
            "controller": {"AUTH_KEY": s.auth_key},
            "router": {"TLSCERT": s.tls_cert, "TLSKEY": s.tls_key, "CONTROLLER_KEY": s.auth_key},
            "scheduler": {"CONTROLLER_KEY": s.auth_key},
            "gitreceive": {"CONTROLLER_KEY": s.auth_key},  # seed 000: flynn -a gitreceive env set ...
        }
        await asyncio.to_thread(self._create_system_apps, s, envs)

    def _create_system_apps(self, s: Secrets, envs: dict[str, dict[str, str]]) -> None:
        api = self.controller(s)
        existing = {a["name"]: a for a in api.get("/apps")}
        for name in SYSTEM_APPS:
            app = existing.get(name) or api.post("/apps", {"name": name, "system": True})
            unit = f"flynn-{name}.service"
            release = api.post(
                "/releases",
                {
                    "app_id": app["id"],
                    "artifacts": [],
                    "env": envs.get(name, {}),
                    # the controller reloads its keys itself, the routers their default certificate
                    # (docs/router.md): no restart for them (scheduler/platform.py)
                    "meta": {"unit": unit, **({"live_env": LIVE_ENV[name]} if name in LIVE_ENV else {})},
                    "processes": {"web": {"args": [f"/opt/flynn/venv/bin/flynn-{name}"]}},
                },
            )
            api.put(f"/apps/{app['id']}/release", {"id": release["id"]})

    async def _blobstore(self, s: Secrets) -> None:
        for ip in self.opts.hosts:
            env = {"DATABASE_URL": self._database_url(s, "blobstore"), "BLOBSTORE_ADDR": ip}
            await self._configure("blobstore", ip, env)

        async def all_up() -> bool:
            return len(await self.discoverd.instances("blobstore")) >= len(self.opts.hosts)

        await wait_for("a blobstore on every host", all_up, self.opts.step_timeout)

    async def _logaggregator(self, s: Secrets) -> None:
        """A log aggregator on every host (docs/logs.md); wait until each is in discoverd."""
        await asyncio.gather(
            *(
                self._configure("logaggregator", ip, {"CONTROLLER_KEY": s.auth_key, "LOGAGGREGATOR_ADDR": ip})
                for ip in self.opts.hosts
            )
        )

        async def all_up() -> bool:
            return len(await self.discoverd.instances("logaggregator")) >= len(self.opts.hosts)

        await wait_for("a log aggregator on every host", all_up, self.opts.step_timeout)

    async def _gitreceive(self, s: Secrets) -> None:
        """gitreceive on every host (docs/gitreceive.md); wait until each is in discoverd."""
        await asyncio.gather(
            *(
                self._configure("gitreceive", ip, {"CONTROLLER_KEY": s.auth_key, "GITRECEIVE_ADDR": ip})
                for ip in self.opts.hosts
            )
        )

        async def all_up() -> bool:
            return len(await self.discoverd.instances("gitreceive")) >= len(self.opts.hosts)

        await wait_for("gitreceive on every host", all_up, self.opts.step_timeout)

    async def _scheduler(self, s: Secrets) -> None:
        for ip in self.opts.hosts:
            await self._configure("scheduler", ip, {"CONTROLLER_KEY": s.auth_key, "SCHEDULER_ADDR": ip})

        async def leader() -> bool:
            return await self.discoverd.leader("flynn-scheduler") is not None

        await wait_for("a scheduler leader", leader, self.opts.step_timeout)

    # -- the router (issue 6) ----------------------------------------------------------------

    async def _router(self, s: Secrets) -> None:
        """The platform's routes, then a router on every host; wait until each is in discoverd."""
        await asyncio.to_thread(self._platform_routes, s)
        for ip in self.opts.hosts:
            env = {
                "CONTROLLER_KEY": s.auth_key,
                "TLSCERT": s.tls_cert,
                "TLSKEY": s.tls_key,
                "CLUSTER_DOMAIN": self.opts.domain,
                "ROUTER_ADDR": ip,
            }
            await self._configure("router", ip, env)

        async def all_up() -> bool:
            return len(await self.discoverd.instances(ROUTER_SERVICE)) >= len(self.opts.hosts)

        await wait_for("a router on every host", all_up, self.opts.step_timeout)

    def _platform_routes(self, s: Secrets) -> None:
        """``controller.DOMAIN`` -> the controllers, ``git.DOMAIN`` -> gitreceive (kept on a re-run)."""
        api = self.controller(s)
        for app, label, service in PLATFORM_ROUTES:
            domain = f"{label}.{self.opts.domain}"
            if any(r.get("domain") == domain for r in api.get(f"/apps/{app}/routes")):
                continue
            api.post(f"/apps/{app}/routes", {"type": "http", "domain": domain, "service": service})


def save(result: Result, path: Path = RESULT_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({**asdict(result), "commands": result.commands()}, f, indent=2)
        f.write("\n")
    path.with_suffix(".tmp").replace(path)


async def bootstrap(opts: Options, log: Callable[[str], None] = print) -> Result:
    b = Bootstrap(opts, log)
    try:
        return await b.run()
    finally:
        await b.close()


@click.command(name="bootstrap")
@click.option(
    "--hosts", required=True, metavar="IP,IP,...", help="cluster addresses of the hosts (first: PostgreSQL)"
)
@click.option("--domain", required=True, help="the cluster domain: apps are APP.DOMAIN")
@click.option(
    "--raft-secret-file",
    type=click.File("r"),
    help="file with the Raft secret for discoverd ('-' for stdin); generated when omitted",
)
@click.option("--timeout", "step_timeout", type=click.FloatRange(1, 3600), default=120, show_default=True)
@click.option("--force", is_flag=True, help="bootstrap even though a controller already runs")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON (includes the key)")
def bootstrap_command(
    hosts: str, domain: str, raft_secret_file: Any, step_timeout: float, force: bool, as_json: bool
) -> None:
    """Start the platform on fresh hosts: discoverd, PostgreSQL, controllers, schedulers."""
    from flynn.common.config import parse_ip

    try:
        ips = [parse_ip(h.strip(), "--hosts") for h in hosts.split(",") if h.strip()]
    except FlynnError as exc:
        raise click.ClickException(str(exc)) from None
    if len(set(ips)) != len(ips):
        raise click.ClickException("--hosts lists an address twice")
    if not DOMAIN_RE.match(domain):
        raise click.ClickException(f"--domain {domain!r} is not a DNS name")
    raft_secret = raft_secret_file.read().strip() if raft_secret_file is not None else None
    if raft_secret is not None and len(raft_secret) < 16:
        raise click.ClickException("the Raft secret must be at least 16 characters")
    opts = Options(
        hosts=ips, domain=domain.lower(), force=force, step_timeout=step_timeout, raft_secret=raft_secret
    )
    try:
        result = asyncio.run(bootstrap(opts, log=lambda line: click.echo(line, err=as_json)))
    except FlynnError as exc:
        raise click.ClickException(str(exc)) from None
    save(result)
    if as_json:
        click.echo(json.dumps({**asdict(result), "commands": result.commands()}, indent=2))
        return
    click.echo(f"bootstrap: the cluster is up ({sum(result.steps.values()):.1f}s); saved to {RESULT_FILE}")
    click.echo("Add it to the flynn CLI with one of:")
    for line in result.commands():
        click.echo(f"  {line}")
