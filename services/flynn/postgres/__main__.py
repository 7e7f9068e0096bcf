"""``flynn-postgres prepare|run|setup``: run by flynn-postgres.service as the postgres user."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flynn.common.errors import ConfigError

BIN = Path(os.environ.get("POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
ROLE_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
PASSWORD_VAR = re.compile(r"^FLYNN_PG_([A-Z][A-Z0-9_]{0,62})_PASSWORD$")

# Flynn's part of postgresql.conf, rewritten at every start (the operator's own settings go in
# postgresql.auto.conf through ALTER SYSTEM, which wins over this file).
SETTINGS = """\
# Written by flynn-postgres at every start: do not edit (use ALTER SYSTEM instead).
listen_addresses = '*'
port = {port}
unix_socket_directories = '{socket_dir}'
password_encryption = scram-sha-256
max_connections = 200
shared_buffers = 64MB
jit = off
log_destination = 'stderr'
logging_collector = off
log_line_prefix = '%q[%p] %u@%d '
"""

# Local connections only for the postgres superuser (peer); everything over the network needs a
# password (SCRAM). Rewritten at every start.
HBA = """\
# Written by flynn-postgres at every start: do not edit.
local   all   postgres                 peer
local   all   all                      scram-sha-256
host    all   all      0.0.0.0/0       scram-sha-256
host    all   all      ::/0            scram-sha-256
"""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    socket_dir: Path
    port: int
    roles: dict[str, str]  # role (= database) name -> password

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        roles: dict[str, str] = {}
        for key, value in env.items():
            m = PASSWORD_VAR.match(key)
            if not m:
                continue
            role = m.group(1).lower()
            if not ROLE_RE.match(role):
                raise ConfigError(f"{key}: {role!r} is not a valid role name")
            if len(value) < 16:
                raise ConfigError(f"{key} must be at least 16 characters")
            roles[role] = value
        try:
            port = int(env.get("POSTGRES_PORT", "5432"))
        except ValueError:
            raise ConfigError("POSTGRES_PORT must be a number") from None
        if not 1 <= port <= 65535:
            raise ConfigError("POSTGRES_PORT must be 1-65535")
        return cls(
            data_dir=Path(env.get("POSTGRES_DATA", "/var/lib/flynn/postgres")),
            socket_dir=Path(env.get("POSTGRES_SOCKET_DIR", "/run/flynn-postgres")),
            port=port,
            roles=roles,
        )


def prepare(s: Settings) -> None:
    """Create the cluster on first start; write Flynn's configuration every start."""
    if not (s.data_dir / "PG_VERSION").exists():
        if any(s.data_dir.iterdir()):
            raise ConfigError(f"{s.data_dir} is not empty but holds no PostgreSQL cluster; refusing initdb")
        proc = subprocess.run(
            [
                str(BIN / "initdb"),
                "--pgdata",
                str(s.data_dir),
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "--data-checksums",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ConfigError(f"initdb failed: {proc.stderr.strip().splitlines()[-1:]}")
        print(f"flynn-postgres: created a new cluster in {s.data_dir}", flush=True)
    conf = s.data_dir / "postgresql.conf"
    include = "include = 'flynn.conf'"
    text = conf.read_text()
    if include not in text.splitlines():
        conf.write_text(text.rstrip("\n") + f"\n\n# Flynn's settings\n{include}\n")
    _write(s.data_dir / "flynn.conf", SETTINGS.format(port=s.port, socket_dir=s.socket_dir))
    _write(s.data_dir / "pg_hba.conf", HBA)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)


def setup(s: Settings, *, wait: float = 60) -> None:
    """Create every configured role and its database; set the passwords (so rotation works)."""
    import psycopg
    from psycopg import sql

    deadline = time.monotonic() + wait
    while True:
        try:
            conn = psycopg.connect(
                host=str(s.socket_dir), port=s.port, user="postgres", dbname="postgres", autocommit=True
            )
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise ConfigError(f"PostgreSQL did not accept connections within {wait:g}s") from None
            time.sleep(0.2)
    with conn:
        for role, password in sorted(s.roles.items()):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
            conn.execute(
                sql.SQL("{} {} LOGIN PASSWORD {}").format(verb, sql.Identifier(role), sql.Literal(password))
            )
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (role,)).fetchone() is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(role), sql.Identifier(role))
                )
                print(f"flynn-postgres: created database {role}", flush=True)
    print(f"flynn-postgres: ready ({len(s.roles)} service role(s))", flush=True)


def run(s: Settings) -> None:
    """Become the server (same PID, so systemd's Type=notify sees its READY=1)."""
    server = BIN / "postgres"
    os.execv(server, [str(server), "-D", str(s.data_dir)])  # noqa: S606 - a fixed binary and arguments


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    steps = {"prepare": prepare, "run": run, "setup": setup}
    if len(args) != 1 or args[0] not in steps:
        print("usage: flynn-postgres prepare|run|setup", file=sys.stderr)
        return 2
    try:
        steps[args[0]](Settings.from_env())
    except ConfigError as exc:
        print(f"flynn-postgres: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
