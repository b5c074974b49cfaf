"""pycomm's benchmarks: pycomm and its anchors measured side by side in one run.

Installed as ``pycomm.benchmarks`` and driven by ``pycomm bench``. :mod:`.harness` times callables
(adaptive repetitions, interleaved, medians) and is shared by every benchmark; :mod:`.report` prints
tables, writes JSON and plots; each other module declares the cases of one ``pycomm bench``
sub-command (:mod:`.reduce`: the byte kernels against numpy, memcpy as the bound).
"""

from __future__ import annotations

from . import numpy_anchors, reduce
from .harness import (
    Bound,
    Case,
    CaseResult,
    Measurement,
    Settings,
    Timed,
    measure_interleaved,
    run_benchmark,
    throughput_ratio,
)
from .machine import machine_info
from .report import bound_summary, format_results, plot_bandwidth, results_to_json
from .units import format_size, parse_size, parse_sizes

__all__ = [
    "Bound",
    "Case",
    "CaseResult",
    "Measurement",
    "Settings",
    "Timed",
    "bound_summary",
    "format_results",
    "format_size",
    "machine_info",
    "measure_interleaved",
    "numpy_anchors",
    "parse_size",
    "parse_sizes",
    "plot_bandwidth",
    "reduce",
    "results_to_json",
    "run_benchmark",
    "throughput_ratio",
]
