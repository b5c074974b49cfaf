"""Times pycomm and its anchors side by side and turns the timings into comparable figures.

A benchmark is a list of :class:`Case` objects (one operation at one size) plus, per size, a
:class:`Bound` (a physical limit such as memcpy). Each case allocates its buffers only when it runs
(``setup``), so a sweep up to large sizes never holds more than one case's memory.

How a case is measured, and why:

- every callable first runs until its calls add up to ``min_time_s``; that calibrates how many calls
  one repetition makes (so a repetition lasts long enough for the clock and the scheduler not to
  dominate) and doubles as warm-up (page faults, caches, branch predictors);
- ``warmup`` further repetitions are run and thrown away;
- the ``repeat`` measured repetitions of pycomm, of its anchors and of the bound of its size are
  interleaved, in an order that rotates each round, so a burst of machine noise hits all of them
  alike (a bound measured once, apart from the cases, made "fraction of memcpy" swing by 2x on a
  busy machine);
- figures come from the median of the repetitions (minimum, maximum and quartiles are kept to show
  the spread), and a ratio only ever compares medians from the same run.

Throughput is ``bus_bytes / median seconds``: bus bytes count every byte a call reads plus every
byte it writes, as declared by the case, so kernels with different access patterns stay comparable
to the bound measured at the same array size.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pycomm.errors import InvalidArgumentError

from .units import format_size

__all__ = [
    "Bound",
    "Case",
    "CaseResult",
    "Measurement",
    "Settings",
    "Timed",
    "measure_interleaved",
    "run_benchmark",
    "throughput_ratio",
]


@dataclass(frozen=True)
class Timed:
    """One callable to time: ``fn()`` does one call's work; ``bus_bytes`` is what one call reads plus
    what it writes; ``label`` says what it is (shown in tables, e.g. ``"numpy np.add(out=)"``)."""

    label: str
    fn: Callable[[], Any]
    bus_bytes: int


@dataclass(frozen=True)
class Case:
    """One operation at one size.

    ``name`` groups cases into one curve family (one plot panel, e.g. ``"reduce_into sum"``),
    ``series`` names the curve inside it (e.g. the dtype), ``size_bytes`` is the size of the
    operation's main array. ``setup()`` allocates the buffers and returns the pycomm callable and
    its anchors (at least one); it runs right before the case is measured.
    """

    name: str
    series: str
    size_bytes: int
    setup: Callable[[], tuple[Timed, Sequence[Timed]]]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bound:
    """A physical limit at one size (memcpy of ``size_bytes``, loopback TCP, ...), measured inside
    the rounds of every case of that size."""

    name: str
    size_bytes: int
    setup: Callable[[], Timed]


@dataclass(frozen=True)
class Settings:
    """How long and how often each callable is timed."""

    repeat: int = 5
    warmup: int = 1
    min_time_s: float = 0.025

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise InvalidArgumentError(f"repeat must be at least 1, got {self.repeat}")
        if self.warmup < 0:
            raise InvalidArgumentError(f"warmup must be 0 or more, got {self.warmup}")
        if not (self.min_time_s > 0 and math.isfinite(self.min_time_s)):
            raise InvalidArgumentError(
                f"min_time_s must be a positive number of seconds, got {self.min_time_s}"
            )

    def to_json(self) -> dict[str, Any]:
        return {"repeat": self.repeat, "warmup": self.warmup, "min_time_s": self.min_time_s}


@dataclass(frozen=True)
class Measurement:
    """The timings of one callable: seconds per call, one entry per measured repetition."""

    label: str
    bus_bytes: int
    calls_per_repeat: int
    seconds_per_call: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds_per_call)

    @property
    def min_s(self) -> float:
        return min(self.seconds_per_call)

    @property
    def max_s(self) -> float:
        return max(self.seconds_per_call)

    @property
    def quartiles_s(self) -> tuple[float, float]:
        """First and third quartiles (equal to the single value when there is one repetition)."""
        if len(self.seconds_per_call) < 2:
            return self.seconds_per_call[0], self.seconds_per_call[0]
        q1, _, q3 = statistics.quantiles(self.seconds_per_call, n=4, method="inclusive")
        return q1, q3

    @property
    def gbps(self) -> float:
        """Bus throughput at the median time, in GB/s (10^9 bytes a second)."""
        return self.bus_bytes / self.median_s / 1e9

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median: how noisy the repetitions were."""
        q1, q3 = self.quartiles_s
        return (q3 - q1) / self.median_s

    def to_json(self) -> dict[str, Any]:
        q1, q3 = self.quartiles_s
        return {
            "label": self.label,
            "bus_bytes": self.bus_bytes,
            "calls_per_repeat": self.calls_per_repeat,
            "seconds_per_call": list(self.seconds_per_call),
            "median_s": self.median_s,
            "min_s": self.min_s,
            "max_s": self.max_s,
            "q1_s": q1,
            "q3_s": q3,
            "gbps": self.gbps,
        }


def check_process_counts(counts: Sequence[int], what: str, maximum: int) -> None:
    """Refuses an empty list of process counts, or one outside [2, maximum]."""
    if not counts:
        raise InvalidArgumentError(f"no {what} given")
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= maximum:
            raise InvalidArgumentError(f"{what} must be whole numbers in [2, {maximum}], got {count}")


def check_float32_sizes(sizes: Sequence[int]) -> None:
    """Refuses an empty list of sizes, or a size that is not whole float32 values."""
    if not sizes:
        raise InvalidArgumentError("no sizes given")
    for size in sizes:
        if size <= 0 or size % 4 != 0:
            raise InvalidArgumentError(
                f"size {size} bytes is not a positive multiple of 4 bytes (whole float32 values)"
            )


def throughput_ratio(subject: Measurement, anchor: Measurement) -> float:
    """``subject`` GB/s over ``anchor`` GB/s, both at their medians: above 1, ``subject`` is faster."""
    return subject.gbps / anchor.gbps


@dataclass(frozen=True)
class CaseResult:
    """A case's measurements, and the bound's measured in the same rounds (None without a bound)."""

    case: Case
    pycomm: Measurement
    anchors: tuple[Measurement, ...]
    bound_name: str | None = None
    bound: Measurement | None = None

    def ratio(self, anchor: Measurement) -> float:
        return throughput_ratio(self.pycomm, anchor)

    @property
    def of_bound(self) -> float | None:
        """pycomm's GB/s over the bound's GB/s (both medians of this case's rounds)."""
        return None if self.bound is None else throughput_ratio(self.pycomm, self.bound)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.case.name,
            "series": self.case.series,
            "size_bytes": self.case.size_bytes,
            "params": dict(self.case.params),
            "pycomm": self.pycomm.to_json(),
            "anchors": [{**anchor.to_json(), "ratio": self.ratio(anchor)} for anchor in self.anchors],
            "bound": None if self.bound is None else {"name": self.bound_name, **self.bound.to_json()},
            "of_bound": self.of_bound,
        }


def _time_calls(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start


def _calibrate(fn: Callable[[], Any], min_time_s: float) -> int:
    """Calls per repetition so that one repetition lasts at least ``min_time_s``."""
    calls = 1
    while True:
        elapsed = _time_calls(fn, calls)
        if elapsed >= min_time_s:
            return calls
        # Aim 20% past the target from the rate seen so far, but at most 100x a step so that one
        # very fast first call (a warm cache, a lazy page) cannot make a repetition run for minutes.
        per_call = max(elapsed / calls, 1e-9)
        calls = max(calls + 1, min(calls * 100, math.ceil(1.2 * min_time_s / per_call)))


def measure_interleaved(timed: Sequence[Timed], settings: Settings) -> list[Measurement]:
    """Measures several callables round by round (see the module docstring); one result each, in order."""
    if not timed:
        return []
    calls = [_calibrate(t.fn, settings.min_time_s) for t in timed]
    samples: list[list[float]] = [[] for _ in timed]
    gc_was_enabled = gc.isenabled()
    # The collector would add pauses unrelated to the code being timed (timeit does the same).
    gc.disable()
    try:
        for round_index in range(settings.warmup + settings.repeat):
            for offset in range(len(timed)):
                k = (round_index + offset) % len(timed)
                elapsed = _time_calls(timed[k].fn, calls[k])
                if round_index >= settings.warmup:
                    samples[k].append(elapsed / calls[k])
    finally:
        if gc_was_enabled:
            gc.enable()
    return [Measurement(t.label, t.bus_bytes, n, tuple(s)) for t, n, s in zip(timed, calls, samples)]


def _measure_case(case: Case, bound: Bound | None, settings: Settings) -> CaseResult:
    pycomm_timed, anchor_timed = case.setup()
    if not anchor_timed:
        raise InvalidArgumentError(f"case '{case.name}' ({case.series}) has no anchor to compare with")
    timed = [pycomm_timed, *anchor_timed]
    if bound is not None:
        timed.append(bound.setup())
    measured = measure_interleaved(timed, settings)
    anchors = tuple(measured[1 : 1 + len(anchor_timed)])
    if bound is None:
        return CaseResult(case, measured[0], anchors)
    return CaseResult(case, measured[0], anchors, bound.name, measured[-1])


def run_benchmark(
    cases: Sequence[Case],
    bounds: Sequence[Bound] = (),
    settings: Settings | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[CaseResult]:
    """Measures every case, size by size (smallest first), each with the bound of its size (if any)
    interleaved into its rounds. ``progress`` receives a line of text before each size starts."""
    settings = settings or Settings()
    bounds_by_size = {bound.size_bytes: bound for bound in bounds}
    results: list[CaseResult] = []
    for size in sorted({case.size_bytes for case in cases}):
        at_size = [case for case in cases if case.size_bytes == size]
        if progress is not None:
            progress(f"measuring {format_size(size)}: {len(at_size)} case(s)")
        results.extend(_measure_case(case, bounds_by_size.get(size), settings) for case in at_size)
    return results
