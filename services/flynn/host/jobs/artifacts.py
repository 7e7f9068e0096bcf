"""Tarball artifacts: downloaded once per artifact id, verified, extracted safely, pruned when unused.

Layout under ``/var/lib/flynn/artifacts``: ``<id>.tar.gz`` (the download) and ``<id>/`` (the tree
bind-mounted read-only at ``/app`` in jobs). Both appear atomically (written under a temporary
name, then renamed), so a half-downloaded or half-extracted artifact is never used.

Extraction (:func:`extract_tarball`) trusts nothing in the archive: absolute paths, ``..`` escapes,
symlinks or hard links pointing outside the tree, device nodes, FIFOs and sockets are refused (the
whole artifact fails); nothing is ever written through a symlink; files end up root-owned,
world-readable, without setuid/setgid/sticky bits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import posixpath
import shutil
import stat
import tarfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import aiohttp

from flynn.host.jobs.spec import Artifact

log = logging.getLogger(__name__)

MAX_DOWNLOAD = 4 << 30  # 4 GiB
MAX_EXTRACTED = 8 << 30
MAX_MEMBERS = 500_000
DOWNLOAD_TIMEOUT = 600.0
PRUNE_AFTER = 24 * 3600.0


class ArtifactError(RuntimeError):
    """The artifact cannot be used (fetch failed, checksum mismatch, unsafe archive)."""


class UnsafeArchive(ArtifactError):
    pass


# -- extraction --------------------------------------------------------------------------------


def _member_path(name: str) -> str:
    """The normalised relative path of a member, or raise for one that would leave the tree."""
    if "\0" in name:
        raise UnsafeArchive(f"member name with a NUL byte: {name!r}")
    if name.startswith("/"):
        raise UnsafeArchive(f"absolute path in archive: {name!r}")
    norm = posixpath.normpath(name)
    if norm == ".":
        return ""
    if norm == ".." or norm.startswith("../"):
        raise UnsafeArchive(f"path escapes the artifact directory: {name!r}")
    return norm


def _link_target_ok(member_rel: str, target: str) -> bool:
    """A symlink is acceptable if what it points to stays inside the tree (``/app/...`` counts as
    inside: that is where the tree is mounted in the job)."""
    if "\0" in target or not target:
        return False
    if target.startswith("/"):
        inside = posixpath.normpath(target)
        return inside == "/app" or inside.startswith("/app/")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member_rel), target))
    return not (resolved == ".." or resolved.startswith("../"))


MAX_LINK_HOPS = 40


def _escapes(root: Path, rel: str) -> bool:
    """Whether the symlink at ``rel`` resolves (following every link, as the kernel would inside the
    job, where the tree is ``/app``) to a place outside the tree. A lexical check per link is not
    enough: ``up -> ..`` plus ``x -> up/..`` are each lexically inside. Dangling links are fine;
    a loop counts as escaping."""
    current: list[str] = list(Path(rel).parent.parts)
    pending: list[str] = list(Path(rel).parts[-1:])
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return True
            current.pop()
            continue
        candidate = root.joinpath(*current, part)
        if not candidate.is_symlink():
            current.append(part)
            continue
        hops += 1
        if hops > MAX_LINK_HOPS:
            return True
        target = os.readlink(candidate)
        if target.startswith("/"):
            inside = posixpath.normpath(target)
            if inside != "/app" and not inside.startswith("/app/"):
                return True
            current = []
            target = inside[len("/app") :].lstrip("/")
        pending = [p for p in target.split("/") if p] + pending
    return False


def link_escapes(root: Path, rel: str) -> bool:
    """The rule above, for flynn-slugbuilder: it checks each slug as hosts will extract it."""
    return _escapes(root, rel)


def _safe_parent(root: Path, rel: str) -> Path:
    """The real parent directory of ``rel`` inside ``root``, creating missing directories; raises
    if any component on the way is not a real directory (e.g. a symlink planted by the archive)."""
    parent = root
    for part in Path(rel).parent.parts:
        parent = parent / part
        try:
            st = parent.lstat()
        except FileNotFoundError:
            parent.mkdir(mode=0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeArchive(f"{rel!r} would be written through a non-directory {part!r}")
    return parent


def _clear(dest: Path) -> None:
    """A later member of the same name replaces an earlier file or link (tar semantics)."""
    try:
        st = dest.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise UnsafeArchive(f"{dest.name!r} is both a directory and a file in the archive")
    dest.unlink()


def _mode(member_mode: int, *, directory: bool = False) -> int:
    if directory:
        return 0o755
    return 0o755 if member_mode & 0o111 else 0o644


def extract_tarball(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int = MAX_EXTRACTED,
    max_members: int = MAX_MEMBERS,
) -> int:
    """Extract ``archive`` (tar, optionally gzip/bzip2/xz) into the new directory ``dest``.

    Returns the number of members extracted. Raises :class:`UnsafeArchive` (and leaves nothing at
    ``dest``) for anything unsafe, :class:`ArtifactError` for a corrupt archive."""
    if dest.exists():
        raise ArtifactError(f"{dest} already exists")
    dest.mkdir(mode=0o755, parents=True)
    try:
        count = _extract_into(archive, dest, max_bytes, max_members)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return count


def _extract_into(archive: Path, root: Path, max_bytes: int, max_members: int) -> int:
    try:
        tar = tarfile.open(archive, mode="r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArtifactError(f"not a readable tar archive: {exc}") from None
    extractor = _Extractor(tar, root, max_bytes, max_members)
    with tar:
        try:
            for member in tar:
                extractor.add(member)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArtifactError(f"corrupt or unreadable archive: {exc}") from None
    extractor.finish()
    return extractor.count


class _Extractor:
    """Writes one archive's members under ``root``, refusing anything unsafe (module docstring)."""

    def __init__(self, tar: tarfile.TarFile, root: Path, max_bytes: int, max_members: int) -> None:
        self.tar = tar
        self.root = root
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.count = 0
        self.total = 0
        self.dir_times: list[tuple[Path, float]] = []
        self.links: list[str] = []

    def add(self, member: tarfile.TarInfo) -> None:
        self.count += 1
        if self.count > self.max_members:
            raise UnsafeArchive(f"archive has more than {self.max_members} members")
        rel = _member_path(member.name)
        if not rel:
            return  # "." itself
        kinds = (member.isfile(), member.isdir(), member.issym(), member.islnk())
        if member.isdev() or member.isfifo() or not any(kinds):
            raise UnsafeArchive(f"special file in archive: {member.name!r}")
        target = _safe_parent(self.root, rel) / Path(rel).name
        if member.isdir():
            self._directory(member, target)
        elif member.issym():
            self._symlink(member, rel, target)
        elif member.islnk():
            self._hardlink(member, target)
        else:
            self._file(member, target)

    def _directory(self, member: tarfile.TarInfo, target: Path) -> None:
        try:
            st = target.lstat()
        except FileNotFoundError:
            target.mkdir(mode=0o755)
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeArchive(f"{member.name!r} is both a directory and a file")
        os.chmod(target, 0o755, follow_symlinks=False)  # noqa: S103 - world-readable by design
        self.dir_times.append((target, member.mtime))

    def _symlink(self, member: tarfile.TarInfo, rel: str, target: Path) -> None:
        if not _link_target_ok(rel, member.linkname):
            raise UnsafeArchive(f"symlink {member.name!r} -> {member.linkname!r} points outside the artifact")
        _clear(target)
        os.symlink(member.linkname, target)
        self.links.append(rel)

    def _hardlink(self, member: tarfile.TarInfo, target: Path) -> None:
        link_rel = _member_path(member.linkname)
        source = self.root / link_rel
        try:
            src_st = source.lstat()
        except FileNotFoundError:
            raise UnsafeArchive(
                f"hard link {member.name!r} -> {member.linkname!r} to a missing file"
            ) from None
        if not stat.S_ISREG(src_st.st_mode) or _safe_parent(self.root, link_rel) != source.parent:
            raise UnsafeArchive(f"hard link {member.name!r} -> {member.linkname!r} is not allowed")
        _clear(target)
        os.link(source, target, follow_symlinks=False)

    def _file(self, member: tarfile.TarInfo, target: Path) -> None:
        self.total += member.size
        if self.total > self.max_bytes:
            raise UnsafeArchive(f"archive expands to more than {self.max_bytes} bytes")
        _clear(target)
        src = self.tar.extractfile(member)
        if src is None:
            raise ArtifactError(f"cannot read {member.name!r}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            os.fchmod(out.fileno(), _mode(member.mode))
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)

    def finish(self) -> None:
        for link in self.links:
            if _escapes(self.root, link):
                raise UnsafeArchive(f"symlink {link!r} resolves outside the artifact")
        for path, mtime in reversed(self.dir_times):
            with contextlib.suppress(OSError):
                os.utime(path, (mtime, mtime), follow_symlinks=False)
        os.chmod(self.root, 0o755)  # noqa: S103 - world-readable by design (DynamicUser jobs read it)


# -- download and cache ------------------------------------------------------------------------


class ArtifactStore:
    """The host's artifact cache. :meth:`fetch` is safe to call concurrently for the same id."""

    def __init__(
        self,
        base: Path,
        *,
        session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
        max_download: int = MAX_DOWNLOAD,
        timeout: float = DOWNLOAD_TIMEOUT,
    ) -> None:
        self.base = base
        self._session_factory = session_factory
        self._locks: dict[str, asyncio.Lock] = {}
        self.max_download = max_download
        self.timeout = timeout

    def tree(self, artifact_id: str) -> Path:
        return self.base / artifact_id

    def archive(self, artifact_id: str) -> Path:
        return self.base / f"{artifact_id}.tar.gz"

    def digest_file(self, artifact_id: str) -> Path:
        return self.base / f"{artifact_id}.sha256"

    def _known_digest(self, artifact_id: str) -> str | None:
        try:
            return self.digest_file(artifact_id).read_text().strip() or None
        except OSError:
            return None

    async def fetch(self, artifact: Artifact) -> Path:
        """The extracted tree of ``artifact``, downloading and extracting it if needed."""
        lock = self._locks.setdefault(artifact.id, asyncio.Lock())
        async with lock:
            tree = self.tree(artifact.id)
            archive = self.archive(artifact.id)
            known = self._known_digest(artifact.id)
            if artifact.sha256 and known and known != artifact.sha256:
                raise ArtifactError(
                    f"sha256 mismatch for artifact {artifact.id}: expected {artifact.sha256}, "
                    f"the host has it with {known}"
                )
            if tree.is_dir() and known:
                self.touch(artifact.id)
                return tree
            self.base.mkdir(mode=0o755, parents=True, exist_ok=True)
            if not archive.exists() or not known:
                known = await self._download(artifact, archive)
            tmp = self.base / f".{artifact.id}.extract-{os.getpid()}-{time.monotonic_ns()}"
            try:
                await asyncio.to_thread(extract_tarball, archive, tmp)
                if tree.exists():  # a leftover without its digest file
                    await asyncio.to_thread(shutil.rmtree, tree, True)
                os.rename(tmp, tree)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                for leftover in (archive, self.digest_file(artifact.id)):
                    with contextlib.suppress(OSError):
                        leftover.unlink()  # a bad archive is fetched again next time
                raise
            self.touch(artifact.id)
            log.info("artifact %s ready in %s", artifact.id, tree)
            return tree

    async def _download(self, artifact: Artifact, dest: Path) -> str:
        """Stream ``artifact`` to ``dest``, verifying its sha256 when given; returns the digest."""
        tmp = dest.with_name(f".{dest.name}.part-{time.monotonic_ns()}")
        digest = hashlib.sha256()
        size = 0
        try:
            async with (
                self._session_factory() as session,
                session.get(
                    artifact.uri, timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=10)
                ) as resp,
            ):
                if resp.status != 200:
                    raise ArtifactError(
                        f"GET {artifact.uri}: HTTP {resp.status} {resp.reason or ''}".rstrip()
                    )
                if resp.content_length is not None and resp.content_length > self.max_download:
                    raise ArtifactError(f"artifact is larger than {self.max_download} bytes")
                out = await asyncio.to_thread(open, tmp, "wb")
                try:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        size += len(chunk)
                        if size > self.max_download:
                            raise ArtifactError(f"artifact is larger than {self.max_download} bytes")
                        digest.update(chunk)
                        await asyncio.to_thread(out.write, chunk)
                    await asyncio.to_thread(os.fsync, out.fileno())
                finally:
                    out.close()
            got = digest.hexdigest()
            if artifact.sha256 and got != artifact.sha256:
                raise ArtifactError(
                    f"sha256 mismatch for artifact {artifact.id}: expected {artifact.sha256}, got {got}"
                )
            os.chmod(tmp, 0o644)
            os.rename(tmp, dest)
            digest_tmp = self.digest_file(artifact.id).with_suffix(".tmp")
            digest_tmp.write_text(got + "\n")
            os.rename(digest_tmp, self.digest_file(artifact.id))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ArtifactError(f"cannot download {artifact.uri}: {exc or type(exc).__name__}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        log.info("downloaded artifact %s (%d bytes, sha256 %s)", artifact.id, size, got)
        return got

    def touch(self, artifact_id: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.tree(artifact_id))

    def prune(self, in_use: Iterable[str], *, older_than: float = PRUNE_AFTER) -> list[str]:
        """Remove artifacts not used by a live job and not used for ``older_than`` seconds (the
        tree's mtime is its last use, see :meth:`touch`); returns the removed ids."""
        keep = set(in_use)
        if not self.base.is_dir():
            return []
        now = time.time()
        by_id: dict[str, list[Path]] = {}
        for entry in self.base.iterdir():
            name = entry.name
            if name.startswith("."):
                # leftovers of an interrupted download/extraction (never in use once we run)
                if (".part-" in name or ".extract-" in name) and now - entry.lstat().st_mtime > 3600:
                    _remove(entry)
                continue
            by_id.setdefault(name.removesuffix(".tar.gz").removesuffix(".sha256"), []).append(entry)
        removed: list[str] = []
        for art_id, entries in sorted(by_id.items()):
            if art_id in keep:
                continue
            tree = self.tree(art_id)
            try:
                last = tree.stat().st_mtime if tree.is_dir() else max(e.lstat().st_mtime for e in entries)
            except OSError:
                continue
            if now - last > older_than:
                for entry in entries:
                    _remove(entry)
                removed.append(art_id)
        return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
