import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from flynn.host.api import make_app
from flynn.host.identity import HostIdentity


async def _client(aiohttp_client, tmp_path: Path) -> TestClient[Any, Any]:  # type: ignore[no-untyped-def]
    build = tmp_path / "BUILD"
    build.write_text("abc.def\n")
    app = make_app(HostIdentity(id="host7", created_at=123.5), build_file=build)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


async def test_status_reports_identity_and_facts(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client = await _client(aiohttp_client, tmp_path)
    resp = await client.get("/host/status")
    assert resp.status == 200
    body = await resp.json()
    assert body["id"] == "host7"
    assert body["created_at"] == 123.5
    assert body["build"] == "abc.def"
    assert body["uptime"] > 0
    assert 0 <= body["daemon_uptime"] < 60
    assert abs(body["booted_at"] + body["uptime"] - time.time()) < 5
    assert isinstance(body["addresses"], list)
    for addr in body["addresses"]:
        assert set(addr) == {"interface", "family", "address"}
        assert not addr["address"].startswith("127.")


async def test_unknown_path_is_json_404(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client = await _client(aiohttp_client, tmp_path)
    resp = await client.get("/host/nope")
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert (await resp.json())["code"] == 404


async def test_wrong_method_is_json_405(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client = await _client(aiohttp_client, tmp_path)
    resp = await client.post("/host/status", data=b"\xff\x00garbage")
    assert resp.status == 405
    assert "error" in await resp.json()
