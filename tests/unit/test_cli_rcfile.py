"""The ``~/.flynnrc`` file: Flynn's TOML form, unknown keys kept, atomic 0600 writes, clear errors."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from flynn.cli.main import cli
from flynn.cli.rcfile import Cluster, RcError, RcFile, default_path

FLYNN_FORM = """\
default = "mycluster"
Theme = "dark"

[[cluster]]
Name = "mycluster"
Key = "k3y-abcdef"
TLSPin = "pin"
ControllerURL = "https://controller.example.com"
GitURL = "https://git.example.com"
DockerPushURL = ""
Extra = 42

[[cluster]]
Name = "other"
Key = "k2"
ControllerURL = "http://10.0.0.1:1200"
"""


def test_reads_flynns_form(tmp_path: Path) -> None:
    path = tmp_path / "rc"
    path.write_text(FLYNN_FORM)
    rc = RcFile.load(path)
    assert rc.default == "mycluster"
    first = rc.clusters[0]
    assert (first.name, first.key, first.tls_pin) == ("mycluster", "k3y-abcdef", "pin")
    assert (first.controller_url, first.git_url) == (
        "https://controller.example.com",
        "https://git.example.com",
    )
    assert rc.clusters[1].git_url == ""  # missing keys are empty, as Flynn's Go struct has them


def test_unknown_keys_survive_a_write(tmp_path: Path) -> None:
    path = tmp_path / "rc"
    path.write_text(FLYNN_FORM)
    rc = RcFile.load(path)
    rc.add(Cluster("third", "k3", "http://10.0.0.3:1200"))
    rc.save()
    data = tomllib.loads(path.read_text())
    assert data["Theme"] == "dark"
    assert data["cluster"][0]["Extra"] == 42
    assert [c["Name"] for c in data["cluster"]] == ["mycluster", "other", "third"]
    assert set(data["cluster"][2]) == {"Name", "Key", "TLSPin", "ControllerURL", "GitURL", "DockerPushURL"}


def test_written_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "rc"
    path.write_text(FLYNN_FORM)
    path.chmod(0o644)
    rc = RcFile.load(path)
    rc.default = "other"
    rc.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rc"]  # no temporary file left behind
    assert RcFile.load(path).default == "other"


def test_symlinked_rc_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "flynnrc"
    real.parent.mkdir()
    real.write_text(FLYNN_FORM)
    link = tmp_path / "rc"
    link.symlink_to(real)
    rc = RcFile.load(link)
    rc.remove("other")
    rc.save()
    assert link.is_symlink()
    assert [c["Name"] for c in tomllib.loads(real.read_text())["cluster"]] == ["mycluster"]


def test_missing_file_is_empty(tmp_path: Path) -> None:
    rc = RcFile.load(tmp_path / "none")
    assert (rc.default, rc.clusters) == ("", [])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("default = [", "invalid TOML"),
        ("default = 3", "default must be a string"),
        ("cluster = 'x'", "array of tables"),
        ("[[cluster]]\nKey = 'k'", "no Name"),
        ("[[cluster]]\nName = 'a'\nKey = 1", "Key must be a string"),
        ("[[cluster]]\nName = 'a'\n[[cluster]]\nName = 'a'", "defined twice"),
    ],
)
def test_bad_files_are_refused(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "rc"
    path.write_text(text)
    with pytest.raises(RcError, match=fragment):
        RcFile.load(path)


def test_cli_reports_a_bad_file_in_one_line_and_leaves_it(tmp_path: Path) -> None:
    path = tmp_path / "rc"
    path.write_text("default = [")
    result = CliRunner().invoke(cli, ["cluster", "default", "x"], env={"FLYNNRC": str(path)})
    assert result.exit_code == 1
    assert result.stderr.startswith("flynn: ")
    assert "invalid TOML" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert path.read_text() == "default = ["


def test_flynnrc_env_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYNNRC", str(tmp_path / "x"))
    assert default_path() == tmp_path / "x"
    monkeypatch.delenv("FLYNNRC")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_path() == tmp_path / ".flynnrc"


def _runner_env(path: Path) -> dict[str, str]:
    return {"FLYNNRC": str(path), "FLYNN_APP": "", "FLYNN_CLUSTER": ""}


def test_cluster_list_default_and_remove(tmp_path: Path) -> None:
    path = tmp_path / "rc"
    path.write_text(FLYNN_FORM)
    runner = CliRunner()
    env = _runner_env(path)
    listed = runner.invoke(cli, ["cluster"], env=env)
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "CONTROLLER", "URL", "GIT", "URL"]
    assert lines[1].split() == [
        "mycluster",
        "https://controller.example.com",
        "https://git.example.com",
        "(default)",
    ]
    assert lines[1].index("https://controller") == lines[0].index("CONTROLLER")  # aligned columns
    assert "k3y-abcdef" not in listed.output  # never the key

    assert runner.invoke(cli, ["cluster", "default"], env=env).stdout.strip() == "mycluster"
    assert runner.invoke(cli, ["cluster", "default", "other"], env=env).exit_code == 0
    assert RcFile.load(path).default == "other"
    missing = runner.invoke(cli, ["cluster", "default", "nope"], env=env)
    assert (missing.exit_code, missing.stderr.strip()) == (
        1,
        "flynn: unknown cluster 'nope' (see 'flynn cluster')",
    )

    assert runner.invoke(cli, ["cluster", "remove", "other"], env=env).exit_code == 0
    rc = RcFile.load(path)
    assert ([c.name for c in rc.clusters], rc.default) == (["mycluster"], "mycluster")
    again = runner.invoke(cli, ["cluster", "remove", "other"], env=env)
    assert again.exit_code == 1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_cluster_add_refuses_bad_input_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "rc"
    path.write_text(FLYNN_FORM)
    before = path.read_bytes()
    runner = CliRunner()
    env = _runner_env(path)
    for args, fragment in [
        (["mycluster", "example.com", "k"], "already exists (use -f to replace it)"),
        (["new", "ftp://x", "k"], "invalid controller URL"),
        (["new", "https://u:secret@x", "k"], "must not contain credentials"),
        (["new", "bad domain!", "k"], "invalid domain"),
        (["new", "-p", "nope", "example.com", "k"], "invalid TLS pin"),
        (["new bad", "example.com", "k"], "invalid cluster name"),
        (["new", "example.com", ""], "the key is empty"),
    ]:
        result = runner.invoke(cli, ["cluster", "add", *args], env=env)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith("flynn: "), result.stderr
        assert fragment in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert path.read_bytes() == before
