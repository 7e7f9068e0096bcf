"""``~/.flynnrc`` (or ``$FLYNNRC``) in Flynn's TOML form.

```toml
default = "mycluster"

[[cluster]]
Name = "mycluster"
Key = "..."
TLSPin = "..."
ControllerURL = "https://controller.example.com"
GitURL = "https://git.example.com"
DockerPushURL = ""
```

Read with :mod:`tomllib`, written with ``tomli_w``: atomically (a temporary file in the same
directory, fsync, rename) and with mode 0600, since it holds the cluster keys. Keys this client
does not know, at the top level or in a cluster, are kept as they were.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flynn.common.errors import FlynnError

_FIELDS = {
    "Name": "name",
    "Key": "key",
    "TLSPin": "tls_pin",
    "ControllerURL": "controller_url",
    "GitURL": "git_url",
    "DockerPushURL": "docker_push_url",
}


class RcError(FlynnError):
    """The rc file cannot be read or written."""


def default_path() -> Path:
    explicit = os.environ.get("FLYNNRC")
    if explicit:
        return Path(explicit)
    return Path.home() / ".flynnrc"


def ca_cert_path(rc_path: Path, cluster: str) -> Path:
    """Where the CA of ``cluster`` is kept: ``~/.flynn/ca-certs/NAME.pem`` as in Flynn (beside
    the rc file when ``$FLYNNRC`` points elsewhere)."""
    return rc_path.parent / ".flynn" / "ca-certs" / f"{cluster}.pem"


@dataclass
class Cluster:
    name: str
    key: str
    controller_url: str
    git_url: str = ""
    tls_pin: str = ""
    docker_push_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, table: dict[str, Any], where: str) -> Cluster:
        values: dict[str, str] = {}
        for toml_name, attr in _FIELDS.items():
            value = table.get(toml_name, "")
            if not isinstance(value, str):
                raise RcError(f"{where}: {toml_name} must be a string")
            values[attr] = value
        if not values["name"]:
            raise RcError(f"{where}: a [[cluster]] has no Name")
        extra = {k: v for k, v in table.items() if k not in _FIELDS}
        return cls(extra=extra, **values)

    def to_toml(self) -> dict[str, Any]:
        out: dict[str, Any] = {toml_name: getattr(self, attr) for toml_name, attr in _FIELDS.items()}
        out.update(self.extra)
        return out


@dataclass
class RcFile:
    path: Path
    default: str = ""
    clusters: list[Cluster] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> RcFile:
        """The rc file at ``path`` (default: ``$FLYNNRC`` or ``~/.flynnrc``); empty if missing."""
        path = path or default_path()
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise RcError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            data = tomllib.loads(raw.decode())
        except UnicodeDecodeError:
            raise RcError(f"{path}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise RcError(f"{path}: invalid TOML: {exc}") from None
        default = data.get("default", "")
        if not isinstance(default, str):
            raise RcError(f"{path}: default must be a string")
        tables = data.get("cluster", [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise RcError(f"{path}: cluster must be an array of tables ([[cluster]])")
        clusters = [Cluster.from_toml(t, str(path)) for t in tables]
        names = [c.name for c in clusters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise RcError(f"{path}: cluster {dupes[0]!r} is defined twice")
        extra = {k: v for k, v in data.items() if k not in ("default", "cluster")}
        return cls(path, default, clusters, extra)

    def get(self, name: str) -> Cluster | None:
        return next((c for c in self.clusters if c.name == name), None)

    def add(self, cluster: Cluster, *, replace: bool = False) -> None:
        existing = self.get(cluster.name)
        if existing is not None:
            if not replace:
                raise RcError(f"cluster {cluster.name!r} already exists (use -f to replace it)")
            self.clusters[self.clusters.index(existing)] = cluster
        else:
            self.clusters.append(cluster)

    def remove(self, name: str) -> None:
        existing = self.get(name)
        if existing is None:
            raise RcError(f"no cluster named {name!r}")
        self.clusters.remove(existing)
        if self.default == name:
            self.default = self.clusters[0].name if self.clusters else ""

    def to_toml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"default": self.default}
        out.update(self.extra)
        out["cluster"] = [c.to_toml() for c in self.clusters]
        return out

    def save(self) -> None:
        """Write the file atomically with mode 0600 (a symlinked rc file is written through)."""
        import tomli_w

        try:
            text = tomli_w.dumps(self.to_toml())
        except (TypeError, ValueError) as exc:
            raise RcError(f"cannot write {self.path}: {exc}") from None
        target = Path(os.path.realpath(self.path))
        directory = target.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise RcError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise RcError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
