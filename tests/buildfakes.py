"""What slug build tests need around flynn-slugbuilder, all real and local: an HTTP file server
standing in for the blobstore (GET and streamed PUT of files under a directory), source tarballs
made like ``git archive``, fake buildpacks, and package indexes built from files on this machine
(a PEP 503 "simple" index for pip, a static npm registry).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import itertools
import json
import os
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class BlobServer:
    """GET/PUT of files under ``root`` over HTTP (like the blobstore: a PUT replaces atomically).

    ``routes`` maps a URL path to a file (an npm packument lives at ``/NAME`` while its tarballs
    are under ``/NAME/-/``); ``requests`` records ``(method, path, status)``.
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", *, tls: tuple[Path, Path] | None = None) -> None:
        self.root = root
        self.routes: dict[str, Path] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _path(self) -> Path | None:
                url = self.path.split("?", 1)[0]
                if url in server.routes:
                    return server.routes[url]
                rel = url.lstrip("/")
                if ".." in rel.split("/"):
                    return None
                path = server.root / rel
                if path.is_dir():
                    path = path / "index.html"
                return path

            def _answer(self, status: int, body: bytes = b"", ctype: str = "text/plain") -> None:
                with server.lock:
                    server.requests.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                path = self._path()
                if path is None or not path.is_file():
                    self._answer(404, b"not found\n")
                    return
                ctype = "text/html" if path.suffix == ".html" else "application/octet-stream"
                if path.suffix == ".json":
                    ctype = "application/json"
                with server.lock:
                    server.requests.append(("GET", self.path, 200))
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(path.stat().st_size))
                self.send_header("Cache-Control", "public, max-age=31536000")  # as PyPI's files
                self.end_headers()
                with path.open("rb") as f:
                    while chunk := f.read(1 << 16):
                        self.wfile.write(chunk)

            def do_PUT(self) -> None:
                path = self._path()
                if path is None:
                    self._answer(400, b"bad path\n")
                    return
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
                with tmp.open("wb") as out:
                    if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                        while True:
                            size = int(self.rfile.readline().split(b";")[0], 16)
                            if size == 0:
                                self.rfile.readline()
                                break
                            out.write(self.rfile.read(size))
                            self.rfile.readline()
                    else:
                        left = int(self.headers.get("Content-Length", "0"))
                        while left > 0:
                            chunk = self.rfile.read(min(left, 1 << 16))
                            if not chunk:
                                break
                            out.write(chunk)
                            left -= len(chunk)
                os.replace(tmp, path)
                self._answer(201, json.dumps({"path": self.path}).encode(), "application/json")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        scheme = "http"
        if tls is not None:  # (certificate, key): HTTPS
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.base = f"{scheme}://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def count(self, method: str, path: str) -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.requests if m == method and p == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def self_signed(directory: Path, ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``ip`` (it is its own CA: give it as PIP_CERT); (cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def make_tar(files: Mapping[str, str | bytes], executable: tuple[str, ...] = ()) -> bytes:
    """A plain tar (as ``git archive`` makes) of ``{path: content}``; ``executable`` get 0755."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in sorted(files.items()):
            data = content.encode() if isinstance(content, str) else content
            _add(tar, name, data, 0o755 if name in executable or name.startswith("bin/") else 0o644)
    return buf.getvalue()


def tar_of_dir(directory: Path) -> bytes:
    """A plain tar of an app directory of this repository, file modes kept (git keeps the x bit)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(directory.rglob("*")):
            if "__pycache__" in path.parts or path.is_dir():
                continue
            rel = path.relative_to(directory).as_posix()
            _add(tar, rel, path.read_bytes(), 0o755 if os.access(path, os.X_OK) else 0o644)
    return buf.getvalue()


def write_buildpack(directory: Path, **scripts: str) -> Path:
    """A buildpack with ``bin/NAME`` shell scripts (``detect``, ``compile``, ``release``)."""
    (directory / "bin").mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        script = directory / "bin" / name
        script.write_text("#!/bin/sh\n" + body.strip() + "\n")
        script.chmod(0o755)
    return directory


def buildpack_files(prefix: str, **scripts: str) -> dict[str, str]:
    """The same, as files of a source tarball (``prefix/bin/NAME``)."""
    return {f"{prefix}/bin/{name}": "#!/bin/sh\n" + body.strip() + "\n" for name, body in scripts.items()}


# -- package indexes ---------------------------------------------------------------------------


def make_wheel(dest: Path, name: str, version: str, module: str, source: str) -> Path:
    """A pure-Python wheel holding one module, written by hand (the wheel format is a zip)."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{module}.py": source.encode(),
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: buildfakes\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    records = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{path},sha256={digest},{len(data)}")
    records.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(records) + "\n").encode()
    wheel = dest / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return wheel


def simple_index(root: Path, packages: list[Path]) -> None:
    """A PEP 503 index at ``root/simple/`` for the distribution files ``packages`` (copied to
    ``root/files/``); serve ``root`` and set ``PIP_INDEX_URL=BASE/simple/``."""
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    by_project: dict[str, list[Path]] = {}
    for pkg in packages:
        target = files / pkg.name
        target.write_bytes(pkg.read_bytes())
        project = pkg.name.split("-", 1)[0].lower().replace("_", "-")
        by_project.setdefault(project, []).append(target)
    (root / "simple").mkdir(exist_ok=True)
    links = []
    for project, dists in sorted(by_project.items()):
        page = root / "simple" / project
        page.mkdir(exist_ok=True)
        anchors = "".join(
            f'<a href="../../files/{d.name}#sha256={hashlib.sha256(d.read_bytes()).hexdigest()}">'
            f"{d.name}</a>\n"
            for d in dists
        )
        (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{anchors}</body></html>\n")
        links.append(f'<a href="{project}/">{project}</a>\n')
    (root / "simple" / "index.html").write_text(
        "<!DOCTYPE html><html><body>\n" + "".join(links) + "</body></html>\n"
    )


def make_npm_package(name: str, version: str, files: dict[str, str]) -> bytes:
    """An npm package tarball (everything under ``package/``), as ``npm pack`` makes."""
    manifest = {"name": name, "version": version, "main": "index.js"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, "package/package.json", json.dumps(manifest).encode(), 0o644)
        for path, content in files.items():
            _add(tar, f"package/{path}", content.encode(), 0o644)
    return buf.getvalue()


def npm_registry(server: BlobServer, tarballs: dict[tuple[str, str], bytes]) -> str:
    """A static npm registry served by ``server``: a packument at ``/NAME``, each tarball at
    ``/NAME/-/NAME-VERSION.tgz``; returns the registry URL (for ``NPM_CONFIG_REGISTRY``)."""
    by_name: dict[str, dict[str, Any]] = {}
    for (name, version), data in tarballs.items():
        tgz = server.root / name / "-" / f"{name}-{version}.tgz"
        tgz.parent.mkdir(parents=True, exist_ok=True)
        tgz.write_bytes(data)
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        doc = by_name.setdefault(name, {"name": name, "versions": {}, "dist-tags": {}})
        doc["versions"][version] = {
            "name": name,
            "version": version,
            "dist": {
                "tarball": server.url(f"{name}/-/{name}-{version}.tgz"),
                "shasum": hashlib.sha1(data).hexdigest(),  # noqa: S324 - npm's format
                "integrity": integrity,
            },
        }
        doc["dist-tags"]["latest"] = version
    packuments = server.root / ".packuments"
    packuments.mkdir(exist_ok=True)
    for name, doc in by_name.items():
        packument = packuments / f"{name}.json"
        packument.write_text(json.dumps(doc))
        server.routes[f"/{name}"] = packument
    return server.base + "/"


# -- running flynn-slugbuilder on this machine ------------------------------------------------


@dataclass
class Run:
    rc: int
    out: str
    err: str
    app: Path
    slug: Path

    @property
    def slug_line(self) -> dict[str, Any]:
        last = self.out.rstrip("\n").splitlines()[-1]
        assert last.startswith("FLYNN-SLUG "), self.out[-2000:] + self.err[-2000:]
        return dict(json.loads(last[len("FLYNN-SLUG ") :]))

    @property
    def reason(self) -> str:
        lines = self.err.strip().splitlines()
        assert lines, self.out[-2000:]
        return lines[-1]

    def members(self) -> dict[str, tarfile.TarInfo]:
        with tarfile.open(self.slug) as tar:
            return {m.name: m for m in tar.getmembers()}

    def read(self, name: str) -> str:
        with tarfile.open(self.slug) as tar:
            f = tar.extractfile(name)
            assert f is not None
            return f.read().decode()


class Builder:
    """Runs ``python -m flynn.slugbuilder.main`` against the local blob server."""

    def __init__(self, tmp: Path, server: BlobServer) -> None:
        self.tmp = tmp
        self.server = server
        self.counter = itertools.count()

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        home = self.tmp / "home"
        home.mkdir(exist_ok=True)
        # PIP_CONFIG_FILE=/dev/null: none of this machine's pip configuration (hosts have none)
        base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
        return {**base, "PIP_CONFIG_FILE": "/dev/null", **(extra or {})}

    def argv(self, source: str, n: int, cache: str | None) -> tuple[list[str], Path]:
        app = self.tmp / f"app{n}"
        app.mkdir()
        argv = [sys.executable, "-m", "flynn.slugbuilder.main", "--source", source,
                "--slug", self.server.url(f"slugs/{n}.tgz"), "--build-dir", str(app)]  # fmt: skip
        if cache is not None:
            argv += ["--cache", self.server.url(f"caches/{cache}.tgz")]
        return argv, app

    def put_source(
        self, files: Mapping[str, str | bytes], executable: tuple[str, ...] = ()
    ) -> tuple[str, int]:
        n = next(self.counter)
        (self.server.root / "src").mkdir(exist_ok=True)
        (self.server.root / f"src/{n}.tar").write_bytes(make_tar(files, executable))
        return self.server.url(f"src/{n}.tar"), n

    def build(
        self,
        files: Mapping[str, str | bytes],
        env: dict[str, str] | None = None,
        *,
        cache: str | None = "app",
        executable: tuple[str, ...] = (),
        timeout: float = 120,
    ) -> Run:
        source, n = self.put_source(files, executable)
        argv, app = self.argv(source, n, cache)
        proc = subprocess.run(
            argv, env=self.env(env), capture_output=True, text=True, timeout=timeout, check=False
        )
        return Run(proc.returncode, proc.stdout, proc.stderr, app, self.server.root / f"slugs/{n}.tgz")
