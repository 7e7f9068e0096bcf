"""The cluster harness's own logic: image cache keys, argument checking, state files."""

import json
import shutil
from pathlib import Path

import pytest

from flynn_dev import cluster, image, netns, util


@pytest.fixture
def fake_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for d in ("services", "units", "appliance"):
        shutil.copytree(
            util.REPO / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "_mypyc")
        )
    shutil.copy2(util.REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    monkeypatch.setattr(util, "REPO", tmp_path)
    monkeypatch.setattr(image, "REPO", tmp_path)
    return tmp_path


def test_code_change_rebuilds_only_the_app_layer(fake_repo: Path) -> None:
    base, app = image.base_key(), image.app_key()
    (fake_repo / "services/flynn/host/api.py").write_text("# changed\n")
    assert image.base_key() == base
    assert image.app_key() != app


def test_unit_change_rebuilds_only_the_app_layer(fake_repo: Path) -> None:
    base, app = image.base_key(), image.app_key()
    (fake_repo / "units/flynn.slice").write_text("[Unit]\nDescription=changed\n")
    assert (image.base_key(), image.app_key() != app) == (base, True)


def test_dependency_change_rebuilds_the_base(fake_repo: Path) -> None:
    base = image.base_key()
    with open(fake_repo / "appliance/requirements.txt", "a") as f:
        f.write("six==1.16.0\n")
    assert image.base_key() != base


def test_keys_ignore_bytecode(fake_repo: Path) -> None:
    app = image.app_key()
    cache = fake_repo / "services/flynn/__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "x.cpython-311.pyc").write_bytes(b"\0")
    assert image.app_key() == app


def test_keys_ignore_what_building_the_wheel_writes(fake_repo: Path) -> None:
    # `pip wheel` (re)writes services/flynn.egg-info; counting it rebuilt the app layer on the
    # second build after a fresh clone although nothing had changed
    app = image.app_key()
    info = fake_repo / "services/flynn.egg-info"
    info.mkdir(exist_ok=True)
    (info / "SOURCES.txt").write_text("flynn/__init__.py\n")
    mypyc = fake_repo / "services/flynn/router/_mypyc"
    mypyc.mkdir(exist_ok=True)
    (mypyc / "http1.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    assert image.app_key() == app


def test_packages_list_is_parsed_without_comments() -> None:
    pkgs = image.packages()
    assert "systemd" in pkgs
    assert "python3-systemd" in pkgs
    assert not any(p.startswith("#") or " " in p for p in pkgs)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["up", "0"], "host count must be 1-50, got 0"),
        (["up", "51"], "host count must be 1-50"),
        (["up", "three"], "host count must be a number"),
        (["exec", "nosuchhost", "true"], "no such host: nosuchhost"),
        (["kill", "host1"], "no such host: host1"),
        (["start", "../etc"], "no such host"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FLYNN_DEV_HOME", str(tmp_path))
    assert cluster.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert not (tmp_path / f"cluster-{netns.NAME}" / "cluster.json").exists()


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cluster.main(["frobnicate"])
    assert info.value.code == 2


def test_state_round_trip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    st = cluster.ClusterState(hosts=["host1"], base="/b", app="/a", build_id="x.y", subnet="10.0.0.0/24")
    st.save(path)
    assert cluster.ClusterState.load(path) == st
    path.write_text("[1, 2")
    with pytest.raises(util.DevError, match="corrupt"):
        cluster.ClusterState.load(path)


def test_hosts_file_is_rewritten_in_place(tmp_path: Path) -> None:
    c = cluster.Cluster(root=tmp_path)
    c.write_hosts_file(["host1", "host2", "host3"])
    inode = c.hosts_file.stat().st_ino
    c.write_hosts_file(["host1"])
    assert c.hosts_file.stat().st_ino == inode  # running hosts bind-mount this inode
    text = c.hosts_file.read_text()
    assert "host1" in text
    assert "host2" not in text


def test_old_base_layers_go_unless_a_cluster_runs_on_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYNN_DEV_HOME", str(tmp_path))
    images = tmp_path / "images"
    names = {
        "current": "base-" + "a" * 16,
        "old": "base-" + "b" * 16,
        "run by a cluster": "base-" + "c" * 16,
        "under a running app layer": "base-" + "d" * 16,
        "being built": "base-" + "e" * 16 + ".tmp1",
    }
    for name in [*names.values(), "app-bbbbbbbb-1", "app-dddddddd-2", "app-aaaaaaaa-3"]:
        (images / name / "usr").mkdir(parents=True)
    (tmp_path / "cluster-x").mkdir()
    (tmp_path / "cluster-x/state.json").write_text(
        json.dumps({"base": str(images / names["run by a cluster"])})
    )
    image._gc_base_layers(images / names["current"], {images / "app-dddddddd-2"})
    left = sorted(p.name for p in images.iterdir())
    assert left == sorted(
        [
            names["current"],
            names["run by a cluster"],
            names["under a running app layer"],
            names["being built"],
            "app-dddddddd-2",
            "app-aaaaaaaa-3",
        ]
    )
