"""TLS certificates of routes: a PEM chain and its private key, checked before they are stored.

A route's ``certificate`` is ``{"cert": PEM, "key": PEM}``: ``cert`` holds one or more
``CERTIFICATE`` blocks (the leaf first, then intermediates), ``key`` the unencrypted private key
of the leaf (PKCS#8, or the traditional RSA/EC forms). Both must parse and the key must be the
leaf's: a router would otherwise refuse the pair at run time and serve the default certificate.
The key never appears in an error message.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from flynn.controller.errors import Invalid

MAX_PEM = 64 * 1024
MAX_CHAIN = 10


@dataclass(frozen=True)
class CertInfo:
    id: str  # sha256 (hex) of the leaf certificate's DER, Flynn's certificate id
    names: list[str]  # DNS names of the leaf (subjectAltName)
    not_after: str  # RFC 3339 UTC


def check_pair(cert_pem: str, key_pem: str, where: str = "certificate") -> CertInfo:
    """Parse ``cert_pem`` and ``key_pem`` and check that the key belongs to the leaf certificate."""
    if len(cert_pem.encode()) > MAX_PEM:
        raise Invalid(f"{where}.cert: longer than {MAX_PEM} bytes", field=f"{where}.cert")
    if len(key_pem.encode()) > MAX_PEM:
        raise Invalid(f"{where}.key: longer than {MAX_PEM} bytes", field=f"{where}.key")
    if "-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise Invalid(f"{where}.cert: holds no PEM CERTIFICATE block", field=f"{where}.cert")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise Invalid(f"{where}.cert: is not a valid PEM certificate chain", field=f"{where}.cert") from None
    if len(chain) > MAX_CHAIN:
        raise Invalid(f"{where}.cert: more than {MAX_CHAIN} certificates", field=f"{where}.cert")
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except TypeError:
        raise Invalid(
            f"{where}.key: is encrypted; give the key without a passphrase", field=f"{where}.key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise Invalid(f"{where}.key: is not a valid PEM private key", field=f"{where}.key") from None
    kinds = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
    if not isinstance(key, kinds):
        raise Invalid(f"{where}.key: must be an RSA, ECDSA or EdDSA key", field=f"{where}.key")
    leaf = chain[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    try:
        leaf_public = leaf.public_key().public_bytes(der, spki)
    except (ValueError, UnsupportedAlgorithm):
        raise Invalid(
            f"{where}.cert: the certificate's key type is not supported", field=f"{where}.cert"
        ) from None
    if key.public_key().public_bytes(der, spki) != leaf_public:
        raise Invalid(
            f"{where}.key: does not belong to the (first) certificate of {where}.cert", field=f"{where}.key"
        )
    names: list[str] = []
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [str(n) for n in san.value.get_values_for_type(x509.DNSName)]
    except (x509.ExtensionNotFound, ValueError):
        pass
    expires = leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return CertInfo(leaf.fingerprint(hashes.SHA256()).hex(), names, expires)
