"""The real ``flynn-blobstore`` process: readiness, bounded memory on 200 MB blobs, crashes, discoverd.

Memory: the daemon's peak RSS (``VmHWM``, reset through ``/proc/PID/clear_refs`` just before each
transfer) minus its RSS before the transfer must stay well below the blob's size.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from flynn.discoverd.client import Client as DiscoverdClient
from tests.pg import PostgresServer, free_port
from tests.unit.blobstore_pg import (
    BlobstoreProcess,
    count_rows,
    proc_status,
    reset_peak_rss,
    wait_until,
    writing_sessions,
)
from tests.unit.discoverd_local import LocalCluster, free_port_pair

MiB = 1 << 20
BIG = 200 * MiB
RSS_BOUND = 64 * MiB


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer(role="blobstore") as server:
        yield server


@pytest.fixture
async def daemon(pg: PostgresServer, tmp_path: Path) -> AsyncIterator[BlobstoreProcess]:
    proc = BlobstoreProcess(tmp_path, {"DATABASE_URL": pg.create_database()})
    proc.start()
    try:
        await proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def password(url: str) -> str:
    return url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]


class RandomBody:
    """``size`` random bytes in odd-sized pieces, hashed as they are produced."""

    def __init__(self, size: int, piece: int = 200_003) -> None:
        self.size = size
        self.piece = piece
        self.sha = hashlib.sha256()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.size:
            data = os.urandom(min(self.piece, self.size - sent))
            self.sha.update(data)
            sent += len(data)
            yield data


async def test_ready_status_and_clean_stop(daemon: BlobstoreProcess) -> None:
    assert any(n.startswith("STATUS=serving :") for n in daemon.notifications)
    async with aiohttp.ClientSession() as http, http.get(daemon.url + "/status") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "healthy", "backend": "postgres", "name": "postgres"}
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit() == 0
    daemon._drain_notify()
    assert "STOPPING=1" in daemon.notifications
    assert "applied blobstore migration 0001_initial" in daemon.log()


async def test_200mb_put_and_get_keep_memory_bounded(daemon: BlobstoreProcess, pg: PostgresServer) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        # warm up (pools, buffers, code paths) so the baseline is the steady state
        warm = RandomBody(4 * MiB)
        async with http.put(daemon.url + "/warm", data=warm.__aiter__()) as resp:
            assert resp.status == 201
        async with http.get(daemon.url + "/warm") as resp:
            assert hashlib.sha256(await resp.read()).hexdigest() == warm.sha.hexdigest()

        base = proc_status(daemon.pid)["VmRSS"]
        reset_peak_rss(daemon.pid)
        body = RandomBody(BIG)
        async with http.put(daemon.url + "/slugs/big/r1.tgz", data=body.__aiter__()) as resp:
            assert resp.status == 201, await resp.text()
            info = await resp.json()
        put_growth = proc_status(daemon.pid)["VmHWM"] - base
        assert info["size"] == BIG
        assert info["sha256"] == body.sha.hexdigest()

        base = proc_status(daemon.pid)["VmRSS"]
        reset_peak_rss(daemon.pid)
        got = hashlib.sha256()
        received = 0
        async with http.get(daemon.url + "/slugs/big/r1.tgz") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(BIG)
            async for piece in resp.content.iter_chunked(256 * 1024):
                got.update(piece)
                received += len(piece)
        get_growth = proc_status(daemon.pid)["VmHWM"] - base
    assert received == BIG
    assert got.hexdigest() == body.sha.hexdigest()
    print(f"blobstore RSS growth: PUT 200 MiB {put_growth / MiB:.1f} MiB, GET {get_growth / MiB:.1f} MiB")
    assert put_growth < RSS_BOUND, f"PUT grew the RSS by {put_growth / MiB:.1f} MiB"
    assert get_growth < RSS_BOUND, f"GET grew the RSS by {get_growth / MiB:.1f} MiB"


async def test_crash_mid_put_leaves_the_old_version(pg: PostgresServer, tmp_path: Path) -> None:
    url = pg.create_database()
    proc = BlobstoreProcess(tmp_path, {"DATABASE_URL": url})
    proc.start()
    try:
        await proc.wait_ready()
        old = os.urandom(2 * MiB + 1)
        async with aiohttp.ClientSession() as http:
            async with http.put(proc.url + "/c", data=old) as resp:
                assert resp.status == 201
            _reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
            writer.write(f"PUT /c HTTP/1.1\r\nHost: x\r\nContent-Length: {64 * MiB}\r\n\r\n".encode())
            writer.write(os.urandom(5 * MiB))
            await writer.drain()
            await wait_until(lambda: writing_sessions(pg, url) == 1, "the replacing upload to write")
            proc.signal(signal.SIGKILL)
            assert await proc.wait_exit() == -signal.SIGKILL
            writer.transport.abort()
            await wait_until(lambda: writing_sessions(pg, url) == 0, "PostgreSQL to roll the upload back")
            assert count_rows(pg, url) == (1, 3)

            proc.start()  # a restart finds the schema in place and the old version whole
            proc.notifications.clear()
            await proc.wait_ready()
            async with http.get(proc.url + "/c") as resp:
                assert resp.status == 200
                assert await resp.read() == old
    finally:
        proc.stop()


async def test_database_password_never_logged(pg: PostgresServer, tmp_path: Path) -> None:
    good = pg.create_database()
    wrong = good.replace(password(good), "Wr0ng-Passw0rd-xyz")
    proc = BlobstoreProcess(tmp_path, {"DATABASE_URL": wrong, "BLOBSTORE_DB_WAIT": "1"})
    proc.start()
    try:
        assert await proc.wait_exit() == 1
    finally:
        proc.stop()
    log = proc.log()
    assert "password authentication failed" in log or "cannot reach the database" in log
    assert "Wr0ng-Passw0rd-xyz" not in log

    proc = BlobstoreProcess(tmp_path, {"DATABASE_URL": good, "FLYNN_LOG_LEVEL": "DEBUG"})
    proc.start()
    try:
        await proc.wait_ready()
        async with aiohttp.ClientSession() as http, http.put(proc.url + "/x", data=b"1") as resp:
            assert resp.status == 201
    finally:
        proc.stop()
    assert "stored /x" in proc.log()
    assert password(good) not in proc.log()


async def test_bad_configuration_is_one_line_and_exit_1(tmp_path: Path) -> None:
    proc = BlobstoreProcess(
        tmp_path,
        {
            "DATABASE_URL": "postgresql://u:pw-0123456@127.0.0.1:1/db",
            "BACKEND_S3MAIN": "backend=s3 region=r bucket=b secret_access_key=TOPSECRET1",
        },
    )
    proc.start()
    try:
        assert await proc.wait_exit() == 1
    finally:
        proc.stop()
    lines = [line for line in proc.log().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "BACKEND_S3MAIN: backend=s3 is not built yet" in lines[0]
    assert "TOPSECRET1" not in lines[0]


async def test_registers_in_discoverd_once_it_is_up(pg: PostgresServer, tmp_path: Path) -> None:
    raft_port, http_port = free_port_pair()
    port = free_port()
    proc = BlobstoreProcess(
        tmp_path,
        {
            "DATABASE_URL": pg.create_database(),
            "BLOBSTORE_PORT": str(port),
            "BLOBSTORE_ADDR": "127.0.0.1",
            "DISCOVERD": f"http://127.0.0.1:{http_port}",
        },
    )
    proc.start()
    cluster = LocalCluster(tmp_path / "discoverd", raft_port, http_port)
    try:
        await proc.wait_ready()  # ready without discoverd: registration retries in the background
        await cluster.start(1)
        async with DiscoverdClient(f"http://127.0.0.1:{http_port}") as client:

            async def registered() -> bool:
                try:
                    instances = await client.instances("blobstore")
                except Exception:
                    return False
                return any(i["addr"] == f"127.0.0.1:{port}" for i in instances)

            await wait_until(registered, "blobstore in discoverd", timeout=60)
            (inst,) = await client.instances("blobstore")
            assert inst["meta"] == {"backend": "postgres"}

            proc.signal(signal.SIGTERM)
            assert await proc.wait_exit() == 0
            assert await client.instances("blobstore") == []  # deregistered at stop
    finally:
        proc.stop()
        await cluster.stop()
