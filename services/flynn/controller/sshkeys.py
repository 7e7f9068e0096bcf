"""SSH public keys (``authorized_keys`` lines), parsed and fingerprinted like OpenSSH does."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from flynn.controller.errors import Invalid

KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
_B64_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
MAX_COMMENT = 1024
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class PublicKey:
    type: str
    blob: bytes
    comment: str

    @property
    def id(self) -> str:
        """Hex SHA-256 of the key blob: a path-safe id (the fingerprint has ``/`` and ``+``)."""
        return hashlib.sha256(self.blob).hexdigest()

    @property
    def fingerprint(self) -> str:
        """OpenSSH's form, as ``ssh-keygen -lf`` prints it: ``SHA256:`` + unpadded base64."""
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")

    @property
    def line(self) -> str:
        text = f"{self.type} {base64.b64encode(self.blob).decode()}"
        return f"{text} {self.comment}" if self.comment else text


def _bad(message: str) -> Invalid:
    return Invalid(f"key: {message}", field="key")


def parse(text: str) -> PublicKey:
    line = text.strip()
    if "\n" in line or "\r" in line:
        raise _bad("must be a single line")
    parts = line.split(None, 2)
    if len(parts) < 2:
        raise _bad("expected 'TYPE BASE64 [COMMENT]', like a line of ~/.ssh/id_ed25519.pub")
    kind, b64 = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    if kind not in KEY_TYPES:
        raise _bad(f"unsupported key type {kind[:40]!r} (supported: {', '.join(KEY_TYPES)})")
    if not _B64_RE.fullmatch(b64):
        raise _bad("the key data is not base64")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("the key data is not valid base64") from None
    if len(blob) < 4:
        raise _bad("the key data is truncated")
    (name_len,) = struct.unpack(">I", blob[:4])
    if name_len > len(blob) - 4 or blob[4 : 4 + name_len] != kind.encode():
        raise _bad(f"the key data does not hold a {kind} key")
    if len(comment) > MAX_COMMENT:
        raise _bad(f"the comment is longer than {MAX_COMMENT} characters")
    if not kind.startswith("sk-"):
        try:
            loaded = load_ssh_public_key(f"{kind} {b64}".encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise _bad(f"not a valid {kind} public key ({exc})") from None
        bits = getattr(loaded, "key_size", None)
        if kind == "ssh-rsa" and isinstance(bits, int) and bits < MIN_RSA_BITS:
            raise _bad(f"RSA keys must have at least {MIN_RSA_BITS} bits (this one has {bits})")
    else:
        _check_sk(kind, blob)
    return PublicKey(kind, blob, comment)


def _read_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise _bad("the key data is truncated")
    (n,) = struct.unpack(">I", blob[offset : offset + 4])
    end = offset + 4 + n
    if end > len(blob):
        raise _bad("the key data is truncated")
    return blob[offset + 4 : end], end


def _check_sk(kind: str, blob: bytes) -> None:
    """Security-key types (FIDO): type, key material, application; nothing may follow."""
    _, off = _read_string(blob, 0)
    if kind == "sk-ssh-ed25519@openssh.com":
        pub, off = _read_string(blob, off)
        if len(pub) != 32:
            raise _bad("an ed25519 key has 32 bytes")
    else:
        curve, off = _read_string(blob, off)
        if curve != b"nistp256":
            raise _bad("the curve must be nistp256")
        point, off = _read_string(blob, off)
        if len(point) != 65 or point[0] != 4:
            raise _bad("not an uncompressed P-256 point")
    application, off = _read_string(blob, off)
    if not application.startswith(b"ssh:"):
        raise _bad("the application must start with ssh:")
    if off != len(blob):
        raise _bad("trailing bytes after the key")
