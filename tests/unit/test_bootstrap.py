"""flynn-host bootstrap: the cluster certificates and the command's input checks."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import ssl
import subprocess
from pathlib import Path

from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flynn.host.bootstrap import Result, bootstrap_command, make_certificates


def test_certificates_chain_names_and_pin(tmp_path: Path) -> None:
    ca_pem, cert_pem, key_pem, pin = make_certificates("dev.flynn.test", ["192.168.250.11"])
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    assert cert.issuer == ca.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["dev.flynn.test", "*.dev.flynn.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.168.250.11")]
    der = cert.public_bytes(serialization.Encoding.DER)
    assert pin == base64.b64encode(hashlib.sha256(der).digest()).decode()
    # a real TLS stack accepts the pair and the chain verifies against the CA (openssl verify)
    (tmp_path / "ca.pem").write_text(ca_pem)
    (tmp_path / "cert.pem").write_text(cert_pem)
    (tmp_path / "key.pem").write_text(key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "ca.pem", tmp_path / "cert.pem"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    # every run makes a new CA and key
    assert make_certificates("dev.flynn.test", [])[3] != pin


def test_result_prints_both_cluster_add_lines() -> None:
    r = Result("dev.flynn.test", "http://192.168.250.11:1200", "k" * 64, "PIN=", "", ["192.168.250.11"])
    assert r.commands() == [
        f"flynn cluster add -p PIN= default dev.flynn.test {'k' * 64}",
        f"flynn cluster add default http://192.168.250.11:1200 {'k' * 64}",
    ]
    r.git_url = "http://192.168.250.11:1220"  # gitreceive's own port until the routers serve git.DOMAIN
    direct = "flynn cluster add --git-url http://192.168.250.11:1220 default http://192.168.250.11:1200"
    assert r.commands()[1] == f"{direct} {'k' * 64}"


def test_bad_input_is_refused_with_one_line() -> None:
    runner = CliRunner()
    cases = [
        (["--hosts", "10.0.0.1,nope", "--domain", "a.test"], "--hosts"),
        (["--hosts", "10.0.0.1,10.0.0.1", "--domain", "a.test"], "twice"),
        (["--hosts", "10.0.0.1", "--domain", "not a domain"], "not a DNS name"),
        (["--hosts", "10.0.0.1", "--domain", "a.test", "--raft-secret-file", "-"], "at least 16"),
    ]
    for args, fragment in cases:
        res = runner.invoke(bootstrap_command, args, input="short\n")
        assert res.exit_code == 1, (args, res.output)
        assert fragment in res.output, res.output
