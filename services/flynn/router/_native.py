"""Which implementation of the data plane runs: the modules compiled with mypyc, or their source.

``setup.py`` (any wheel or editable build with mypy installed) compiles the modules named in
:data:`COMPILED` into extension modules in the directory ``_mypyc`` beside this file, and writes
there ``SOURCES.json``: the digest of the sources they were compiled from. When ``flynn.router``
is imported, :func:`activate` puts that directory first on the package's ``__path__``, so that
``import flynn.router.http1`` loads the compiled module, if

* every module of :data:`COMPILED` is there, built for this interpreter,
* ``SOURCES.json`` matches the ``.py`` files beside this one (a build older than the source is
  ignored, with a warning: ``scripts/setup`` rebuilds it), and
* ``FLYNN_ROUTER_PURE`` is not set (``1``: run the Python source, e.g. for an A/B benchmark).

Otherwise the ``.py`` modules run, the same code interpreted. :data:`state` says which one runs
(``"compiled"`` or ``"interpreted"``) and :data:`reason` why; ``Router.status()`` reports it as
``implementation``. This module is not compiled itself and imports nothing of flynn (setup.py
loads it from its file).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import warnings
from pathlib import Path

# the data plane's hot modules, compiled together (one shared library: calls between them are
# native); each must stay compilable by mypyc (no subclassing of Python classes, typed code)
COMPILED = (
    "headers",
    "responses",
    "stats",
    "backends",
    "routes",
    "timeouts",
    "outbox",
    "upstream",
    "proxy",
    "http1",
    "hpack",
    "h2wire",
    "http2",
    "tunnel",
    "tlsconn",
)
DIR_NAME = "_mypyc"
MANIFEST = "SOURCES.json"
PACKAGE = "flynn.router"
GROUP = f"{PACKAGE}.{DIR_NAME}.router"  # the shared library: flynn/router/_mypyc/router__mypyc.*.so

state = "interpreted"
reason = "not activated"


def source_digest(package_dir: Path) -> str:
    """The digest of the sources of the compiled modules (names and bytes)."""
    digest = hashlib.sha256()
    for name in COMPILED:
        digest.update(name.encode() + b"\0")
        digest.update((package_dir / f"{name}.py").read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _built(native_dir: Path, name: str) -> bool:
    return any((native_dir / (name + suffix)).is_file() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def activate(path: list[str]) -> str:
    """Put the compiled modules first on the package path ``path`` when they may be used;
    returns (and records in :data:`state`) the implementation that will run."""
    global state, reason  # noqa: PLW0603 - set once, at the package's import
    package_dir = Path(__file__).parent
    native_dir = package_dir / DIR_NAME
    state = "interpreted"
    if os.environ.get("FLYNN_ROUTER_PURE", "") not in ("", "0"):
        reason = "FLYNN_ROUTER_PURE is set"
        return state
    manifest = native_dir / MANIFEST
    if not manifest.is_file():
        reason = "not built (no mypyc when the package was built)"
        return state
    missing = [n for n in COMPILED if not _built(native_dir, n)]
    if missing or not _built(native_dir, GROUP.rsplit(".", 1)[1] + "__mypyc"):
        reason = f"not built for this interpreter ({', '.join(missing) or 'shared library'})"
        return state
    try:
        recorded = json.loads(manifest.read_text()).get("digest")
        current = source_digest(package_dir)
    except (OSError, ValueError) as exc:
        reason = f"unreadable build: {exc}"
        return state
    if recorded != current:
        reason = "the build is older than the source (scripts/setup rebuilds it)"
        warnings.warn(
            f"flynn.router: compiled modules in {native_dir} are stale; running the Python source",
            RuntimeWarning,
            stacklevel=2,
        )
        return state
    path.insert(0, str(native_dir))
    state = "compiled"
    reason = f"mypyc build in {native_dir}"
    return state
