"""Pieces the benchmarks in bench/ share: each boots a cluster of its own (named by
``FLYNN_DEV_CLUSTER`` and ``FLYNN_DEV_SUBNET`` in its environment) with scripts/cluster."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

from flynn_dev.util import REPO


def cluster_command(env: Mapping[str, str], *args: str, timeout: float = 900) -> str:
    """``scripts/cluster ARGS`` for the benchmark's cluster; its stdout. A failure ends the
    benchmark with the command's own message (a benchmark has nothing to measure without it)."""
    proc = subprocess.run(
        [str(REPO / "scripts/cluster"), *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"bench: scripts/cluster {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout
