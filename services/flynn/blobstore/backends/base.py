"""The storage abstraction every blobstore backend implements (like Patroni's DCS classes).

A backend stores whole blobs by path. Its contract, which the HTTP layer relies on:

* :meth:`Backend.put` consumes an async stream of byte strings and makes the blob visible only
  once it has been stored whole: readers see the previous version (or none) until then, and an
  exception raised by the stream (a client gone, a body over the limit) leaves nothing behind.
  Memory stays bounded by a few chunks whatever the size.
* :meth:`Backend.open` pins one version: everything read through the :class:`BlobReader` comes
  from the version that was current when it was opened, even if it is replaced or deleted
  meanwhile. Reads are streamed, a few chunks at a time.
* Failures of the storage itself raise :class:`BackendUnavailable` (answered 503).
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, ClassVar


class BackendError(Exception):
    """Base class of the errors a backend raises on purpose; the message is one safe line."""


class BlobNotFound(BackendError):
    pass


class BackendUnavailable(BackendError):
    """The storage cannot be reached or is shutting down (HTTP 503)."""


class BlobCorrupt(BackendError):
    """Stored data does not match its metadata (missing or short chunks)."""


def rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class BlobInfo:
    path: str
    size: int
    sha256: str
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def etag(self) -> str:
        """The strong HTTP entity tag: the quoted sha256 of the content."""
        return f'"{self.sha256}"'

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }


class BlobReader(abc.ABC):
    """One version of a blob, pinned while the reader is open."""

    info: BlobInfo

    @abc.abstractmethod
    def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes | memoryview]:
        """The bytes ``[start, end)`` (``end`` None: to the end), a chunk at a time.

        Close the iterator (``contextlib.aclosing``) if you stop before its end.
        """


class Backend(abc.ABC):
    """A place to keep blobs. ``kind`` names the implementation (``backend=`` in the config)."""

    kind: ClassVar[str]

    def __init__(self, name: str) -> None:
        self.name = name

    async def start(self, *, wait: float = 0.0) -> None:  # noqa: B027 - optional hook
        """Connect and prepare the storage (schema), retrying for up to ``wait`` seconds."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release connections; open readers and writers fail afterwards."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """Whether the storage answers now."""

    @abc.abstractmethod
    async def put(self, path: str, body: AsyncIterable[bytes]) -> BlobInfo:
        """Store ``body`` at ``path`` (replacing any blob there, atomically); see the module doc."""

    @abc.abstractmethod
    def open(self, path: str) -> AbstractAsyncContextManager[BlobReader]:
        """A reader of the current version of ``path``; :class:`BlobNotFound` when there is none."""

    @abc.abstractmethod
    async def head(self, path: str) -> BlobInfo | None:
        """The current version's metadata, or None."""

    @abc.abstractmethod
    async def delete(self, path: str) -> bool:
        """Remove the blob; False when there was none."""

    @abc.abstractmethod
    async def list(self, prefix: str, *, after: str = "", limit: int = 1000) -> list[BlobInfo]:
        """Blobs whose path starts with ``prefix`` and sorts after ``after``, in path order."""
