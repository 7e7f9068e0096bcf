"""``flynn git-credentials``: the credential helper protocol, driven by the real ``git credential``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flynn.cli.gitcreds import matches, parse_request
from flynn.cli.rcfile import Cluster, RcFile

FLYNN = Path(sys.executable).with_name("flynn")
KEY = "cluster-key-0123456789abcdef"


def rcfile(tmp_path: Path, *clusters: Cluster) -> Path:
    rc = RcFile(tmp_path / "flynnrc")
    for c in clusters:
        rc.add(c)
    rc.save()
    return tmp_path / "flynnrc"


def git_fill(
    tmp_path: Path, rc: Path, request: str, helper: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "FLYNNRC": str(rc),
    }
    helper = helper or f"!{FLYNN} git-credentials"
    return subprocess.run(
        ["git", "-c", f"credential.helper={helper}", "credential", "fill"],
        input=request,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_git_gets_the_key_of_the_cluster_whose_git_url_it_asks_for(tmp_path: Path) -> None:
    rc = rcfile(
        tmp_path,
        Cluster("one", "other-key", "http://10.0.0.1:1200", git_url="http://10.0.0.1:1220"),
        Cluster("two", KEY, "https://controller.two.test", git_url="https://git.two.test"),
    )
    out = git_fill(tmp_path, rc, "protocol=https\nhost=git.two.test\npath=myapp.git\n\n")
    assert out.returncode == 0, out.stderr
    assert "username=flynn\n" in out.stdout
    assert f"password={KEY}\n" in out.stdout
    out = git_fill(tmp_path, rc, "protocol=http\nhost=10.0.0.1:1220\n\n")
    assert "password=other-key\n" in out.stdout


def test_other_urls_get_nothing_and_git_asks_no_one_else(tmp_path: Path) -> None:
    rc = rcfile(tmp_path, Cluster("one", KEY, "http://10.0.0.1:1200", git_url="http://10.0.0.1:1220"))
    for request in (
        "protocol=http\nhost=10.0.0.1:1221\n\n",  # another port
        "protocol=https\nhost=10.0.0.1:1220\n\n",  # another scheme
        "protocol=http\nhost=10.0.0.2:1220\n\n",  # another host
    ):
        out = git_fill(tmp_path, rc, request)
        assert out.returncode != 0  # no helper answered and prompting is off
        assert KEY not in out.stdout + out.stderr


def test_store_and_erase_change_nothing(tmp_path: Path) -> None:
    rc = rcfile(tmp_path, Cluster("one", KEY, "http://10.0.0.1:1200", git_url="http://10.0.0.1:1220"))
    before = rc.read_bytes()
    for action in ("store", "erase"):
        out = subprocess.run(
            [str(FLYNN), "git-credentials", action],
            input="protocol=http\nhost=10.0.0.1:1220\nusername=flynn\npassword=x\n\n",
            env={**os.environ, "FLYNNRC": str(rc)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert (out.returncode, out.stdout) == (0, "")
    assert rc.read_bytes() == before
    bad = subprocess.run(
        [str(FLYNN), "git-credentials", "steal"], env={**os.environ, "FLYNNRC": str(rc)},
        capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.startswith("flynn: ")


@pytest.mark.parametrize(
    ("git_url", "request_text", "expected"),
    [
        ("http://10.0.0.1:1220", "protocol=http\nhost=10.0.0.1:1220\n", True),
        ("https://git.a.test", "protocol=https\nhost=git.a.test:443\n", True),  # the default port, spelled
        ("https://git.a.test", "protocol=https\nhost=GIT.A.TEST\n", True),
        ("https://git.a.test", "url=https://flynn@git.a.test/app.git\n", True),
        ("https://a.test/git", "protocol=https\nhost=a.test\npath=git/app.git\n", True),
        ("https://a.test/git", "protocol=https\nhost=a.test\npath=other/app.git\n", False),
        ("http://10.0.0.1:1220", "protocol=http\nhost=10.0.0.1\n", False),
        ("", "protocol=http\nhost=10.0.0.1:1220\n", False),
        ("http://10.0.0.1:1220", "protocol=http\nhost=10.0.0.1:notaport\n", False),
    ],
)
def test_matching(git_url: str, request_text: str, expected: bool) -> None:
    cluster = Cluster("c", KEY, "http://10.0.0.1:1200", git_url=git_url)
    assert matches(cluster, parse_request(request_text)) is expected
