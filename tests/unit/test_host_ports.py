"""PORT allocation: 49152-65535, no port twice, none bound by anything else."""

from __future__ import annotations

import socket

import pytest

from flynn.host.jobs.ports import PORT_MAX, PORT_MIN, PortAllocator, PortsExhausted, port_is_free


def test_default_range_is_the_dynamic_ports() -> None:
    alloc = PortAllocator(is_free=lambda _p: True)
    assert (alloc.low, alloc.high) == (PORT_MIN, PORT_MAX) == (49152, 65535)
    assert alloc.allocate("host1-a") == 49152


def test_ports_are_unique_and_round_robin() -> None:
    alloc = PortAllocator(100, 103, is_free=lambda _p: True)
    got = [alloc.allocate(f"j{i}") for i in range(4)]
    assert got == [100, 101, 102, 103]
    with pytest.raises(PortsExhausted):
        alloc.allocate("j4")
    alloc.release(101, "j1")
    assert alloc.allocate("j5") == 101


def test_a_released_port_is_reused_last() -> None:
    alloc = PortAllocator(100, 103, is_free=lambda _p: True)
    first = alloc.allocate("a")
    alloc.release(first, "a")
    assert [alloc.allocate(x) for x in "bcd"] == [101, 102, 103]
    assert alloc.allocate("e") == 100


def test_ports_in_use_by_others_are_skipped() -> None:
    busy = {100, 102}
    alloc = PortAllocator(100, 104, is_free=lambda p: p not in busy)
    assert [alloc.allocate(x) for x in "abc"] == [101, 103, 104]


def test_release_by_another_job_does_nothing() -> None:
    alloc = PortAllocator(100, 100, is_free=lambda _p: True)
    port = alloc.allocate("a")
    alloc.release(port, "b")
    with pytest.raises(PortsExhausted):
        alloc.allocate("c")


def test_reserve_for_recovered_jobs() -> None:
    alloc = PortAllocator(100, 101, is_free=lambda _p: True)
    alloc.reserve(100, "a")
    alloc.reserve(100, "a")  # idempotent
    with pytest.raises(ValueError, match="held by job a"):
        alloc.reserve(100, "b")
    assert alloc.allocate("c") == 101


def test_port_is_free_sees_a_real_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_is_free(port)
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        port = sock.getsockname()[1]
    assert port_is_free(port)


def test_a_bound_port_is_never_handed_out() -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        alloc = PortAllocator(port, port + 1)
        got = alloc.allocate("a")
        assert got != port
