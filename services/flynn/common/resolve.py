"""``FLYNN_RESOLVE``: explicit addresses for host names, for clients on a machine without DNS for
the cluster's domain (curl's ``--resolve``, for the ``flynn`` CLI and the controller clients).

    FLYNN_RESOLVE="controller.dev.flynn.test:192.168.250.11,git.dev.flynn.test:192.168.250.11"

A listed name is connected to at the given address; everything else about the request stays the
name's: the ``Host`` header, TLS SNI, the certificate (and pin) check. Names not listed resolve as
usual. A malformed value is an error, not silently ignored.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from flynn.common.errors import ConfigError

if TYPE_CHECKING:
    import http.client

    from aiohttp.abc import AbstractResolver

ENV = "FLYNN_RESOLVE"


def overrides(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``FLYNN_RESOLVE`` as {lower-case name: address}."""
    raw = (os.environ if env is None else env).get(ENV, "").strip()
    out: dict[str, str] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, addr = item.partition(":")
        name = name.strip().lower().rstrip(".")
        addr = addr.strip().strip("[]")
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise ConfigError(f"{ENV}: {item!r} is not NAME:IP") from None
        if not sep or not name:
            raise ConfigError(f"{ENV}: {item!r} is not NAME:IP")
        out[name] = addr
    return out


def address_for(host: str, env: Mapping[str, str] | None = None) -> str | None:
    return overrides(env).get(host.lower().rstrip("."))


def patch_connection(conn: http.client.HTTPConnection) -> None:
    """Make ``conn`` (HTTP or HTTPS) connect to ``FLYNN_RESOLVE``'s address for its host, keeping
    the host name for the ``Host`` header and TLS (SNI, name checks)."""
    addr = address_for(conn.host)
    if addr is None:
        return
    create: Callable[..., socket.socket] = socket.create_connection

    def connect_to_override(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        return create((addr, address[1]), *args, **kwargs)

    # http.client opens its socket through this attribute (HTTPS wraps it with the host's SNI)
    setattr(conn, "_create_connection", connect_to_override)  # noqa: B010 - not in typeshed


def aiohttp_resolver() -> AbstractResolver | None:
    """An aiohttp resolver honouring ``FLYNN_RESOLVE`` (None when it is not set)."""
    table = overrides()
    if not table:
        return None
    from aiohttp.abc import AbstractResolver, ResolveResult
    from aiohttp.resolver import DefaultResolver

    class StaticResolver(AbstractResolver):
        def __init__(self) -> None:
            self._fallback = DefaultResolver()

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            addr = table.get(host.lower().rstrip("."))
            if addr is None:
                return await self._fallback.resolve(host, port, family)
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            return [
                {
                    "hostname": host,
                    "host": addr,
                    "port": port,
                    "family": fam,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                }
            ]

        async def close(self) -> None:
            await self._fallback.close()

    return StaticResolver()
