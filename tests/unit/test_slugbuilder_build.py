"""flynn-slugbuilder end to end on this machine with fake buildpacks: the real command in a
subprocess, its source, slug and cache over HTTP from a local file server (tests/buildfakes.py).

Covers buildpack selection (BUILDPACK_URL, .buildpacks, built-in detection; in-app paths and git
URLs cloned with the real git), .slugignore, the env dir, Procfile and bin/release defaults, the
cache round trip, live output, failure reasons, cancellation and the FLYNN-SLUG line.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flynn.slugbuilder import main as slug_main
from flynn.slugbuilder import process
from flynn.slugbuilder.errors import Cancelled
from tests.buildfakes import BlobServer, Builder, buildpack_files, make_tar, write_buildpack

SECRET = "s3cr3t-" + "k" * 24


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


MARK = buildpack_files  # a buildpack inside the app's source


def marker(name: str, default_web: str | None = None) -> dict[str, str]:
    """An in-app buildpack ``buildpacks/NAME`` that appends its name to BUILD/order and says so."""
    release = (
        f'printf -- "---\\ndefault_process_types:\\n  web: {default_web}\\n"' if default_web else "echo ---"
    )
    return MARK(
        f"buildpacks/{name}",
        detect=f"echo {name.title()}",
        compile=f'echo "compiling {name}"; echo {name} >> "$1/order"',
        release=release,
    )


# -- selection -------------------------------------------------------------------------------


def test_buildpacks_file_compiles_each_in_order_and_the_procfile_wins(builder: Builder) -> None:
    files = {
        ".buildpacks": "./buildpacks/one\n# a comment\nbuildpacks/two\n",
        "Procfile": "worker: sleep 1\n",
        **marker("one", "one-web"),
        **marker("two", "two-web"),
    }
    run = builder.build(files)
    assert run.rc == 0, run.err
    assert run.read("order") == "one\ntwo\n"
    assert "-----> One app detected" in run.out
    assert "-----> Two app detected" in run.out
    assert run.out.index("compiling one") < run.out.index("compiling two")
    # a later buildpack's defaults win over an earlier one's, the Procfile adds to (and wins over) them
    assert run.slug_line["processes"] == {"web": "two-web", "worker": "sleep 1"}


def test_buildpack_url_wins_over_buildpacks_file(builder: Builder) -> None:
    files = {".buildpacks": "./buildpacks/one\n", **marker("one"), **marker("two"), "Procfile": "web: x"}
    run = builder.build(files, {"BUILDPACK_URL": "./buildpacks/two"})
    assert run.rc == 0, run.err
    assert run.read("order") == "two\n"
    assert "BUILDPACK_URL is set: .buildpacks is not used" in run.out


@pytest.mark.parametrize(
    ("files", "detected"),
    [
        ({"Procfile": "web: ./server"}, "Procfile"),
        ({"Procfile": "web: x", "index.html": "<p>hi</p>"}, "Static"),  # static comes before procfile
        ({"public/a.css": "a {}"}, "Static"),
    ],
)
def test_the_first_built_in_that_detects_is_used(
    builder: Builder, files: dict[str, str], detected: str
) -> None:
    run = builder.build(files)
    assert run.rc == 0, run.err
    assert f"-----> {detected} app detected" in run.out
    assert run.out.count("app detected") == 1


def test_no_buildpack_detects_the_app(builder: Builder) -> None:
    run = builder.build({"README": "nothing to build"})
    assert run.rc == 1
    assert run.reason.startswith(
        "flynn-slugbuilder: no buildpack detected this app (python: requirements.txt"
    )
    assert "FLYNN-SLUG" not in run.out
    assert not run.slug.exists()


def test_an_explicit_buildpack_that_does_not_detect_fails(builder: Builder) -> None:
    files = {**MARK("bp", detect="exit 1", compile="true"), "Procfile": "web: x"}
    run = builder.build(files, {"BUILDPACK_URL": "./bp"})
    assert run.rc == 1
    assert run.reason == "flynn-slugbuilder: buildpack ./bp does not apply to this app (bin/detect failed)"


def test_a_buildpack_path_may_not_leave_the_app(builder: Builder, tmp_path: Path) -> None:
    write_buildpack(tmp_path / "outside", detect="echo x", compile="true")
    run = builder.build({"Procfile": "web: x"}, {"BUILDPACK_URL": "../outside"})
    assert run.rc == 1
    assert run.reason == "flynn-slugbuilder: buildpack ../outside: the path leaves the app"
    run = builder.build({"Procfile": "web: x"}, {"BUILDPACK_URL": "./missing"})
    assert run.reason == "flynn-slugbuilder: buildpack ./missing: no such directory in the app"
    run = builder.build({"bp/bin/detect": "#!/bin/sh\necho x\n"}, {"BUILDPACK_URL": "./bp"})
    assert run.reason == "flynn-slugbuilder: buildpack ./bp has no bin/compile"


def _git(*args: str | Path, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e", "GIT_CONFIG_GLOBAL": "/dev/null"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_git_buildpacks_are_cloned_at_a_branch_tag_or_commit(builder: Builder, tmp_path: Path) -> None:
    repo = tmp_path / "bp-repo"
    _git("init", "-q", "-b", "main", repo, cwd=tmp_path)
    write_buildpack(repo, detect="echo Git", compile='echo "$MARK" > "$1/mark"')
    (repo / "bin/compile").write_text('#!/bin/sh\necho v1 > "$1/mark"\n')
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "v1", cwd=repo)
    _git("tag", "v1", cwd=repo)
    first = _git("rev-parse", "HEAD", cwd=repo).strip()
    (repo / "bin/compile").write_text('#!/bin/sh\necho v2 > "$1/mark"\n')
    _git("commit", "-q", "-am", "v2", cwd=repo)
    for ref, expected in (("", "v2"), ("#v1", "v1"), ("#main", "v2"), (f"#{first[:12]}", "v1")):
        run = builder.build({"Procfile": "web: x"}, {"BUILDPACK_URL": f"file://{repo}{ref}"})
        assert run.rc == 0, run.out + run.err
        assert run.read("mark") == expected + "\n", ref
        assert f"-----> Fetching buildpack file://{repo}{ref}" in run.out
    run = builder.build({"Procfile": "web: x"}, {"BUILDPACK_URL": f"file://{repo}#nosuchref"})
    assert run.rc == 1
    assert (
        run.reason
        == f"flynn-slugbuilder: buildpack file://{repo}#nosuchref: git clone exited with status 128"
    )


# -- what buildpacks see ---------------------------------------------------------------------


def test_compile_gets_build_cache_and_env_dirs_and_a_clean_env(builder: Builder) -> None:
    compile = """
build=$1 cache=$2 envdir=$3
ls "$envdir" > "$build/env-names"
cat "$envdir/APP_SETTING" > "$build/app-setting"
env | grep -c SSH_CLIENT_KEY > "$build/key-in-env" || true
grep -rl "$(cat "$envdir/APP_SETTING")" "$cache" >/dev/null 2>&1 && echo leak > "$build/leak" || true
[ -d "$cache" ] && [ -w "$cache" ] && echo yes > "$build/cache-writable"
[ "$PWD" = "$build" ] && echo yes > "$build/cwd-is-build"
"""
    files = {**MARK("bp", detect="echo Probe", compile=compile), "Procfile": "web: x"}
    env = {"BUILDPACK_URL": "./bp", "APP_SETTING": "v=1 two", "SSH_CLIENT_KEY": SECRET, "FLYNN_APP_ID": "a1"}
    run = builder.build(files, env)
    assert run.rc == 0, run.err
    assert run.read("env-names").split() == ["APP_SETTING", "BUILDPACK_URL", "LANG", "PIP_CONFIG_FILE"]
    assert run.read("app-setting") == "v=1 two"
    assert run.read("key-in-env").strip() == "0"
    assert run.read("cache-writable").strip() == "yes"
    assert run.read("cwd-is-build").strip() == "yes"
    assert "leak" not in run.members()
    assert SECRET not in run.out + run.err


def test_slugignore_removes_files_before_compile_even_the_apps_own_buildpack(builder: Builder) -> None:
    files = {
        ".buildpacks": "./buildpacks/one\n",
        **marker("one"),
        ".slugignore": "*.psd\n/docs\nbuildpacks/\n",
        "art/logo.psd": "big",
        "docs/guide.md": "doc",
        "src/docs/keep.md": "kept",
        "Procfile": "web: x",
    }
    files["buildpacks/one/bin/compile"] = '#!/bin/sh\nfind "$1" -type f | sort > "$1/seen"\n'
    run = builder.build(files)
    assert run.rc == 0, run.err
    seen = [
        Path(p).relative_to(run.app).as_posix() for p in run.read("seen").split() if not p.endswith("/seen")
    ]
    assert seen == [".buildpacks", ".slugignore", "Procfile", "src/docs/keep.md"]
    assert "-----> Removed 3 path(s) matching .slugignore" in run.out
    assert "art/logo.psd" not in run.members()


def test_the_cache_is_restored_and_saved(builder: Builder, server: BlobServer) -> None:
    compile = (
        'n=$(cat "$2/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$2/count"; echo $n > "$1/count"'
    )
    files = {**MARK("bp", detect="echo Counter", compile=compile), "Procfile": "web: x"}
    first = builder.build(files, {"BUILDPACK_URL": "./bp"}, cache="counter")
    assert first.rc == 0, first.err
    assert "-----> No build cache yet" in first.out
    assert first.read("count") == "1\n"
    second = builder.build(files, {"BUILDPACK_URL": "./bp"}, cache="counter")
    assert "-----> Restored the build cache" in second.out
    assert second.read("count") == "2\n"
    assert server.count("PUT", "/caches/counter.tgz") == 2
    other = builder.build(files, {"BUILDPACK_URL": "./bp"}, cache="other-app")
    assert other.read("count") == "1\n"  # caches are per app
    (server.root / "caches/counter.tgz").write_bytes(b"not a tarball")
    broken = builder.build(files, {"BUILDPACK_URL": "./bp"}, cache="counter")
    assert broken.rc == 0, broken.err
    assert " !     build cache not restored: build cache: not a readable tar archive" in broken.out
    assert broken.read("count") == "1\n"


# -- processes and the slug ------------------------------------------------------------------


def test_the_slug_line_describes_the_uploaded_slug(builder: Builder, server: BlobServer) -> None:
    files = {
        **MARK(
            "bp",
            detect="echo Tool",
            compile='mkdir -p "$1/.profile.d" "$1/bin"; echo \'export GREETING="hello from profile.d"\' '
            '> "$1/.profile.d/tool.sh"; printf "#!/bin/sh\\necho tool \\$GREETING\\n" > "$1/bin/tool";'
            ' chmod +x "$1/bin/tool"',
            release='printf -- "---\\naddons: []\\ndefault_process_types:\\n  worker: bin/tool\\n"',
        ),
        "Procfile": "web: python3 -m http.server $PORT\n",
    }
    run = builder.build(files, {"BUILDPACK_URL": "./bp"})
    assert run.rc == 0, run.err
    line = run.slug_line
    data = run.slug.read_bytes()
    assert line["sha256"] == hashlib.sha256(data).hexdigest()
    assert line["size"] == len(data)
    assert line["processes"] == {"worker": "bin/tool", "web": "python3 -m http.server $PORT"}
    assert set(line) == {"sha256", "size", "processes"}
    members = run.members()
    assert members["bin/tool"].mode == 0o755
    assert members[".flynn/run"].mode == 0o755
    assert "       Procfile declares types -> web" in run.out
    assert "       Default types for buildpack -> worker" in run.out
    # the runner sources .profile.d, then runs the command with sh -c, from the slug's root
    out = subprocess.run(
        [run.app / ".flynn/run", "bin/tool; pwd"], capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines() == ["tool hello from profile.d", str(run.app)]


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"Procfile": "web: x\nbroken\n"}, "Procfile line 2: expected 'TYPE: COMMAND', got 'broken'"),
        ({"Procfile": "Web: x"}, "Procfile line 1: process type 'Web' must be 1-30 lowercase letters"),
        (
            {"Procfile": "web: x",
             **MARK("bp", detect="echo x", compile="true", release="echo 'default_process_types: {a: b}'")},
            "buildpack ./bp: bin/release output line 1: default_process_types must be a block",
        ),
        (
            {"Procfile": "web: x", **MARK("bp", detect="echo x", compile="true", release="exit 4")},
            "buildpack ./bp: bin/release exited with status 4",
        ),
        (
            {"Procfile": "web: x", **MARK("bp", detect="echo x", compile="echo working; exit 3")},
            "buildpack ./bp: bin/compile exited with status 3",
        ),
        (
            {"Procfile": "web: x", **MARK("bp", detect="echo x", compile="kill -9 $$")},
            "buildpack ./bp: bin/compile was killed by SIGKILL (out of memory? raise it with: "
            "flynn limit set slugbuilder memory=4GB)",
        ),
        (
            {"Procfile": "web: x", **MARK("bp", detect="echo x", compile='ln -s /usr/bin/python3 "$1/py"')},
            "symlink py -> /usr/bin/python3 points outside /app: hosts refuse such slugs",
        ),
    ],
)  # fmt: skip
def test_failures_end_with_a_one_line_reason_and_no_slug(
    builder: Builder, server: BlobServer, files: dict[str, str], reason: str
) -> None:
    env = {"BUILDPACK_URL": "./bp"} if "bp/bin/compile" in files else {}
    run = builder.build(files, env)
    assert run.rc == 1
    assert run.reason.startswith(f"flynn-slugbuilder: {reason}"), run.reason
    assert len(run.err.strip().splitlines()) == 1, run.err
    assert "FLYNN-SLUG" not in run.out
    assert not run.slug.exists()
    assert server.count("PUT", "/caches/app.tgz") == 0  # no cache saved for a failed build


def test_transfer_failures(builder: Builder, server: BlobServer, tmp_path: Path) -> None:
    argv, _ = builder.argv(server.url("src/missing.tar"), 100, None)
    proc = subprocess.run(argv, env=builder.env(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"flynn-slugbuilder: GET {server.base}/src/missing.tar: 404 Not Found"
    source, n = builder.put_source({"Procfile": "web: x"})
    argv, _ = builder.argv(source, n, None)
    argv[argv.index("--slug") + 1] = "http://127.0.0.1:9/slug.tgz"  # the discard port: nothing listens
    proc = subprocess.run(argv, env=builder.env(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "flynn-slugbuilder: PUT http://127.0.0.1:9/slug.tgz: Connection refused"
    (server.root / "src/bad.tar").write_bytes(make_tar({"../escape": "x"}))
    argv, _ = builder.argv(server.url("src/bad.tar"), 101, None)
    proc = subprocess.run(argv, env=builder.env(), capture_output=True, text=True, timeout=60, check=False)
    assert (
        proc.stderr.strip() == "flynn-slugbuilder: source: path escapes the artifact directory: '../escape'"
    )


def test_the_build_directory_must_be_empty(builder: Builder) -> None:
    source, n = builder.put_source({"Procfile": "web: x"})
    argv, app = builder.argv(source, n, None)
    (app / "left-over").write_text("x")
    proc = subprocess.run(argv, env=builder.env(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"flynn-slugbuilder: build directory {app} is not empty"


# -- live output and cancellation ------------------------------------------------------------


def _start(builder: Builder, files: dict[str, str], env: dict[str, str]) -> subprocess.Popen[str]:
    source, n = builder.put_source(files)
    argv, _ = builder.argv(source, n, None)
    return subprocess.Popen(
        argv, env=builder.env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _read_until(proc: subprocess.Popen[str], needle: str) -> list[str]:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never came; got {''.join(lines)[-2000:]}")


def test_output_streams_while_the_build_runs(builder: Builder, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    compile = f'echo "step one done"; while [ ! -e {gate} ]; do sleep 0.05; done; echo "step two done"'
    proc = _start(builder, {**MARK("bp", detect="echo x", compile=compile), "Procfile": "web: x"},
                  {"BUILDPACK_URL": "./bp"})  # fmt: skip
    try:
        _read_until(proc, "step one done")
        assert proc.poll() is None  # the line arrived while compile is still waiting
        gate.touch()
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "step two done" in rest
    assert rest.rstrip().splitlines()[-1].startswith("FLYNN-SLUG ")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_cancels_the_build_and_kills_every_child(builder: Builder, tmp_path: Path, sig: int) -> None:
    pidfile = tmp_path / "grandchild.pid"
    compile = f'sleep 600 & echo $! > {pidfile}; echo "compiling"; wait'
    proc = _start(builder, {**MARK("bp", detect="echo x", compile=compile), "Procfile": "web: x"},
                  {"BUILDPACK_URL": "./bp"})  # fmt: skip
    try:
        _read_until(proc, "compiling")
        grandchild = int(pidfile.read_text())
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert err.strip() == f"flynn-slugbuilder: build cancelled ({signal.Signals(sig).name})"
    deadline = time.monotonic() + 10  # the kernel delivers SIGKILL at once; reaping may lag a little
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_a_child_is_being_started_still_kills_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sig: int
) -> None:
    # A child may run before Popen() has returned in the parent (a busy machine: CI once saw
    # bin/compile print, and the signal come, while the slugbuilder was still inside Popen);
    # here the signal comes exactly then: after the fork, before the child is registered.
    started: list[int] = []

    class SignalledPopen(subprocess.Popen[bytes]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self.pid)
            os.kill(os.getpid(), sig)  # the handler runs here, inside Popen()

    monkeypatch.setattr(process, "_children", process._Children())
    monkeypatch.setattr(subprocess, "Popen", SignalledPopen)
    previous = signal.signal(sig, slug_main._on_signal)
    try:
        with pytest.raises(Cancelled) as cancelled:
            process.run(["sleep", "600"], cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    finally:
        signal.signal(sig, previous)
    assert cancelled.value.signame == signal.Signals(sig).name
    child = started[0]
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    with pytest.raises(Cancelled):  # and nothing more starts after a cancellation
        process.run(["true"], cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    assert started == [child]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
