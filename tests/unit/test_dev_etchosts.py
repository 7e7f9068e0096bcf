"""The managed /etc/hosts block of the developer's cluster (scripts/flynn_dev/etchosts.py), on a
copy of a hosts file: installed, replaced, removed, and nothing else touched."""

from __future__ import annotations

from pathlib import Path

from flynn_dev import etchosts

ORIGINAL = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n10.1.2.3\tbuild-server\n"


def test_install_replace_remove(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(ORIGINAL)
    inode = hosts.stat().st_ino
    names = ["controller.dev.flynn.test", "git.dev.flynn.test"]
    etchosts.install("dev", {"192.168.250.11": names, "192.168.250.12": names}, path=hosts)
    text = hosts.read_text()
    assert text.startswith(ORIGINAL)
    assert "192.168.250.11\tcontroller.dev.flynn.test git.dev.flynn.test\n" in text
    assert text.count("# BEGIN flynn dev cluster") == 1
    # installing again replaces the block (one block, the new addresses)
    etchosts.install("dev", {"192.168.250.13": names}, path=hosts)
    text = hosts.read_text()
    assert text.count("# BEGIN flynn dev cluster") == 1
    assert "192.168.250.11" not in text
    assert "192.168.250.13\tcontroller.dev.flynn.test" in text
    # another cluster's block is its own
    etchosts.install("other", {"10.9.9.9": ["controller.other.test"]}, path=hosts)
    assert etchosts.remove("dev", path=hosts) is True
    text = hosts.read_text()
    assert "dev.flynn.test" not in text
    assert "controller.other.test" in text
    assert etchosts.remove("other", path=hosts) is True
    assert hosts.read_text() == ORIGINAL
    assert etchosts.remove("other", path=hosts) is False  # nothing left to remove
    assert hosts.stat().st_ino == inode  # rewritten in place (it may be a bind mount)
