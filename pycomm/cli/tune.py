"""``pycomm tune``: measures the GPU send methods of pycomm.datatype on this machine's GPU and caches
the send model (see :mod:`pycomm.datatype.send_model`) that later sends use to pick a method.

Each cell of the grid is a 2-D vector whose blocks of the given size lie twice their size apart,
packed into ``size`` bytes; each method is timed from the launch of the pack kernel until its bytes
are where MPI would read them (device memory, mapped host memory, pinned host memory after the copy),
as the send path runs it: launch, copy, synchronise. Figures are medians of ``--repeat`` runs, after
one warm-up run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pycomm._deps import require_cupy
from pycomm.cli.output import add_json_option, format_table, write_json
from pycomm.datatype import send_model
from pycomm.errors import InvalidArgumentError

QUICK_SIZES = (1 << 12, 1 << 16, 1 << 20, 1 << 24)
QUICK_BLOCKS = (4, 64, 1024)
DEFAULT_TUNE_SIZES = tuple(1 << k for k in range(12, 27, 2))  # 4 KiB .. 64 MiB
DEFAULT_TUNE_BLOCKS = (1, 4, 16, 64, 256, 1024, 4096)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("tune", help="measure the datatype send-method model on this GPU")
    parser.add_argument("--sizes", help="packed sizes in bytes, comma-separated (default 4 KiB .. 64 MiB)")
    parser.add_argument("--blocks", help="block sizes in bytes, comma-separated (default 1 .. 4096)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per cell (default 7)")
    parser.add_argument("--quick", action="store_true", help="a small grid (4 sizes x 3 blocks, 3 runs)")
    parser.add_argument("--no-save", action="store_true", help="measure and print, but keep the cache as is")
    add_json_option(parser)
    parser.set_defaults(run=run)


def _integers(text: str | None, default: tuple[int, ...], role: str) -> list[int]:
    if text is None:
        return list(default)
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InvalidArgumentError(f"--{role}: expected comma-separated integers, got '{text}'") from None
    if not values or values[0] < 1:
        raise InvalidArgumentError(f"--{role}: values must be >= 1")
    return values


def _median_seconds(run_once: Callable[[], None], repeat: int) -> float:
    run_once()  # warm-up: first-touch of pages, the table upload
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run_once()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _vector_table(packed_bytes: int, block: int) -> np.ndarray:
    blocks = max(1, packed_bytes // block)
    return np.array([[0, 0, block, blocks, 2 * block]], dtype=np.int64)


def measure(sizes: list[int], blocks: list[int], repeat: int) -> send_model.SendModel:
    """Times the three methods on every (block, size) cell on device 0 of the CUDA runtime."""
    from pycomm.datatype import _gpu

    cuda = _gpu._cuda("pycomm tune")
    cupy = require_cupy("pycomm tune")
    stream = 1  # the legacy default stream, as a send on a fresh process uses
    seconds: dict[str, list[list[float]]] = {method: [] for method in send_model.METHODS}
    pinned = cuda.PinnedHostBuffer(max(sizes))
    packed = cupy.empty(max(sizes), dtype=cupy.uint8)
    for block in blocks:
        rows: dict[str, list[float]] = {method: [] for method in send_model.METHODS}
        for size in sizes:
            plan = cuda.PackPlan(_vector_table(size, block))
            data = cupy.zeros(max(1, plan.span[1]), dtype=cupy.uint8)
            origin, out = data.data.ptr, packed.data.ptr
            nbytes = plan.packed_bytes

            def device(plan: Any = plan, origin: int = origin, out: int = out) -> None:
                plan.pack(origin, out, stream)
                cuda.synchronize(stream)

            def one_shot(plan: Any = plan, origin: int = origin) -> None:
                plan.pack(origin, pinned.device_pointer, stream)
                cuda.synchronize(stream)

            def staged(plan: Any = plan, origin: int = origin, out: int = out, nbytes: int = nbytes) -> None:
                plan.pack(origin, out, stream)
                cuda.copy_async(pinned.host_pointer, out, nbytes, stream)
                cuda.synchronize(stream)

            for method, run_once in (("device", device), ("one_shot", one_shot), ("staged", staged)):
                rows[method].append(_median_seconds(run_once, repeat))
            del data
        for method in send_model.METHODS:
            seconds[method].append(rows[method])
    return send_model.SendModel(sizes=sizes, blocks=blocks, seconds=seconds, source="measured")


def run(args: argparse.Namespace) -> int:
    sizes = _integers(args.sizes, QUICK_SIZES if args.quick else DEFAULT_TUNE_SIZES, "sizes")
    blocks = _integers(args.blocks, QUICK_BLOCKS if args.quick else DEFAULT_TUNE_BLOCKS, "blocks")
    repeat = 3 if args.quick and args.repeat == 7 else args.repeat
    if repeat < 1:
        raise InvalidArgumentError(f"--repeat must be >= 1, got {repeat}")
    from pycomm.datatype import _gpu

    _gpu._cuda("pycomm tune")  # a clear error on a machine without a GPU, before anything else
    key = send_model.device_key()
    model = measure(sizes, blocks, repeat)
    model.device = key
    saved = None if args.no_save else send_model.save_model(model, key)
    aware = send_model.cuda_aware_mpi()
    rows = []
    for b, block in enumerate(blocks):
        for s, size in enumerate(sizes):
            times = [model.seconds[method][b][s] * 1e6 for method in send_model.METHODS]
            best = model.choose(size, block, send_model.available_methods(aware))
            rows.append([size, block, *times, best])
    if args.json:
        write_json(
            args.json,
            {
                "device": key,
                "cache": None if saved is None else str(saved),
                "cuda_aware_mpi": aware,
                "model": model.to_json(),
            },
        )
        if args.json == "-":
            return 0
    print(f"pycomm tune: {key}; CUDA-aware MPI: {'yes' if aware else 'no (device method not chosen)'}")
    headers = ["packed bytes", "block", "device us", "one_shot us", "staged us", "chosen"]
    print(format_table(headers, rows))
    print("device us: the pack kernel alone; the chosen method adds the modelled cost of a CUDA-aware MPI")
    print(f"model saved to {saved}" if saved else "model not saved (--no-save)")
    return 0
