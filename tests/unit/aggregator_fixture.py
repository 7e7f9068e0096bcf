"""A log aggregator for the controller's unit tests: the real API (flynn.logs.api) on real buffers
and a real sink set, over HTTP, registered in a fake discoverd as ``logaggregator``. Its lines
are added directly (no hosts); tests/unit/test_logs_*.py cover the parts that follow hosts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from flynn.logs.api import LogAPI
from flynn.logs.buffer import Buffers
from flynn.logs.model import Line
from flynn.logs.sinks import SinkSet

SERVICE = "logaggregator"


@dataclass
class AggregatorHandle:
    buffers: Buffers = field(default_factory=Buffers)
    sinks: SinkSet = field(default_factory=SinkSet)
    leader: bool = True
    url: str = ""
    runner: web.AppRunner | None = None

    def status(self) -> dict[str, Any]:
        return {"leader": self.leader, "lines": self.buffers.total()}

    def sink_status(self) -> dict[str, Any]:
        return {"leader": self.leader, "sinks": self.sinks.status()}

    def add(
        self, app_id: str, job_id: str, msg: str, *, ts: int, ptype: str = "web", stream: str = "stdout"
    ) -> Line:
        line = Line(
            ts=ts,
            host_id=job_id.split("-", 1)[0],
            app_id=app_id,
            app_name="app",
            job_id=job_id,
            type=ptype,
            release_id=None,
            stream=stream,
            priority=3 if stream == "stderr" else 6,
            msg=msg,
        )
        self.buffers.add(line)
        return line

    async def start(self) -> str:
        api = LogAPI(self.buffers, self.status, self.sink_status, keepalive=0.5)
        self.runner = web.AppRunner(api.make_app(), access_log=None, shutdown_timeout=1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self.url

    def instance(self) -> dict[str, Any]:
        return {"id": "agg1", "addr": self.url.removeprefix("http://"), "proto": "tcp", "meta": {}}

    async def stop(self) -> None:
        await self.sinks.close()
        if self.runner is not None:
            await self.runner.cleanup()
