"""HPACK, the header compression of HTTP/2 (RFC 7541): the router's own decoder and encoder.

:class:`Decoder` reads the header blocks clients send: indexed fields (static and dynamic
table), literals with and without indexing, dynamic table size updates, and Huffman-coded
strings (decoded four bits at a time through a state table built at import from the code
lengths of RFC 7541 Appendix B; the code is canonical, so the lengths define it). Anything the
RFC calls a decoding error raises :class:`HPACKError`, which the connection answers with
COMPRESSION_ERROR. While it decodes, it also checks what HTTP/2 requires of the fields
(RFC 9113 8.2.1: lower-case names of token characters, no NUL, CR or LF in values); a field that
fails marks the block ``malformed`` (a stream error, not a decoding error: the block is still
decoded to the end, so the dynamic table stays in step with the client's). Entries of the
dynamic table keep that verdict, so a field sent as an index into the table is not checked
again.

:class:`Encoder` writes response header blocks: fields found in the static or its dynamic
table as one index, others as literals with incremental indexing (not Huffman-coded: the
encoding costs more CPU than the bytes it saves on a local network), except ``set-cookie`` and
long values, which are not indexed. The client's SETTINGS_HEADER_TABLE_SIZE bounds its table;
a change is announced at the start of the next block.

(Compiled with mypyc with the rest of the data plane: typed, no base classes.)
"""

from __future__ import annotations

from typing import Final, cast


class HPACKError(Exception):
    """A header block that cannot be decoded (COMPRESSION_ERROR)."""


# RFC 7541 Appendix A
STATIC: Final[tuple[tuple[bytes, bytes], ...]] = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
STATIC_LEN: Final = 61
ENTRY_OVERHEAD: Final = 32  # RFC 7541 4.1: an entry's size is len(name) + len(value) + 32
DEFAULT_TABLE_SIZE: Final = 4096
MAX_INT: Final = 1 << 28  # larger integers (lengths, indexes, sizes) are refused as errors

# RFC 7541 Appendix B: the length in bits of the code of each symbol (0-255 and EOS, 256)
CODE_LENGTHS: Final[tuple[int, ...]] = (
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
)  # fmt: skip
EOS: Final = 256


def canonical_codes(lengths: tuple[int, ...]) -> list[int]:
    """The codes of a canonical Huffman code with these lengths (shorter codes first, and in
    symbol order within one length), as RFC 7541's is."""
    codes = [0] * len(lengths)
    code = -1
    prev = 0
    for sym in sorted(range(len(lengths)), key=lambda s: (lengths[s], s)):
        code = (code + 1) << (lengths[sym] - prev)
        prev = lengths[sym]
        codes[sym] = code
    return codes


# the nibble decoder's state table: a state is an inner node of the code tree (0 is the root);
# entry (state << 4) | nibble packs the next state (bits 0-7), a symbol emitted on the way
# (bits 8-15, with FLAG_EMIT), FLAG_ACCEPT when the bits since the last symbol may end the
# string (at most 7 one-bits: a prefix of EOS) and FLAG_FAIL when the nibble reaches EOS
FLAG_EMIT: Final = 1 << 16
FLAG_ACCEPT: Final = 1 << 17
FLAG_FAIL: Final = 1 << 18


def build_decode_table(lengths: tuple[int, ...]) -> list[int]:
    codes = canonical_codes(lengths)
    zero: list[int] = [0]  # children of each inner node: >= 0 an inner node, < 0 -(symbol + 1)
    one: list[int] = [0]
    accepting = [True]  # the path from the root is at most 7 one-bits
    for sym, (code, length) in enumerate(zip(codes, lengths, strict=True)):
        node = 0
        for i in range(length - 1, -1, -1):
            bit = (code >> i) & 1
            children = one if bit else zero
            if i == 0:
                children[node] = -(sym + 1)
                break
            child = children[node]
            if child <= 0:  # 0 is never a child (the root): not created yet
                child = len(zero)
                zero.append(0)
                one.append(0)
                accepting.append(accepting[node] and bit == 1 and length - i <= 7)
                children[node] = child
            node = child
    table = [0] * (len(zero) * 16)
    for state in range(len(zero)):
        for nibble in range(16):
            node = state
            entry = 0
            for i in range(3, -1, -1):
                child = (one if (nibble >> i) & 1 else zero)[node]
                if child < 0:
                    sym = -child - 1
                    if sym == EOS:
                        entry = FLAG_FAIL
                        break
                    entry = FLAG_EMIT | (sym << 8)
                    node = 0
                else:
                    node = child
            if not entry & FLAG_FAIL:
                entry |= node | (FLAG_ACCEPT if accepting[node] else 0)
            table[(state << 4) | nibble] = entry
    return table


DECODE_TABLE: Final[list[int]] = build_decode_table(CODE_LENGTHS)


def huffman_decode(data: bytes) -> bytes:
    table = DECODE_TABLE
    out = bytearray()
    state = 0
    accept = True
    for byte in data:
        entry = table[(state << 4) | (byte >> 4)]
        if entry & FLAG_FAIL:
            raise HPACKError("Huffman string contains EOS")
        if entry & FLAG_EMIT:
            out.append((entry >> 8) & 0xFF)
        state = entry & 0xFF
        entry = table[(state << 4) | (byte & 0x0F)]
        if entry & FLAG_FAIL:
            raise HPACKError("Huffman string contains EOS")
        if entry & FLAG_EMIT:
            out.append((entry >> 8) & 0xFF)
        state = entry & 0xFF
        accept = bool(entry & FLAG_ACCEPT)
    if not accept:
        raise HPACKError("Huffman string has bad padding")
    return bytes(out)


def huffman_encode(data: bytes) -> bytes:
    """RFC 7541 5.2 (used by the tests to build client blocks; the encoder writes plain)."""
    codes = HUFFMAN_CODES
    acc = 0
    bits = 0
    out = bytearray()
    for byte in data:
        length = CODE_LENGTHS[byte]
        acc = (acc << length) | codes[byte]
        bits += length
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
        acc &= (1 << bits) - 1
    if bits:
        out.append(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) & 0xFF)
    return bytes(out)


HUFFMAN_CODES: Final[list[int]] = canonical_codes(CODE_LENGTHS)

# field-name bytes allowed by RFC 9113 8.2.1 (token characters, no upper case); values may not
# hold NUL, CR or LF
_NAME_OK: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def valid_name(name: bytes) -> bool:
    if not name:
        return False
    ok = _NAME_OK
    start = 1 if name[0] == 0x3A else 0  # a pseudo-header's leading colon
    if start == len(name):
        return False
    return all(name[i] in ok for i in range(start, len(name)))


def valid_value(value: bytes) -> bool:
    return b"\r" not in value and b"\n" not in value and b"\0" not in value


BYTES: Final[tuple[bytes, ...]] = tuple(bytes((i,)) for i in range(256))


def encode_int(out: list[bytes], first: int, prefix: int, value: int) -> None:
    """Append ``value`` as an HPACK integer with a ``prefix``-bit prefix; ``first`` carries the
    bits of the first byte above the prefix."""
    limit = (1 << prefix) - 1
    if value < limit:
        out.append(BYTES[first | value])
        return
    rest = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        rest.append((value & 0x7F) | 0x80)
        value >>= 7
    rest.append(value)
    out.append(bytes(rest))


class Decoder:
    """The decoding context of one connection (its dynamic table)."""

    def __init__(self, max_table_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.settings_size = max_table_size  # what our SETTINGS_HEADER_TABLE_SIZE allows
        self.max_size = max_table_size  # the encoder's current choice (size updates)
        self.size = 0
        # newest last: dynamic index 62 is entries[-1]
        self.entries: list[tuple[bytes, bytes, bool]] = []
        self.malformed = False  # the last block held a field HTTP/2 does not allow
        self.list_size = 0  # the last block's header list size (RFC 9113 6.5.2)

    def _int(self, block: bytes, pos: int, prefix: int) -> tuple[int, int]:
        limit = (1 << prefix) - 1
        value = block[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        n = len(block)
        while True:
            if pos >= n:
                raise HPACKError("truncated integer")
            b = block[pos]
            pos += 1
            value += (b & 0x7F) << shift
            if value > MAX_INT:
                raise HPACKError("integer too large")
            if not b & 0x80:
                return value, pos
            shift += 7

    def _string(self, block: bytes, pos: int) -> tuple[bytes, int]:
        if pos >= len(block):
            raise HPACKError("truncated string")
        huffman = block[pos] & 0x80
        length, pos = self._int(block, pos, 7)
        end = pos + length
        if end > len(block):
            raise HPACKError("truncated string")
        raw = block[pos:end]
        return (huffman_decode(raw) if huffman else raw), end

    def _entry(self, index: int) -> tuple[bytes, bytes, bool]:
        if index <= 0:
            raise HPACKError("index 0")
        if index <= STATIC_LEN:
            name, value = STATIC[index - 1]
            return name, value, True
        dyn = index - STATIC_LEN
        if dyn > len(self.entries):
            raise HPACKError(f"index {index} beyond the table")
        return self.entries[-dyn]

    def _add(self, name: bytes, value: bytes, ok: bool) -> None:
        size = len(name) + len(value) + ENTRY_OVERHEAD
        entries = self.entries
        if size > self.max_size:
            entries.clear()
            self.size = 0
            return
        self.size += size
        entries.append((name, value, ok))
        self._evict()

    def _evict(self) -> None:
        entries = self.entries
        drop = 0
        while self.size > self.max_size:
            name, value, _ = entries[drop]
            self.size -= len(name) + len(value) + ENTRY_OVERHEAD
            drop += 1
        if drop:
            del entries[:drop]

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        pos = 0
        n = len(block)
        malformed = False
        list_size = 0
        size_update_allowed = True
        while pos < n:
            b = block[pos]
            if b & 0x80:  # indexed field
                index, pos = self._int(block, pos, 7)
                name, value, ok = self._entry(index)
            elif b & 0xE0 == 0x20:  # dynamic table size update
                if not size_update_allowed:
                    raise HPACKError("table size update after a field")
                size, pos = self._int(block, pos, 5)
                if size > self.settings_size:
                    raise HPACKError("table size update above the setting")
                self.max_size = size
                self._evict()
                continue
            else:  # literal: with indexing (01), without (0000) or never indexed (0001)
                indexing = b & 0x40
                index, pos = self._int(block, pos, 6 if indexing else 4)
                if index:
                    name, _, ok = self._entry(index)
                else:
                    name, pos = self._string(block, pos)
                    ok = valid_name(name)
                value, pos = self._string(block, pos)
                ok = ok and valid_value(value)
                if indexing:
                    self._add(name, value, ok)
            size_update_allowed = False
            if not ok:
                malformed = True
            list_size += len(name) + len(value) + ENTRY_OVERHEAD
            out.append((name, value))
        self.malformed = malformed
        self.list_size = list_size
        return out


class Encoder:
    """The encoding context of one connection: response header blocks."""

    def __init__(self) -> None:
        self.max_size = DEFAULT_TABLE_SIZE
        self.size = 0
        self.inserted = 0  # entries ever added: entry number k has index 62 + inserted - 1 - k
        self.entries: list[tuple[bytes, bytes, int]] = []  # oldest first, with their numbers
        # field -> -(static index), or the number of its newest dynamic entry: one lookup
        self.known: dict[object, int] = dict(STATIC_KNOWN)
        self.names: dict[bytes, int] = {}  # name -> entry number (the newest)
        self.size_update = -1  # a table size to announce at the next block

    def set_max_size(self, setting: int) -> None:
        """The client's SETTINGS_HEADER_TABLE_SIZE (we use at most the default 4096)."""
        size = min(setting, DEFAULT_TABLE_SIZE)
        if size != self.max_size:
            self.max_size = size
            self.size_update = size if self.size_update < 0 else min(self.size_update, size)
            self._evict()

    def _evict(self) -> None:
        entries = self.entries
        drop = 0
        while self.size > self.max_size:
            name, value, number = entries[drop]
            self.size -= len(name) + len(value) + ENTRY_OVERHEAD
            key = (name, value)
            if self.known.get(key) == number:
                del self.known[key]
            if self.names.get(name) == number:
                del self.names[name]
            drop += 1
        if drop:
            del entries[:drop]

    def encode(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        # pieces joined once at the end: appending to a list is a native operation in the
        # compiled module, appending to a bytearray a method call
        out: list[bytes] = []
        if self.size_update >= 0:
            if self.size_update < self.max_size:  # the lowest value first, then the current
                encode_int(out, 0x20, 5, self.size_update)
            encode_int(out, 0x20, 5, self.max_size)
            self.size_update = -1
        known = self.known
        # the fields as the objects they are: a field typed as a tuple would be unpacked by the
        # compiled code and packed into a new tuple for every dictionary lookup
        fields = cast("list[object]", headers)
        for key in fields:
            number = known.get(key, NOT_KNOWN)
            if number != NOT_KNOWN:
                index = -number if number < 0 else STATIC_LEN + self.inserted - number
                if index < 0x7F:
                    out.append(BYTES[0x80 | index])
                else:
                    encode_int(out, 0x80, 7, index)
                continue
            name, value = cast("tuple[bytes, bytes]", key)
            name_index = STATIC_NAMES.get(name, 0)
            if not name_index:
                number = self.names.get(name, -1)
                if number >= 0:
                    name_index = STATIC_LEN + self.inserted - number
            size = len(name) + len(value) + ENTRY_OVERHEAD
            indexing = size <= self.max_size // 2 and name != b"set-cookie"
            encode_int(out, 0x40 if indexing else 0x00, 6 if indexing else 4, name_index)
            if not name_index:
                encode_int(out, 0, 7, len(name))
                out.append(name)
            encode_int(out, 0, 7, len(value))
            out.append(value)
            if indexing:
                number = self.inserted
                self.inserted += 1
                self.entries.append((name, value, number))
                known[key] = number
                self.names[name] = number
                self.size += size
                self._evict()
        return b"".join(out)


def _static_pairs() -> dict[tuple[bytes, bytes], int]:
    pairs: dict[tuple[bytes, bytes], int] = {}
    for i, (name, value) in enumerate(STATIC):
        if value:
            pairs[(name, value)] = i + 1
    return pairs


def _static_names() -> dict[bytes, int]:
    names: dict[bytes, int] = {}
    for i, (name, _) in enumerate(STATIC):
        names.setdefault(name, i + 1)
    return names


STATIC_PAIRS: Final[dict[tuple[bytes, bytes], int]] = _static_pairs()
STATIC_KNOWN: Final[dict[object, int]] = {key: -index for key, index in STATIC_PAIRS.items()}
NOT_KNOWN: Final = 1 << 62
STATIC_NAMES: Final[dict[bytes, int]] = _static_names()
