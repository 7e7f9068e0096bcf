"""TLS termination: a certificate store chosen by SNI, TLS 1.2+ only, ALPN h2 and http/1.1.

Lookup for a client's server name: the exact domain, then a wildcard certificate for its parent
(``*.example.com`` covers ``a.example.com``, one label, as X.509 wildcards do), then the default
certificate (the cluster's ``TLSCERT``/``TLSKEY``). Without any match and without a default the
handshake fails. Certificates come and go at run time: the listening socket keeps one context
whose SNI callback switches each connection to the chosen certificate's context.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
from dataclasses import dataclass

ALPN = ("h2", "http/1.1")
# TLS 1.2 suites: forward secret AEAD only (also what HTTP/2 requires); TLS 1.3 suites are fixed.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _context(alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def load_pem(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """Load a PEM certificate chain and key held in memory (``load_cert_chain`` wants files:
    they live a moment in a private directory)."""
    with tempfile.TemporaryDirectory(prefix="flynn-router-tls-") as tmp:
        os.chmod(tmp, 0o700)
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key_pem)
        with open(cert_path, "w") as f:
            f.write(cert_pem)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise ValueError(f"certificate and key do not load: {exc.reason or exc}") from None


@dataclass
class _Entry:
    domain: str
    fingerprint: str
    context: ssl.SSLContext


class CertStore:
    """Certificates by domain (exact or ``*.suffix``), plus a default; see the module docstring."""

    def __init__(self, alpn: tuple[str, ...] = ALPN) -> None:
        self._alpn = alpn
        self._contexts: dict[str, ssl.SSLContext] = {}  # fingerprint -> context (shared)
        self._owners: dict[str, _Entry] = {}  # owner (route id, or the domain) -> entry
        self._by_domain: dict[str, list[str]] = {}  # domain -> owners, latest last
        self._default: ssl.SSLContext | None = None
        self.server_context = _context(alpn)
        self.server_context.sni_callback = self._sni

    def _build(self, cert_pem: str, key_pem: str) -> tuple[str, ssl.SSLContext]:
        fp = hashlib.sha256((cert_pem + "\0" + key_pem).encode()).hexdigest()
        ctx = self._contexts.get(fp)
        if ctx is None:
            ctx = _context(self._alpn)
            load_pem(ctx, cert_pem, key_pem)
            self._contexts[fp] = ctx
        return fp, ctx

    def set_default(self, cert_pem: str, key_pem: str) -> None:
        """The certificate for names nothing else matches (and for clients without SNI)."""
        _fp, ctx = self._build(cert_pem, key_pem)
        self._default = ctx
        load_pem(self.server_context, cert_pem, key_pem)

    @property
    def has_default(self) -> bool:
        return self._default is not None

    def add(self, domain: str, cert_pem: str, key_pem: str, owner: str | None = None) -> None:
        """Serve this certificate for ``domain`` (exact, or ``*.suffix``). ``owner`` (a route id)
        lets several routes name the same domain; the latest one added wins."""
        domain = domain.lower().rstrip(".")
        owner = owner or domain
        fp, ctx = self._build(cert_pem, key_pem)
        self.remove(owner)
        self._owners[owner] = _Entry(domain, fp, ctx)
        self._by_domain.setdefault(domain, []).append(owner)

    def remove(self, owner: str) -> bool:
        entry = self._owners.pop(owner, None)
        if entry is None:
            return False
        owners = self._by_domain.get(entry.domain, [])
        if owner in owners:
            owners.remove(owner)
        if not owners:
            self._by_domain.pop(entry.domain, None)
        if (
            not any(e.fingerprint == entry.fingerprint for e in self._owners.values())
            and self._default is not entry.context
        ):
            self._contexts.pop(entry.fingerprint, None)
        return True

    def domains(self) -> list[str]:
        return sorted(self._by_domain)

    def select(self, server_name: str | None) -> ssl.SSLContext | None:
        if server_name:
            name = server_name.lower().rstrip(".")
            owners = self._by_domain.get(name)
            if not owners:
                dot = name.find(".")
                if dot > 0:
                    owners = self._by_domain.get("*" + name[dot:])
            if owners:
                return self._owners[owners[-1]].context
        return self._default

    def _sni(
        self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        chosen = self.select(server_name)
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if chosen is not sslobj.context:
            sslobj.context = chosen
        return None
