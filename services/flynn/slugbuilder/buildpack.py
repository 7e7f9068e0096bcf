"""Buildpacks: how they are named, fetched into the build's temporary space, and run.

A buildpack is named (in ``BUILDPACK_URL`` or a ``.buildpacks`` line) by

* a built-in name: ``python``, ``nodejs``, ``static``, ``procfile`` (``buildpacks/NAME`` here);
* a path inside the app: ``./buildpacks/x`` (it must stay inside the app);
* a git URL (``https://``, ``http://``, ``git://``, ``ssh://``, ``file://`` or ``user@host:path``),
  cloned with the real ``git``; ``#REF`` selects a branch or tag (or a commit).

Every buildpack is copied (or cloned) into the temporary space before ``.slugignore`` runs, so an
app may ignore its own buildpacks, and its ``bin/*`` scripts are made executable there.
"""

from __future__ import annotations

import re
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flynn.slugbuilder import output, process, release
from flynn.slugbuilder.errors import BuildError
from flynn.slugbuilder.transfer import shown

BUILTIN_DIR = Path(__file__).resolve().parent / "buildpacks"
BUILTINS = ("python", "nodejs", "static", "procfile")  # also the detection order
URL_RE = re.compile(r"^(?:(?:https?|git|ssh|file)://|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:)")
SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")
SCRIPTS = ("detect", "compile", "release")


@dataclass(frozen=True)
class Ref:
    """A buildpack as named by the app: ``kind`` is builtin, path or git."""

    kind: str
    location: str
    ref: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "git":
            return shown(self.location) + (f"#{self.ref}" if self.ref else "")
        return self.location


@dataclass(frozen=True)
class Buildpack:
    label: str
    path: Path

    def script(self, name: str) -> Path:
        return self.path / "bin" / name


def parse_ref(text: str, where: str) -> Ref:
    text = text.strip()
    if text in BUILTINS:
        return Ref("builtin", text)
    if URL_RE.match(text):
        url, _, ref = text.partition("#")
        return Ref("git", url, ref or None)
    if "://" not in text and (text.startswith("./") or ("/" in text and not text.startswith("/"))):
        return Ref("path", text)
    raise BuildError(
        f"{where}: unknown buildpack {text[:80]!r} (a built-in name: {', '.join(BUILTINS)}; "
        "a path inside the app like ./buildpacks/x; or a git URL)"
    )


def read_buildpacks_file(text: str) -> list[Ref]:
    refs = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            refs.append(parse_ref(line, f".buildpacks line {number}"))
    if not refs:
        raise BuildError(".buildpacks names no buildpack")
    return refs


def _make_executable(path: Path) -> None:
    for name in SCRIPTS:
        script = path / "bin" / name
        if script.is_file():
            mode = script.stat().st_mode
            script.chmod(mode | stat.S_IXUSR | stat.S_IRUSR)


def fetch(ref: Ref, dest: Path, *, build_dir: Path, env: Mapping[str, str]) -> Buildpack:
    """Copy or clone the buildpack ``ref`` to the new directory ``dest``."""
    if ref.kind == "builtin":
        shutil.copytree(BUILTIN_DIR / ref.location, dest, symlinks=True)
    elif ref.kind == "path":
        root = build_dir.resolve()
        source = (build_dir / ref.location).resolve()
        if source != root and root not in source.parents:
            raise BuildError(f"buildpack {ref.location}: the path leaves the app")
        if not source.is_dir():
            raise BuildError(f"buildpack {ref.location}: no such directory in the app")
        shutil.copytree(source, dest, symlinks=True)
    else:
        _clone(ref, dest, env)
    if not (dest / "bin" / "compile").is_file():
        raise BuildError(f"buildpack {ref.label} has no bin/compile")
    _make_executable(dest)
    return Buildpack(ref.label, dest)


def _clone(ref: Ref, dest: Path, env: Mapping[str, str]) -> None:
    git_env = {**env, "GIT_TERMINAL_PROMPT": "0"}
    output.step(f"Fetching buildpack {ref.label}")
    base = ["git", "clone", "--quiet", "--depth", "1"]
    args = [*base, *(["--branch", ref.ref] if ref.ref else []), "--", ref.location, str(dest)]
    result = process.run(args, cwd=dest.parent, env=git_env)
    if result.returncode == 0:
        return
    if ref.ref and SHA_RE.match(ref.ref):  # a commit: full clone, then check it out
        shutil.rmtree(dest, ignore_errors=True)
        full_clone = ["git", "clone", "--quiet", "--", ref.location, str(dest)]
        full = process.run(full_clone, cwd=dest.parent, env=git_env)
        if full.returncode == 0:
            checkout = process.run(["git", "checkout", "--quiet", ref.ref], cwd=dest, env=git_env)
            if checkout.returncode == 0:
                return
            raise BuildError(f"buildpack {ref.label}: git checkout {ref.ref} {checkout.how}")
    raise BuildError(f"buildpack {ref.label}: git clone {result.how}")


def detect(bp: Buildpack, build_dir: Path, env: Mapping[str, str]) -> str | None:
    """The name ``bin/detect`` prints when it applies (exit 0), else None. A buildpack without
    ``bin/detect`` applies, named after itself."""
    script = bp.script("detect")
    if not script.is_file():
        return bp.path.name.split("-", 1)[-1]
    result = process.run([script, build_dir], cwd=build_dir, env=env, capture=True)
    if result.returncode != 0:
        return None
    name = result.stdout.strip().splitlines()[0].strip() if result.stdout.strip() else ""
    return name or bp.label


def compile(bp: Buildpack, build_dir: Path, cache_dir: Path, env_dir: Path, env: Mapping[str, str]) -> None:
    result = process.run([bp.script("compile"), build_dir, cache_dir, env_dir], cwd=build_dir, env=env)
    if result.returncode == 0:
        return
    hint = ""
    if result.returncode == -9:
        hint = " (out of memory? raise it with: flynn limit set slugbuilder memory=4GB)"
    raise BuildError(f"buildpack {bp.label}: bin/compile {result.how}{hint}")


def default_processes(bp: Buildpack, build_dir: Path, env: Mapping[str, str]) -> dict[str, str]:
    script = bp.script("release")
    if not script.is_file():
        return {}
    result = process.run([script, build_dir], cwd=build_dir, env=env, capture=True)
    if result.returncode != 0:
        raise BuildError(f"buildpack {bp.label}: bin/release {result.how}")
    return release.parse(result.stdout, f"buildpack {bp.label}: bin/release")
