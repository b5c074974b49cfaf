"""``pycomm bench torch``: backend "pycomm" against gloo through the ``torch.distributed`` API.

For each world size, one ``mpiexec -n N`` job (through :func:`pycomm.testing.run_mpi`): every rank
imports :mod:`pycomm.torch`, initialises "pycomm" as the default group, makes a gloo group over the
same ranks beside it, and measures both in the same rounds:

- ``dist.all_reduce`` of float32 tensors (sum, in place) at each size. Every timed call is checked:
  the tensors hold integer-valued inputs that differ per rank (:func:`.allreduce_peer.peer_input`),
  so the sum is exact in any order, and each result is compared element by element with it; a wrong
  element on any rank stops the run. Refilling and checking stay out of the timing: a batch is a
  barrier, then up to ``POOL_BYTES`` of tensors all-reduced back to back, then the checks.
- a DDP training step: ``LAYERS`` linear layers of ``width`` x ``width`` with ReLU between them,
  batch ``batch``, MSE loss, SGD; zero_grad, forward, backward (during which DDP all-reduces the
  gradients, bucket by bucket), optimizer step. Each backend trains its own copy, built from the
  same seed and fed the same data. Afterwards each copy must hold the same parameters on every rank
  (DDP's invariant; the run stops otherwise), and the two copies, brought to the same number of
  steps, are compared with each other (equal bits at 2 ranks, where a sum of two gradients has one
  order; float32 rounding apart beyond, since MPI and gloo add in different orders).

Each callable runs once, then is calibrated so that a repetition lasts at least ``min_time_s`` (a
DDP repetition ``DDP_MIN_TIME_FACTOR`` times that), with the same number of calls on every rank,
from the slowest rank's time. One warm-up round and ``repeat`` rounds follow, in which pycomm and
gloo run one repetition each, in an order that rotates every round. A batch's time is the slowest
rank's (the collective is done when the last rank is); figures are medians over the repetitions,
and ratios compare medians of the same run.

Each rank runs torch on one thread. With more ranks than cores the ranks take turns on the CPUs, so
times then measure scheduling as much as communication.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pycomm.errors import InvalidArgumentError

from .allreduce import BenchmarkFailed, bus_bytes
from .allreduce_peer import expected_sum, peer_input
from .harness import Measurement, Settings, check_float32_sizes, check_process_counts
from .units import format_size

__all__ = [
    "BACKENDS",
    "DEFAULT_RANKS",
    "DEFAULT_SIZES",
    "DEFINITIONS",
    "QUICK_SIZES",
    "TorchConfig",
    "format_report",
    "measure_on_ranks",
    "run_torch",
]

KIB = 1 << 10
MIB = 1 << 20

BACKENDS = ("pycomm", "gloo")
LABELS = {
    "pycomm": "dist.all_reduce on the default group, backend 'pycomm' (MPI engine)",
    "gloo": "dist.all_reduce on dist.new_group(backend='gloo')",
}
DEFAULT_RANKS = (2, 4)
DEFAULT_SIZES = (4 * KIB, 64 * KIB, 1 * MIB, 16 * MIB)
QUICK_SIZES = (4 * KIB, 64 * KIB)
DEFAULT_REPEAT = 7
QUICK_REPEAT = 2
DEFAULT_MIN_TIME_S = 0.02
QUICK_MIN_TIME_S = 0.002
DEFAULT_WIDTH = 1024
QUICK_WIDTH = 64
DEFAULT_BATCH = 32
LAYERS = 3
# A DDP step takes tens of milliseconds: its repetitions last this many times min_time_s, so that
# each holds several steps.
DDP_MIN_TIME_FACTOR = 5
LEARNING_RATE = 0.01
MAX_RANKS = 16
# Tensors all-reduced back to back between two rounds of refilling and checking: enough for a
# repetition of small sizes to be one batch, small enough that 4 ranks x 2 backends fit easily.
POOL_BYTES = 32 * MIB
# Starting torch on every rank of a crowded machine takes seconds; the measurements take the rest.
JOB_TIMEOUT_S = 600.0

DEFINITIONS = {
    "size_bytes": "bytes of the float32 tensor each rank all-reduces (sum, in place)",
    "bus_bytes": "2 (n - 1) / n x size_bytes for n ranks (the usual bus-bandwidth convention)",
    "seconds_per_call": "one entry per measured repetition: the sum over its batches of the slowest "
    "rank's time, divided by the calls (or DDP steps) of the repetition",
    "median_s": "median over the repetitions of seconds_per_call (min_s, max_s, q1_s, q3_s likewise); "
    "latency_us = median_s x 1e6",
    "gbps": "bus_bytes / median_s / 1e9 (bus bandwidth)",
    "ratio_pycomm_over_gloo": "all_reduce: pycomm GB/s / gloo GB/s; DDP: gloo step time / pycomm step "
    "time; medians of the same run with interleaved repetitions; above 1 pycomm is faster",
    "faster": "the backend with the lower median time",
    "verified": "every all_reduce that ran (calibration, warm-up and measured) compared element by "
    "element with the exact sum of the ranks' integer-valued inputs, on every rank",
    "ddp_step": "zero_grad, forward, MSE loss, backward (DDP all-reduces the gradients), SGD step; "
    "one model copy per backend from the same seed, the same batch on a rank every step",
    "same_parameters_on_every_rank": "per backend: every rank holds bitwise the same parameters after "
    "the measurements (checked by a 64-bit content hash)",
    "max_abs_difference": "largest |pycomm copy - gloo copy| over the parameters, after both took the "
    "same number of steps",
}

TABLE_NOTES = (
    "all_reduce: float32 sum in place; us: median latency (slowest rank); GB/s: bus bandwidth = "
    "2(n-1)/n x size / median time (1 GB = 1e9 B); every result checked exactly",
    "pycomm/gloo: pycomm speed over gloo's from medians of the same run (above 1: pycomm faster)",
)


@dataclass(frozen=True)
class TorchConfig:
    """What one ``pycomm bench torch`` run measures."""

    ranks: tuple[int, ...] = DEFAULT_RANKS
    sizes: tuple[int, ...] = DEFAULT_SIZES
    repeat: int = DEFAULT_REPEAT
    warmup: int = 1
    min_time_s: float = DEFAULT_MIN_TIME_S
    width: int = DEFAULT_WIDTH
    batch: int = DEFAULT_BATCH
    quick: bool = False

    def __post_init__(self) -> None:
        check_process_counts(self.ranks, "world sizes", MAX_RANKS)
        check_float32_sizes(self.sizes)
        for name, value in (("width", self.width), ("batch", self.batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(
                    f"the DDP model's {name} must be a positive whole number, got {value}"
                )
        Settings(self.repeat, self.warmup, self.min_time_s)  # checks repeat, warmup and min_time_s

    @property
    def settings(self) -> Settings:
        return Settings(self.repeat, self.warmup, self.min_time_s)

    def to_json(self) -> dict[str, Any]:
        return {
            "ranks": list(self.ranks),
            "sizes": list(self.sizes),
            "repeat": self.repeat,
            "warmup": self.warmup,
            "min_time_ms": self.min_time_s * 1000,
            "ddp_min_time_ms": DDP_MIN_TIME_FACTOR * self.min_time_s * 1000,
            "width": self.width,
            "batch": self.batch,
            "layers": LAYERS,
            "learning_rate": LEARNING_RATE,
            "quick": self.quick,
            "dtype": "float32",
            "op": "sum",
        }


# -- run on every rank -----------------------------------------------------------------------------


def _calibrate(timer: Callable[[int], float], min_time_s: float) -> int:
    """Calls per repetition so that the slowest rank's repetition lasts at least ``min_time_s``; the
    timer returns the same figure on every rank, so every rank arrives at the same count."""
    # A first call pays for buffers, connections and DDP's bucket set-up; counted, it would make
    # every repetition a single call.
    timer(1)
    calls = 1
    while True:
        elapsed = timer(calls)
        if elapsed >= min_time_s:
            return calls
        per_call = max(elapsed / calls, 1e-9)
        calls = max(calls + 1, min(calls * 100, math.ceil(1.2 * min_time_s / per_call)))


def _interleaved(
    timers: dict[str, Callable[[int], float]], calls: dict[str, int], settings: Settings
) -> dict[str, list[float]]:
    """Seconds per call of each timer: ``warmup`` discarded rounds, then ``repeat`` measured ones,
    one repetition of every timer a round, in an order that rotates each round."""
    names = list(timers)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(settings.warmup + settings.repeat):
        for offset in range(len(names)):
            name = names[(round_index + offset) % len(names)]
            elapsed = timers[name](calls[name]) / calls[name]
            if round_index >= settings.warmup:
                seconds[name].append(elapsed)
    return seconds


class _CheckedAllReduce:
    """Timed ``dist.all_reduce`` calls of one size on one group, each result checked."""

    def __init__(self, world: Any, name: str, group: Any, size: int) -> None:
        import torch

        count = size // 4
        self._world = world
        self._name = name
        self._group = group
        self._input = torch.from_numpy(peer_input(world.rank, count))
        self._expected = torch.from_numpy(expected_sum(world.size, count))
        self._pool_length = max(1, POOL_BYTES // size)
        self._buffers: list[Any] = []
        self.checked_calls = 0

    def __call__(self, calls: int) -> float:
        """Runs ``calls`` checked all-reduces; returns the sum of the slowest rank's batch times."""
        import torch
        import torch.distributed as dist

        slowest = 0.0
        done = 0
        while done < calls:
            batch = min(calls - done, self._pool_length)
            while len(self._buffers) < batch:
                self._buffers.append(torch.empty_like(self._input))
            buffers = self._buffers[:batch]
            for buffer in buffers:
                buffer.copy_(self._input)
            self._world.Barrier()
            start = time.perf_counter()
            for buffer in buffers:
                dist.all_reduce(buffer, group=self._group)
            elapsed = time.perf_counter() - start
            wrong = sum(
                int((buffer != self._expected).sum())
                for buffer in buffers
                if not torch.equal(buffer, self._expected)
            )
            reports = self._world.allgather((elapsed, wrong))
            if any(count for _, count in reports):
                raise BenchmarkFailed(
                    f"dist.all_reduce on backend {self._name!r} returned wrong sums: "
                    + ", ".join(
                        f"rank {rank}: {count} wrong element(s)" for rank, (_, count) in enumerate(reports)
                    )
                )
            slowest += max(seconds for seconds, _ in reports)
            self.checked_calls += batch
            done += batch
        return slowest


class _Trainer:
    """One backend's DDP copy of the model, its optimizer and this rank's batch; counts its steps."""

    def __init__(self, world: Any, group: Any, width: int, batch: int) -> None:
        import torch
        from torch.nn.parallel import DistributedDataParallel

        torch.manual_seed(0)
        layers: list[Any] = []
        for index in range(LAYERS):
            if index:
                layers.append(torch.nn.ReLU())
            layers.append(torch.nn.Linear(width, width))
        self._world = world
        self.model = DistributedDataParallel(torch.nn.Sequential(*layers), process_group=group)
        self._optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE)
        data = torch.Generator().manual_seed(1 + world.rank)
        self._inputs = torch.randn(batch, width, generator=data)
        self._targets = torch.randn(batch, width, generator=data)
        self.steps = 0

    def step(self) -> None:
        import torch

        self._optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(self.model(self._inputs), self._targets)
        loss.backward()
        self._optimizer.step()
        self.steps += 1

    def __call__(self, calls: int) -> float:
        """Runs ``calls`` steps after a barrier; returns the slowest rank's seconds."""
        self._world.Barrier()
        start = time.perf_counter()
        for _ in range(calls):
            self.step()
        return max(self._world.allgather(time.perf_counter() - start))

    def parameters(self) -> Any:
        import torch

        return torch.cat([parameter.detach().reshape(-1) for parameter in self.model.parameters()])

    def same_on_every_rank(self) -> bool:
        from pycomm import kernels

        digest = kernels.hash64(self.parameters().numpy())
        return len(set(self._world.allgather(digest))) == 1


def _all_reduce_row(world: Any, groups: dict[str, Any], size: int, settings: Settings) -> dict[str, Any]:
    timers = {name: _CheckedAllReduce(world, name, group, size) for name, group in groups.items()}
    calls = {name: _calibrate(timer, settings.min_time_s) for name, timer in timers.items()}
    seconds = _interleaved(timers, calls, settings)
    return {
        "size_bytes": size,
        "seconds": seconds,
        "calls": calls,
        "checked_calls": {name: timer.checked_calls for name, timer in timers.items()},
    }


def _ddp_row(
    world: Any, groups: dict[str, Any], width: int, batch: int, settings: Settings
) -> dict[str, Any]:
    trainers = {name: _Trainer(world, group, width, batch) for name, group in groups.items()}
    # Both copies take the same steps a repetition, so they can be compared after the run.
    min_time_s = DDP_MIN_TIME_FACTOR * settings.min_time_s
    steps = max(_calibrate(trainer, min_time_s) for trainer in trainers.values())
    seconds = _interleaved(trainers, dict.fromkeys(trainers, steps), settings)
    total = max(trainer.steps for trainer in trainers.values())
    for trainer in trainers.values():
        while trainer.steps < total:
            trainer.step()
    same = {name: trainer.same_on_every_rank() for name, trainer in trainers.items()}
    if not all(same.values()):
        raise BenchmarkFailed(
            "DDP left different parameters on different ranks with backend(s) "
            + ", ".join(name for name, ok in same.items() if not ok)
        )
    pycomm, gloo = (trainers[name].parameters() for name in BACKENDS)
    return {
        "seconds": seconds,
        "steps_per_repeat": steps,
        "steps": total,
        "parameters": pycomm.numel(),
        "same_parameters_on_every_rank": same,
        "max_abs_difference": float((pycomm - gloo).abs().max()),
    }


def measure_on_ranks(
    sizes: Sequence[int], repeat: int, warmup: int, min_time_s: float, width: int, batch: int
) -> dict[str, Any] | None:
    """Runs on every rank of the job; rank 0 returns the timings, the others None."""
    import torch
    import torch.distributed as dist
    from mpi4py import MPI

    import pycomm.torch  # noqa: F401  (registers the backend; sets torch's rendezvous from MPI)

    torch.set_num_threads(1)
    world = MPI.COMM_WORLD
    settings = Settings(repeat, warmup, min_time_s)
    dist.init_process_group("pycomm")
    try:
        groups = {"pycomm": dist.group.WORLD, "gloo": dist.new_group(backend="gloo")}
        all_reduce = [_all_reduce_row(world, groups, size, settings) for size in sizes]
        ddp = _ddp_row(world, groups, width, batch, settings)
    finally:
        dist.destroy_process_group()
    if world.rank != 0:
        return None
    return {
        "ranks": world.size,
        "torch": torch.__version__,
        "mpi": " ".join(MPI.Get_library_version().splitlines()[0].split()),
        "torch_threads": torch.get_num_threads(),
        "all_reduce": all_reduce,
        "ddp": ddp,
    }


# -- this process ----------------------------------------------------------------------------------


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _faster(ratio: float) -> str:
    if ratio == 1:
        return "tie"
    return "pycomm" if ratio > 1 else "gloo"


def _step_timing(seconds: Sequence[float], steps: int) -> dict[str, Any]:
    if len(seconds) > 1:
        q1, _, q3 = statistics.quantiles(seconds, n=4, method="inclusive")
    else:
        q1 = q3 = seconds[0]
    return {
        "calls_per_repeat": steps,
        "seconds_per_call": list(seconds),
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "q1_s": q1,
        "q3_s": q3,
    }


def _all_reduce_rows(ranks: int, measured: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for row in measured:
        size = row["size_bytes"]
        results = {}
        for name in BACKENDS:
            measurement = Measurement(
                LABELS[name], bus_bytes(size, ranks), row["calls"][name], tuple(row["seconds"][name])
            )
            results[name] = {
                **measurement.to_json(),
                "latency_us": measurement.median_s * 1e6,
                "verified": {"ok": True, "checked_calls": row["checked_calls"][name], "ranks": ranks},
            }
        ratio = results["pycomm"]["gbps"] / results["gloo"]["gbps"]
        rows.append(
            {
                "ranks": ranks,
                "size_bytes": size,
                "elements": size // 4,
                "bus_bytes": bus_bytes(size, ranks),
                "results": results,
                "ratio_pycomm_over_gloo": ratio,
                "faster": _faster(ratio),
            }
        )
    return rows


def _ddp_row_report(ranks: int, measured: dict[str, Any], config: TorchConfig) -> dict[str, Any]:
    results = {
        name: _step_timing(measured["seconds"][name], measured["steps_per_repeat"]) for name in BACKENDS
    }
    ratio = results["gloo"]["median_s"] / results["pycomm"]["median_s"]
    return {
        "ranks": ranks,
        "model": {
            "layers": LAYERS,
            "width": config.width,
            "batch": config.batch,
            "parameters": measured["parameters"],
            "gradient_bytes": 4 * measured["parameters"],
            "optimizer": f"SGD(lr={LEARNING_RATE})",
            "loss": "mse",
        },
        "results": results,
        "ratio_pycomm_over_gloo": ratio,
        "faster": _faster(ratio),
        "steps": measured["steps"],
        "same_parameters_on_every_rank": measured["same_parameters_on_every_rank"],
        "max_abs_difference": measured["max_abs_difference"],
    }


def run_torch(config: TorchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One ``mpiexec`` job per world size; returns the document that ``--json`` writes."""
    from pycomm._deps import require_mpi4py, require_torch
    from pycomm.testing import run_mpi

    from .machine import machine_info

    require_torch("pycomm bench torch")
    require_mpi4py("pycomm bench torch")
    report = progress or (lambda line: None)
    began = time.perf_counter()
    cores = _usable_cores()
    settings = config.settings
    all_reduce: list[dict[str, Any]] = []
    ddp: list[dict[str, Any]] = []
    versions: dict[str, Any] = {}
    for ranks in config.ranks:
        report(
            f"mpiexec -n {ranks}: dist.all_reduce at {', '.join(map(format_size, config.sizes))} and a DDP "
            f"step (width {config.width}, batch {config.batch}), pycomm and gloo interleaved"
        )
        job = run_mpi(
            measure_on_ranks,
            ranks,
            args=(
                list(config.sizes),
                settings.repeat,
                settings.warmup,
                settings.min_time_s,
                config.width,
                config.batch,
            ),
            timeout=JOB_TIMEOUT_S,
        )
        measured = job.values[0]
        versions = {
            "torch": measured["torch"],
            "mpi": measured["mpi"],
            "torch_threads": measured["torch_threads"],
        }
        all_reduce += _all_reduce_rows(ranks, measured["all_reduce"])
        ddp.append(_ddp_row_report(ranks, measured["ddp"], config))
    oversubscribed = [ranks for ranks in config.ranks if ranks > cores]
    return {
        "benchmark": "torch",
        "machine": machine_info(),
        "settings": settings.to_json(),
        "options": config.to_json(),
        "versions": versions,
        "systems": LABELS,
        "usable_cores": cores,
        "oversubscribed": oversubscribed,
        "note": (
            f"{', '.join(map(str, oversubscribed))} ranks on {cores} core(s): oversubscribed, the ranks take "
            "turns on the CPUs, so those times measure scheduling as much as communication"
            if oversubscribed
            else f"at most {max(config.ranks)} ranks on {cores} cores"
        ),
        "definitions": DEFINITIONS,
        "all_reduce": all_reduce,
        "ddp": ddp,
        "seconds": time.perf_counter() - began,
    }


def format_report(document: dict[str, Any]) -> str:
    """The printed tables: all_reduce rows (latency, bus bandwidth, ratio, winner), then DDP steps."""
    from pycomm.cli.output import format_table

    machine, settings, versions = document["machine"], document["settings"], document["versions"]
    options = document["options"]
    lines = [
        f"pycomm {machine['pycomm']} bench torch: {machine['cpu_model']}, {document['usable_cores']} usable "
        f"core(s), torch {versions['torch']} ({versions['torch_threads']} thread a rank), "
        f"{versions['mpi']}, {machine['date']}",
        f"{settings['repeat']} repetitions of >= {settings['min_time_s'] * 1000:g} ms (DDP: "
        f"{options['ddp_min_time_ms']:g} ms) per backend and row, interleaved; medians; "
        f"{document['seconds']:.0f} s in all",
        f"NOTE: {document['note']}" if document["oversubscribed"] else document["note"],
        *TABLE_NOTES,
        "",
    ]
    rows = []
    for row in document["all_reduce"]:
        pycomm, gloo = (row["results"][name] for name in BACKENDS)
        rows.append(
            [
                row["ranks"],
                format_size(row["size_bytes"]),
                pycomm["latency_us"],
                pycomm["gbps"],
                gloo["latency_us"],
                gloo["gbps"],
                row["ratio_pycomm_over_gloo"],
                row["faster"],
            ]
        )
    headers = ["ranks", "size", "pycomm us", "pycomm GB/s", "gloo us", "gloo GB/s", "pycomm/gloo", "faster"]
    lines += [format_table(headers, rows), ""]
    lines.append(
        f"DDP step: {options['layers']} x Linear({options['width']}, {options['width']}) with ReLU, batch "
        f"{options['batch']}, MSE loss, SGD(lr={options['learning_rate']})"
    )
    rows = []
    for row in document["ddp"]:
        pycomm, gloo = (row["results"][name] for name in BACKENDS)
        difference = row["max_abs_difference"]
        rows.append(
            [
                row["ranks"],
                pycomm["median_s"] * 1e3,
                gloo["median_s"] * 1e3,
                row["ratio_pycomm_over_gloo"],
                row["faster"],
                "equal bits" if difference == 0 else f"max |diff| {difference:.2g}",
            ]
        )
    headers = ["ranks", "pycomm ms", "gloo ms", "pycomm/gloo", "faster", "pycomm params vs gloo's"]
    lines.append(format_table(headers, rows))
    every = [*document["all_reduce"], *document["ddp"]]
    wins = sum(row["faster"] == "pycomm" for row in every)
    lines += ["", f"pycomm faster in {wins} of {len(every)} rows"]
    return "\n".join(lines)
