"""Resource limit values as Flynn's CLI writes them.

Memory takes binary units (``KB`` = 2^10, ``MB`` = 2^20, ``GB`` = 2^30, ``TB`` = 2^40; ``K``,
``KiB`` and lower case are accepted too) or a plain number of bytes: ``memory=256MB`` is
268435456. CPU is in milliCPU (``cpu=1500``: one and a half CPUs' worth of weight).
"""

from __future__ import annotations

import re

from flynn.common.errors import FlynnError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)

MIN_MEMORY = 4 << 20  # the controller's lower bound (4 MiB)
MAX_CPU = 100_000


class LimitError(FlynnError):
    """A limit given on the command line is not valid."""


def parse_memory(text: str) -> int:
    match = _MEMORY.match(text.strip())
    if not match:
        raise LimitError(f"invalid memory limit {text!r}: use a size like 512MB or 2GB")
    number, unit = match.groups()
    scale = _UNITS[unit.lower()]
    value = int(float(number) * scale) if "." in number else int(number) * scale
    if value < MIN_MEMORY:
        raise LimitError(f"invalid memory limit {text!r}: the minimum is 4MB")
    return value


def format_memory(value: int) -> str:
    for suffix, size in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if value >= size:
            if value % size == 0:
                return f"{value // size}{suffix}"
            return f"{value / size:.2f}".rstrip("0").rstrip(".") + suffix
    return f"{value}B"


def parse_cpu(text: str) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise LimitError(f"invalid cpu limit {text!r}: use milliCPU, e.g. cpu=1500") from None
    if not 1 <= value <= MAX_CPU:
        raise LimitError(f"invalid cpu limit {text!r}: must be 1-{MAX_CPU} milliCPU")
    return value


def parse_limit(resource: str, text: str) -> int:
    if resource == "memory":
        return parse_memory(text)
    if resource == "cpu":
        return parse_cpu(text)
    raise LimitError(f"unknown resource {resource!r}: use memory or cpu")


def format_limit(resource: str, value: int) -> str:
    return format_memory(value) if resource == "memory" else str(value)
