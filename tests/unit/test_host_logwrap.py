"""The job's exec wrapper (flynn.host.jobs.logwrap) against a stand-in for journald's stdout socket:
two streams with their headers, the app exec'd in place, the fallbacks. That journald attaches the
unit's fields and priorities is checked on real hosts (tests/integration/test_logs.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flynn.host.jobs import logwrap

WRAPPER = os.path.abspath(logwrap.__file__)


@dataclass
class Stream:
    header: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


class FakeJournald:
    """Accepts stream connections; each one's 7 header lines, then its lines (empty ones too)."""

    def __init__(self, path: Path, read_delay: float = 0.0) -> None:
        self.path = path
        self.read_delay = read_delay
        self.streams: list[Stream] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.threads: list[threading.Thread] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            stream = Stream()
            self.streams.append(stream)
            t = threading.Thread(target=self._read, args=(conn, stream), daemon=True)
            t.start()
            self.threads.append(t)

    def _read(self, conn: socket.socket, stream: Stream) -> None:
        time.sleep(self.read_delay)
        data = b""
        with conn:
            while chunk := conn.recv(65536):
                data += chunk
        lines = data.decode().split("\n")
        stream.header, stream.lines = lines[:7], lines[7:-1]

    def close(self) -> None:
        self.sock.close()
        for t in self.threads:
            t.join(5)

    def by_priority(self, priority: int) -> Stream:
        found = [s for s in self.streams if s.header[2] == str(priority)]
        assert len(found) == 1, [s.header for s in self.streams]
        return found[0]


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[FakeJournald]:
    j = FakeJournald(tmp_path / "stdout")
    yield j
    j.close()


def run(sock: Path, *app: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-I", "-S", WRAPPER, "--socket", str(sock), "myapp-web", *app]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_stdout_and_stderr_are_two_streams_with_their_priorities(journald: FakeJournald) -> None:
    out = run(journald.path, "/bin/sh", "sh", "-c", "echo one; echo two >&2; echo three; echo '<1>four' >&2")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    assert out.stderr == ""
    journald.close()
    stdout, stderr = journald.by_priority(6), journald.by_priority(3)
    for stream in (stdout, stderr):
        # identifier, unit id (empty: only root may name one), priority, then level prefix and
        # forwarding off: the app cannot change a line's priority with "<N>"
        assert stream.header[0] == "myapp-web"
        assert stream.header[1] == ""
        assert stream.header[3:] == ["0", "0", "0", "0"]
        assert stream.lines[0] == ""  # the empty line journald reads the sender's context for
    assert stdout.lines[1:] == ["one", "three"]
    assert stderr.lines[1:] == ["two", "<1>four"]


def test_the_app_keeps_the_wrappers_pid_and_default_signals(journald: FakeJournald) -> None:
    argv = [sys.executable, "-I", "-S", WRAPPER, "--socket", str(journald.path), "x-web"]
    argv += ["/bin/sh", "sh", "-c", "echo $$; grep SigIgn /proc/self/status"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.wait(30) == 0
    journald.close()
    lines = journald.by_priority(6).lines
    assert lines[1] == str(proc.pid)  # exec'd in place: systemd's main PID is the app
    ignored = int(lines[2].split()[1], 16)
    assert not ignored & (1 << (13 - 1)), "SIGPIPE is ignored in the app"
    assert not ignored & (1 << (25 - 1)), "SIGXFSZ is ignored in the app"


def test_it_waits_until_journald_has_read_the_headers(tmp_path: Path) -> None:
    slow = FakeJournald(tmp_path / "slow", read_delay=0.3)
    try:
        t0 = time.monotonic()
        out = run(slow.path, "/bin/true", "true")
        took = time.monotonic() - t0
    finally:
        slow.close()
    assert out.returncode == 0
    print(f"wrapper waited {took:.2f}s for a reader that starts after 0.3s")
    assert took >= 0.3


def test_unread_counts_what_the_peer_has_not_consumed() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        a.sendall(b"x" * 100)
        assert logwrap.unread(a) > 0
        assert logwrap.wait_read([a], timeout=0.05) is False
        b.recv(1000)
        assert logwrap.unread(a) == 0
        assert logwrap.wait_read([a], timeout=0.05) is True


def test_without_journald_the_inherited_descriptors_are_kept(tmp_path: Path) -> None:
    out = run(tmp_path / "missing", "/bin/sh", "sh", "-c", "echo out; echo err >&2")
    assert out.returncode == 0
    assert out.stdout == "out\n"
    assert out.stderr == "err\n"


def test_an_exec_failure_exits_like_systemds_exec_error(journald: FakeJournald) -> None:
    out = run(journald.path, "/nonexistent/app", "app")
    assert out.returncode == logwrap.EXIT_EXEC == 203
    journald.close()
    assert any("cannot execute /nonexistent/app" in line for line in journald.by_priority(3).lines)


def test_usage() -> None:
    out = subprocess.run(
        [sys.executable, "-I", "-S", WRAPPER, "only-ident"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 2
    assert "usage" in out.stderr


def test_command_runs_the_wrapper_in_isolated_mode() -> None:
    path, argv = logwrap.command("a-web", "/app/bin/web", ["web", "-p"])
    assert path == sys.executable
    assert argv == [sys.executable, "-I", "-S", WRAPPER, "a-web", "/app/bin/web", "web", "-p"]
