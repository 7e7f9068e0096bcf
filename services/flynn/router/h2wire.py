"""The server side of the HTTP/2 wire protocol (RFC 9113), the router's own: framing, stream
states, SETTINGS, PING, GOAWAY, flow control and request validation, with HPACK from
:mod:`~flynn.router.hpack`.

:class:`H2Wire` is the native base class of the router's HTTP/2 frontend
(:class:`~flynn.router.http2.H2Conn`). It turns the bytes received into calls of its hooks,
which the frontend overrides:

* ``on_request(stream, fields)``: a valid request head opened ``stream`` (:class:`WireStream`:
  its pseudo-header fields, content-length, whether the request ended with it, whether the
  header list went over the limit); ``fields`` are the regular fields, in order;
* ``on_data(sid, data, flow_len, end)``: request body (``flow_len`` counts padding too: what to
  give back by ``ack_data`` once consumed), ``end`` with the last of it (trailers end the body
  and are dropped: the upstream is HTTP/1.1);
* ``on_reset(sid)``: the stream is gone (RST_STREAM from the client, or our stream error);
* ``on_window(sid)``: send window opened (``sid`` 0: the connection's or all streams');
* ``on_goaway()``: the client is leaving.

It offers ``send_headers``, ``send_data`` (within ``send_window(sid)``), ``send_reset``,
``ack_data`` and ``goaway``. Frames to send gather in ``out``; ``take_output()`` joins them
for one write.

Errors. A connection error (a frame that breaks the protocol, an HPACK decoding error, flow
control overrun) sends GOAWAY with its code and sets ``failed``: the frontend then closes. A
stream error (a malformed request: RFC 9113 8.1.1, 8.2, 8.3) sends RST_STREAM and calls
``on_reset`` if the stream was open. Frames on streams we reset are ignored, as RFC 9113 5.4.2
asks; DATA on them still counts against, and is given back to, the connection window.

Receive windows: 65,535 per stream (the default), ``connection_window`` for the connection; a
window is topped up by WINDOW_UPDATE once half of it was consumed and acknowledged (and counts
as open again only then: a client that sends beyond what it was given gets FLOW_CONTROL_ERROR). When our
side of a stream ends before the client's (an answer before the whole request body),
RST_STREAM(NO_ERROR) tells the client to stop sending (RFC 9113 8.1).

(Compiled with mypyc with the rest of the data plane.)
"""

from __future__ import annotations

import struct
from typing import Final

from flynn.router.hpack import Decoder, Encoder, HPACKError

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA: Final = 0
HEADERS: Final = 1
PRIORITY: Final = 2
RST_STREAM: Final = 3
SETTINGS: Final = 4
PUSH_PROMISE: Final = 5
PING: Final = 6
GOAWAY: Final = 7
WINDOW_UPDATE: Final = 8
CONTINUATION: Final = 9

# flags
FLAG_END_STREAM: Final = 0x1
FLAG_ACK: Final = 0x1
FLAG_END_HEADERS: Final = 0x4
FLAG_PADDED: Final = 0x8
FLAG_PRIORITY: Final = 0x20

# error codes
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

# settings
SETTINGS_HEADER_TABLE_SIZE: Final = 0x1
SETTINGS_ENABLE_PUSH: Final = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS: Final = 0x3
SETTINGS_INITIAL_WINDOW_SIZE: Final = 0x4
SETTINGS_MAX_FRAME_SIZE: Final = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE: Final = 0x6

DEFAULT_WINDOW: Final = 65535
MAX_WINDOW: Final = (1 << 31) - 1
DEFAULT_FRAME_SIZE: Final = 16384
MAX_FRAME_SIZE: Final = (1 << 24) - 1
RESETS_ALLOWED: Final = 200  # client resets tolerated before more than half the streams
MAX_CONTINUATIONS: Final = 64  # frames of one header block
CLOSED_MEMORY: Final = 256  # closed streams remembered, of each kind (how late frames are met)

_HEAD: Final = struct.Struct(">BHBBL")  # length (high byte, low 16 bits), type, flags, stream
# (bound once: a method called by name from compiled code is looked up on its type each time)
_pack_head: Final = _HEAD.pack
_SETTING: Final = struct.Struct(">HL")
_U32: Final = struct.Struct(">L")
_GOAWAY: Final = struct.Struct(">LL")

# fields HTTP/2 forbids (RFC 9113 8.2.2); "te" may only be "trailers"
CONNECTION_FIELDS: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)


class H2Error(Exception):
    """A connection error: GOAWAY with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def remember(sids: set[int], sid: int) -> None:
    """Add to a bounded set of closed streams (the oldest half is dropped when it is full)."""
    if len(sids) >= CLOSED_MEMORY:
        newest = sorted(sids)[CLOSED_MEMORY // 2 :]
        sids.clear()
        sids.update(newest)
    sids.add(sid)


class WireStream:
    """What the wire protocol keeps of one open stream, and its request head."""

    __slots__ = (
        "authority",
        "clen",
        "local_closed",
        "method",
        "oversize",
        "path",
        "received",
        "recv_window",
        "remote_closed",
        "scheme",
        "send_window",
        "sid",
        "unacked",
    )

    def __init__(self, sid: int, send_window: int) -> None:
        self.sid = sid
        self.send_window = send_window
        self.recv_window = DEFAULT_WINDOW  # what the client may still send
        self.unacked = 0  # consumed and acknowledged, not yet given back by WINDOW_UPDATE
        self.remote_closed = False
        self.local_closed = False
        self.clen = -1  # content-length, -1 when not given
        self.received = 0  # body bytes received
        self.method = b""
        self.scheme = b""
        self.authority = b""
        self.path = b""
        self.oversize = False  # the header list was over max_header_list


class H2Wire:
    """One server-side HTTP/2 connection's protocol state (a native base class: the hooks are
    overridden by the frontend)."""

    def __init__(self, max_streams: int, max_header_list: int, connection_window: int) -> None:
        self.max_streams = max_streams
        self.max_header_list = max_header_list
        self.max_block = max(4 * max_header_list, 65536)  # compressed header block bytes
        self.connection_window = connection_window
        self.decoder = Decoder()
        self.encoder = Encoder()
        self.streams: dict[int, WireStream] = {}
        self.reset_sids: set[int] = set()  # streams we reset: their late frames are ignored
        self.closed_sids: set[int] = set()  # streams closed otherwise (ended, or reset by the client)
        self.last_sid = 0  # the highest stream the client opened
        self.out: list[bytes] = []
        self.buf = b""
        self.preface = False  # the client's preface was received
        self.settings_seen = False  # and its first SETTINGS
        self.goaway_sent = False
        self.failed = False  # a connection error: GOAWAY sent, close
        # what we may send: the client's settings and windows
        self.send_window_conn = DEFAULT_WINDOW
        self.initial_window = DEFAULT_WINDOW
        self.max_frame = DEFAULT_FRAME_SIZE
        # what the client may send on the connection
        self.recv_window_conn = connection_window
        self.unacked_conn = 0
        # a header block spread over HEADERS and CONTINUATION frames
        self.cont_sid = 0
        self.cont_flags = 0
        self.cont_parts: list[bytes] = []
        self.cont_len = 0
        self.n_pseudo = 0  # pseudo-header fields at the start of the last request's fields
        self.error = ""  # the connection error's reason, once ``failed``
        self.stream_errors = 0  # RST_STREAM sent for a broken stream (a malformed request, ...)
        self.opened = 0  # streams the client opened
        self.client_resets = 0  # open streams the client reset

    # --- hooks (the frontend overrides them; here, a wire that only keeps the protocol state)
    def on_request(self, stream: WireStream, fields: list[tuple[bytes, bytes]]) -> None:
        return

    def on_data(self, sid: int, data: bytes, flow_len: int, end: bool) -> None:
        return

    def on_reset(self, sid: int) -> None:
        return

    def on_window(self, sid: int) -> None:
        return

    def on_goaway(self) -> None:
        return

    # --- start ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Our preface: SETTINGS, and the connection window beyond the default."""
        payload = _SETTING.pack(SETTINGS_MAX_CONCURRENT_STREAMS, self.max_streams) + _SETTING.pack(
            SETTINGS_MAX_HEADER_LIST_SIZE, self.max_header_list
        )
        self._put(SETTINGS, 0, 0, payload)
        extra = self.connection_window - DEFAULT_WINDOW
        if extra > 0:
            self._put(WINDOW_UPDATE, 0, 0, _U32.pack(extra))

    def take_output(self) -> bytes:
        out = self.out
        if not out:
            return b""
        self.out = []
        return out[0] if len(out) == 1 else b"".join(out)

    # --- receiving ------------------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Handle the bytes received (a connection error sets ``failed`` and sends GOAWAY)."""
        if self.failed:
            return
        buf = self.buf + data if self.buf else data
        try:
            pos = 0
            if not self.preface:
                if len(buf) < 24:
                    if not PREFACE.startswith(buf):
                        raise H2Error(PROTOCOL_ERROR, "not the HTTP/2 preface")
                    self.buf = buf
                    return
                if buf[:24] != PREFACE:
                    raise H2Error(PROTOCOL_ERROR, "not the HTTP/2 preface")
                self.preface = True
                pos = 24
            n = len(buf)
            while n - pos >= 9:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > DEFAULT_FRAME_SIZE:
                    raise H2Error(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                end = pos + 9 + length
                if end > n:
                    break
                ftype = buf[pos + 3]
                flags = buf[pos + 4]
                sid = (
                    ((buf[pos + 5] & 0x7F) << 24) | (buf[pos + 6] << 16) | (buf[pos + 7] << 8) | buf[pos + 8]
                )  # (native byte reads: a struct call costs more)
                payload = buf[pos + 9 : end]
                pos = end
                self._frame(ftype, flags, sid, payload)
            self.buf = buf[pos:] if pos < n else b""
        except H2Error as err:
            self.fail(err.code, str(err))
        except HPACKError as bad:  # a name of its own: mypyc mixes up one name bound twice
            self.fail(COMPRESSION_ERROR, str(bad))

    def fail(self, code: int, message: str) -> None:
        """A connection error: GOAWAY, and nothing more is read."""
        self.failed = True
        self.error = message
        self.buf = b""
        self.goaway(code)

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:  # noqa: PLR0912
        if self.cont_sid:
            if ftype != CONTINUATION or sid != self.cont_sid:
                raise H2Error(PROTOCOL_ERROR, "header block interrupted")
            self._continuation(flags, payload)
            return
        if not self.settings_seen:
            if ftype != SETTINGS or flags & FLAG_ACK:
                raise H2Error(PROTOCOL_ERROR, "the preface is not followed by SETTINGS")
            self.settings_seen = True
        if ftype == DATA:
            self._data(flags, sid, payload)
        elif ftype == HEADERS:
            self._headers(flags, sid, payload)
        elif ftype == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif ftype == SETTINGS:
            self._settings(flags, sid, payload)
        elif ftype == PING:
            if len(payload) != 8:
                raise H2Error(FRAME_SIZE_ERROR, "PING is not 8 bytes")
            if sid:
                raise H2Error(PROTOCOL_ERROR, "PING on a stream")
            if not flags & FLAG_ACK:
                self._put(PING, FLAG_ACK, 0, payload)
        elif ftype == RST_STREAM:
            self._rst_stream(sid, payload)
        elif ftype == PRIORITY:
            if not sid:
                raise H2Error(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._stream_error(sid, FRAME_SIZE_ERROR)
            elif _U32.unpack_from(payload, 0)[0] & 0x7FFFFFFF == sid:
                self._stream_error(sid, PROTOCOL_ERROR)
        elif ftype == GOAWAY:
            if sid:
                raise H2Error(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise H2Error(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            self.on_goaway()
        elif ftype == PUSH_PROMISE:
            raise H2Error(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        elif ftype == CONTINUATION:
            raise H2Error(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        # other types are extensions: ignored (RFC 9113 5.5)

    def _unpad(self, flags: int, payload: bytes) -> bytes:
        if not flags & FLAG_PADDED:
            return payload
        if not payload:
            raise H2Error(FRAME_SIZE_ERROR, "padded frame without its pad length")
        pad = payload[0]
        if pad >= len(payload):
            raise H2Error(PROTOCOL_ERROR, "padding longer than the frame")
        return payload[1 : len(payload) - pad]

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise H2Error(PROTOCOL_ERROR, "DATA on stream 0")
        flow_len = len(payload)
        self.recv_window_conn -= flow_len
        if self.recv_window_conn < 0:
            raise H2Error(FLOW_CONTROL_ERROR, "connection window exceeded")
        data = self._unpad(flags, payload)
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            if sid > self.last_sid:
                raise H2Error(PROTOCOL_ERROR, "DATA on an idle stream")
            self._ack_conn(flow_len)
            if sid not in self.reset_sids:
                self._stream_error(sid, STREAM_CLOSED)
            return
        stream.recv_window -= flow_len
        if stream.recv_window < 0:
            self._ack_conn(flow_len)
            self._stream_error(sid, FLOW_CONTROL_ERROR)
            return
        stream.received += len(data)
        end = bool(flags & FLAG_END_STREAM)
        if stream.clen >= 0 and (stream.received > stream.clen or (end and stream.received != stream.clen)):
            self._ack_conn(flow_len)
            self._stream_error(sid, PROTOCOL_ERROR)  # body and content-length disagree
            return
        if end:
            self._remote_end(stream)
        self.on_data(sid, data, flow_len, end)

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid or not sid & 1:
            raise H2Error(PROTOCOL_ERROR, "HEADERS on stream 0 or an even stream")
        block = self._unpad(flags, payload)
        if flags & FLAG_PRIORITY:
            if len(block) < 5:
                raise H2Error(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            if _U32.unpack_from(block, 0)[0] & 0x7FFFFFFF == sid:
                if flags & FLAG_END_HEADERS:
                    self.decoder.decode(block[5:])
                    self._stream_error(sid, PROTOCOL_ERROR)
                    return
                raise H2Error(PROTOCOL_ERROR, "stream depends on itself")
            block = block[5:]
        if flags & FLAG_END_HEADERS:
            self._block(sid, flags, block)
            return
        self.cont_sid = sid
        self.cont_flags = flags
        self.cont_parts = [block]
        self.cont_len = len(block)

    def _continuation(self, flags: int, payload: bytes) -> None:
        self.cont_parts.append(payload)
        self.cont_len += len(payload)
        if self.cont_len > self.max_block or len(self.cont_parts) > MAX_CONTINUATIONS:
            # bounded in bytes and in frames (empty ones too: CVE-2024-27316)
            raise H2Error(ENHANCE_YOUR_CALM, "header block too large")
        if flags & FLAG_END_HEADERS:
            sid = self.cont_sid
            block = b"".join(self.cont_parts)
            self.cont_sid = 0
            self.cont_parts = []
            self._block(sid, self.cont_flags, block)

    def _block(self, sid: int, flags: int, block: bytes) -> None:  # noqa: PLR0912
        """A complete header block: a new request, or trailers."""
        fields = self.decoder.decode(block)  # always: the dynamic table must stay in step
        end = bool(flags & FLAG_END_STREAM)
        stream = self.streams.get(sid)
        if stream is not None:
            if stream.remote_closed:
                self._stream_error(sid, STREAM_CLOSED)
            elif not end or self.decoder.malformed or any(f[0][:1] == b":" for f in fields):
                self._stream_error(sid, PROTOCOL_ERROR)  # trailers must end the stream
            elif stream.clen >= 0 and stream.received != stream.clen:
                self._stream_error(sid, PROTOCOL_ERROR)
            else:
                self._remote_end(stream)
                self.on_data(sid, b"", 0, True)
            return
        if sid <= self.last_sid:
            if sid in self.reset_sids:
                return
            if sid in self.closed_sids:
                raise H2Error(STREAM_CLOSED, "HEADERS on a closed stream")
            raise H2Error(PROTOCOL_ERROR, "a new stream below the last one")
        self.last_sid = sid
        if self.goaway_sent:
            return
        if len(self.streams) >= self.max_streams:
            self._stream_error(sid, REFUSED_STREAM)
            return
        self.opened += 1
        stream = WireStream(sid, self.initial_window)
        if self.decoder.malformed or not self._request_head(stream, fields):
            self._stream_error(sid, PROTOCOL_ERROR)
            return
        stream.oversize = self.decoder.list_size > self.max_header_list
        self.streams[sid] = stream
        if end:
            if stream.clen > 0:
                self._stream_error(sid, PROTOCOL_ERROR)
                return
            stream.remote_closed = True
        regular = fields[self.n_pseudo :] if self.n_pseudo else fields
        self.on_request(stream, regular)

    def _request_head(self, stream: WireStream, fields: list[tuple[bytes, bytes]]) -> bool:
        """Check a request's fields (RFC 9113 8.3.1, 8.2.2) and take its pseudo-header fields
        (they must come first: ``n_pseudo`` of them)."""
        n_pseudo = 0
        regular = False
        for name, value in fields:
            if name[:1] == b":":
                if regular or not self._pseudo(stream, name, value):
                    return False
                n_pseudo += 1
                continue
            regular = True
            if name in CONNECTION_FIELDS:
                return False
            if name == b"te":
                if value != b"trailers":
                    return False
            elif name == b"content-length":
                if not value.isdigit() or (stream.clen >= 0 and int(value) != stream.clen):
                    return False
                stream.clen = int(value)
        self.n_pseudo = n_pseudo
        if stream.method == b"CONNECT":
            return bool(stream.authority) and not stream.scheme and not stream.path
        return bool(stream.method) and bool(stream.scheme) and bool(stream.path)

    def _pseudo(self, stream: WireStream, name: bytes, value: bytes) -> bool:
        """Take one request pseudo-header field; False if unknown or repeated."""
        if name == b":method":
            if stream.method:
                return False
            stream.method = value
        elif name == b":path":
            if stream.path:
                return False
            stream.path = value
        elif name == b":scheme":
            if stream.scheme:
                return False
            stream.scheme = value
        elif name == b":authority":
            if stream.authority:
                return False
            stream.authority = value
        else:
            return False
        return True

    def _remote_end(self, stream: WireStream) -> None:
        stream.remote_closed = True
        if stream.local_closed:
            self._forget(stream.sid)

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2Error(FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 bytes")
        increment = _U32.unpack_from(payload, 0)[0] & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise H2Error(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window_conn += increment
            if self.send_window_conn > MAX_WINDOW:
                raise H2Error(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            self.on_window(0)
            return
        stream = self.streams.get(sid)
        if stream is None:
            if sid > self.last_sid:
                raise H2Error(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if not increment:
            self._stream_error(sid, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(sid, FLOW_CONTROL_ERROR)
            return
        self.on_window(sid)

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise H2Error(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & FLAG_ACK:
            if payload:
                raise H2Error(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2Error(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        opened = False
        for pos in range(0, len(payload), 6):
            ident, value = _SETTING.unpack_from(payload, pos)
            opened = self._setting(ident, value) or opened
        self._put(SETTINGS, FLAG_ACK, 0, b"")
        if opened:
            self.on_window(0)

    def _setting(self, ident: int, value: int) -> bool:
        """Apply one of the client's settings; True when it opened the send windows."""
        if ident == SETTINGS_HEADER_TABLE_SIZE:
            self.encoder.set_max_size(value)
        elif ident == SETTINGS_ENABLE_PUSH:
            if value > 1:
                raise H2Error(PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1")
        elif ident == SETTINGS_INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise H2Error(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE over 2^31-1")
            delta = value - self.initial_window
            self.initial_window = value
            for stream in self.streams.values():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    raise H2Error(FLOW_CONTROL_ERROR, "a stream window over 2^31-1")
            return delta > 0
        elif ident == SETTINGS_MAX_FRAME_SIZE:
            if value < DEFAULT_FRAME_SIZE or value > MAX_FRAME_SIZE:
                raise H2Error(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
            self.max_frame = value
        return False  # MAX_CONCURRENT_STREAMS (we push nothing), MAX_HEADER_LIST_SIZE, others

    def _rst_stream(self, sid: int, payload: bytes) -> None:
        if not sid:
            raise H2Error(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise H2Error(FRAME_SIZE_ERROR, "RST_STREAM is not 4 bytes")
        if sid > self.last_sid:
            raise H2Error(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        if self.streams.pop(sid, None) is not None:
            remember(self.closed_sids, sid)
            self.client_resets += 1
            if self.client_resets > RESETS_ALLOWED and self.client_resets * 2 > self.opened:
                # opening streams only to reset them makes the router start and drop upstream
                # requests for nothing ("rapid reset", CVE-2023-44487)
                raise H2Error(ENHANCE_YOUR_CALM, "most streams reset by the client")
            self.on_reset(sid)

    def _stream_error(self, sid: int, code: int) -> None:
        if code != REFUSED_STREAM:
            self.stream_errors += 1
        self._put(RST_STREAM, 0, sid, _U32.pack(code))
        self._remember_reset(sid)
        if self.streams.pop(sid, None) is not None:
            self.on_reset(sid)

    def _remember_reset(self, sid: int) -> None:
        remember(self.reset_sids, sid)

    def _forget(self, sid: int) -> None:
        """Both ends of the stream are closed."""
        self.streams.pop(sid, None)
        remember(self.closed_sids, sid)

    def _ack_conn(self, n: int) -> None:
        self.unacked_conn += n
        if self.unacked_conn >= self.connection_window // 2:
            self.recv_window_conn += self.unacked_conn
            self._put(WINDOW_UPDATE, 0, 0, _U32.pack(self.unacked_conn))
            self.unacked_conn = 0

    # --- sending --------------------------------------------------------------------------------
    def ack_data(self, sid: int, n: int) -> None:
        """Give back ``n`` bytes of window: the stream's and the connection's."""
        if n <= 0:
            return
        self._ack_conn(n)
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            return
        stream.unacked += n
        if stream.unacked >= DEFAULT_WINDOW // 2:
            stream.recv_window += stream.unacked
            self._put(WINDOW_UPDATE, 0, sid, _U32.pack(stream.unacked))
            stream.unacked = 0

    def _put(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        """Queue a frame, as its header and its payload (joined once: by ``take_output``, or by
        the TLS connection when it encrypts)."""
        n = len(payload)
        out = self.out
        out.append(_pack_head(n >> 16, n & 0xFFFF, ftype, flags, sid))
        if n:
            out.append(payload)

    def send_window(self, sid: int) -> int:
        stream = self.streams.get(sid)
        if stream is None or stream.local_closed:
            return 0
        return min(stream.send_window, self.send_window_conn)

    def is_open(self, sid: int) -> bool:
        stream = self.streams.get(sid)
        return stream is not None and not stream.local_closed

    def send_headers(self, sid: int, headers: list[tuple[bytes, bytes]], end: bool) -> bool:
        """Send a response head; False when the stream is no longer open."""
        stream = self.streams.get(sid)
        if stream is None or stream.local_closed:
            return False
        block = self.encoder.encode(headers)
        flags = FLAG_END_STREAM if end else 0
        size = self.max_frame
        if len(block) <= size:
            self._put(HEADERS, flags | FLAG_END_HEADERS, sid, block)
        else:
            self._put(HEADERS, flags, sid, block[:size])
            for pos in range(size, len(block), size):
                last = pos + size >= len(block)
                self._put(CONTINUATION, FLAG_END_HEADERS if last else 0, sid, block[pos : pos + size])
        if end:
            self._local_end(stream)
        return True

    def send_data(self, sid: int, data: bytes, end: bool) -> bool:
        """Send body within ``send_window(sid)`` (at most ``max_frame`` bytes a frame is the
        caller's to keep); False when the stream is no longer open."""
        stream = self.streams.get(sid)
        if stream is None or stream.local_closed:
            return False
        n = len(data)
        stream.send_window -= n
        self.send_window_conn -= n
        self._put(DATA, FLAG_END_STREAM if end else 0, sid, data)
        if end:
            self._local_end(stream)
        return True

    def _local_end(self, stream: WireStream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            self._forget(stream.sid)
        else:  # the answer is complete: the client need not send the rest (RFC 9113 8.1)
            self._put(RST_STREAM, 0, stream.sid, _U32.pack(NO_ERROR))
            self._remember_reset(stream.sid)
            self.streams.pop(stream.sid, None)

    def send_reset(self, sid: int, code: int) -> None:
        if self.streams.pop(sid, None) is not None or sid not in self.reset_sids:
            self._put(RST_STREAM, 0, sid, _U32.pack(code))
            self._remember_reset(sid)

    def goaway(self, code: int) -> None:
        if self.goaway_sent and code == NO_ERROR:
            return
        self.goaway_sent = True
        self._put(GOAWAY, 0, 0, _GOAWAY.pack(self.last_sid, code))
