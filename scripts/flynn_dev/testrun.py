"""The whole test suite in one command (scripts/test): lint, unit, integration, vm, then a summary.

Rules the summary enforces, so a green run means what it says:
* a tier whose pytest collects no test fails (pytest exit 5 is a failure, never "nothing to do");
* a skipped test is listed under NOT RUN with its reason and fails the run (set
  FLYNN_TEST_ALLOW_SKIPS=1 to only list them); nothing is silently counted as passing;
* a tier that cannot run on this machine is listed as NOT RUN with the reason, never as passed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from flynn_dev.util import REPO

VENV_BIN = REPO / ".venv/bin"
REPORTS = REPO / ".test-reports"


@dataclass
class Outcome:
    name: str
    ok: bool
    seconds: float
    detail: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    not_run: list[str] = field(default_factory=list)


def _run(argv: list[str], env: dict[str, str] | None = None) -> int:
    print(f"\n$ {' '.join(argv)}", flush=True)
    return subprocess.run(argv, cwd=REPO, env={**os.environ, **(env or {})}, check=False).returncode


def nix_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.nix"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return sorted(out) or sorted(
        str(p.relative_to(REPO)) for p in REPO.glob("**/*.nix") if ".venv" not in p.parts
    )


def shell_scripts() -> list[str]:
    found = []
    for d in ("scripts", "appliance", ".ci", "bench"):
        for p in sorted((REPO / d).glob("*")):
            if p.is_file() and p.read_bytes()[:32].startswith(
                (b"#!/bin/bash", b"#!/bin/sh", b"#!/usr/bin/env bash")
            ):
                found.append(str(p.relative_to(REPO)))
    return found


def mypy_targets() -> list[str]:
    targets = ["services/flynn", "scripts/flynn_dev", "tests"]
    if any((REPO / "bench").rglob("*.py")):
        targets.append("bench")
    return targets


def lint() -> Outcome:
    t0 = time.monotonic()
    checks: list[tuple[str, list[str]]] = [
        ("ruff check", [str(VENV_BIN / "ruff"), "check", "."]),
        ("ruff format", [str(VENV_BIN / "ruff"), "format", "--check", "."]),
        ("mypy --strict", [str(VENV_BIN / "mypy"), *mypy_targets()]),
        ("shellcheck", ["shellcheck", *shell_scripts()]),
    ]
    nix = nix_files()
    if not nix:
        return Outcome("lint", False, 0, "no *.nix files found to parse")
    checks.append(
        (
            f"nix-instantiate --parse ({len(nix)} files)",
            ["sh", "-c", 'for f; do nix-instantiate --parse "$f" >/dev/null || exit 1; done', "parse", *nix],
        )
    )
    failed = [name for name, argv in checks if _run(argv) != 0]
    detail = ", ".join(name for name, _ in checks) if not failed else "FAILED: " + ", ".join(failed)
    return Outcome("lint", not failed, time.monotonic() - t0, detail)


def junit_counts(path: Path) -> tuple[dict[str, int], list[str]]:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    skipped: list[str] = []
    if not path.exists():
        return counts, skipped
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314 - our own pytest report
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        elif (skip := case.find("skipped")) is not None:
            counts["skipped"] += 1
            skipped.append(f"{name}: {skip.get('message', 'skipped')}")
        else:
            counts["passed"] += 1
    return counts, skipped


def pytest_tier(
    name: str,
    paths: list[str],
    *,
    timeout: int,
    env: dict[str, str] | None = None,
    extra: list[str] | None = None,
) -> Outcome:
    t0 = time.monotonic()
    REPORTS.mkdir(exist_ok=True)
    report = REPORTS / f"{name}.xml"
    report.unlink(missing_ok=True)
    argv = [
        str(VENV_BIN / "python"),
        "-m",
        "pytest",
        *paths,
        f"--timeout={timeout}",
        f"--junitxml={report}",
        "-p",
        "no:cacheprovider",
        *(extra or []),
    ]
    rc = _run(argv, env)
    counts, skipped = junit_counts(report)
    ok = rc == 0
    detail = f"pytest exit {rc}"
    if rc == 5:
        detail = "pytest collected no tests (exit 5): a tier with no tests fails"
    allow_skips = os.environ.get("FLYNN_TEST_ALLOW_SKIPS") == "1"
    if skipped and not allow_skips:
        ok = False
        detail += f"; {len(skipped)} skipped (skips fail the run; FLYNN_TEST_ALLOW_SKIPS=1 lists only)"
    return Outcome(name, ok, time.monotonic() - t0, detail, counts, skipped)


def has_tests(directory: str) -> bool:
    return any((REPO / directory).glob("test_*.py"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/test", description=__doc__.split("\n")[0])
    p.add_argument(
        "--tier",
        action="append",
        choices=["lint", "unit", "integration", "vm"],
        help="run only these tiers (repeatable); default: all",
    )
    p.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    args = p.parse_args(argv)
    tiers = args.tier or ["lint", "unit", "integration", "vm"]
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    if "lint" in tiers:
        outcomes.append(lint())
    if "unit" in tiers:
        outcomes.append(pytest_tier("unit", ["tests/unit"], timeout=120, extra=args.pytest_args))
    if "integration" in tiers:
        outcomes.append(
            pytest_tier(
                "integration",
                ["tests/integration"],
                timeout=900,
                env={"FLYNN_DEV_CLUSTER": "test"},
                # Python's own traceback format: pytest's re-parses the source of every frame,
                # and on CPython 3.11.2 that once died with "AST constructor recursion depth
                # mismatch", an INTERNALERROR that ended the whole tier instead of one test
                extra=["--tb=native", *args.pytest_args],
            )
        )
    if "vm" in tiers:
        if has_tests("tests/vm"):
            outcomes.append(pytest_tier("vm", ["tests/vm"], timeout=1800, extra=args.pytest_args))
        else:
            outcomes.append(
                Outcome(
                    "vm",
                    True,
                    0,
                    "NOT RUN: no VM-tier tests exist yet (see tests/vm/README.md)",
                    not_run=["tier vm: no tests yet; ZFS volume tests will live there"],
                )
            )
    print("\n" + "=" * 100)
    print(f"{'TIER':12} {'RESULT':8} {'PASSED':>7} {'FAILED':>7} {'SKIPPED':>8} {'TIME':>8}  DETAIL")
    for o in outcomes:
        result = ("not run" if o.not_run and not o.counts else "ok") if o.ok else "FAIL"
        c = o.counts
        print(
            f"{o.name:12} {result:8} {c.get('passed', '-'):>7} {c.get('failed', '-'):>7} "
            f"{c.get('skipped', '-'):>8} {o.seconds:7.1f}s  {o.detail}"
        )
    not_run = [item for o in outcomes for item in o.not_run]
    if not_run:
        print("\nNOT RUN (not counted as passed):")
        for item in not_run:
            print(f"  - {item}")
    ok = all(o.ok for o in outcomes)
    print(f"\n{'PASSED' if ok else 'FAILED'} in {time.monotonic() - t0:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
