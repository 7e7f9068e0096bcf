"""The exec wrapper of a job: stdout and stderr as two journal streams, then the app (docs/logs.md).

systemd connects a unit's stdout and stderr to *one* journal stream when both go to the journal,
so stderr lines could not be told apart. The job's ``ExecStart=`` is therefore this file run by
the host's Python in isolated mode (``python3 -I -S logwrap.py IDENT PATH ARGV0 ARGS...``, standard
library only): it opens two streams on journald's stdout socket (the protocol of
``sd_journal_stream_fd``: a header of identifier, unit id, priority, level prefix and three forward
flags), stdout at priority 6 (info) and stderr at priority 3 (err), both without level prefixes so
the app cannot change a line's priority, puts them on file descriptors 1 and 2, and ``execv``s
the app. The app keeps the wrapper's PID, so systemd's view of the main process does not change.

journald attaches a stream's unit fields (``_SYSTEMD_UNIT``, the unit's ``LogExtraFields=``) from
the sender's PID when it reads the first line, so a process that exits before journald got there
would lose them (measured on a loaded host: every line of short-lived jobs). The wrapper sends one
empty line (journald acquires the context for it and logs nothing) and waits, bounded, until
journald has read both streams (``SIOCOUTQ`` is 0) before it execs.

If journald cannot be reached the inherited descriptors (the unit's own journal stream) are kept.
A failed ``execv`` exits 203, systemd's own code for it (``EXEC``).
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import sys
import termios
import time

JOURNAL_STDOUT = "/run/systemd/journal/stdout"
STDOUT_PRIORITY = 6  # LOG_INFO
STDERR_PRIORITY = 3  # LOG_ERR
EXIT_EXEC = 203  # systemd's EXIT_EXEC
SYNC_TIMEOUT = 1.0
SYNC_STEP = 0.0005


def header(identifier: str, priority: int) -> bytes:
    """The stream's setup lines, then an empty line: journald reads the sender's context for it."""
    ident = identifier.replace("\n", " ")
    # identifier, unit id (only honoured from root), priority, level prefix, syslog, kmsg, console
    return f"{ident}\n\n{priority}\n0\n0\n0\n0\n\n".encode()


def open_stream(path: str, identifier: str, priority: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        sock.shutdown(socket.SHUT_RD)
        sock.sendall(header(identifier, priority))
    except OSError:
        sock.close()
        raise
    return sock


def unread(sock: socket.socket) -> int:
    """Bytes written to the stream that its reader has not consumed yet."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


def wait_read(socks: list[socket.socket], timeout: float = SYNC_TIMEOUT) -> bool:
    """Wait until journald has read everything sent on ``socks`` (False after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while any(unread(s) for s in socks):
        if time.monotonic() >= deadline:
            return False
        time.sleep(SYNC_STEP)
    return True


def connect(path: str, identifier: str) -> bool:
    """Put a stdout and a stderr journal stream on fds 1 and 2; False (fds untouched) if journald
    cannot be reached."""
    try:
        out = open_stream(path, identifier, STDOUT_PRIORITY)
    except OSError:
        return False
    try:
        err = open_stream(path, identifier, STDERR_PRIORITY)
    except OSError:
        out.close()
        return False
    try:
        wait_read([out, err])
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
    finally:
        for sock in (out, err):
            if sock.fileno() > 2:
                sock.close()
            else:
                sock.detach()  # it already is fd 1 or 2 (they were closed): keep it
    return True


def command(identifier: str, exec_path: str, argv: list[str]) -> tuple[str, list[str]]:
    """``ExecStart=`` (path, argv) that runs ``exec_path`` with ``argv`` through this wrapper."""
    python = sys.executable or "/usr/bin/python3"
    return python, [python, "-I", "-S", os.path.abspath(__file__), identifier, exec_path, *argv]


def main(argv: list[str]) -> int:
    args = argv[1:]
    path = JOURNAL_STDOUT
    if len(args) >= 2 and args[0] == "--socket":  # tests: a stand-in for journald
        path, args = args[1], args[2:]
    if len(args) < 3:
        sys.stderr.write("usage: logwrap.py [--socket PATH] IDENTIFIER PATH ARGV0 [ARGS...]\n")
        return 2
    identifier, exec_path, app_argv = args[0], args[1], args[2:]
    connect(path, identifier)
    # Python ignores SIGPIPE and SIGXFSZ for itself; an ignored signal would stay ignored in the app
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        os.execv(exec_path, app_argv)  # noqa: S606 - the job's own command, as systemd would run it
    except OSError as exc:
        sys.stderr.write(f"flynn: cannot execute {exec_path}: {exc.strerror}\n")
        sys.stderr.flush()
    return EXIT_EXEC


if __name__ == "__main__":
    sys.exit(main(sys.argv))
