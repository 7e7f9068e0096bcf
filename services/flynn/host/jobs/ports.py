"""``PORT`` allocation for jobs: 49152-65535, never a port held by another job of this host or bound by
anything else (checked with a bind attempt on TCP, IPv4 and IPv6).

Allocation goes round-robin from the last port handed out, so a port a job just released (its
connections perhaps still in TIME_WAIT at clients) is the last to be reused.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

PORT_MIN = 49152
PORT_MAX = 65535


class PortsExhausted(RuntimeError):
    pass


def port_is_free(port: int) -> bool:
    """True if nothing listens on (or holds) ``port`` on TCP for IPv4 and IPv6."""
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):  # noqa: S104
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((addr, port))
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:  # in use (or refused); no such address: skip
                return False
        finally:
            sock.close()
    return True


class PortAllocator:
    def __init__(
        self,
        low: int = PORT_MIN,
        high: int = PORT_MAX,
        *,
        is_free: Callable[[int], bool] = port_is_free,
    ) -> None:
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"bad port range {low}-{high}")
        self.low = low
        self.high = high
        self._is_free = is_free
        self._held: dict[int, str] = {}  # port -> job id
        self._next = low

    def held(self) -> dict[int, str]:
        return dict(self._held)

    def allocate(self, job_id: str) -> int:
        size = self.high - self.low + 1
        for i in range(size):
            port = self.low + (self._next - self.low + i) % size
            if port in self._held or not self._is_free(port):
                continue
            self._held[port] = job_id
            self._next = port + 1 if port < self.high else self.low
            return port
        raise PortsExhausted(f"no free port in {self.low}-{self.high}")

    def reserve(self, port: int, job_id: str) -> None:
        """Mark ``port`` as held by ``job_id`` (a running job found at daemon start)."""
        owner = self._held.get(port)
        if owner is not None and owner != job_id:
            raise ValueError(f"port {port} is already held by job {owner}")
        self._held[port] = job_id

    def release(self, port: int | None, job_id: str) -> None:
        if port is not None and self._held.get(port) == job_id:
            del self._held[port]
