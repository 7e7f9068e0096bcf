"""A throwaway real PostgreSQL 15 server for tests and benchmarks.

Debian's ``/usr/lib/postgresql/15/bin/{initdb,postgres}`` run as the ``postgres`` user (PostgreSQL
refuses to run as root), with the data directory and the unix socket directory in a fresh temporary
directory and TCP on a free ``127.0.0.1`` port. TCP logins need a password (scram-sha-256), like the
appliance's server, so ``DATABASE_URL`` carries one. ``stop()`` shuts the server down (fast mode)
and removes the directory.

    with PostgresServer() as pg:
        url = pg.create_database("t1")      # postgresql://controller:PASSWORD@127.0.0.1:PORT/t1
        ...

Each :meth:`create_database` makes a fresh database owned by the role ``controller`` (which is not
a superuser, as on real hosts), so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

PG_BIN = Path(os.environ.get("FLYNN_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = "postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresError(RuntimeError):
    pass


class PostgresServer:
    """One PostgreSQL server process; use as a context manager or call start()/stop()."""

    def __init__(self, *, role: str = "controller", max_connections: int = 200) -> None:
        self.role = role
        self.role_password = secrets.token_hex(12)
        self.super_password = secrets.token_hex(12)
        self.max_connections = max_connections
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> PostgresServer:
        if not (PG_BIN / "postgres").exists():
            raise PostgresError(f"{PG_BIN}/postgres is missing: run scripts/setup (postgresql-15)")
        user = pwd.getpwnam(RUN_AS)
        self.dir = Path(tempfile.mkdtemp(prefix="flynn-pg-"))
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        data, sock = self.dir / "data", self.dir / "sock"
        pwfile = self.dir / "pw"
        pwfile.write_text(self.super_password + "\n")
        os.chown(pwfile, user.pw_uid, user.pw_gid)
        sock.mkdir()
        os.chown(sock, user.pw_uid, user.pw_gid)
        init = subprocess.run(
            [
                str(PG_BIN / "initdb"),
                "-D", str(data),
                "-U", "postgres",
                "--pwfile", str(pwfile),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E", "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            user=RUN_AS,
            group=user.pw_gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.dir,
        )  # fmt: skip
        pwfile.unlink()
        if init.returncode != 0:
            self._cleanup()
            raise PostgresError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        last_error = ""
        for _attempt in range(5):  # a port picked free may be taken before postgres binds it
            self.port = free_port()
            log = (self.dir / "postgres.log").open("ab")
            self.proc = subprocess.Popen(
                [
                    str(PG_BIN / "postgres"),
                    "-D", str(data),
                    "-k", str(sock),
                    "-p", str(self.port),
                    "-c", "listen_addresses=127.0.0.1",
                    "-c", f"max_connections={self.max_connections}",
                    "-c", "fsync=off",
                    "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off",
                    "-c", "shared_buffers=32MB",
                    "-c", "log_min_messages=warning",
                ],
                user=RUN_AS,
                group=user.pw_gid,
                extra_groups=[],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )  # fmt: skip
            log.close()
            try:
                self._wait_ready(timeout)
                break
            except PostgresError as exc:
                last_error = str(exc)
                self._kill()
        else:
            self._cleanup()
            raise PostgresError(f"postgres did not start: {last_error}")
        with self.superuser() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(self.role), sql.Literal(self.role_password)
                )
            )
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PostgresError(f"exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with psycopg.connect(self.super_url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise PostgresError(f"not accepting connections after {timeout}s: {self.log_tail()}")

    def log_tail(self, lines: int = 10) -> str:
        if self.dir is None or not (self.dir / "postgres.log").exists():
            return ""
        return " | ".join((self.dir / "postgres.log").read_text(errors="replace").splitlines()[-lines:])

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: ends sessions, no waiting for clients
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGQUIT)
                self.proc.wait(10)
        self.proc = None

    def _cleanup(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def stop(self) -> None:
        self._kill()
        self._cleanup()

    def pause(self) -> None:
        """Stop the server process (SIGSTOP): connections hang, as with a lost network."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------------------

    def super_url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres:{self.super_password}@127.0.0.1:{self.port}/{dbname}"

    def url(self, dbname: str) -> str:
        """The URL the controller uses: the non-superuser role, with its password."""
        return f"postgresql://{self.role}:{self.role_password}@127.0.0.1:{self.port}/{dbname}"

    def superuser(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.super_url(dbname), autocommit=True)

    def create_database(self, name: str | None = None) -> str:
        """A fresh empty database owned by the role; returns its URL."""
        name = name or f"t_{secrets.token_hex(6)}"
        with self.superuser() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(self.role))
            )
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.superuser() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def terminate_connections(self, dbname: str) -> int:
        """Kill every backend of ``dbname`` (as a database restart would); returns how many."""
        with self.superuser() as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchone()
        return int(row[0]) if row else 0  # type: ignore[call-overload]


def main() -> None:
    """``python -m tests.pg``: start a server, print a URL, wait for Ctrl-C (for manual poking)."""
    with PostgresServer() as pg:
        print(pg.create_database("controller"), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
