"""Artifacts: safe extraction (nothing escapes the tree, no special files) and the download cache
against a real HTTP server."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from flynn.host.jobs.artifacts import ArtifactError, ArtifactStore, UnsafeArchive, extract_tarball
from flynn.host.jobs.spec import Artifact


def _info(name: str, kind: bytes = tarfile.REGTYPE, **kw: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = 1_700_000_000
    for key, value in kw.items():
        setattr(info, key, value)
    return info


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], *, gz: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, mode=mode), data


def link(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    return _info(name, tarfile.SYMTYPE, linkname=target), None


def test_a_normal_slug_extracts_world_readable_without_special_bits(tmp_path: Path) -> None:
    tar = make_tar(
        tmp_path / "a.tgz",
        [
            (_info("./", tarfile.DIRTYPE, mode=0o700), None),
            file("./app.py", b"print(1)\n", 0o600),
            (_info("./bin", tarfile.DIRTYPE, mode=0o700), None),
            file("./bin/web", b"#!/bin/sh\n", 0o4755),  # setuid: stripped
            link("./bin/python", "../app.py"),
            link("./abs", "/app/app.py"),  # absolute inside /app: where the tree is mounted
            (_info("./hard", tarfile.LNKTYPE, linkname="./app.py"), None),
            file("deep/er/file.txt", b"hi", 0o640),  # parents created implicitly
        ],
    )
    dest = tmp_path / "tree"
    assert extract_tarball(tar, dest) == 8
    assert (dest / "app.py").read_bytes() == b"print(1)\n"
    assert stat.S_IMODE((dest / "app.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "bin/web").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "bin").stat().st_mode) == 0o755
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert os.readlink(dest / "bin/python") == "../app.py"
    assert (dest / "hard").stat().st_ino == (dest / "app.py").stat().st_ino
    assert (dest / "deep/er/file.txt").read_text() == "hi"
    assert int((dest / "app.py").stat().st_mtime) == 1_700_000_000


@pytest.mark.parametrize(
    "members",
    [
        [file("../evil", b"x")],
        [file("a/../../evil", b"x")],
        [file("/etc/evil", b"x")],
        [link("up", "..")],
        [link("esc", "../../../../etc/passwd")],
        [link("abs", "/etc/passwd")],
        [link("d/up", ".."), link("x", "d/up/..")],  # each lexically inside, together outside
        [link("loop1", "loop2"), link("loop2", "loop1")],
        [link("dir", "sub"), (_info("sub", tarfile.DIRTYPE), None), file("dir/x", b"x")],  # via a symlink
        [(_info("h", tarfile.LNKTYPE, linkname="../../etc/passwd"), None)],
        [(_info("h", tarfile.LNKTYPE, linkname="missing"), None)],
        [(_info("dev", tarfile.CHRTYPE, devmajor=1, devminor=3), None)],
        [(_info("blk", tarfile.BLKTYPE, devmajor=7, devminor=0), None)],
        [(_info("fifo", tarfile.FIFOTYPE), None)],
        [(_info("same"), b"x"), (_info("same", tarfile.DIRTYPE), None)],
    ],
    ids=[
        "dotdot", "nested-dotdot", "absolute", "symlink-dotdot", "symlink-far", "symlink-absolute",
        "symlink-chain", "symlink-loop", "write-through-symlink", "hardlink-escape", "hardlink-missing",
        "char-device", "block-device", "fifo", "file-then-dir",
    ],
)  # fmt: skip
def test_unsafe_archives_are_refused_and_leave_nothing(tmp_path: Path, members: list[Any]) -> None:
    victim = tmp_path / "evil"
    tar = make_tar(tmp_path / "bad.tgz", members)
    dest = tmp_path / "out" / "tree"
    with pytest.raises(UnsafeArchive):
        extract_tarball(tar, dest)
    assert not dest.exists()
    assert not victim.exists()
    assert not (tmp_path / "out" / "evil").exists()


def test_size_and_member_limits(tmp_path: Path) -> None:
    tar = make_tar(tmp_path / "big.tar", [file(f"f{i}", b"x" * 100) for i in range(5)], gz=False)
    with pytest.raises(UnsafeArchive, match="expands"):
        extract_tarball(tar, tmp_path / "t1", max_bytes=300)
    with pytest.raises(UnsafeArchive, match="members"):
        extract_tarball(tar, tmp_path / "t2", max_members=3)
    assert extract_tarball(tar, tmp_path / "t3") == 5


def test_not_a_tarball(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"\x1f\x8bnot really gzip" * 10)
    with pytest.raises(ArtifactError):
        extract_tarball(junk, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_a_truncated_tarball(tmp_path: Path) -> None:
    good = make_tar(tmp_path / "g.tar", [file("a", os.urandom(200_000))], gz=False)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[:100_000])
    with pytest.raises(ArtifactError):
        extract_tarball(cut, tmp_path / "t")
    assert not (tmp_path / "t").exists()


# -- the download cache, over real HTTP --------------------------------------------------------


@pytest.fixture
async def served(aiohttp_server: Any, tmp_path: Path) -> tuple[str, dict[str, bytes], list[str]]:
    blobs: dict[str, bytes] = {}
    hits: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        hits.append(name)
        if name not in blobs:
            raise web.HTTPNotFound()
        return web.Response(body=blobs[name])

    app = web.Application()
    app.router.add_get("/{name}", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), blobs, hits


def slug(tmp_path: Path, name: str = "slug.tgz") -> bytes:
    return make_tar(tmp_path / name, [file("./app.py", b"print('hi')\n")]).read_bytes()


async def test_fetch_downloads_verifies_and_caches(tmp_path: Path, served: Any) -> None:
    base, blobs, hits = served
    blobs["s.tgz"] = data = slug(tmp_path)
    store = ArtifactStore(tmp_path / "artifacts")
    art = Artifact("a1", f"{base}/s.tgz", hashlib.sha256(data).hexdigest())
    tree = await store.fetch(art)
    assert (tree / "app.py").read_text() == "print('hi')\n"
    assert store.archive("a1").read_bytes() == data
    assert await store.fetch(art) == tree  # cached: not downloaded again
    assert hits == ["s.tgz"]
    assert not [p for p in store.base.iterdir() if p.name.startswith(".") and ".part" in p.name]


async def test_checksum_mismatch_fails_and_keeps_nothing(tmp_path: Path, served: Any) -> None:
    base, blobs, _ = served
    blobs["s.tgz"] = slug(tmp_path)
    store = ArtifactStore(tmp_path / "artifacts")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        await store.fetch(Artifact("a1", f"{base}/s.tgz", "0" * 64))
    assert not store.tree("a1").exists()
    assert not store.archive("a1").exists()


async def test_a_cached_artifact_with_another_checksum_is_refused(tmp_path: Path, served: Any) -> None:
    base, blobs, _ = served
    blobs["s.tgz"] = slug(tmp_path)
    store = ArtifactStore(tmp_path / "artifacts")
    await store.fetch(Artifact("a1", f"{base}/s.tgz"))
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        await store.fetch(Artifact("a1", f"{base}/s.tgz", "1" * 64))


async def test_http_errors_and_size_limit(tmp_path: Path, served: Any) -> None:
    base, blobs, _ = served
    store = ArtifactStore(tmp_path / "artifacts", max_download=100)
    with pytest.raises(ArtifactError, match="HTTP 404"):
        await store.fetch(Artifact("a1", f"{base}/missing.tgz"))
    blobs["big.tgz"] = os.urandom(1000)
    with pytest.raises(ArtifactError, match="larger than 100"):
        await store.fetch(Artifact("a2", f"{base}/big.tgz"))
    with pytest.raises(ArtifactError, match="cannot download"):
        await store.fetch(Artifact("a3", "http://127.0.0.1:1/x.tgz"))


async def test_an_unsafe_download_is_refused_and_fetched_again_next_time(tmp_path: Path, served: Any) -> None:
    base, blobs, hits = served
    blobs["s.tgz"] = make_tar(tmp_path / "bad.tgz", [link("x", "/etc/passwd")]).read_bytes()
    store = ArtifactStore(tmp_path / "artifacts")
    with pytest.raises(UnsafeArchive):
        await store.fetch(Artifact("a1", f"{base}/s.tgz"))
    assert not store.archive("a1").exists()
    blobs["s.tgz"] = slug(tmp_path, "good.tgz")
    tree = await store.fetch(Artifact("a1", f"{base}/s.tgz"))
    assert (tree / "app.py").exists()
    assert hits == ["s.tgz", "s.tgz"]


async def test_concurrent_fetches_download_once(tmp_path: Path, served: Any) -> None:
    import asyncio

    base, blobs, hits = served
    blobs["s.tgz"] = slug(tmp_path)
    store = ArtifactStore(tmp_path / "artifacts")
    trees = await asyncio.gather(*(store.fetch(Artifact("a1", f"{base}/s.tgz")) for _ in range(5)))
    assert len(set(trees)) == 1
    assert hits == ["s.tgz"]


async def test_prune_removes_unused_old_artifacts_only(tmp_path: Path, served: Any) -> None:
    base, blobs, _ = served
    blobs["s.tgz"] = slug(tmp_path)
    store = ArtifactStore(tmp_path / "artifacts")
    for art_id in ("old", "inuse", "fresh"):
        await store.fetch(Artifact(art_id, f"{base}/s.tgz"))
    day_ago = time.time() - 2 * 86400
    for art_id in ("old", "inuse"):
        os.utime(store.tree(art_id), (day_ago, day_ago))
    removed = store.prune(["inuse"])
    assert removed == ["old"]
    assert not store.tree("old").exists()
    assert not store.archive("old").exists()
    assert not store.digest_file("old").exists()
    assert store.tree("inuse").exists()
    assert store.tree("fresh").exists()
