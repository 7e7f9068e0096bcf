"""Counters of one router process, read by ``Router.status()`` (and later ``GET /status``).

Plain integer attributes bumped on the hot path: no locks (one event loop per process), no
dictionaries keyed per request. Counters only grow; ``active_*`` go up and down.
"""

from __future__ import annotations

import time
from typing import Any

FIELDS: tuple[str, ...] = (
    "active_connections",
    "active_h2_streams",
    "active_tcp",
    "active_tunnels",
    "bad_requests",
    "client_aborts",
    "connections",
    "h2_connections",
    "requests",
    "responses_1xx",
    "responses_2xx",
    "responses_3xx",
    "responses_4xx",
    "responses_5xx",
    "retries",
    "router_errors",
    "started",
    "tcp_connections",
    "timeouts",
    "tls_connections",
    "tls_handshake_errors",
    "tunnels",
    "upstream_connect_errors",
    "upstream_connections",
    "upstream_errors",
)


class Stats:
    """(Compiled with mypyc: a native class, its fields are the names of :data:`FIELDS`.)"""

    def __init__(self) -> None:
        self.started = time.time()
        self.connections = 0  # client connections accepted (HTTP, HTTPS)
        self.tls_connections = 0
        self.tls_handshake_errors = 0  # failed or timed-out TLS handshakes (garbage, no shared cipher...)
        self.h2_connections = 0
        self.active_connections = 0
        self.requests = 0  # requests whose headers were read (HTTP/1.x and HTTP/2 streams)
        self.active_h2_streams = 0
        self.responses_1xx = 0  # final responses sent to clients, by class (router's own included)
        self.responses_2xx = 0
        self.responses_3xx = 0
        self.responses_4xx = 0
        self.responses_5xx = 0
        self.router_errors = 0  # answers the router made itself (4xx/5xx, redirects excluded)
        self.bad_requests = 0  # malformed or over-limit requests (400, 408, 413, 414, 431, ...)
        self.timeouts = 0  # header, idle-with-partial-request and body timeouts
        self.client_aborts = 0  # client went away while its request was in flight
        self.upstream_connections = 0  # upstream TCP connections opened
        self.upstream_connect_errors = 0
        self.upstream_errors = 0  # upstream closed or sent garbage mid-exchange
        self.retries = 0
        self.tunnels = 0  # upgraded connections (WebSocket, ...)
        self.active_tunnels = 0
        self.tcp_connections = 0  # TCP-route connections
        self.active_tcp = 0

    def count_status(self, status: int) -> None:
        if status < 200:
            self.responses_1xx += 1
        elif status < 300:
            self.responses_2xx += 1
        elif status < 400:
            self.responses_3xx += 1
        elif status < 500:
            self.responses_4xx += 1
        else:
            self.responses_5xx += 1

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in FIELDS}
        out["uptime"] = round(time.time() - self.started, 3)
        out["errors"] = self.responses_5xx + self.bad_requests + self.upstream_errors
        return out
