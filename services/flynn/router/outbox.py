"""Writes held to the end of a loop iteration, then sent together (:class:`Outbox`).

Two kinds of connection queue their writes here, one outbox per router process:

* upstream connections (:class:`~flynn.router.upstream.UpstreamConn`): the router first reads
  every request that is waiting and then sends them all to the backends, as HAProxy does. Sent
  one at a time, each forwarded request woke the backend, which on a shared CPU then preempted
  the router after nearly every request (docs/router.md, "Performance");
* TLS connections (:class:`~flynn.router.tlsconn.TLSConn`): the records written meanwhile (the
  frames of several HTTP/2 streams, a head and its body) leave in one socket write.

A connection queues itself once per iteration; ``flush()`` is then called on it, in the order
queued. ``call_soon`` runs after the callbacks of the events being handled and before the loop
waits for more. One outbox with one scheduled call per iteration, instead of a call per
connection, saves a handle per connection and iteration.
"""

from __future__ import annotations

import asyncio


def not_connected(data: bytes) -> None:
    """The ``send`` of a protocol before ``connection_made`` (never called in order)."""
    raise RuntimeError("write before the connection was made")


class Flushable:
    """What an :class:`Outbox` holds: a connection with writes waiting (native base class)."""

    def flush(self) -> None:
        raise NotImplementedError


class Outbox:
    """The connections with writes waiting, flushed together once per loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.conns: list[Flushable] = []

    def add(self, conn: Flushable) -> None:
        if not self.conns:
            self.loop.call_soon(self.send)
        self.conns.append(conn)

    def send(self) -> None:
        conns = self.conns
        self.conns = []
        for conn in conns:
            conn.flush()
