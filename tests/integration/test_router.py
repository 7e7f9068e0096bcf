"""Issue 6 acceptance on a real 3-host cluster: flynn-router on every host, its routes from the
controller, its backends from discoverd; real clients from this machine (the flynn CLI, curl,
curl --http2, openssl s_client, aiohttp's WebSocket client, raw sockets).

The CLI reaches the controller only through the routers: ``flynn cluster add -p PIN default
DOMAIN KEY`` with ``FLYNN_RESOLVE`` naming host1 for ``controller.DOMAIN`` (nothing of this machine
is changed; curl gets ``--resolve``). The app (tests/apps/router-echo: HTTP/WebSocket echo and a
TCP echo, each answer naming its job) is a tarball served from this machine. Tests run in file
order on one cluster; the ones that kill backends come last.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.conftest import REPO, ClusterHandle
from tests.integration.test_apps import TarballServer, checked, make_tarball
from tests.integration.test_apps import flynn as run_flynn
from tests.integration.test_gitpush import git_env

BOOTSTRAP = True  # the whole platform, routers included (see conftest.cluster)
APP_DIR = REPO / "tests/apps/router-echo"
FLYNN = str(REPO / ".venv/bin/flynn")
APP = "rtrecho"


# -- the cluster and the CLI -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ips(cluster: ClusterHandle) -> list[str]:
    return [cluster.ip(h) for h in cluster.hosts]


@pytest.fixture(scope="module")
def domain(creds: dict[str, Any]) -> str:
    return str(creds["domain"])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, creds: dict[str, Any]) -> Path:
    d = tmp_path_factory.mktemp("router")
    (d / "ca.pem").write_text(creds["ca_cert"])
    return d


class Flynn:
    """The CLI with its rc file, resolving the cluster's names to a router (FLYNN_RESOLVE)."""

    def __init__(self, rc: Path, resolve: str) -> None:
        self.rc = rc
        self.resolve = resolve

    def __call__(
        self, *args: str, timeout: float = 240, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_flynn(self.rc, *args, timeout=timeout, stdin=stdin, env={"FLYNN_RESOLVE": self.resolve})

    def ok(self, *args: str, timeout: float = 240) -> str:
        return checked(self(*args, timeout=timeout), args)


@pytest.fixture(scope="module")
def flynn(workdir: Path, creds: dict[str, Any], ips: list[str], domain: str) -> Flynn:
    """The CLI configured the way bootstrap tells the operator: by DOMAIN, pinned, via the routers."""
    resolve = f"controller.{domain}:{ips[0]},git.{domain}:{ips[0]}"
    cli = Flynn(workdir / "flynnrc", resolve)
    cli.ok("cluster", "add", "-p", creds["tls_pin"], "default", domain, creds["key"])
    return cli


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(int(timeout)), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
        check=False,
    )


def get(ip: str, host: str, path: str = "/", *extra: str, tls: bool = False) -> tuple[int, Any]:
    """(status, JSON body or text) of a request for ``host`` sent to the router at ``ip``."""
    port = 443 if tls else 80
    scheme = "https" if tls else "http"
    r = curl("--resolve", f"{host}:{port}:{ip}", "-w", "\n%{http_code}", *extra, f"{scheme}://{host}{path}")
    body, _, code = r.stdout.rpartition("\n")
    try:
        return int(code), json.loads(body)
    except ValueError:
        return int(code or 0), body


def wait_for(what: str, check: Any, timeout: float = 60, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def router_status(ip: str) -> tuple[int, dict[str, Any]]:
    r = curl("-w", "\n%{http_code}", f"http://{ip}:1230/status", timeout=10)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), (json.loads(body) if body.startswith("{") else {})


def make_cert(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a certificate for ``name`` signed by it: (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "router test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = (directory / f"{name}.ca.pem", directory / f"{name}.pem", directory / f"{name}.key")
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def served_certificate(ip: str, server_name: str, ca: Path) -> tuple[str, str]:
    """(subject, verify result) of what openssl s_client gets at ``ip``:443 for ``server_name``."""
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"{ip}:443", "-servername", server_name, "-CAfile", str(ca)],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    subject = re.search(r"^subject=(.*)$", r.stdout, re.MULTILINE)
    verify = re.search(r"Verify return code: (.*)$", r.stdout, re.MULTILINE)
    assert subject is not None, r.stdout + r.stderr
    return subject.group(1).strip(), verify.group(1).strip() if verify else ""


# -- the app -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tarball_url(tmp_path_factory: pytest.TempPathFactory, cluster: ClusterHandle) -> Iterator[str]:
    from flynn_dev import netns

    directory = tmp_path_factory.mktemp("artifacts")
    make_tarball(APP_DIR, directory / "router-echo.tar.gz")
    server = TarballServer(directory, netns.Subnet.from_env().gateway)
    yield f"{server.base}/router-echo.tar.gz"
    server.close()


def web_jobs(flynn: Flynn) -> list[dict[str, Any]]:
    listed = json.loads(flynn.ok("-a", APP, "ps", "--json"))
    return [j for j in listed if j["type"] == "web" and j["state"] == "up"]


def jobs_seen(ip: str, host: str, n: int, *extra: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        code, body = get(ip, host, "/", *extra)
        assert code == 200, (code, body)
        seen[body["job"]] += 1
    return seen


# -- the tests ---------------------------------------------------------------------------------------


def test_cluster_add_by_domain_reaches_the_controller_through_the_router(
    flynn: Flynn, creds: dict[str, Any], domain: str
) -> None:
    rc = flynn.rc.read_text()
    assert f'ControllerURL = "https://controller.{domain}"' in rc
    assert creds["tls_pin"] in rc
    apps = flynn.ok("apps")
    assert "controller" in apps
    # the platform routes bootstrap created
    assert f"http:controller.{domain}" in flynn.ok("-a", "controller", "route")
    assert f"http:git.{domain}" in flynn.ok("-a", "gitreceive", "route")
    # a wrong pin is refused before the key is sent
    other = Flynn(flynn.rc.with_name("flynnrc-badpin"), flynn.resolve)
    out = other("cluster", "add", "-p", "A" * 43 + "=", "default", domain, creds["key"])
    assert out.returncode == 1
    assert "did not match the provided pin" in out.stderr


def test_git_push_over_https_through_the_routers_trusts_the_cluster_ca(
    flynn: Flynn, workdir: Path, creds: dict[str, Any], ips: list[str], domain: str
) -> None:
    """Seed/issue 5: gitreceive served at https://git.DOMAIN by the routers. ``cluster add -p``
    fetched the cluster CA over the pinned connection; ``flynn create`` makes git trust it."""
    ca_file = workdir / ".flynn" / "ca-certs" / "default.pem"
    assert ca_file.read_text().strip() == creds["ca_cert"].strip()
    repo = workdir / "https-push"
    shutil.copytree(REPO / "tests/apps/static-site", repo)
    env = git_env(workdir / "home", flynn.rc, FLYNN_RESOLVE=flynn.resolve)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            list(argv), cwd=repo, env=env, capture_output=True, text=True, timeout=600, check=False,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert creds["key"] not in out.stdout + out.stderr, "the cluster key was printed"
        return out

    assert run("git", "init", "-q", "-b", "main").returncode == 0
    assert run("git", "add", "-A").returncode == 0
    assert run("git", "commit", "-q", "-m", "v1").returncode == 0
    out = run(FLYNN, "create", "httpsgit")
    assert out.returncode == 0, out.stderr
    assert f"Added git remote flynn (https://git.{domain}/httpsgit.git)" in out.stdout
    got = run("git", "config", "--get", f"http.https://git.{domain}/.sslCAInfo")
    assert got.stdout.strip() == str(ca_file)
    # git's own name resolution: the machine has no DNS for the cluster domain
    push = run("git", "-c", f"http.curloptResolve=git.{domain}:443:{ips[1]}", "push", "flynn", "main")
    assert push.returncode == 0, push.stdout + push.stderr
    _code, body = wait_for(
        "the pushed app to answer",
        lambda: (r := get(ips[2], f"httpsgit.{domain}"))[0] == 200 and r,
        120,
    )
    assert "<html" in str(body).lower()
    # without the CA git refuses the routers' certificate: the trust comes from the cluster CA only
    run("git", "config", "--unset", f"http.https://git.{domain}/.sslCAInfo")
    refused = run("git", "-c", f"http.curloptResolve=git.{domain}:443:{ips[1]}", "push", "flynn", "main")
    assert refused.returncode != 0
    assert "certificate" in refused.stderr.lower(), refused.stderr


def test_every_router_reports_its_status(ips: list[str]) -> None:
    for ip in ips:
        code, status = wait_for(f"the router on {ip} to be synced", lambda ip=ip: _ok(router_status(ip)), 60)
        wait_for(
            f"the router on {ip} to be registered", lambda ip=ip: router_status(ip)[1].get("registered"), 30
        )
        code, status = router_status(ip)
        assert code == 200
        assert status["status"] == "ok"
        assert status["workers"]["answered"] == status["workers"]["count"] >= 1
        assert status["control_plane"]["synced"] is True
        assert status["routes"]["http"] >= 2  # controller.DOMAIN and git.DOMAIN at least
        assert status["registered"] is True
        assert status["addr"] == ip
        assert "controller" in status["services"]
        # the image ships the data plane compiled (docs/router.md): the hosts must run that build
        assert status["implementation"]["data_plane"] == "compiled", status["implementation"]


def _ok(result: tuple[int, dict[str, Any]]) -> tuple[int, dict[str, Any]] | None:
    return result if result[0] == 200 else None


def test_app_is_reachable_through_every_router_at_its_default_domain(
    flynn: Flynn, tarball_url: str, ips: list[str], domain: str, workdir: Path
) -> None:
    flynn.ok("create", APP)
    routes = flynn.ok("-a", APP, "route")
    assert re.search(rf"^http:{APP}\.{re.escape(domain)}\s+{APP}-web\s+http/", routes, re.MULTILINE), routes
    release = workdir / "release.json"
    release.write_text(
        json.dumps(
            {
                "processes": {
                    "web": {"args": ["python3", "/app/echoweb.py"]},
                    "echo": {"args": ["python3", "/app/tcpecho.py"], "service": f"{APP}-tcp"},
                }
            }
        )
    )
    flynn.ok("-a", APP, "release", "add", "-f", str(release), tarball_url)
    flynn.ok("-a", APP, "scale", "web=1", "echo=1")
    (job,) = web_jobs(flynn)
    host = f"{APP}.{domain}"
    for ip in ips:
        code, body = wait_for(f"{host} through {ip}", lambda ip=ip: _served(get(ip, host)), 30)
        assert body["job"] == job["id"]
        assert body["host"] == host
        assert body["proto"] == "http"
        code, body = get(ip, host, "/", "--cacert", str(workdir / "ca.pem"), tls=True)
        assert code == 200
        assert body["proto"] == "https"
    assert get(ips[0], f"nosuchapp.{domain}")[0] == 404


def _served(result: tuple[int, Any]) -> tuple[int, Any] | None:
    return result if result[0] == 200 else None


def test_scaling_to_three_spreads_load_and_sticky_keeps_a_client(
    flynn: Flynn, ips: list[str], domain: str, workdir: Path
) -> None:
    host = f"{APP}.{domain}"
    assert len(jobs_seen(ips[1], host, 5)) == 1
    flynn.ok("-a", APP, "scale", "web=3", "echo=1")
    jobs = {j["id"] for j in web_jobs(flynn)}
    assert len(jobs) == 3
    seen = wait_for(
        "requests spread over the 3 jobs", lambda: set(jobs_seen(ips[1], host, 12)) == jobs or None, 30
    )
    assert seen
    # sticky: a client with the router's cookie stays on one backend, through any router
    sticky = f"sticky.{domain}"
    flynn.ok("-a", APP, "route", "add", "http", "--sticky", sticky)
    wait_for("the sticky route", lambda: get(ips[2], sticky)[0] == 200, 30)
    jar = workdir / "cookies.txt"
    picked = jobs_seen(ips[0], sticky, 1, "-c", str(jar), "-b", str(jar))
    assert "_backend" in jar.read_text()
    for ip in ips:
        assert jobs_seen(ip, sticky, 6, "-c", str(jar), "-b", str(jar)) == Counter({next(iter(picked)): 6})
    assert len(jobs_seen(ips[0], sticky, 12)) > 1  # without the cookie: spread


def test_route_certificate_by_sni_and_http2(flynn: Flynn, ips: list[str], domain: str, workdir: Path) -> None:
    name = "secure.router.test"
    ca, cert, key = make_cert(workdir, name)
    route_id = flynn.ok("-a", APP, "route", "add", "http", "-c", str(cert), "-k", str(key), name).strip()
    assert route_id.startswith("http/")
    listing = flynn.ok("-a", APP, "route")
    assert f"https:{name}" in listing
    assert "PRIVATE KEY" not in listing

    def route_cert_served(ip: str) -> tuple[str, str] | None:
        subject, verify = served_certificate(ip, name, ca)
        return (subject, verify) if name in subject else None

    for ip in ips:
        subject, verify = wait_for(f"the route certificate on {ip}", lambda ip=ip: route_cert_served(ip), 30)
        assert verify == "0 (ok)", subject
        # other names get the cluster's certificate (*.DOMAIN, signed by the cluster CA)
        subject, verify = served_certificate(ip, f"{APP}.{domain}", workdir / "ca.pem")
        assert f"*.{domain}" in subject
        assert verify == "0 (ok)"
        r = curl(
            "--http2",
            "--cacert",
            str(ca),
            "--resolve",
            f"{name}:443:{ip}",
            "-w",
            "\n%{http_version}",
            f"https://{name}/h2",
        )
        body, _, version = r.stdout.rpartition("\n")
        assert version == "2", r.stdout + r.stderr
        assert json.loads(body)["path"] == "/h2"
    # the HTTP -> HTTPS redirect is per route
    flynn.ok("-a", APP, "route", "update", route_id, "--https-redirect")
    wait_for("the redirect", lambda: get(ips[1], name)[0] == 301, 30)
    r = curl(
        "-o", "/dev/null", "-w", "%{redirect_url}", "--resolve", f"{name}:80:{ips[1]}", f"http://{name}/x?y=1"
    )
    assert r.stdout == f"https://{name}/x?y=1"


def test_websocket_echo_through_every_router(ips: list[str], domain: str) -> None:
    host = f"{APP}.{domain}"

    async def echo(ip: str) -> list[str]:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                f"http://{ip}/ws", headers={"Host": host}, timeout=aiohttp.ClientWSTimeout(ws_close=5)
            ) as ws,
        ):
            out = []
            for text in ("one", "two"):
                await ws.send_str(text)
                out.append(await asyncio.wait_for(ws.receive_str(), 10))
            await ws.send_bytes(b"\x00" * 100_000)
            assert len(await asyncio.wait_for(ws.receive_bytes(), 10)) == 100_000
            return out

    for ip in ips:
        replies = asyncio.run(echo(ip))
        assert [r.split(":", 1)[1] for r in replies] == ["one", "two"]
        assert len({r.split(":", 1)[0] for r in replies}) == 1  # one connection, one job


def test_tcp_route_on_every_router(flynn: Flynn, ips: list[str]) -> None:
    out = flynn.ok("-a", APP, "route", "add", "tcp", "-s", f"{APP}-tcp").strip()
    match = re.fullmatch(r"(tcp/\S+) listening on port (\d+)", out)
    assert match, out
    route_id, port = match.group(1), int(match.group(2))
    assert 3000 <= port <= 3500

    def echo(ip: str) -> bytes | None:
        try:
            with socket.create_connection((ip, port), timeout=5) as s:
                s.sendall(b"ping\n")
                return s.makefile("rb").readline()
        except OSError:
            return None

    for ip in ips:
        reply = wait_for(f"the TCP route on {ip}", lambda ip=ip: echo(ip), 30)
        assert reply.endswith(b":ping\n")
    flynn.ok("-a", APP, "route", "remove", route_id)
    for ip in ips:
        wait_for(f"port {port} closed on {ip}", lambda ip=ip: echo(ip) is None, 30)


def test_paths_no_backend_and_route_removal(flynn: Flynn, ips: list[str], domain: str) -> None:
    host = f"paths.{domain}"
    root = flynn.ok("-a", APP, "route", "add", "http", host).strip()
    flynn.ok("-a", APP, "route", "add", "http", "-p", "/nothing", "-s", "nothing-web", host)
    wait_for("the routes", lambda: get(ips[2], host, "/nothing/x")[0] == 503, 30)
    code, body = get(ips[2], host, "/nothingelse")
    assert code == 200  # a prefix matches on a segment boundary: this is the root route
    assert body["path"] == "/nothingelse"
    flynn.ok("-a", APP, "route", "remove", root)
    for ip in ips:
        wait_for(f"{host}/ gone on {ip}", lambda ip=ip: get(ip, host, "/x")[0] == 404, 30)
        assert get(ip, host, "/nothing")[0] == 503
    # a wildcard domain covers every name under it, not the suffix itself
    flynn.ok("-a", APP, "route", "add", "http", "*.wild.router.test")
    wait_for("the wildcard route", lambda: get(ips[0], "a.wild.router.test")[0] == 200, 30)
    code, body = get(ips[1], "b.c.wild.router.test", "/w")
    assert code == 200
    assert body["host"] == "b.c.wild.router.test"
    assert get(ips[2], "wild.router.test")[0] == 404


def _raw(ip: str, data: bytes, *, port: int = 80, wait: float = 5.0, tls: bool = False) -> bytes:
    with socket.create_connection((ip, port), timeout=wait) as s:
        sock: socket.socket = s
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(s)
        sock.sendall(data)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.") else 0


def test_malformed_requests_get_4xx_and_the_router_keeps_serving(ips: list[str], domain: str) -> None:
    ip, host = ips[1], f"{APP}.{domain}"
    h = host.encode()
    assert _status(_raw(ip, b"GARBAGE\r\n\r\n")) == 400
    assert (
        _status(_raw(ip, b"GET / HTTP/1.1\r\nHost: " + h + b"\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"))
        == 431
    )
    smuggle = (
        b"POST / HTTP/1.1\r\nHost: "
        + h
        + b"\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert _status(_raw(ip, smuggle)) == 400
    # TLS garbage: the connection is closed; TLS keeps working for others
    assert not _raw(ip, os.urandom(512), port=443).startswith(b"HTTP/")
    # slowloris: headers that never end get 408 after the header timeout (10 s), while others are served
    result: dict[str, Any] = {}

    def slowloris() -> None:
        with socket.create_connection((ip, 80), timeout=30) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: " + h + b"\r\n")
            for i in range(30):  # one more header line a second, never the blank line
                readable, _, _ = select.select([s], [], [], 1.0)
                if readable:  # the router answered (and closes): stop before writing into a closed socket
                    with contextlib.suppress(OSError):
                        result["answer"] = s.recv(4096)
                    return
                s.sendall(f"X-Slow-{i}: y\r\n".encode())

    t = threading.Thread(target=slowloris)
    t.start()
    while t.is_alive():
        assert get(ip, host)[0] == 200
        assert get(ip, host, "/", "-k", tls=True)[0] == 200
        time.sleep(0.5)
    t.join()
    assert _status(result.get("answer", b"")) == 408, result  # the header timeout (10 s) cut it
    _code, status = router_status(ip)
    assert status["bad_requests"] >= 3


def test_the_routers_log_no_secret(cluster: ClusterHandle, creds: dict[str, Any]) -> None:
    env = cluster.exec("host1", "cat", "/etc/flynn/router.env")
    assert env.rc == 0, env.err
    key_lines = [
        line for line in env.out.splitlines() if len(line) > 40 and "=" not in line and "-" not in line
    ]
    assert key_lines  # the TLS key's base64 lines (the PEM is multi-line in the env file)
    for host in cluster.hosts:
        log = cluster.exec(host, "journalctl", "-u", "flynn-router", "--no-pager", "-o", "cat")
        assert log.rc == 0, log.err
        assert "route sync:" in log.out
        assert creds["key"] not in log.out
        assert not any(line in log.out for line in key_lines)


@pytest.mark.destructive
def test_stopped_backends_drain_and_no_request_fails(
    flynn: Flynn, cluster: ClusterHandle, ips: list[str], domain: str
) -> None:
    """Killing one host's backends (`flynn kill`: deregistered, drained, then SIGTERM; and a
    SIGKILL of a job's process) fails no request made through the other hosts' routers; a request
    in flight to a drained job finishes."""
    host = f"{APP}.{domain}"
    jobs = web_jobs(flynn)
    assert len(jobs) == 3
    victim_host = next(j["host_id"] for j in jobs if j["host_id"] != "host1")
    victims = [j for j in jobs if j["host_id"] == victim_host]
    others = [ip for h, ip in zip(cluster.hosts, ips, strict=True) if h != victim_host]
    failures: list[str] = []
    done = threading.Event()
    posts_done = threading.Event()  # a POST in flight to a SIGKILLed backend cannot succeed: GETs only then
    counts: Counter[str] = Counter()

    def load(ip: str, post: bool) -> None:
        # POSTs are not retried once sent: only the drain keeps them off a stopping backend
        extra = ("--data-binary", "x" * 100) if post else ()
        while not done.is_set() and not (post and posts_done.is_set()):
            code, body = get(ip, host, "/", *extra)
            if code != 200:
                failures.append(f"{ip}: {'POST' if post else 'GET'} {code} {str(body)[:100]}")
            else:
                counts[body["job"]] += 1

    # a slow request that a victim is serving when it is stopped: sent with the sticky cookie of
    # the victim's address (the router's keyed hash, the same on every router), so it lands there
    from flynn.router.backends import sticky_token

    victim = victims[0]
    instances = cluster.api("host1").get(f"/services/{APP}-web/instances")
    (addr,) = [i["addr"] for i in instances if i["meta"].get("FLYNN_JOB_ID") == victim["id"]]
    cookie = f"_backend={sticky_token(addr).decode()}"
    slow: dict[str, Any] = {}

    def slow_request() -> None:
        # 1.5 s: it ends within the drain delay (2 s) that precedes the job's SIGTERM
        slow["result"] = get(others[0], f"sticky.{domain}", "/slow?s=1.5", "-b", cookie)

    threads = [threading.Thread(target=load, args=(ip, post)) for ip in others for post in (False, True)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        slow_thread = threading.Thread(target=slow_request)
        slow_thread.start()
        time.sleep(0.5)
        for v in victims:
            flynn.ok("-a", APP, "kill", v["id"])
        slow_thread.join(60)
        wait_for("the killed jobs to be replaced", lambda: len(web_jobs(flynn)) == 3 or None, 60)
        # a backend killed hard: connections to it are refused (and retried elsewhere) until its
        # host sees the unit end and deregisters it; requests in flight to it are GETs, retried
        posts_done.set()
        time.sleep(1)
        target = next(j for j in web_jobs(flynn) if j["host_id"] != "host1")
        res = cluster.exec(
            target["host_id"], "systemctl", "kill", "--signal=SIGKILL", f"flynn-job-{target['id']}"
        )
        assert res.rc == 0, res.err

        def replaced() -> bool:
            up = {j["id"] for j in web_jobs(flynn)}
            return target["id"] not in up and len(up) == 3

        wait_for("the SIGKILLed job to be replaced", replaced, 90)
        time.sleep(2)
    finally:
        done.set()
        for t in threads:
            t.join(60)
    assert failures == [], failures[:10]
    assert sum(counts.values()) > 50
    code, body = slow["result"]
    assert code == 200, body  # in flight when its job was stopped: finished, not cut
    assert body["job"] == victim["id"]
