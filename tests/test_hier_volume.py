"""The bytes HierComm sends per level equal pycomm.hier._volume's formulas, and a ZeroPlan's bytes per
level are the sum of those formulas over its collectives: so the plan's per-level figures (ZeRO-3's
3M against ZeRO++'s 0.75M across nodes among them) are what HierComm really sends.

The MPI test runs every collective kind (plain and quantized all-gather, reduce-scatter and
all-reduce) on a fake 2 x 2 x 2 topology in one launch, at sizes that divide the group and sizes that
do not, over all levels and over a subset, then every collective of a few small plans; the ranks
return their counters and the comparisons run here.
"""

from __future__ import annotations

import numpy as np
import pytest

from pycomm.hier import Topology, ZeroPlan, _volume
from pycomm.hier.plan import PHASES
from pycomm.testing import run_mpi

TWO_BY_TWO_BY_TWO = [("gcd", 2), ("gpu", 2), ("node", 2)]
BLOCK = 64
# 8 * 64 divides the group and the quantization blocks; the others leave padding at some step.
COUNTS = (8 * 64, 8 * 64 + 3, 5, 1001)
LEVEL_CHOICES = ((0, 1, 2), (1, 2), (0, 2))
KINDS = (
    ("all_gather", None),
    ("all_gather", "int8"),
    ("all_gather", "int4"),
    ("reduce_scatter", None),
    ("reduce_scatter", "int8"),
    ("reduce_scatter", "int4"),
    ("all_reduce", None),
    ("all_reduce", "int8"),
    ("all_reduce", "int4"),
)


def _plans() -> list[ZeroPlan]:
    topology = Topology.from_levels(TWO_BY_TWO_BY_TWO)
    plans = [
        ZeroPlan(topology, n, scheme, quantization_block=BLOCK)
        for n in (8 * 1000, 8 * 1000 + 5)
        for scheme in ("zero3", "zeropp", "mics", "hsdp", "frontier3")
    ]
    # A quantized all-reduce above the optimizer shard, which no preset has.
    custom = {
        "forward_gather": 0,
        "backward_gather": 0,
        "gradient_reduce": (2, "int4"),
        "optimizer_shard": 1,
        "parameter_update": "int8",
    }
    plans.append(ZeroPlan(topology, 8 * 1000 + 3, custom, quantization_block=BLOCK))
    return plans


def _cases() -> list[tuple[str, str | None, tuple[int, ...], int, str]]:
    """(operation, quantizer, levels, count, dtype): every kind directly, then every plan's transfers."""
    topology = Topology.from_levels(TWO_BY_TWO_BY_TWO)
    cases = [
        (operation, quantizer, levels, count, "float32")
        for operation, quantizer in KINDS
        for levels in LEVEL_CHOICES
        for count in COUNTS
    ]
    for plan in _plans():
        for transfer in plan.transfers():
            cases.append(
                (transfer.operation, transfer.quantizer, transfer.levels, transfer.count(topology), "float16")
            )
    return cases


# -- run on every rank -----------------------------------------------------------------------------


def measured_bytes(levels: list, cases: list, block_size: int) -> list[dict[str, int]]:
    """Each case's sent bytes per level; a quantized all-reduce is qgZ, then a quantized all-gather."""
    from mpi4py import MPI

    from pycomm.hier.comm import HierComm

    results = []
    with HierComm(MPI.COMM_WORLD, Topology.from_levels(levels), block_size=block_size) as hc:
        for operation, quantizer, selected, count, dtype in cases:
            data = np.linspace(-1, 1, count).astype(dtype)
            hc.reset_stats()
            if operation == "all_gather":
                hc.all_gather(data, levels=selected, quantization=quantizer)
            elif operation == "reduce_scatter":
                hc.reduce_scatter(data, levels=selected, quantization=quantizer)
            elif quantizer is None:
                hc.all_reduce(data, levels=selected)
            else:
                chunk = hc.reduce_scatter(data, levels=selected, quantization=quantizer)
                hc.all_gather(chunk, levels=selected, quantization=quantizer)
            results.append({name: counters["sent_bytes"] for name, counters in hc.stats.items()})
    return results


# -- the tests -------------------------------------------------------------------------------------


def _expected(case: tuple, fanouts: list[int]) -> list[float]:
    operation, quantizer, levels, count, dtype = case
    sent = _volume.sent_per_level(
        operation, [fanouts[i] for i in levels], count, np.dtype(dtype).itemsize, quantizer, BLOCK
    )
    result = [0.0] * len(fanouts)
    for level, volume in zip(levels, sent):
        result[level] = volume
    return result


@pytest.mark.mpi
@pytest.mark.slow
def test_hiercomm_sends_what_the_formulas_say() -> None:
    cases = _cases()
    result = run_mpi(measured_bytes, 8, args=(TWO_BY_TWO_BY_TWO, cases, BLOCK), timeout=240)
    names = [name for name, _ in TWO_BY_TWO_BY_TWO]
    fanouts = [fanout for _, fanout in TWO_BY_TWO_BY_TWO]
    mismatches = []
    for rank, value in enumerate(result.values):
        assert len(value) == len(cases)
        for case, stats in zip(cases, value):
            measured = [stats[name] for name in names]
            if measured != _expected(case, fanouts):
                mismatches.append((rank, case, measured, _expected(case, fanouts)))
    assert not mismatches, mismatches[:5]
    # The cases did send across every level (a formula of zeros would match nothing sent).
    assert all(any(stats[name] for stats in result.values[0]) for name in names)


def test_plan_bytes_per_level_are_the_sum_over_its_collectives() -> None:
    topology = Topology.from_levels(TWO_BY_TWO_BY_TWO)
    fanouts = [fanout for _, fanout in TWO_BY_TWO_BY_TWO]
    for plan in _plans():
        micro_steps = 3
        expected = [dict.fromkeys(PHASES, 0.0) for _ in fanouts]
        for transfer in plan.transfers():
            case = (transfer.operation, transfer.quantizer, transfer.levels, transfer.count(topology), "f2")
            times = micro_steps if transfer.per_micro_step else 1
            for level, sent in enumerate(_expected(case, fanouts)):
                expected[level][transfer.phase] += times * sent
        rows = plan.bytes_per_level(micro_steps)
        for row, phases in zip(rows, expected):
            assert {phase: row[phase] for phase in PHASES} == phases, plan
            assert row["total"] == sum(phases.values())


def test_formulas_on_even_sizes_are_the_ring_volumes() -> None:
    # n elements of w bytes over fanouts (2, 2, 2): level i carries n * w * (f_i - 1) / (f_0 ... f_i).
    n, w = 8 * 64, 4
    ring = [n * w / 2, n * w / 4, n * w / 8]
    assert _volume.reduce_scatter([2, 2, 2], n, w) == ring
    assert _volume.all_gather([2, 2, 2], n // 8, w) == ring
    assert _volume.all_reduce([2, 2, 2], n, w) == [2 * v for v in ring]
    # qwZ: the int8 record is the shard plus a float32 scale per block.
    assert _volume.quantized_all_gather([2, 2, 2], 64, "int8", 64) == [4 * 68, 2 * 68, 68]
    # qgZ: hop 1 sends each of the 3 node-local peers one row of 2 chunks; hop 2 one chunk across.
    chunk = 64 // 2 + 4  # int4 data of 64 elements and one scale
    assert _volume.quantized_reduce_scatter([2, 2, 2], n, "int4", 64) == [2 * chunk, 4 * chunk, chunk]
