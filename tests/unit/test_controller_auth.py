"""Keys: live rotation from the `controller` system app's release (seed 000's procedure), with a
client looping requests against two controllers the whole time and not one failure."""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from flynn.common.errors import APIError
from flynn.common.http import Client
from flynn.controller.auth import KeySet, keys_of_release, password_of

if TYPE_CHECKING:
    from tests.unit.controller_fixtures import ControllerHandle, Controllers

pytest_plugins = ("tests.unit.controller_fixtures",)

OLD = "old-key-0123456789abcdef0123456789"
NEW = "new-key-fedcba9876543210fedcba9876"


def release_with(
    handle: ControllerHandle, key: str, *, env: dict[str, str], web_env: dict[str, str] | None = None
) -> dict[str, Any]:
    api = handle.client(key)
    proc: dict[str, Any] = {"args": ["flynn-controller"]}
    if web_env is not None:
        proc["env"] = web_env
    return dict(api.post("/releases", {"app_id": "controller", "env": env, "processes": {"web": proc}}))


def accepted(handle: ControllerHandle, key: str) -> bool:
    try:
        handle.client(key).get("/apps/controller")
    except APIError as exc:
        if exc.status == 401:
            return False
        raise
    return True


def refused(handle: ControllerHandle, key: str) -> bool:
    return not accepted(handle, key)


def keys_from_release(handle: ControllerHandle, release_id: str) -> bool:
    return handle.controller.keys.release_id == release_id


class Looper:
    """Requests in a loop (alternating controllers) with whatever key it is told to use."""

    def __init__(self, handles: list[ControllerHandle], key: str) -> None:
        self.handles = handles
        self.key = key
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            handle = self.handles[i % len(self.handles)]
            key = self.key
            try:
                Client(handle.url, key=key, timeout=10).get("/apps")
                self.ok += 1
            except APIError as exc:
                self.failures.append(f"{exc} with key {'NEW' if key == NEW else 'OLD'}")
            i += 1

    def __enter__(self) -> Looper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(10)


def test_rotation_without_restart_or_failed_request(controllers: Controllers) -> None:
    a = controllers.start(keys=(OLD,))
    b = controllers.start(db_url=a.db_url, keys=(OLD,))
    api = a.client(OLD)
    # bootstrap: the controller system app, its release holds AUTH_KEY
    api.post("/apps", {"name": "controller", "system": True})
    first = release_with(a, OLD, env={"AUTH_KEY": OLD})
    assert api.post("/apps/controller/deploy", {"id": first["id"]})["status"] == "complete"
    for h in (a, b):
        h.wait_for("key set from the release", partial(keys_from_release, h, first["id"]))
    assert not accepted(a, NEW)
    with Looper([a, b], OLD) as loop:
        time.sleep(0.3)
        # 1. add the new key alongside the old one, for the web process type only
        step1 = release_with(a, OLD, env={"AUTH_KEY": OLD}, web_env={"AUTH_KEY": f"{NEW},{OLD}"})
        assert api.post("/apps/controller/deploy", {"id": step1["id"]})["status"] == "complete"
        for h in (a, b):
            h.wait_for("new key accepted", partial(accepted, h, NEW), timeout=10)
            assert accepted(h, OLD)
        time.sleep(0.3)
        loop.key = NEW  # 2. clients move to the new key
        time.sleep(0.3)
        # 3. the global key becomes the new one, the web override goes
        step2 = release_with(a, NEW, env={"AUTH_KEY": NEW})
        assert a.client(NEW).post("/apps/controller/deploy", {"id": step2["id"]})["status"] == "complete"
        for h in (a, b):
            h.wait_for("old key refused", partial(refused, h, OLD), timeout=10)
            assert accepted(h, NEW)
        time.sleep(0.3)
    assert loop.failures == []
    assert loop.ok > 50, loop.ok
    print(f"{loop.ok} requests during the rotation, {len(loop.failures)} failed")


def test_release_without_key_falls_back_to_environment(controller: ControllerHandle) -> None:
    api = controller.client()
    api.post("/apps", {"name": "controller", "system": True})
    rel = release_with(controller, controller.key, env={"OTHER": "x"})
    api.post("/apps/controller/deploy", {"id": rel["id"]})
    time.sleep(0.3)
    assert accepted(controller, controller.key)
    assert controller.controller.keys.source == "environment"


def test_key_parsing_and_check() -> None:
    assert keys_of_release({"AUTH_KEY": "a, b,,"}, {}) == ("a", "b")
    assert keys_of_release({"AUTH_KEY": "a"}, {"web": {"env": {"AUTH_KEY": "c,d"}}}) == ("c", "d")
    assert keys_of_release({"AUTH_KEY": "a"}, {"web": {"env": {"AUTH_KEY": " , "}}}) == ("a",)
    assert keys_of_release({}, {"worker": {"env": {"AUTH_KEY": "z"}}}) == ()
    ks = KeySet(("one-key", "two-key"))
    assert ks.check("one-key")
    assert ks.check("two-key")
    assert not ks.check("one-ke")
    assert not ks.check("")
    assert not ks.check("one-key ")
    assert password_of("Basic OmFiYw==") == "abc"  # ":abc"
    assert password_of("basic dTphOmI=") == "a:b"  # "u:a:b": the password may hold colons
    assert password_of("Basic YWJj") is None  # no colon
    assert password_of("Bearer abc") is None
