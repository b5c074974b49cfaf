"""Turns benchmark results into what people read: a terminal table, a JSON document and a plot of
bandwidth against size.

Every figure here is derived from the medians in :mod:`pycomm.benchmarks.harness`; nothing is
re-measured or smoothed, so the table, the JSON and the plot always agree.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from pycomm.cli.output import format_table

from .harness import CaseResult, Measurement, Settings
from .units import format_size

__all__ = ["bound_summary", "format_results", "plot_bandwidth", "results_to_json"]

TABLE_HEADERS = (
    "kernel",
    "series",
    "size",
    "bus/size",
    "pycomm us",
    "pycomm GB/s",
    "IQR %",
    "anchor",
    "anchor GB/s",
    "ratio",
    "of bound",
)


def _ordered(case_results: Sequence[CaseResult]) -> list[CaseResult]:
    # Keep the curves in the order the cases were declared, each one from its smallest size up, so a
    # reader follows one kernel across sizes instead of jumping between kernels.
    first_seen: dict[tuple[str, str], int] = {}
    for result in case_results:
        first_seen.setdefault((result.case.name, result.case.series), len(first_seen))
    return sorted(case_results, key=lambda r: (first_seen[(r.case.name, r.case.series)], r.case.size_bytes))


def _case_rows(result: CaseResult) -> list[list[Any]]:
    case, pycomm = result.case, result.pycomm
    of_bound = result.of_bound
    rows = []
    for anchor in result.anchors:
        rows.append(
            [
                case.name,
                case.series,
                format_size(case.size_bytes),
                round(pycomm.bus_bytes / case.size_bytes, 3),
                pycomm.median_s * 1e6,
                pycomm.gbps,
                round(100 * pycomm.spread, 1),
                anchor.label,
                anchor.gbps,
                result.ratio(anchor),
                "-" if of_bound is None else of_bound,
            ]
        )
    return rows


def bound_summary(case_results: Sequence[CaseResult]) -> list[dict[str, Any]]:
    """Per bound and size: the bound's GB/s across the cases it was measured with (median, min, max)."""
    groups: dict[tuple[str, int], list[Measurement]] = {}
    for result in case_results:
        if result.bound is not None:
            groups.setdefault((result.bound_name or "bound", result.case.size_bytes), []).append(result.bound)
    summary = []
    for (name, size), measurements in sorted(groups.items()):
        rates = [m.gbps for m in measurements]
        summary.append(
            {
                "name": name,
                "label": measurements[0].label,
                "size_bytes": size,
                "bus_bytes": measurements[0].bus_bytes,
                "cases": len(rates),
                "gbps_median": statistics.median(rates),
                "gbps_min": min(rates),
                "gbps_max": max(rates),
            }
        )
    return summary


def format_results(case_results: Sequence[CaseResult], notes: Sequence[str] = ()) -> str:
    """The bounds table, then one row per (case, anchor), preceded by ``notes`` (column definitions)."""
    parts = list(notes)
    bounds = bound_summary(case_results)
    if bounds:
        bound_rows = [
            [
                b["name"],
                format_size(b["size_bytes"]),
                round(b["bus_bytes"] / b["size_bytes"], 3),
                b["gbps_median"],
                b["gbps_min"],
                b["gbps_max"],
                b["cases"],
            ]
            for b in bounds
        ]
        headers = ("bound", "size", "bus/size", "GB/s median", "min", "max", "measured with cases")
        parts += ["", format_table(headers, bound_rows)]
    rows = [row for result in _ordered(case_results) for row in _case_rows(result)]
    parts += ["", format_table(TABLE_HEADERS, rows)]
    return "\n".join(parts)


def results_to_json(
    benchmark: str,
    case_results: Sequence[CaseResult],
    settings: Settings,
    machine: dict[str, Any],
    definitions: dict[str, str],
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole run as one JSON-serialisable document (what ``--json`` writes)."""
    return {
        "benchmark": benchmark,
        "machine": machine,
        "settings": settings.to_json(),
        "options": options or {},
        "definitions": definitions,
        "bounds": bound_summary(case_results),
        "cases": [r.to_json() for r in _ordered(case_results)],
    }


def plot_bandwidth(case_results: Sequence[CaseResult], path: str, title: str) -> None:
    """Writes a PNG: one log-log panel of GB/s against size per kernel, pycomm solid, anchors dashed,
    the bound dotted. Needs matplotlib (raises MissingDependencyError naming the install command)."""
    from pycomm._deps import require_matplotlib

    require_matplotlib("pycomm bench --plot")
    # A Figure with its own Agg canvas, not pyplot's figure manager: nothing global changes (a
    # caller's interactive backend stays as it was) and no figure is left open after saving.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = _ordered(case_results)
    names = list(dict.fromkeys(r.case.name for r in results))
    columns = min(4, max(1, len(names)))
    rows = math.ceil(len(names) / columns) if names else 1
    figure = Figure(figsize=(4.8 * columns, 4.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    bounds = bound_summary(results)
    for index, name in enumerate(names):
        _plot_panel(figure.add_subplot(rows, columns, index + 1), name, results, bounds)
    figure.savefig(path, format="png", dpi=110)


def _plot_panel(
    axes: Any, name: str, results: Sequence[CaseResult], bounds: Sequence[dict[str, Any]]
) -> None:
    in_panel = [r for r in results if r.case.name == name]
    series_names = list(dict.fromkeys(r.case.series for r in in_panel))
    colors = [f"C{k % 10}" for k in range(len(series_names))]
    for series, color in zip(series_names, colors):
        curve = [r for r in in_panel if r.case.series == series]
        sizes = [r.case.size_bytes for r in curve]
        axes.plot(sizes, [r.pycomm.gbps for r in curve], "o-", color=color, label=f"{series} pycomm")
        for k, label in enumerate(dict.fromkeys(a.label for r in curve for a in r.anchors)):
            points = [(r.case.size_bytes, a.gbps) for r in curve for a in r.anchors if a.label == label]
            axes.plot(
                *zip(*points), ("x--", "+:", "d-.")[k % 3], color=color, alpha=0.7, label=f"{series} {label}"
            )
    for bound_name in dict.fromkeys(b["name"] for b in bounds):
        points = sorted((b["size_bytes"], b["gbps_median"]) for b in bounds if b["name"] == bound_name)
        axes.plot(*zip(*points), "k:", linewidth=2, label=f"{bound_name} (median)")
    sizes = sorted({r.case.size_bytes for r in in_panel})
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xticks(sizes, [format_size(s) for s in sizes], rotation=45, fontsize=7)
    axes.tick_params(axis="x", which="minor", bottom=False)
    axes.set_title(name, fontsize=10)
    axes.set_xlabel("array size")
    axes.set_ylabel("bus GB/s")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=5.5, framealpha=0.6)
