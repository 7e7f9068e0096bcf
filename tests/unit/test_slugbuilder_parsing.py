"""flynn-slugbuilder's parsers and small pieces: Procfile, bin/release YAML, .slugignore, buildpack
names, the env dir, the SSH client key setup, slug tarballs."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from flynn.slugbuilder import archive, envdir, procfile, release, slugignore, ssh
from flynn.slugbuilder.buildpack import Ref, parse_ref, read_buildpacks_file
from flynn.slugbuilder.errors import BuildError

# -- Procfile ----------------------------------------------------------------------------------


def test_procfile_types_and_commands() -> None:
    text = "# processes\nweb: python app.py --port $PORT\n\nworker:python worker.py  \nadmin-web :  ./admin\n"
    assert procfile.parse(text) == {
        "web": "python app.py --port $PORT",
        "worker": "python worker.py",
        "admin-web": "./admin",
    }


def test_a_command_may_hold_colons() -> None:
    assert procfile.parse("web: gunicorn -b 0.0.0.0:$PORT app:wsgi") == {
        "web": "gunicorn -b 0.0.0.0:$PORT app:wsgi"
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("web python app.py", "Procfile line 1: expected 'TYPE: COMMAND', got 'web python app.py'"),
        ("web: ok\nWeb: bad", "Procfile line 2: process type 'Web' must be 1-30 lowercase letters"),
        ("we_b: x", "process type 'we_b' must be"),
        ("-web: x", "process type '-web' must be"),
        ("a" * 31 + ": x", "must be 1-30"),
        ("web:", "Procfile line 1: process type 'web' has no command"),
        ("web: a\nweb: b", "Procfile line 2: process type 'web' is declared twice"),
        ("slugbuilder: make", "process type 'slugbuilder' is reserved"),
        (": nothing", "expected 'TYPE: COMMAND'"),
    ],
)
def test_malformed_procfiles_fail_with_the_line(text: str, message: str) -> None:
    with pytest.raises(BuildError, match=re.escape(message)) as err:
        procfile.parse(text)
    assert str(err.value).startswith("Procfile line ")
    assert "\n" not in str(err.value)


# -- bin/release -------------------------------------------------------------------------------


def test_release_yaml_default_process_types() -> None:
    text = """---
addons: []
config_vars:
  PATH: /app/bin:/usr/bin
default_process_types:
  web: python app.py  # the server
  worker: "node worker.js --name \\"w\\""
  clock: 'echo ''tick'''
  hash: echo a#b
"""
    assert release.parse(text) == {
        "web": "python app.py",
        "worker": 'node worker.js --name "w"',
        "clock": "echo 'tick'",
        "hash": "echo a#b",
    }


@pytest.mark.parametrize(
    "empty",
    ["", "---\n", "---\ndefault_process_types: {}\n", "default_process_types: ~\n",
     "default_process_types:\naddons: []\n", "addons:\n  - x\n"],
)  # fmt: skip
def test_release_yaml_without_types(empty: str) -> None:
    assert release.parse(empty) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("default_process_types: {web: x}\n", "line 1: default_process_types must be a block"),
        ("default_process_types:\n  web\n", "line 2: expected 'TYPE: COMMAND', got 'web'"),
        ("default_process_types:\n  web: 'x\n", "line 2: unterminated single-quoted value"),
        ('default_process_types:\n  web: "x\n', "line 2: malformed double-quoted value"),
        ("default_process_types:\n  web:\n", "line 2: process type 'web' has no command"),
        ("just some text\n", "line 1: expected 'key: value'"),
    ],
)
def test_malformed_release_yaml_fails_with_the_line(text: str, message: str) -> None:
    with pytest.raises(BuildError, match=message) as err:
        release.parse(text, "buildpack x: bin/release")
    assert str(err.value).startswith("buildpack x: bin/release output line")


# -- .slugignore -------------------------------------------------------------------------------


def _tree(root: Path, paths: list[str]) -> None:
    for rel in paths:
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rel)


def _left(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()}


def test_slugignore_patterns(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        [
            "app.py", "art/logo.psd", "deep/er/x.psd", "docs/index.md", "src/docs/keep.md",
            "tmp/cache.bin", "src/tmp", "spec/fixtures/a.json", "spec/unit.py", "logs/a.log",
            "logs/keep.log", "a/b/c/big.bin", "q1.txt", "q22.txt", ".slugignore",
        ],
    )  # fmt: skip
    rules = "# comment\n\n*.psd\n/docs\ntmp/\nspec/fixtures\n*.log\n!keep.log\n**/c/*.bin\nq?.txt\n"
    removed = slugignore.apply(tmp_path, slugignore.parse(rules))
    assert _left(tmp_path) == {
        "app.py", "src/docs/keep.md", "src/tmp", "spec/unit.py", "logs/keep.log", "q22.txt", ".slugignore",
    }  # fmt: skip
    assert "docs/" in removed  # a removed directory is reported once, with its slash
    assert "tmp/" in removed
    assert "src/tmp" not in removed  # "tmp/" matches directories only


def test_slugignore_character_classes_and_escapes(tmp_path: Path) -> None:
    _tree(tmp_path, ["a1.txt", "b1.txt", "c1.txt", "#notes", "x[1].txt"])
    slugignore.apply(tmp_path, slugignore.parse("[ab]1.txt\n\\#notes\nx\\[1\\].txt\n"))
    assert _left(tmp_path) == {"c1.txt"}


def test_slugignore_removes_links_without_following_them(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _tree(outside, ["precious/file"])
    app = tmp_path / "app"
    app.mkdir()
    (app / "link").symlink_to(outside / "precious")
    slugignore.apply(app, slugignore.parse("link\n"))
    assert not (app / "link").exists()
    assert (outside / "precious/file").exists()


# -- buildpack names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("python", Ref("builtin", "python")),
        ("procfile", Ref("builtin", "procfile")),
        ("./buildpacks/one", Ref("path", "./buildpacks/one")),
        ("buildpacks/two", Ref("path", "buildpacks/two")),
        ("https://git.example/bp.git", Ref("git", "https://git.example/bp.git")),
        ("https://git.example/bp.git#v1.2", Ref("git", "https://git.example/bp.git", "v1.2")),
        ("git@git.example:org/bp.git#main", Ref("git", "git@git.example:org/bp.git", "main")),
        ("ssh://git@host:2222/bp", Ref("git", "ssh://git@host:2222/bp")),
        ("file:///srv/bp#abc1234", Ref("git", "file:///srv/bp", "abc1234")),
    ],
)
def test_buildpack_names(text: str, ref: Ref) -> None:
    assert parse_ref(text, "BUILDPACK_URL") == ref


@pytest.mark.parametrize("text", ["ruby", "/etc/buildpack", "", "ftp://x/y"])
def test_unknown_buildpack_names_fail(text: str) -> None:
    with pytest.raises(BuildError, match=r"^BUILDPACK_URL: unknown buildpack"):
        parse_ref(text, "BUILDPACK_URL")


def test_the_label_of_a_git_buildpack_hides_credentials() -> None:
    ref = parse_ref("https://user:t0ken@git.example/bp.git?x=1#main", "x")
    assert ref.label == "https://git.example/bp.git#main"


def test_buildpacks_file_lists_several_in_order() -> None:
    refs = read_buildpacks_file("# first\n./buildpacks/one\n\n  nodejs  \nhttps://h/x.git#v2\n")
    assert [r.location for r in refs] == ["./buildpacks/one", "nodejs", "https://h/x.git"]
    with pytest.raises(BuildError, match=r"^\.buildpacks line 2: unknown buildpack 'rubyy'"):
        read_buildpacks_file("python\nrubyy\n")
    with pytest.raises(BuildError, match="names no buildpack"):
        read_buildpacks_file("# nothing\n\n")


# -- env dir -----------------------------------------------------------------------------------


def test_env_dir_holds_the_apps_env_only(tmp_path: Path) -> None:
    environ = {
        "DATABASE_URL": "postgres://u:pw@h/db",
        "BUILDPACK_URL": "python",
        "MULTI": "line1\nline2",
        "PATH": "/usr/bin",
        "HOME": "/app",
        "PORT": "5000",
        "FLYNN_JOB_ID": "host1-x",
        "SSH_CLIENT_KEY": "-----BEGIN KEY-----",
        "INVOCATION_ID": "abc",
    }
    names = envdir.write(tmp_path / "env", environ)
    assert names == ["BUILDPACK_URL", "DATABASE_URL", "MULTI"]
    assert (tmp_path / "env/MULTI").read_text() == "line1\nline2"
    assert stat.S_IMODE((tmp_path / "env/DATABASE_URL").stat().st_mode) == 0o600
    env = envdir.buildpack_env(environ, {"GIT_SSH_COMMAND": "ssh -i k"})
    assert "SSH_CLIENT_KEY" not in env
    assert env["GIT_SSH_COMMAND"] == "ssh -i k"
    assert env["DATABASE_URL"] == environ["DATABASE_URL"]


# -- SSH client key ----------------------------------------------------------------------------


def test_ssh_key_and_known_hosts_go_to_a_private_directory(tmp_path: Path) -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----"
    hosts = "|1|abc=|def= ssh-ed25519 AAAAC3Nza\ngit.example ssh-rsa AAAAB3\n"
    env, note = ssh.setup({"SSH_CLIENT_KEY": key + "\r\n", "SSH_CLIENT_HOSTS": hosts}, tmp_path)
    directory = tmp_path / "ssh"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert (directory / "id").read_text() == key + "\n"  # exactly one final newline
    assert stat.S_IMODE((directory / "id").stat().st_mode) == 0o600
    assert (directory / "known_hosts").read_text() == hosts
    argv = shlex.split(env["GIT_SSH_COMMAND"])
    assert argv[:3] == ["ssh", "-F", "/dev/null"]
    known = f"UserKnownHostsFile={directory}/known_hosts"
    for option in ("BatchMode=yes", "StrictHostKeyChecking=yes", known, "IdentitiesOnly=yes"):
        assert option in argv
    assert argv[argv.index("-i") + 1] == str(directory / "id")
    assert note == "git over SSH: the SSH_CLIENT_KEY key, 2 known host key(s)"
    assert key not in note


def test_no_ssh_setup_without_the_variables(tmp_path: Path) -> None:
    assert ssh.setup({}, tmp_path) == ({}, None)
    assert not (tmp_path / "ssh").exists()


def test_the_ssh_setup_is_accepted_by_the_real_ssh(tmp_path: Path) -> None:
    """ssh parses the command line and loads the key; it refuses an unknown host key (strict
    checking, no prompt). Nothing listens on the port: the point is what happens before connecting."""
    keyfile = tmp_path / "gen"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keyfile], check=True)
    env, _ = ssh.setup({"SSH_CLIENT_KEY": keyfile.read_text(), "SSH_CLIENT_HOSTS": ""}, tmp_path)
    argv = [*shlex.split(env["GIT_SSH_COMMAND"]), "-G", "git.example"]  # -G: print the config
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.lower()
    assert f"identityfile {tmp_path}/ssh/id" in out
    assert "stricthostkeychecking true" in out
    assert "batchmode yes" in out
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", tmp_path / "ssh/id"], capture_output=True, text=True, check=True
    )
    assert derived.stdout.split()[1] == (keyfile.with_suffix(".pub")).read_text().split()[1]


# -- slug tarballs -----------------------------------------------------------------------------


def test_a_slug_keeps_modes_and_links_inside_and_is_owned_by_root(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "bin").mkdir(parents=True)
    (app / "bin/web").write_text("#!/bin/sh\n")
    (app / "bin/web").chmod(0o755)
    (app / "lib").symlink_to("bin")
    (app / "abs").symlink_to("/app/bin/web")
    sha, size = archive.write_tarball(app, tmp_path / "slug.tgz", check_links=True)
    assert size == (tmp_path / "slug.tgz").stat().st_size
    assert len(sha) == 64
    with tarfile.open(tmp_path / "slug.tgz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"bin", "bin/web", "lib", "abs"}
    assert members["bin/web"].mode == 0o755
    assert members["abs"].linkname == "/app/bin/web"
    assert all(m.uid == 0 and m.uname == "root" for m in members.values())


@pytest.mark.parametrize("target", ["/usr/bin/python3", "../../etc/passwd", "loop"])
def test_a_slug_with_a_link_out_of_app_fails_the_build(tmp_path: Path, target: str) -> None:
    app = tmp_path / "app"
    (app / "sub").mkdir(parents=True)
    (app / "sub" / "loop").symlink_to(target)
    with pytest.raises(
        BuildError, match=r"^symlink sub/loop -> .* points outside /app: hosts refuse such slugs"
    ):
        archive.write_tarball(app, tmp_path / "slug.tgz", check_links=True)


def test_sockets_and_fifos_are_left_out_of_a_slug(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    os.mkfifo(app / "fifo")
    (app / "f").write_text("x")
    archive.write_tarball(app, tmp_path / "slug.tgz", check_links=True)
    with tarfile.open(tmp_path / "slug.tgz") as tar:
        assert tar.getnames() == ["f"]
