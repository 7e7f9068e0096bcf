"""TLS termination for the router: one protocol on the TCP socket that is also the transport its
HTTP protocol (:class:`~flynn.router.http1.H1Conn` or :class:`~flynn.router.http2.H2Conn`,
chosen by ALPN) writes to.

OpenSSL does the TLS, through an :class:`ssl.SSLObject` over two memory BIOs, as in asyncio's
own TLS transports. What differs is when it is asked to decrypt. Python reports "no complete
record yet" by raising :class:`ssl.SSLWantReadError`, and building that exception costs more
than decrypting a small record (5-10 us against 2-3 us here, see docs/router.md). asyncio and
uvloop read until it is raised, so every request paid for one. :class:`TLSConn` follows the TLS
record framing of the bytes it feeds in (a 5-byte header carrying the length) and calls
``read()`` only while a complete record is waiting, which OpenSSL then always answers with data.
The exception remains for what is not application data (the handshake, a TLS 1.3 key update),
handled the same way.

Sending: ``write()`` keeps the plaintext; at the end of the loop iteration (the router's
:mod:`~flynn.router.outbox`) what gathered is encrypted in one call and leaves in one socket
write, so the answers of several HTTP/2 streams, or a head and its body, cost one send and one
round of OpenSSL's per-write work instead of one each (OpenSSL's share of an HTTP/2 request fell
from 11.8k to 6.2k instructions with this; HAProxy's is 6.1k). Sending each HTTP/1.1 answer at
once instead was measured and cost more CPU per request (docs/router.md, "Performance").

Flow control: the HTTP protocol's ``pause_reading()`` stops the socket and leaves the records
already received in the BIO; ``resume_reading()`` decrypts them (on the next loop iteration) and
starts the socket again. The socket's ``pause_writing()``/``resume_writing()`` are passed up.
A handshake not finished within ``handshake_timeout`` is aborted by the router's
:class:`~flynn.router.timeouts.Reaper` (no timer per connection).

(Compiled with mypyc with the rest of the data plane: no base class, typed attributes.)
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

from flynn.router.outbox import Flushable, Outbox, not_connected
from flynn.router.stats import Stats
from flynn.router.timeouts import Reaper

log = logging.getLogger(__name__)

READ_SIZE = 16384  # a TLS record carries at most 16 KiB of plaintext; one read() takes one record

HANDSHAKE, OPEN, CLOSED = 0, 1, 2


class TLSConn(Flushable):
    """Server side of one TLS connection; ``choose(sslobj)`` gives the protocol to hand the
    plaintext to once the handshake is done (by ALPN)."""

    def __init__(
        self,
        context: ssl.SSLContext,
        choose: Callable[[ssl.SSLObject], Any],
        clock: Reaper,
        stats: Stats,
        handshake_timeout: float,
        outbox: Outbox | None = None,
    ) -> None:
        self.context = context
        self.choose = choose
        self.clock = clock
        self.stats = stats
        self.handshake_timeout = handshake_timeout
        # where writes wait for the end of the loop iteration: the router's, shared by all
        # its connections; one of its own when none is given (tests)
        self.outbox = outbox if outbox is not None else Outbox(clock.loop)
        self.state = HANDSHAKE
        self.deadline = 0.0
        self.raw: Any = None
        self.app: Any = None
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        # the C object under it: SSLObject's read/write/pending are Python methods that only
        # call these, and that frame cost as much as the decryption of a small record
        self.ossl: Any = self.sslobj._sslobj  # type: ignore[attr-defined]
        # bound methods of what is called per record: a method called by name from compiled
        # code is looked up on its type every time (docs/router.md, "Performance")
        self.feed_bio: Callable[[bytes], int] = self.incoming.write
        self.take_bio: Callable[[], bytes] = self.outgoing.read
        self.decrypt: Callable[[int], bytes] = self.ossl.read
        self.encrypt: Callable[[Any], int] = self.ossl.write
        self.plain_pending: Callable[[], int] = self.ossl.pending
        self.send_raw: Callable[[bytes], object] = not_connected  # the socket's write
        self.app_data: Callable[[bytes], object] = not_connected  # the HTTP protocol's
        self.paused = False
        self.drain_scheduled = False
        self.flush_scheduled = False
        self.plain: list[bytes] = []  # written, not yet encrypted (until the iteration ends)
        self.plain_len = 0
        self.eof = False  # the client's close_notify (or FIN) was passed on
        self.fin = False  # the socket reached EOF
        self.empty_reads = 0  # read() calls that found no application data (see the docstring)
        # record framing of the stream fed to ``incoming``: bytes fed so far, the stream offset
        # where the last complete record ends, bytes still missing from the record being
        # received, and the first bytes of a record header split between two reads
        self.fed = 0
        self.complete_end = 0
        self.missing = 0
        self.part = b""

    # --- the socket's protocol -----------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.raw = transport
        self.send_raw = transport.write
        if self.handshake_timeout > 0:
            self.deadline = self.clock.now + self.handshake_timeout
            self.clock.watched.add(self)

    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        self.feed_bio(data)
        self._frame(data)
        if self.state == HANDSHAKE and not self._handshake():
            return
        self._decrypt()

    def eof_received(self) -> bool:
        if self.state != OPEN:
            return False
        self.fin = True
        # the records that came before the FIN first; the EOF follows them, now or (reading
        # paused) once they are all read
        self._decrypt()
        return self.state == OPEN  # keep the write side: the answer may still be on its way

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = CLOSED
        self.clock.watched.discard(self)
        if was != HANDSHAKE and self.app is not None:
            self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    def timed_out(self) -> None:
        self.clock.watched.discard(self)
        if self.state == HANDSHAKE:
            self.stats.timeouts += 1
            self.stats.tls_handshake_errors += 1
            self.state = CLOSED
            self.raw.abort()

    # --- TLS -----------------------------------------------------------------------------------
    def _frame(self, data: bytes) -> None:
        n = len(data)
        pos = 0
        missing = self.missing
        if missing:
            if n < missing:
                self.missing = missing - n
                self.fed += n
                return
            pos = missing
            self.missing = 0
            self.complete_end = self.fed + pos
        elif self.part:
            head = self.part + data[: 5 - len(self.part)]
            if len(head) < 5:
                self.part = head
                self.fed += n
                return
            pos = 5 - len(self.part)
            self.part = b""
            end = pos + ((head[3] << 8) | head[4])
            if end > n:
                self.missing = end - n
                self.fed += n
                return
            pos = end
            self.complete_end = self.fed + pos
        last = pos
        while pos + 5 <= n:
            end = pos + 5 + ((data[pos + 3] << 8) | data[pos + 4])
            if end > n:
                self.missing = end - n
                break
            pos = last = end
        else:
            if pos < n:
                self.part = data[pos:]
        if last:
            self.complete_end = self.fed + last
        self.fed += n

    def _handshake(self) -> bool:
        try:
            self.ossl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, ValueError) as exc:
            log.debug("TLS handshake failed: %s", exc)
            self.stats.tls_handshake_errors += 1
            self._flush()  # the alert, if OpenSSL made one
            self.state = CLOSED
            self.clock.watched.discard(self)
            self.raw.close()
            return False
        self._flush()
        self.state = OPEN
        self.clock.watched.discard(self)
        self.deadline = 0.0
        app = self.app = self.choose(self.sslobj)
        self.app_data = app.data_received
        app.connection_made(self)
        return self.state == OPEN

    def _decrypt(self) -> None:
        incoming = self.incoming
        while not self.paused and self.state == OPEN:
            waiting = self.complete_end - (self.fed - incoming.pending)  # whole records' bytes
            if waiting <= 0 and not self.plain_pending():
                if self.fin:  # the FIN came and everything before it is read
                    self._app_eof()
                return  # nothing but part of a record: wait for the rest
            try:
                # a record's plaintext is shorter than the record: asking for no more than the
                # waiting bytes keeps a small request's buffer small (a 16 KiB one is malloc'd
                # and shrunk again); what a short read leaves, pending() reports next round
                chunk = self.decrypt(waiting if 0 < waiting < READ_SIZE else READ_SIZE)
            except ssl.SSLWantReadError:
                self.empty_reads += 1  # a record with no data for us (a key update, ...)
                self._flush()  # (a post-handshake message may want an answer)
                return
            except ssl.SSLZeroReturnError:  # close_notify after ours was sent
                self._app_eof()
                return
            except ssl.SSLError as exc:
                log.debug("TLS error: %s", exc)
                self.abort()
                return
            if not chunk:  # the client's close_notify (OpenSSL skips empty records itself)
                self._app_eof()
                return
            self.app_data(chunk)

    def _app_eof(self) -> bool:
        if self.eof:
            return True
        self.eof = True
        eof = getattr(self.app, "eof_received", None)
        keep = bool(eof()) if eof is not None else False
        if not keep:
            self.close()
        return keep

    def _flush(self) -> None:
        out = self.take_bio()
        if out:
            self.send_raw(out)

    def _drain(self) -> None:
        self.drain_scheduled = False
        self._decrypt()

    # --- the transport the HTTP protocol sees --------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.state != OPEN or not data:
            return
        # kept as plaintext until the end of the loop iteration (a copy of a buffer the caller
        # may reuse), encrypted then in one go
        self.plain.append(data if isinstance(data, bytes) else bytes(data))
        self.plain_len += len(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.outbox.add(self)

    def write_parts(self, parts: list[bytes]) -> None:
        """``write()`` of several pieces, without joining them first (the HTTP/2 frames)."""
        if self.state != OPEN or not parts:
            return
        n = 0
        for part in parts:
            n += len(part)
        self.plain.extend(parts)
        self.plain_len += n
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.outbox.add(self)

    def flush(self) -> None:
        # once per loop iteration: everything written meanwhile (HTTP/2 frames of several
        # streams, a head and its body, ...) is encrypted in one call and leaves in one send
        self.flush_scheduled = False
        if self.state == OPEN:
            self._encrypt_plain()
            self._flush()

    def _encrypt_plain(self) -> None:
        plain = self.plain
        if plain:
            self.plain = []
            self.plain_len = 0
            self.encrypt(plain[0] if len(plain) == 1 else b"".join(plain))

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot be half-closed")

    def pause_reading(self) -> None:
        if not self.paused:
            self.paused = True
            self.raw.pause_reading()

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.state == OPEN:
                if not self.fin:
                    self.raw.resume_reading()
                if not self.drain_scheduled:
                    self.drain_scheduled = True
                    self.clock.loop.call_soon(self._drain)

    def is_reading(self) -> bool:
        return not self.paused and self.state == OPEN

    def close(self) -> None:
        if self.state == CLOSED:
            return
        if self.state == OPEN:
            self._encrypt_plain()  # what was written before the close goes first
        self.state = CLOSED
        with contextlib.suppress(ssl.SSLError, ValueError):
            self.sslobj.unwrap()  # queues our close_notify
        self._flush()
        self.raw.close()

    def abort(self) -> None:
        self.state = CLOSED
        self.raw.abort()

    def is_closing(self) -> bool:
        return self.state == CLOSED or bool(self.raw.is_closing())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sslobj = self.sslobj
        if name == "ssl_object":
            return sslobj
        if name == "sslcontext":
            return sslobj.context
        if name == "cipher":
            return sslobj.cipher()
        if name == "peercert":
            return sslobj.getpeercert()
        return self.raw.get_extra_info(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self.app = protocol
        self.app_data = protocol.data_received

    def get_protocol(self) -> Any:
        return self.app

    def get_write_buffer_size(self) -> int:
        return self.plain_len + self.outgoing.pending + int(self.raw.get_write_buffer_size())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        limits: tuple[int, int] = self.raw.get_write_buffer_limits()
        return limits
