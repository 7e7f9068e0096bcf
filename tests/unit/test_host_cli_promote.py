"""``flynn-host promote`` waits until the new peer adds fault tolerance: what it checks."""

from __future__ import annotations

from typing import Any, cast

from flynn.common.errors import APIError
from flynn.common.http import Client
from flynn.host.cli import _caught_up


class FakeStatus:
    def __init__(self, status: dict[str, Any] | APIError) -> None:
        self.status = status

    def get(self, path: str) -> dict[str, Any]:
        assert path == "/raft/status"
        if isinstance(self.status, APIError):
            raise self.status
        return self.status


PEER = {
    "role": "peer",
    "leader": "10.0.0.1",
    "has_quorum": True,
    "connected": {"10.0.0.1": True, "10.0.0.3": True},
    "last_applied": 42,
}


def check(status: dict[str, Any] | APIError, index: int = 40) -> tuple[bool, str]:
    return _caught_up(cast(Client, FakeStatus(status)), index)


def test_a_connected_peer_that_applied_the_log_is_caught_up() -> None:
    assert check(PEER) == (True, "caught up at index 42")
    assert check(PEER, 42)[0] is True


def test_every_missing_condition_is_named() -> None:
    assert check(APIError(0, "cannot reach http://10.0.0.2:1111")) == (
        False,
        "cannot reach http://10.0.0.2:1111",
    )
    assert check({**PEER, "role": "proxy"}) == (False, "still a proxy")
    assert check({**PEER, "leader": None}) == (False, "not following a leader yet")
    assert check({**PEER, "has_quorum": False}) == (False, "not following a leader yet")
    assert check({**PEER, "connected": {"10.0.0.1": True, "10.0.0.3": False}}) == (
        False,
        "not connected to 10.0.0.3",
    )
    assert check(PEER, 50) == (False, "applied index 42 of 50")
