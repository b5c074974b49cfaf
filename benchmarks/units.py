"""Byte sizes as people type them (``4KiB``, ``64M``, ``1048576``) and as tables show them."""

from __future__ import annotations

import re

from pycomm.errors import InvalidArgumentError

__all__ = ["format_size", "parse_size", "parse_sizes"]

# Every prefix is binary: benchmark sizes are powers of two, and "64M" meaning 64,000,000 bytes
# would make a sweep land between the powers of two it was meant to hit.
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
}
_SIZE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """``"4KiB"`` -> 4096. Units: none or B, K/KiB, M/MiB, G/GiB (all binary); case-insensitive."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise InvalidArgumentError(
            f"cannot read the size '{text}': write a whole number of bytes, optionally followed by "
            "B, K/KiB, M/MiB or G/GiB (binary units), e.g. 4KiB or 64MiB"
        )
    size = int(match.group(1)) * _UNITS[unit]
    if size <= 0:
        raise InvalidArgumentError(f"sizes must be positive, got '{text}'")
    return size


def parse_sizes(text: str) -> list[int]:
    """A comma-separated list of sizes, sorted, without repeats."""
    return sorted({parse_size(part) for part in text.split(",") if part.strip()})


def format_size(size: int) -> str:
    """4096 -> ``"4 KiB"``; sizes that are not a whole number of a unit stay in the smaller one."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"
