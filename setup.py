"""Build hook: the router's data-plane modules compiled with mypyc; everything else is pyproject.toml.

Any build of the package (``pip wheel``/``pip install``, editable or not) runs ``build_ext``,
which compiles the modules named in ``flynn/router/_native.py`` (COMPILED) with the mypyc of the
building environment into ``flynn/router/_mypyc/`` (for an editable install: in the source
tree), plus ``SOURCES.json``, the digest of the sources compiled. ``flynn.router`` uses them only
while that digest matches its ``.py`` files, so a stale build never runs (docs/router.md,
"Compiled"). The build is the pinned mypy of requirements-dev.txt (``--no-build-isolation`` from
the dev venv, as ``scripts/setup`` and the image build do): the same input gives the same C code.

Without mypyc in the building environment (or with ``FLYNN_ROUTER_PURE=1``) nothing is compiled
and the wheel is pure Python: the same modules run interpreted. A failing compilation fails the
build: it is a bug to fix, not a reason to ship slower code silently.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
ROUTER_SRC = Path("services/flynn/router")  # relative: mypy names modules from services/ (pyproject)


def _native() -> Any:
    """flynn/router/_native.py, loaded from its file (importing flynn here would need its deps)."""
    spec = importlib.util.spec_from_file_location("_flynn_router_native", HERE / ROUTER_SRC / "_native.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("setup.py: flynn/router/_native.py is missing")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _want_compiled() -> bool:
    if os.environ.get("FLYNN_ROUTER_PURE", "") not in ("", "0"):
        print("setup.py: FLYNN_ROUTER_PURE is set: the router stays pure Python", file=sys.stderr)
        return False
    if importlib.util.find_spec("mypyc") is None:
        print("setup.py: no mypyc in this environment: the router stays pure Python", file=sys.stderr)
        return False
    return True


class BuildRouterExt(build_ext):
    """build_ext that runs mypyc when it is finalized (when extensions are built, and once when
    the metadata lists the sources: mypy's cache makes that second time quick) and writes the
    SOURCES.json manifest next to the compiled modules."""

    digest = ""
    c_dir = ""
    reuse: Path | None = None  # an in-tree build of exactly these sources, copied instead of compiled

    def finalize_options(self) -> None:
        if self.c_dir or self.reuse:  # finalized once already
            super().finalize_options()
            return
        native = _native()
        self.digest = native.source_digest(HERE / ROUTER_SRC)  # of the sources about to be compiled
        if not self.inplace:
            self.reuse = _reusable_build(native, self.digest)
            if self.reuse is not None:
                print(f"setup.py: {self.reuse} was built from these sources: copied", file=sys.stderr)
                super().finalize_options()
                return
        from mypyc.build import mypycify

        build_dir = HERE / "build"
        self.c_dir = tempfile.mkdtemp(prefix="mypyc-", dir=build_dir if build_dir.is_dir() else None)
        atexit.register(shutil.rmtree, self.c_dir, ignore_errors=True)  # the generated C
        print(f"setup.py: compiling the router with mypyc ({self.c_dir})", file=sys.stderr)
        cwd = os.getcwd()
        try:
            os.chdir(HERE)  # mypy reads pyproject.toml's [tool.mypy] (mypy_path = services)
            extensions = mypycify(
                [str(ROUTER_SRC / f"{name}.py") for name in native.COMPILED],
                group_name=native.GROUP,
                target_dir=self.c_dir,
                opt_level="3",
            )
        finally:
            os.chdir(cwd)
        for ext in extensions:
            # flynn.router.http1 -> file flynn/router/_mypyc/http1.*.so (the init symbol is the
            # last component, so the module keeps its name); the shared library is named into
            # that directory by its group name already
            parts = ext.name.split(".")
            if parts[:-1] == native.PACKAGE.split("."):
                ext.name = ".".join([*parts[:-1], native.DIR_NAME, parts[-1]])
        self.distribution.ext_modules = extensions
        super().finalize_options()
        self.build_temp = os.path.join(self.c_dir, "obj")  # object files go with the C

    def run(self) -> None:
        native = _native()
        out_dir = self._native_dir(native)
        shutil.rmtree(out_dir, ignore_errors=True)  # no module of an older build may linger
        if self.reuse is not None:
            shutil.copytree(self.reuse, out_dir, ignore=shutil.ignore_patterns(".gitignore"))
            return
        out_dir.mkdir(parents=True)
        super().run()
        manifest = {
            "digest": self.digest,
            "modules": list(native.COMPILED),
            "python": sys.version.split()[0],
            "mypy": _mypy_version(),
        }
        (out_dir / native.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if self.inplace:
            # the in-tree build output is not source: keep it out of git
            (out_dir / ".gitignore").write_text("*\n")

    def _native_dir(self, native: Any) -> Path:
        rel = Path(*native.PACKAGE.split("."), native.DIR_NAME)
        if self.inplace:
            return HERE / "services" / rel
        return Path(self.build_lib) / rel


def _reusable_build(native: Any, digest: str) -> Path | None:
    """The in-tree build (``setup.py build_ext --inplace``, run by scripts/setup) when it was
    compiled from exactly these sources by this Python and this mypy: the same input gives the
    same C code, so a wheel (the host image's) can take its modules instead of compiling again."""
    in_tree: Path = HERE / ROUTER_SRC / str(native.DIR_NAME)
    try:
        manifest = json.loads((in_tree / native.MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    names = [*native.COMPILED, native.GROUP.rsplit(".", 1)[1] + "__mypyc"]
    if (
        manifest.get("digest") == digest
        and manifest.get("python") == sys.version.split()[0]
        and manifest.get("mypy") == _mypy_version()
        and manifest.get("modules") == list(native.COMPILED)
        and all(native._built(in_tree, name) for name in names)  # what activate() checks too
    ):
        return in_tree
    return None


def _mypy_version() -> str:
    from mypy.version import __version__

    return str(__version__)


if _want_compiled():
    # a stand-in: BuildRouterExt.run replaces it with mypyc's extensions; it is here so that
    # setuptools knows the distribution has extension modules (a platform wheel, build_ext runs)
    setup(
        ext_modules=[Extension("flynn.router._mypyc.router__mypyc", sources=[])],
        cmdclass={"build_ext": BuildRouterExt},
    )
else:
    setup()
