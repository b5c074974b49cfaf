"""The MPI engine's shared-memory all-reduce (ranks of one machine): every rank ends with the same
bytes, equal bit for bit to the reduction of the inputs in rank order, across chunk boundaries and
for chunks with fewer elements than ranks; sizes and dtypes it does not take go to MPI."""

from __future__ import annotations

import pytest

from pycomm.testing import run_mpi

pytest.importorskip("torch")

pytestmark = pytest.mark.mpi


def shared_all_reduce() -> dict:
    import os

    import numpy as np
    from mpi4py import MPI

    from pycomm.torch import _shm

    comm = MPI.COMM_WORLD.Dup()
    rank, size = comm.Get_rank(), comm.Get_size()
    shared = _shm.SharedMemoryAllReduce.create(comm)
    # The segment is unlinked as soon as every rank has it mapped: nothing is left in /dev/shm.
    comm.Barrier()  # rank 0 unlinks it when create() returns there
    left = [name for name in os.listdir("/dev/shm") if name.startswith("pycomm-") and "-torch-" in name]
    chunk = _shm.CHUNK_BYTES
    problems, checked = [], 0
    cases = [
        ("float32", "sum", chunk // 4 * 2 + 1),  # two chunks and one element: slices of 0 or 1
        ("float32", "max", chunk // 4 + 12_345),
        ("float64", "sum", _shm.MIN_BYTES // 8 + 3),
        ("float32", "prod", 100_000),
        ("int64", "sum", 3 * chunk // 8 - 5),
        ("int32", "min", 200_003),
        ("uint8", "sum", chunk + 17),
    ]
    for dtype, op, count in cases:
        inputs = []
        for r in range(size):
            generator = np.random.default_rng(1000 * r + count)
            if dtype.startswith("float"):
                values = generator.standard_normal(count).astype(dtype)
                if op == "prod":
                    values = (1 + values / 64).astype(dtype)
            else:
                values = generator.integers(0, 100, count).astype(dtype)
            inputs.append(values)
        expected = inputs[0].copy()
        for values in inputs[1:]:
            if op == "sum":
                expected += values
            elif op == "prod":
                expected *= values
            else:
                expected = getattr(np, "maximum" if op == "max" else "minimum")(expected, values)
        array = inputs[rank].copy()
        if not shared.applies(array, op):
            problems.append(f"{dtype} {op} x{count}: not taken")
            continue
        shared.all_reduce(array, op)
        checked += 1
        if not np.array_equal(array.view(np.uint8), expected.view(np.uint8)):
            wrong = np.flatnonzero(array != expected)
            problems.append(f"{dtype} {op} x{count}: {wrong.size} elements differ, first {wrong[:5]}")
    declined = [
        shared.applies(np.zeros(_shm.MIN_BYTES // 4 - 1, np.float32), "sum"),
        shared.applies(np.zeros(1 << 20, np.bool_), "sum"),
        shared.applies(np.zeros(1 << 20, np.complex64), "sum"),
        shared.applies(np.zeros(1 << 20, np.int32), "bxor"),
    ]
    shared.free()
    comm.Free()
    return {"checked": checked, "problems": problems, "declined": declined, "left": left}


@pytest.mark.parametrize("ranks", [2, 3])
def test_shared_memory_all_reduce_is_the_rank_order_reduction(ranks):
    for value in run_mpi(shared_all_reduce, ranks, timeout=120).values:
        assert value["problems"] == []
        assert value["checked"] == 7
        assert value["declined"] == [False, False, False, False]
        assert value["left"] == []
