"""A small syslog receiver for the tests: RFC 5424 messages over TCP (TLS optional) with
octet-counted framing (RFC 6587 §3.4.1), parsed strictly and independently of flynn.logs.rfc5424.

``SyslogReceiver(port=0).start()`` listens in a thread; ``messages`` fills as frames arrive;
``stop()`` closes the listener and every connection (a receiver that was killed) and
``start()`` again listens on the same port. Anything that does not parse is kept in ``errors``.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

BOM = b"\xef\xbb\xbf"
_HEADER = re.compile(
    rb"^<(?P<pri>[0-9]{1,3})>1 (?P<ts>\S+) (?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) "
    rb"(?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
)
_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$")
_SD_NAME = rb"[!#-<>-\\^-~]{1,32}"  # printable ASCII but = ] " and space


@dataclass
class Message:
    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: dict[str, dict[str, str]]
    msg: str


class ParseError(ValueError):
    pass


def _value(data: bytes) -> tuple[str, bytes]:
    """A PARAM-VALUE up to its closing quote, with its escapes undone."""
    value = bytearray()
    while True:
        if not data:
            raise ParseError("unterminated PARAM-VALUE")
        c = data[:1]
        if c == b"\\" and data[1:2] in (b'"', b"\\", b"]"):
            value += data[1:2]
            data = data[2:]
        elif c == b'"':
            return value.decode(), data[1:]
        elif c == b"]":
            raise ParseError("unescaped ] in PARAM-VALUE")
        else:
            value += c
            data = data[1:]


def _sd(data: bytes) -> tuple[dict[str, dict[str, str]], bytes]:
    if data.startswith(b"-"):
        return {}, data[1:]
    out: dict[str, dict[str, str]] = {}
    while data.startswith(b"["):
        m = re.match(rb"\[(" + _SD_NAME + rb")", data)
        if m is None:
            raise ParseError("bad SD-ID")
        sd_id = m.group(1).decode()
        params: dict[str, str] = {}
        data = data[m.end() :]
        while data.startswith(b" "):
            pm = re.match(rb" (" + _SD_NAME + rb')="', data)
            if pm is None:
                raise ParseError("bad SD-PARAM")
            params[pm.group(1).decode()], data = _value(data[pm.end() :])
        if not data.startswith(b"]"):
            raise ParseError("SD-ELEMENT not closed")
        out[sd_id] = params
        data = data[1:]
    if not out:
        raise ParseError("no STRUCTURED-DATA")
    return out, data


def parse(frame: bytes) -> Message:
    m = _HEADER.match(frame)
    if m is None:
        raise ParseError(f"bad header: {frame[:80]!r}")
    pri = int(m.group("pri"))
    if pri > 191:
        raise ParseError("PRI over 191")
    ts = m.group("ts").decode()
    if not _TS.match(ts):
        raise ParseError(f"bad TIMESTAMP {ts!r}")
    sd, rest = _sd(frame[m.end() :])
    if rest and not rest.startswith(b" "):
        raise ParseError("no space before MSG")
    body = rest[1:]
    if body.startswith(BOM):
        body = body[len(BOM) :]
    return Message(
        pri=pri,
        timestamp=ts,
        hostname=m.group("host").decode(),
        app_name=m.group("app").decode(),
        procid=m.group("procid").decode(),
        msgid=m.group("msgid").decode(),
        sd=sd,
        msg=body.decode("utf-8"),
    )


def read_frames(buf: bytearray) -> list[bytes]:
    """Take every complete ``LEN SP MSG`` frame off the front of ``buf``."""
    frames: list[bytes] = []
    while True:
        sp = buf.find(b" ")
        if sp < 0:
            if len(buf) > 10:
                raise ParseError("no MSG-LEN")
            return frames
        head = bytes(buf[:sp])
        if not head.isdigit() or head.startswith(b"0"):
            raise ParseError(f"bad MSG-LEN {head[:20]!r}")
        n = int(head)
        if len(buf) < sp + 1 + n:
            return frames
        frames.append(bytes(buf[sp + 1 : sp + 1 + n]))
        del buf[: sp + 1 + n]


@dataclass
class SyslogReceiver:
    host: str = "127.0.0.1"
    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    messages: list[Message] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _listener: socket.socket | None = None
    _conns: list[socket.socket] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> SyslogReceiver:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self._listener = sock
        t = threading.Thread(target=self._accept, args=(sock,), daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if self.ssl_context is not None:
                try:
                    conn.settimeout(10)
                    conn = self.ssl_context.wrap_socket(conn, server_side=True)
                    conn.settimeout(None)
                except (OSError, ssl.SSLError) as exc:
                    with self._lock:
                        self.errors.append(f"TLS handshake: {exc}")
                    conn.close()
                    continue
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            while chunk := conn.recv(65536):
                buf += chunk
                frames = read_frames(buf)
                parsed = [parse(f) for f in frames]
                with self._lock:
                    self.messages.extend(parsed)
        except (OSError, ssl.SSLError):
            pass
        except (ParseError, UnicodeDecodeError) as exc:
            with self._lock:
                self.errors.append(str(exc))
        finally:
            conn.close()

    def stop(self) -> None:
        """Close the listener and every connection, as a receiver that died would."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes its thread's accept()
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def wait_for(self, what: str, check: Callable[[SyslogReceiver], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if check(self):
                    return
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} ({self.count()} messages)")
