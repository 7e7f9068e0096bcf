"""A worker process for the integration tests: prints its environment once, then idles."""

import os
import time

for key in sorted(os.environ):
    print(f"{key}={os.environ[key]}", flush=True)
while True:
    time.sleep(3600)
