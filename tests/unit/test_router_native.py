"""Which implementation of the router's data plane runs: compiled (mypyc) or the Python source.

The loader (flynn/router/_native.py) is exercised on copies of itself in a temporary package
directory, with stand-in extension files, so every refusal can be provoked. The last test is about
the real tree: scripts/setup compiled the data plane, so the suite tests the code the image ships.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

import flynn.router
import flynn.router.http1
from flynn.router import _native

SOURCE = Path(_native.__file__).with_suffix(".py")
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _loader_copy(pkg: Path) -> ModuleType:
    """_native.py copied into *pkg* with a stand-in source file for every compiled module."""
    pkg.mkdir()
    shutil.copy(SOURCE, pkg / "_native.py")
    for name in _native.COMPILED:
        (pkg / f"{name}.py").write_text(f"# {name}\n")
    spec = importlib.util.spec_from_file_location(f"native_copy_{id(pkg)}", pkg / "_native.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_build(pkg: Path, native: ModuleType, digest: str | None = None) -> Path:
    out: Path = pkg / native.DIR_NAME
    out.mkdir()
    for name in (*native.COMPILED, "router__mypyc"):
        (out / f"{name}{SUFFIX}").write_bytes(b"")
    recorded = native.source_digest(pkg) if digest is None else digest
    (out / native.MANIFEST).write_text(json.dumps({"digest": recorded}))
    return out


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("FLYNN_ROUTER_PURE", raising=False)
    return tmp_path / "router"


def test_a_current_build_goes_first_on_the_package_path(pkg: Path) -> None:
    native = _loader_copy(pkg)
    out = _fake_build(pkg, native)
    path = [str(pkg)]
    assert native.activate(path) == "compiled"
    assert path == [str(out), str(pkg)]


def test_no_build_runs_the_source(pkg: Path) -> None:
    native = _loader_copy(pkg)
    path = [str(pkg)]
    assert native.activate(path) == "interpreted"
    assert "not built" in native.reason
    assert path == [str(pkg)]


def test_a_build_older_than_the_source_is_never_loaded(pkg: Path) -> None:
    native = _loader_copy(pkg)
    _fake_build(pkg, native)
    (pkg / "http1.py").write_text("# edited after the build\n")
    path = [str(pkg)]
    with pytest.warns(RuntimeWarning, match="stale"):
        assert native.activate(path) == "interpreted"
    assert "older than the source" in native.reason
    assert path == [str(pkg)]


def test_a_build_missing_a_module_is_not_used(pkg: Path) -> None:
    native = _loader_copy(pkg)
    out = _fake_build(pkg, native)
    (out / f"tunnel{SUFFIX}").unlink()
    path = [str(pkg)]
    assert native.activate(path) == "interpreted"
    assert "tunnel" in native.reason
    assert path == [str(pkg)]


def test_flynn_router_pure_forces_the_source(pkg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    native = _loader_copy(pkg)
    _fake_build(pkg, native)
    monkeypatch.setenv("FLYNN_ROUTER_PURE", "1")
    path = [str(pkg)]
    assert native.activate(path) == "interpreted"
    assert path == [str(pkg)]


def test_this_tree_runs_the_compiled_data_plane() -> None:
    """scripts/setup builds it (scripts/test runs setup first): the router tests of this suite
    then run the compiled modules, the ones the host image ships."""
    if "FLYNN_ROUTER_PURE" in os.environ:
        pytest.fail("FLYNN_ROUTER_PURE is set: the suite would test the interpreted router only")
    assert _native.state == "compiled", _native.reason
    for name in _native.COMPILED:
        module = sys.modules.get(f"flynn.router.{name}") or importlib.import_module(f"flynn.router.{name}")
        assert str(module.__file__).endswith(SUFFIX), module.__file__
    assert Path(flynn.router.http1.__file__ or "").parent.name == _native.DIR_NAME
