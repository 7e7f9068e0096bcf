"""Tarballs in and out: the source and cache archives extracted safely, the slug and cache written.

Extraction reuses the host's artifact extractor (``flynn.host.jobs.artifacts.extract_tarball``):
no absolute or ``..`` paths, no links out of the tree, no device nodes. The slug is checked against
the rules hosts apply when they extract it (docs/host.md "Artifacts"), so a slug they would refuse
fails the build with the reason instead of failing every job of the release later: a symlink must
resolve inside ``/app`` (the build directory is ``/app``, so absolute ``/app/...`` targets count as
inside), and sockets, FIFOs and device nodes are left out (with a warning).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
from pathlib import Path

from flynn.host.jobs.artifacts import ArtifactError, extract_tarball, link_escapes
from flynn.slugbuilder import output
from flynn.slugbuilder.errors import BuildError


def extract_into(archive: Path, dest: Path, what: str) -> int:
    """Extract ``archive`` into the existing directory ``dest`` (via a fresh directory inside it,
    whose entries are then moved up: the job may write only /app); returns the number of members."""
    staging = dest / f".flynn-slugbuilder-extract-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        count = extract_tarball(archive, staging)
    except ArtifactError as exc:
        raise BuildError(f"{what}: {exc}") from None
    try:
        for entry in sorted(os.listdir(staging)):
            os.rename(staging / entry, dest / entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return count


def _members(root: Path) -> list[tuple[Path, str]]:
    """Every path under ``root`` that goes into a slug (sorted, parents first)."""
    found: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in [*dirnames, *sorted(filenames)]:
            path = base / name
            found.append((path, path.relative_to(root).as_posix()))
    return sorted(found, key=lambda item: item[1].split("/"))


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode &= 0o777  # hosts drop setuid/setgid/sticky anyway
    return info


def write_tarball(root: Path, dest: Path, *, check_links: bool) -> tuple[str, int]:
    """A gzip'd tar of what is under ``root`` (names relative to it) at ``dest``; returns its
    sha256 and size. With ``check_links`` (slugs), a link resolving outside the tree fails."""
    with tarfile.open(dest, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
        for path, rel in _members(root):
            st = path.lstat()
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                output.warn(f"left out of the slug: {rel} (not a file, directory or symlink)")
                continue
            if check_links and stat.S_ISLNK(st.st_mode) and link_escapes(root, rel):
                target = os.readlink(path)
                raise BuildError(
                    f"symlink {rel} -> {target} points outside /app: hosts refuse such slugs "
                    "(copy the file instead, e.g. python3 -m venv --copies)"
                )
            tar.add(path, arcname=rel, recursive=False, filter=_normalise)
    digest = hashlib.sha256()
    with dest.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest(), dest.stat().st_size
