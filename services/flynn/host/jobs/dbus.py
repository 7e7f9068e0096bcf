"""systemd over D-Bus (pystemd), with unit changes delivered as events in the asyncio loop.

Two system-bus connections:

* the *signal* connection subscribes to systemd (``Manager.Subscribe``) and matches
  ``PropertiesChanged`` of units and the manager's ``JobRemoved``. Its file descriptor is watched
  by the event loop (``loop.add_reader``); each wake-up drains it with ``sd_bus_process`` and the
  match callbacks hand the changes to :attr:`Systemd.on_unit_change`. Nothing is polled.
* the *call* connection makes method calls. pystemd's calls are synchronous and hold the GIL
  (``sd_bus_call`` without ``nogil``), so a worker thread would not help: calls run on the loop
  thread and take about a millisecond each (systemd answers at once; a call that hangs times out
  after sd-bus' 25 s, below the daemon's 30 s watchdog).

Properties are marshalled with explicit signatures (:mod:`.units` gives each one), which sidesteps
pystemd's signature table (it lacks ``CPUWeight``, ``StartupCPUWeight``, ``IOWeight``...).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Callable
from typing import Any, Protocol

from flynn.host.jobs.units import Property

log = logging.getLogger(__name__)

DEST = b"org.freedesktop.systemd1"
MANAGER_PATH = b"/org/freedesktop/systemd1"
MANAGER_IFACE = b"org.freedesktop.systemd1.Manager"
UNIT_PREFIX = b"/org/freedesktop/systemd1/unit"
PROPS_IFACE = b"org.freedesktop.DBus.Properties"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
DRAIN_MAX = 10_000

UnitChange = Callable[[str, dict[str, Any]], None]


class SystemdError(RuntimeError):
    """A D-Bus call to systemd failed; ``name`` is the D-Bus error name when known."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


class NoSuchUnit(SystemdError):
    pass


class UnitBackend(Protocol):
    """What the job manager needs from systemd (the real one is :class:`Systemd`)."""

    on_unit_change: UnitChange | None

    async def start_transient(self, name: str, props: list[Property]) -> str: ...

    async def wait_job(self, job_path: str, max_wait: float) -> str: ...

    async def stop(self, name: str) -> None: ...

    async def kill(self, name: str, signum: int, who: str = "main") -> None: ...

    async def unit_properties(self, name: str) -> dict[str, Any] | None: ...

    async def list_units(self, pattern: str) -> list[str]: ...

    async def reset_failed(self, name: str) -> None: ...


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def _props(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    return {_plain(k): _plain(v) for k, v in raw.items()}


def _error(exc: Exception) -> SystemdError:
    message = getattr(exc, "err_message", b"") or str(exc)
    text = _plain(message) or type(exc).__name__
    kind = type(exc).__name__
    if kind == "DBusNoSuchUnitError":
        return NoSuchUnit(text, "org.freedesktop.systemd1.NoSuchUnit")
    return SystemdError(text, kind)


class Systemd:
    """The real backend. :meth:`open` inside the running loop; :meth:`close` at the end."""

    def __init__(self) -> None:
        self.on_unit_change: UnitChange | None = None
        # called once if a bus connection breaks (dbus-daemon restarted): the daemon exits and
        # systemd restarts it, which reconnects and recovers every job from systemd's own state
        self.on_broken: Callable[[], None] | None = None
        self._broken = False
        self._calls: Any = None
        self._signals: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._job_waiters: dict[str, asyncio.Future[str]] = {}
        self._job_results: dict[str, str] = {}  # JobRemoved seen before anyone waited
        self._fd: int | None = None
        self._callbacks: list[Callable[..., None]] = []

    # -- connection --------------------------------------------------------------------------

    def open(self) -> None:
        from pystemd.dbuslib import DBus, apply_signature

        self._loop = asyncio.get_running_loop()
        self._calls = DBus()
        self._calls.open()
        self._signals = DBus()
        self._signals.open()

        # pystemd stores attributes on the callback and keeps only a borrowed pointer to it: plain
        # functions, referenced from self for the connection's lifetime
        def on_properties(msg: Any, error: Any = None, userdata: Any = None) -> None:
            self._on_properties(msg)

        def on_job_removed(msg: Any, error: Any = None, userdata: Any = None) -> None:
            self._on_job_removed(msg)

        self._callbacks = [on_properties, on_job_removed]
        self._signals.match_signal(DEST, None, PROPS_IFACE, b"PropertiesChanged", on_properties)
        self._signals.match_signal(DEST, MANAGER_PATH, MANAGER_IFACE, b"JobRemoved", on_job_removed)
        # systemd only emits unit signals while some client is subscribed
        self._signals.call_method(DEST, MANAGER_PATH, MANAGER_IFACE, b"Subscribe", apply_signature(b"", []))
        self._fd = self._signals.get_fd()
        self._loop.add_reader(self._fd, self._drain)
        self._loop.call_soon(self._drain)  # anything queued while Subscribe waited for its reply

    def close(self) -> None:
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        for bus in (self._signals, self._calls):
            if bus is not None:
                with contextlib.suppress(Exception):
                    bus.close()
        self._signals = self._calls = None
        for fut in self._job_waiters.values():
            if not fut.done():
                fut.cancel()

    def _drain(self) -> None:
        bus = self._signals
        if bus is None:
            return
        try:
            for _ in range(DRAIN_MAX):
                if bus.process().is_empty():
                    break
        except Exception as exc:
            log.error("the D-Bus signal connection failed: %s", exc)
            self._break()

    def _break(self) -> None:
        if self._broken:
            return
        self._broken = True
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        if self.on_broken is not None:
            self.on_broken()

    # -- signal callbacks (run inside _drain) ------------------------------------------------

    def _on_properties(self, msg: Any) -> None:
        try:
            msg.process_reply(True)
            path: bytes = msg.headers.get("Path") or b""
            if not path.startswith(UNIT_PREFIX + b"/"):
                return
            from pystemd.dbuslib import path_decode

            name = path_decode(path, UNIT_PREFIX).decode()
            body = msg.body
            if not isinstance(body, list) or len(body) < 2:
                return
            interface = _plain(body[0])
            if interface not in (UNIT_IFACE, SERVICE_IFACE) or self.on_unit_change is None:
                return
            changed = _props(body[1])
            if changed:
                self.on_unit_change(name, changed)
        except Exception:
            log.exception("handling a PropertiesChanged signal failed")

    def _on_job_removed(self, msg: Any) -> None:
        try:
            msg.process_reply(False)
            _id, job_path, _unit, result = (_plain(v) for v in msg.body)
            fut = self._job_waiters.pop(job_path, None)
            if fut is not None and not fut.done():
                fut.set_result(result)
            elif fut is None:
                self._job_results[job_path] = result
                if len(self._job_results) > 1000:
                    self._job_results.pop(next(iter(self._job_results)))
        except Exception:
            log.exception("handling a JobRemoved signal failed")

    # -- calls -------------------------------------------------------------------------------

    def _call(self, path: bytes, interface: bytes, method: bytes, args: list[Any]) -> Any:
        if self._calls is None:
            raise SystemdError("not connected to systemd")
        try:
            body = self._calls.call_method(DEST, path, interface, method, args).body
        except Exception as exc:
            if not type(exc).__module__.startswith("pystemd"):
                raise
            if type(exc).__name__ in ("DBusDisconnectedError", "DBusConnectionRefusedError") or getattr(
                exc, "errno", 0
            ) in (-errno.ENOTCONN, -errno.ECONNRESET, -errno.EPIPE):
                log.error("the D-Bus call connection failed: %s", exc)
                self._break()
            raise _error(exc) from None
        return body

    def _manager(self, method: bytes, signature: bytes, values: list[Any]) -> Any:
        from pystemd.dbuslib import apply_signature

        return self._call(MANAGER_PATH, MANAGER_IFACE, method, apply_signature(signature, values))

    async def start_transient(self, name: str, props: list[Property]) -> str:
        from pystemd.dbuslib import apply_signature

        args: list[Any] = apply_signature(b"ss", [name.encode(), b"fail"])
        args.append((ord("a"), b"(sv)"))
        for prop, signature, value in props:
            sig = signature.encode()
            args += [(ord("r"), b"sv"), (ord("s"), prop.encode()), (ord("v"), sig)]
            args += apply_signature(sig, [_encode(value)])
            args += [(-1, None), (-1, None)]
        args.append((-1, None))
        args += [(ord("a"), b"(sa(sv))"), (-1, None)]  # no auxiliary units
        job = self._call(MANAGER_PATH, MANAGER_IFACE, b"StartTransientUnit", args)
        return str(_plain(job))

    async def wait_job(self, job_path: str, max_wait: float) -> str:
        """The result of a systemd job (``done``, ``failed``, ``canceled``, ``timeout``, ...)."""
        if job_path in self._job_results:
            return self._job_results.pop(job_path)
        if self._loop is None:
            raise SystemdError("not connected to systemd")
        fut = self._job_waiters.setdefault(job_path, self._loop.create_future())
        try:
            async with asyncio.timeout(max_wait):
                return await fut
        finally:
            self._job_waiters.pop(job_path, None)

    async def stop(self, name: str) -> None:
        self._manager(b"StopUnit", b"ss", [name.encode(), b"replace"])

    async def kill(self, name: str, signum: int, who: str = "main") -> None:
        self._manager(b"KillUnit", b"ssi", [name.encode(), who.encode(), signum])

    async def reset_failed(self, name: str) -> None:
        with contextlib.suppress(NoSuchUnit):
            self._manager(b"ResetFailedUnit", b"s", [name.encode()])

    async def unit_path(self, name: str) -> str | None:
        try:
            return str(_plain(self._manager(b"GetUnit", b"s", [name.encode()])))
        except NoSuchUnit:
            return None

    async def unit_properties(self, name: str) -> dict[str, Any] | None:
        """Unit and Service properties of a loaded unit, or None when systemd has no such unit."""
        from pystemd.dbuslib import apply_signature

        path = await self.unit_path(name)
        if path is None:
            return None
        props: dict[str, Any] = {}
        for iface in (UNIT_IFACE, SERVICE_IFACE):
            try:
                raw = self._call(
                    path.encode(), PROPS_IFACE, b"GetAll", apply_signature(b"s", [iface.encode()])
                )
            except SystemdError:
                if iface == UNIT_IFACE:
                    raise
                continue  # not a service
            props.update(_props(raw))
        return props

    async def list_units(self, pattern: str) -> list[str]:
        """Names of loaded units matching a glob (``flynn-job-*.service``)."""
        rows = self._manager(b"ListUnitsByPatterns", b"asas", [[], [pattern.encode()]])
        if not rows:
            return []
        if rows and not isinstance(rows[0], list | tuple):
            rows = [rows]
        return sorted(_plain(row[0]) for row in rows)

    # -- unit files (platform services) ------------------------------------------------------

    async def enable(self, name: str) -> None:
        self._manager(b"EnableUnitFiles", b"asbb", [[name.encode()], False, False])
        self._manager(b"Reload", b"", [])

    async def restart(self, name: str) -> str:
        return str(_plain(self._manager(b"RestartUnit", b"ss", [name.encode(), b"replace"])))

    async def load_state(self, name: str) -> str:
        from pystemd.dbuslib import apply_signature

        path = _plain(self._manager(b"LoadUnit", b"s", [name.encode()]))
        state = self._call(
            path.encode(), PROPS_IFACE, b"Get", apply_signature(b"ss", [UNIT_IFACE.encode(), b"LoadState"])
        )
        return str(_plain(state))


def _encode(value: Any) -> Any:
    """str -> bytes, recursively, for pystemd's marshalling."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_encode(v) for v in value)
    return value
