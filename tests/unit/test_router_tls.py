"""TLS termination: SNI picks the certificate (openssl s_client), TLS 1.2+ only, ALPN, and
HTTP/2 to HTTP/1.1 proxying (curl --http2)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from flynn.router.server import Router
from flynn.router.tls import CertStore
from tests.unit.router_helpers import (
    CA,
    LOCAL,
    backends,
    curl,
    header,
    make_ca,
    on_uvloop,
    run,
    running_router,
)


def tls_router_certs(ca: CA) -> CertStore:
    certs = CertStore()
    default = ca.issue("*.cluster.test", "cluster.test")
    certs.set_default(default.cert_pem, default.key_pem)
    return certs


async def served_subject(router: Router, ca: CA, server_name: str | None) -> str:
    argv = ["openssl", "s_client", "-connect", f"{LOCAL}:{router.https_ports[0]}", "-CAfile", str(ca.path)]
    argv += ["-servername", server_name] if server_name else ["-noservername"]
    r = await run(*argv, stdin=b"", limit=15)
    match = re.search(r"^subject=(.*)$", r.text, re.MULTILINE)
    assert match, r.text + r.err.decode()
    assert "Verify return code: 0 (ok)" in r.text
    return match.group(1).strip()


def https(router: Router, host: str, path: str = "/") -> list[str]:
    port = router.https_ports[0]
    return ["--resolve", f"{host}:{port}:{LOCAL}", f"https://{host}:{port}{path}"]


@on_uvloop
async def test_sni_selects_route_wildcard_and_default_certificates(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    exact = ca.issue("shop.example.test")
    wild = ca.issue("*.apps.example.test")
    async with running_router(certs=tls_router_certs(ca)) as router:
        router.table.add_http_route(
            "shop.example.test", "shop", tls_cert=exact.cert_pem, tls_key=exact.key_pem
        )
        router.table.add_http_route(
            "*.apps.example.test", "apps", tls_cert=wild.cert_pem, tls_key=wild.key_pem
        )
        assert await served_subject(router, ca, "shop.example.test") == "CN = shop.example.test"
        assert await served_subject(router, ca, "blog.apps.example.test") == "CN = *.apps.example.test"
        assert await served_subject(router, ca, "api.cluster.test") == "CN = *.cluster.test"
        assert await served_subject(router, ca, "unknown.test") == "CN = *.cluster.test"
        assert await served_subject(router, ca, None) == "CN = *.cluster.test"
        # certificates follow the routes at run time
        router.table.remove_route("http:shop.example.test/")
        assert await served_subject(router, ca, "shop.example.test") == "CN = *.cluster.test"
        newer = ca.issue("shop.example.test", "www.shop.example.test")
        router.table.add_http_route(
            "shop.example.test", "shop", tls_cert=newer.cert_pem, tls_key=newer.key_pem
        )
        assert await served_subject(router, ca, "shop.example.test") == "CN = shop.example.test"


@on_uvloop
async def test_only_tls12_and_newer(tmp_path: Path) -> None:
    """openssl s_client offering one version at a time (old ones allowed on the client side with
    SECLEVEL=0): TLS 1.2 and 1.3 complete, 1.0 and 1.1 are refused by the router."""
    ca = make_ca(tmp_path)
    async with running_router(certs=tls_router_certs(ca)) as router:
        for flag, ok in (("-tls1_3", True), ("-tls1_2", True), ("-tls1_1", False), ("-tls1", False)):
            r = await run(
                "openssl", "s_client", "-connect", f"{LOCAL}:{router.https_ports[0]}", "-servername",
                "a.cluster.test", flag, "-cipher", "ALL:@SECLEVEL=0", stdin=b"", limit=15,
            )  # fmt: skip
            version = {"-tls1_3": "TLSv1.3", "-tls1_2": "TLSv1.2", "-tls1_1": "TLSv1.1", "-tls1": "TLSv1"}[
                flag
            ]
            assert f"Protocol  : {version}" in r.text or f"{version}, Cipher" in r.text, r.text
            if ok:
                assert r.rc == 0
                assert re.search(rf"New, {version}, Cipher is \S+", r.text), r.text
            else:
                assert r.rc != 0
                assert "Cipher is (NONE)" in r.text, r.text


@on_uvloop
async def test_http2_to_http11_upstream(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    body = bytes(range(256)) * 8192  # 2 MiB
    src = tmp_path / "body"
    src.write_bytes(body)
    async with backends("b1", "b2") as bs, running_router(certs=tls_router_certs(ca)) as router:
        router.table.add_http_route("app.cluster.test", "web")
        router.table.set_backends("web", [b.addr for b in bs])
        base = ["--cacert", str(ca.path), "--http2"]
        r = await curl(*base, "-w", "\n%{http_version}", *https(router, "app.cluster.test", "/h2?x=1"))
        assert r.rc == 0, r.err
        text, _, version = r.text.rpartition("\n")
        assert version == "2"
        info = __import__("json").loads(text)
        assert info["path"] == "/h2?x=1"
        assert info["version"] == "1.1"  # upstream speaks HTTP/1.1
        assert header(info, "Host") == [f"app.cluster.test:{router.https_ports[0]}"]
        assert header(info, "X-Forwarded-Proto") == ["https"]
        assert len(header(info, "X-Request-Id")) == 1
        # upload with a known length, and without one (chunked upstream)
        r = await curl(*base, "--data-binary", f"@{src}", *https(router, "app.cluster.test", "/up"))
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        r = await curl(
            *base, "-H", "Content-Length:", "-H", "Transfer-Encoding:", "--data-binary", f"@{src}",
            *https(router, "app.cluster.test", "/up2"),
        )  # fmt: skip
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        # a 20 MB streamed download respects HTTP/2 flow control
        n = 20_000_000
        r = await curl(*base, *https(router, "app.cluster.test", f"/stream?n={n}"), limit=60)
        assert r.rc == 0, r.err
        assert len(r.out) == n
        # many streams on one connection
        urls = []
        for i in range(20):
            urls += ["-o", str(tmp_path / f"out{i}"), *https(router, "app.cluster.test", f"/p{i}")]
        r = await curl(*base, "--parallel", "--parallel-max", "20", *urls)
        assert r.rc == 0, r.err
        backends_seen = {
            __import__("json").loads((tmp_path / f"out{i}").read_bytes())["backend"] for i in range(20)
        }
        assert backends_seen == {"b1", "b2"}
        stats = router.status()
        assert stats["h2_connections"] >= 1
        # router answers over HTTP/2 too
        r = await curl(*base, "-w", "%{http_code}", "-o", "/dev/null", *https(router, "nope.cluster.test"))
        assert r.text == "404"


@on_uvloop
async def test_alpn_http11_over_tls_and_redirect_route_not_applied(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    async with backends("b1") as (b1,), running_router(certs=tls_router_certs(ca)) as router:
        router.table.add_http_route("app.cluster.test", "web", https_redirect=True)
        router.table.set_backends("web", [b1.addr])
        r = await curl(
            "--cacert",
            str(ca.path),
            "--http1.1",
            "-w",
            "\n%{http_version}",
            *https(router, "app.cluster.test"),
        )
        assert r.rc == 0, r.err
        assert r.text.endswith("\n1.1")
        assert '"backend": "b1"' in r.text
        assert router.status()["tls_connections"] == 1
