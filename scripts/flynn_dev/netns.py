"""The cluster network: a bridge inside a private network namespace, plus one veth into the machine.

    machine (root netns)                 netns "flynn-dev"
    fldev0 192.168.250.1/24     <--->  fldev0br --+
                                                      bridge fbr0 --+-- vb-host1 <-> host1 (.11)
                                                                    +-- vb-host2 <-> host2 (.12)

Hosts are reachable from the machine (curl, git, the flynn CLI); nothing touches the machine's other
interfaces, and nothing is routed beyond the bridge. ``teardown`` removes the veth and the namespace.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from flynn_dev.util import DevError, run


def cluster_name() -> str:
    """Clusters are named so the test suite's cluster ("test") can run beside a developer's ("dev")."""
    name = os.environ.get("FLYNN_DEV_CLUSTER", "dev")
    if not (name.isalnum() and name.islower() and len(name) <= 6):
        raise DevError(f"FLYNN_DEV_CLUSTER={name!r} must be 1-6 lowercase letters/digits")
    return name


NAME = cluster_name()
NETNS = f"flynn-{NAME}"
BRIDGE = "fbr0"
VETH = f"fl{NAME}0"  # machine side; interface names are limited to 15 characters
VETH_PEER = f"fl{NAME}0br"
DEFAULT_SUBNETS = {"dev": "192.168.250.0/24", "test": "192.168.251.0/24"}


@dataclass(frozen=True)
class Subnet:
    network: ipaddress.IPv4Network

    @classmethod
    def from_env(cls) -> Subnet:
        raw = os.environ.get("FLYNN_DEV_SUBNET", DEFAULT_SUBNETS.get(NAME, "192.168.252.0/24"))
        try:
            net = ipaddress.IPv4Network(raw)
        except ValueError:
            raise DevError(f"FLYNN_DEV_SUBNET={raw!r} is not an IPv4 network") from None
        if net.prefixlen > 24:
            raise DevError(f"FLYNN_DEV_SUBNET={raw} is too small (need a /24 or larger)")
        return cls(net)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    def host_ip(self, index: int) -> str:
        return str(self.network.network_address + 10 + index)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen


def netns_exists() -> bool:
    return Path(f"/run/netns/{NETNS}").exists()


def _link_exists(name: str, netns: str | None = None) -> bool:
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", name]
    return run(cmd, check=False).returncode == 0


def setup(subnet: Subnet) -> None:
    if not netns_exists():
        run(["ip", "netns", "add", NETNS])
    run(["ip", "-n", NETNS, "link", "set", "lo", "up"])
    if not _link_exists(BRIDGE, NETNS):
        run(["ip", "-n", NETNS, "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "-n", NETNS, "link", "set", BRIDGE, "up"])
    if not _link_exists(VETH):
        run(["ip", "link", "add", VETH, "type", "veth", "peer", "name", VETH_PEER, "netns", NETNS])
    run(["ip", "-n", NETNS, "link", "set", VETH_PEER, "master", BRIDGE, "up"])
    run(["ip", "addr", "replace", f"{subnet.gateway}/{subnet.prefixlen}", "dev", VETH])
    run(["ip", "link", "set", VETH, "up"])


def teardown() -> None:
    if _link_exists(VETH):
        run(["ip", "link", "del", VETH], check=False)
    if netns_exists():
        run(["ip", "netns", "del", NETNS], check=False)


def host_link(host: str) -> str:
    return f"vb-{host}"


def link_is_up(host: str) -> bool:
    proc = run(["ip", "-n", NETNS, "-o", "link", "show", host_link(host)], check=False)
    return proc.returncode == 0 and ",UP" in proc.stdout.split(">", 1)[0]


def set_link(host: str, up: bool) -> None:
    if run(["ip", "-n", NETNS, "link", "show", host_link(host)], check=False).returncode != 0:
        raise DevError(f"{host} has no network link (is it running?)")
    run(["ip", "-n", NETNS, "link", "set", host_link(host), "up" if up else "down"])
