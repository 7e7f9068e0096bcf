"""The built-in buildpacks, for real on this machine: Python (the host's python3, a venv, pip
against a local package index), Node.js (npm against a local registry), static (its server
answers HTTP), Procfile. Packages are made here (a hand-written wheel, an npm tarball), so
nothing reaches outside the machine. Slugs are run in place through their ``.flynn/run``."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from flynn.slugbuilder.buildpack import BUILTIN_DIR
from tests.buildfakes import BlobServer, Builder, Run, make_npm_package, make_wheel, self_signed, simple_index

GREETING = "GREETING = 'hello from a wheel'\n"
BACKEND = '''
"""A PEP 517 backend in the app itself (pyproject's backend-path): pip builds offline with it."""
import base64, hashlib, io, zipfile


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    dist = "tinyproj-0.1"
    files = {
        "tinyproj.py": b"VALUE = 'built from pyproject'\\n",
        dist + ".dist-info/METADATA": b"Metadata-Version: 2.1\\nName: tinyproj\\nVersion: 0.1\\n",
        dist + ".dist-info/WHEEL": b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(dist + ".dist-info/RECORD,,")
    files[dist + ".dist-info/RECORD"] = ("\\n".join(record) + "\\n").encode()
    name = dist + "-py3-none-any.whl"
    with zipfile.ZipFile(f"{wheel_directory}/{name}", "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return name
'''


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BlobServer]:
    root = tmp_path / "blobs"
    root.mkdir()
    srv = BlobServer(root)
    yield srv
    srv.close()


@pytest.fixture
def builder(tmp_path: Path, server: BlobServer) -> Builder:
    return Builder(tmp_path, server)


def run_in_slug(run: Run, command: str, env: dict[str, str] | None = None) -> str:
    """``command`` through the slug's runner, as a job would run a process type."""
    environ = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(run.app), **(env or {})}
    proc = subprocess.run(
        [run.app / ".flynn/run", command],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(run: Run, command: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start a web process of the slug on a free $PORT; returns it and its base URL once it answers."""
    port = free_port()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(run.app), "PORT": str(port)}
    proc = subprocess.Popen([run.app / ".flynn/run", command], env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/", timeout=2):  # noqa: S310 - a local http URL
                return proc, base
        except urllib.error.HTTPError:
            return proc, base
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"{command} exited with {proc.returncode}") from None
            time.sleep(0.1)
    os.killpg(proc.pid, 9)
    raise AssertionError(f"{command} did not answer on {base}")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - a local http URL
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""


# -- python ----------------------------------------------------------------------------------


def test_python_requirements_from_a_package_index_with_the_download_cached(
    builder: Builder, server: BlobServer, tmp_path: Path
) -> None:
    (tmp_path / "dist").mkdir()
    wheel = make_wheel(tmp_path / "dist", "flynn-greeting", "1.0", "flynn_greeting", GREETING)
    simple_index(server.root / "pypi", [wheel])
    # pip caches plain-http downloads only from a trusted host (it caches https ones always)
    env = {"PIP_INDEX_URL": server.url("pypi/simple/"), "PIP_TRUSTED_HOST": "127.0.0.1"}
    files = {
        "requirements.txt": "flynn-greeting==1.0\n",
        "app.py": "import flynn_greeting, sys\nprint(flynn_greeting.GREETING, sys.prefix)\n",
        "Procfile": "web: python app.py\n",
    }
    run = builder.build(files, env, cache="py")
    assert run.rc == 0, run.out + run.err
    assert "-----> Python app detected" in run.out
    assert "       packages from PIP_INDEX_URL" in run.out
    assert "Successfully installed flynn-greeting-1.0" in run.out
    assert run.slug_line["processes"] == {"web": "python app.py"}
    members = run.members()
    assert members[".venv/bin/python3"].isfile()  # a copy, not a link out of /app
    assert ".profile.d/python.sh" in members
    assert run_in_slug(run, "python app.py").split() == ["hello", "from", "a", "wheel", f"{run.app}/.venv"]
    downloads = server.count("GET", "/pypi/files/" + wheel.name)
    assert downloads == 1
    again = builder.build(files, env, cache="py")
    assert again.rc == 0, again.out + again.err
    assert "-----> Restored the build cache" in again.out
    assert "Using cached http://127.0.0.1" in again.out
    assert server.count("GET", "/pypi/files/" + wheel.name) == downloads  # pip's cache in CACHE_DIR


def test_python_without_an_index_from_find_links(builder: Builder, tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    make_wheel(links, "flynn-greeting", "2.0", "flynn_greeting", "GREETING = 'two'\n")
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links)}
    run = builder.build(
        {"requirements.txt": "flynn-greeting\n", "Procfile": "web: python -m flynn_greeting"}, env
    )
    assert run.rc == 0, run.out + run.err
    assert "       PIP_NO_INDEX: no package index" in run.out
    assert run_in_slug(run, "python -c 'import flynn_greeting as g; print(g.GREETING)'").strip() == "two"


def test_python_over_https_with_the_build_envs_pip_cert(builder: Builder, tmp_path: Path) -> None:
    """PIP_CERT names the index's CA: pip verifies the index against it (and fails without it)."""
    cert, key = self_signed(tmp_path)
    (tmp_path / "https").mkdir()
    tls_server = BlobServer(tmp_path / "https", tls=(cert, key))
    try:
        (tmp_path / "dist").mkdir()
        wheel = make_wheel(tmp_path / "dist", "flynn-greeting", "3.0", "flynn_greeting", "GREETING = 3\n")
        simple_index(tls_server.root / "pypi", [wheel])
        files = {"requirements.txt": "flynn-greeting==3.0\n", "Procfile": "web: python -m flynn_greeting"}
        index = tls_server.url("pypi/simple/")
        assert index.startswith("https://127.0.0.1:")
        run = builder.build(files, {"PIP_INDEX_URL": index, "PIP_CERT": str(cert)})
        assert run.rc == 0, run.out + run.err
        assert "Successfully installed flynn-greeting-3.0" in run.out
        untrusted = builder.build(files, {"PIP_INDEX_URL": index, "PIP_RETRIES": "0"})
        assert untrusted.rc == 1
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.out + untrusted.err
    finally:
        tls_server.close()


def test_python_pyproject_is_installed_with_pip(builder: Builder) -> None:
    pyproject = '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    files = {"pyproject.toml": pyproject, "backend.py": BACKEND, "Procfile": "web: python -m tinyproj"}
    run = builder.build(files, {"PIP_NO_INDEX": "1"})
    assert run.rc == 0, run.out + run.err
    assert "-----> Installing the project (pyproject.toml) with pip" in run.out
    assert (
        run_in_slug(run, "python -c 'import tinyproj; print(tinyproj.VALUE)'").strip()
        == "built from pyproject"
    )


def test_a_failing_pip_install_fails_the_build(builder: Builder) -> None:
    run = builder.build({"requirements.txt": "no-such-package-anywhere\n"}, {"PIP_NO_INDEX": "1"})
    assert run.rc == 1
    assert run.reason == "flynn-slugbuilder: buildpack python: bin/compile exited with status 1"
    assert "No matching distribution found for no-such-package-anywhere" in run.out + run.err


# -- node.js ---------------------------------------------------------------------------------

PACKAGE_JSON = """{
  "name": "node-probe", "version": "1.0.0", "private": true,
  "dependencies": {"flynn-shout": "1.0.0"},
  "scripts": {"start": "node server.js", "build": "node build.js"}
}
"""
SERVER_JS = """
const http = require("http");
const shout = require("flynn-shout");
const built = require("fs").readFileSync(__dirname + "/built.txt", "utf8").trim();
http.createServer((req, res) => res.end(shout("hello") + " " + built))
  .listen(process.env.PORT, "0.0.0.0");
"""


def test_nodejs_with_a_dependency_from_a_registry_a_build_script_and_npm_start(
    builder: Builder, server: BlobServer
) -> None:
    from tests.buildfakes import npm_registry

    tgz = make_npm_package("flynn-shout", "1.0.0", {"index.js": "module.exports = s => s.toUpperCase();\n"})
    registry = npm_registry(server, {("flynn-shout", "1.0.0"): tgz})
    files = {
        "package.json": PACKAGE_JSON,
        "server.js": SERVER_JS,
        "build.js": 'require("fs").writeFileSync("built.txt", "built-by-npm-run-build\\n");\n',
    }
    run = builder.build(files, {"NPM_CONFIG_REGISTRY": registry}, cache="node")
    assert run.rc == 0, run.out + run.err
    assert "-----> Node.js app detected" in run.out
    assert "-----> Running the build script (npm run build)" in run.out
    assert run.slug_line["processes"] == {"web": "npm start"}
    assert "node_modules/flynn-shout/index.js" in run.members()
    proc, base = serve(run, "npm start")
    try:
        assert get(base + "/") == (200, "HELLO built-by-npm-run-build")
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    fetched = server.count("GET", "/flynn-shout/-/flynn-shout-1.0.0.tgz")
    assert fetched == 1
    # from the restored cache alone: npm offline, the registry is not asked for the tarball again
    again = builder.build(
        files, {"NPM_CONFIG_REGISTRY": registry, "NPM_CONFIG_OFFLINE": "true"}, cache="node"
    )
    assert again.rc == 0, again.out + again.err
    assert server.count("GET", "/flynn-shout/-/flynn-shout-1.0.0.tgz") == fetched


def test_nodejs_with_a_lock_file_uses_npm_ci(builder: Builder, server: BlobServer) -> None:
    files = {
        "package.json": '{"name": "locked", "version": "1.0.0", "dependencies": {}}\n',
        "package-lock.json": '{"name": "locked", "version": "1.0.0", "lockfileVersion": 3, "requires": true,'
        ' "packages": {"": {"name": "locked", "version": "1.0.0"}}}\n',
        "Procfile": "web: node -e 1",
    }
    run = builder.build(files)
    assert run.rc == 0, run.out + run.err
    assert "-----> Installing dependencies (npm ci)" in run.out
    assert run.slug_line["processes"] == {"web": "node -e 1"}  # no start script, no server.js: no default


# -- static, procfile ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["root", "public"])
def test_static_site_is_served_on_port(builder: Builder, layout: str) -> None:
    prefix = "public/" if layout == "public" else ""
    files = {
        f"{prefix}index.html": "<h1>static ok</h1>\n",
        f"{prefix}css/site.css": "h1 {}\n",
        "notes.txt": "n",
    }
    run = builder.build(files)
    assert run.rc == 0, run.out + run.err
    assert "-----> Static app detected" in run.out
    web = run.slug_line["processes"]["web"]
    assert web == f"python3 {run.app}/.flynn-static/serve.py"
    proc, base = serve(run, web)
    try:
        assert get(base + "/") == (200, "<h1>static ok</h1>\n")
        assert get(base + "/css/site.css") == (200, "h1 {}\n")
        assert get(base + "/.flynn/run")[0] == 404  # dotfiles are never served
        assert get(base + "/notes.txt")[0] == (404 if layout == "public" else 200)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_procfile_only_app(builder: Builder) -> None:
    run = builder.build(
        {"Procfile": "web: ./serve\nworker: ./work\n", "serve": "#!/bin/sh\n"}, executable=("serve",)
    )
    assert run.rc == 0, run.out + run.err
    assert "-----> Procfile app detected" in run.out
    assert run.slug_line["processes"] == {"web": "./serve", "worker": "./work"}
    assert run.members()["serve"].mode == 0o755


def test_the_built_in_scripts_pass_shellcheck() -> None:
    scripts = sorted(str(p) for p in BUILTIN_DIR.glob("*/bin/*"))
    assert len(scripts) == 12
    proc = subprocess.run(["shellcheck", "--shell=sh", *scripts], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
