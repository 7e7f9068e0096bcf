"""``flynn cluster add -p PIN`` and pinned use, against a local TLS server with a self-signed
certificate (the controller itself serves plain HTTP; TLS is the router's, issue 6)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from flynn.cli import git
from flynn.controller.client import PIN_MISMATCH, cert_pin
from tests.unit.test_controller_client import FAKE_CA, KEY, Recorder, ThreadServer, make_app, self_signed

FLYNN = Path(sys.executable).with_name("flynn")


TLS = tuple[ThreadServer, str, Recorder]


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[TLS]:
    rec = Recorder()
    ctx, pin = self_signed(tmp_path, "controller.example.com")
    server = ThreadServer(make_app(rec), ctx)
    yield server, pin, rec
    server.stop()


def flynn(rc: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLYNNRC": str(rc)}
    env.pop("FLYNN_APP", None)
    out = subprocess.run(
        [str(FLYNN), *args], env=env, capture_output=True, text=True, timeout=30, check=False, cwd="/"
    )
    assert KEY not in out.stdout + out.stderr
    return out


def test_cluster_add_with_a_wrong_pin_saves_nothing(
    tmp_path: Path, tls: tuple[ThreadServer, str, Recorder]
) -> None:
    server, _, rec = tls
    rc = tmp_path / "rc"
    out = flynn(rc, "cluster", "add", "-p", cert_pin(b"another certificate"), "test", server.url, KEY)
    assert out.returncode == 1
    assert out.stderr.strip() == f"flynn: cannot connect to {server.url}: {PIN_MISMATCH} (nothing was saved)"
    assert not rc.exists()
    assert rec.requests == []  # the key never left this machine


def test_cluster_add_without_pin_verifies_the_ca(
    tmp_path: Path, tls: tuple[ThreadServer, str, Recorder]
) -> None:
    server, _, rec = tls
    rc = tmp_path / "rc"
    out = flynn(rc, "cluster", "add", "test", server.url, KEY)
    assert out.returncode == 1
    assert "certificate verify failed" in out.stderr
    assert len(out.stderr.splitlines()) == 1
    assert not rc.exists()
    assert rec.requests == []


def test_pinned_cluster_works(tmp_path: Path, tls: TLS) -> None:
    server, pin, rec = tls
    rc = tmp_path / "rc"
    out = flynn(rc, "cluster", "add", "-p", pin, "test", server.url, KEY)
    assert out.returncode == 0, out.stderr
    assert tomllib.loads(rc.read_text())["cluster"][0]["TLSPin"] == pin
    out = flynn(rc, "apps")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].split() == ["a1", "myapp"]
    # the certificate changes (as in the seed's migrate-domain story): refused with the pin message
    text = rc.read_text().replace(pin, cert_pin(b"the old certificate"))
    rc.write_text(text)
    seen = len(rec.requests)
    out = flynn(rc, "apps")
    assert out.returncode == 1
    assert out.stderr.strip() == f"flynn: cannot connect to {server.url}: {PIN_MISMATCH}"
    assert len(rec.requests) == seen


def test_pin_with_plain_http_is_refused(tmp_path: Path) -> None:
    rc = tmp_path / "rc"
    out = flynn(rc, "cluster", "add", "-p", cert_pin(b"x"), "test", "http://127.0.0.1:1", KEY)
    assert out.returncode == 1
    assert out.stderr.strip() == "flynn: cluster 'test': a TLS pin needs an https:// controller URL"
    assert not rc.exists()


def test_a_pinned_cluster_with_https_git_keeps_its_ca_for_git(
    tmp_path: Path, tls: TLS, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, pin, rec = tls
    rc = tmp_path / "rc"
    git_url = "https://git.example.com"
    out = flynn(rc, "cluster", "add", "-p", pin, "--git-url", git_url, "test", server.url, KEY)
    assert out.returncode == 0, out.stderr
    ca_file = tmp_path / ".flynn" / "ca-certs" / "test.pem"
    assert ca_file.read_text() == FAKE_CA  # fetched over the pinned connection
    assert str(ca_file) in out.stdout
    assert ("GET", "/ca-cert") in [(m, p) for m, p, _ in rec.requests]
    # what 'flynn create' does in a repository: git trusts that CA for the cluster's git URL only
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    monkeypatch.chdir(repo)
    git.set_ca_info(git_url, str(ca_file))
    got = subprocess.run(
        ["git", "config", "--get", f"http.{git_url}/.sslCAInfo"], capture_output=True, text=True, check=True
    )
    assert got.stdout.strip() == str(ca_file)
    # a cluster added again without a pin (or plain-HTTP git) keeps no stale CA; remove drops it
    out = flynn(rc, "cluster", "add", "-f", "-p", pin, "test", server.url, KEY)
    assert out.returncode == 0, out.stderr
    assert not ca_file.exists()
    out = flynn(rc, "cluster", "add", "-f", "-p", pin, "--git-url", git_url, "test", server.url, KEY)
    assert ca_file.exists()
    out = flynn(rc, "cluster", "remove", "test")
    assert out.returncode == 0, out.stderr
    assert not ca_file.exists()
