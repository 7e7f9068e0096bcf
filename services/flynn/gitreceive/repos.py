"""The repositories: ``REPOS/APP.git`` (bare), a cache of the blobstore's ``/repos/APP.git.tar``.

The blobstore's tarball is the truth (docs/gitreceive.md): after each successful push the
post-receive hook tars the repository and stores it (:func:`save`), and before serving a request
an instance compares the blob's sha256 with the one it last stored or restored (kept in
``REPOS/.APP.sha256``); when they differ (another instance took a push, or this one lacks the
repository) it restores the tarball first (:func:`ensure`). No tarball yet: a new, empty
repository.

A restored tarball is checked member by member before anything is written: only directories and
regular files, relative paths without ``..``, limited size and count; it is extracted next to the
repository and swapped in with renames, so a failed restore leaves the old repository as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from flynn.common.errors import FlynnError
from flynn.gitreceive.blobs import Blobstore

APP_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_MEMBERS = 1_000_000
MAX_BYTES = 8 << 30
DEFAULT_BRANCH = "main"


class RepoError(FlynnError):
    """A repository could not be created, restored or saved; the message says why."""


def blob_path(app: str) -> str:
    return f"/repos/{app}.git.tar"


def repo_dir(root: Path, app: str) -> Path:
    if not APP_RE.match(app):
        raise ValueError(f"{app!r} is not an app name")
    return root / f"{app}.git"


def _marker(root: Path, app: str) -> Path:
    return root / f".{app}.sha256"


def _read_marker(root: Path, app: str) -> str | None:
    try:
        return _marker(root, app).read_text().strip() or None
    except OSError:
        return None


def _write_marker(root: Path, app: str, sha256: str) -> None:
    tmp = _marker(root, app).with_suffix(".tmp")
    tmp.write_text(sha256 + "\n")
    tmp.replace(_marker(root, app))


async def git(*args: str, cwd: Path | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or ["failed"])[-1]
        raise RepoError(f"git {args[0]}: {last}")
    return out.decode(errors="replace")


async def init(path: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        await git("init", "--quiet", "--bare", f"--initial-branch={DEFAULT_BRANCH}", str(tmp))
        shutil.rmtree(tmp / "hooks", ignore_errors=True)  # hooks come from core.hooksPath only
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_members(tar: tarfile.TarFile) -> None:
    """Refuse a tarball that is not a plain tree of directories and regular files."""
    total = 0
    for count, member in enumerate(tar, 1):
        if count > MAX_MEMBERS:
            raise RepoError("the repository archive has too many members")
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts:
            raise RepoError(f"the repository archive has an unsafe path: {member.name[:100]!r}")
        if not (member.isreg() or member.isdir()):
            raise RepoError(f"the repository archive has a member that is not a file: {member.name[:100]!r}")
        total += member.size
        if total > MAX_BYTES:
            raise RepoError("the repository archive is too large")


def extract(archive: Path, dest: Path) -> None:
    """Extract a checked archive into ``dest`` (which must exist and be empty)."""
    with tarfile.open(archive, "r:") as tar:
        check_members(tar)
    with tarfile.open(archive, "r:") as tar:
        for member in tar:
            target = dest.joinpath(*PurePosixPath(member.name).parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True, mode=0o700)
                continue
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            src = tar.extractfile(member)
            if src is None:
                raise RepoError(f"the repository archive has an unreadable member: {member.name[:100]!r}")
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out, src:
                shutil.copyfileobj(src, out, 1 << 16)


def _tar_repo(path: Path, dest: Path) -> None:
    with tarfile.open(dest, "w:", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(path.rglob("*")):
            rel = entry.relative_to(path)
            if rel.parts[0] == "hooks" or entry.is_symlink():
                continue
            if entry.is_dir() or entry.is_file():
                tar.add(entry, arcname=rel.as_posix(), recursive=False)


async def ensure(root: Path, app: str, blobs: Blobstore) -> Path:
    """The app's repository, as current as the blobstore's (created or restored when needed)."""
    path = repo_dir(root, app)
    os.makedirs(root, mode=0o700, exist_ok=True)
    remote = await blobs.head(blob_path(app))
    if remote is None:
        if not (path / "HEAD").exists():
            shutil.rmtree(path, ignore_errors=True)
            await init(path)
        return path
    if remote == _read_marker(root, app) and (path / "HEAD").exists():
        return path
    await restore(root, app, blobs)
    return path


async def restore(root: Path, app: str, blobs: Blobstore) -> None:
    path = repo_dir(root, app)
    work = Path(tempfile.mkdtemp(prefix=f".{app}.restore.", dir=root))
    try:
        archive = work / "repo.tar"
        sha = await blobs.download(blob_path(app), archive)
        if sha is None:
            raise RepoError(f"the blobstore lost {blob_path(app)} while it was being restored")
        tree = work / "repo"
        tree.mkdir(mode=0o700)
        try:
            await asyncio.to_thread(extract, archive, tree)
        except (tarfile.TarError, OSError) as exc:
            raise RepoError(f"cannot restore {app}.git from the blobstore: {exc}") from None
        if not (tree / "HEAD").is_file() or not (tree / "objects").is_dir():
            raise RepoError(f"the blobstore's {blob_path(app)} is not a git repository")
        old = work / "old"
        if path.exists():
            path.rename(old)
        tree.rename(path)
        _write_marker(root, app, sha)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def save(root: Path, app: str, blobs: Blobstore) -> str:
    """Store the repository as the blobstore's tarball; returns its sha256."""
    path = repo_dir(root, app)
    work = Path(tempfile.mkdtemp(prefix=f".{app}.save.", dir=root))
    try:
        archive = work / "repo.tar"
        await asyncio.to_thread(_tar_repo, path, archive)
        stored = await blobs.put_file(blob_path(app), archive, content_type="application/x-tar")
        with contextlib.suppress(OSError):
            _write_marker(root, app, stored.sha256)
        return stored.sha256
    finally:
        shutil.rmtree(work, ignore_errors=True)
