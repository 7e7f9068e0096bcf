"""The router's TLS connection (flynn.router.tlsconn.TLSConn) driven byte by byte: a real
OpenSSL client (an SSLObject over memory BIOs) on one side, a recording socket transport and a
recording HTTP protocol on the other. The real-socket paths (openssl s_client, curl --http2,
websockets over TLS) are in test_router_tls.py and test_router_tunnels.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import ssl
from pathlib import Path
from typing import Any

import pytest

from flynn.router.stats import Stats
from flynn.router.timeouts import Reaper
from flynn.router.tlsconn import TLSConn
from tests.unit.router_helpers import make_ca


class Socket:
    """The TCP transport under a TLSConn: records what it is asked to do."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.7", 40000) if name == "peername" else default

    # (methods, not attributes, in the asserts: what they report changes under mypy's feet)
    def is_reading(self) -> bool:
        return self.reading

    def was_closed(self) -> bool:
        return self.closed

    def was_aborted(self) -> bool:
        return self.aborted

    def take(self) -> bytes:
        out = b"".join(self.sent)
        self.sent.clear()
        return out


class App:
    """The HTTP protocol above: records the plaintext; may pause reading after each piece."""

    def __init__(self, *, pause_after_data: bool = False, keep_open_on_eof: bool = False) -> None:
        self.transport: Any = None
        self.data = bytearray()
        self.pieces = 0
        self.eofs = 0
        self.lost: list[Exception | None] = []
        self.pause_after_data = pause_after_data
        self.keep_open_on_eof = keep_open_on_eof

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.pieces += 1
        if self.pause_after_data:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eofs += 1
        return self.keep_open_on_eof

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


class Pair:
    """A client SSLObject and a TLSConn joined by hand-carried bytes."""

    def __init__(self, tmp: Path, app: App, *, handshake_timeout: float = 10.0) -> None:
        ca = make_ca(tmp)
        leaf = ca.issue("tls.example.test")
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert, key = tmp / "leaf.pem", tmp / "leaf.key"
        cert.write_text(leaf.cert_pem)
        key.write_text(leaf.key_pem)
        self.server_ctx.load_cert_chain(cert, key)
        self.server_ctx.set_alpn_protocols(["h2", "http/1.1"])
        client_ctx = ssl.create_default_context(cafile=str(ca.path))
        client_ctx.set_alpn_protocols(["http/1.1"])
        self.c_in, self.c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client_ctx.wrap_bio(self.c_in, self.c_out, server_hostname="tls.example.test")
        self.loop = asyncio.get_running_loop()
        self.clock = Reaper(self.loop, 0.1, 60.0, list)
        self.stats = Stats()
        self.app = app
        self.chosen: list[str | None] = []
        self.closed = False
        self.conn = TLSConn(self.server_ctx, self._choose, self.clock, self.stats, handshake_timeout)
        self.sock = Socket()
        self.conn.connection_made(self.sock)

    def _choose(self, sslobj: ssl.SSLObject) -> App:
        self.chosen.append(sslobj.selected_alpn_protocol())
        return self.app

    def to_server(self, data: bytes, splits: list[int] | None = None) -> None:
        """Feed ``data`` to the TLSConn, cut at the given offsets (one data_received each)."""
        cuts = [0, *(splits or []), len(data)]
        for lo, hi in itertools.pairwise(cuts):
            if hi > lo:
                self.conn.data_received(data[lo:hi])

    def to_client(self) -> None:
        out = self.sock.take()
        if out:
            self.c_in.write(out)

    async def settle(self) -> None:
        """Let the TLSConn's deferred sends run, and carry them to the client."""
        for _ in range(3):
            await asyncio.sleep(0)
        self.to_client()

    async def handshake(self) -> None:
        for _ in range(10):
            try:
                self.client.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                break
            self.to_server(self.c_out.read())
            await self.settle()
        self.to_server(self.c_out.read())  # the client's Finished, if still queued
        await self.settle()
        assert self.chosen == ["http/1.1"]

    def records(self, *messages: bytes) -> bytes:
        """The client's TLS records of ``messages`` (one or more records each)."""
        for m in messages:
            self.client.write(m)
        return self.c_out.read()

    def client_reads(self) -> bytes:
        """Plaintext the client got; ``closed`` tells whether a close_notify came after it."""
        out = bytearray()
        while True:
            try:
                out += self.client.read(65536)
            except ssl.SSLWantReadError:
                return bytes(out)
            except ssl.SSLZeroReturnError:
                self.closed = True
                return bytes(out)


MESSAGES = [b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(40)] + [b"x" * 40000, b"y"]


@pytest.mark.parametrize("seed", range(6))
async def test_plaintext_arrives_whole_and_in_order_however_the_stream_is_cut(
    tmp_path: Path, seed: int
) -> None:
    pair = Pair(tmp_path, App())
    await pair.handshake()
    stream = pair.records(*MESSAGES)
    rnd = random.Random(seed)
    # cuts anywhere: inside record headers (1-4 bytes), inside bodies, several records at once
    splits = sorted(rnd.sample(range(1, len(stream)), 60)) if seed else list(range(1, len(stream)))
    pair.to_server(stream, splits)
    assert bytes(pair.app.data) == b"".join(MESSAGES)
    # one read per record that carries data: 40 small ones + 3 for the 40 kB message + 1, and
    # no read() while only part of a record was there (each would have raised SSLWantReadError)
    assert pair.app.pieces == 44
    assert pair.conn.empty_reads == 0


async def test_many_records_in_one_read_are_all_delivered(tmp_path: Path) -> None:
    pair = Pair(tmp_path, App())
    await pair.handshake()
    pair.to_server(pair.records(*MESSAGES))
    assert bytes(pair.app.data) == b"".join(MESSAGES)


async def test_pause_reading_keeps_the_records_until_resume(tmp_path: Path) -> None:
    pair = Pair(tmp_path, App(pause_after_data=True))
    await pair.handshake()
    pair.to_server(pair.records(b"one", b"two", b"three"))
    assert bytes(pair.app.data) == b"one"
    assert not pair.sock.is_reading()
    pair.conn.resume_reading()
    assert pair.sock.is_reading()
    await asyncio.sleep(0)  # the held records are decrypted on the next loop iteration
    assert bytes(pair.app.data) == b"onetwo"
    pair.conn.resume_reading()
    await asyncio.sleep(0)
    assert bytes(pair.app.data) == b"onetwothree"


async def test_writes_of_one_loop_iteration_leave_in_one_send(tmp_path: Path) -> None:
    pair = Pair(tmp_path, App())
    await pair.handshake()
    pair.conn.write(b"HTTP/1.1 200 OK\r\n")
    buf = bytearray(b"Content-Length: 2\r\n\r\n")
    pair.conn.write(buf)
    buf[:7] = b"changed"  # the caller's buffer, reused: what was written is kept as it was
    pair.conn.write(memoryview(b"ok"))
    assert pair.sock.sent == []  # nothing sent yet
    assert pair.conn.get_write_buffer_size() > 0
    await asyncio.sleep(0)
    assert len(pair.sock.sent) == 1
    # and encrypted together: one TLS record (5-byte headers: type, version, length)
    sent, records, pos = pair.sock.sent[0], 0, 0
    while pos < len(sent):
        records += 1
        pos += 5 + int.from_bytes(sent[pos + 3 : pos + 5], "big")
    assert records == 1
    pair.to_client()
    assert pair.client_reads() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_client_close_notify_is_an_eof_and_close_sends_ours(tmp_path: Path) -> None:
    pair = Pair(tmp_path, App(keep_open_on_eof=True))
    await pair.handshake()
    pair.to_server(pair.records(b"last request"))
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.unwrap()  # sends close_notify, waits for ours
    pair.to_server(pair.c_out.read())
    assert pair.app.eofs == 1
    assert not pair.sock.was_closed()  # the app still has an answer to write
    pair.conn.write(b"answer")
    pair.conn.close()
    assert pair.sock.was_closed()
    pair.to_client()
    assert pair.client_reads() == b"answer"
    assert pair.closed  # and our close_notify after it
    pair.conn.connection_lost(None)
    assert pair.app.lost == [None]


async def test_fin_without_close_notify_is_an_eof(tmp_path: Path) -> None:
    pair = Pair(tmp_path, App())
    await pair.handshake()
    pair.to_server(pair.records(b"partial"))
    assert pair.conn.eof_received() is False  # the app does not keep it open: closed
    assert pair.app.eofs == 1
    assert pair.sock.was_closed()


async def test_a_fin_while_reading_is_paused_comes_after_the_held_records(tmp_path: Path) -> None:
    pair = Pair(tmp_path, App(pause_after_data=True, keep_open_on_eof=True))
    await pair.handshake()
    pair.to_server(pair.records(b"one", b"two"))
    assert pair.conn.eof_received() is True  # the socket stays half-open for the answer
    assert pair.app.eofs == 0  # "two" is still waiting: no EOF before it
    pair.conn.resume_reading()
    await asyncio.sleep(0)
    assert bytes(pair.app.data) == b"onetwo"
    assert pair.app.eofs == 0  # the app paused again after "two": the EOF waits too
    pair.conn.resume_reading()
    await asyncio.sleep(0)
    assert pair.app.eofs == 1


async def test_garbage_instead_of_a_handshake_is_closed_and_counted(tmp_path: Path) -> None:
    pair = Pair(tmp_path, App())
    pair.conn.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert pair.sock.was_closed()
    assert pair.stats.tls_handshake_errors == 1
    assert pair.chosen == []  # no HTTP protocol was ever made
    pair.conn.connection_lost(None)
    assert pair.app.lost == []


async def test_garbage_after_the_handshake_aborts(tmp_path: Path) -> None:
    pair = Pair(tmp_path, App())
    await pair.handshake()
    pair.to_server(b"\x17\x03\x03\x00\x20" + bytes(32))  # an application record that fails its MAC
    assert pair.sock.was_aborted()


async def test_a_handshake_that_does_not_finish_is_timed_out_by_the_reaper(tmp_path: Path) -> None:
    pair = Pair(tmp_path, App(), handshake_timeout=5.0)
    assert pair.conn in pair.clock.watched
    assert pair.conn.deadline == pytest.approx(pair.clock.now + 5.0)
    with contextlib.suppress(ssl.SSLWantReadError):
        pair.client.do_handshake()
    hello = pair.c_out.read()
    pair.to_server(hello[:10])  # then nothing more
    pair.conn.timed_out()
    assert pair.sock.was_aborted()
    assert pair.stats.tls_handshake_errors == 1
    assert pair.stats.timeouts == 1


async def test_a_finished_handshake_leaves_the_reaper(tmp_path: Path) -> None:
    pair = Pair(tmp_path, App(), handshake_timeout=5.0)
    await pair.handshake()
    assert pair.conn not in pair.clock.watched
    assert pair.conn.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    assert pair.conn.get_extra_info("peername") == ("192.0.2.7", 40000)
    assert pair.conn.can_write_eof() is False
