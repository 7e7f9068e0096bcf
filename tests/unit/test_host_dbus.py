"""The D-Bus layer without a bus: signal parsing and the marshalling of StartTransientUnit
(cross-checked with pystemd's own marshalling for properties its table knows). The real bus is
exercised by tests/integration/test_jobs.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pystemd.dbuslib import path_encode
from pystemd.systemd1.unit_signatures import KNOWN_UNIT_SIGNATURES, signature_array

from flynn.host.jobs.dbus import NoSuchUnit, Systemd, _encode, _error
from flynn.host.jobs.spec import parse_job
from flynn.host.jobs.units import unit_properties


class Msg:
    def __init__(self, path: bytes, body: Any) -> None:
        self.headers = {"Path": path}
        self.body = body

    def process_reply(self, with_headers: bool) -> None:
        pass


def unit_path(name: str) -> bytes:
    return bytes(path_encode(b"/org/freedesktop/systemd1/unit", name.encode()))


def test_properties_changed_of_units_reach_the_callback() -> None:
    sd = Systemd()
    got: list[tuple[str, dict[str, Any]]] = []
    sd.on_unit_change = lambda name, changed: got.append((name, changed))
    name = "flynn-job-host1-3f1c-aa.service"
    sd._on_properties(
        Msg(unit_path(name), [b"org.freedesktop.systemd1.Unit", {b"ActiveState": b"active"}, []])
    )
    sd._on_properties(Msg(unit_path(name), [b"org.freedesktop.systemd1.Service", {b"ExecMainStatus": 3}, []]))
    sd._on_properties(Msg(unit_path(name), [b"org.freedesktop.systemd1.Scope", {b"X": 1}, []]))  # ignored
    sd._on_properties(Msg(b"/org/freedesktop/systemd1", [b"org.freedesktop.systemd1.Manager", {b"A": 1}, []]))
    sd._on_properties(Msg(unit_path(name), "garbage"))  # never raises into sd-bus
    assert got == [(name, {"ActiveState": "active"}), (name, {"ExecMainStatus": 3})]


async def test_job_removed_resolves_waiters_before_and_after() -> None:
    sd = Systemd()
    sd._loop = asyncio.get_running_loop()
    waiter = asyncio.get_running_loop().create_task(sd.wait_job("/job/1", 5))
    await asyncio.sleep(0)
    sd._on_job_removed(Msg(b"/", [1, b"/job/1", b"x.service", b"done"]))
    assert await waiter == "done"
    sd._on_job_removed(Msg(b"/", [2, b"/job/2", b"y.service", b"failed"]))  # nobody waits yet
    assert await sd.wait_job("/job/2", 5) == "failed"
    with pytest.raises(TimeoutError):
        await sd.wait_job("/job/3", 0.05)
    assert sd._job_waiters == {}


class FakeBus:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes, list[Any]]] = []

    def call_method(self, dest: bytes, path: bytes, iface: bytes, method: bytes, args: list[Any]) -> Any:
        self.calls.append((method, path, args))

        class Reply:
            body = b"/org/freedesktop/systemd1/job/7"

        return Reply()


async def test_start_transient_marshals_like_pystemd_for_the_properties_it_knows() -> None:
    sd = Systemd()
    bus = FakeBus()
    sd._calls = bus
    spec = parse_job(
        {"args": ["web"], "env": {"A": "b"}, "resources": {"cpu": {"limit": 1500}}}, "host1", "host1-x"
    )
    props = unit_properties(spec, port=49152, app_dir=Path("/srv/a"), exec_path="/app/bin/web")
    assert await sd.start_transient("flynn-job-host1-x.service", props) == "/org/freedesktop/systemd1/job/7"
    method, _, args = bus.calls[0]
    assert method == b"StartTransientUnit"
    known = [(n, sig, v) for n, sig, v in props if KNOWN_UNIT_SIGNATURES.get(n.encode()) == sig.encode()]
    assert len(known) > 15
    only_known = FakeBus()
    sd._calls = only_known
    await sd.start_transient("u.service", known)
    ours = only_known.calls[0][2]
    theirs = signature_array({n.encode(): _encode(v) for n, _sig, v in known})
    # ours: "ss" (name, mode), then the a(sv) array, then the empty auxiliary array
    assert ours[2:-2] == theirs
    # and a property pystemd does not know (CPUWeight) is marshalled with its own signature
    named = args[args.index((ord("s"), b"CPUWeight")) :][:3]
    assert named == [(ord("s"), b"CPUWeight"), (ord("v"), b"t"), (ord("t"), 150)]


def test_errors_are_translated() -> None:
    from pystemd.dbusexc import DBusError

    err = _error(DBusError(-2, b"org.freedesktop.systemd1.NoSuchUnit", b"Unit x.service not loaded."))
    assert isinstance(err, NoSuchUnit)
    assert str(err) == "Unit x.service not loaded."
