"""The router's HPACK (flynn.router.hpack): RFC 7541's examples, decoding errors, and both
directions against the independent ``hpack`` package (random fields, Huffman or not, table
evictions and size changes)."""

from __future__ import annotations

import random

import hpack as ref
import pytest

from flynn.router import hpack
from flynn.router.hpack import Decoder, Encoder, HPACKError


def test_static_table_and_huffman_code_match_the_reference() -> None:
    assert [(bytes(n), bytes(v)) for n, v in ref.table.HeaderTable.STATIC_TABLE] == list(hpack.STATIC)
    assert list(ref.huffman_constants.REQUEST_CODES) == hpack.HUFFMAN_CODES
    assert list(hpack.CODE_LENGTHS) == list(ref.huffman_constants.REQUEST_CODES_LENGTH)


# RFC 7541 C.3 (requests without Huffman) and C.4 (the same with Huffman), one connection each
C3 = [
    "828684410f7777772e6578616d706c652e636f6d",
    "828684be58086e6f2d6361636865",
    "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
]
C4 = [
    "828684418cf1e3c2e5f23a6ba0ab90f4ff",
    "828684be5886a8eb10649cbf",
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
]
C_FIELDS = [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")],
    [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"www.example.com"),
        (b"cache-control", b"no-cache"),
    ],
    [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/index.html"),
        (b":authority", b"www.example.com"),
        (b"custom-key", b"custom-value"),
    ],
]


@pytest.mark.parametrize("blocks", [C3, C4], ids=["C.3", "C.4"])
def test_rfc7541_request_examples(blocks: list[str]) -> None:
    d = Decoder()
    for block, fields in zip(blocks, C_FIELDS, strict=True):
        assert d.decode(bytes.fromhex(block)) == fields
        assert not d.malformed
    # the table after C.3.3 / C.4.3: three entries, 164 bytes
    assert d.size == 164
    assert [e[:2] for e in d.entries] == [
        (b":authority", b"www.example.com"),
        (b"cache-control", b"no-cache"),
        (b"custom-key", b"custom-value"),
    ]


def test_huffman_round_trip_and_reference() -> None:
    rnd = random.Random(7)
    samples = [b"", b"a", b"www.example.com", bytes(range(256))]
    samples += [bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 80))) for _ in range(300)]
    for s in samples:
        encoded = hpack.huffman_encode(s)
        assert encoded == ref.huffman.HuffmanEncoder(
            ref.huffman_constants.REQUEST_CODES, ref.huffman_constants.REQUEST_CODES_LENGTH
        ).encode(s)
        assert hpack.huffman_decode(encoded) == s


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\xff\xff\xff", "EOS"),  # 30 one-bits: the EOS symbol
        (hpack.huffman_encode(b"a") + b"\xff", "padding longer than 7 bits"),
        (b"\x00", "padding not all ones"),  # '0' is 00000, then 000 of padding
    ],
)
def test_bad_huffman_strings(data: bytes, why: str) -> None:
    with pytest.raises(HPACKError):
        hpack.huffman_decode(data)


@pytest.mark.parametrize(
    ("block", "why"),
    [
        (b"\x80", "index 0"),
        (b"\xbe", "index 62 with an empty dynamic table"),
        (b"\x82\x3f\xe1\x1f", "size update after a field"),
        (b"\x3f\xe2\x1f", "size update above the setting (4097)"),
        (b"\x41\x05ab", "string shorter than its length"),
        (b"\x41", "no string at all"),
        (b"\xff\xff\xff\xff\xff\xff\x01", "integer too large"),
        (b"\xff\x80", "truncated integer"),
        (b"\x40\x81\xff\x00", "Huffman name with EOS"),
    ],
)
def test_decoding_errors(block: bytes, why: str) -> None:
    with pytest.raises(HPACKError):
        Decoder().decode(block)


def malformed(d: Decoder, block: bytes) -> bool:
    d.decode(block)
    return d.malformed


def test_fields_http2_forbids_mark_the_block_and_the_entry() -> None:
    d = Decoder()
    assert d.decode(b"\x40\x07X-Upper\x01v") == [(b"X-Upper", b"v")]
    assert d.malformed
    assert not malformed(d, b"\x82")
    assert d.decode(b"\xbe") == [(b"X-Upper", b"v")]  # the same field as an index: still bad
    assert d.malformed
    for bad in (b"\x00\x03x-a\x03a\rb", b"\x00\x03x-a\x02a\n", b"\x00\x03x-a\x02a\x00", b"\x00\x03x a\x01v"):
        assert malformed(d, bad), bad
    assert not malformed(d, b"\x00\x03x-a\x03a b")


def test_size_updates_evict() -> None:
    d = Decoder()
    d.decode(b"\x40\x03x-a\x01b\x40\x03x-c\x01d")  # two entries of 36 bytes
    assert d.size == 72
    d.decode(b"\x3f\x16")  # size update to 53: the older entry goes
    assert [e[:2] for e in d.entries] == [(b"x-c", b"d")]
    d.decode(b"\x20")
    assert d.entries == []
    assert d.size == 0


def test_list_size() -> None:
    d = Decoder()
    d.decode(b"\x82\x84")
    assert d.list_size == (7 + 3 + 32) + (5 + 1 + 32)


def random_fields(rnd: random.Random, request: bool) -> list[tuple[bytes, bytes]]:
    fields = [(b":method", b"GET"), (b":path", b"/p%d" % rnd.randrange(40))] if request else []
    if not request:
        fields.append((b":status", rnd.choice([b"200", b"404", b"503", b"302"])))
    for _ in range(rnd.randrange(6)):
        name = rnd.choice([b"x-a", b"cookie", b"set-cookie", b"content-type", b"x-%d" % rnd.randrange(50)])
        value = bytes(rnd.choice(b"abcdefghij0123456789 -=;/") for _ in range(rnd.randrange(0, 400)))
        fields.append((name, value))
    return fields


def test_decoder_against_the_reference_encoder() -> None:
    rnd = random.Random(1)
    enc = ref.Encoder()
    d = Decoder()
    for i in range(3000):
        if i == 1500:
            enc.header_table_size = 256  # the encoder lowers its table: a size update follows
        fields = random_fields(rnd, True)
        assert d.decode(enc.encode(fields, huffman=rnd.random() < 0.6)) == fields
        assert not d.malformed


def test_encoder_against_the_reference_decoder() -> None:
    rnd = random.Random(2)
    e = Encoder()
    dec = ref.Decoder()
    for i in range(3000):
        if i == 1000:
            e.set_max_size(100)  # the client's SETTINGS_HEADER_TABLE_SIZE
        elif i == 1500:
            e.set_max_size(0)
        elif i == 2000:
            e.set_max_size(1 << 20)  # more than the default: we keep 4096
        fields = random_fields(rnd, False)
        assert dec.decode(e.encode(fields), raw=True) == fields
    assert e.max_size == 4096


def test_encoder_indexes_repeated_fields() -> None:
    e = Encoder()
    head = [(b":status", b"200"), (b"content-type", b"application/json"), (b"server", b"app")]
    first = e.encode(head)
    again = e.encode(head)
    assert len(again) == 3  # one byte each: static 8, then the two dynamic entries
    assert len(first) > len(again)
    cookie = [(b"set-cookie", b"session=secret")]
    assert e.encode(cookie) == e.encode(cookie)  # never added to the table
    assert (b"set-cookie", b"session=secret") not in e.known
