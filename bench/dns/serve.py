"""Run discoverd's DNS server on a fixed record set (bench/dns/run starts it; not a service).

The records come from a JSON file written by bench.py: ``{"SERVICE": {"instances": [[ip, port], ...],
"leader": [ip, port] | null}}``. Prints ``ready PORT`` when listening, and the server's counters as
one JSON line when stopped by SIGTERM/SIGINT. ``--profile FILE`` writes cProfile stats on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import signal
import sys
from pathlib import Path
from typing import Any

import uvloop

from flynn.discoverd.dns import DNSServer


class FixedSource:
    def __init__(self, records: dict[str, Any]) -> None:
        self._instances: dict[str, list[tuple[str, int]]] = {}
        self._leaders: dict[str, tuple[str, int]] = {}
        for name, rec in records.items():
            self._instances[name] = [(str(ip), int(port)) for ip, port in rec["instances"]]
            leader = rec.get("leader")
            if leader:
                self._leaders[name] = (str(leader[0]), int(leader[1]))

    def dns_instances(self, service: str) -> list[tuple[str, int]] | None:
        found = self._instances.get(service)
        return None if found is None else list(found)

    def dns_leader(self, service: str) -> tuple[str, int] | None:
        return self._leaders.get(service)


async def serve(args: argparse.Namespace, records: dict[str, Any]) -> None:
    server = DNSServer(FixedSource(records), host=args.host, port=args.port, upstreams=[])
    await server.start()
    print(f"ready {server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    print(json.dumps(server.stats()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--profile", help="write cProfile stats to this file on exit")
    args = parser.parse_args()
    records = json.loads(Path(args.records).read_text())
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            uvloop.run(serve(args, records))
        finally:
            profiler.disable()
            profiler.dump_stats(args.profile)
    else:
        uvloop.run(serve(args, records))
    sys.exit(0)


if __name__ == "__main__":
    main()
