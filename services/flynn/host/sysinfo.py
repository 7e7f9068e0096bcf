"""Facts about the running host read from /proc and the kernel, without subprocesses."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import time
from pathlib import Path
from typing import TypedDict

SIOCGIFADDR = 0x8915


class Address(TypedDict):
    interface: str
    family: str
    address: str


def _ipv4_of(sock: socket.socket, name: str) -> str | None:
    try:
        packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
    except OSError:
        return None
    return socket.inet_ntoa(packed[20:24])


def addresses(proc: Path = Path("/proc")) -> list[Address]:
    """Non-loopback, non-link-local addresses of every interface (IPv4 first, then IPv6)."""
    result: list[Address] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            v4 = _ipv4_of(sock, name)
            if v4 and not ipaddress.ip_address(v4).is_loopback:
                result.append({"interface": name, "family": "inet", "address": v4})
    try:
        lines = (proc / "net/if_inet6").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            continue
        addr = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
        if addr.is_loopback or addr.is_link_local:
            continue
        result.append({"interface": fields[5], "family": "inet6", "address": str(addr)})
    return result


def boot_uptime(proc: Path = Path("/proc")) -> float:
    """Seconds since this host's PID 1 started: the host's uptime, also inside a container."""
    machine_uptime = float((proc / "uptime").read_text().split()[0])
    try:
        stat = (proc / "1/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return machine_uptime
    return max(0.0, machine_uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def read_first_line(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def machine_id(etc: Path = Path("/etc")) -> str:
    return read_first_line(etc / "machine-id")


class Clock:
    """Monotonic start time of the daemon, for ``daemon_uptime``."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def uptime(self) -> float:
        return time.monotonic() - self.started
