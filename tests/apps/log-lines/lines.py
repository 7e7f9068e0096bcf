"""Prints LINES numbered lines (default 1000) on stdout, every EVERY-th (default 100) also on
stderr, then stays up without printing (tests/integration/test_logs.py)."""

import os
import signal
import sys

job = os.environ.get("FLYNN_JOB_ID", "?")
every = int(os.environ.get("EVERY", "100"))
for i in range(1, int(os.environ.get("LINES", "1000")) + 1):
    print(f"{job} line {i}", flush=True)
    if i % every == 0:
        print(f"{job} err {i}", file=sys.stderr, flush=True)
signal.pause()
