"""discoverd's DNS server: service records from the registry, every other name forwarded upstream.

Names served (zone ``discoverd.`` by default, configurable), TTL 5 s by default:

* ``SERVICE.discoverd``          A / AAAA: every registered instance address of that family
* ``leader.SERVICE.discoverd``   A / AAAA: the service leader's address
* ``_SERVICE._tcp.discoverd``    SRV (also ``_udp``): one record per instance, port and target
  ``IP.addr.discoverd``, whose A/AAAA records go in the additional section
* ``IP.addr.discoverd``          A / AAAA of the address spelled in the first label
  (``10-0-0-1``, or the 8 hex groups of an IPv6 address joined by ``-``)

An unknown service is NXDOMAIN with the zone's SOA in the authority section; a known name without a
record of the asked type is NOERROR/NODATA (also with the SOA). ``docs/discoverd-dns.md`` has the rest.

Speed comes from a cache of ready wire-format answers keyed by (lowercased qname, qtype, qclass). A
query for a cached name is answered by reading the header and question bytes only, copying its ID,
RD bit and exact question bytes (DNS 0x20 case) into the cached answer. Only a miss builds the answer
with dnslib. The registry calls :meth:`DNSServer.invalidate` on every change (from any thread).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, cast

from dnslib import (  # type: ignore[import-untyped]
    AAAA,
    RR,
    SOA,
    SRV,
    A,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

from flynn.common.errors import ConfigError

log = logging.getLogger(__name__)

# --- DNS numbers -------------------------------------------------------------------------------
TYPE_A = 1
TYPE_NS = 2
TYPE_SOA = 6
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_OPT = 41
TYPE_IXFR = 251
TYPE_AXFR = 252
TYPE_ANY = 255
CLASS_IN = 1

NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
BADVERS = 16  # extended RCODE, carried in the OPT record

_QR = 0x80
_AA = 0x04
_TC = 0x02
_RD = 0x01
_RA = 0x80

UDP_PLAIN_LIMIT = 512  # answer size limit over UDP without EDNS (RFC 1035)
EDNS_PAYLOAD = 1232  # UDP payload size we advertise and never exceed (DNS flag day 2020)
MAX_MESSAGE = 65535  # over TCP (2-byte length prefix)

# Our OPT record: root owner, type 41, class = UDP payload size, TTL = ext-RCODE/version/flags 0, no options.
_OPT_RR = b"\x00\x00\x29" + EDNS_PAYLOAD.to_bytes(2, "big") + b"\x00\x00\x00\x00\x00\x00"
# The four counts (QD, AN, NS, AR) of a plain query: one question, nothing else.
_COUNTS_PLAIN = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_COUNTS_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x01"  # ... and one additional record (OPT)
_DEFAULT_RESOLV_CONF = Path("/etc/resolv.conf")


class RecordSource(Protocol):
    """What the DNS server needs from discoverd's state (called on the event loop's thread)."""

    def dns_instances(self, service: str) -> list[tuple[str, int]] | None:
        """(ip, port) of the service's registered instances, oldest first; None if the service does not exist."""  # noqa: E501

    def dns_leader(self, service: str) -> tuple[str, int] | None:
        """(ip, port) of the service's leader instance, None if none."""


class SourceUnavailable(Exception):
    """A RecordSource may raise this when it cannot answer now (e.g. state not loaded yet).

    The query gets SERVFAIL (clients retry or ask another server), nothing is cached, and it is
    counted in ``unavailable``, not as an internal error. Returning None instead would be cached as
    NXDOMAIN until the next invalidate().
    """


@dataclasses.dataclass(slots=True)
class DNSCounters:
    """Monotonic counters since start, for discoverd's status endpoint (see :meth:`DNSServer.stats`)."""

    queries: int = 0  # DNS messages received (UDP datagrams and TCP frames), well-formed or not
    tcp_queries: int = 0  # of which over TCP
    cache_hits: int = 0  # zone answers served from the cache
    cache_misses: int = 0  # zone answers built with dnslib
    forwards: int = 0  # queries forwarded upstream
    forward_failures: int = 0  # forwarded queries no upstream answered (SERVFAIL sent)
    forward_rejected: int = 0  # SERVFAIL at once because max_forwards were in flight
    forward_timeouts: int = 0  # single upstream exchanges that timed out or failed
    forward_tcp_retries: int = 0  # upstream UDP answers truncated, retried over TCP
    dropped: int = 0  # messages dropped without an answer (too short, or a response)
    formerr: int = 0  # answered FORMERR
    notimp: int = 0  # answered NOTIMP (opcode other than QUERY)
    refused: int = 0  # answered REFUSED (non-IN class in the zone, zone transfers, no upstream)
    errors: int = 0  # internal errors (a bug or a failing RecordSource): SERVFAIL or dropped
    unavailable: int = 0  # SERVFAIL because the RecordSource raised SourceUnavailable
    invalidations: int = 0  # invalidate() calls
    tcp_connections: int = 0  # TCP connections accepted
    tcp_rejected: int = 0  # TCP connections closed at once (max_tcp_connections reached)
    tcp_idle_closed: int = 0  # TCP connections closed after the idle timeout


# A cache entry: the ready answer without its 2-byte ID, in the variants a query can need. Index by
# ``rd`` (the query's RD bit, 0 or 1) plus:
#   0  UDP, no EDNS: the full answer if it fits 512 bytes, else a truncated (TC) one
#   2  with our OPT record appended: the full answer (TCP, or UDP when it fits the client's size)
#   4  with our OPT record, truncated (TC): UDP when the full one does not fit
#   6  no EDNS, full (TCP)
_Entry = tuple[bytes, ...]


class _Query(NamedTuple):
    """What the slow path needs to know about a well-formed query."""

    flags: int  # the query's byte 2: opcode and RD
    name_end: int  # offset just after the qname's terminating zero
    end: int  # offset just after the question (qtype and qclass)
    labels: tuple[bytes, ...]  # qname labels, lowercased
    qtype: int
    qclass: int
    key: bytes  # cache key: lowercased qname in wire form + qtype + qclass
    edns: bool
    edns_size: int  # the client's UDP payload size (EDNS), 0 without EDNS
    edns_version: int


def parse_upstream(spec: str) -> tuple[str, int]:
    """``"ip"``, ``"ip:port"``, ``"[v6]:port"`` or a bare IPv6 address -> ``(ip, port)``."""
    text = spec.strip()
    port = 53
    host = text
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"upstream {spec!r} is not ip[:port]")
        if rest:
            port = _parse_port(rest[1:], spec)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _parse_port(port_text, spec)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ConfigError(f"upstream {spec!r} is not ip[:port]") from None


def _parse_port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"upstream {spec!r} has a bad port")
    return int(text)


def upstreams_from_resolv_conf(
    path: str | Path = _DEFAULT_RESOLV_CONF, *, exclude_loopback: bool = True
) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, in order.

    With ``exclude_loopback`` (the default: discoverd itself is the host's resolver, or a local stub
    such as systemd-resolved would forward back to it) 127.0.0.0/8 and ::1 are left out. Unreadable
    files and lines that are not an address give nothing.
    """
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    found: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            addr = ipaddress.ip_address(fields[1])
        except ValueError:
            continue
        if exclude_loopback and addr.is_loopback:
            continue
        if fields[1] not in found:
            found.append(fields[1])
    return found


def _canonical_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def addr_label(ip: str) -> str:
    """The label of an address under ``addr.DOMAIN``: ``10-0-0-1`` or ``fd00-0000-...-0001``."""
    parsed = ipaddress.ip_address(ip)
    if isinstance(parsed, ipaddress.IPv4Address):
        return str(parsed).replace(".", "-")
    return parsed.exploded.replace(":", "-")


def _addr_from_label(label: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Inverse of :func:`addr_label`; only the canonical spelling is accepted (no aliases)."""
    try:
        text = label.decode("ascii")
        parts = text.split("-")
        if len(parts) == 4:
            parsed: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(".".join(parts))
        elif len(parts) == 8:
            parsed = ipaddress.IPv6Address(":".join(parts))
        else:
            return None
    except (UnicodeDecodeError, ValueError):
        return None
    return parsed if addr_label(str(parsed)) == text else None


# --- wire helpers ------------------------------------------------------------------------------


def _parse_question(data: bytes) -> tuple[tuple[bytes, ...], int] | None:
    """Labels (lowercased) of the question name at offset 12, and the offset after it.

    Compression pointers are refused: in a query's question they can only point into the header.
    """
    pos = 12
    size = len(data)
    labels: list[bytes] = []
    total = 1
    while pos < size:
        length = data[pos]
        if length == 0:
            return tuple(labels), pos + 1
        if length > 63:  # a pointer (0xC0) or a reserved label type
            return None
        total += length + 1
        if total > 255 or pos + 1 + length > size:
            return None
        labels.append(data[pos + 1 : pos + 1 + length].lower())
        pos += 1 + length
    return None


def _parse_edns(data: bytes, end: int, counts: tuple[int, int, int]) -> tuple[bool, int, int] | None:
    """(has OPT, UDP payload size, EDNS version) of the records after the question; None: malformed."""
    size = len(data)
    an, ns, ar = counts
    if an == 0 and ns == 0:
        if ar == 0:
            return (False, 0, 0) if end == size else None
        if ar == 1 and size >= end + 11 and data[end : end + 3] == b"\x00\x00\x29":
            rdlen = int.from_bytes(data[end + 9 : end + 11], "big")
            if end + 11 + rdlen == size:
                return True, int.from_bytes(data[end + 3 : end + 5], "big"), data[end + 6]
    # Anything else (other records, several additional records): let dnslib parse the whole message.
    try:
        record = DNSRecord.parse(data)
        opts = [rr for rr in record.ar if rr.rtype == TYPE_OPT]
        if len(opts) > 1 or (opts and opts[0].rname.label != ()):
            return None
    except Exception:  # dnslib raises many kinds of errors on hostile input
        return None
    if not opts:
        return False, 0, 0
    return True, int(opts[0].rclass), (int(opts[0].ttl) >> 16) & 0xFF


def _header_only(data: bytes, rcode: int, ra: bool) -> bytes:
    """An answer with the query's ID, opcode and RD, the RCODE and no section (FORMERR, NOTIMP)."""
    flags = _QR | (data[2] & 0x79)
    return data[:2] + bytes((flags, (_RA if ra else 0) | rcode)) + b"\x00" * 8


def _error_answer(data: bytes, q: _Query, rcode: int, ra: bool) -> bytes:
    """An answer echoing the question (and EDNS) with an error RCODE and no records."""
    flags = _QR | (q.flags & _RD)
    question = data[12 : q.end]
    if not q.edns:
        return data[:2] + bytes((flags, (_RA if ra else 0) | rcode)) + _COUNTS_PLAIN + question
    opt = _OPT_RR[:5] + bytes((rcode >> 4,)) + _OPT_RR[6:]
    head = bytes((flags, (_RA if ra else 0) | (rcode & 0xF)))
    return data[:2] + head + _COUNTS_OPT + question + opt


def _make_entry(full: bytes, qlen: int) -> _Entry:
    """All the variants of a canonical answer (ID 0, RD 0, no OPT) a query may need, without the ID."""
    b2, b3 = full[2], full[3]
    ar = int.from_bytes(full[10:12], "big")
    question = full[12 : 12 + qlen]
    plain = full[2:]
    edns = full[2:10] + (ar + 1).to_bytes(2, "big") + full[12:] + _OPT_RR
    trunc = bytes((b2 | _TC, b3)) + _COUNTS_PLAIN + question
    trunc_edns = bytes((b2 | _TC, b3)) + _COUNTS_OPT + question + _OPT_RR
    udp = plain if len(full) <= UDP_PLAIN_LIMIT else trunc

    def rd(v: bytes) -> bytes:
        return bytes((v[0] | _RD,)) + v[1:]

    return (udp, rd(udp), edns, rd(edns), trunc_edns, rd(trunc_edns), plain, rd(plain))


def _fast_edns(data: bytes, end: int, entry: _Entry) -> bytes | None:
    """The cached answer to a plain query whose only extra record is an EDNS version 0 OPT, else None."""
    size = len(data)
    if (
        size >= end + 11
        and data[end : end + 3] == b"\x00\x00\x29"
        and data[end + 6] == 0
        and end + 11 + ((data[end + 9] << 8) | data[end + 10]) == size
    ):
        rd = data[2] & _RD
        v = entry[2 + rd]
        limit = min(max((data[end + 3] << 8) | data[end + 4], UDP_PLAIN_LIMIT), EDNS_PAYLOAD)
        return data[:2] + (v if len(v) + 2 <= limit else entry[4 + rd])
    return None


def _select(entry: _Entry, data: bytes, q: _Query, tcp: bool) -> bytes:
    """The answer to send for ``data`` from a cache entry: its ID, RD bit and exact question bytes."""
    rd = q.flags & _RD
    if tcp:
        v = entry[2 + rd] if q.edns else entry[6 + rd]
    elif q.edns:
        limit = min(max(q.edns_size, UDP_PLAIN_LIMIT), EDNS_PAYLOAD)
        v = entry[2 + rd] if len(entry[2]) + 2 <= limit else entry[4 + rd]
    else:
        v = entry[rd]
    end = q.end
    if data[12:end] == v[10 : end - 2]:
        return data[:2] + v
    return b"".join((data[:2], v[:10], data[12:end], v[end - 2 :]))


# --- the server --------------------------------------------------------------------------------


class DNSServer:
    """Authoritative for ``domain`` from a :class:`RecordSource`, forwarding the rest, over UDP and TCP.

    Create it, ``await start()`` on the event loop that will run it, ``await stop()`` to close.
    ``invalidate()`` may be called from any thread.
    """

    def __init__(
        self,
        source: RecordSource,
        *,
        host: str | Sequence[str] = "127.0.0.1",
        port: int = 53,
        domain: str = "discoverd",
        upstreams: Iterable[str] = (),
        ttl: int = 5,
        forward_timeout: float = 2.0,
        max_forwards: int = 256,
        tcp_idle_timeout: float = 10.0,
        max_tcp_connections: int = 256,
        max_cache_entries: int = 20000,
    ) -> None:
        self._source = source
        self._hosts = [host] if isinstance(host, str) else list(host)
        if not self._hosts:
            raise ConfigError("DNS: no listen address")
        if not 0 <= port <= 65535:
            raise ConfigError(f"DNS port {port} is outside 0-65535")
        self._port = port
        try:
            labels = tuple(part.encode("ascii").lower() for part in domain.strip(".").split(".") if part)
        except UnicodeEncodeError:
            labels = ()
        if not labels or any(len(label) > 63 for label in labels):
            raise ConfigError(f"DNS domain {domain!r} is not a domain name")
        self.domain = b".".join(labels).decode()
        self._zone = labels
        self._zone_len = len(labels)
        self._zone_label = DNSLabel(labels)
        self._upstreams: list[tuple[str, int]] = []
        for spec in upstreams:
            upstream = parse_upstream(spec)
            if port and upstream[1] == port and upstream[0] in {_canonical_ip(h) for h in self._hosts}:
                log.warning("DNS: upstream %s is this server itself: left out", spec)
            elif upstream not in self._upstreams:
                self._upstreams.append(upstream)
        if not 0 <= ttl <= 86400:
            raise ConfigError(f"DNS ttl {ttl} is outside 0-86400")
        self._ttl = ttl
        self._forward_timeout = forward_timeout
        self._max_forwards = max_forwards
        self._tcp_idle_timeout = tcp_idle_timeout
        self._max_tcp_connections = max_tcp_connections
        self._max_cache_entries = max(1, max_cache_entries)
        self.counters = DNSCounters()

        # The cache. Read without a lock on the loop thread (dict reads are atomic); every change
        # (insert, evict, invalidate) holds _lock. _generation changes on every invalidation, so an
        # answer built from state read before an invalidation is never cached after it.
        self._cache: dict[bytes, _Entry] = {}
        self._key_service: dict[bytes, str | None] = {}  # insertion order = eviction order
        self._service_keys: dict[str | None, set[bytes]] = {}
        self._lock = threading.Lock()
        self._generation = 0

        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._connections: set[_TCPConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight = 0
        self._last_error_log = 0.0
        self._started = False

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (the chosen one when constructed with port 0), after start()."""
        return self._port

    async def start(self) -> None:
        """Bind UDP and TCP on every address (same port for all) and start answering."""
        if self._started:
            raise RuntimeError("DNS server already started")
        attempts = 20 if self._port == 0 else 1
        for attempt in range(attempts):
            try:
                await self._bind(self._port)
                break
            except OSError as exc:
                await self._close_listeners()
                if self._port != 0 or exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise
        self._started = True
        log.info(
            "DNS on %s port %d for %s. (upstreams: %s)",
            ", ".join(self._hosts),
            self._port,
            self.domain,
            ", ".join(f"{h}:{p}" for h, p in self._upstreams) or "none",
        )

    async def _bind(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        for host in self._hosts:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self), local_addr=(host, port)
            )
            self._udp.append(transport)
            if port == 0:
                port = int(transport.get_extra_info("sockname")[1])
            server = await loop.create_server(
                lambda: _TCPConnection(self), host, port, reuse_address=True, backlog=256
            )
            self._tcp.append(server)
        self._port = port

    async def _close_listeners(self) -> None:
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        for server in self._tcp:
            await server.wait_closed()
        self._udp.clear()
        self._tcp.clear()

    async def stop(self) -> None:
        """Stop listening, close TCP connections and cancel forwards in flight."""
        await self._close_listeners()
        for conn in list(self._connections):
            conn.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._started = False

    # --- cache ---------------------------------------------------------------------------------

    def invalidate(self, service: str | None = None) -> None:
        """Drop the cached answers of ``service`` (all of them with None). Safe from any thread."""
        with self._lock:
            self._generation += 1
            self.counters.invalidations += 1
            if service is None:
                self._cache.clear()
                self._key_service.clear()
                self._service_keys.clear()
                return
            for key in self._service_keys.pop(service.lower(), ()):
                self._cache.pop(key, None)
                self._key_service.pop(key, None)

    def _store(self, key: bytes, entry: _Entry, service: str | None, generation: int) -> None:
        with self._lock:
            if generation != self._generation or key in self._cache:
                return
            while len(self._key_service) >= self._max_cache_entries:
                old = next(iter(self._key_service))
                old_service = self._key_service.pop(old)
                self._cache.pop(old, None)
                keys = self._service_keys.get(old_service)
                if keys is not None:
                    keys.discard(old)
                    if not keys:
                        del self._service_keys[old_service]
            self._cache[key] = entry
            self._key_service[key] = service
            self._service_keys.setdefault(service, set()).add(key)

    def stats(self) -> dict[str, int]:
        """Counters plus gauges (cache_entries, forwards_in_flight, tcp_open), for a status endpoint."""
        out = dataclasses.asdict(self.counters)
        out["cache_entries"] = len(self._cache)
        out["forwards_in_flight"] = self._inflight
        out["tcp_open"] = len(self._connections)
        return out

    # --- answering -----------------------------------------------------------------------------

    def _internal_error(self, what: str) -> None:
        self.counters.errors += 1
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:  # a bug hit by every packet must not flood the journal
            self._last_error_log = now
            log.exception("DNS: internal error %s", what)

    def _parse(self, data: bytes) -> _Query | bytes | None:
        """A well-formed query, or the error answer to send, or None to drop the message."""
        c = self.counters
        if len(data) < 12 or data[2] & _QR:  # no header to answer to, or a response: never answer
            c.dropped += 1
            return None
        ra = bool(self._upstreams)
        if data[2] & 0x78:  # opcode other than QUERY
            c.notimp += 1
            return _header_only(data, NOTIMP, ra)
        qd, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
        question = _parse_question(data) if qd == 1 else None
        if question is None or question[1] + 4 > len(data):
            c.formerr += 1
            return _header_only(data, FORMERR, ra)
        labels, name_end = question
        end = name_end + 4
        edns = _parse_edns(data, end, (an, ns, ar))
        if edns is None:
            c.formerr += 1
            return _header_only(data, FORMERR, ra)
        qtype, qclass = struct.unpack_from("!HH", data, name_end)
        key = data[12:name_end].lower() + data[name_end:end]
        return _Query(data[2], name_end, end, labels, qtype, qclass, key, *edns)

    def _process(self, data: bytes, tcp: bool) -> bytes | _Query | None:
        """Answer one message: the answer, a query to forward, or None (drop)."""
        q = self._parse(data)
        if not isinstance(q, _Query):
            return q
        ra = bool(self._upstreams)
        if q.edns and q.edns_version != 0:
            return _error_answer(data, q, BADVERS, ra)
        if q.labels[-self._zone_len :] == self._zone:
            return self._answer_zone(data, q, tcp)
        if ra:
            return q
        self.counters.refused += 1
        return _error_answer(data, q, REFUSED, ra)

    def _answer_zone(self, data: bytes, q: _Query, tcp: bool) -> bytes:
        ra = bool(self._upstreams)
        if q.qclass != CLASS_IN or q.qtype in (TYPE_AXFR, TYPE_IXFR):
            self.counters.refused += 1
            return _error_answer(data, q, REFUSED, ra)
        entry = self._cache.get(q.key)
        if entry is None:
            try:
                entry = self._miss(q)
            except SourceUnavailable:
                self.counters.unavailable += 1
                return _error_answer(data, q, SERVFAIL, ra)
            except Exception:
                self._internal_error(f"answering {q.key!r}")
                return _error_answer(data, q, SERVFAIL, ra)
        else:
            self.counters.cache_hits += 1
        return _select(entry, data, q, tcp)

    def _miss(self, q: _Query) -> _Entry:
        self.counters.cache_misses += 1
        generation = self._generation
        full, service = self._build(q)
        entry = _make_entry(full, q.end - 12)
        # Names with a zero byte inside a label are answered but never cached: the UDP fast path
        # finds the end of the name with the first zero byte.
        if not any(0 in label for label in q.labels):
            self._store(q.key, entry, service, generation)
        return entry

    def _build(self, q: _Query) -> tuple[bytes, str | None]:
        """The canonical answer (ID 0, RD 0, no OPT, lowercased question) and the service it depends on."""
        qname = DNSLabel(q.labels)
        rel = q.labels[: len(q.labels) - self._zone_len]
        rcode, answers, additional, service = self._lookup(rel, q.qtype, qname)
        limit = len(answers)
        while True:
            reply = DNSRecord(
                DNSHeader(id=0, bitmap=0, qr=1, aa=1, ra=int(bool(self._upstreams)), rcode=rcode),
                q=DNSQuestion(qname, q.qtype, q.qclass),
            )
            reply.add_answer(*answers[:limit])
            if rcode == NXDOMAIN or not answers:
                reply.add_auth(self._soa())
            if limit == len(answers):
                reply.add_ar(*additional)
            packed = bytes(reply.pack())
            if len(packed) <= MAX_MESSAGE - len(_OPT_RR):
                break
            limit //= 2  # thousands of instances: keep as many as a TCP message holds
        if packed[12 : q.end] != q.key:
            raise RuntimeError("dnslib packed a different question")
        return packed, service

    def _soa(self) -> Any:
        times = (1, 3600, 600, 86400, self._ttl)
        soa = SOA(self._zone_label, DNSLabel((b"hostmaster", *self._zone)), times)
        return RR(self._zone_label, TYPE_SOA, CLASS_IN, self._ttl, soa)

    def _lookup(
        self, rel: tuple[bytes, ...], qtype: int, qname: Any
    ) -> tuple[int, list[Any], list[Any], str | None]:
        """(rcode, answers, additional records, service the answer depends on) for a zone name."""
        if not rel:  # the apex: its SOA, nothing else
            return NOERROR, [self._soa()] if qtype in (TYPE_SOA, TYPE_ANY) else [], [], None
        if len(rel) == 1:
            return self._service_name(rel[0], qtype, qname)
        if len(rel) == 2 and rel[0] == b"leader":
            return self._leader_name(rel[1], qtype, qname)
        if len(rel) == 2 and rel[1] in (b"_tcp", b"_udp") and rel[0][:1] == b"_":
            return self._srv_name(rel[0][1:], qtype, qname)
        addr = _addr_from_label(rel[0]) if len(rel) == 2 and rel[1] == b"addr" else None
        if addr is not None:
            return NOERROR, self._address_rrs(qname, [addr], qtype), [], None
        return NXDOMAIN, [], [], None

    def _instances(self, label: bytes) -> tuple[str | None, list[tuple[str, int]] | None]:
        try:
            service = label.decode("ascii")
        except UnicodeDecodeError:
            return None, None
        return service, self._source.dns_instances(service)

    def _service_name(
        self, label: bytes, qtype: int, qname: Any
    ) -> tuple[int, list[Any], list[Any], str | None]:
        service, instances = self._instances(label)
        if instances is None:
            # Empty non-terminals (names below them exist) are NODATA, not NXDOMAIN.
            rcode = NOERROR if label in (b"addr", b"_tcp", b"_udp") else NXDOMAIN
            return rcode, [], [], service
        addrs = _addresses(ip for ip, _ in instances)
        return NOERROR, self._address_rrs(qname, addrs, qtype), [], service

    def _leader_name(
        self, label: bytes, qtype: int, qname: Any
    ) -> tuple[int, list[Any], list[Any], str | None]:
        service, instances = self._instances(label)
        if instances is None or service is None:
            return NXDOMAIN, [], [], service
        leader = self._source.dns_leader(service)
        addrs = _addresses([leader[0]]) if leader is not None else []
        return NOERROR, self._address_rrs(qname, addrs, qtype), [], service

    def _srv_name(self, label: bytes, qtype: int, qname: Any) -> tuple[int, list[Any], list[Any], str | None]:
        service, instances = self._instances(label)
        if instances is None:
            return NXDOMAIN, [], [], service
        if qtype not in (TYPE_SRV, TYPE_ANY):
            return NOERROR, [], [], service
        answers: list[Any] = []
        additional: list[Any] = []
        seen_srv: set[tuple[str, int]] = set()
        seen_target: set[str] = set()
        for ip, port in instances:
            parsed = _addresses([ip])
            if not parsed or not 0 <= port <= 65535 or (ip, port) in seen_srv:
                continue
            seen_srv.add((ip, port))
            label_text = addr_label(str(parsed[0]))
            target = DNSLabel((label_text.encode(), b"addr", *self._zone))
            answers.append(RR(qname, TYPE_SRV, CLASS_IN, self._ttl, SRV(1, 1, port, target)))
            if label_text not in seen_target:
                seen_target.add(label_text)
                additional.extend(self._address_rrs(target, parsed, TYPE_ANY))
        return NOERROR, answers, additional, service

    def _address_rrs(
        self, name: Any, addrs: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address], qtype: int
    ) -> list[Any]:
        out: list[Any] = []
        for addr in addrs:
            if isinstance(addr, ipaddress.IPv4Address) and qtype in (TYPE_A, TYPE_ANY):
                out.append(RR(name, TYPE_A, CLASS_IN, self._ttl, A(tuple(addr.packed))))
            elif isinstance(addr, ipaddress.IPv6Address) and qtype in (TYPE_AAAA, TYPE_ANY):
                out.append(RR(name, TYPE_AAAA, CLASS_IN, self._ttl, AAAA(tuple(addr.packed))))
        return out

    # --- forwarding ----------------------------------------------------------------------------

    def _start_forward(self, data: bytes, q: _Query, reply: Callable[[bytes], None], tcp: bool) -> None:
        """Forward in a task, or SERVFAIL at once when max_forwards are already in flight."""
        if self._inflight >= self._max_forwards:
            self.counters.forward_rejected += 1
            reply(_error_answer(data, q, SERVFAIL, True))
            return
        self._inflight += 1
        self.counters.forwards += 1
        task = asyncio.get_running_loop().create_task(self._forward_task(data, q, reply, tcp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward_task(self, data: bytes, q: _Query, reply: Callable[[bytes], None], tcp: bool) -> None:
        try:
            answer = await self._forward(data, q, tcp)
            reply(answer)
        except Exception:
            self._internal_error("forwarding")
        finally:
            self._inflight -= 1

    async def _forward(self, data: bytes, q: _Query, tcp: bool) -> bytes:
        """The upstream answer to ``data`` with the client's ID, or SERVFAIL if no upstream answers."""
        qid = secrets.randbits(16).to_bytes(2, "big")
        query = qid + data[2:]
        client_limit = (
            MAX_MESSAGE if tcp else max(q.edns_size, UDP_PLAIN_LIMIT) if q.edns else UDP_PLAIN_LIMIT
        )

        def valid(resp: bytes) -> bool:
            return _is_answer_to(resp, qid, data, q)

        for upstream in self._upstreams:
            answer = await self._udp_exchange(upstream, query, valid)
            if answer is not None and answer[2] & _TC:
                self.counters.forward_tcp_retries += 1
                full = await self._tcp_exchange(upstream, query, valid)
                if full is not None and len(full) <= client_limit:
                    answer = full
            if answer is not None:
                return data[:2] + answer[2:]
        self.counters.forward_failures += 1
        return _error_answer(data, q, SERVFAIL, True)

    async def _udp_exchange(
        self, upstream: tuple[str, int], query: bytes, valid: Callable[[bytes], bool]
    ) -> bytes | None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes | None] = loop.create_future()
        transport: asyncio.DatagramTransport | None = None
        try:
            async with asyncio.timeout(self._forward_timeout):
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UpstreamProtocol(done, valid), remote_addr=upstream
                )
                transport.sendto(query)
                answer = await done
        except (TimeoutError, OSError):
            answer = None
        finally:
            if transport is not None:
                transport.close()
        if answer is None:
            self.counters.forward_timeouts += 1
        return answer

    async def _tcp_exchange(
        self, upstream: tuple[str, int], query: bytes, valid: Callable[[bytes], bool]
    ) -> bytes | None:
        writer: asyncio.StreamWriter | None = None
        answer: bytes | None = None
        try:
            async with asyncio.timeout(self._forward_timeout):
                reader, writer = await asyncio.open_connection(upstream[0], upstream[1])
                writer.write(len(query).to_bytes(2, "big") + query)
                size = int.from_bytes(await reader.readexactly(2), "big")
                resp = await reader.readexactly(size)
                answer = resp if valid(resp) else None
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            answer = None
        finally:
            if writer is not None:
                writer.transport.abort()
        if answer is None:
            self.counters.forward_timeouts += 1
        return answer

    # --- transports ----------------------------------------------------------------------------

    def _udp_slow(self, transport: asyncio.DatagramTransport, data: bytes, addr: Any) -> None:
        result = self._process(data, tcp=False)
        if result is None:
            return
        if isinstance(result, bytes):
            transport.sendto(result, addr)
            return

        def reply(answer: bytes) -> None:
            if not transport.is_closing():
                transport.sendto(answer, addr)

        self._start_forward(data, result, reply, tcp=False)

    def _tcp_message(self, conn: _TCPConnection, data: bytes) -> None:
        self.counters.queries += 1
        self.counters.tcp_queries += 1
        try:
            result = self._process(data, tcp=True)
            if result is None:
                return
            if isinstance(result, bytes):
                conn.send(result)
                return
            conn.pending += 1

            def reply(answer: bytes) -> None:
                conn.pending -= 1
                conn.send(answer)

            self._start_forward(data, result, reply, tcp=True)
        except Exception:
            self._internal_error("on TCP")


def _is_answer_to(resp: bytes, qid: bytes, query: bytes, q: _Query) -> bool:
    """Is ``resp`` an upstream's answer to our forwarded ``query`` (same ID and question)?"""
    if len(resp) < 12 or resp[:2] != qid or not resp[2] & _QR:
        return False
    qd = resp[4:6]
    if qd == b"\x00\x00":
        return bool(resp[3] & 0x0F)  # error answers may omit the question
    return (
        qd == b"\x00\x01"
        and len(resp) >= q.end
        and resp[12 : q.name_end].lower() == query[12 : q.name_end].lower()
        and resp[q.name_end : q.end] == query[q.name_end : q.end]
    )


def _addresses(ips: Iterable[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Parsed addresses, duplicates and unparsable ones left out, order kept."""
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for ip in ips:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            log.warning("DNS: registry returned a bad address %r", ip)
            continue
        if addr not in out:
            out.append(addr)
    return out


class _UDPProtocol(asyncio.DatagramProtocol):
    """The UDP listener. The fast path answers a plain cached query from its header and question bytes."""

    def __init__(self, server: DNSServer) -> None:
        self._server = server
        self._cache = server._cache  # never rebound: invalidate() clears it in place
        self._counters = server.counters
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._counters.queries += 1
        transport = self._transport
        if transport is None:
            return
        try:
            # The first zero byte after the header ends the qname of a cacheable name (cached names
            # have no zero byte inside a label), so data[12:z+5] is the question if it is in the cache.
            z = data.find(0, 12)
            if z > 0:
                end = z + 5
                entry = self._cache.get(data[12:end])
                if entry is not None and not data[2] & 0xF8:  # a QUERY, not a response
                    counts = data[4:12]
                    if len(data) == end and counts == _COUNTS_PLAIN:
                        self._counters.cache_hits += 1
                        transport.sendto(data[:2] + entry[data[2] & _RD], addr)
                        return
                    if counts == _COUNTS_OPT:
                        answer = _fast_edns(data, end, entry)
                        if answer is not None:
                            self._counters.cache_hits += 1
                            transport.sendto(answer, addr)
                            return
            self._server._udp_slow(transport, data, addr)
        except Exception:
            self._server._internal_error("on UDP")

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for earlier answers (client gone): nothing to do


class _UpstreamProtocol(asyncio.DatagramProtocol):
    """One forwarded UDP query: the first valid answer from the (connected) upstream wins."""

    def __init__(self, done: asyncio.Future[bytes | None], valid: Callable[[bytes], bool]) -> None:
        self._done = done
        self._valid = valid

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self._done.done() and self._valid(data):
            self._done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self._done.done():  # e.g. ICMP port unreachable: try the next upstream now
            self._done.set_result(None)


class _TCPConnection(asyncio.Protocol):
    """One TCP client: length-prefixed messages, several per connection, closed when idle."""

    def __init__(self, server: DNSServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self.pending = 0  # forwards in flight for this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        server = self._server
        if len(server._connections) >= server._max_tcp_connections:
            server.counters.tcp_rejected += 1
            transport.abort()
            return
        self._transport = transport
        server._connections.add(self)
        server.counters.tcp_connections += 1
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._timer = loop.call_later(server._tcp_idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        self._last = asyncio.get_running_loop().time()
        buf = self._buffer
        buf += data
        while len(buf) >= 2 and not self._transport.is_closing():
            size = (buf[0] << 8) | buf[1]
            if len(buf) < size + 2:
                break
            message = bytes(buf[2 : size + 2])
            del buf[: size + 2]
            self._server._tcp_message(self, message)

    def send(self, answer: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            self._last = asyncio.get_running_loop().time()
            transport.write(len(answer).to_bytes(2, "big") + answer)

    def _check_idle(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        loop = asyncio.get_running_loop()
        remaining = self._last + self._server._tcp_idle_timeout - loop.time()
        if remaining <= 0 and self.pending == 0:
            self._server.counters.tcp_idle_closed += 1
            transport.close()
            return
        self._timer = loop.call_later(max(remaining, 0.05), self._check_idle)

    def pause_writing(self) -> None:  # the client does not read its answers: stop reading its queries
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._server._connections.discard(self)
        self._buffer.clear()
