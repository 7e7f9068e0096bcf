"""The router's HTTP/2 wire protocol (flynn.router.h2wire), frame by frame, against RFC 9113.

The wire is driven directly, without sockets: a bare :class:`H2Wire` keeps the protocol state
and its hooks do nothing, so what it opened is in ``wire.streams`` and what it answered is in
its output. The client side is written with independent code: frames by hyperframe (or by hand
where hyperframe refuses to build a broken frame), header blocks by the ``hpack`` package, and
the router's output parsed by hyperframe and decoded by ``hpack``. These are the conformance
checks h2spec would make (h2spec itself cannot be installed here: it comes from GitHub).
"""

from __future__ import annotations

import struct
from typing import Any

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from flynn.router import h2wire
from flynn.router.h2wire import H2Wire

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GET = [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "example.test")]


def raw(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    """A frame built by hand (for frames hyperframe will not build: bad lengths, bad streams)."""
    n = len(payload)
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def parse(data: bytes) -> list[Any]:
    frames: list[Any] = []
    pos = 0
    while pos < len(data):
        f, length = Frame.parse_frame_header(memoryview(data[pos : pos + 9]))
        f.parse_body(memoryview(data[pos + 9 : pos + 9 + length]))
        frames.append(f)
        pos += 9 + length
    return frames


class Client:
    """The client end of one connection to a bare wire."""

    def __init__(self, max_streams: int = 100, max_header_list: int = 16384, window: int = 1 << 20) -> None:
        self.wire = H2Wire(max_streams, max_header_list, window)
        self.wire.start()
        self.server_preface = parse(self.wire.take_output())
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()

    def handshake(self, settings: dict[int, int] | None = None) -> list[Any]:
        frame = SettingsFrame(0, settings=settings or {})
        return self.send(PREFACE + frame.serialize())

    def send(self, *parts: bytes | Frame) -> list[Any]:
        data = b"".join(p if isinstance(p, bytes) else p.serialize() for p in parts)
        self.wire.receive(data)
        return parse(self.wire.take_output())

    def block(self, fields: list[tuple[str, str]] | list[tuple[bytes, bytes]]) -> bytes:
        return bytes(self.encoder.encode(fields))

    def headers(self, sid: int, fields: Any = None, *, end: bool = True, **kw: Any) -> HeadersFrame:
        flags = {"END_HEADERS"} | ({"END_STREAM"} if end else set())
        return HeadersFrame(sid, self.block(fields or GET), flags=flags, **kw)

    def request(self, sid: int, fields: Any = None, *, end: bool = True) -> list[Any]:
        return self.send(self.headers(sid, fields, end=end))


def client() -> Client:
    c = Client()
    out = c.handshake()
    assert [type(f) for f in out] == [SettingsFrame]
    assert "ACK" in out[0].flags
    return c


def goaway(frames: list[Any]) -> int:
    codes = [f.error_code for f in frames if isinstance(f, GoAwayFrame)]
    assert len(codes) == 1, frames
    return codes[0]


def resets(frames: list[Any]) -> dict[int, int]:
    return {f.stream_id: f.error_code for f in frames if isinstance(f, RstStreamFrame)}


def still_serving(c: Client) -> None:
    """The connection survived: a PING is answered and a new request opens a stream."""
    assert not c.wire.failed
    out = c.send(PingFrame(0, b"12345678"))
    assert [(type(f), f.opaque_data, "ACK" in f.flags) for f in out] == [(PingFrame, b"12345678", True)]
    sid = c.wire.last_sid + 2
    c.request(sid)
    assert sid in c.wire.streams


# --- the start of a connection ------------------------------------------------------------------
def test_server_preface_settings_and_connection_window() -> None:
    c = Client(max_streams=7, max_header_list=5000, window=1 << 20)
    settings, update = c.server_preface
    assert isinstance(settings, SettingsFrame)
    assert settings.settings == {
        SettingsFrame.MAX_CONCURRENT_STREAMS: 7,
        SettingsFrame.MAX_HEADER_LIST_SIZE: 5000,
    }
    assert isinstance(update, WindowUpdateFrame)
    assert (update.stream_id, update.window_increment) == (0, (1 << 20) - 65535)


def test_preface_in_pieces_then_settings_acknowledged() -> None:
    c = Client()
    data = PREFACE + SettingsFrame(0).serialize()
    for i in range(len(data)):
        out = c.send(data[i : i + 1])
    assert [(type(f), "ACK" in f.flags) for f in out] == [(SettingsFrame, True)]
    # our SETTINGS acknowledged by the client: nothing to answer
    assert c.send(SettingsFrame(0, flags={"ACK"})) == []


def test_wrong_preface_is_a_protocol_error() -> None:
    c = Client()
    out = c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert goaway(out) == h2wire.PROTOCOL_ERROR
    assert c.wire.failed
    assert c.send(PREFACE) == []  # nothing more is read


def test_first_frame_after_the_preface_must_be_settings() -> None:
    c = Client()
    out = c.send(PREFACE + PingFrame(0, b"12345678").serialize())
    assert goaway(out) == h2wire.PROTOCOL_ERROR


# --- connection errors: GOAWAY with the code, then nothing more is read --------------------------
def _big_settings() -> bytes:
    return raw(h2wire.SETTINGS, 0, 0, struct.pack(">HL", 4, 1 << 31))


CONNECTION_ERRORS: dict[str, tuple[bytes, int]] = {
    "settings ack with payload": (raw(4, 1, 0, b"\0\x01\0\0\0\0"), h2wire.FRAME_SIZE_ERROR),
    "settings length not 6n": (raw(4, 0, 0, b"\0\x01\0\0\0"), h2wire.FRAME_SIZE_ERROR),
    "settings on a stream": (raw(4, 0, 1, b""), h2wire.PROTOCOL_ERROR),
    "enable_push 2": (raw(4, 0, 0, struct.pack(">HL", 2, 2)), h2wire.PROTOCOL_ERROR),
    "initial window 2^31": (_big_settings(), h2wire.FLOW_CONTROL_ERROR),
    "max frame size too small": (raw(4, 0, 0, struct.pack(">HL", 5, 16383)), h2wire.PROTOCOL_ERROR),
    "max frame size too large": (raw(4, 0, 0, struct.pack(">HL", 5, 1 << 24)), h2wire.PROTOCOL_ERROR),
    "ping of 7 bytes": (raw(6, 0, 0, b"1234567"), h2wire.FRAME_SIZE_ERROR),
    "ping on a stream": (raw(6, 0, 1, b"12345678"), h2wire.PROTOCOL_ERROR),
    "frame over max size": (raw(0, 0, 1, b"x" * 16385), h2wire.FRAME_SIZE_ERROR),
    "data on stream 0": (raw(0, 0, 0, b"x"), h2wire.PROTOCOL_ERROR),
    "data on an idle stream": (raw(0, 0, 1, b"x"), h2wire.PROTOCOL_ERROR),
    "headers on stream 0": (raw(1, 5, 0, b"\x82"), h2wire.PROTOCOL_ERROR),
    "headers on an even stream": (raw(1, 5, 2, b"\x82"), h2wire.PROTOCOL_ERROR),
    "push_promise from the client": (raw(5, 4, 1, b"\0\0\0\x02\x82"), h2wire.PROTOCOL_ERROR),
    "continuation without headers": (raw(9, 4, 1, b"\x82"), h2wire.PROTOCOL_ERROR),
    "headers interrupted by ping": (raw(1, 0, 1, b"\x82") + raw(6, 0, 0, b"12345678"), h2wire.PROTOCOL_ERROR),
    "continuation of another stream": (raw(1, 0, 1, b"\x82") + raw(9, 4, 3, b"\x84"), h2wire.PROTOCOL_ERROR),
    "window update of 0": (raw(8, 0, 0, b"\0\0\0\0"), h2wire.PROTOCOL_ERROR),
    "window update of 3 bytes": (raw(8, 0, 0, b"\0\0\x01"), h2wire.FRAME_SIZE_ERROR),
    "window update on an idle stream": (raw(8, 0, 9, b"\0\0\0\x01"), h2wire.PROTOCOL_ERROR),
    "connection window over 2^31-1": (
        raw(8, 0, 0, struct.pack(">L", (1 << 31) - 1)),
        h2wire.FLOW_CONTROL_ERROR,
    ),
    "rst_stream on stream 0": (raw(3, 0, 0, b"\0\0\0\x08"), h2wire.PROTOCOL_ERROR),
    "rst_stream on an idle stream": (raw(3, 0, 5, b"\0\0\0\x08"), h2wire.PROTOCOL_ERROR),
    "goaway on a stream": (raw(7, 0, 1, b"\0" * 8), h2wire.PROTOCOL_ERROR),
    "goaway too short": (raw(7, 0, 0, b"\0" * 7), h2wire.FRAME_SIZE_ERROR),
    "priority on stream 0": (raw(2, 0, 0, b"\0\0\0\x01\x10"), h2wire.PROTOCOL_ERROR),
    "hpack: index beyond the tables": (raw(1, 5, 1, b"\xc5"), h2wire.COMPRESSION_ERROR),
    "hpack: truncated string": (raw(1, 5, 1, b"\x40\x05ab"), h2wire.COMPRESSION_ERROR),
    "hpack: table size above the setting": (raw(1, 5, 1, b"\x3f\xe2\x1f\x82"), h2wire.COMPRESSION_ERROR),
    "padding as long as the frame": (raw(1, 0x0D, 1, b"\x04\x82\x00\x00"), h2wire.PROTOCOL_ERROR),
}


@pytest.mark.parametrize("case", sorted(CONNECTION_ERRORS))
def test_connection_errors(case: str) -> None:
    data, code = CONNECTION_ERRORS[case]
    c = client()
    out = c.send(data)
    assert goaway(out) == code
    assert c.wire.failed
    assert c.send(PingFrame(0, b"12345678")) == []


def test_header_block_in_too_many_frames() -> None:
    """Empty CONTINUATION frames add no bytes but must still end (CVE-2024-27316)."""
    c = client()
    out = c.send(raw(1, 0, 1, b"\x82"), *[raw(9, 0, 1, b"")] * (h2wire.MAX_CONTINUATIONS + 1))
    assert goaway(out) == h2wire.ENHANCE_YOUR_CALM


def test_header_block_over_its_size_limit() -> None:
    c = Client(max_header_list=1000)
    c.handshake()
    piece = b"\x00" * 16384
    out = c.send(
        raw(1, 0, 1, piece), raw(9, 0, 1, piece), raw(9, 0, 1, piece), raw(9, 0, 1, piece), raw(9, 0, 1, b"x")
    )
    assert goaway(out) == h2wire.ENHANCE_YOUR_CALM  # 65,537 bytes > max(4 x 1000, 65,536)


def test_rapid_reset_ends_the_connection() -> None:
    """Streams opened only to be reset (CVE-2023-44487): tolerated while they are not most of
    the streams, or few."""
    c = client()
    sid = 1
    for _ in range(h2wire.RESETS_ALLOWED):
        c.request(sid, end=False)
        assert c.send(RstStreamFrame(sid, error_code=h2wire.CANCEL)) == []
        sid += 2
    for _ in range(h2wire.RESETS_ALLOWED + 10):  # more answered: now under half were reset
        c.request(sid)
        c.wire.send_headers(sid, [(b":status", b"204")], True)
        sid += 2
    c.wire.take_output()
    c.request(sid, end=False)
    assert c.send(RstStreamFrame(sid, error_code=h2wire.CANCEL)) == []
    assert not c.wire.failed
    fresh = client()
    for i in range(h2wire.RESETS_ALLOWED + 1):
        fresh.request(2 * i + 1, end=False)
        out = fresh.send(RstStreamFrame(2 * i + 1, error_code=h2wire.CANCEL))
    assert goaway(out) == h2wire.ENHANCE_YOUR_CALM


def test_new_stream_below_the_last_one_is_a_protocol_error() -> None:
    c = client()
    c.request(5)
    out = c.request(3)
    assert goaway(out) == h2wire.PROTOCOL_ERROR
    [g] = [f for f in out if isinstance(f, GoAwayFrame)]
    assert g.last_stream_id == 5


def test_data_beyond_the_connection_window() -> None:
    c = Client(window=65535)
    c.handshake()
    c.request(1, end=False)
    c.request(3, end=False)
    chunk = b"x" * 16384
    c.send(DataFrame(1, chunk), DataFrame(1, chunk), DataFrame(3, chunk))
    out = c.send(DataFrame(3, chunk))  # 65,536 bytes on the connection, never acknowledged
    assert goaway(out) == h2wire.FLOW_CONTROL_ERROR


def test_headers_on_a_closed_stream_is_stream_closed() -> None:
    c = client()
    c.request(1)
    c.wire.send_headers(1, [(b":status", b"204")], True)  # both ends closed
    c.wire.take_output()
    out = c.request(1)
    assert goaway(out) == h2wire.STREAM_CLOSED


# --- stream errors: RST_STREAM, and the connection goes on ---------------------------------------
MALFORMED: dict[str, list[tuple[str, str]]] = {
    "upper-case name": [*GET, ("X-Upper", "1")],
    "connection field": [*GET, ("connection", "keep-alive")],
    "keep-alive field": [*GET, ("keep-alive", "5")],
    "transfer-encoding field": [*GET, ("transfer-encoding", "chunked")],
    "upgrade field": [*GET, ("upgrade", "websocket")],
    "te other than trailers": [*GET, ("te", "gzip")],
    "no :path": [p for p in GET if p[0] != ":path"],
    "empty :path": [(n, "" if n == ":path" else v) for n, v in GET],
    "no :scheme": [p for p in GET if p[0] != ":scheme"],
    "no :method": [p for p in GET if p[0] != ":method"],
    "two :method": [*GET[:1], *GET],
    "pseudo after a regular field": [*GET[:3], ("accept", "*/*"), GET[3]],
    "unknown pseudo": [*GET, (":foo", "bar")],
    "response pseudo in a request": [*GET, (":status", "200")],
    "CR in a value": [*GET, ("x-a", "1\r\nx-b: 2")],
    "LF in a value": [*GET, ("x-a", "1\nx")],
    "NUL in a value": [*GET, ("x-a", "1\x00")],
    "space in a name": [*GET, ("x a", "1")],
    "empty name": [*GET, ("", "1")],
    "content-length not a number": [*GET, ("content-length", "1x")],
    "content-length twice, different": [*GET, ("content-length", "1"), ("content-length", "2")],
    "content-length on a request that ended": [*GET, ("content-length", "5")],
    "CONNECT with a path": [(":method", "CONNECT"), (":authority", "a:1"), (":path", "/")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_are_reset(case: str) -> None:
    c = client()
    out = c.request(1, MALFORMED[case])
    assert resets(out) == {1: h2wire.PROTOCOL_ERROR}
    assert 1 not in c.wire.streams
    still_serving(c)


def test_te_trailers_and_connect_are_allowed() -> None:
    c = client()
    c.request(1, [*GET, ("te", "trailers")])
    c.request(3, [(":method", "CONNECT"), (":authority", "example.test:443")])
    assert {1, 3} <= set(c.wire.streams)


def test_hpack_state_kept_in_step_after_a_malformed_request() -> None:
    """A malformed request's block still updates the dynamic table: the next request refers to
    the entries it added."""
    c = client()
    bad = [*GET, ("x-token", "abc"), ("X-Bad", "1")]
    assert resets(c.request(1, bad)) == {1: h2wire.PROTOCOL_ERROR}
    c.request(3, [*GET, ("x-token", "abc")])  # now sent as an index into the dynamic table
    assert 3 in c.wire.streams
    assert c.wire.decoder.malformed is False


def test_body_and_content_length_must_agree() -> None:
    c = client()
    c.request(1, [*GET, ("content-length", "3")], end=False)
    out = c.send(DataFrame(1, b"abcd"))
    assert resets(out) == {1: h2wire.PROTOCOL_ERROR}
    c.request(3, [*GET, ("content-length", "3")], end=False)
    out = c.send(DataFrame(3, b"ab", flags={"END_STREAM"}))
    assert resets(out) == {3: h2wire.PROTOCOL_ERROR}
    c.request(5, [*GET, ("content-length", "3")], end=False)
    assert resets(c.send(DataFrame(5, b"abc", flags={"END_STREAM"}))) == {}
    still_serving(c)


def test_trailers() -> None:
    c = client()
    c.request(1, end=False)
    c.send(DataFrame(1, b"body"))
    assert resets(c.request(1, [("x-checksum", "1")], end=True)) == {}
    assert c.wire.streams[1].remote_closed
    # trailers must end the stream, and hold no pseudo-header field
    c.request(3, end=False)
    assert resets(c.request(3, [("x-checksum", "1")], end=False)) == {3: h2wire.PROTOCOL_ERROR}
    c.request(5, end=False)
    assert resets(c.request(5, [(":path", "/x")], end=True)) == {5: h2wire.PROTOCOL_ERROR}
    still_serving(c)


def test_data_after_the_clients_end_is_stream_closed() -> None:
    c = client()
    c.request(1)
    assert resets(c.send(DataFrame(1, b"late"))) == {1: h2wire.STREAM_CLOSED}
    still_serving(c)


def test_data_beyond_the_stream_window() -> None:
    """The bare wire never acknowledges: the 65,536th byte is one more than the stream's window."""
    c = client()
    c.request(1, end=False)
    chunk = b"x" * 16384
    assert resets(c.send(DataFrame(1, chunk), DataFrame(1, chunk), DataFrame(1, chunk))) == {}
    assert resets(c.send(DataFrame(1, chunk[:16383]))) == {}
    assert resets(c.send(DataFrame(1, b"y"))) == {1: h2wire.FLOW_CONTROL_ERROR}
    still_serving(c)


def test_priority_and_window_update_stream_errors() -> None:
    c = client()
    assert resets(c.send(raw(2, 0, 1, b"\0\0\0\x03"))) == {1: h2wire.FRAME_SIZE_ERROR}
    assert resets(c.send(raw(2, 0, 3, b"\0\0\0\x03\x10"))) == {3: h2wire.PROTOCOL_ERROR}  # itself
    c.request(5, end=False)
    assert resets(c.send(raw(8, 0, 5, b"\0\0\0\0"))) == {5: h2wire.PROTOCOL_ERROR}
    c.request(7, end=False)
    big = struct.pack(">L", (1 << 31) - 1)
    assert resets(c.send(raw(8, 0, 7, big))) == {7: h2wire.FLOW_CONTROL_ERROR}
    block = c.block(GET)
    out = c.send(raw(1, 0x25, 9, b"\0\0\0\x09\x10" + block))  # HEADERS depending on itself
    assert resets(out) == {9: h2wire.PROTOCOL_ERROR}
    still_serving(c)


def test_streams_over_the_limit_are_refused() -> None:
    c = Client(max_streams=2)
    c.handshake()
    c.request(1, end=False)
    c.request(3, end=False)
    assert resets(c.request(5)) == {5: h2wire.REFUSED_STREAM}
    assert set(c.wire.streams) == {1, 3}
    c.send(RstStreamFrame(1, error_code=h2wire.CANCEL))
    c.request(7)
    assert set(c.wire.streams) == {3, 7}


# --- requests --------------------------------------------------------------------------------------
def test_request_head_fields_and_order() -> None:
    c = client()
    fields = [*GET, ("accept", "*/*"), ("cookie", "a=1"), ("cookie", "b=2"), ("content-length", "0")]
    c.request(1, fields)
    s = c.wire.streams[1]
    assert (s.method, s.scheme, s.path, s.authority) == (b"GET", b"https", b"/", b"example.test")
    assert (s.clen, s.remote_closed, s.oversize) == (0, True, False)
    assert c.wire.n_pseudo == 4


def test_header_list_over_the_limit_is_marked() -> None:
    c = Client(max_header_list=200)
    c.handshake()
    c.request(1, [*GET, ("x-long", "v" * 200)])
    assert c.wire.streams[1].oversize  # the frontend answers 431


def test_header_block_in_continuation_frames_padded_and_with_priority() -> None:
    c = client()
    block = c.block([*GET, ("x-long", "y" * 100)])
    parts = [block[:10], block[10:50], block[50:]]
    c.send(
        HeadersFrame(1, parts[0], flags={"END_STREAM"}),
        ContinuationFrame(1, parts[1]),
        ContinuationFrame(1, parts[2], flags={"END_HEADERS"}),
    )
    assert c.wire.streams[1].path == b"/"
    frame = HeadersFrame(3, c.block(GET), flags={"END_HEADERS", "PADDED", "PRIORITY", "END_STREAM"})
    frame.pad_length = 20
    frame.depends_on = 1
    frame.stream_weight = 15
    c.send(frame)
    assert 3 in c.wire.streams


def test_padded_data_counts_padding_against_the_window_only() -> None:
    c = client()
    c.request(1, [*GET, ("content-length", "5")], end=False)
    frame = DataFrame(1, b"hello", flags={"PADDED", "END_STREAM"})
    frame.pad_length = 10
    assert resets(c.send(frame)) == {}
    s = c.wire.streams[1]
    assert s.received == 5
    assert s.recv_window == 65535 - 16  # 5 bytes, 10 of padding and the pad length
    assert s.remote_closed


def test_ping_answered_and_unknown_frames_ignored() -> None:
    c = client()
    assert c.send(raw(0xFA, 0, 0, b"extension")) == []
    out = c.send(PingFrame(0, b"abcdefgh"))
    assert [(f.opaque_data, "ACK" in f.flags) for f in out] == [(b"abcdefgh", True)]
    assert c.send(PingFrame(0, b"abcdefgh", flags={"ACK"})) == []


def test_client_reset_closes_the_stream() -> None:
    """After the client's RST_STREAM, its own frames on the stream are STREAM_CLOSED (RFC 9113
    5.1, "closed"); a PRIORITY frame is still allowed."""
    c = client()
    c.request(1, end=False)
    assert c.send(RstStreamFrame(1, error_code=h2wire.CANCEL)) == []
    assert 1 not in c.wire.streams
    assert c.send(raw(2, 0, 1, b"\0\0\0\x00\x10")) == []
    assert resets(c.send(DataFrame(1, b"late"))) == {1: h2wire.STREAM_CLOSED}
    still_serving(c)


def test_frames_on_a_stream_we_reset_are_ignored() -> None:
    c = client()
    c.request(1, [*GET, ("content-length", "1")], end=False)
    assert resets(c.send(DataFrame(1, b"too long"))) == {1: h2wire.PROTOCOL_ERROR}
    assert c.send(DataFrame(1, b"late"), WindowUpdateFrame(1, window_increment=1)) == []
    assert c.request(1) == []  # HEADERS too (its block still read: HPACK stays in step)
    still_serving(c)


def test_goaway_after_which_new_streams_are_ignored() -> None:
    c = client()
    c.request(1)
    c.wire.goaway(h2wire.NO_ERROR)
    [g] = parse(c.wire.take_output())
    assert (g.last_stream_id, g.error_code) == (1, h2wire.NO_ERROR)
    c.request(3)
    assert 3 not in c.wire.streams


# --- acknowledging received data --------------------------------------------------------------------
def test_window_updates_once_half_is_acknowledged() -> None:
    c = Client(window=100_000)
    c.handshake()
    c.request(1, end=False)
    chunk = b"x" * 16384
    c.send(DataFrame(1, chunk), DataFrame(1, chunk))
    c.wire.ack_data(1, 16384)
    assert parse(c.wire.take_output()) == []  # under half of either window
    c.wire.ack_data(1, 16384)
    out = parse(c.wire.take_output())
    assert [(f.stream_id, f.window_increment) for f in out] == [(1, 32768)]
    c.send(*[DataFrame(1, chunk)] * 3)  # 49,152 more: within the window given back
    for _ in range(3):
        c.wire.ack_data(1, 16384)
    out = parse(c.wire.take_output())
    # the connection's half (50,000) was reached with the 4th acknowledgement, the stream's
    # again with the 4th
    assert [(f.stream_id, f.window_increment) for f in out] == [(0, 65536), (1, 32768)]
    assert not c.wire.failed


def test_data_after_our_answer_is_ignored_and_given_back() -> None:
    """Answered before the whole body came: RST_STREAM(NO_ERROR), and later DATA is dropped
    (no error) while its bytes still return to the connection window."""
    c = Client(window=65535)
    c.handshake()
    c.request(1, end=False)
    assert c.wire.send_headers(1, [(b":status", b"413")], True)
    out = parse(c.wire.take_output())
    assert [type(f) for f in out] == [HeadersFrame, RstStreamFrame]
    assert out[1].error_code == h2wire.NO_ERROR
    chunk = b"x" * 16384
    for _ in range(8):  # twice the connection window: each is given back
        assert resets(c.send(DataFrame(1, chunk))) == {}
    assert not c.wire.failed


# --- sending ---------------------------------------------------------------------------------------
def test_responses_decode_with_an_independent_hpack_decoder() -> None:
    c = client()
    for i in range(1, 400, 2):
        c.request(i)
        head = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"x-n", b"%d" % (i % 7))]
        head += [(b"set-cookie", b"s=%d" % i), (b"x-big", b"z" * (i % 3000))]
        c.wire.send_headers(i, head, False)
        c.wire.send_data(i, b"body", True)
        out = parse(c.wire.take_output())
        assert [type(f) for f in out] == [HeadersFrame, DataFrame]
        assert "END_STREAM" in out[1].flags
        assert c.decoder.decode(out[0].data, raw=True) == head
    assert not c.wire.streams


def test_large_head_split_into_continuation_frames() -> None:
    c = client()
    c.request(1)
    head = [(b":status", b"200")] + [(b"x-h%d" % i, b"v" * 1000) for i in range(40)]
    c.wire.send_headers(1, head, True)
    out = parse(c.wire.take_output())
    assert isinstance(out[0], HeadersFrame)
    assert all(isinstance(f, ContinuationFrame) for f in out[1:])
    assert ["END_HEADERS" in f.flags for f in out] == [False] * (len(out) - 1) + [True]
    assert all(len(f.data) <= 16384 for f in out)
    assert c.decoder.decode(b"".join(f.data for f in out), raw=True) == head


def test_header_table_size_setting_is_announced() -> None:
    c = Client()
    c.handshake({SettingsFrame.HEADER_TABLE_SIZE: 0})
    c.decoder.header_table_size = 0
    c.request(1)
    c.wire.send_headers(1, [(b":status", b"200"), (b"x-a", b"b")], True)
    [f] = parse(c.wire.take_output())
    assert f.data[:1] == b"\x20"  # a dynamic table size update to 0 comes first
    assert c.decoder.decode(f.data, raw=True) == [(b":status", b"200"), (b"x-a", b"b")]


def test_send_windows_follow_settings_and_window_updates() -> None:
    c = Client()
    c.handshake({SettingsFrame.INITIAL_WINDOW_SIZE: 100, SettingsFrame.MAX_FRAME_SIZE: 20000})
    assert c.wire.max_frame == 20000
    c.request(1)
    assert c.wire.send_window(1) == 100
    c.wire.send_headers(1, [(b":status", b"200")], False)
    c.wire.send_data(1, b"x" * 100, False)
    assert c.wire.send_window(1) == 0
    c.send(WindowUpdateFrame(1, window_increment=50))
    assert c.wire.send_window(1) == 50
    # a lower INITIAL_WINDOW_SIZE can make an open stream's window negative
    c.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}))
    assert c.wire.streams[1].send_window == -50
    c.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1000}))
    assert c.wire.send_window(1) == 950
    # and the connection's window bounds every stream (65,535 - 100 sent)
    c.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20}))
    assert c.wire.send_window(1) == 65435
    c.wire.send_data(1, b"", True)
    assert c.wire.send_window(1) == 0
    assert not c.wire.is_open(1)
