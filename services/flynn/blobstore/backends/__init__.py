"""Blobstore backends: the :class:`~.base.Backend` abstraction and the kinds that implement it.

Only ``postgres`` exists. The other kinds Flynn had (``s3``, ``gcs``, ``azure``) are recognised
in the configuration and refused at start with a one-line error, never silently ignored.
"""

from __future__ import annotations

from flynn.blobstore.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    BlobCorrupt,
    BlobInfo,
    BlobNotFound,
    BlobReader,
)
from flynn.blobstore.backends.postgres import PostgresBackend
from flynn.blobstore.config import BackendSpec, BlobstoreConfig
from flynn.common.errors import ConfigError

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "BlobCorrupt",
    "BlobInfo",
    "BlobNotFound",
    "BlobReader",
    "PostgresBackend",
    "check_spec",
    "create_backend",
]

KINDS: dict[str, type[Backend]] = {"postgres": PostgresBackend}
NOT_BUILT = frozenset({"s3", "gcs", "azure"})


def check_spec(spec: BackendSpec) -> None:
    """A one-line ConfigError for a backend that cannot be used (unknown, not built, bad settings)."""
    if spec.kind in NOT_BUILT:
        raise ConfigError(f"{spec.source}: backend={spec.kind} is not built yet (only postgres exists)")
    if spec.kind not in KINDS:
        raise ConfigError(f"{spec.source}: unknown backend={spec.kind} (postgres, s3, gcs, azure)")
    if spec.kind == "postgres" and spec.options:
        raise ConfigError(
            f"{spec.source}: backend=postgres takes no settings ({', '.join(sorted(spec.options))});"
            " it uses DATABASE_URL"
        )


def create_backend(cfg: BlobstoreConfig) -> Backend:
    """The default backend, after checking every configured one (every mistake fails the start)."""
    for spec in sorted(cfg.backends.values(), key=lambda s: s.name):
        check_spec(spec)
    spec = cfg.default
    return PostgresBackend(cfg.database_url, name=spec.name, pool_size=cfg.pool_size, timeout=cfg.db_timeout)
