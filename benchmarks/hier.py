"""``pycomm bench hier``: pycomm.hier's hierarchical collectives against MPI's flat ones, on a fake
2 x 2 x 2 topology (gcd, gpu, node) laid over 8 local MPI ranks.

For each size (bytes of the float32 array one rank gathers into, or reduce-scatters), under one
``mpiexec -n 8`` launch: HierComm's all-gather, int8 all-gather (qwZ), reduce-scatter (sum) and int4
two-hop reduce-scatter (qgZ), each timed against the flat collective over the same 8 ranks
(``MPI_Allgather`` / ``MPI_Reduce_scatter_block`` of float32), repetitions interleaved; and the bytes
HierComm sent per level against :mod:`pycomm.hier._volume`'s formula, which is what
:meth:`ZeroPlan.bytes_per_level` adds up. In this process: pycomm.kernels.quantize and dequantize
throughput at the same sizes.

A repetition's time is the slowest rank's (the collective is done when the last rank is). On fewer
cores than ranks the ranks take turns on the CPUs: times then measure scheduling as much as data
movement, while the byte counts stay exact.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from .units import format_size

__all__ = ["DEFAULT_SIZES", "LEVELS", "QUICK_SIZES", "format_report", "measure_on_ranks", "run_hier"]

MiB = 1024 * 1024
DEFAULT_SIZES = (1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB)
QUICK_SIZES = (8 * 1024, 64 * 1024 + 12)
LEVELS = (("gcd", 2), ("gpu", 2), ("node", 2))
BLOCK_SIZE = 256
# (row name, operation, quantizer, the flat anchor's operation)
COLLECTIVES = (
    ("all_gather", "all_gather", None),
    ("all_gather int8 (qwZ)", "all_gather", "int8"),
    ("reduce_scatter", "reduce_scatter", None),
    ("reduce_scatter int4 (qgZ)", "reduce_scatter", "int4"),
)
KERNELS = (("quantize", "int8"), ("quantize", "int4"), ("dequantize", "int8"), ("dequantize", "int4"))


# -- run on every rank -----------------------------------------------------------------------------


def _timed_rounds(
    comm: Any, callables: Sequence[Callable[[], Any]], repeat: int, min_time_s: float
) -> list[list[float]]:
    """Seconds per call of each callable, ``repeat`` interleaved rounds (order rotating each round);
    a repetition lasts at least ``min_time_s`` and its time is the slowest rank's."""
    from mpi4py import MPI

    def one(fn: Callable[[], Any], calls: int) -> float:
        comm.Barrier()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        return comm.allreduce(elapsed, op=MPI.MAX) / calls

    # One call each calibrates how many calls a repetition makes (the same on every rank) and warms up.
    calls = [max(1, math.ceil(min_time_s / max(one(fn, 1), 1e-9))) for fn in callables]
    seconds: list[list[float]] = [[] for _ in callables]
    for round_index in range(repeat):
        for offset in range(len(callables)):
            index = (round_index + offset) % len(callables)
            seconds[index].append(one(callables[index], calls[index]))
    return seconds


def measure_on_ranks(sizes: Sequence[int], repeat: int, min_time_s: float) -> dict[str, Any] | None:
    """Runs on each of 8 ranks; rank 0 returns the timings and byte counts, the others None."""
    from mpi4py import MPI

    from pycomm.hier import Topology
    from pycomm.hier.comm import HierComm

    world = MPI.COMM_WORLD
    names = [name for name, _ in LEVELS]
    rows = []
    with HierComm(world, Topology.from_levels(list(LEVELS)), block_size=BLOCK_SIZE) as hc:
        group = hc.group_size()
        for size in sizes:
            count = size // 4
            shard = -(-count // group)
            full = np.random.default_rng(world.rank).standard_normal(count).astype(np.float32)
            local = full[:shard].copy()
            gathered = np.empty(group * shard, np.float32)
            padded = np.zeros(group * shard, np.float32)
            padded[:count] = full
            mine = np.empty(shard, np.float32)
            for name, operation, quantizer in COLLECTIVES:
                if operation == "all_gather":
                    hier = partial(hc.all_gather, local, gathered, quantization=quantizer)
                    flat = partial(world.Allgather, local, gathered)
                    passed = shard
                else:
                    hier = partial(hc.reduce_scatter, full, mine, quantization=quantizer)
                    flat = partial(world.Reduce_scatter_block, padded, mine)
                    passed = count
                hc.reset_stats()
                hier()
                sent = [hc.stats[level]["sent_bytes"] for level in names]
                same_everywhere = all(other == sent for other in world.allgather(sent))
                hier_s, flat_s = _timed_rounds(world, [hier, flat], repeat, min_time_s)
                rows.append(
                    {
                        "collective": name,
                        "operation": operation,
                        "quantizer": quantizer,
                        "size_bytes": size,
                        "count": passed,
                        "measured": sent,
                        "same_on_every_rank": same_everywhere,
                        "hier_s": hier_s,
                        "flat_s": flat_s,
                    }
                )
    return {"rows": rows, "ranks": world.size} if world.rank == 0 else None


# -- this process ----------------------------------------------------------------------------------


def _summary(seconds: Sequence[float]) -> dict[str, Any]:
    return {
        "seconds_per_call": list(seconds),
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
    }


def _kernel_rows(sizes: Sequence[int], repeat: int, min_time_s: float) -> list[dict[str, Any]]:
    """quantize / dequantize GB/s of the float32 data, in this process (blocks of BLOCK_SIZE)."""
    from pycomm import kernels

    rows = []
    for size in sizes:
        x = np.random.default_rng(0).standard_normal(size // 4).astype(np.float32)
        out = np.empty_like(x)
        for kernel, scheme in KERNELS:
            quantized = kernels.quantize(x, scheme, BLOCK_SIZE)
            if kernel == "quantize":
                fn: Callable[[], Any] = partial(kernels.quantize, x, scheme, BLOCK_SIZE)
            else:
                fn = partial(kernels.dequantize, quantized, out=out)
            start = time.perf_counter()
            fn()
            calls = max(1, math.ceil(min_time_s / max(time.perf_counter() - start, 1e-9)))
            seconds = []
            for _ in range(repeat):
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                seconds.append((time.perf_counter() - start) / calls)
            summary = _summary(seconds)
            rows.append(
                {
                    "kernel": kernel,
                    "scheme": scheme,
                    "size_bytes": size,
                    **summary,
                    "gbps": size / summary["median_s"] / 1e9,
                }
            )
    return rows


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_hier(
    sizes: Sequence[int],
    repeat: int,
    min_time_s: float,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole benchmark: one ``mpiexec -n 8`` launch, then the kernels here; returns the document
    that ``--json`` writes."""
    from pycomm.hier import _volume
    from pycomm.testing import run_mpi

    from .machine import machine_info

    began = time.perf_counter()
    ranks = math.prod(fanout for _, fanout in LEVELS)
    cores = _usable_cores()
    if progress:
        progress(f"measuring the collectives under mpiexec -n {ranks} ({', '.join(map(format_size, sizes))})")
    # 64 MiB rows on oversubscribed cores take tens of seconds each: a generous bound.
    job = run_mpi(measure_on_ranks, ranks, args=(list(sizes), repeat, min_time_s), timeout=900)
    ranks_result = job.values[0]
    fanouts = [fanout for _, fanout in LEVELS]
    names = [name for name, _ in LEVELS]
    collectives = []
    for row in ranks_result["rows"]:
        predicted = _volume.sent_per_level(
            row["operation"], fanouts, row["count"], 4, row["quantizer"], BLOCK_SIZE
        )
        hier, flat = _summary(row["hier_s"]), _summary(row["flat_s"])
        # A flat ring over G ranks sends (G - 1) / G of the buffer; MPI does not say over which links.
        flat_bytes = (ranks - 1) * -(-row["size_bytes"] // 4 // ranks) * 4
        collectives.append(
            {
                "collective": row["collective"],
                "operation": row["operation"],
                "quantizer": row["quantizer"],
                "size_bytes": row["size_bytes"],
                "hier": hier,
                "flat": flat,
                "ratio_hier_over_flat": hier["median_s"] / flat["median_s"],
                "bytes_per_level": {
                    name: {"predicted": int(p), "measured": int(m)}
                    for name, p, m in zip(names, predicted, row["measured"])
                },
                "bytes_match": [int(p) for p in predicted] == list(row["measured"])
                and row["same_on_every_rank"],
                "hier_bytes_total": int(sum(row["measured"])),
                "flat_ring_bytes_total": flat_bytes,
            }
        )
    if progress:
        progress("measuring quantize / dequantize in this process")
    kernel_rows = _kernel_rows(sizes, repeat, min_time_s)
    oversubscribed = cores < ranks
    return {
        "benchmark": "hier",
        "machine": machine_info(),
        "settings": {"repeat": repeat, "min_time_s": min_time_s, "sizes": list(sizes)},
        "topology": ",".join(f"{name}:{fanout}" for name, fanout in LEVELS),
        "ranks": ranks,
        "usable_cores": cores,
        "oversubscribed": oversubscribed,
        "note": (
            f"{ranks} ranks on {cores} core(s): oversubscribed, the ranks take turns on the CPUs, so "
            "times measure scheduling as much as data movement; byte counts are exact"
            if oversubscribed
            else f"{ranks} ranks on {cores} cores"
        ),
        "definitions": {
            "size": "bytes of the float32 array one rank gathers into or reduce-scatters",
            "time": "median over repetitions of the slowest rank's seconds per call",
            "ratio": "hierarchical median / flat median (below 1: hierarchical is faster)",
            "flat": "MPI_Allgather / MPI_Reduce_scatter_block (float32 sum) over the same 8 ranks",
            "bytes": "bytes one rank sends per level: predicted by pycomm.hier._volume (the plan's "
            "formulas), measured by HierComm's counters",
            "kernel GB/s": "float32 bytes quantized (or dequantized into) per second, this process",
        },
        "collectives": collectives,
        "kernels": kernel_rows,
        "seconds": time.perf_counter() - began,
    }


def format_report(document: dict[str, Any]) -> str:
    """The printed tables: collectives (time, ratio, bytes per level), then the kernels."""
    from pycomm.hier.topology import format_table

    names = [name for name, _ in LEVELS]
    machine = document["machine"]
    lines = [
        f"pycomm {machine['pycomm']} bench hier: {machine['cpu_model']}, {document['topology']} on "
        f"{document['ranks']} MPI ranks, {document['settings']['repeat']} repetitions of >= "
        f"{document['settings']['min_time_s'] * 1000:g} ms, interleaved; medians; "
        f"{document['seconds']:.0f} s in all",
        f"NOTE: {document['note']}" if document["oversubscribed"] else document["note"],
        "",
    ]
    rows = []
    for row in document["collectives"]:
        levels = row["bytes_per_level"]
        rows.append(
            [
                row["collective"],
                format_size(row["size_bytes"]),
                f"{row['hier']['median_s'] * 1e3:.3g}",
                f"{row['flat']['median_s'] * 1e3:.3g}",
                f"{row['ratio_hier_over_flat']:.2f}",
                *(f"{levels[name]['measured']}" for name in names),
                "yes" if row["bytes_match"] else "NO",
            ]
        )
    headers = ["collective", "size", "hier ms", "flat ms", "hier/flat", *(f"{n} B" for n in names), "= plan"]
    lines.append(format_table(headers, rows))
    lines.append("")
    kernel_rows = [
        [
            row["kernel"],
            row["scheme"],
            format_size(row["size_bytes"]),
            f"{row['median_s'] * 1e3:.3g}",
            f"{row['gbps']:.2f}",
        ]
        for row in document["kernels"]
    ]
    lines.append(format_table(["kernel", "scheme", "size", "ms", "GB/s"], kernel_rows))
    return "\n".join(lines)
