"""GPU datatype pack/unpack throughput: pycomm's kernels against cupy's strided copy and memcpy.

The shapes are those the TEMPI paper measures (Pearson et al., 2021):

- 2-D vectors: blocks of 1 to 512 bytes at a 512-byte stride, packing 1 KiB, 1 MiB and 4 MiB;
- 64-byte blocks at a 128-byte stride, packing 1 KiB to 64 MiB;
- the three faces of a 512 x 512 x 512 float32 cube (4-byte blocks, 2 KiB rows, one contiguous plane).

For each shape: pycomm's pack (strided -> packed) and unpack (packed -> strided), both launched
straight from the prepared table (``pycomm._cuda.PackPlan``, what ``pack_gpu`` runs after its checks);
the anchor, cupy copying the same strided view into a contiguous array (``cupy.copyto``, with the
widest element that divides every block and stride); and the bound, a device-to-device memcpy of the
packed bytes. All four are timed with CUDA events in interleaved rounds; figures are medians.
GB/s counts packed bytes (1 GB = 1e9 B); "of memcpy" is pycomm's GB/s over memcpy's, measured in
the same rounds (the aim: 0.8 or more for blocks of 64 bytes and up). Before timing, each shape's
packed bytes are checked against cupy's copy.

Run with ``python -m pycomm.benchmarks.pack_gpu [--quick] [--json FILE]`` (or as a script); the
``pycomm bench pack --gpu`` command calls :func:`run_gpu_pack_benchmark` and :func:`format_results`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GpuShape", "format_results", "gpu_shapes", "main", "run_gpu_pack_benchmark"]

KIB, MIB = 1 << 10, 1 << 20


@dataclass(frozen=True)
class GpuShape:
    """One strided layout: ``block`` bytes at ``offset`` + sum(i_k * strides[k]), i_k < counts[k]."""

    group: str
    label: str
    offset: int
    block: int
    counts: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def packed_bytes(self) -> int:
        return self.block * math.prod(self.counts)

    @property
    def buffer_bytes(self) -> int:
        return self.offset + sum((c - 1) * s for c, s in zip(self.counts, self.strides)) + self.block

    def table(self) -> np.ndarray:
        dims = [v for pair in zip(self.counts, self.strides) for v in pair]
        return np.array([[0, self.offset, self.block, *dims]], dtype=np.int64)


def gpu_shapes(quick: bool = False) -> list[GpuShape]:
    shapes = []
    blocks = (1, 8, 64, 512) if quick else (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    for packed in (1 * KIB, 1 * MIB, 4 * MIB):
        for block in blocks:
            shapes.append(
                GpuShape(
                    "2-D vector, stride 512 B",
                    f"{_size(packed)} in {block} B blocks",
                    0,
                    block,
                    (packed // block,),
                    (512,),
                )
            )
    for packed in (1 * MIB, 64 * MIB) if quick else (1 * KIB, 64 * KIB, 1 * MIB, 16 * MIB, 64 * MIB):
        shapes.append(GpuShape("64 B blocks, stride 128 B", _size(packed), 0, 64, (packed // 64,), (128,)))
    n, row, plane = 512, 512 * 4, 512 * 512 * 4
    middle = n // 2
    shapes += [
        GpuShape("512^3 float cube face", "x = 256 (4 B blocks)", middle * 4, 4, (n, n), (plane, row)),
        GpuShape("512^3 float cube face", "y = 256 (2 KiB rows)", middle * row, row, (n,), (plane,)),
        GpuShape("512^3 float cube face", "z = 256 (one plane)", middle * plane, plane, (1,), (plane,)),
    ]
    return shapes


def _size(nbytes: int) -> str:
    return f"{nbytes // MIB} MiB" if nbytes >= MIB else f"{nbytes // KIB} KiB"


def _word(shape: GpuShape) -> int:
    """The widest element (up to 16 bytes) dividing the block, the strides and the offset."""
    g = math.gcd(shape.block, shape.offset, *shape.strides)
    return max(w for w in (1, 2, 4, 8, 16) if g % w == 0 and w <= 8) if g else 8


def _time_rounds(cupy: Any, callables: dict[str, Callable[[], None]], repeat: int, min_time_s: float) -> dict:
    """Median seconds per call of each callable; calls per round calibrated to ``min_time_s``."""
    start, end = cupy.cuda.Event(), cupy.cuda.Event()

    def timed(fn: Callable[[], None], calls: int) -> float:
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3 / calls

    calls = {}
    for name, fn in callables.items():
        once = max(timed(fn, 1), 1e-7)
        calls[name] = max(1, min(2000, math.ceil(min_time_s / once)))
        timed(fn, calls[name])  # warm-up round
    samples: dict[str, list[float]] = {name: [] for name in callables}
    names = list(callables)
    for r in range(repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order each round
            samples[name].append(timed(callables[name], calls[name]))
    return {
        name: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s)}
        for name, s in samples.items()
    }


def _measure_shape(cupy: Any, cuda: Any, shape: GpuShape, repeat: int, min_time_s: float) -> dict[str, Any]:
    plan = cuda.PackPlan(shape.table())
    word = _word(shape)
    data = cupy.empty(-(-shape.buffer_bytes // 8) * 8, dtype=cupy.uint8)
    data.view(cupy.uint32)[:] = cupy.arange(data.size // 4, dtype=cupy.uint32) * cupy.uint32(2654435761)
    packed = cupy.empty(shape.packed_bytes, dtype=cupy.uint8)
    scratch = cupy.empty_like(packed)
    typed = {1: cupy.uint8, 2: cupy.uint16, 4: cupy.uint32, 8: cupy.uint64}[word]
    strided = cupy.lib.stride_tricks.as_strided(
        data[shape.offset :].view(typed),
        shape=(*shape.counts, shape.block // word),
        strides=(*shape.strides, word),
    )
    contiguous = scratch.view(typed).reshape(strided.shape)
    stream = cupy.cuda.get_current_stream().ptr or 1
    origin, out, spare = data.data.ptr, packed.data.ptr, scratch.data.ptr

    plan.pack(origin, out, stream)
    cupy.copyto(contiguous, strided)
    if not bool((packed == scratch).all()):
        raise RuntimeError(f"{shape.group} {shape.label}: pycomm's packed bytes differ from cupy's copy")
    callables = {
        "pack": lambda: plan.pack(origin, out, stream),
        "unpack": lambda: plan.unpack(out, origin, stream),
        "cupy": lambda: cupy.copyto(contiguous, strided),
        "memcpy": lambda: cupy.cuda.runtime.memcpyAsync(spare, out, shape.packed_bytes, 3, stream),
    }
    timings = _time_rounds(cupy, callables, repeat, min_time_s)
    for timing in timings.values():
        timing["gbps"] = shape.packed_bytes / timing["median_s"] / 1e9
    memcpy = timings["memcpy"]["gbps"]
    return {
        "group": shape.group,
        "label": shape.label,
        "block": shape.block,
        "packed_bytes": shape.packed_bytes,
        "buffer_bytes": shape.buffer_bytes,
        "vector_width": plan.vector_width(origin, out),
        "cupy_element_bytes": word,
        "timings": timings,
        "pack_of_memcpy": timings["pack"]["gbps"] / memcpy,
        "unpack_of_memcpy": timings["unpack"]["gbps"] / memcpy,
        "pack_over_cupy": timings["pack"]["gbps"] / timings["cupy"]["gbps"],
    }


def run_gpu_pack_benchmark(
    quick: bool = False,
    repeat: int = 7,
    min_time_s: float = 0.002,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measures every shape of :func:`gpu_shapes` on the current GPU; returns a JSON-ready dict."""
    from pycomm._deps import require_cupy
    from pycomm.datatype import _gpu

    cuda = _gpu._cuda("the GPU pack benchmark")
    cupy = require_cupy("the GPU pack benchmark")
    properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    cases = []
    for shape in gpu_shapes(quick):
        cases.append(_measure_shape(cupy, cuda, shape, repeat, min_time_s))
        cupy.get_default_memory_pool().free_all_blocks()
        if progress is not None:
            case = cases[-1]
            progress(
                f"{shape.group}: {shape.label}: pack {case['timings']['pack']['gbps']:.1f} GB/s, "
                f"{case['pack_of_memcpy']:.2f} of memcpy"
            )
    name = properties["name"]
    return {
        "device": name.decode() if isinstance(name, bytes) else str(name),
        "runtime": cuda.runtime_status(),
        "settings": {"quick": quick, "repeat": repeat, "min_time_s": min_time_s},
        "cases": cases,
    }


def format_results(results: dict[str, Any]) -> str:
    headers = [
        "shape",
        "case",
        "width",
        "pack GB/s",
        "unpack GB/s",
        "cupy GB/s",
        "memcpy GB/s",
        "pack of memcpy",
        "unpack of memcpy",
        "pack / cupy",
    ]
    rows = []
    for case in results["cases"]:
        t = case["timings"]
        rows.append(
            [
                case["group"],
                case["label"],
                case["vector_width"],
                t["pack"]["gbps"],
                t["unpack"]["gbps"],
                t["cupy"]["gbps"],
                t["memcpy"]["gbps"],
                case["pack_of_memcpy"],
                case["unpack_of_memcpy"],
                case["pack_over_cupy"],
            ]
        )
    widths = [max(len(_cell(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(
            _cell(v).ljust(w) if i < 2 else _cell(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths))
        )
        for r in [headers, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    below = [
        c
        for c in results["cases"]
        if c["block"] >= 64 and min(c["pack_of_memcpy"], c["unpack_of_memcpy"]) < 0.8
    ]
    summary = (
        f"{len(below)} case(s) with blocks >= 64 B below 0.8 of memcpy"
        if below
        else "every case with blocks >= 64 B reaches 0.8 of memcpy"
    )
    return f"GPU pack on {results['device']}\n" + "\n".join(lines) + "\n" + summary


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer block and packed sizes")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--min-time-ms", type=float, default=2.0)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    from pycomm.errors import PycommError

    try:
        results = run_gpu_pack_benchmark(
            args.quick, args.repeat, args.min_time_ms / 1e3, progress=lambda line: print(line, flush=True)
        )
    except PycommError as error:
        print(f"pack_gpu: error: {error}", file=sys.stderr)
        return 2
    print(format_results(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
