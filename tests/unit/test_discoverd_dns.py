"""discoverd's DNS server, queried with the real ``dig`` (dnsutils) over UDP and TCP on 127.0.0.1.

The server runs on its own uvloop event loop in a thread, as in discoverd, so ``invalidate()`` is
called from another thread here too. Upstream recursors are small dnslib servers on 127.0.0.1.
Every test ends by checking that the server counted no internal error and its loop logged none.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSRecord  # type: ignore[import-untyped]

from flynn.common.errors import ConfigError
from flynn.discoverd.dns import (
    DNSServer,
    SourceUnavailable,
    addr_label,
    parse_upstream,
    upstreams_from_resolv_conf,
)

# --- fixtures and helpers ----------------------------------------------------------------------


class FakeSource:
    """A RecordSource the tests change at will (under a lock: the server reads it on its own thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.instances: dict[str, list[tuple[str, int]]] = {
            "web": [("10.0.0.1", 8080), ("10.0.0.2", 8081), ("10.0.0.3", 8082)],
            "v6": [("fd00::1", 80), ("fd00::2", 81)],
            "mixed": [("10.1.0.1", 80), ("fd00::9", 80), ("10.1.0.1", 81)],
            "empty": [],
            "big": [(f"10.9.{i // 200}.{i % 200 + 1}", 7000) for i in range(100)],
            "mid": [(f"10.8.0.{i + 1}", 7000) for i in range(40)],
        }
        self.leaders: dict[str, tuple[str, int]] = {"web": ("10.0.0.2", 8081), "v6": ("fd00::1", 80)}
        self.calls = 0
        self.on_call: Callable[[str], None] | None = None

    def dns_instances(self, service: str) -> list[tuple[str, int]] | None:
        with self.lock:
            self.calls += 1
            found = self.instances.get(service)
            found = None if found is None else list(found)
        if self.on_call is not None:  # after the read: what is returned is already stale
            self.on_call(service)
        return found

    def dns_leader(self, service: str) -> tuple[str, int] | None:
        with self.lock:
            return self.leaders.get(service)


class ServerThread:
    """A DNSServer on its own uvloop loop in a background thread."""

    def __init__(self, source: FakeSource, **kwargs: Any) -> None:
        kwargs.setdefault("port", 0)
        self.server = DNSServer(source, **kwargs)
        self.loop = uvloop.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        self.call(self.server.start())
        return self

    def call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout=15)

    @property
    def port(self) -> int:
        return self.server.port

    def __exit__(self, *exc: object) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def check_healthy(srv: ServerThread) -> None:
    assert srv.loop_errors == []
    assert srv.server.counters.errors == 0


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def dns(source: FakeSource) -> Iterator[ServerThread]:
    with ServerThread(source) as srv:
        yield srv
        check_healthy(srv)


@dataclass
class Dig:
    status: str
    flags: set[str]
    question: list[str]
    answer: list[tuple[str, int, str, str]] = field(default_factory=list)
    authority: list[tuple[str, int, str, str]] = field(default_factory=list)
    additional: list[tuple[str, int, str, str]] = field(default_factory=list)
    opt: str = ""
    transport: str = ""
    raw: str = ""

    def data(self, section: str = "answer") -> list[str]:
        return [rec[3] for rec in getattr(self, section)]


def dig(port: int, *args: str, host: str = "127.0.0.1") -> Dig:
    argv = ["dig", f"@{host}", "-p", str(port), "+tries=1", "+time=3", *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout
    status = re.search(r"status: (\w+)", out)
    flags = re.search(r";; flags: ([a-z ]*);", out)
    transport = re.search(r";; SERVER: .*\((UDP|TCP)\)", out)
    result = Dig(
        status=status.group(1) if status else f"NO ANSWER: {out}",
        flags=set(flags.group(1).split()) if flags else set(),
        question=[],
        transport=transport.group(1) if transport else "",
        raw=out,
    )
    section = ""
    for line in out.splitlines():
        m = re.match(r";; (\w+) SECTION:", line)
        if m:
            section = m.group(1).lower()
            continue
        if line.startswith("; EDNS:"):
            result.opt = line
        if not line.strip():
            section = ""
            continue
        if section == "question":
            result.question.append(" ".join(line.lstrip(";").split()))
        elif section in ("answer", "authority", "additional") and not line.startswith(";"):
            name, ttl, _cls, rtype, *rest = line.split()
            getattr(result, section).append((name, int(ttl), rtype, " ".join(rest)))
    return result


def query_bytes(
    name: str, qtype: str = "A", *, qid: int = 0x1234, edns: bool = False, rd: bool = True
) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    q.header.rd = int(rd)
    if edns:
        q.add_ar(EDNS0(udp_len=1232))
    return bytes(q.pack())


def udp_ask(port: int, packet: bytes, timeout: float = 3.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, ("127.0.0.1", port))
        return sock.recv(65535)


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


# --- zone answers with dig ---------------------------------------------------------------------


def test_a_records_are_every_instance_oldest_first(dns: ServerThread) -> None:
    r = dig(dns.port, "web.discoverd", "A")
    assert r.status == "NOERROR"
    assert {"qr", "aa"} <= r.flags
    assert "ra" not in r.flags  # no upstream configured: no recursion offered
    assert r.answer == [
        ("web.discoverd.", 5, "A", "10.0.0.1"),
        ("web.discoverd.", 5, "A", "10.0.0.2"),
        ("web.discoverd.", 5, "A", "10.0.0.3"),
    ]
    assert r.authority == []


def test_aaaa_and_mixed_families(dns: ServerThread) -> None:
    r = dig(dns.port, "v6.discoverd", "AAAA")
    assert r.status == "NOERROR"
    assert r.data() == ["fd00::1", "fd00::2"]
    # same address twice (two ports) is one A record; each family only its own
    assert dig(dns.port, "mixed.discoverd", "A").data() == ["10.1.0.1"]
    assert dig(dns.port, "mixed.discoverd", "AAAA").data() == ["fd00::9"]
    anyr = dig(dns.port, "mixed.discoverd", "ANY")
    assert sorted(anyr.data()) == ["10.1.0.1", "fd00::9"]


def test_srv_records_with_targets_in_additional(dns: ServerThread) -> None:
    r = dig(dns.port, "_web._tcp.discoverd", "SRV")
    assert r.status == "NOERROR"
    assert r.data() == [
        "1 1 8080 10-0-0-1.addr.discoverd.",
        "1 1 8081 10-0-0-2.addr.discoverd.",
        "1 1 8082 10-0-0-3.addr.discoverd.",
    ]
    assert sorted(r.additional) == [
        ("10-0-0-1.addr.discoverd.", 5, "A", "10.0.0.1"),
        ("10-0-0-2.addr.discoverd.", 5, "A", "10.0.0.2"),
        ("10-0-0-3.addr.discoverd.", 5, "A", "10.0.0.3"),
    ]
    assert dig(dns.port, "_web._udp.discoverd", "SRV").data() == r.data()
    mixed = dig(dns.port, "_mixed._tcp.discoverd", "SRV")
    target6 = addr_label("fd00::9") + ".addr.discoverd."
    assert mixed.data() == [
        "1 1 80 10-1-0-1.addr.discoverd.",
        f"1 1 80 {target6}",
        "1 1 81 10-1-0-1.addr.discoverd.",
    ]
    # one additional record per target, of its own family
    assert sorted((n, t, d) for n, _, t, d in mixed.additional) == [
        ("10-1-0-1.addr.discoverd.", "A", "10.1.0.1"),
        (target6, "AAAA", "fd00::9"),
    ]


def test_srv_targets_resolve(dns: ServerThread) -> None:
    assert dig(dns.port, "10-0-0-7.addr.discoverd", "A").data() == ["10.0.0.7"]
    six = dig(dns.port, addr_label("fd00::1") + ".addr.discoverd", "AAAA")
    assert six.data() == ["fd00::1"]
    nodata = dig(dns.port, "10-0-0-7.addr.discoverd", "AAAA")
    assert (nodata.status, nodata.answer) == ("NOERROR", [])
    for alias in ("010-0-0-7", "10-0-0-256", "10-0-0", "fd00--1"):
        assert dig(dns.port, f"{alias}.addr.discoverd", "A").status == "NXDOMAIN", alias


def test_leader(dns: ServerThread) -> None:
    r = dig(dns.port, "leader.web.discoverd", "A")
    assert r.status == "NOERROR"
    assert r.answer == [("leader.web.discoverd.", 5, "A", "10.0.0.2")]
    assert dig(dns.port, "leader.v6.discoverd", "AAAA").data() == ["fd00::1"]
    no_aaaa = dig(dns.port, "leader.web.discoverd", "AAAA")
    assert (no_aaaa.status, no_aaaa.answer) == ("NOERROR", [])
    no_leader = dig(dns.port, "leader.empty.discoverd", "A")
    assert (no_leader.status, no_leader.answer) == ("NOERROR", [])
    assert dig(dns.port, "leader.nosuch.discoverd", "A").status == "NXDOMAIN"


def test_unknown_names_are_nxdomain_with_soa(dns: ServerThread) -> None:
    for name, qtype in [
        ("nosuch.discoverd", "A"),
        ("a.b.c.discoverd", "A"),
        ("x.web.discoverd", "A"),
        ("_nosuch._tcp.discoverd", "SRV"),
    ]:
        r = dig(dns.port, name, qtype)
        assert r.status == "NXDOMAIN", name
        assert "aa" in r.flags
        assert r.answer == []
        assert r.authority == [
            ("discoverd.", 5, "SOA", "discoverd. hostmaster.discoverd. 1 3600 600 86400 5")
        ], name


def test_known_names_without_the_type_are_nodata(dns: ServerThread) -> None:
    for name, qtype in [
        ("web.discoverd", "AAAA"),
        ("web.discoverd", "TXT"),
        ("web.discoverd", "MX"),
        ("web.discoverd", "SRV"),
        ("empty.discoverd", "A"),
        ("_web._tcp.discoverd", "A"),
        ("_tcp.discoverd", "A"),
        ("addr.discoverd", "A"),
        ("discoverd", "A"),
    ]:
        r = dig(dns.port, name, qtype)
        assert (r.status, r.answer) == ("NOERROR", []), (name, qtype)
        assert [rec[2] for rec in r.authority] == ["SOA"], (name, qtype)
    soa = dig(dns.port, "discoverd", "SOA")
    assert soa.data() == ["discoverd. hostmaster.discoverd. 1 3600 600 86400 5"]
    chaos = dig(dns.port, "web.discoverd", "A", "-c", "CH")
    assert chaos.status == "REFUSED"
    assert dig(dns.port, "discoverd", "AXFR", "+tcp").raw.count("Transfer failed") == 1


def test_case_is_echoed_on_miss_and_on_hit(dns: ServerThread) -> None:
    lower = dig(dns.port, "web.discoverd")  # fills the cache with the lowercase name
    for name in ("WeB.DiScOvErD", "WEB.discoverd", "web.DISCOVERD"):
        for _ in range(2):
            r = dig(dns.port, name)
            assert r.question == [f"{name}. IN A"]
            assert [rec[0] for rec in r.answer] == [f"{name}."] * 3
            assert r.data() == lower.data()
    fresh = dig(dns.port, "LeAdEr.WeB.dIsCoVeRd")  # a miss built from a mixed-case question
    assert fresh.question == ["LeAdEr.WeB.dIsCoVeRd. IN A"]
    assert fresh.answer == [("LeAdEr.WeB.dIsCoVeRd.", 5, "A", "10.0.0.2")]
    assert dig(dns.port, "leader.web.discoverd").answer == [("leader.web.discoverd.", 5, "A", "10.0.0.2")]


def test_answer_copies_id_rd_and_exact_question_bytes(dns: ServerThread) -> None:
    for qid, name, rd, edns in [
        (0xBEEF, "wEb.DISCOVERD", True, False),
        (0x0001, "web.discoverd", False, False),
        (0xFFFF, "_WEB._Tcp.Discoverd", True, True),
        (0x4242, "NoSuch.discoverd", False, True),
    ]:
        for _ in range(2):  # miss, then hit
            qtype = "SRV" if name.lower().startswith("_") else "A"
            packet = query_bytes(name, qtype, qid=qid, rd=rd, edns=edns)
            resp = udp_ask(dns.port, packet)
            end = 12 + len(name) + 2 + 4
            assert resp[:2] == packet[:2]
            assert resp[12:end] == packet[12:end]
            parsed = DNSRecord.parse(resp)
            assert parsed.header.qr == 1
            assert parsed.header.rd == int(rd)
            assert parsed.header.aa == 1
            assert any(rr.rtype == QTYPE.OPT for rr in parsed.ar) == edns


# --- transports, EDNS, truncation ---------------------------------------------------------------


def test_tcp_with_dig(dns: ServerThread) -> None:
    r = dig(dns.port, "+tcp", "web.discoverd")
    assert r.transport == "TCP"
    assert "version: 0" in r.opt  # EDNS over TCP too
    assert dig(dns.port, "+tcp", "+noedns", "web.discoverd").opt == ""
    assert r.data() == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    srv = dig(dns.port, "+tcp", "_web._tcp.discoverd", "SRV")
    assert len(srv.answer) == 3
    assert len(srv.additional) == 3
    assert dig(dns.port, "+tcp", "nosuch.discoverd").status == "NXDOMAIN"
    assert dns.server.counters.tcp_queries == 4


def test_tcp_pipelined_queries_split_frames_and_idle_timeout(source: FakeSource) -> None:
    with ServerThread(source, tcp_idle_timeout=0.5) as srv:
        ids = [11, 12, 13]
        names = ["web.discoverd", "leader.web.discoverd", "nosuch.discoverd"]
        stream = b"".join(
            len(q).to_bytes(2, "big") + q
            for q in (query_bytes(n, qid=i) for n, i in zip(names, ids, strict=True))
        )
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(stream[:7])  # a frame split across writes
            time.sleep(0.05)
            sock.sendall(stream[7:])
            answers: dict[int, DNSRecord] = {}
            buf = b""
            while len(answers) < 3:
                chunk = sock.recv(65535)
                assert chunk, "server closed the connection early"
                buf += chunk
                while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                    size = int.from_bytes(buf[:2], "big")
                    rec = DNSRecord.parse(buf[2 : 2 + size])
                    answers[rec.header.id] = rec
                    buf = buf[2 + size :]
            assert [str(rr.rdata) for rr in answers[11].rr] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            assert [str(rr.rdata) for rr in answers[12].rr] == ["10.0.0.2"]
            assert answers[13].header.rcode == RCODE.NXDOMAIN
            # idle: the server closes the connection
            sock.settimeout(10)
            t0 = time.monotonic()
            assert sock.recv(1) == b""
            assert time.monotonic() - t0 < 9
        assert srv.server.counters.tcp_idle_closed == 1
        assert wait_for(lambda: srv.server.stats()["tcp_open"] == 0)
        check_healthy(srv)


def test_tcp_connection_limit(source: FakeSource) -> None:
    with ServerThread(source, max_tcp_connections=2) as srv:
        socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(2)]
        assert wait_for(lambda: srv.server.stats()["tcp_open"] == 2)
        extra = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        with contextlib.suppress(ConnectionResetError):  # reset (aborted) is closed too
            assert extra.recv(1) == b""  # closed at once
        assert srv.server.counters.tcp_rejected == 1
        for s in [*socks, extra]:
            s.close()
        assert wait_for(lambda: srv.server.stats()["tcp_open"] == 0)
        assert dig(srv.port, "+tcp", "web.discoverd").status == "NOERROR"
        check_healthy(srv)


def test_edns_opt_is_echoed_only_when_asked(dns: ServerThread) -> None:
    with_edns = dig(dns.port, "web.discoverd")  # dig sends EDNS (and a cookie) by default
    assert "version: 0" in with_edns.opt
    assert "udp: 1232" in with_edns.opt
    plain = dig(dns.port, "+noedns", "web.discoverd")
    assert plain.opt == ""
    assert plain.data() == with_edns.data()
    assert dig(dns.port, "+edns=1", "+noednsnegotiation", "web.discoverd").status == "BADVERS"
    nx = dig(dns.port, "nosuch.discoverd")
    assert (nx.status, "version: 0" in nx.opt) == ("NXDOMAIN", True)


def test_large_answers_truncate_over_udp_and_complete_over_tcp(dns: ServerThread) -> None:
    for _ in range(2):  # a miss, then the cached answer
        tc = dig(dns.port, "+noedns", "+ignore", "big.discoverd")
        assert "tc" in tc.flags
        assert tc.answer == []
        tc_edns = dig(dns.port, "+ignore", "big.discoverd")  # 100 A records > 1232 bytes
        assert "tc" in tc_edns.flags
        assert "udp: 1232" in tc_edns.opt
        full = dig(dns.port, "big.discoverd")  # dig retries over TCP after TC
        assert full.transport == "TCP"
        assert len(full.answer) == 100
        # 40 A records: ~700 bytes, over 512 (also the floor of smaller EDNS sizes), under 1232
        for bufsize, truncated in [(100, True), (512, True), (1000, False), (1232, False), (4096, False)]:
            mid = dig(dns.port, f"+bufsize={bufsize}", "+ignore", "mid.discoverd")
            assert ("tc" in mid.flags) == truncated, bufsize
            assert len(mid.answer) == (0 if truncated else 40), bufsize
        plain = dig(dns.port, "+noedns", "+ignore", "_web._tcp.discoverd", "SRV")
        assert len(plain.answer) == 3
    assert dns.server.counters.cache_hits > 10


def test_several_listen_addresses(source: FakeSource) -> None:
    with ServerThread(source, host=["127.0.0.1", "127.0.0.2"]) as srv:
        for host in ("127.0.0.1", "127.0.0.2"):
            assert dig(srv.port, "web.discoverd", host=host).status == "NOERROR"
            assert dig(srv.port, "+tcp", "web.discoverd", host=host).status == "NOERROR"
        check_healthy(srv)


def test_other_domain(source: FakeSource) -> None:
    with ServerThread(source, domain="Disco.Internal.", ttl=30) as srv:
        assert dig(srv.port, "web.disco.internal").answer[0] == ("web.disco.internal.", 30, "A", "10.0.0.1")
        assert dig(srv.port, "web.discoverd").status == "REFUSED"  # not ours, no upstream
        check_healthy(srv)


# --- cache and invalidation --------------------------------------------------------------------


def test_answers_are_cached_until_invalidated(dns: ServerThread, source: FakeSource) -> None:
    assert len(dig(dns.port, "web.discoverd").answer) == 3
    assert dig(dns.port, "leader.web.discoverd").data() == ["10.0.0.2"]
    assert dig(dns.port, "newsvc.discoverd").status == "NXDOMAIN"
    with source.lock:
        source.instances["web"].append(("10.0.0.9", 8083))
        source.leaders["web"] = ("10.0.0.3", 8082)
        source.instances["newsvc"] = [("10.5.0.1", 1)]
    calls = source.calls
    # still the cached answers: the source is not asked again
    assert len(dig(dns.port, "web.discoverd").answer) == 3
    assert dig(dns.port, "newsvc.discoverd").status == "NXDOMAIN"
    assert source.calls == calls
    dns.server.invalidate("other")  # another service: nothing of web's is dropped
    assert len(dig(dns.port, "web.discoverd").answer) == 3
    dns.server.invalidate("WEB")  # called from this thread, not the server's
    assert dig(dns.port, "web.discoverd").data()[-1] == "10.0.0.9"
    assert dig(dns.port, "leader.web.discoverd").data() == ["10.0.0.3"]
    assert dig(dns.port, "newsvc.discoverd").status == "NXDOMAIN"  # its own entry is still cached
    dns.server.invalidate("newsvc")
    assert dig(dns.port, "newsvc.discoverd").data() == ["10.5.0.1"]
    with source.lock:
        del source.instances["web"]
    dns.server.invalidate()  # everything
    assert dig(dns.port, "web.discoverd").status == "NXDOMAIN"
    assert dig(dns.port, "_web._tcp.discoverd", "SRV").status == "NXDOMAIN"
    assert dns.server.counters.invalidations == 4


def test_invalidation_racing_a_build_is_not_lost(dns: ServerThread, source: FakeSource) -> None:
    # The registry changes (and invalidates) while an answer is being built from the old state:
    # that answer may be sent once, but must not stay in the cache.
    def change_during_build(service: str) -> None:
        source.on_call = None
        with source.lock:
            source.instances["web"] = [("10.0.0.42", 1)]
        threading.Thread(target=dns.server.invalidate, args=("web",)).start()
        time.sleep(0.1)  # the other thread's invalidate() completes before this build ends

    source.on_call = change_during_build
    assert len(dig(dns.port, "web.discoverd").answer) == 3  # built from the state read before the change
    assert dig(dns.port, "web.discoverd").data() == ["10.0.0.42"]


def test_cache_hits_and_misses_and_identical_bytes(source: FakeSource) -> None:
    server = DNSServer(source, port=0)
    other = DNSServer(source, port=0)  # never caches what it answers first
    for name, qtype, edns in [("web.discoverd", "A", False), ("_web._tcp.discoverd", "SRV", True)]:
        packet = query_bytes(name, qtype, edns=edns)
        first = server._process(packet, tcp=False)
        second = server._process(packet, tcp=False)
        assert isinstance(first, bytes)
        assert first == second == other._process(packet, tcp=False)
        mixed = query_bytes(name.upper(), qtype, edns=edns)
        answer = server._process(mixed, tcp=False)
        assert isinstance(answer, bytes)
        assert answer[12 : 12 + len(name) + 6] == mixed[12 : 12 + len(name) + 6]
        assert answer[12 + len(name) + 6 :] == first[12 + len(name) + 6 :]
    assert (server.counters.cache_misses, server.counters.cache_hits) == (2, 4)


def test_cache_is_bounded(source: FakeSource) -> None:
    server = DNSServer(source, port=0, max_cache_entries=50)
    for i in range(300):
        server._process(query_bytes(f"junk{i}.discoverd"), tcp=False)
    assert len(server._cache) == 50
    assert sum(len(keys) for keys in server._service_keys.values()) == 50
    web = server._process(query_bytes("web.discoverd"), tcp=False)
    assert isinstance(web, bytes)
    assert len(DNSRecord.parse(web).rr) == 3
    server.invalidate("junk299")  # the oldest were evicted, junk299 and web are still there
    assert len(server._cache) == 49
    assert server._process(query_bytes("web.discoverd"), tcp=False) == web
    assert server.counters.cache_hits == 1


# --- forwarding --------------------------------------------------------------------------------


class FakeUpstream:
    """A tiny recursor on 127.0.0.1 (UDP and TCP on one port) answering from a fixed table."""

    def __init__(self, *, answer: bool = True) -> None:
        self.answer = answer
        self.udp, self.tcp = self._bind_pair()
        self.port = self.udp.getsockname()[1]
        self.tcp.listen(16)
        self.udp_queries: list[DNSRecord] = []
        self.tcp_queries: list[DNSRecord] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @staticmethod
    def _bind_pair() -> tuple[socket.socket, socket.socket]:
        """A UDP and a TCP socket on the same free port (a free UDP port may be taken for TCP
        by another test: try again on another one)."""
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            return udp, tcp
        raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> FakeUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.udp.close()
        self.tcp.close()

    def reply(self, data: bytes, tcp: bool) -> bytes | None:
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return None
        (self.tcp_queries if tcp else self.udp_queries).append(query)
        if not self.answer:
            return None
        name = str(query.q.qname).lower()
        resp = query.reply(ra=1, aa=0)
        if name == "example.test.":
            resp.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        elif name == "big.test.":
            if tcp:
                for i in range(20):
                    resp.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(f"192.0.2.{i + 10}"), ttl=60))
            else:
                resp.header.tc = 1
        else:
            resp.header.rcode = RCODE.NXDOMAIN
        return bytes(resp.pack())

    def _serve(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.udp, self.tcp], [], [], 0.05)
            if self.udp in ready:
                data, addr = self.udp.recvfrom(65535)
                out = self.reply(data, tcp=False)
                if out is not None:
                    self.udp.sendto(out, addr)
            if self.tcp in ready:
                conn, _ = self.tcp.accept()
                with conn:
                    conn.settimeout(2)
                    try:
                        size = int.from_bytes(conn.recv(2), "big")
                        data = b""
                        while len(data) < size:
                            chunk = conn.recv(size - len(data))
                            if not chunk:
                                break
                            data += chunk
                        out = self.reply(data, tcp=True)
                        if out is not None:
                            conn.sendall(len(out).to_bytes(2, "big") + out)
                    except OSError:
                        pass


def test_other_names_are_forwarded(source: FakeSource) -> None:
    with FakeUpstream() as up, ServerThread(source, upstreams=[up.spec]) as srv:
        r = dig(srv.port, "example.test")
        assert r.status == "NOERROR"
        assert "ra" in r.flags
        assert r.answer == [("example.test.", 60, "A", "192.0.2.1")]
        assert dig(srv.port, "nosuch.test").status == "NXDOMAIN"
        mixed = dig(srv.port, "ExAmPlE.TeSt")
        assert mixed.question == ["ExAmPlE.TeSt. IN A"]
        assert dig(srv.port, "+tcp", "example.test").data() == ["192.0.2.1"]
        # the zone is never forwarded
        assert dig(srv.port, "nosuch.discoverd").status == "NXDOMAIN"
        assert all(not str(q.q.qname).endswith("discoverd.") for q in up.udp_queries)
        assert srv.server.counters.forwards == 4
        check_healthy(srv)


def test_truncated_upstream_answer_is_retried_over_tcp(source: FakeSource) -> None:
    with FakeUpstream() as up, ServerThread(source, upstreams=[up.spec]) as srv:
        r = dig(srv.port, "+noedns", "+ignore", "big.test")
        assert r.transport == "UDP"
        assert "tc" not in r.flags
        assert len(r.answer) == 20
        assert len(up.tcp_queries) == 1
        assert srv.server.counters.forward_tcp_retries == 1
        check_healthy(srv)


def test_upstream_timeout_is_servfail_and_next_upstream_is_tried(source: FakeSource) -> None:
    with (
        FakeUpstream(answer=False) as silent,
        FakeUpstream() as good,
        ServerThread(source, upstreams=[silent.spec], forward_timeout=0.5) as srv,
    ):
        r = dig(srv.port, "example.test")
        assert r.status == "SERVFAIL"
        assert r.question == ["example.test. IN A"]
        assert len(silent.udp_queries) == 1
        assert srv.server.counters.forward_failures == 1
        check_healthy(srv)
    with (
        FakeUpstream(answer=False) as silent,
        FakeUpstream() as good,
        ServerThread(source, upstreams=[silent.spec, good.spec], forward_timeout=0.5) as srv,
    ):
        assert dig(srv.port, "example.test").data() == ["192.0.2.1"]
        assert (len(silent.udp_queries), len(good.udp_queries)) == (1, 1)
        assert srv.server.counters.forward_failures == 0
        check_healthy(srv)


def test_forwards_in_flight_are_bounded(source: FakeSource) -> None:
    with (
        FakeUpstream(answer=False) as silent,
        ServerThread(source, upstreams=[silent.spec], forward_timeout=2.0, max_forwards=1) as srv,
    ):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(6)
            sock.sendto(query_bytes("example.test", qid=1), ("127.0.0.1", srv.port))
            assert wait_for(lambda: srv.server.stats()["forwards_in_flight"] == 1)
            sock.sendto(query_bytes("example.test", qid=2), ("127.0.0.1", srv.port))
            first = DNSRecord.parse(sock.recv(65535))
            assert (first.header.id, first.header.rcode) == (2, RCODE.SERVFAIL)  # rejected at once
            second = DNSRecord.parse(sock.recv(65535))
            assert (second.header.id, second.header.rcode) == (1, RCODE.SERVFAIL)  # timed out
        assert srv.server.counters.forward_rejected == 1
        assert srv.server.stats()["forwards_in_flight"] == 0
        check_healthy(srv)


def test_without_upstreams_other_names_are_refused(dns: ServerThread) -> None:
    r = dig(dns.port, "example.test")
    assert r.status == "REFUSED"
    assert "ra" not in r.flags
    assert dns.server.counters.refused == 1


def test_failing_source_is_servfail_and_not_cached(source: FakeSource) -> None:
    def fail(service: str) -> None:
        if service == "web":
            raise RuntimeError("state unavailable")

    source.on_call = fail
    with ServerThread(source) as srv:
        assert dig(srv.port, "web.discoverd").status == "SERVFAIL"
        assert srv.server.counters.errors == 1
        source.on_call = None
        assert dig(srv.port, "web.discoverd").status == "NOERROR"
        assert srv.loop_errors == []


def test_unavailable_source_is_servfail_not_cached_not_an_error(source: FakeSource) -> None:
    def unavailable(service: str) -> None:
        raise SourceUnavailable

    source.on_call = unavailable
    with ServerThread(source) as srv:
        assert dig(srv.port, "web.discoverd").status == "SERVFAIL"
        assert dig(srv.port, "+tcp", "web.discoverd").status == "SERVFAIL"
        source.on_call = None
        assert dig(srv.port, "web.discoverd").status == "NOERROR"
        assert srv.server.counters.unavailable == 2
        check_healthy(srv)


def test_upstream_that_is_the_server_itself_is_left_out() -> None:
    server = DNSServer(FakeSource(), host="127.0.0.1", port=5353, upstreams=["127.0.0.1:5353", "10.0.0.1"])
    assert server._upstreams == [("10.0.0.1", 53)]


def test_resolv_conf_and_upstream_specs(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# generated\nsearch example.org\nnameserver 127.0.0.53\nnameserver 10.1.1.1\n"
        "nameserver ::1\nnameserver 2001:db8::1\nnameserver bogus\nnameserver 10.1.1.1\noptions edns0\n"
    )
    assert upstreams_from_resolv_conf(conf) == ["10.1.1.1", "2001:db8::1"]
    assert upstreams_from_resolv_conf(conf, exclude_loopback=False) == [
        "127.0.0.53",
        "10.1.1.1",
        "::1",
        "2001:db8::1",
    ]
    assert upstreams_from_resolv_conf(tmp_path / "missing") == []
    assert parse_upstream("10.1.1.1") == ("10.1.1.1", 53)
    assert parse_upstream("10.1.1.1:5353") == ("10.1.1.1", 5353)
    assert parse_upstream("[2001:db8::1]:54") == ("2001:db8::1", 54)
    assert parse_upstream("2001:db8::1") == ("2001:db8::1", 53)
    for bad in ("example.com", "10.1.1.1:0", "10.1.1.1:x", "[::1", "[::1]x", "1.2.3.4:99999"):
        with pytest.raises(ConfigError):
            parse_upstream(bad)
    with pytest.raises(ConfigError):
        DNSServer(FakeSource(), upstreams=["nope"])
    for domain in ("..", "dïscoverd", "a" * 64):
        with pytest.raises(ConfigError):
            DNSServer(FakeSource(), domain=domain)


# --- malformed input ---------------------------------------------------------------------------


def _skip_name(msg: bytes, pos: int) -> int:
    """Offset after a (possibly compressed) name; raises on anything malformed."""
    while True:
        length = msg[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            assert pos + 2 <= len(msg)
            return pos + 2
        assert length <= 63
        pos += 1 + length
        assert pos < len(msg)


def assert_well_formed_answer(query: bytes, resp: bytes) -> None:
    """An answer to ``query``: same ID, QR set, and every counted section present, nothing more."""
    assert len(resp) >= 12
    assert resp[:2] == query[:2]
    assert resp[2] & 0x80
    qd, an, ns, ar = struct.unpack_from("!HHHH", resp, 4)
    pos = 12
    for _ in range(qd):
        end = _skip_name(resp, pos) + 4
        assert resp[pos:end].lower() == query[pos:end].lower()
        assert resp[pos:end] == query[pos:end]  # echoed exactly (case included)
        pos = end
    for _ in range(an + ns + ar):
        pos = _skip_name(resp, pos)
        (rdlen,) = struct.unpack_from("!H", resp, pos + 8)
        pos += 10 + rdlen
    assert pos == len(resp)


def base_queries() -> list[bytes]:
    out = []
    for i, (name, qtype) in enumerate(
        [
            ("web.discoverd", "A"),
            ("WEB.discoverd", "AAAA"),
            ("_web._tcp.discoverd", "SRV"),
            ("leader.web.discoverd", "A"),
            ("nosuch.discoverd", "A"),
            ("big.discoverd", "A"),
            ("example.test", "A"),
            ("10-0-0-1.addr.discoverd", "ANY"),
        ]
    ):
        out.append(query_bytes(name, qtype, qid=i, edns=bool(i % 2)))
    return out


def mutate(rng: random.Random, packet: bytes) -> bytes:
    b = bytearray(packet)
    if len(b) < 13:
        return packet + rng.randbytes(rng.randint(0, 20))
    op = rng.randrange(8)
    if op == 7:  # still valid: a new ID and DNS 0x20 case randomisation of the name
        b[0:2] = rng.randbytes(2)
        return bytes(b[:12]) + bytes(c ^ 0x20 if 97 <= c <= 122 and rng.random() < 0.5 else c for c in b[12:])
    if op == 0:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1:
        del b[rng.randrange(len(b)) :]
    elif op == 2:
        pos = rng.randrange(len(b) + 1)
        b[pos:pos] = rng.randbytes(rng.randint(1, 40))
    elif op == 3:
        b[4:12] = rng.randbytes(8)
    elif op == 4 and len(b) > 14:
        pos = rng.randrange(12, len(b) - 1)
        b[pos : pos + 2] = bytes((0xC0 | rng.randrange(4), rng.randrange(256)))
    elif op == 5:
        b[rng.randrange(len(b))] = rng.randrange(256)
    else:
        b[2] = rng.randrange(256)
    return bytes(b)


def crafted() -> list[bytes]:
    head = b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q = query_bytes("web.discoverd", qid=7)
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    return [
        b"",
        b"\x00",
        head[:11],
        head,  # header only, QDCOUNT 1
        head + b"\xc0\x0c\x00\x01\x00\x01",  # pointer to itself
        head + b"\x03web\xc0\x0c\x00\x01\x00\x01",  # pointer loop through the header
        head + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # label too long
        head + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",  # name too long
        head + b"\x03web",  # truncated name
        head + b"\x03web\x09discoverd\x00\x00",  # truncated qtype/qclass
        q[:4] + b"\x00\x02" + q[6:],  # QDCOUNT 2
        q[:4] + b"\x00\x00" + q[6:],  # QDCOUNT 0
        q[:4] + b"\xff\xff" + q[6:],
        q[:2] + b"\x81\x00" + q[4:],  # a response
        q[:2] + b"\x10\x00" + q[4:],  # opcode STATUS
        q[:2] + b"\x28\x00" + q[4:],  # opcode UPDATE
        q + b"trailing",
        q[:10] + b"\x00\x01" + q[12:] + opt[:5],  # OPT cut short
        q[:10] + b"\x00\x02" + q[12:] + opt + opt,  # two OPT records
        q[:10] + b"\x00\x01" + q[12:] + b"\x01x" + opt[1:],  # OPT not at the root
        q[:10] + b"\x00\x01" + q[12:] + opt[:-2] + b"\x00\x05ab",  # OPT rdlen past the end
        q[:6] + b"\x00\x01" + q[8:] + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\x0a\x00\x00\x01",
        b"\xff" * 512,
        bytes(range(256)),
    ]


def test_malformed_messages_are_dropped_or_formerr(source: FakeSource) -> None:
    server = DNSServer(source, port=0)
    q = query_bytes("web.discoverd", qid=7)
    expect = {
        b"": None,
        q[:11]: None,
        q[:2] + b"\x81\x00" + q[4:]: None,  # never answer a response
    }
    for packet, want in expect.items():
        assert server._process(packet, tcp=False) is want
    rcodes = {
        q[:4] + b"\x00\x02" + q[6:]: RCODE.FORMERR,
        q[:12] + b"\xc0\x0c\x00\x01\x00\x01": RCODE.FORMERR,
        q + b"x": RCODE.FORMERR,
        q[:2] + b"\x10\x00" + q[4:]: RCODE.NOTIMP,
    }
    for packet, rcode in rcodes.items():
        resp = server._process(packet, tcp=False)
        assert isinstance(resp, bytes)
        assert resp[:2] == packet[:2]
        assert resp[2] & 0x80
        assert resp[3] & 0x0F == rcode
    assert (server.counters.dropped, server.counters.formerr, server.counters.notimp) == (3, 3, 1)


def test_udp_fast_path_checks_the_whole_header(dns: ServerThread) -> None:
    q = query_bytes("web.discoverd", qid=9)
    assert DNSRecord.parse(udp_ask(dns.port, q)).header.rcode == RCODE.NOERROR  # now cached
    with pytest.raises(TimeoutError):
        udp_ask(dns.port, q[:2] + bytes((q[2] | 0x80,)) + q[3:], timeout=0.5)  # a response: no answer
    for packet, rcode in [
        (q[:2] + bytes((q[2] | 0x10,)) + q[3:], RCODE.NOTIMP),  # opcode STATUS
        (q[:4] + b"\x00\x02" + q[6:], RCODE.FORMERR),  # QDCOUNT 2
        (q[:6] + b"\x00\x01" + q[8:], RCODE.FORMERR),  # ANCOUNT 1, no record
        (q[:10] + b"\x00\x01" + q[12:], RCODE.FORMERR),  # ARCOUNT 1, no record
        (q + b"\x00", RCODE.FORMERR),  # trailing byte
    ]:
        resp = udp_ask(dns.port, packet)
        assert resp[:2] == packet[:2]
        assert (resp[3] & 0x0F, resp[6:8]) == (rcode, b"\x00\x00"), packet
    assert dns.server.counters.cache_hits == 0


def test_fuzz_answer_path_without_network(source: FakeSource) -> None:
    # 30,000 random and mutated messages straight into the answer path (with an upstream set, so
    # names outside the zone come back as forward requests): no exception, and every answer is a
    # complete message for the query's ID with its question echoed byte for byte.
    server = DNSServer(source, port=0, upstreams=["127.0.0.1:9"], max_cache_entries=500)
    rng = random.Random(20240603)
    bases = base_queries() + crafted()
    answered = forwarded = dropped = 0
    for i in range(30000):
        if i % 10 == 0:
            packet = rng.randbytes(rng.randint(0, 300))
        else:
            packet = mutate(rng, rng.choice(bases))
            if rng.random() < 0.3:
                packet = mutate(rng, packet)
        for tcp in (False, True):
            result = server._process(packet, tcp=tcp)
            if result is None:
                dropped += 1
            elif isinstance(result, bytes):
                answered += 1
                assert_well_formed_answer(packet, result)
                if not tcp:
                    assert len(result) <= 1232
            else:
                forwarded += 1
    assert server.counters.errors == 0
    # the generator reaches every outcome
    assert answered > 10000
    assert forwarded > 100
    assert dropped > 100
    assert server.counters.cache_hits > 1000
    assert server.counters.formerr > 1000


def test_fuzz_over_udp_and_tcp_then_still_answers(source: FakeSource) -> None:
    rng = random.Random(77)
    bases = base_queries() + crafted()
    packets = [rng.randbytes(rng.randint(0, 200)) for _ in range(1000)]
    packets += [mutate(rng, rng.choice(bases)) for _ in range(3000)]
    packets += crafted()
    with (
        FakeUpstream() as up,
        ServerThread(source, upstreams=[up.spec], forward_timeout=0.3, max_forwards=16) as srv,
    ):
        sent_ids: set[bytes] = {p[:2] for p in packets}
        replies: list[bytes] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            sock.setblocking(False)
            for n, packet in enumerate(packets):
                sock.sendto(packet, ("127.0.0.1", srv.port))
                if n % 50 == 49:
                    time.sleep(0.002)  # do not overrun the socket buffers
                    with_replies(sock, replies)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                with_replies(sock, replies)
                time.sleep(0.05)
        assert len(replies) > 1000
        for resp in replies:
            assert len(resp) >= 12
            assert resp[2] & 0x80
            assert resp[:2] in sent_ids
        # TCP: framed junk, unframed junk, a huge announced length then close, half-open connections
        conns = []
        for i in range(40):
            conn = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            conns.append(conn)
            kind = i % 4
            if kind == 0:
                payload = b"".join(
                    len(p).to_bytes(2, "big") + p for p in (mutate(rng, rng.choice(bases)) for _ in range(50))
                )
            elif kind == 1:
                payload = rng.randbytes(rng.randint(1, 3000))
            elif kind == 2:
                payload = b"\xff\xff" + rng.randbytes(100)
            else:
                payload = b"".join(len(p).to_bytes(2, "big") + p for p in crafted())
            conn.sendall(payload)
        for conn in conns[::2]:
            conn.close()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as conn:
            conn.sendall(b"\x00\x00" * 10 + len(base_queries()[0]).to_bytes(2, "big") + base_queries()[0])
            got = conn.recv(65535)
            assert DNSRecord.parse(got[2:]).header.id == 0
        for conn in conns[1::2]:
            conn.close()
        # still serving, over both transports
        assert dig(srv.port, "web.discoverd").data() == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        assert dig(srv.port, "+tcp", "leader.web.discoverd").data() == ["10.0.0.2"]
        assert dig(srv.port, "example.test").data() == ["192.0.2.1"]
        stats = srv.server.stats()
        assert stats["queries"] > 4000
        assert stats["formerr"] > 100
        assert stats["dropped"] > 100
        assert wait_for(lambda: srv.server.stats()["tcp_open"] == 0)
        check_healthy(srv)


def with_replies(sock: socket.socket, replies: list[bytes]) -> None:
    while True:
        try:
            replies.append(sock.recv(65535))
        except BlockingIOError:
            return
