"""The CLI's own logic without a controller: values, selection rules, output, import cost."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from flynn.cli import git
from flynn.cli.cluster import urls_for
from flynn.cli.context import CLIError, State
from flynn.cli.env import parse_pairs
from flynn.cli.main import cli
from flynn.cli.output import ago, table
from flynn.cli.rcfile import Cluster, RcFile
from flynn.cli.run import exit_code
from flynn.cli.scale import parse_counts
from flynn.cli.units import LimitError, format_memory, parse_cpu, parse_limit, parse_memory
from flynn.controller.client import Release

REPO = Path(__file__).resolve().parents[2]


# -- limits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("256MB", 268435456),
        ("256mb", 268435456),
        ("256M", 268435456),
        ("256MiB", 268435456),
        ("2GB", 2 << 30),
        ("1.5GB", 3 << 29),
        ("1TB", 1 << 40),
        ("4194304", 4 << 20),
        ("8192KB", 8 << 20),
    ],
)
def test_memory_units_are_binary_as_flynn(text: str, value: int) -> None:
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1GB", "256XB", "1 GB 2", "1KB", "100"])
def test_bad_memory_is_refused(text: str) -> None:
    with pytest.raises(LimitError):
        parse_memory(text)


def test_memory_format_round_trips() -> None:
    assert [format_memory(v) for v in (1 << 30, 256 << 20, 3 << 29, 5000)] == [
        "1GB",
        "256MB",
        "1.5GB",
        "4.88KB",
    ]
    assert parse_memory(format_memory(256 << 20)) == 256 << 20


def test_cpu_and_resource_names() -> None:
    assert parse_cpu("1500") == 1500
    for bad in ("0", "100001", "1.5", "x"):
        with pytest.raises(LimitError):
            parse_cpu(bad)
    with pytest.raises(LimitError, match="unknown resource"):
        parse_limit("disk", "1GB")


# -- argument values -------------------------------------------------------------------------------


def test_env_pairs() -> None:
    assert parse_pairs(("A=B=C", "EMPTY=", "X=1")) == {"A": "B=C", "EMPTY": "", "X": "1"}
    for bad, fragment in ((("FOO",), "is not KEY=VALUE"), (("=x",), "empty name"), (("A=1", "A=2"), "twice")):
        with pytest.raises(CLIError, match=fragment):
            parse_pairs(bad)


RELEASE: Release = {
    "id": "r1",
    "app_id": "a1",
    "artifacts": [],
    "env": {},
    "meta": {},
    "processes": {"web": {"args": ["x"]}, "worker": {"args": ["y"]}},
    "created_at": "",
}


def test_scale_counts() -> None:
    assert parse_counts(("web=3", "worker=0"), RELEASE) == {"web": 3, "worker": 0}
    for bad, fragment in [
        ("web=-1", "invalid count '-1' for web"),
        ("web=1001", "0-1000"),
        ("web=two", "invalid count"),
        ("web", "is not TYPE=COUNT"),
        ("db=1", "has no process type 'db' (it has: web, worker)"),
    ]:
        with pytest.raises(CLIError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            parse_counts((bad,), RELEASE)


def test_cluster_targets() -> None:
    assert urls_for("example.com") == ("https://controller.example.com", "https://git.example.com")
    assert urls_for("dev.flynn.local:8443") == (
        "https://controller.dev.flynn.local:8443",
        "https://git.dev.flynn.local:8443",
    )
    assert urls_for("http://10.0.0.1:1200/") == ("http://10.0.0.1:1200", "")
    for bad in ("ftp://x", "http://", "-bad-.com", "a..b", "x:port", "http://h:99999"):
        with pytest.raises(CLIError):
            urls_for(bad)


def test_exit_codes() -> None:
    assert [exit_code(s) for s in (0, 3, 255, 300, -9, -15)] == [0, 3, 255, 255, 137, 143]


# -- output ----------------------------------------------------------------------------------------


def test_table_aligns_columns(capsys: pytest.CaptureFixture[str]) -> None:
    table(["ID", "NAME"], [["a-long-id", "x"], ["b", "yy"]])
    assert capsys.readouterr().out.splitlines() == ["ID         NAME", "a-long-id  x", "b          yy"]


def test_ago() -> None:
    now = datetime.datetime(2026, 12, 1, 7, 3, 50, tzinfo=datetime.UTC)
    assert ago("2026-12-01T07:03:44.123Z", now) == "5 seconds ago"
    assert ago("2026-12-01T06:03:44Z", now) == "1 hour ago"
    assert ago("2026-11-28T07:03:44Z", now) == "3 days ago"
    assert ago("garbage", now) == "garbage"


# -- selection rules -------------------------------------------------------------------------------


def _rc(tmp_path: Path, default: str = "") -> RcFile:
    rc = RcFile(tmp_path / "rc", default=default)
    rc.add(Cluster("one", "k1", "https://controller.one.example", "https://git.one.example"))
    rc.add(Cluster("two", "k2", "https://controller.two.example", "https://git.two.example"))
    return rc


def _repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remotes: dict[str, str]) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for name, url in remotes.items():
        subprocess.run(["git", "-C", str(repo), "remote", "add", name, url], check=True)
    monkeypatch.chdir(repo)


def _state(rc: RcFile, **kw: str | None) -> State:
    return State(app_flag=kw.get("app"), cluster_flag=kw.get("cluster"), _rc=rc)


def test_app_from_flag_env_and_remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLYNN_APP", raising=False)
    monkeypatch.delenv("FLYNN_CLUSTER", raising=False)
    rc = _rc(tmp_path, default="one")
    _repo(
        tmp_path,
        monkeypatch,
        {"flynn": "https://git.two.example/web-app.git", "staging": "https://git.one.example/st.git"},
    )
    # the flynn remote picks the app and its cluster (two), over the default (one)
    st = _state(rc)
    assert (st.app(), st.cluster().name) == ("web-app", "two")
    # -a naming a remote: that remote's app and cluster, as Flynn does
    st = _state(rc, app="staging")
    assert (st.app(), st.cluster().name) == ("st", "one")
    # -a naming an app: as is, on the default cluster
    st = _state(rc, app="plain")
    assert (st.app(), st.cluster().name) == ("plain", "one")
    # $FLYNN_APP beats the remote
    monkeypatch.setenv("FLYNN_APP", "from-env")
    st = _state(rc)
    assert (st.app(), st.cluster().name) == ("from-env", "one")
    monkeypatch.delenv("FLYNN_APP")
    # -c that contradicts the remote: refused with a reason
    st = _state(rc, cluster="one")
    with pytest.raises(CLIError, match="points at cluster 'two'"):
        st.app()


def test_no_app_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLYNN_APP", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CLIError, match="no app given"):
        _state(_rc(tmp_path)).app()


def test_cluster_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLYNN_CLUSTER", raising=False)
    assert _state(_rc(tmp_path)).cluster().name == "one"  # no default: the first, as Flynn
    assert _state(_rc(tmp_path, "two")).cluster().name == "two"
    monkeypatch.setenv("FLYNN_CLUSTER", "one")
    assert _state(_rc(tmp_path, "two")).cluster().name == "one"
    assert _state(_rc(tmp_path, "two"), cluster="two").cluster().name == "two"
    with pytest.raises(CLIError, match="unknown cluster 'three'"):
        _state(_rc(tmp_path), cluster="three").cluster()
    with pytest.raises(CLIError, match="no cluster configured"):
        _state(RcFile(tmp_path / "empty")).cluster()


def test_git_url_helpers() -> None:
    assert git.app_url("https://git.x/", "a") == "https://git.x/a.git"
    assert git.app_of_url("https://git.x", "https://git.x/a.git") == "a"
    assert git.app_of_url("https://git.x", "https://git.y/a.git") is None
    assert git.app_of_url("https://git.x", "https://git.x/a/b.git") is None
    assert git.app_of_url("", "https://git.x/a.git") is None


# -- the command line itself ------------------------------------------------------------------------


def test_usage_errors_exit_2_and_app_errors_exit_1(tmp_path: Path) -> None:
    env = {"FLYNNRC": str(tmp_path / "rc"), "FLYNN_APP": "", "FLYNN_CLUSTER": ""}
    runner = CliRunner()
    usage = runner.invoke(cli, ["scale", "--timeout", "x"], env=env)
    assert usage.exit_code == 2
    none = runner.invoke(cli, ["-a", "x", "info"], env=env)
    assert none.exit_code == 1
    assert none.stderr == "flynn: no cluster configured: run 'flynn cluster add NAME DOMAIN|URL KEY'\n"


def test_app_option_after_the_command(tmp_path: Path) -> None:
    seen: list[str | None] = []

    @cli.command("probe-app", hidden=True)
    def probe() -> None:
        seen.append(click.get_current_context().find_object(State).app_flag)  # type: ignore[union-attr]

    from flynn.cli.context import app_options

    app_options()(probe)
    try:
        result = CliRunner().invoke(cli, ["probe-app", "-a", "late"], env={"FLYNNRC": str(tmp_path / "rc")})
        assert result.exit_code == 0, result.output
        assert seen == ["late"]
    finally:
        cli.commands.pop("probe-app")


def test_import_is_fast_and_lazy() -> None:
    code = "import sys, flynn.cli.main; print(sorted(m for m in sys.modules if m.startswith(('aio', 'fly'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    loaded = out.stdout
    assert "aiohttp" not in loaded
    assert "flynn.controller.client" not in loaded


def test_version_command() -> None:
    import flynn

    result = CliRunner().invoke(cli, ["version"])
    assert (result.exit_code, result.stdout.strip()) == (0, flynn.__version__)
