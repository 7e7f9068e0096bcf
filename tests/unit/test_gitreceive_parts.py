"""gitreceive's pure parts: the branch rule, the FLYNN-SLUG line and the output relay, the release
a build makes, the build's limits, the configuration, Basic auth and its cache, and the checks of
a repository tarball restored from the blobstore."""

from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flynn.common.errors import APIError, ConfigError
from flynn.gitreceive import refs, repos
from flynn.gitreceive.auth import AuthError, Credentials, Verifier, parse_basic
from flynn.gitreceive.config import GitreceiveConfig
from flynn.gitreceive.release import build_resources, new_release
from flynn.gitreceive.slug import Relay, Slug, SlugError, parse_slug

A, B = "a" * 40, "b" * 40
ZERO = "0" * 40
SHA = "c" * 64

# -- the branch rule -------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["refs/heads/main", "refs/heads/master"])
def test_main_and_master_are_deployed(ref: str) -> None:
    update = refs.deployable(refs.parse(f"{A} {B} {ref}\n"))
    assert (update.old, update.new, update.branch) == (A, B, ref.rsplit("/", 1)[1])


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (f"{A} {B} refs/heads/feature", "pushed branch feature: only the main or master branch is deployed"
         " (git push flynn feature:main deploys it)"),
        (f"{ZERO} {B} refs/tags/v1.0", "pushed tag v1.0: only the main or master branch is deployed"),
        (f"{A} {B} refs/heads/main\n{A} {B} refs/heads/dev", "pushed branch dev:"),
        (f"{A} {B} refs/heads/main\n{A} {B} refs/heads/master", "main and master were pushed together"),
        (f"{A} {ZERO} refs/heads/main", "deleting main is not allowed"),
        ("", "nothing was pushed"),
        ("garbage line", "unexpected ref update line from git"),
    ],
)  # fmt: skip
def test_other_pushes_are_rejected_with_a_reason(lines: str, message: str) -> None:
    with pytest.raises(refs.Rejected) as err:
        refs.deployable(refs.parse(lines))
    assert str(err.value).startswith(message)


# -- the slug line and the relay ------------------------------------------------------------------


def slug_line(**over: Any) -> str:
    import json

    body = {"sha256": SHA, "size": 10, "processes": {"web": "python app.py"}, **over}
    return "FLYNN-SLUG " + json.dumps(body)


def test_a_slug_line_is_parsed() -> None:
    assert parse_slug(slug_line()) == Slug(SHA, 10, {"web": "python app.py"})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "the build printed no FLYNN-SLUG line"),
        ("FLYNN-SLUG {", "not JSON"),
        ("FLYNN-SLUG []", "not a JSON object"),
        (slug_line(sha256="xyz"), "no valid sha256"),
        (slug_line(size=-1), "no valid size"),
        (slug_line(size=True), "no valid size"),
        (slug_line(processes={"web": 1}), "not {TYPE: COMMAND}"),
        (slug_line(processes={}), "declares no process types: add a Procfile"),
        (slug_line(processes={"Web!": "x"}), "is not a valid name"),
        (slug_line(processes={"slugbuilder": "x"}), "is reserved"),
        (slug_line(processes={"web": "  "}), "has an empty command"),
    ],
)
def test_bad_slug_lines_are_refused_with_a_reason(line: str, message: str) -> None:
    with pytest.raises(SlugError, match=message.replace("{", r"\{").replace("}", r"\}").replace("!", "")):
        parse_slug(line)


def relayed(chunks: list[bytes]) -> tuple[bytes, str | None]:
    out: list[bytes] = []
    relay = Relay(out.append)
    for chunk in chunks:
        relay.feed(chunk)
    relay.close()
    return b"".join(out), relay.slug_line


def test_the_relay_passes_everything_but_the_slug_line() -> None:
    text, line = relayed(
        [b"-----> step\n", b"progress 50%\r", b"progress 100%\n", slug_line().encode() + b"\n"]
    )
    assert text == b"-----> step\nprogress 50%\rprogress 100%\n"
    assert line == slug_line()


def test_a_partial_line_is_shown_at_once_unless_it_may_be_the_slug_line() -> None:
    out: list[bytes] = []
    relay = Relay(out.append)
    relay.feed(b"Downloading")  # no newline yet: shown now
    assert out == [b"Downloading"]
    relay.feed(b"...\nFLY")  # may become FLYNN-SLUG: held
    assert b"".join(out) == b"Downloading...\n"
    relay.feed(b"ING high\n")  # it did not
    assert b"".join(out) == b"Downloading...\nFLYING high\n"


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_the_relay_does_not_depend_on_how_the_output_is_cut(cuts: list[int]) -> None:
    data = b"line one\n-----> two\nFLYNN is a word\n" + slug_line().encode() + b"\n"
    chunks, pos = [], 0
    for n in cuts:
        chunks.append(data[pos : pos + n])
        pos += n
    chunks.append(data[pos:])
    text, line = relayed([c for c in chunks if c])
    assert text == b"line one\n-----> two\nFLYNN is a word\n"
    assert line == slug_line()


# -- the release and the build's limits -----------------------------------------------------------


def release(processes: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    return {
        "id": "r1",
        "app_id": "a1",
        "artifacts": ["old"],
        "env": env or {},
        "meta": {},
        "processes": processes,
    }


def test_a_new_release_keeps_env_settings_of_existing_types_and_the_slugbuilder_type() -> None:
    current = release(
        {
            "web": {"args": ["old"], "resources": {"memory": {"limit": 256 << 20}}, "env": {"X": "1"},
                    "service": "app-web", "check": {"type": "http", "path": "/health", "status": 200}},
            "gone": {"args": ["old"]},
            "slugbuilder": {"args": ["flynn-slugbuilder"], "resources": {"memory": {"limit": 4 << 30}}},
        },
        env={"FOO": "bar"},
    )  # fmt: skip
    slug = Slug(SHA, 1, {"web": "python app.py", "worker": "python worker.py"})
    new = new_release("a1", current, slug, "art", branch="main", rev=A)
    assert new["artifacts"] == ["art"]
    assert new["env"] == {"FOO": "bar"}
    assert new["meta"] == {"git": "true", "branch": "main", "rev": A}
    assert new["processes"]["web"] == {
        "args": ["/app/.flynn/run", "python app.py"],
        "resources": {"memory": {"limit": 256 << 20}},
        "env": {"X": "1"},
        "service": "app-web",
        "check": {"type": "http", "path": "/health", "status": 200},
    }
    assert new["processes"]["worker"] == {"args": ["/app/.flynn/run", "python worker.py"]}
    assert "gone" not in new["processes"]
    assert new["processes"]["slugbuilder"] == current["processes"]["slugbuilder"]


def test_the_first_release_has_an_empty_env() -> None:
    new = new_release("a1", None, Slug(SHA, 1, {"web": "x"}), "art", branch="master", rev=A)
    assert new["env"] == {}
    assert set(new["processes"]) == {"web"}


def test_build_limits_come_from_the_slugbuilder_type_else_the_default() -> None:
    assert build_resources(None, 1 << 30) == {"memory": {"limit": 1 << 30}}
    current = release(
        {"slugbuilder": {"args": ["x"], "resources": {"memory": {"limit": 4 << 30}, "cpu": {"limit": 2000}}}}
    )
    assert build_resources(current, 1 << 30) == {"memory": {"limit": 4 << 30}, "cpu": {"limit": 2000}}
    assert build_resources(release({"web": {"args": ["x"]}}), 123 << 20) == {"memory": {"limit": 123 << 20}}


# -- configuration -----------------------------------------------------------------------------


def test_config_from_env() -> None:
    cfg = GitreceiveConfig.from_env(
        {
            "CONTROLLER_KEY": "secret-key",
            "GITRECEIVE_ADDR": "10.0.0.5",
            "SLUGBUILDER_DEFAULT_MEMORY_LIMIT": "4GB",
            "BUILD_ENV_PIP_INDEX_URL": "http://10.0.0.1/simple/",
            "BUILD_ENV_NPM_CONFIG_REGISTRY": "http://10.0.0.1/npm/",
            "SSH_CLIENT_KEY": "KEY",
            "SSH_CLIENT_HOSTS": "github.com ssh-ed25519 AAAA",
        }
    )
    assert cfg.addr == "10.0.0.5:1220"
    assert cfg.port == 1220
    assert cfg.slugbuilder_memory == 4 << 30
    assert cfg.repos == Path("/var/lib/flynn/gitreceive/repos")
    assert cfg.build_variables() == {
        "PIP_INDEX_URL": "http://10.0.0.1/simple/",
        "NPM_CONFIG_REGISTRY": "http://10.0.0.1/npm/",
        "SSH_CLIENT_KEY": "KEY",
        "SSH_CLIENT_HOSTS": "github.com ssh-ed25519 AAAA",
    }
    assert set(cfg.secrets()) == {"secret-key", "KEY"}
    assert "secret-key" not in repr(cfg)
    assert "KEY" not in repr(cfg).replace("CONTROLLER", "").replace("key", "")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "CONTROLLER_KEY is not set"),
        (
            {"SLUGBUILDER_DEFAULT_MEMORY_LIMIT": "lots"},
            "SLUGBUILDER_DEFAULT_MEMORY_LIMIT='lots' is not a size",
        ),
        ({"BUILD_ENV_PORT": "1"}, "BUILD_ENV_PORT: PORT is set by the host"),
        ({"BUILD_ENV_1X": "1"}, "BUILD_ENV_1X: '1X' is not an environment variable name"),
        ({"GITRECEIVE_ADDR": "nope"}, "GITRECEIVE_ADDR 'nope' is not an IP address"),
        ({"GITRECEIVE_PORT": "0"}, "GITRECEIVE_PORT=0 is below the minimum 1"),
        ({"CONTROLLER_URL": "ftp://x"}, "CONTROLLER_URL: 'ftp://x' is not an http(s) URL"),
        ({"GITRECEIVE_REPOS": "relative/dir"}, "is not an absolute path"),
    ],
)
def test_bad_config_is_one_line(env: dict[str, str], message: str) -> None:
    base = {"CONTROLLER_KEY": "k"} if env else {}
    with pytest.raises(ConfigError) as err:
        GitreceiveConfig.from_env({**base, **env})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# -- auth ------------------------------------------------------------------------------------------


def basic(user: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


def test_basic_credentials_are_parsed() -> None:
    assert parse_basic(basic("flynn", "k:with:colons")) == Credentials("flynn", "k:with:colons")
    assert parse_basic(basic("", "k")) == Credentials("", "k")
    for bad in (
        None,
        "",
        "Bearer x",
        "Basic",
        "Basic !!!",
        basic("user", ""),
        "Basic " + base64.b64encode(b"nocolon").decode(),
    ):
        assert parse_basic(bad) is None


class FakeController:
    def __init__(self) -> None:
        self.keys = {"good"}
        self.apps = {"web1"}
        self.down = False
        self.calls = 0

    async def lookup(self, key: str, app: str) -> dict[str, Any]:
        self.calls += 1
        if self.down:
            raise APIError(0, "cannot reach http://controller")
        if key not in self.keys:
            raise APIError(401, "invalid or missing key")
        if app not in self.apps:
            raise APIError(404, f"app {app} not found")
        return {"id": "id-" + app, "name": app}


async def test_a_key_is_checked_against_the_controller_and_cached_briefly() -> None:
    ctl = FakeController()
    now = [0.0]
    verifier = Verifier(ctl.lookup, ttl=5, clock=lambda: now[0])
    good = Credentials("flynn", "good")
    assert (await verifier.check(good, "web1"))["name"] == "web1"
    assert (await verifier.check(good, "web1"))["name"] == "web1"
    assert ctl.calls == 1  # cached
    ctl.keys = {"rotated"}  # the key was rotated away
    now[0] = 4.9
    assert (await verifier.check(good, "web1"))["name"] == "web1"
    now[0] = 5.1  # the cache expired: the controller says no
    with pytest.raises(AuthError) as err:
        await verifier.check(good, "web1")
    assert err.value.status == 401
    assert ctl.calls == 2


async def test_refusals() -> None:
    ctl = FakeController()
    verifier = Verifier(ctl.lookup, ttl=5)
    cases = [
        (None, "web1", 401, "authentication required"),
        (Credentials("u", "bad"), "web1", 401, "invalid key"),
        (Credentials("u", "good"), "other", 404, "app other not found (flynn create other)"),
    ]
    for creds, app, status, message in cases:
        with pytest.raises(AuthError) as err:
            await verifier.check(creds, app)
        assert (err.value.status, err.value.message.startswith(message)) == (status, True)
    ctl.apps.add("other")  # created right after the 404: not cached
    assert (await verifier.check(Credentials("u", "good"), "other"))["name"] == "other"
    ctl.down = True
    with pytest.raises(AuthError) as err:
        await verifier.check(Credentials("u", "fresh"), "web1")
    assert err.value.status == 503


# -- restored repository tarballs ------------------------------------------------------------------


def tarball(members: list[tarfile.TarInfo], data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, **kw: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = 1 if kind == tarfile.REGTYPE else 0
    for k, v in kw.items():
        setattr(info, k, v)
    return info


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (member("/etc/passwd"), "unsafe path"),
        (member("../outside"), "unsafe path"),
        (member("objects/../../x"), "unsafe path"),
        (member("link", tarfile.SYMTYPE, linkname="/etc"), "not a file"),
        (member("hard", tarfile.LNKTYPE, linkname="HEAD"), "not a file"),
        (member("dev", tarfile.CHRTYPE), "not a file"),
        (member("fifo", tarfile.FIFOTYPE), "not a file"),
    ],
)
def test_a_restored_tarball_with_anything_but_files_and_dirs_is_refused(
    tmp_path: Path, bad: tarfile.TarInfo, message: str
) -> None:
    archive = tmp_path / "repo.tar"
    archive.write_bytes(tarball([member("HEAD"), member("objects", tarfile.DIRTYPE), bad]))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(repos.RepoError, match=message):
        repos.extract(archive, dest)
    assert list(dest.iterdir()) == []  # checked before anything is written
    assert not (tmp_path / "outside").exists()


def test_a_plain_tree_is_extracted(tmp_path: Path) -> None:
    archive = tmp_path / "repo.tar"
    archive.write_bytes(tarball([member("objects", tarfile.DIRTYPE), member("objects/ab"), member("HEAD")]))
    dest = tmp_path / "dest"
    dest.mkdir()
    repos.extract(archive, dest)
    assert (dest / "HEAD").read_bytes() == b"x"
    assert (dest / "objects/ab").read_bytes() == b"x"


# -- the unit --------------------------------------------------------------------------------------


def test_the_unit_reads_both_env_files_and_keeps_no_capabilities() -> None:
    import configparser

    path = Path(__file__).resolve().parents[2] / "units/flynn-gitreceive.service"
    cp = configparser.RawConfigParser(strict=False, delimiters=("=",), interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    text = path.read_text()
    cp.read_string(text)
    svc = cp["Service"]
    env_files = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("EnvironmentFile=")]
    assert env_files == ["/etc/flynn/gitreceive.env", "-/etc/flynn/gitreceive.app.env"]
    assert cp["Unit"]["ConditionPathExists"] == "/etc/flynn/gitreceive.env"
    assert svc["ExecStart"] == "/opt/flynn/venv/bin/flynn-gitreceive"
    assert (svc["Type"], svc["DynamicUser"], svc["StateDirectory"]) == ("notify", "yes", "flynn/gitreceive")
    assert svc["CapabilityBoundingSet"] == ""
    assert svc["AmbientCapabilities"] == ""
    state = GitreceiveConfig.from_env({"CONTROLLER_KEY": "k"}).state_dir
    assert state == Path("/var/lib") / svc["StateDirectory"]  # the repositories live in the unit's state
