"""Syslog sinks: RFC 5424 formatting and escaping, octet-counted framing, and the shipper against a
real TCP (and TLS) receiver (tests/syslog_receiver.py, an independent strict parser): delivery,
retry while the receiver is down, the bounded buffer and its drop count."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from flynn.logs import rfc5424, sinks
from flynn.logs.model import Line
from flynn.logs.sinks import BadSink, Shipper, SinkConfig, SinkSet
from tests.syslog_receiver import ParseError, SyslogReceiver, parse, read_frames

TS = 1_700_000_000_123_456  # 2023-11-14T22:13:20.123456Z


def line(msg: str = "hello", **kw: object) -> Line:
    fields: dict[str, object] = {
        "ts": TS,
        "host_id": "host1",
        "app_id": "8c5f7c2e-6a55-4f55-9a14-0d3b1f1b7c11",
        "app_name": "myapp",
        "job_id": "host1-0b5e",
        "type": "web",
        "release_id": "r1",
        "stream": "stdout",
        "priority": 6,
        "msg": msg,
    }
    fields.update(kw)
    return Line(**fields)  # type: ignore[arg-type]


# -- RFC 5424 ----------------------------------------------------------------------------------------


def test_a_line_as_an_rfc5424_message() -> None:
    msg = rfc5424.message(line())
    assert msg == (
        b"<14>1 2023-11-14T22:13:20.123456Z host1 myapp web.host1-0b5e - "
        b'[flynn@32473 app_id="8c5f7c2e-6a55-4f55-9a14-0d3b1f1b7c11" job_id="host1-0b5e" type="web"'
        b' stream="stdout" release_id="r1"] \xef\xbb\xbfhello'
    )
    parsed = parse(msg)
    assert parsed.pri == 14  # user.info
    assert parsed.sd["flynn@32473"]["job_id"] == "host1-0b5e"
    assert parsed.msg == "hello"


def test_stderr_is_user_err_and_sd_values_are_escaped() -> None:
    tricky = 'a "quoted" \\ back]slash'
    out = parse(rfc5424.message(line("boom", stream="stderr", priority=3, release_id=tricky)))
    assert out.pri == 11  # user.err
    assert out.sd["flynn@32473"]["release_id"] == tricky
    assert out.sd["flynn@32473"]["stream"] == "stderr"
    raw = rfc5424.message(line(release_id=tricky))
    assert b'release_id="a \\"quoted\\" \\\\ back\\]slash"' in raw


def test_header_fields_are_printable_ascii_within_their_limits() -> None:
    out = parse(rfc5424.message(line(app_name="my app\u00e9" + "x" * 60, type=None, release_id=None)))
    assert out.app_name == "my_app_" + "x" * 41  # 48 characters, spaces and non-ASCII replaced
    assert out.procid == "host1-0b5e"  # no type: the job id alone
    assert "release_id" not in out.sd["flynn@32473"]
    assert parse(rfc5424.message(line(app_name=None))).app_name == "-"


def test_octet_counting_counts_bytes() -> None:
    msg = rfc5424.message(line("h\u00e9llo \u2603 and a\nnewline"))
    framed = rfc5424.frame(msg)
    assert framed.startswith(str(len(msg)).encode() + b" ")
    buf = bytearray(framed + rfc5424.frame(rfc5424.message(line("second"))) + b"12 partial")
    frames = read_frames(buf)
    assert [parse(f).msg for f in frames] == ["h\u00e9llo \u2603 and a\nnewline", "second"]
    assert bytes(buf) == b"12 partial"  # an incomplete frame waits for its rest
    with pytest.raises(ParseError):
        read_frames(bytearray(b"x12 abc"))


def test_sink_urls() -> None:
    plain = SinkConfig.from_api({"id": "s1", "kind": "syslog", "url": "syslog://logs.example.com:1514"})
    assert (plain.host, plain.port, plain.tls) == ("logs.example.com", 1514, False)
    tls = SinkConfig.from_api({"id": "s2", "kind": "syslog", "url": "syslog+tls://10.0.0.1"})
    assert (tls.host, tls.port, tls.tls) == ("10.0.0.1", 6514, True)
    assert SinkConfig.from_api({"id": "s3", "kind": "syslog", "url": "syslog://h:1", "use_tls": True}).tls
    for bad in (
        {"id": "x", "kind": "http", "url": "syslog://h"},
        {"id": "x", "kind": "syslog", "url": "http://h"},
        7,
    ):
        with pytest.raises(BadSink):
            SinkConfig.from_api(bad)


# -- the shipper against a real receiver ------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[SyslogReceiver]:
    r = SyslogReceiver().start()
    yield r
    r.stop()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks, "MIN_DELAY", 0.05)
    monkeypatch.setattr(sinks, "MAX_DELAY", 0.2)


def config(port: int, **kw: object) -> SinkConfig:
    return SinkConfig.from_api({"id": "s1", "kind": "syslog", "url": f"syslog://127.0.0.1:{port}", **kw})


async def until(what: str, check: object, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_lines_are_delivered_in_order(receiver: SyslogReceiver) -> None:
    shipper = Shipper(config(receiver.port))
    shipper.start()
    try:
        for i in range(1200):
            shipper.offer(line(f"n{i}"))
        await until("1200 messages", lambda: receiver.count() == 1200)
        assert [m.msg for m in receiver.messages] == [f"n{i}" for i in range(1200)]
        await until("the count", lambda: shipper.delivered == 1200)
        status = shipper.status()
        assert status["connected"] is True
        assert (status["dropped"], status["buffered"], status["error"]) == (0, 0, None)
        assert receiver.errors == []
    finally:
        await shipper.stop()


async def test_lines_wait_while_the_receiver_is_down(receiver: SyslogReceiver) -> None:
    shipper = Shipper(config(receiver.port))
    shipper.start()
    try:
        shipper.offer(line("before"))
        await until("the first message", lambda: receiver.count() == 1)
        receiver.stop()  # killed
        await until("the shipper to notice", lambda: not shipper.connected)
        for i in range(50):
            shipper.offer(line(f"during{i}"))
        await asyncio.sleep(0.5)  # a few failed reconnects
        assert shipper.status()["buffered"] == 50
        assert "cannot connect" in (shipper.error or "")
        receiver.start()  # the same port again
        await until("the lines produced meanwhile", lambda: receiver.count() == 51)
        assert [m.msg for m in receiver.messages[1:]] == [f"during{i}" for i in range(50)]
        assert shipper.dropped == 0
        assert receiver.connections == 2
    finally:
        await shipper.stop()


async def test_a_full_buffer_drops_the_oldest_and_counts_them(receiver: SyslogReceiver) -> None:
    receiver.stop()
    shipper = Shipper(config(receiver.port), capacity=100)
    shipper.start()
    try:
        for i in range(130):
            shipper.offer(line(f"l{i}"))
        assert shipper.dropped == 30
        assert shipper.status()["buffered"] == 100
        receiver.start()
        await until("the buffered lines", lambda: receiver.count() == 100)
        assert [m.msg for m in receiver.messages] == [f"l{i}" for i in range(30, 130)]  # the newest 100
        await until("the count", lambda: shipper.delivered == 100)
        assert shipper.status()["dropped"] == 30
    finally:
        await shipper.stop()


def _self_signed(tmp: Path) -> tuple[str, ssl.SSLContext]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "logs.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
            False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    (tmp / "cert.pem").write_text(pem)
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return pem, ctx


async def test_tls_with_a_given_ca(tmp_path: Path) -> None:
    pem, server_ctx = _self_signed(tmp_path)
    receiver = SyslogReceiver(ssl_context=server_ctx).start()
    trusted = Shipper(config(receiver.port, use_tls=True, ca_cert=pem))
    untrusted = Shipper(
        SinkConfig.from_api({"id": "s2", "kind": "syslog", "url": f"syslog+tls://127.0.0.1:{receiver.port}"})
    )
    trusted.start()
    untrusted.start()
    try:
        trusted.offer(line("secret over tls"))
        untrusted.offer(line("never"))
        await until("the TLS message", lambda: receiver.count() == 1)
        assert receiver.messages[0].msg == "secret over tls"
        await until("the untrusted sink's error", lambda: untrusted.error is not None)
        assert "CERTIFICATE_VERIFY_FAILED" in (untrusted.error or "")  # system CAs do not know it
        assert not untrusted.connected
        assert untrusted.status()["buffered"] == 1
    finally:
        await trusted.stop()
        await untrusted.stop()
        receiver.stop()


async def test_the_sink_set_follows_config_and_leadership(receiver: SyslogReceiver) -> None:
    s = SinkSet(capacity=10)
    await s.configure([config(receiver.port)])
    s.offer(line("not leader yet"))  # only the leader ships
    assert s.status()[0]["buffered"] == 0
    await s.activate(True)
    s.offer(line("shipped"))
    s.offer(line("a platform line", system=True, app_id=None, app_name="controller"))
    await until("one message", lambda: receiver.count() == 1)
    assert receiver.messages[0].msg == "shipped"
    await s.configure([])  # removed
    assert s.status() == []
    await s.close()


# -- resuming another leader's position ------------------------------------------------------------


def test_a_record_from_discoverd_is_checked_not_trusted() -> None:
    assert sinks.parse_record({"hosts": {"host1": 5, "host2": "x", "host3": True}, "since": 2}) == (
        {"host1": 5},
        2,
    )
    junk: list[object] = [None, [], {"hosts": {}}, {"hosts": [], "since": 1}, {"hosts": {}, "since": "1"}]
    for entry in junk:
        assert sinks.parse_record(entry) is None


def test_resume_ships_what_was_not_delivered_once_and_oldest_first() -> None:
    shipper = Shipper(config(1), capacity=100)
    queued = line("kept from an earlier leadership", ts=TS + 40)
    shipper.offer(queued)
    backlog = [
        line("delivered already", ts=TS + 10),
        line("h1 after its position", ts=TS + 30),
        line("h2 after since", ts=TS + 25, host_id="host2"),
        line("h2 before since", ts=TS + 5, host_id="host2"),
        line("a platform line", ts=TS + 50, system=True, app_id=None, app_name="controller"),
        queued,
    ]
    assert shipper.resume({"host1": TS + 10}, TS + 20, backlog) == 2
    assert [x.msg for x in shipper.queue] == [queued.msg, "h2 after since", "h1 after its position"]
    assert shipper.positions == {"host1": TS + 10}
    assert shipper.since == TS + 20
    assert shipper.status()["replayed"] == 2


async def test_the_sink_set_records_positions_and_resumes_from_a_record(receiver: SyslogReceiver) -> None:
    backlog = [line("old", ts=TS), line("newer", ts=TS + 1)]
    s = SinkSet(capacity=10, backlog=lambda: backlog)
    await s.configure([config(receiver.port)])
    assert s.record() == {"s1": {"hosts": {}, "since": TS + 1}}  # the buffered lines are not its own
    await s.activate(
        True, {"s1": {"hosts": {"host1": TS}, "since": TS - 1}, "gone": {"hosts": {}, "since": 0}}
    )
    await until("the line the last leader had not delivered", lambda: receiver.count() == 1)
    assert receiver.messages[0].msg == "newer"
    s.offer(line("live", ts=TS + 2, host_id="host2"))
    await until("the live line", lambda: receiver.count() == 2)
    await until("its position", lambda: s.record()["s1"]["hosts"] == {"host1": TS + 1, "host2": TS + 2})
    assert s.record()["s1"]["since"] == TS - 1
    await s.close()
