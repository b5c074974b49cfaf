"""Link descriptions for :mod:`pycomm.testing.netem` and ``--wan`` options: round-trip times,
rates and loss written with units (``"rtt=50ms,rate=1gbit,loss=0.01%"``), read into SI units.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Union

from pycomm.errors import InvalidArgumentError

Duration = Union[float, int, str]
Rate = Union[float, int, str, None]
Loss = Union[float, int, str]

_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_RATE_UNITS = {"": 1.0, "bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
_NUMBER_AND_UNIT = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(\S*?)\s*$")
_UNLIMITED = ("unlimited", "none", "inf")


def _split_number(value: str, name: str, example: str) -> tuple[float, str]:
    match = _NUMBER_AND_UNIT.match(value)
    if match is None:
        raise InvalidArgumentError(
            f"{name}: cannot read {value!r}; write a number and a unit, e.g. {example!r}"
        )
    return float(match.group(1)), match.group(2)


def _check_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(
            f"{name} must be a number or a string with a unit, got {type(value).__name__}"
        )
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be finite, got {value}")
    return float(value)


def parse_duration(value: Duration, name: str = "rtt") -> float:
    """Seconds from a number of seconds or a string such as ``"50ms"`` (units s, ms, us, ns)."""
    if isinstance(value, str):
        number, unit = _split_number(value, name, "50ms")
        if unit.lower() not in _DURATION_UNITS:
            raise InvalidArgumentError(f"{name}: unknown unit {unit!r} in {value!r}; use s, ms, us or ns")
        seconds = number * _DURATION_UNITS[unit.lower()]
    else:
        seconds = _check_number(value, name)
    if seconds < 0:
        raise InvalidArgumentError(f"{name} must not be negative, got {value!r}")
    return seconds


def parse_rate(value: Rate, name: str = "rate") -> float | None:
    """Bits per second from a number or a string such as ``"1gbit"`` or ``"100Mbit/s"`` (SI prefixes:
    kbit = 1000 bit/s); None or ``"unlimited"`` for no limit. "bps" is refused: tc reads it as bytes."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _UNLIMITED):
        return None
    if isinstance(value, str):
        number, unit = _split_number(value, name, "1gbit")
        unit = unit.lower().removesuffix("/s")
        if unit not in _RATE_UNITS:
            raise InvalidArgumentError(
                f"{name}: unknown unit in {value!r}; use bit, kbit, mbit, gbit or tbit (bits per second, "
                "optionally written /s, e.g. '1gbit' or '100Mbit/s'), or 'unlimited'"
            )
        rate = number * _RATE_UNITS[unit]
    else:
        rate = _check_number(value, name)
    if rate <= 0:
        raise InvalidArgumentError(
            f"{name} must be positive (None or 'unlimited' for no limit), got {value!r}"
        )
    return rate


def parse_loss(value: Loss, name: str = "loss") -> float:
    """A drop probability from a fraction in [0, 1] or a percentage string such as ``"0.01%"``."""
    if isinstance(value, str):
        number, unit = _split_number(value, name, "0.01%")
        if unit not in ("", "%"):
            raise InvalidArgumentError(
                f"{name}: cannot read {value!r}; write a percentage like '0.01%' or a fraction"
            )
        probability = number / 100 if unit == "%" else number
    else:
        probability = _check_number(value, name)
    if not 0 <= probability <= 1:
        raise InvalidArgumentError(f"{name} must be between 0 and 100% (a fraction in [0, 1]), got {value!r}")
    return probability


_LINK_KEYS = {"rtt": parse_duration, "rate": parse_rate, "loss": parse_loss}


def parse_link(text: str) -> dict[str, Any]:
    """Reads ``"rtt=50ms,rate=1gbit,loss=0.01%"`` (the ``--wan`` option's format) into the keyword
    arguments of :class:`Network` and :meth:`Network.set_link`, in SI units: rtt in seconds, rate in
    bits per second (None: unlimited), loss a fraction. Keys left out are left out of the result."""
    if not isinstance(text, str):
        raise InvalidArgumentError(f"a link description must be a string, got {type(text).__name__}")
    settings: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals:
            raise InvalidArgumentError(f"link description item {item!r} is not KEY=VALUE (e.g. 'rtt=50ms')")
        if key not in _LINK_KEYS:
            raise InvalidArgumentError(
                f"unknown link key {key!r} in {text!r}; known keys: {', '.join(_LINK_KEYS)}"
            )
        if key in settings:
            raise InvalidArgumentError(f"link key {key!r} given twice in {text!r}")
        settings[key] = _LINK_KEYS[key](value.strip(), key)
    return settings


@dataclasses.dataclass(frozen=True)
class LinkSettings:
    """One direction of a link. ``rtt`` is the round trip it contributes half of: its one-way delay is
    ``rtt / 2``, so a link whose two directions share one setting has that round-trip time."""

    rtt: float = 0.0  # seconds
    rate: float | None = None  # bits per second; None: unlimited
    loss: float = 0.0  # probability

    @property
    def delay(self) -> float:
        return self.rtt / 2
