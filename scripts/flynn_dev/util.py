"""Paths, subprocess helpers and the one error type of the harness."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class DevError(Exception):
    """A failure with a one-line reason for the operator; the CLI prints it and exits 1."""


def dev_home() -> Path:
    return Path(os.environ.get("FLYNN_DEV_HOME", "/var/lib/flynn-dev"))


def venv_python() -> Path:
    return REPO / ".venv/bin/python"


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = True,
    quiet: bool = False,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise DevError with the command and the last stderr line."""
    args = [str(c) for c in cmd]
    try:
        proc = subprocess.run(
            args,
            check=False,
            text=True,
            capture_output=capture,
            timeout=timeout,
            env=env,
            stdin=None if input is not None else subprocess.DEVNULL,
            input=input,
        )
    except FileNotFoundError:
        raise DevError(f"{args[0]} not found (run scripts/setup)") from None
    except subprocess.TimeoutExpired:
        raise DevError(f"{' '.join(args[:3])} timed out after {timeout:g}s") from None
    if check and proc.returncode != 0:
        detail = ""
        if capture:
            lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
            detail = f": {lines[-1].strip()}" if lines else ""
            if not quiet and len(lines) > 1:
                sys.stderr.write("\n".join(lines[-20:]) + "\n")
        raise DevError(f"{' '.join(args[:4])} exited {proc.returncode}{detail}")
    return proc


# directories of generated files, never inputs: bytecode, mypy's cache, the router's in-place
# mypyc build (setup.py build_ext --inplace), and the egg-info that building the wheel (re)writes
# into services/ (counting it made every second image build after a fresh clone rebuild the app
# layer for nothing)
BUILD_OUTPUTS = frozenset({"__pycache__", ".mypy_cache", "_mypyc"})


def _generated(f: Path) -> bool:
    return (
        bool(BUILD_OUTPUTS.intersection(f.parts))
        or any(part.endswith(".egg-info") for part in f.parts)
        or f.suffix in {".pyc", ".pyo"}
    )


def tree_hash(paths: Iterable[Path], *, extra: Iterable[str] = ()) -> str:
    """Content hash of files and directory trees (names + bytes), ignoring caches and bytecode."""
    digest = hashlib.sha256()
    for item in extra:
        digest.update(item.encode() + b"\0")
    for root in sorted(paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            if _generated(f):
                continue
            digest.update(str(f.relative_to(REPO)).encode() + b"\0")
            digest.update(f.read_bytes())
            digest.update(b"\0" + (b"x" if os.access(f, os.X_OK) else b"-"))
    return digest.hexdigest()[:16]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
