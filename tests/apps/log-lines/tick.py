"""``tick.py N INTERVAL``: N lines, INTERVAL seconds apart, each with the time it was written."""

import sys
import time

count, interval = int(sys.argv[1]), float(sys.argv[2])
for i in range(count):
    time.sleep(interval)
    print(f"tick {i} {time.time():.6f}", flush=True)
