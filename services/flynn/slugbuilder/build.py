"""One build, start to end (docs/gitreceive.md "slugbuilder")::

    source GET -> extract into /app -> buildpacks fetched -> .slugignore -> [cache GET]
      -> env dir -> detect -> compile (each buildpack, in order) -> release -> Procfile
      -> slug tarball -> slug PUT -> cache PUT -> FLYNN-SLUG {...}

Each step prints a ``----->`` heading; a failure anywhere raises :class:`BuildError` with the
one-line reason. The temporary space (downloads, buildpacks, cache, env dir, SSH key) is removed
at the end, whatever happens.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flynn.slugbuilder import archive, buildpack, envdir, output, procfile, slugignore, ssh, transfer
from flynn.slugbuilder.buildpack import Buildpack, Ref
from flynn.slugbuilder.errors import BuildError

RUNNER = "\n".join(
    [
        "#!/bin/sh",
        "# Written by flynn-slugbuilder. Runs a process of this slug the way Heroku's launcher does:",
        "# from the slug's root, with the buildpacks' .profile.d/*.sh sourced first.",
        "# Usage: .flynn/run COMMAND (run by /bin/sh -c)",
        'root=$(cd "$(dirname "$0")/.." && pwd) || exit 1',
        'cd "$root" || exit 1',
        'for profile in "$root"/.profile.d/*.sh; do',
        '  if [ -r "$profile" ]; then . "$profile"; fi',
        "done",
        'exec /bin/sh -c "$*"',
        "",
    ]
)


@dataclass(frozen=True)
class Options:
    source: str
    slug: str
    cache: str | None = None
    build_dir: Path = Path("/app")
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ), repr=False)


@dataclass(frozen=True)
class Slug:
    sha256: str
    size: int
    processes: dict[str, str]
    buildpacks: list[str]


def _safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label.rsplit("/", 1)[-1]).strip("-.")[:40] or "buildpack"


class Build:
    def __init__(self, options: Options) -> None:
        self.opts = options
        self.app = options.build_dir
        self.environ = dict(options.environ)
        self.work = Path(tempfile.mkdtemp(prefix="flynn-slugbuilder-"))
        self.cache_dir = self.work / "cache"
        self.env: dict[str, str] = {}

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def run(self) -> Slug:
        t0 = time.monotonic()
        self._check_build_dir()
        self._fetch_source()
        ssh_env, note = ssh.setup(self.environ, self.work)
        if note:
            output.step(note)
        self.env = envdir.buildpack_env(self.environ, ssh_env)
        candidates = self._buildpacks()
        self._slugignore()
        self._fetch_cache()
        env_dir = self.work / "env"
        envdir.write(env_dir, self.environ)
        packs = self._detect(candidates)
        for bp, _name in packs:
            buildpack.compile(bp, self.app, self.cache_dir, env_dir, self.env)
        processes = self._processes([bp for bp, _ in packs])
        self._write_runner()
        slug = self._slug(processes, [name for _, name in packs])
        self._put_cache()
        output.step(f"Build finished in {time.monotonic() - t0:.1f}s")
        return slug

    # -- steps --------------------------------------------------------------------------------

    def _check_build_dir(self) -> None:
        if not self.app.is_dir():
            raise BuildError(f"build directory {self.app} does not exist")
        if any(self.app.iterdir()):
            raise BuildError(f"build directory {self.app} is not empty")
        if not os.access(self.app, os.W_OK):
            raise BuildError(f"build directory {self.app} is not writable (is the job in app_mode build?)")

    def _fetch_source(self) -> None:
        output.step("Fetching the app's source")
        tarball = self.work / "source.tar"
        size = transfer.download(self.opts.source, tarball) or 0
        count = archive.extract_into(tarball, self.app, "source")
        tarball.unlink()
        output.info(f"{count} files, {output.size(size)}")

    def _buildpacks(self) -> list[tuple[Buildpack, bool]]:
        """The buildpacks to try, fetched, each with whether it was chosen explicitly."""
        url = self.environ.get("BUILDPACK_URL", "").strip()
        listed = self.app / ".buildpacks"
        refs: list[Ref]
        if url:
            refs = [buildpack.parse_ref(url, "BUILDPACK_URL")]
            if listed.exists():
                output.info("BUILDPACK_URL is set: .buildpacks is not used")
        elif listed.is_file():
            refs = buildpack.read_buildpacks_file(listed.read_text(errors="replace"))
        else:
            refs = [Ref("builtin", name) for name in buildpack.BUILTINS]
        explicit = bool(url) or listed.is_file()
        fetched = []
        for i, ref in enumerate(refs):
            dest = self.work / "buildpacks" / f"{i:02d}-{_safe_name(ref.location)}"
            dest.parent.mkdir(exist_ok=True)
            fetched.append((buildpack.fetch(ref, dest, build_dir=self.app, env=self.env), explicit))
        return fetched

    def _slugignore(self) -> None:
        path = self.app / ".slugignore"
        if not path.is_file():
            return
        removed = slugignore.apply(self.app, slugignore.parse(path.read_text(errors="replace")))
        output.step(f"Removed {len(removed)} path(s) matching .slugignore")
        for rel in removed[:20]:
            output.info(rel)
        if len(removed) > 20:
            output.info(f"... and {len(removed) - 20} more")

    def _fetch_cache(self) -> None:
        self.cache_dir.mkdir()
        if not self.opts.cache:
            return
        tarball = self.work / "cache.tgz"
        try:
            size = transfer.download(self.opts.cache, tarball, missing_ok=True)
        except BuildError as exc:
            output.warn(f"build cache not restored: {exc}")
            return
        if size is None:
            output.step("No build cache yet")
            return
        try:
            archive.extract_into(tarball, self.cache_dir, "build cache")
        except BuildError as exc:
            output.warn(f"build cache not restored: {exc}")
            shutil.rmtree(self.cache_dir, ignore_errors=True)
            self.cache_dir.mkdir()
            return
        finally:
            tarball.unlink(missing_ok=True)
        output.step(f"Restored the build cache ({output.size(size)})")

    def _detect(self, packs: list[tuple[Buildpack, bool]]) -> list[tuple[Buildpack, str]]:
        chosen: list[tuple[Buildpack, str]] = []
        for bp, explicit in packs:
            name = buildpack.detect(bp, self.app, self.env)
            if explicit:
                if name is None:
                    raise BuildError(f"buildpack {bp.label} does not apply to this app (bin/detect failed)")
                output.step(f"{name} app detected")
                chosen.append((bp, name))
            elif name is not None:
                output.step(f"{name} app detected")
                return [(bp, name)]
        if not chosen:
            raise BuildError(
                "no buildpack detected this app (python: requirements.txt or pyproject.toml; "
                "nodejs: package.json; static: index.html or public/; procfile: a Procfile); "
                "name one in BUILDPACK_URL or .buildpacks"
            )
        return chosen

    def _processes(self, packs: list[Buildpack]) -> dict[str, str]:
        output.step("Discovering process types")
        defaults: dict[str, str] = {}
        for bp in packs:  # a later buildpack's defaults win
            defaults.update(buildpack.default_processes(bp, self.app, self.env))
        for name in defaults:
            procfile.check_type(name, "bin/release")
        declared: dict[str, str] = {}
        path = self.app / "Procfile"
        if path.is_file():
            declared = procfile.parse(path.read_text(errors="replace"))
            output.info(f"Procfile declares types -> {', '.join(declared) or '(none)'}")
        if defaults:
            output.info(f"Default types for buildpack -> {', '.join(defaults)}")
        processes = {**defaults, **declared}  # the Procfile wins
        if not processes:
            output.warn("no process types: add a Procfile (web: COMMAND)")
        return processes

    def _write_runner(self) -> None:
        directory = self.app / ".flynn"
        directory.mkdir(exist_ok=True)
        runner = directory / "run"
        runner.unlink(missing_ok=True)
        runner.write_text(RUNNER)
        runner.chmod(0o755)

    def _slug(self, processes: dict[str, str], names: list[str]) -> Slug:
        output.step("Compressing the slug")
        tarball = self.work / "slug.tgz"
        sha256, size = archive.write_tarball(self.app, tarball, check_links=True)
        output.info(f"Compressed size: {output.size(size)}")
        output.step("Uploading the slug")
        transfer.upload(self.opts.slug, tarball, "application/gzip")
        tarball.unlink()
        return Slug(sha256, size, processes, names)

    def _put_cache(self) -> None:
        if not self.opts.cache:
            return
        tarball = self.work / "cache.tgz"
        try:
            _, size = archive.write_tarball(self.cache_dir, tarball, check_links=False)
            transfer.upload(self.opts.cache, tarball, "application/gzip")
        except (BuildError, OSError) as exc:
            output.warn(f"build cache not saved: {exc}")
            return
        output.step(f"Saved the build cache ({output.size(size)})")
